"""The default snapshot stream: the plugin's whole kv space, byte for byte the Rust SDK's format
(guest-sdk/src/snapshot.rs), so snapshots are interchangeable across languages.

The stream is `MAGIC` followed by records `[key len: u32 LE][key][value len: u32 LE][value]` in
ascending key order. Chunk boundaries fall anywhere, even inside a record: the reader buffers.
"""

import struct
from . import Error

MAGIC = b"wrkv\0\0\0\x01"
"""First bytes of a default snapshot stream: format name and version."""


class SnapshotWriter:
    """Streams a `Kv` space out in chunks."""

    def __init__(self, kv):
        self._pairs = kv.scan(b"")
        self._pending = bytearray(MAGIC)

    def next_chunk(self, max_bytes):
        """The next chunk, at most `max_bytes` long (at least one byte), or None at the end."""
        max_bytes = max(max_bytes, 1)
        while len(self._pending) < max_bytes and (pair := next(self._pairs, None)) is not None:
            key, value = pair
            self._pending += struct.pack("<I", len(key)) + key + struct.pack("<I", len(value)) + value
        if not self._pending:
            return None
        chunk = bytes(self._pending[:max_bytes])
        del self._pending[:max_bytes]
        return chunk


class SnapshotReader:
    """Restores a stream written by `SnapshotWriter` into an empty `Kv` space."""

    def __init__(self, kv):
        self._kv = kv
        self._buffer = bytearray()
        self._seen_magic = False

    def push(self, chunk):
        """Takes the next chunk and writes every complete record in it."""
        self._buffer += chunk
        at = 0
        if not self._seen_magic:
            if len(self._buffer) < len(MAGIC):
                return
            if self._buffer[: len(MAGIC)] != MAGIC:
                raise Error("not a wasmraft kv snapshot (bad magic)")
            self._seen_magic = True
            at = len(MAGIC)
        writes = []
        while (record := self._record(at)) is not None:
            key, value, at = record
            writes.append((key, value))
        if writes:
            self._kv.write_batch(writes)
        del self._buffer[:at]

    def _record(self, at):
        """The (key, value, next offset) of the record at `at`, or None if it is incomplete."""
        parts = []
        for _ in range(2):
            if len(self._buffer) < at + 4:
                return None
            (length,) = struct.unpack_from("<I", self._buffer, at)
            if len(self._buffer) < at + 4 + length:
                return None
            parts.append(bytes(self._buffer[at + 4 : at + 4 + length]))
            at += 4 + length
        return parts[0], parts[1], at

    def finish(self):
        """Checks that the stream ended on a record boundary."""
        if not self._seen_magic:
            raise Error("snapshot stream ended before its header")
        if self._buffer:
            raise Error(f"snapshot stream truncated: {len(self._buffer)} bytes of an incomplete record")
