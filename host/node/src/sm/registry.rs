//! The active plugins: each name's version (component or built-in) with its apply and query
//! instances, shared with the query path; and activation, which replaces a name's version at one
//! log index on every replica.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tracing::{error, info};
use wasmraft_runtime::{InitContext, KvBackend, PluginError, Runtime, RuntimeError};
use wasmraft_store::{Store, View};

use super::backend::{ApplyBackend, QueryBackend, QueryView, SharedPending};
use super::compiler::Compiler;
use super::engine::{BUILTIN_PREFIX, Code, Engine, builtin_name, missing_builtin};
use super::shadow::Shadow;
use super::{Machine, rejected};
use crate::pb::{self, command_result};
use crate::security::PluginTrust;
use crate::util::{io_err, lock};

/// Earlier versions a plugin name keeps (for rollback); older ones are forgotten and, when no
/// other plugin uses them, their components deleted.
const MAX_HISTORY: usize = 5;

/// Where a complete component lives in the blobs family.
pub(crate) fn component_key(sha256: &str) -> String {
    format!("component/{sha256}")
}

/// Idle query instances a plugin keeps (more are made while queries run concurrently).
const IDLE_QUERY_INSTANCES: usize = 4;

/// A plugin active under a name: its code, one instance for the apply path, a pool for queries.
pub struct ActivePlugin {
    pub info: pb::RegisteredPlugin,
    /// The compiled component (or built-in), for more instances (snapshots, queries).
    code: Code,
    pub(super) apply: Mutex<Engine>,
    /// Idle query instances, each with the view slot its backend reads.
    queries: Mutex<Vec<(Engine, QueryView)>>,
    /// Every query so far fitted the small budget of a query run on an async worker (see
    /// `api::client`); once one has not, this plugin's queries go to the blocking pool.
    queries_fit_inline: AtomicBool,
}

impl ActivePlugin {
    /// Makes the plugin `info` names: a component (`bytes`), or a built-in (`builtin:NAME`), on
    /// the key space `info.space` (the name when empty).
    pub(crate) fn new(
        shared: &Shared,
        pending: &SharedPending,
        info: pb::RegisteredPlugin,
        bytes: &[u8],
    ) -> Result<Self, String> {
        let code = if info.sha256.starts_with(BUILTIN_PREFIX) {
            builtin(&info.sha256)?
        } else {
            Code::Component(shared.compiler.take(&info.sha256, bytes)?)
        };
        Ok(Self::from_code(shared, pending, info, code, true))
    }

    /// This version as a shadow candidate (`info.space` its own): its writes stay out of the
    /// writes digest.
    pub(crate) fn candidate(
        shared: &Shared,
        pending: &SharedPending,
        info: pb::RegisteredPlugin,
        bytes: &[u8],
    ) -> Result<Self, String> {
        let code = Code::Component(shared.compiler.take(&info.sha256, bytes)?);
        Ok(Self::from_code(shared, pending, info, code, false))
    }

    /// The same code under `info` (a promoted candidate), its writes in the digest.
    pub(crate) fn promoted(&self, shared: &Shared, pending: &SharedPending, info: pb::RegisteredPlugin) -> Self {
        Self::from_code(shared, pending, info, self.code.clone(), true)
    }

    fn from_code(
        shared: &Shared,
        pending: &SharedPending,
        mut info: pb::RegisteredPlugin,
        code: Code,
        in_digest: bool,
    ) -> Self {
        if info.space.is_empty() {
            info.space = info.name.clone();
        }
        let apply_backend = {
            let (store, name, space, pending) = (
                shared.store.clone(),
                info.name.clone(),
                info.space.clone(),
                pending.clone(),
            );
            move || -> Box<dyn KvBackend> {
                Box::new(ApplyBackend {
                    store: store.clone(),
                    name: name.clone(),
                    space: space.clone(),
                    pending: pending.clone(),
                    in_digest,
                })
            }
        };
        let apply = code.instance(&info.name, Box::new(apply_backend));
        Self {
            info,
            code,
            apply: Mutex::new(apply),
            queries: Mutex::new(Vec::new()),
            queries_fit_inline: AtomicBool::new(true),
        }
    }

    /// Whether this plugin's queries have all fitted a small budget so far.
    pub fn queries_fit_inline(&self) -> bool {
        self.queries_fit_inline.load(Ordering::Relaxed)
    }

    /// One of this plugin's queries needed more than the small budget.
    pub fn query_did_not_fit_inline(&self) {
        self.queries_fit_inline.store(false, Ordering::Relaxed);
    }

