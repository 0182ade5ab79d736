"""The kv example plugin in Python, on the wasmraft SDK (sdk/python): the same commands and
byte-identical results as the Rust `kv` plugin (see plugins/kv-core/src/lib.rs for the table).

Commands and queries are JSON objects tagged by "op": put, get, delete, cas, scan. All state lives
in kv, so the SDK's default snapshot stream (interchangeable with Rust's) is all it needs.
"""

from itertools import islice

import wasmraft_sdk as sdk
from wasmraft_sdk import Error

MAX_SCAN_LIMIT = 1000

# Each op's (required, optional) fields besides "op"; other fields are refused, as in Rust.
FIELDS = {
    "put": ({"key", "value"}, set()),
    "get": ({"key"}, set()),
    "delete": ({"key"}, set()),
    "cas": ({"key", "value"}, {"expected"}),
    "scan": ({"start"}, {"end", "limit"}),
}
NULLABLE = {"expected", "end"}


def parse(payload, what):
    """The op in a command or query, checked as strictly as the Rust plugin's serde decoding."""
    op = sdk.parse_json(payload, what)
    if not isinstance(op, dict) or not isinstance(op.get("op"), str) or op["op"] not in FIELDS:
        raise Error(f"malformed {what}: unknown or missing op")
    required, optional = FIELDS[op["op"]]
    if not required <= set(op) - {"op"} <= required | optional:
        raise Error(f"malformed {what}: fields of {op['op']} must be {sorted(required | optional)}")
    for name, value in op.items():
        if name == "limit":
            if value is not None and (type(value) is not int or not 0 <= value < 2**32):
                raise Error(f"malformed {what}: limit must be a u32")
        elif not isinstance(value, str) and not (value is None and name in NULLABLE):
            raise Error(f"malformed {what}: {name} must be a string")
    return op


def text(raw):
    """Stored bytes as text."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise Error("stored value is not UTF-8") from None


def get(kv, key):
    raw = kv.get(key)
    return None if raw is None else text(raw)


def read(op, kv):
    """Answers get and scan; the other ops are writes, refused as queries."""
    if op["op"] == "get":
        return {"value": get(kv, op["key"])}
    if op["op"] == "scan":
        limit = min(MAX_SCAN_LIMIT if op.get("limit") is None else op["limit"], MAX_SCAN_LIMIT)
        pairs = islice(kv.scan(op["start"], op.get("end")), limit)
        return {"items": [{"key": text(key), "value": text(value)} for key, value in pairs]}
    raise Error(f"{op['op']} is a write: send it as a command, not a query")


class KvMachine(sdk.StateMachine):
    def apply(self, entry, kv):
        op = parse(entry.payload, "command")
        name, key = op["op"], op.get("key")
        if name == "put":
            previous = get(kv, key)
            kv.set(key, op["value"])
            return {"previous": previous}
        if name == "delete":
            deleted = kv.get(key) is not None
            kv.delete(key)
            return {"deleted": deleted}
        if name == "cas":
            current = get(kv, key)
            if current != op.get("expected"):
                return {"swapped": False, "current": current}
            kv.set(key, op["value"])
            return {"swapped": True, "current": op["value"]}
        return read(op, kv)

    def query(self, request, kv):
        return read(parse(request, "query"), kv)


WitWorld = sdk.export(KvMachine)
