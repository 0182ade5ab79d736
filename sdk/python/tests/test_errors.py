"""Exceptions become error results: the entry's writes are rolled back, the next entry applies,
and the text names the exception's type and message and where it was raised."""

import pytest
from machines import Counter, Failing, Swallows
from raising_app import Raising

from wasmraft_sdk.testing import READ_ONLY_ERROR, PluginError, TestHost


def test_an_entry_that_writes_then_raises_is_rolled_back_and_the_next_entry_applies():
    host = TestHost(Raising)
    assert host.apply(b"a") == b"ok a"
    with pytest.raises(PluginError) as failed:
        host.apply(b"fail-b")
    assert host.apply(b"c") == b"ok c"
    assert failed.value.message.splitlines()[0] == "ValueError: refusing fail-b"
    assert host.kv == {b"a": b"written", b"c": b"written"}


def test_the_error_ends_with_the_plugins_innermost_frames_and_no_sdk_frames():
    host = TestHost(Raising)
    with pytest.raises(PluginError) as failed:
        host.apply(b"fail")
    lines = failed.value.message.splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ['  File "raising_app.py"'] * 2
    assert lines[1].endswith("in apply") and lines[2].endswith("in refuse")


def test_an_sdk_error_is_exactly_its_message_and_rolls_back_too():
    host = TestHost(Failing)
    with pytest.raises(PluginError, match=r"^refused: try again$"):
        host.apply(b"refuse")
    assert b"applied" not in host.kv


def test_a_failing_init_or_query_is_an_error_result_not_a_crash():
    with pytest.raises(PluginError, match=r"^KeyError: 'bad'\n"):
        TestHost(Failing, config=b"bad")
    host = TestHost(Failing, config=b"good")
    assert host.kv == {b"init": b"good"}
    with pytest.raises(PluginError, match=r"^ZeroDivisionError: division by zero\n.*in query"):
        host.query(b"")


def test_a_query_that_writes_is_refused_even_if_it_swallows_exceptions():
    host = TestHost(Raising)
    with pytest.raises(PluginError, match=f"^{READ_ONLY_ERROR}$"):
        host.query(b"write")
    with pytest.raises(PluginError, match=f"^{READ_ONLY_ERROR}$"):
        TestHost(Swallows).query(b"")
    assert host.kv == {}


def test_malformed_json_is_a_malformed_command_error():
    host = TestHost(Counter)
    with pytest.raises(PluginError, match=r"^malformed command: Expecting value"):
        host.apply(b"not json")


def test_entries_carry_the_settable_index_term_and_timestamp():
    host = TestHost(Counter)
    host.next_index, host.timestamp_ms = 40, 1_700_000_000_000
    assert host.apply_json({"add": 2}) == {"count": 2, "index": 40, "at": 1_700_000_000_000}
    assert host.apply(b'{"add":1}') == b'{"count":3,"index":41,"at":1700000000000}'
    assert host.query_json(None) == {"count": 3}