    /// The key space holding this plugin's pairs on this node.
    pub fn space(&self) -> &str {
        &self.info.space
    }

    /// Another instance of this plugin version, on its own backend (for snapshots).
    pub(crate) fn instance(&self, backend: impl Fn() -> Box<dyn KvBackend> + Send + Sync + 'static) -> Engine {
        self.code.instance(&self.info.name, Box::new(backend))
    }

    fn idle_query_instance(&self) -> Option<(Engine, QueryView)> {
        lock(&self.queries).pop()
    }

    /// A new query instance (instantiating can take milliseconds).
    fn new_query_instance(&self) -> (Engine, QueryView) {
        let slot = QueryView::default();
        let backend = {
            let (space, slot) = (self.info.space.clone(), slot.clone());
            move || -> Box<dyn KvBackend> {
                Box::new(QueryBackend {
                    space: space.clone(),
                    view: slot.clone(),
                })
            }
        };
        (self.code.instance(&self.info.name, Box::new(backend)), slot)
    }

    /// Runs a read-only query against `view` with at most `fuel` on `instance`, which goes back
    /// to the idle ones after.
    fn run_query(
        &self,
        (mut engine, slot): (Engine, QueryView),
        view: Arc<View>,
        request: &[u8],
        fuel: u64,
    ) -> Result<Result<Vec<u8>, PluginError>, RuntimeError> {
        *lock(&slot) = Some(view);
        let answer = engine.query(request, fuel);
        *lock(&slot) = None;
        let mut idle = lock(&self.queries);
        if idle.len() < IDLE_QUERY_INSTANCES {
            idle.push((engine, slot));
        }
        answer
    }
}

/// The earlier versions of a plugin once `sha256` replaces `live` (each once, oldest first, at
/// most [`MAX_HISTORY`]), and the versions that drop out.
pub(super) fn history_after(live: Option<&ActivePlugin>, sha256: &str) -> (Vec<pb::Version>, Vec<String>) {
    let mut history = live.map(|p| p.info.history.clone()).unwrap_or_default();
    if let Some(live) = live {
        history.retain(|v| v.sha256 != live.info.sha256);
        history.push(pb::Version {
            sha256: live.info.sha256.clone(),
            label: live.info.label.clone(),
            size: live.info.size,
            signature: live.info.signature.clone(),
            key_id: live.info.key_id.clone(),
        });
    }
    history.retain(|v| v.sha256 != sha256);
    let dropped = history
        .drain(..history.len().saturating_sub(MAX_HISTORY))
        .map(|v| v.sha256)
        .collect();
    (history, dropped)
}

/// The code of the built-in `sha256` names (`builtin:NAME`), if this node has it.
fn builtin(sha256: &str) -> Result<Code, String> {
    match builtin_name(sha256) {
        #[cfg(feature = "bench-native")]
        Some("kv-native") => Ok(Code::NativeKv),
        _ => Err(missing_builtin(sha256)),
    }
}

/// State shared between the state machine (inside Raft) and the client API.
pub struct Shared {
    /// The node's id (for its logs' spans).
    pub id: u64,
    /// Which components this node runs (checked again at every activation it applies).
    pub plugin_trust: PluginTrust,
    pub store: Store,
    pub runtime: Runtime,
    /// Compiles uploaded components in the background (off the apply path).
    pub compiler: Arc<Compiler>,
    /// Counters of what the apply path did (scraped at `/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    plugins: RwLock<BTreeMap<String, Arc<ActivePlugin>>>,
    /// Shadow runs, by plugin name.
    shadows: RwLock<BTreeMap<String, Arc<Shadow>>>,
    /// Written while an apply call's batch lands in RocksDB, read by queries: a query sees the
    /// state between two apply calls, never half of one.
    pub(crate) flush_lock: RwLock<()>,
    /// (applied index, state digest) as of the last write.
    pub(super) digest: Mutex<(u64, String)>,
    /// The state digest at recent checkpoint indexes (oldest first), for `cluster check`.
    pub(super) checkpoints: Mutex<std::collections::VecDeque<(u64, String)>>,
}

impl Shared {
    pub(super) fn new(
        id: u64,
        store: Store,
        runtime: Runtime,
        plugin_trust: PluginTrust,
        digest: (u64, String),
    ) -> Self {
        Self {
            id,
            plugin_trust,
            compiler: Compiler::new(id, runtime.clone(), store.clone()),
            metrics: Arc::default(),
            store,
            runtime,
            plugins: RwLock::new(BTreeMap::new()),
            shadows: RwLock::new(BTreeMap::new()),
            flush_lock: RwLock::new(()),
            digest: Mutex::new(digest),
            checkpoints: Mutex::default(),
        }
    }

