//! # wasmraft-runtime: run a wasmraft plugin deterministically
//!
//! A plugin is a WebAssembly component exporting the `wasmraft:plugin/state-machine` world. This
//! crate loads one ([`Runtime::load`]: validate, compile, cache), instantiates it over a
//! [`KvBackend`] ([`PluginCode::instantiate`]) and calls it ([`Plugin::apply`], [`Plugin::query`],
//! [`Plugin::snapshot`], [`Plugin::restore`], [`Plugin::init`]). It knows nothing about Raft: the
//! node feeds it committed entries, and the plugin test harness ([`conformance`]) uses it alone.
//!
//! ```no_run
//! use wasmraft_runtime::{Entry, MemoryBackend, Runtime, RuntimeConfig};
//!
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let code = runtime.load(&std::fs::read("target/plugins/kv.wasm")?)?;
//! let mut kv = code.instantiate("kv", Box::new(MemoryBackend::new()));
//! let put = br#"{"op":"put","key":"a","value":"1"}"#.to_vec();
//! let outcomes = kv.apply(vec![Entry { index: 1, term: 1, timestamp_ms: 0, payload: put }])?;
//! assert!(outcomes[0].result.is_ok());
//! assert_eq!(kv.query(br#"{"op":"get","key":"a"}"#)?, Ok(br#"{"value":"1"}"#.to_vec()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Guarantees
//! - Each entry is atomic: an `err`, a trap, exhausted fuel or an exceeded limit rolls back all of
//!   its writes; the failure is a deterministic [`PluginError`] and later entries still apply.
//! - Outcomes and state do not depend on batching: fuel is metered per entry and failures are
//!   isolated per entry.
//! - Queries and snapshots cannot write.
//! - Storage failures are [`RuntimeError`]s, never results.

mod backend;
mod bindings;
pub mod conformance;
mod entry;
mod error;
mod host;
pub mod limits;
mod plugin;
mod runtime;

pub use backend::{BackendError, KvBackend, MemoryBackend, Pair, WriteSet};
pub use entry::{Entry, EntryOutcome};
pub use error::{LoadError, PluginError, RuntimeError};
pub use host::kv::MAX_SCAN_PAIRS;
pub use limits::{LimitExceeded, Limits, SNAPSHOT_FLOOR_BYTES, SNAPSHOT_STATE_FACTOR, snapshot_bound};
pub use plugin::{InitContext, Plugin, PluginStats};
pub use runtime::{PluginCode, Runtime, RuntimeConfig};
