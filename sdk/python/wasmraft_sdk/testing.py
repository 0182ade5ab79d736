"""Run a plugin natively in CPython (under pytest), against an in-memory kv with the real host's
semantics, like the Rust SDK's `wasmraft_guest::testing`:

- each entry is atomic: an entry whose `apply` raises has its kv writes rolled back, and its error
  text (the one the real host would return) is raised as `PluginError`;
- queries are read-only: a kv write fails the query, as the host's abort does;
- `check_snapshot_round_trip` and `check_batch_independence` are the native halves of
  `wasmraft plugin test`.

    host = TestHost(MyMachine)
    assert host.apply_json({"op": "put", "key": "a", "value": "1"}) == {"previous": None}
    check_snapshot_round_trip(host)
"""

import importlib
import json
import sys

from . import Entry, InitContext, Kv, _bytes, encode_result, error_text, to_json
from .snapshot import SnapshotReader, SnapshotWriter

CHECK_CHUNK_BYTES = 61
"""Chunk size of the snapshots the checks take: small, so records straddle chunk boundaries."""

READ_ONLY_ERROR = "read-only: a query tried to write to kv"
"""The error of a query that writes, in the real host's words (tests/sdk_python.rs checks them)."""


class PluginError(Exception):
    """A failed call; `message` is the error result the real host would return."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class _ReadOnlyWrite(BaseException):
    """A write during a read-only call. Like the host's abort, `except Exception` cannot stop it."""


class _MemoryKv:
    """The host side of `Kv`: committed pairs plus the writes of the call in progress."""

    def __init__(self, committed, read_only):
        self.committed = committed
        self.overlay = {}  # key -> value, or None for a delete
        self.read_only = read_only

    def get(self, key):
        return self.overlay[key] if key in self.overlay else self.committed.get(key)

    def scan(self, start, end, limit):
        keys = sorted(k for k in {*self.committed, *self.overlay} if start <= k and (end is None or k < end))
        pairs = [(k, v) for k in keys if (v := self.get(k)) is not None]
        return pairs[:limit]

    def set(self, key, value):
        self._write(key, value)

    def delete(self, key):
        self._write(key, None)

    def write_batch(self, writes):
        for key, value in writes:
            self._write(key, value)

    def _write(self, key, value):
        if self.read_only:
            raise _ReadOnlyWrite()
        self.overlay[key] = value

    def merged(self):
        """The committed pairs with this call's writes applied."""
        pairs = {**self.committed, **self.overlay}
        return {k: v for k, v in pairs.items() if v is not None}


class TestHost:
    """A plugin class running natively on an in-memory kv space. Creating it runs `init` with the
    given context (raising `PluginError` if it fails). `next_index`, `term` and `timestamp_ms` are
    what the next entry carries: set them freely."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, machine_class, previous_version=None, config=b""):
        self.machine_class = machine_class
        self.machine = None
        self.next_index = 1
        self.term = 1
        self.timestamp_ms = 0
        self._kv = {}
        self.init(previous_version, config)

    def init(self, previous_version=None, config=b""):
        """Runs `init` as an activation would, atomically."""
        ctx = InitContext(previous_version, _bytes(config))
        self._run(lambda machine, kv: machine.init(ctx, kv))

    def apply(self, payload):
        """Applies one entry (bytes or str) with the next index; returns its result bytes, or raises
        `PluginError` with its error text after rolling back its writes."""
        entry = Entry(self.next_index, self.term, self.timestamp_ms, _bytes(payload))
        self.next_index += 1
        return self._run(lambda machine, kv: encode_result(machine.apply(entry, kv)))

    def apply_json(self, value):
        """`apply` with `value` encoded as JSON, and its result decoded from JSON."""
        return json.loads(self.apply(to_json(value)))

    def query(self, request):
        """Answers a query (bytes or str) from the committed state; a kv write fails it."""
        return self._run(lambda machine, kv: encode_result(machine.query(_bytes(request), kv)), read_only=True)

    def query_json(self, value):
        """`query` with `value` encoded as JSON, and its answer decoded from JSON."""
        return json.loads(self.query(to_json(value)))

    @property
    def kv(self):
        """A copy of the committed kv space, as a dict in key order."""
        return dict(sorted(self._kv.items()))

    def reload(self):
        """Starts over as a fresh wasm instance would (after a trap or a restart): drops the machine
        and re-executes the module defining its class, so module globals and class attributes start
        over too (not for a class defined inside a function)."""
        self.machine = None
        module = sys.modules.get(self.machine_class.__module__)
        if module is None or module.__name__ == "__main__" or "<locals>" in self.machine_class.__qualname__:
            return
        fresh = importlib.reload(module)
        for name in self.machine_class.__qualname__.split("."):
            fresh = getattr(fresh, name)
        self.machine_class = fresh

    def snapshot(self, chunk_bytes=CHECK_CHUNK_BYTES):
        """The default snapshot stream of the committed kv space, in chunks of at most `chunk_bytes`."""
        writer = SnapshotWriter(Kv(_MemoryKv(self._kv, read_only=True)))
        return list(iter(lambda: writer.next_chunk(chunk_bytes), None))

    def restore(self, chunks):
        """Replaces the kv space with the one a snapshot stream holds and drops the machine (its
        caches describe the old state). A bad stream raises `PluginError` and changes nothing."""
        kv = _MemoryKv({}, read_only=False)
        reader = SnapshotReader(Kv(kv))
        try:
            for chunk in chunks:
                reader.push(chunk)
            reader.finish()
        except Exception as exc:
            raise PluginError(error_text(exc)) from exc
        self._kv = kv.merged()
        self.machine = None

    def _run(self, call, read_only=False):
        """Runs `call(machine, kv)` over a write overlay, committed only if it returns."""
        kv = _MemoryKv(self._kv, read_only)
        try:
            if self.machine is None:
                self.machine = self.machine_class()
            result = call(self.machine, Kv(kv))
        except _ReadOnlyWrite:
            self.reload()  # the host's abort replaces the instance
            raise PluginError(READ_ONLY_ERROR) from None
        except Exception as exc:
            raise PluginError(error_text(exc)) from exc
        self._kv = kv.merged()
        return result


def check_snapshot_round_trip(host):
    """Snapshots `host` in small chunks, restores the stream into a fresh host and checks that both
    kv spaces are equal; raises AssertionError if not."""
    restored = TestHost(host.machine_class)
    restored.restore(host.snapshot(CHECK_CHUNK_BYTES))
    if restored.kv != host.kv:
        raise AssertionError(
            f"snapshot round trip changed the state: {len(host.kv)} keys before, {len(restored.kv)} after restore"
        )


def check_batch_independence(machine_class, payloads):
    """Applies `payloads` three ways: all on one machine, reloading every 7 entries, and reloading
    before each entry (as replicas that batch differently or restart would), and checks that the
    results and the kv spaces are identical; raises AssertionError naming the first difference."""

    def run(reload_every):
        host = TestHost(machine_class)
        results = []
        for i, payload in enumerate(payloads):
            if i % reload_every == 0:
                host.reload()
            try:
                results.append(("ok", host.apply(payload)))
            except PluginError as err:
                results.append(("error", err.message))
        return results, host.kv

    reference, reference_kv = run(max(len(payloads), 1))
    for reload_every in (7, 1):
        results, kv = run(reload_every)
        for i, (want, got) in enumerate(zip(reference, results)):
            if want != got:
                raise AssertionError(f"entry {i + 1} gave {want} in one batch but {got} in batches of {reload_every}")
        if kv != reference_kv:
            raise AssertionError(f"kv state differs between one batch and batches of {reload_every}")
