//! What runs a plugin: a WebAssembly component through the runtime, or (only in a node built
//! with the `bench-native` feature) a built-in compiled into the node. The one built-in,
//! `kv-native`, is the kv plugin's own logic (`plugins/kv-core`) run natively through the guest
//! SDK's `NativeHost`: the baseline `wasmraft bench --compare-native` measures the WASM plugin
//! against, over the same storage, log and network. A production node links neither.

use std::time::{Duration, Instant};

use wasmraft_runtime::{Entry, EntryOutcome, InitContext, Plugin, PluginCode, PluginError, RuntimeError};

use super::backend::BackendFactory;
use crate::util::{blocking, thread_cpu_time};

/// Activation hashes of built-ins start with this.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// The built-ins this node can activate (`builtin:NAME`).
#[cfg(feature = "bench-native")]
pub const BUILTINS: &[&str] = &["kv-native"];
/// The built-ins this node can activate (`builtin:NAME`): none without `bench-native`.
#[cfg(not(feature = "bench-native"))]
pub const BUILTINS: &[&str] = &[];

/// Whether `sha256` names a built-in this node has.
pub fn builtin_name(sha256: &str) -> Option<&str> {
    sha256
        .strip_prefix(BUILTIN_PREFIX)
        .filter(|name| BUILTINS.contains(name))
}

/// Why this node cannot run the built-in `sha256` names.
pub fn missing_builtin(sha256: &str) -> String {
    if cfg!(feature = "bench-native") {
        format!("this node has no built-in {sha256:?} (built-ins: {BUILTINS:?})")
    } else {
        format!(
            "this node has no built-in {sha256:?}: built-ins are the bench's native baselines, in a node built with \
             `--features bench` only"
        )
    }
}

/// A plugin version's code: what each instance of it is made from. Cheap to clone.
#[derive(Clone)]
pub enum Code {
    Component(PluginCode),
    #[cfg(feature = "bench-native")]
    NativeKv,
}

impl Code {
    /// A new instance over the kv space `backend` opens.
    pub fn instance(&self, name: &str, backend: BackendFactory) -> Engine {
        match self {
            Code::Component(code) => Engine::Wasm(Box::new(code.instantiate(name, backend()))),
            #[cfg(feature = "bench-native")]
            Code::NativeKv => Engine::Native(native::NativeKvPlugin::new(backend)),
        }
    }
}

pub enum Engine {
    Wasm(Box<Plugin>),
    #[cfg(feature = "bench-native")]
    Native(native::NativeKvPlugin),
}

impl Engine {
    pub fn apply(&mut self, entries: Vec<Entry>) -> Result<Vec<EntryOutcome>, RuntimeError> {
        match self {
            Engine::Wasm(plugin) => plugin.apply(entries),
            #[cfg(feature = "bench-native")]
            Engine::Native(native) => native.apply(entries),
        }
    }

    /// Applies `entries` on the caller's thread; with `until` (an async worker's), those left
    /// when it passes apply under [`blocking`], off the worker (`Plugin::apply_until`). When the
    /// call was cut so, also says how much CPU time the entries left took, off the worker.
    pub fn apply_within(
        &mut self,
        entries: Vec<Entry>,
        until: Option<Instant>,
    ) -> Result<(Vec<EntryOutcome>, Option<Duration>), RuntimeError> {
        let (mut outcomes, rest) = match self {
            Engine::Wasm(plugin) => plugin.apply_until(entries, until)?,
            // Trusted code, as quick as the plugin it stands for.
            #[cfg(feature = "bench-native")]
            Engine::Native(native) => (native.apply(entries)?, Vec::new()),
        };
        if rest.is_empty() {
            return Ok((outcomes, None));
        }
        let cpu = thread_cpu_time();
        outcomes.extend(blocking(|| self.apply(rest))?);
        Ok((outcomes, Some(thread_cpu_time().saturating_sub(cpu))))
    }

    /// A query with at most `fuel` (a built-in has no fuel: it always answers).
    pub fn query(&mut self, request: &[u8], fuel: u64) -> Result<Result<Vec<u8>, PluginError>, RuntimeError> {
        match self {
            Engine::Wasm(plugin) => plugin.query_with_fuel(request, fuel),
            #[cfg(feature = "bench-native")]
            Engine::Native(native) => native.query(request),
        }
    }

    pub fn init(&mut self, ctx: &InitContext) -> Result<Result<(), PluginError>, RuntimeError> {
        match self {
            Engine::Wasm(plugin) => plugin.init(ctx),
            #[cfg(feature = "bench-native")]
            Engine::Native(_) => Ok(Ok(())),
        }
    }

    pub fn snapshot(
        &mut self,
        max_chunk: u32,
        sink: impl FnMut(Vec<u8>) -> Result<(), RuntimeError>,
    ) -> Result<Result<(), PluginError>, RuntimeError> {
        match self {
            Engine::Wasm(plugin) => plugin.snapshot(max_chunk, sink),
            #[cfg(feature = "bench-native")]
            Engine::Native(native) => native.snapshot(sink),
        }
    }

