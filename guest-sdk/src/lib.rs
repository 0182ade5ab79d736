//! # wasmraft-guest: write a wasmraft plugin in Rust
//!
//! A wasmraft plugin is the replicated state machine of a wasmraft cluster, compiled to a
//! WebAssembly component (`cargo build --target wasm32-wasip2`). This crate hides the WIT bindings:
//! implement [`StateMachine`] with typed commands, keep your state in [`Kv`], and [`export!`] the
//! type. Commands, queries and their answers travel as JSON.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use wasmraft_guest::{EntryContext, Error, Kv, StateMachine};
//!
//! #[derive(Default)]
//! struct Counter;
//!
//! #[derive(Deserialize)]
//! struct Add { by: i64 }
//!
//! impl StateMachine for Counter {
//!     type Command = Add;
//!     type Response = i64;
//!     type Query = ();
//!     type QueryResponse = i64;
//!
//!     fn apply(&mut self, _ctx: &EntryContext, kv: &mut Kv, cmd: Add) -> Result<i64, Error> {
//!         let value = kv.get_json::<i64>(b"n")?.unwrap_or(0) + cmd.by;
//!         kv.set_json(b"n", &value)?;
//!         Ok(value)
//!     }
//!
//!     fn query(&self, kv: &Kv, _request: ()) -> Result<i64, Error> {
//!         Ok(kv.get_json::<i64>(b"n")?.unwrap_or(0))
//!     }
//! }
//!
//! wasmraft_guest::export!(Counter);
//!
//! // The same plugin, natively, in a plain `cargo test`:
//! let mut host = wasmraft_guest::testing::TestHost::<Counter>::new();
//! assert_eq!(host.apply_json(r#"{"by":2}"#), Ok("2".to_string()));
//! assert_eq!(host.query_json("null"), Ok("2".to_string()));
//! ```
//!
//! ## The rules a plugin must keep
//! - Everything the plugin knows comes from its entries and its kv space: state kept only in
//!   `self` is lost when the host re-instantiates the plugin (after a trap, a restart or an
//!   upgrade) and would make replicas disagree. Use `self` only for caches rebuilt from kv.
//! - A command that fails returns `Err`: its kv writes are rolled back and the error is the
//!   replicated result. A panic does the same, with the panic message as the error.
//! - Snapshots stream the kv space (see [`snapshot`]); a plugin that keeps all state in kv needs
//!   to write neither snapshot nor restore.

mod error;
mod export;
mod kv;
pub mod snapshot;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use error::Error;
pub use export::{EntryContext, InitContext, StateMachine};
pub use kv::Kv;

#[doc(hidden)]
pub mod __private {
    pub use crate::export::guest::*;
    pub use serde_json;
}

/// The generated WIT bindings (only on wasm targets). Plugins never need them; they are public for
/// the [`export!`] macro.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "state-machine",
        pub_export_macro: true,
        export_macro_name: "__export_state_machine",
        default_bindings_module: "wasmraft_guest::__bindings",
    });
}

/// Exports a [`StateMachine`] type as the plugin's `state-machine` world.
///
/// Put it once in the plugin crate (a `cdylib`). On native targets it expands to nothing, so the
/// same crate can be unit-tested with [`testing`].
#[macro_export]
macro_rules! export {
    ($machine:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct Export;
            impl $crate::__bindings::Guest for Export {
                fn init(ctx: $crate::__bindings::InitContext) -> ::core::result::Result<(), String> {
                    $crate::__private::init::<$machine>(ctx.previous_version, ctx.config)
                }
                fn apply() {
                    $crate::__private::apply::<$machine>()
                }
                fn query(request: Vec<u8>) -> ::core::result::Result<Vec<u8>, String> {
                    $crate::__private::query::<$machine>(&request)
                }
                fn snapshot_begin() {
                    $crate::__private::snapshot_begin()
                }
                fn snapshot_next(max_bytes: u32) -> Option<Vec<u8>> {
                    $crate::__private::snapshot_next(max_bytes)
                }
                fn restore_begin() {
                    $crate::__private::restore_begin()
                }
                fn restore_chunk(chunk: Vec<u8>) -> ::core::result::Result<(), String> {
                    $crate::__private::restore_chunk(&chunk)
                }
                fn restore_finish() -> ::core::result::Result<(), String> {
                    $crate::__private::restore_finish::<$machine>()
                }
            }
    $crate::__bindings::__export_state_machine!(Export with_types_in $crate::__bindings);
        };
    };
}
