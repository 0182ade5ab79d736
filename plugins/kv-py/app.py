"""The kv example plugin in Python: the same commands and results as the Rust `kv` plugin.

Commands and queries are JSON objects tagged by "op": put, get, delete, cas, scan (see
plugins/kv/src/lib.rs for the table). Results are compact JSON, byte-for-byte what the Rust
plugin returns. State lives only in the host kv space; snapshots stream it in the SDK's default
format (magic, then length-prefixed key/value records), so they are interchangeable with Rust's.
"""

import json
import struct

from componentize_py_types import Err, Ok
from wit_world import WitWorld
from wit_world.imports import entries, kv

MAX_SCAN_LIMIT = 1000
SCAN_PAGE = 256
MAGIC = b"wrkv\x00\x00\x00\x01"

FIELDS = {
    "put": ({"key", "value"}, set()),
    "get": ({"key"}, set()),
    "delete": ({"key"}, set()),
    "cas": ({"key", "value"}, {"expected"}),
    "scan": ({"start"}, {"end", "limit"}),
}


class Refused(Exception):
    """A deterministic error result."""


def dumps(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def parse(payload, what):
    try:
        op = json.loads(payload)
    except ValueError as err:
        raise Refused(f"malformed {what}: {err}")
    if not isinstance(op, dict) or not isinstance(op.get("op"), str) or op["op"] not in FIELDS:
        raise Refused(f"malformed {what}: unknown or missing op")
    required, optional = FIELDS[op["op"]]
    fields = set(op) - {"op"}
    if not required <= fields or not fields <= required | optional:
        raise Refused(f"malformed {what}: fields of {op['op']} must be {sorted(required | optional)}")
    for name in ("key", "value", "start"):
        if name in op and not isinstance(op[name], str):
            raise Refused(f"malformed {what}: {name} must be a string")
    for name in ("expected", "end"):
        if op.get(name) is not None and not isinstance(op[name], str):
            raise Refused(f"malformed {what}: {name} must be a string or null")
    limit = op.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit < 2**32):
        raise Refused(f"malformed {what}: limit must be a u32")
    return op


def text(raw):
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise Refused("stored value is not UTF-8")


def get(key):
    raw = kv.get(key.encode())
    return None if raw is None else text(raw)


def read(op):
    if op["op"] == "get":
        return {"value": get(op["key"])}
    if op["op"] == "scan":
        limit = op.get("limit")
        limit = MAX_SCAN_LIMIT if limit is None else min(limit, MAX_SCAN_LIMIT)
        end = op.get("end")
        pairs = kv.scan(op["start"].encode(), None if end is None else end.encode(), limit)
        return {"items": [{"key": text(k), "value": text(v)} for k, v in pairs]}
    raise Refused(f"{op['op']} is a write: send it as a command, not a query")


def apply_op(op):
    name = op["op"]
    if name == "put":
        previous = get(op["key"])
        kv.set(op["key"].encode(), op["value"].encode())
        return {"previous": previous}
    if name == "delete":
        deleted = kv.get(op["key"].encode()) is not None
        kv.delete(op["key"].encode())
        return {"deleted": deleted}
    if name == "cas":
        current = get(op["key"])
        if current == op.get("expected"):
            kv.set(op["key"].encode(), op["value"].encode())
            return {"swapped": True, "current": op["value"]}
        return {"swapped": False, "current": current}
    return read(op)


class SnapshotWriter:
    def __init__(self):
        self.next_key = b""
        self.pending = bytearray(MAGIC)

    def next_chunk(self, max_bytes):
        max_bytes = max(max_bytes, 1)
        while len(self.pending) < max_bytes and self.next_key is not None:
            pairs = kv.scan(self.next_key, None, SCAN_PAGE)
            self.next_key = pairs[-1][0] + b"\x00" if len(pairs) == SCAN_PAGE else None
            for key, value in pairs:
                self.pending += struct.pack("<I", len(key)) + key + struct.pack("<I", len(value)) + value
        if not self.pending:
            return None
        chunk = bytes(self.pending[:max_bytes])
        del self.pending[:max_bytes]
        return chunk


class SnapshotReader:
    def __init__(self):
        self.buffer = bytearray()
        self.seen_magic = False

    def push(self, chunk):
        self.buffer += chunk
        at = 0
        if not self.seen_magic:
            if len(self.buffer) < len(MAGIC):
                return
            if bytes(self.buffer[: len(MAGIC)]) != MAGIC:
                raise Refused("not a wasmraft kv snapshot (bad magic)")
            self.seen_magic = True
            at = len(MAGIC)
        writes = []
        while True:
            record = self.decode(at)
            if record is None:
                break
            key, value, at = record
            writes.append((key, value))
        if writes:
            kv.write_batch(writes)
        del self.buffer[:at]

    def decode(self, at):
        parts = []
        for _ in range(2):
            if len(self.buffer) < at + 4:
                return None
            (length,) = struct.unpack_from("<I", self.buffer, at)
            if len(self.buffer) < at + 4 + length:
                return None
            parts.append(bytes(self.buffer[at + 4 : at + 4 + length]))
            at += 4 + length
        return parts[0], parts[1], at

    def finish(self):
        if not self.seen_magic:
            raise Refused("snapshot stream ended before its header")
        if self.buffer:
            raise Refused(f"snapshot stream truncated: {len(self.buffer)} bytes of an incomplete record")


_writer = None
_reader = None


class WitWorld(WitWorld):
    def init(self, ctx):
        pass

    def apply(self):
        while (entry := entries.next()) is not None:
            try:
                entries.finish(Ok(dumps(apply_op(parse(entry.payload, "command")))))
            except Refused as err:
                entries.finish(Err(str(err)))

    def query(self, request):
        try:
            return dumps(read(parse(request, "query")))
        except Refused as err:
            raise Err(str(err))

    def snapshot_begin(self):
        global _writer
        _writer = SnapshotWriter()

    def snapshot_next(self, max_bytes):
        global _writer
        chunk = _writer.next_chunk(max_bytes) if _writer else None
        if chunk is None:
            _writer = None
        return chunk

    def restore_begin(self):
        global _reader
        _reader = SnapshotReader()

    def restore_chunk(self, chunk):
        if _reader is None:
            raise Err("restore-chunk called before restore-begin")
        try:
            _reader.push(chunk)
        except Refused as err:
            raise Err(str(err))

    def restore_finish(self):
        global _reader
        reader, _reader = _reader, None
        if reader is None:
            raise Err("restore-finish called before restore-begin")
        try:
            reader.finish()
        except Refused as err:
            raise Err(str(err))
