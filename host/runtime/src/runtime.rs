//! The engine, the linker and loading: validation, compilation and the compiled-artifact cache.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store};

use crate::backend::MemoryBackend;
use crate::bindings::{self, StateMachinePre};
use crate::error::{LoadError, RuntimeError};
use crate::host::{self, HostState};
use crate::limits::Limits;

/// How to build a [`Runtime`].
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub limits: Limits,
    /// Where compiled components are kept (`SHA256-ENGINEHASH.cwasm`); `None`: compile every load.
    pub cache_dir: Option<PathBuf>,
}

/// One wasmtime engine configured for determinism, shared by every plugin it loads. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Arc<Limits>,
    cache_dir: Option<PathBuf>,
    /// Identifies the wasmtime version and engine configuration in cache file names.
    engine_hash: String,
}

/// A validated, compiled component, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct PluginCode {
    pub(crate) inner: Arc<CodeInner>,
}

pub(crate) struct CodeInner {
    pub(crate) runtime: Runtime,
    pub(crate) pre: StateMachinePre<HostState>,
    pub(crate) sha256: [u8; 32],
    pub(crate) size: usize,
    pub(crate) imports: Vec<String>,
    pub(crate) from_cache: bool,
}

impl PluginCode {
    /// sha256 of the component bytes: the plugin version's identity.
    pub fn sha256(&self) -> [u8; 32] {
        self.inner.sha256
    }

    /// [`PluginCode::sha256`] as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.inner.sha256)
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// The component's import names (our interfaces and any WASI ones).
    pub fn imports(&self) -> &[String] {
        &self.inner.imports
    }

    /// Whether the compiled code came from the cache rather than a compilation.
    pub fn from_cache(&self) -> bool {
        self.inner.from_cache
    }
}

fn engine_config(limits: &Limits) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        // Fuel, not wall-clock, bounds a call: every replica stops at the same instruction.
        .consume_fuel(true)
        // NaN bit patterns differ between CPUs unless canonicalized.
        .cranelift_nan_canonicalization(true)
        // Relaxed SIMD results are implementation-defined: off (the `threads` cargo feature is off
        // too, so shared memories and atomics waits cannot exist).
        .wasm_relaxed_simd(false)
        .max_wasm_stack(limits.max_wasm_stack)
        .parallel_compilation(true);
    config
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = Engine::new(&engine_config(&config.limits)).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        add_imports(&mut linker).map_err(|e| RuntimeError::Engine(format!("linking host imports: {e:#}")))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        config.limits.max_wasm_stack.hash(&mut hasher);
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::Engine(format!("creating {}: {e}", dir.display())))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                limits: Arc::new(config.limits),
                cache_dir: config.cache_dir,
                engine_hash: format!("{:016x}", hasher.finish()),
            }),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub(crate) fn limits_arc(&self) -> Arc<Limits> {
        self.inner.limits.clone()
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Validates and compiles a component (or loads its compiled form from the cache).
    ///
    /// Checks, each with its own [`LoadError`]: the size limit, that the bytes are a component
    /// (not a core module), that it compiles, that it imports nothing but our interfaces and
    /// WASI, that it exports the `state-machine` world, and that it instantiates within limits.
    pub fn load(&self, bytes: &[u8]) -> Result<PluginCode, LoadError> {
        let limits = &self.inner.limits;
        if bytes.len() > limits.max_component_bytes {
            return Err(LoadError::TooLarge {
                size: bytes.len(),
                limit: limits.max_component_bytes,
            });
        }
        check_header(bytes)?;
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let (component, from_cache) = self.compile_cached(bytes, &sha256)?;

        let engine = &self.inner.engine;
        let imports: Vec<String> = component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let unsupported: Vec<String> = imports
            .iter()
            .filter(|name| !name.starts_with("wasmraft:plugin/") && !name.starts_with("wasi:"))
            .cloned()
            .collect();
        if !unsupported.is_empty() {
            return Err(LoadError::UnsupportedImports { names: unsupported });
        }
        let instance_pre =
            self.inner
                .linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::UnsupportedImports {
                    names: vec![format!("{e:#}")],
                })?;
        let pre = StateMachinePre::new(instance_pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;

        // A trial instantiation: catches start functions that trap and components over the
        // instance/memory/table limits now, not on the apply path.
        let state = HostState::new(Box::new(MemoryBackend::new()), self.limits_arc(), "validation".into());
        let mut store = store_with(self, state);
        store
            .set_fuel(limits.fuel_per_call)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        pre.instantiate(&mut store)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;

        Ok(PluginCode {
            inner: Arc::new(CodeInner {
                runtime: self.clone(),
                pre,
                sha256,
                size: bytes.len(),
                imports,
                from_cache,
            }),
        })
    }

    /// The compiled component, from the cache when it holds one for this engine.
    fn compile_cached(&self, bytes: &[u8], sha256: &[u8; 32]) -> Result<(Component, bool), LoadError> {
        let engine = &self.inner.engine;
        let compile = || Component::new(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")));
        let Some(dir) = &self.inner.cache_dir else {
            return Ok((compile()?, false));
        };
        let path = dir.join(format!("{}-{}.cwasm", hex::encode(sha256), self.inner.engine_hash));
        if path.exists() {
            // SAFETY: the file was written by `store_artifact` below from a component this engine
            // compiled: its name carries the component's sha256 and the engine's compatibility
            // hash, and it is renamed into place only once complete. The cache directory belongs
            // to the node; it is as trusted as the node's binary.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(err) => {
                    tracing::warn!(path = %path.display(), "discarding unusable cached artifact: {err:#}");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = compile()?;
        // The cache only saves time: failing to fill it (a full disk, a broken directory) must
        // not fail the load, which would make this node refuse what the others accept.
        match component.serialize() {
            Ok(artifact) => {
                if let Err(e) = store_artifact(&path, &artifact) {
                    tracing::warn!(path = %path.display(), "not caching the compiled component: {e}");
                }
            }
            Err(e) => tracing::warn!("not caching the compiled component: {e:#}"),
        }
        Ok((component, false))
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it into place.
fn store_artifact(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A binary's first eight bytes: `\0asm`, then version and layer (layer 1 is a component).
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    if bytes[6..8] == [0, 0] {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

fn add_imports(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    bindings::kv::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)?;
    bindings::log::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)?;
    host::entries::add_to_linker(linker)?;
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    host::nowait::shadow(linker)?;
    Ok(())
}

pub(crate) fn store_with(runtime: &Runtime, state: HostState) -> Store<HostState> {
    let mut store = Store::new(runtime.engine(), state);
    store.limiter(|state| state);
    store
}
