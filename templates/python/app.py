"""{{name}}: a wasmraft plugin keeping one counter per key, with all of its state in kv.

    {"op":"add","key":"a","by":2}   ->  {"key":"a","value":2}
    {"op":"add","key":"a"}          ->  {"key":"a","value":3}     (by defaults to 1)
    {"op":"reset","key":"a"}        ->  {"key":"a","value":0}

The query {"key":"a"} answers {"key":"a","value":3} (0 for a key never set). Values stay within
±(2**53 - 1), the integers every SDK language (JavaScript too) holds exactly: an add past that
fails with "overflow" and, like every failed command, changes nothing.
"""

import wasmraft_sdk as sdk
from wasmraft_sdk import Error

LIMIT = 2**53 - 1


def parse(payload, what, fields):
    """The JSON object in `payload`, with a string "key" and no field outside `fields`."""
    obj = sdk.parse_json(payload, what)
    if not isinstance(obj, dict):
        raise Error(f"malformed {what}: expected an object")
    for name in obj:  # in the payload's order: never iterate a set (its order varies by process)
        if name not in fields:
            raise Error(f"malformed {what}: unknown field {name}")
    if not isinstance(obj.get("key"), str):
        raise Error(f"malformed {what}: key must be a string")
    return obj


def load(kv, key):
    """The counter at `key`, stored as decimal text (0 when absent)."""
    return int(kv.get(key) or b"0")


class Counters(sdk.StateMachine):
    """Keeps nothing in memory: the host may re-create it at any time."""

    def apply(self, entry, kv):
        cmd = parse(entry.payload, "command", ("op", "key", "by"))
        op, key = cmd.get("op"), cmd["key"]
        by = 1 if cmd.get("by") is None else cmd["by"]
        if not isinstance(op, str) or type(by) is not int:  # (a bool is an int in Python)
            raise Error("malformed command: op must be a string and by an integer")
        if op == "add":
            value = load(kv, key) + by
            if abs(by) > LIMIT or abs(value) > LIMIT:
                raise Error("overflow")
            kv.set(key, str(value))
        elif op == "reset":
            value = 0
            kv.delete(key)
        else:
            raise Error(f'unknown op "{op}"')
        return {"key": key, "value": value}

    def query(self, request, kv):
        key = parse(request, "query", ("key",))["key"]
        return {"key": key, "value": load(kv, key)}


WitWorld = sdk.export(Counters)