    pub fn restore(
        &mut self,
        chunks: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<Result<(), PluginError>, RuntimeError> {
        match self {
            Engine::Wasm(plugin) => plugin.restore(chunks),
            #[cfg(feature = "bench-native")]
            Engine::Native(native) => native.restore(chunks),
        }
    }
}

#[cfg(feature = "bench-native")]
mod native {
    use std::sync::{Arc, Mutex};

    use wasmraft_guest::EntryContext;
    use wasmraft_guest::testing::{NativeHost, NativeKv};
    use wasmraft_runtime::{BackendError, Entry, EntryOutcome, KvBackend, PluginError, RuntimeError, WriteSet};

    use super::BackendFactory;

    /// The kv plugin's logic, natively, over one kv space.
    pub struct NativeKvPlugin {
        host: NativeHost<kv_core::KvPlugin>,
        backend: Box<dyn KvBackend>,
        /// Another handle on the same kv space, for the SDK to read through during a call.
        fork: BackendFactory,
    }

    /// A backend's reads, for the SDK, whose reads cannot fail: the first storage error is kept
    /// here, and the call that met it fails with it (never "absent").
    struct Reads {
        backend: Box<dyn KvBackend>,
        failed: Arc<Mutex<Option<BackendError>>>,
    }

    impl Reads {
        fn keep<T>(&self, result: Result<T, BackendError>, absent: T) -> T {
            result.unwrap_or_else(|e| {
                self.failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                absent
            })
        }
    }

    impl NativeKv for Reads {
        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.keep(self.backend.get(key), None)
        }

        fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
            self.keep(self.backend.scan(start, end, limit), Vec::new())
        }
    }

    impl NativeKvPlugin {
        pub fn new(fork: BackendFactory) -> Self {
            Self {
                host: NativeHost::default(),
                backend: fork(),
                fork,
            }
        }

        /// Runs `call` with a reader on this plugin's space; a read that failed fails the call.
        fn with_reads<R>(
            &mut self,
            call: impl FnOnce(&mut NativeHost<kv_core::KvPlugin>, Box<dyn NativeKv>) -> R,
        ) -> Result<R, RuntimeError> {
            let failed = Arc::new(Mutex::new(None));
            let reads = Reads {
                backend: (self.fork)(),
                failed: failed.clone(),
            };
            let result = call(&mut self.host, Box::new(reads));
            match failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(e) => Err(RuntimeError::Backend(e)),
                None => Ok(result),
            }
        }

        pub fn apply(&mut self, entries: Vec<Entry>) -> Result<Vec<EntryOutcome>, RuntimeError> {
            let mut outcomes = Vec::with_capacity(entries.len());
            for entry in entries {
                let ctx = EntryContext {
                    index: entry.index,
                    term: entry.term,
                    timestamp_ms: entry.timestamp_ms,
                };
                let (result, writes) = self.with_reads(|host, reads| host.apply(reads, &ctx, &entry.payload))?;
                if !writes.is_empty() {
                    self.backend.commit(writes)?;
                }
                outcomes.push(EntryOutcome {
                    index: entry.index,
                    result: result.map_err(PluginError::Returned),
                    fuel_used: 0,
                });
            }
            Ok(outcomes)
        }

        pub fn query(&mut self, request: &[u8]) -> Result<Result<Vec<u8>, PluginError>, RuntimeError> {
            let result = self.with_reads(|host, reads| host.query(reads, request))?;
            Ok(result.map_err(PluginError::Returned))
        }

        /// Pairs read per scan while the built-in streams its snapshot: its pairs as (u32 key
        /// length, key, u32 value length, value) records, a chunk per scan.
        const SNAPSHOT_SCAN: usize = 1024;

        pub fn snapshot(
            &mut self,
            mut sink: impl FnMut(Vec<u8>) -> Result<(), RuntimeError>,
        ) -> Result<Result<(), PluginError>, RuntimeError> {
            let mut start: Vec<u8> = Vec::new();
            let mut first = true;
            loop {
                let pairs = self.backend.scan(&start, None, Self::SNAPSHOT_SCAN)?;
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
                    Some((key, _)) if pairs.len() == Self::SNAPSHOT_SCAN => start = key.clone(),
                    _ => return Ok(Ok(())),
                }
            }
        }

        pub fn restore(
            &mut self,
            chunks: impl IntoIterator<Item = Vec<u8>>,
        ) -> Result<Result<(), PluginError>, RuntimeError> {
            for chunk in chunks {
                let mut writes = WriteSet::new();
                let mut rest = chunk.as_slice();
                while !rest.is_empty() {
                    let (Some(key), Some(value)) = (take_field(&mut rest), take_field(&mut rest)) else {
                        return Ok(Err(PluginError::Returned(
                            "kv-native snapshot: truncated record".into(),
                        )));
                    };
                    writes.insert(key, Some(value));
                }
                self.backend.commit(writes)?;
            }
            Ok(Ok(()))
        }
    }

    fn take_field(rest: &mut &[u8]) -> Option<Vec<u8>> {
        let (len, tail) = rest.split_at_checked(4)?;
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let (field, tail) = tail.split_at_checked(len)?;
        *rest = tail;
        Some(field.to_vec())
    }
}
