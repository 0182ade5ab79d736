"""kv-py run natively on the SDK's test host: `tools/venv/bin/python -m pytest plugins/kv-py`.
Byte-identical results to the Rust plugin are checked on the real runtime by `wasmraft plugin test`."""

import pytest
from app import KvMachine

from wasmraft_sdk import to_json
from wasmraft_sdk.testing import PluginError, TestHost, check_batch_independence, check_snapshot_round_trip


def put(key, value):
    return {"op": "put", "key": key, "value": value}


def test_put_returns_the_previous_value_and_get_reads_it_as_compact_json():
    host = TestHost(KvMachine)
    assert host.apply(b'{"op":"put","key":"a","value":"1"}') == b'{"previous":null}'
    assert host.apply_json(put("a", "snow \u2603")) == {"previous": "1"}
    assert host.query(b'{"op":"get","key":"a"}') == '{"value":"snow \u2603"}'.encode()


def test_cas_swaps_only_on_the_expected_value_and_null_means_absent():
    host = TestHost(KvMachine)
    cas = {"op": "cas", "key": "a", "expected": None, "value": "1"}
    assert host.apply_json(cas) == {"swapped": True, "current": "1"}
    assert host.apply_json({**cas, "expected": "0", "value": "2"}) == {"swapped": False, "current": "1"}


def test_scan_is_half_open_in_key_order_and_clamps_its_limit_over_several_pages():
    host = TestHost(KvMachine)
    for i in range(1200):
        host.apply_json(put(f"k{i:04}", str(i)))
    items = host.query_json({"op": "scan", "start": "k0100", "end": "k0900"})["items"]
    assert [item["key"] for item in items] == [f"k{i:04}" for i in range(100, 900)]
    assert len(host.query_json({"op": "scan", "start": "", "limit": 5000})["items"]) == 1000


@pytest.mark.parametrize(
    "command",
    [b"not json", b'["op","put"]', b'{"op":"nope"}', b'{"op":"put","key":"a"}', b'{"op":"put","key":"a","value":5}',
     b'{"op":"get","key":"a","extra":true}', b'{"op":"scan","start":"","limit":true}'],
)
def test_malformed_commands_are_errors_that_change_nothing(command):
    host = TestHost(KvMachine)
    host.apply_json(put("a", "1"))
    with pytest.raises(PluginError, match="^malformed command: "):
        host.apply(command)
    assert host.kv == {b"a": b"1"}


def test_a_write_sent_as_a_query_is_refused():
    with pytest.raises(PluginError, match="^put is a write: send it as a command"):
        TestHost(KvMachine).query_json(put("a", "1"))


def test_state_survives_a_snapshot_round_trip_and_is_batch_independent():
    commands = [put(f"k{i}", "v" * i) if i % 3 else {"op": "delete", "key": f"k{i - 2}"} for i in range(40)]
    check_batch_independence(KvMachine, [to_json(c) for c in commands])
    host = TestHost(KvMachine)
    for command in commands:
        host.apply_json(command)
    check_snapshot_round_trip(host)
