//! What runs a plugin: a WebAssembly component through the runtime, or a built-in compiled into
//! the node. The one built-in, `kv-native`, is the kv plugin's own logic (`plugins/kv-core`) run
//! natively through the guest SDK's [`NativeHost`]: the baseline `wasmraft bench --compare-native`
//! measures the WASM plugin against, over the same storage, log and network.

use wasmraft_guest::EntryContext;
use wasmraft_guest::testing::{NativeHost, NativeKv};
use wasmraft_runtime::{Entry, EntryOutcome, InitContext, KvBackend, Plugin, PluginError, RuntimeError};

/// Activation hashes of built-ins start with this.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// The built-ins this node can activate (`builtin:NAME`).
pub const BUILTINS: &[&str] = &["kv-native"];

/// Whether `sha256` names a built-in this node has.
pub fn builtin_name(sha256: &str) -> Option<&str> {
    sha256
        .strip_prefix(BUILTIN_PREFIX)
        .filter(|name| BUILTINS.contains(name))
}

pub enum Engine {
    Wasm(Box<Plugin>),
    Native(NativeKvPlugin),
}

pub struct NativeKvPlugin {
    host: NativeHost<kv_core::KvPlugin>,
    backend: Box<dyn KvBackend>,
    /// Another handle on the same kv space, for the SDK to read through during a call.
    fork: Box<dyn Fn() -> Box<dyn KvBackend> + Send + Sync>,
}

impl NativeKvPlugin {
    pub fn new(fork: Box<dyn Fn() -> Box<dyn KvBackend> + Send + Sync>) -> Self {
        Self {
            host: NativeHost::default(),
            backend: fork(),
            fork,
        }
    }

    fn reads(&self) -> Box<dyn NativeKv> {
        Box::new(Reads((self.fork)()))
    }
}

/// A backend's reads, for the SDK.
struct Reads(Box<dyn KvBackend>);

impl NativeKv for Reads {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key).unwrap_or_else(|e| {
            tracing::error!("kv-native read failed: {e}");
            None
        })
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.0.scan(start, end, limit).unwrap_or_else(|e| {
            tracing::error!("kv-native scan failed: {e}");
            Vec::new()
        })
    }
}

/// Pairs read per scan while a built-in streams its snapshot. A built-in's snapshot is its pairs
/// as (u32 key length, key, u32 value length, value) records, a chunk per scan.
const SNAPSHOT_SCAN: usize = 1024;

impl Engine {
    pub fn apply(&mut self, entries: Vec<Entry>) -> Result<Vec<EntryOutcome>, RuntimeError> {
        match self {
            Engine::Wasm(plugin) => plugin.apply(entries),
            Engine::Native(native) => {
                let mut outcomes = Vec::with_capacity(entries.len());
                for entry in entries {
                    let ctx = EntryContext {
                        index: entry.index,
                        term: entry.term,
                        timestamp_ms: entry.timestamp_ms,
                    };
                    let reads = native.reads();
                    let (result, writes) = native.host.apply(reads, &ctx, &entry.payload);
                    if !writes.is_empty() {
                        native.backend.commit(writes)?;
                    }
                    outcomes.push(EntryOutcome {
                        index: entry.index,
                        result: result.map_err(PluginError::Returned),
                        fuel_used: 0,
                    });
                }
                Ok(outcomes)
            }
        }
    }

    pub fn query(&mut self, request: &[u8]) -> Result<Result<Vec<u8>, PluginError>, RuntimeError> {
        match self {
            Engine::Wasm(plugin) => plugin.query(request),
            Engine::Native(native) => {
                let reads = native.reads();
                Ok(native.host.query(reads, request).map_err(PluginError::Returned))
            }
        }
    }

    pub fn init(&mut self, ctx: &InitContext) -> Result<Result<(), PluginError>, RuntimeError> {
        match self {
            Engine::Wasm(plugin) => plugin.init(ctx),
            Engine::Native(_) => Ok(Ok(())),
        }
    }

    pub fn snapshot(
        &mut self,
        max_chunk: u32,
        mut sink: impl FnMut(Vec<u8>) -> Result<(), RuntimeError>,
    ) -> Result<Result<(), PluginError>, RuntimeError> {
        match self {
            Engine::Wasm(plugin) => plugin.snapshot(max_chunk, sink),
            Engine::Native(native) => {
                let mut start: Vec<u8> = Vec::new();
                let mut first = true;
                loop {
                    let pairs = native.backend.scan(&start, None, SNAPSHOT_SCAN)?;
                    let mut chunk = Vec::new();
                    for (key, value) in &pairs {
                        if !first && *key == start {
                            continue;
                        }
                        chunk.extend_from_slice(&(key.len() as u32).to_le_bytes());
                        chunk.extend_from_slice(key);
                        chunk.extend_from_slice(&(value.len() as u32).to_le_bytes());
                        chunk.extend_from_slice(value);
                    }
                    first = false;
                    if !chunk.is_empty() {
                        sink(chunk)?;
                    }
                    match pairs.last() {
                        Some((key, _)) if pairs.len() == SNAPSHOT_SCAN => start = key.clone(),
                        _ => return Ok(Ok(())),
                    }
                }
            }
        }
    }

    pub fn restore(
        &mut self,
        chunks: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<Result<(), PluginError>, RuntimeError> {
        match self {
            Engine::Wasm(plugin) => plugin.restore(chunks),
            Engine::Native(native) => {
                for chunk in chunks {
                    let mut writes = wasmraft_runtime::WriteSet::new();
                    let mut rest = chunk.as_slice();
                    while !rest.is_empty() {
                        let (Some(key), Some(value)) = (take_field(&mut rest), take_field(&mut rest)) else {
                            return Ok(Err(PluginError::Returned(
                                "kv-native snapshot: truncated record".into(),
                            )));
                        };
                        writes.insert(key, Some(value));
                    }
                    native.backend.commit(writes)?;
                }
                Ok(Ok(()))
            }
        }
    }
}

fn take_field(rest: &mut &[u8]) -> Option<Vec<u8>> {
    let (len, tail) = rest.split_at_checked(4)?;
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    let (field, tail) = tail.split_at_checked(len)?;
    *rest = tail;
    Some(field.to_vec())
}
