"""The kv wrapper, the snapshot stream and the batch-independence check."""

import re

import pytest
from machines import Counter, CountsInModule, CountsOnSelf

import wasmraft_sdk as sdk
from wasmraft_sdk.snapshot import MAGIC
from wasmraft_sdk.testing import PluginError, TestHost, check_batch_independence, check_snapshot_round_trip


class Filler(sdk.StateMachine):
    """Writes `n` keys per entry; a query scans `[start, end)` (JSON) and returns the keys."""

    def apply(self, entry, kv):
        kv.write_batch((f"k{i:04}", str(i)) for i in range(entry.json()))

    def query(self, request, kv):
        bounds = sdk.parse_json(request, "query")
        return [key.decode() for key, _ in kv.scan(*bounds)]


def test_scan_pages_across_more_than_one_page_in_key_order():
    host = TestHost(Filler)
    host.apply_json(3 * sdk.SCAN_PAGE)
    keys = host.query_json([""])
    assert keys == [f"k{i:04}" for i in range(3 * sdk.SCAN_PAGE)]
    assert host.query_json(["k0100", "k0700"]) == keys[100:700]


def test_snapshot_stream_is_the_rust_sdks_format_in_chunks_of_any_size():
    host = TestHost(Counter)
    host.apply_json({"add": 5})
    stream = MAGIC + b"\x05\0\0\0count\x01\0\0\x005"
    assert b"".join(host.snapshot(1000)) == stream
    assert host.snapshot(3) == [stream[i : i + 3] for i in range(0, len(stream), 3)]


def test_snapshot_round_trip_restores_the_same_kv_in_place_of_the_old_one():
    host = TestHost(Filler)
    host.apply_json(300)
    check_snapshot_round_trip(host)
    restored = TestHost(Counter)
    restored.apply_json({"add": 1})
    restored.restore(host.snapshot(7))
    assert restored.kv == host.kv and len(restored.kv) == 300


@pytest.mark.parametrize(
    ("cut", "error"),
    [
        (lambda s: s[:-1], "snapshot stream truncated: 13 bytes of an incomplete record"),
        (lambda s: s[:5], "snapshot stream ended before its header"),
        (lambda s: b"XXXX" + s[4:], "not a wasmraft kv snapshot (bad magic)"),
    ],
)
def test_a_truncated_or_garbled_snapshot_is_refused_and_changes_nothing(cut, error):
    host = TestHost(Counter)
    host.apply_json({"add": 5})
    other = TestHost(Counter)
    with pytest.raises(PluginError, match=f"^{re.escape(error)}$"):
        other.restore([cut(b"".join(host.snapshot()))])
    assert other.kv == {}


def test_a_plugin_keeping_state_only_in_kv_is_batch_independent():
    check_batch_independence(Counter, [b'{"add":%d}' % i for i in range(20)])


def test_a_plugin_counting_entries_on_self_is_caught_by_check_batch_independence():
    with pytest.raises(AssertionError, match=r"^entry 2 gave \('ok', b'2'\) in one batch but \('ok', b'1'\)"):
        check_batch_independence(CountsOnSelf, [b"a", b"b", b"c"])


def test_a_plugin_counting_entries_in_a_module_global_is_caught_too():
    with pytest.raises(AssertionError, match=r"^entry 2 gave"):
        check_batch_independence(CountsInModule, [b"a", b"b", b"c"])


class StoresInt(sdk.StateMachine):
    def apply(self, entry, kv):
        kv.set("n", 5)


def test_a_kv_value_that_is_neither_bytes_nor_str_is_a_type_error():
    with pytest.raises(PluginError, match="^TypeError: expected bytes or str, got int\n"):
        TestHost(StoresInt).apply(b"")
