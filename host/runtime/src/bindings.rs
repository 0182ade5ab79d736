//! Host bindings generated from `wit/` (world `state-machine`). Hand-written host code is in
//! `host/`, one file per interface.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "state-machine",
    // Every import may trap: a host abort (limit, read-only violation, storage failure) ends the
    // call with a typed error the plugin module classifies.
    imports: { default: trappable },
});

pub(crate) use wasmraft::plugin::types::{Entry, Level};
pub(crate) use wasmraft::plugin::{kv, log};
