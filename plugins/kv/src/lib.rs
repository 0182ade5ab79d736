//! The kv example plugin as a component: the logic is in `kv-core` (see its docs for the command
//! language); this crate only exports it.

wasmraft_guest::export!(kv_core::KvPlugin);
