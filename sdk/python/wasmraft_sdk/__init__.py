"""The wasmraft guest SDK for Python: write a replicated state machine as a class.

    import wasmraft_sdk as sdk

    class Counter(sdk.StateMachine):
        def apply(self, entry, kv):
            count = int(kv.get(b"count") or b"0") + entry.json()["add"]
            kv.set(b"count", str(count))
            return {"count": count}

        def query(self, request, kv):
            return {"count": int(kv.get(b"count") or b"0")}

    WitWorld = sdk.export(Counter)  # what componentize-py builds the component from

Everything a machine may observe comes from the entry and the kv space: no clocks, no randomness.
An exception fails only its entry (its kv writes are rolled back); `Error("text")` gives exactly
"text", any other exception "TypeName: message" and the last frames of its traceback.
"""

import json
import os
import traceback
from dataclasses import dataclass
from typing import Optional

__all__ = ["Entry", "Error", "InitContext", "Kv", "StateMachine", "export", "parse_json", "to_json"]

SCAN_PAGE = 256
"""Pairs `Kv.scan` fetches from the host per call."""

TRACEBACK_FRAMES = 4
"""Innermost traceback frames an error result carries, after its `TypeName: message` line."""


class Error(Exception):
    """A deliberate failure: the entry's (or query's) error result is exactly its message."""


@dataclass(frozen=True)
class Entry:
    """One committed log entry; every field is the same on every replica."""

    index: int
    term: int
    timestamp_ms: int
    """Leader-assigned proposal time (ms since the Unix epoch): use it instead of a clock."""
    payload: bytes

    def json(self):
        """The payload parsed as JSON; malformed JSON raises `Error("malformed command: ...")`."""
        return parse_json(self.payload, "command")


@dataclass(frozen=True)
class InitContext:
    """What `init` learns about the activation of this plugin version."""

    previous_version: Optional[str] = None
    """sha256 (hex) of the version this one replaces, if any: migrate its data in `init`."""
    config: bytes = b""
    """Deployment configuration bytes (empty when none was given)."""


class StateMachine:
    """Base class of a plugin. Keep all state in kv: the host may re-create the object any time
    (after a restart, an upgrade or a restore), and replicas group entries differently."""

    def init(self, ctx, kv):
        """Runs once when this version is activated, before any `apply`. Does nothing by default."""

    def apply(self, entry, kv):
        """Applies one committed entry; returns bytes, str (sent as UTF-8) or a JSON-able value."""
        raise NotImplementedError(f"{type(self).__name__}.apply")

    def query(self, request, kv):
        """Answers a read request (bytes) from `kv`, which is read-only here; returns like `apply`."""
        raise NotImplementedError(f"{type(self).__name__}.query")


def _bytes(data):
    """`data` as bytes: bytes-like as is, str as UTF-8."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"expected bytes or str, got {type(data).__name__}")


class Kv:
    """The plugin's ordered key-value space. Keys and values are bytes (str is stored as UTF-8);
    keys order bytewise. Reads see the current entry's own writes."""

    def __init__(self, host):
        self._host = host

    def get(self, key):
        """The value at `key` (bytes), or None."""
        return self._host.get(_bytes(key))

    def set(self, key, value):
        """Stores `value` at `key`."""
        self._host.set(_bytes(key), _bytes(value))

    def delete(self, key):
        """Removes `key`; removing a missing key is fine."""
        self._host.delete(_bytes(key))

    def scan(self, start=b"", end=None):
        """Iterates over (key, value) pairs with `start <= key < end` (end None: to the end) in key
        order, fetching them from the host a page at a time."""
        start = _bytes(start)
        end = None if end is None else _bytes(end)
        while True:
            page = self._host.scan(start, end, SCAN_PAGE)
            yield from page
            if len(page) < SCAN_PAGE:
                return
            start = page[-1][0] + b"\0"

    def write_batch(self, writes):
        """Applies (key, value) writes in order in one call: a value of None deletes the key."""
        self._host.write_batch([(_bytes(k), None if v is None else _bytes(v)) for k, v in writes])


def to_json(value):
    """Compact JSON bytes, as the Rust SDK (serde_json) writes them."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def parse_json(data, what="request"):
    """`data` (UTF-8 bytes or str) parsed as JSON; malformed input raises
    `Error("malformed WHAT: ...")`."""
    try:
        return json.loads(data if isinstance(data, str) else _bytes(data).decode())
    except ValueError as err:
        raise Error(f"malformed {what}: {err}") from None


def encode_result(value):
    """What `apply` or `query` returned, as the bytes sent to the client."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return _bytes(value)
    return to_json(value)


def error_text(exc):
    """An exception as an error result: an `Error`'s message, else `TypeName: message` and the
    innermost frames of the traceback outside this SDK."""
    if isinstance(exc, Error):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = [
        (frame.f_code.co_filename, line, frame.f_code.co_name)
        for frame, line in traceback.walk_tb(exc.__traceback__)
        if not frame.f_globals.get("__name__", "").startswith(__name__)
    ]
    for filename, line, function in frames[-TRACEBACK_FRAMES:]:
        text += f'\n  File "{os.path.basename(filename)}", line {line}, in {function}'
    return text


def export(machine_class):
    """The class componentize-py needs in the app module: `WitWorld = export(MyMachine)`. In plain
    CPython, which has no component bindings, returns None: `wasmraft_sdk.testing` runs machines."""
    try:
        from ._guest import world
    except ModuleNotFoundError as err:
        if err.name not in ("componentize_py_types", "wit_world"):
            raise
        return None
    return world(machine_class)
