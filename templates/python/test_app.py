"""Runs the plugin natively on the SDK's test host: {{tools}}/venv/bin/python -m pytest"""

import pytest
from app import Counters

from wasmraft_sdk import to_json
from wasmraft_sdk.testing import PluginError, TestHost, check_batch_independence, check_snapshot_round_trip


def add(key, by=None):
    return {"op": "add", "key": key} if by is None else {"op": "add", "key": key, "by": by}


def test_adds_accumulate_per_key():
    host = TestHost(Counters)
    assert host.apply(b'{"op":"add","key":"a"}') == b'{"key":"a","value":1}'
    assert host.apply_json(add("a", 4)) == {"key": "a", "value": 5}
    assert host.apply_json(add("b", -3)) == {"key": "b", "value": -3}
    assert host.apply_json({"op": "reset", "key": "a"}) == {"key": "a", "value": 0}
    assert host.kv == {b"b": b"-3"}  # reset deletes the key


def test_a_failed_command_changes_nothing():
    host = TestHost(Counters)
    host.apply_json(add("a", 2**53 - 1))
    before = host.kv
    with pytest.raises(PluginError, match="^overflow$"):
        host.apply_json(add("a"))
    with pytest.raises(PluginError, match='^unknown op "double"$'):
        host.apply_json({"op": "double", "key": "a"})
    with pytest.raises(PluginError, match="^malformed command"):
        host.apply_json(add("a", "1"))
    assert host.kv == before


def test_queries_read_the_current_value():
    host = TestHost(Counters)
    host.apply_json(add("a", 2))
    assert host.query(b'{"key":"a"}') == b'{"key":"a","value":2}'
    assert host.query_json({"key": "b"}) == {"key": "b", "value": 0}


def test_state_survives_a_snapshot_round_trip():
    host = TestHost(Counters)
    for i in range(30):
        host.apply_json(add(f"k{i % 7}", i))
    check_snapshot_round_trip(host)


def test_results_do_not_depend_on_batching():
    commands = []
    for i in range(30):
        if i % 5 == 0:
            commands.append({"op": "reset", "key": f"k{i % 3}"})
        elif i % 5 == 4:
            commands.append({"op": "nope", "key": "k"})
        else:
            commands.append(add(f"k{i % 3}", i - 10))
    check_batch_independence(Counters, [to_json(c) for c in commands])
