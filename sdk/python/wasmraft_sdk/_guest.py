"""The world's exports in wasm: glue between componentize-py's generated bindings (`wit_world`)
and a `StateMachine`. Only `export()` imports this module, while componentize-py pre-initializes
the app: a module not imported then is missing at run time (the component has no files)."""

from componentize_py_types import Err, Ok
from wit_world.imports import entries, kv

from . import Entry, InitContext, Kv, encode_result, error_text
from .snapshot import SnapshotReader, SnapshotWriter

HOST_KV = Kv(kv)


def world(machine_class):
    """A `WitWorld` class running `machine_class`. componentize-py may make a new `WitWorld` per
    call, so the machine and the snapshot streams live in this closure, for the whole instance."""
    state = {"machine": None, "writer": None, "reader": None}

    def machine():
        if state["machine"] is None:
            state["machine"] = machine_class()
        return state["machine"]

    class WitWorld:
        def init(self, ctx):
            try:
                machine().init(InitContext(ctx.previous_version, ctx.config), HOST_KV)
            except Exception as exc:
                raise Err(error_text(exc)) from None

        def apply(self):
            while (raw := entries.next()) is not None:
                entry = Entry(raw.index, raw.term, raw.timestamp_ms, raw.payload)
                try:
                    outcome = Ok(encode_result(machine().apply(entry, HOST_KV)))
                except Exception as exc:
                    outcome = Err(error_text(exc))
                entries.finish(outcome)

        def query(self, request):
            try:
                return encode_result(machine().query(request, HOST_KV))
            except Exception as exc:
                raise Err(error_text(exc)) from None

        def snapshot_begin(self):
            state["writer"] = SnapshotWriter(HOST_KV)

        def snapshot_next(self, max_bytes):
            chunk = state["writer"].next_chunk(max_bytes) if state["writer"] else None
            if chunk is None:
                state["writer"] = None
            return chunk

        def restore_begin(self):
            state["reader"] = SnapshotReader(HOST_KV)

        def restore_chunk(self, chunk):
            if state["reader"] is None:
                raise Err("restore-chunk called before restore-begin")
            try:
                state["reader"].push(chunk)
            except Exception as exc:
                raise Err(error_text(exc)) from None

        def restore_finish(self):
            reader, state["reader"] = state["reader"], None
            # The machine's caches describe the old state: the next call starts a fresh machine.
            state["machine"] = None
            if reader is None:
                raise Err("restore-finish called before restore-begin")
            try:
                reader.finish()
            except Exception as exc:
                raise Err(error_text(exc)) from None

    return WitWorld
