"""Small machines the SDK's tests drive natively, one per behaviour under test."""

import wasmraft_sdk as sdk


class Counter(sdk.StateMachine):
    """Well behaved: all its state is in kv. `{"add": n}` adds n; a query returns the count."""

    def apply(self, entry, kv):
        count = int(kv.get("count") or b"0") + entry.json()["add"]
        kv.set("count", str(count))
        return {"count": count, "index": entry.index, "at": entry.timestamp_ms}

    def query(self, request, kv):
        return {"count": int(kv.get("count") or b"0")}


class CountsOnSelf(sdk.StateMachine):
    """Bad: numbers entries with a counter kept on the object, so results depend on reloads."""

    def __init__(self):
        self.seen = 0

    def apply(self, entry, kv):
        self.seen += 1
        kv.set(entry.payload, str(self.seen))
        return str(self.seen)


seen_globally = 0


class CountsInModule(sdk.StateMachine):
    """Bad: the same with a module global, which outlives the object but not a fresh interpreter."""

    def apply(self, entry, kv):
        global seen_globally
        seen_globally += 1
        return str(seen_globally)


class Swallows(sdk.StateMachine):
    """Bad: writes in its query and swallows every exception."""

    def query(self, request, kv):
        try:
            kv.set("q", "1")
        except Exception:
            pass
        return "done"


class Failing(sdk.StateMachine):
    """Fails on purpose: `init` with config b"bad", `query` always, `apply` with a deliberate
    `sdk.Error` for payload b"refuse"."""

    def init(self, ctx, kv):
        kv.set("init", ctx.config)
        if ctx.config == b"bad":
            raise KeyError("bad")

    def apply(self, entry, kv):
        kv.set("applied", entry.payload)
        if entry.payload == b"refuse":
            raise sdk.Error("refused: try again")
        return entry.payload.decode()

    def query(self, request, kv):
        return 1 / 0