    pub fn plugin(&self, name: &str) -> Option<Arc<ActivePlugin>> {
        self.plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn plugins(&self) -> Vec<Arc<ActivePlugin>> {
        self.plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The applied index and the digest (hex) of every result and write up to it.
    pub fn state_digest(&self) -> (u64, String) {
        lock(&self.digest).clone()
    }

    /// The index the stored state has applied (what [`Shared::state_digest`] digests).
    pub fn applied_index(&self) -> u64 {
        lock(&self.digest).0
    }

    /// The state digest at each recent checkpoint index this node applied, oldest first.
    pub fn checkpoints(&self) -> Vec<(u64, String)> {
        lock(&self.checkpoints).iter().cloned().collect()
    }

    /// Answers a query from a view taken under the flush lock, so it sees whole apply calls only;
    /// the plugin runs outside the lock, and queries run side by side. This may wait (for the
    /// lock, a new instance, the plugin): run it on the blocking pool.
    pub fn query(&self, plugin: &ActivePlugin, request: &[u8]) -> Result<Result<Vec<u8>, PluginError>, RuntimeError> {
        let view = {
            let _between_applies = self.flush_lock.read().unwrap_or_else(|p| p.into_inner());
            Arc::new(self.store.view())
        };
        let instance = plugin
            .idle_query_instance()
            .unwrap_or_else(|| plugin.new_query_instance());
        plugin.run_query(instance, view, request, u64::MAX)
    }

    /// [`Shared::query`] if it cannot wait: on an idle instance, with the flush lock free, and
    /// with at most `fuel` (a built-in has none: it always answers). `None` when it would have
    /// waited. Meant for an async worker.
    pub fn query_now(
        &self,
        plugin: &ActivePlugin,
        request: &[u8],
        fuel: u64,
    ) -> Option<Result<Result<Vec<u8>, PluginError>, RuntimeError>> {
        let (instance, view) = {
            let _between_applies = self.flush_lock.try_read().ok()?;
            (plugin.idle_query_instance()?, Arc::new(self.store.view()))
        };
        Some(plugin.run_query(instance, view, request, fuel))
    }

    /// Makes `plugin` the active one under its name.
    pub(super) fn insert_plugin(&self, plugin: Arc<ActivePlugin>) {
        let mut plugins = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        plugins.insert(plugin.info.name.clone(), plugin);
    }

    /// Whether a plugin runs the component `sha256`, keeps it as an earlier version, or runs it
    /// in shadow.
    pub(super) fn uses_component(&self, sha256: &str) -> bool {
        self.plugins()
            .iter()
            .any(|p| p.info.sha256 == sha256 || p.info.history.iter().any(|v| v.sha256 == sha256))
            || self.shadows().iter().any(|s| s.plugin.info.sha256 == sha256)
    }

    /// The shadow run of the plugin `name`, if any.
    pub fn shadow(&self, name: &str) -> Option<Arc<Shadow>> {
        self.shadows
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn shadows(&self) -> Vec<Arc<Shadow>> {
        self.shadows
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(super) fn insert_shadow(&self, shadow: Arc<Shadow>) {
        let mut shadows = self.shadows.write().unwrap_or_else(|p| p.into_inner());
        shadows.insert(shadow.plugin.info.name.clone(), shadow);
    }

    pub(super) fn remove_shadow(&self, name: &str) -> Option<Arc<Shadow>> {
        self.shadows.write().unwrap_or_else(|p| p.into_inner()).remove(name)
    }

    pub(crate) fn set_shadows(&self, shadows: BTreeMap<String, Arc<Shadow>>) {
        *self.shadows.write().unwrap_or_else(|p| p.into_inner()) = shadows;
    }

    /// Stops serving the plugin `name`; returns it.
    pub(super) fn remove_plugin(&self, name: &str) -> Option<Arc<ActivePlugin>> {
        let mut plugins = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        plugins.remove(name)
    }

    pub(crate) fn set_plugins(&self, plugins: BTreeMap<String, Arc<ActivePlugin>>) {
        *self.plugins.write().unwrap_or_else(|p| p.into_inner()) = plugins;
    }
}

impl Machine {
    pub(super) fn apply_activate(&mut self, index: u64, activate: pb::Activate) -> io::Result<pb::CommandResult> {
        if let Err(e) = wasmraft_store::check_space(&activate.name) {
            return Ok(rejected(e.to_string()));
        }
        let bytes = if activate.sha256.starts_with(BUILTIN_PREFIX) {
            Vec::new()
        } else {
            match self
                .shared
                .store
                .blob_get(&component_key(&activate.sha256))
                .map_err(io_err)?
            {
                Some(bytes) => bytes,
                None => {
                    return Ok(rejected(format!(
                        "activate: component {} was not uploaded",
                        activate.sha256
                    )));
                }
            }
        };
        let live = self.shared.plugin(&activate.name);
        let previous = live.as_ref().map(|p| p.info.sha256.clone());
        let (history, dropped) = history_after(live.as_deref(), &activate.sha256);
        let info = pb::RegisteredPlugin {
            name: activate.name.clone(),
            sha256: activate.sha256.clone(),
            size: bytes.len() as u64,
            activated_index: index,
            config: activate.config.clone(),
            // A new version takes over the data where it lies on this node.
            space: live.map_or_else(|| activate.name.clone(), |p| p.space().to_string()),
            history,
            label: activate.label.clone(),
            signature: activate.signature.clone(),
            key_id: activate.key_id.clone(),
        };
        if activate.sha256.starts_with(BUILTIN_PREFIX)
            && let Err(e) = builtin(&activate.sha256)
        {
            return Ok(rejected(format!("activate {}: {e}", activate.name)));
        }
        // Every voter compiled this component before the activation was proposed (the deploy's
        // barrier): failing now is this node's fault, and must not become a replicated result.
        let plugin = ActivePlugin::new(&self.shared, &self.pending, info, &bytes).map_err(|e| {
            error!(plugin = %activate.name, sha256 = %activate.sha256, index, "cannot activate on this node; apply stops: {e}");
            io_err(format!("activate {} on this node: {e}", activate.name))
        })?;
        let ctx = InitContext {
            previous_version: previous.clone(),
            config: activate.config.clone(),
        };
        let init = lock(&plugin.apply)
            .init(&ctx)
            .map_err(|e| io_err(format!("plugin {}: {e}", activate.name)))?;
        if let Err(e) = init {
            return Ok(rejected(format!("activate {}: init failed: {e}", activate.name)));
        }
        self.shared.insert_plugin(Arc::new(plugin));
        lock(&self.pending)
            .batch
            .delete_blob(&format!("{}{}", super::uploads::UNUSED, activate.sha256));
        self.delete_unreferenced(dropped);
        info!(plugin = %activate.name, sha256 = %activate.sha256, index, "plugin activated");
        Ok(pb::CommandResult {
            kind: Some(command_result::Kind::Activated(pb::Activated {
                name: activate.name,
                sha256: activate.sha256,
                previous,
            })),
        })
    }
}

impl Machine {
    /// Retires the plugin `retire.name`: it stops serving, and its key space is deleted with this
    /// entry's writes. Its components stay stored.
    pub(super) fn apply_retire(&mut self, index: u64, retire: pb::Retire) -> io::Result<pb::CommandResult> {
        let Some(plugin) = self.shared.remove_plugin(&retire.name) else {
            return Ok(rejected(format!("remove: no plugin {} is active", retire.name)));
        };
        lock(&self.pending).batch.clear_space(plugin.space());
        // Its shadow run, if any, goes with it.
        if let Some(shadow) = self.shared.remove_shadow(&retire.name) {
            lock(&self.pending).batch.clear_space(shadow.plugin.space());
            self.delete_unreferenced([shadow.plugin.info.sha256.clone()]);
        }
        let versions =
            std::iter::once(plugin.info.sha256.clone()).chain(plugin.info.history.iter().map(|v| v.sha256.clone()));
        self.delete_unreferenced(versions);
        info!(plugin = %retire.name, sha256 = %plugin.info.sha256, index, "plugin retired");
        Ok(pb::CommandResult {
            kind: Some(command_result::Kind::Retired(pb::Retired {
                name: retire.name,
                sha256: plugin.info.sha256.clone(),
            })),
        })
    }
}

impl Machine {
    /// Deletes the stored components of `versions` that no plugin runs or keeps as an earlier
    /// version (a snapshot file carries its own copy of the components it needs).
    pub(super) fn delete_unreferenced(&self, versions: impl IntoIterator<Item = String>) {
        let mut pending = lock(&self.pending);
        for sha in versions {
            if !sha.starts_with(BUILTIN_PREFIX) && !self.shared.uses_component(&sha) {
                info!(%sha, "deleting a component no plugin version uses");
                pending.batch.delete_blob(&component_key(&sha));
                self.shared.compiler.forget(&sha);
            }
        }
    }
}
