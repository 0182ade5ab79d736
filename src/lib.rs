//! The `wasmraft` command-line tool: its library half, shared by the binary and the tests.

/// Paths of the example plugin components built by `build.rs` (`target/plugins/NAME.wasm`).
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}
