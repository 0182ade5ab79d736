//! The two kinds of failure, named: a [`PluginError`] is the plugin's deterministic outcome and is
//! replicated like a success; a [`RuntimeError`] is the node's own failure (storage, compilation,
//! instantiation) and must stop the apply path rather than be recorded as a result.

use crate::backend::BackendError;
use crate::limits::LimitExceeded;

/// A deterministic failure of one plugin call: the same on every replica, so it is a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The plugin returned `err` with this message.
    #[error("{0}")]
    Returned(String),
    /// The plugin panicked (its panic handler reported the message), then trapped.
    #[error("panicked: {0}")]
    Panicked(String),
    /// The plugin trapped (`unreachable`, out-of-bounds access, ...).
    #[error("trap: {0}")]
    Trapped(String),
    /// The call ran out of fuel: the entry (or call) did more work than its budget allows.
    #[error("fuel exhausted: used more than the {limit} units of fuel allowed")]
    FuelExhausted { limit: u64 },
    /// The call exceeded a configured limit.
    #[error("limit exceeded: {0}")]
    Limit(LimitExceeded),
    /// A query (or snapshot) tried to write to kv.
    #[error("read-only: {0} tried to write to kv")]
    ReadOnly(&'static str),
    /// The plugin broke the call protocol of the WIT world (e.g. `finish` without `next`).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// A node-side failure: not the plugin's outcome, never replicated as a result.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("engine: {0}")]
    Engine(String),
    #[error("instantiating the plugin: {0}")]
    Instantiate(String),
}

/// Why a component cannot be loaded. Each names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("component is {size} bytes, over max_component_bytes ({limit})")]
    TooLarge { size: usize, limit: usize },
    #[error("not a WebAssembly binary (no \\0asm header)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error(
        "component imports {names:?}, which wasmraft does not provide (allowed: wasmraft:plugin/kv, entries, log, and wasi:*)"
    )]
    UnsupportedImports { names: Vec<String> },
    #[error("component does not implement world wasmraft:plugin/state-machine: {0}")]
    WrongWorld(String),
    #[error("component cannot be instantiated within the limits: {0}")]
    Instantiate(String),
}

/// Why a host import aborted the guest. Carried through the trap and classified afterwards.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum HostAbort {
    #[error(transparent)]
    Limit(LimitExceeded),
    #[error("{0} tried to write to kv")]
    ReadOnly(&'static str),
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Backend(BackendError),
}
