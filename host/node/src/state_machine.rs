//! The replicated state machine: committed entries go to plugins through the runtime; control
//! entries upload components and activate them; everything lands in RocksDB with the applied log
//! id in one write per apply call.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use futures::{Stream, TryStreamExt};
use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use prost::Message;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use wasmraft_runtime::{Entry as PluginEntry, InitContext, KvBackend, PluginCode, PluginError, Runtime, RuntimeError};
use wasmraft_store::Store;

use crate::backend::{ApplyBackend, Pending, ReadBackend, SharedPending, ViewBackend};
use crate::engine::{BUILTIN_PREFIX, Engine, NativeKvPlugin, builtin_name};
use crate::log_store::io_err;
use crate::pb::{self, command, command_result};
use crate::snapshot::{self, BuildJob, Phase, SnapshotFile, SnapshotSettings, SnapshotStats};
use crate::types::{
    LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, decode, log_id_from_pb, log_id_to_pb,
    stored_membership_from_pb, stored_membership_to_pb,
};

pub(crate) const APPLIED: &str = "applied";
pub(crate) const MEMBERSHIP: &str = "membership";
pub(crate) const REGISTRY: &str = "registry";
pub(crate) const DIGEST: &str = "digest";

/// Where a complete component lives in the blobs family.
pub(crate) fn component_key(sha256: &str) -> String {
    format!("component/{sha256}")
}

/// Where pieces of uploads in progress live in the blobs family.
pub(crate) const UPLOADS: &str = "upload/";

fn upload_prefix(sha256: &str) -> String {
    format!("{UPLOADS}{sha256}/")
}

/// A plugin active under a name: its code, one instance for the apply path, one for queries.
pub struct ActivePlugin {
    pub info: pb::RegisteredPlugin,
    /// The compiled component, for more instances (snapshots); `None` for a built-in.
    code: Option<PluginCode>,
    apply: Mutex<Engine>,
    query: Mutex<Engine>,
}

/// Makes a fresh backend for an instance.
type BackendFactory = Box<dyn Fn() -> Box<dyn KvBackend> + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ActivePlugin {
    /// Makes the plugin `info` names: a component (`bytes`), or a built-in (`builtin:NAME`), on
    /// the key space `info.space` (the name when empty).
    pub(crate) fn new(
        shared: &Shared,
        pending: &SharedPending,
        mut info: pb::RegisteredPlugin,
        bytes: &[u8],
    ) -> Result<Self, String> {
        if info.space.is_empty() {
            info.space = info.name.clone();
        }
        let code = if info.sha256.starts_with(BUILTIN_PREFIX) {
            if builtin_name(&info.sha256).is_none() {
                return Err(format!("this node has no built-in {:?}", info.sha256));
            }
            None
        } else {
            Some(shared.runtime.load(bytes).map_err(|e| e.to_string())?)
        };
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
                })
            }
        };
        let read_backend = {
            let (store, space) = (shared.store.clone(), info.space.clone());
            move || -> Box<dyn KvBackend> {
                Box::new(ReadBackend {
                    store: store.clone(),
                    space: space.clone(),
                })
            }
        };
        let apply = engine(code.as_ref(), &info.name, Box::new(apply_backend));
        let query = engine(code.as_ref(), &info.name, Box::new(read_backend));
        Ok(Self {
            info,
            code,
            apply: Mutex::new(apply),
            query: Mutex::new(query),
        })
    }

    /// The key space holding this plugin's pairs on this node.
    pub fn space(&self) -> &str {
        &self.info.space
    }

    /// Another instance of this plugin version, on its own backend (for snapshots).
    pub(crate) fn instance(&self, backend: impl Fn() -> Box<dyn KvBackend> + Send + Sync + 'static) -> Engine {
        engine(self.code.as_ref(), &self.info.name, Box::new(backend))
    }

    /// Runs a read-only query against what this node has applied.
    pub fn query(&self, request: &[u8]) -> Result<Result<Vec<u8>, PluginError>, RuntimeError> {
        lock(&self.query).query(request)
    }
}

fn engine(code: Option<&PluginCode>, name: &str, backend: BackendFactory) -> Engine {
    match code {
        Some(code) => Engine::Wasm(Box::new(code.instantiate(name, backend()))),
        None => Engine::Native(NativeKvPlugin::new(backend)),
    }
}

/// State shared between the state machine (inside Raft) and the client API.
pub struct Shared {
    pub store: Store,
    pub runtime: Runtime,
    plugins: RwLock<BTreeMap<String, Arc<ActivePlugin>>>,
    /// Written while an apply call's batch lands in RocksDB, read by queries: a query sees the
    /// state between two apply calls, never half of one.
    pub(crate) flush_lock: RwLock<()>,
    /// (applied index, state digest) as of the last write.
    digest: Mutex<(u64, String)>,
    pub snapshot_settings: SnapshotSettings,
    pub snapshot_stats: SnapshotStats,
}

impl Shared {
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

    /// Answers a query under the flush lock, so it sees whole apply calls only.
    pub fn query(&self, plugin: &ActivePlugin, request: &[u8]) -> Result<Result<Vec<u8>, PluginError>, RuntimeError> {
        let _still = self.flush_lock.read().unwrap_or_else(|p| p.into_inner());
        plugin.query(request)
    }

    /// Makes `plugin` the active one under its name.
    fn insert_plugin(&self, plugin: Arc<ActivePlugin>) {
        let mut plugins = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        plugins.insert(plugin.info.name.clone(), plugin);
    }

    fn set_plugins(&self, plugins: BTreeMap<String, Arc<ActivePlugin>>) {
        *self.plugins.write().unwrap_or_else(|p| p.into_inner()) = plugins;
    }
}

pub(crate) fn state_digest_hex(results: &[u8; 32], writes: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(results);
    h.update(writes);
    hex::encode(h.finalize())
}

/// openraft's state machine.
pub struct StateMachine {
    shared: Arc<Shared>,
    pending: SharedPending,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// Chain over every command entry's (index, result).
    results_digest: [u8; 32],
}

/// Runs synchronous work (plugin calls, RocksDB writes) from the async state machine, telling a
/// multi-threaded runtime to move other tasks off this worker meanwhile.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn rejected(message: impl Into<String>) -> pb::CommandResult {
    pb::CommandResult {
        kind: Some(command_result::Kind::Rejected(message.into())),
    }
}

fn ack() -> pb::CommandResult {
    pb::CommandResult {
        kind: Some(command_result::Kind::Ack(pb::Ack {})),
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl StateMachine {
    /// Opens the state machine on `store`: reads what was applied and re-creates the active
    /// plugins from their stored components.
    pub fn open(store: Store, runtime: Runtime, snapshot_settings: SnapshotSettings) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_settings.dir)?;
        snapshot::clean(&snapshot_settings.dir)?;
        let applied = match store.sm_meta_get(APPLIED).map_err(io_err)? {
            Some(bytes) => Some(log_id_from_pb(
                &decode::<pb::LogId>(&bytes, "applied log id").map_err(io_err)?,
            )),
            None => None,
        };
        let membership = match store.sm_meta_get(MEMBERSHIP).map_err(io_err)? {
            Some(bytes) => stored_membership_from_pb(&decode(&bytes, "membership").map_err(io_err)?).map_err(io_err)?,
            None => StoredMembership::default(),
        };
        let (results_digest, writes_digest) = match store.sm_meta_get(DIGEST).map_err(io_err)? {
            Some(bytes) if bytes.len() == 64 => {
                let mut r = [0; 32];
                let mut w = [0; 32];
                r.copy_from_slice(&bytes[..32]);
                w.copy_from_slice(&bytes[32..]);
                (r, w)
            }
            Some(_) => return Err(io_err("corrupt state digest")),
            None => ([0; 32], [0; 32]),
        };
        let pending = Arc::new(Mutex::new(Pending::new(&store, writes_digest)));
        let shared = Arc::new(Shared {
            store,
            runtime,
            plugins: RwLock::new(BTreeMap::new()),
            flush_lock: RwLock::new(()),
            digest: Mutex::new((
                applied.map_or(0, |a| a.index),
                state_digest_hex(&results_digest, &writes_digest),
            )),
            snapshot_settings,
            snapshot_stats: SnapshotStats::default(),
        });
        let sm = Self {
            shared,
            pending,
            applied,
            membership,
            results_digest,
        };
        sm.load_registry()?;
        sm.drop_unused_spaces()?;
        Ok(sm)
    }

    /// Deletes key spaces no active plugin uses: what a crash in the middle of a snapshot
    /// install left (the install had not switched to them).
    fn drop_unused_spaces(&self) -> io::Result<()> {
        let used: BTreeSet<String> = self.shared.plugins().iter().map(|p| p.space().to_string()).collect();
        let mut batch = self.shared.store.batch();
        for space in self.shared.store.spaces().map_err(io_err)? {
            if !used.contains(&space) {
                warn!(%space, "deleting a key space no plugin uses (left by an interrupted snapshot install)");
                batch.clear_space(&space);
            }
        }
        if !batch.is_empty() {
            self.shared.store.write(batch).map_err(io_err)?;
        }
        Ok(())
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn load_registry(&self) -> io::Result<()> {
        let registry: pb::Registry = match self.shared.store.sm_meta_get(REGISTRY).map_err(io_err)? {
            Some(bytes) => decode(&bytes, "plugin registry").map_err(io_err)?,
            None => pb::Registry::default(),
        };
        let mut plugins = BTreeMap::new();
        for info in registry.plugins {
            let bytes = if info.sha256.starts_with(BUILTIN_PREFIX) {
                Vec::new()
            } else {
                self.shared
                    .store
                    .blob_get(&component_key(&info.sha256))
                    .map_err(io_err)?
                    .ok_or_else(|| {
                        io_err(format!(
                            "plugin {}: component {} missing from blobs",
                            info.name, info.sha256
                        ))
                    })?
            };
            let plugin = ActivePlugin::new(&self.shared, &self.pending, info.clone(), &bytes)
                .map_err(|e| io_err(format!("plugin {}: {e}", info.name)))?;
            info!(plugin = %info.name, sha256 = %info.sha256, "plugin loaded");
            plugins.insert(info.name.clone(), Arc::new(plugin));
        }
        self.shared.set_plugins(plugins);
        Ok(())
    }

    fn registry(&self) -> pb::Registry {
        pb::Registry {
            plugins: self.shared.plugins().iter().map(|p| p.info.clone()).collect(),
        }
    }

    /// Writes everything pending with the applied log id, membership and digest, atomically.
    fn flush(&mut self, registry_changed: bool) -> io::Result<()> {
        let store = self.shared.store.clone();
        let mut pending = lock(&self.pending);
        let mut batch = pending.take_batch(&store);
        if let Some(applied) = &self.applied {
            batch.put_meta(APPLIED, &log_id_to_pb(applied).encode_to_vec());
        }
        batch.put_meta(MEMBERSHIP, &stored_membership_to_pb(&self.membership).encode_to_vec());
        let mut digest = self.results_digest.to_vec();
        digest.extend_from_slice(&pending.writes_digest);
        batch.put_meta(DIGEST, &digest);
        if registry_changed {
            batch.put_meta(REGISTRY, &self.registry().encode_to_vec());
        }
        let writes_digest = pending.writes_digest;
        drop(pending);
        {
            let _writing = self.shared.flush_lock.write().unwrap_or_else(|p| p.into_inner());
            store.write(batch).map_err(io_err)?;
        }
        self.publish_digest(&writes_digest);
        Ok(())
    }

    /// Shows the digest of what is now stored, with its applied index, to `cluster status`.
    fn publish_digest(&self, writes_digest: &[u8; 32]) {
        let hex = state_digest_hex(&self.results_digest, writes_digest);
        *lock(&self.shared.digest) = (self.applied.map_or(0, |a| a.index), hex);
    }

    fn fold_result(&mut self, index: u64, result: &pb::CommandResult) {
        let mut h = Sha256::new();
        h.update(self.results_digest);
        h.update(index.to_be_bytes());
        h.update(result.encode_to_vec());
        self.results_digest = h.finalize().into();
    }

    /// Applies entries in order; returns one result per command entry, with its responder.
    fn apply_entries(
        &mut self,
        entries: Vec<EntryResponder<TypeConfig>>,
    ) -> io::Result<Vec<(openraft::storage::ApplyResponder<TypeConfig>, pb::CommandResult)>> {
        let mut replies = Vec::new();
        let mut registry_changed = false;
        let mut entries = entries.into_iter().peekable();
        while let Some((entry, responder)) = entries.next() {
            let log_id = entry.log_id();
            // The last entry this step covers (a call takes the following calls to its plugin).
            let mut last = log_id;
            let results: Vec<(u64, pb::CommandResult, Option<_>)> = match entry.payload {
                EntryPayload::Blank | EntryPayload::Membership(_) => {
                    if let EntryPayload::Membership(m) = entry.payload {
                        self.membership = StoredMembership::new(Some(log_id), m);
                    }
                    // Not a command: no result in the digest, but whoever proposed it (a
                    // membership change) is waiting for the reply.
                    if let Some(responder) = responder {
                        replies.push((responder, ack()));
                    }
                    Vec::new()
                }
                EntryPayload::Normal(command) => {
                    let timestamp_ms = command.timestamp_ms;
                    match command.kind {
                        Some(command::Kind::Call(call)) => {
                            match self.shared.plugin(&call.plugin) {
                                None => vec![(
                                    log_id.index,
                                    rejected(format!("unknown plugin {:?}", call.plugin)),
                                    responder,
                                )],
                                Some(plugin) => {
                                    // Take every following call to the same plugin into one apply call.
                                    let mut batch = vec![(
                                        PluginEntry {
                                            index: log_id.index,
                                            term: log_id.leader_id.term,
                                            timestamp_ms,
                                            payload: call.payload.to_vec(),
                                        },
                                        responder,
                                    )];
                                    while let Some((next, _)) = entries.peek()
                                        && let EntryPayload::Normal(pb::Command {
                                            kind: Some(command::Kind::Call(c)),
                                            ..
                                        }) = &next.payload
                                        && c.plugin == call.plugin
                                    {
                                        let Some((next, responder)) = entries.next() else { break };
                                        let next_id = next.log_id();
                                        let EntryPayload::Normal(pb::Command {
                                            timestamp_ms,
                                            kind: Some(command::Kind::Call(c)),
                                        }) = next.payload
                                        else {
                                            unreachable!("peeked a call")
                                        };
                                        last = next_id;
                                        batch.push((
                                            PluginEntry {
                                                index: next_id.index,
                                                term: next_id.leader_id.term,
                                                timestamp_ms,
                                                payload: c.payload.to_vec(),
                                            },
                                            responder,
                                        ));
                                    }
                                    self.apply_calls(&plugin, batch)?
                                }
                            }
                        }
                        Some(command::Kind::BlobChunk(chunk)) => {
                            self.flush(registry_changed)?;
                            registry_changed = false;
                            vec![(log_id.index, self.apply_chunk(chunk)?, responder)]
                        }
                        Some(command::Kind::Activate(activate)) => {
                            self.flush(registry_changed)?;
                            let result = self.apply_activate(log_id.index, activate)?;
                            registry_changed = matches!(result.kind, Some(command_result::Kind::Activated(_)));
                            vec![(log_id.index, result, responder)]
                        }
                        None => vec![(log_id.index, rejected("empty command"), responder)],
                    }
                }
            };
            self.applied = Some(last);
            for (index, result, responder) in results {
                self.fold_result(index, &result);
                if let Some(responder) = responder {
                    replies.push((responder, result));
                }
            }
        }
        self.flush(registry_changed)?;
        Ok(replies)
    }

    /// Runs a group of calls to one plugin through a single `apply` crossing.
    #[allow(clippy::type_complexity)]
    fn apply_calls(
        &mut self,
        plugin: &ActivePlugin,
        batch: Vec<(PluginEntry, Option<openraft::storage::ApplyResponder<TypeConfig>>)>,
    ) -> io::Result<
        Vec<(
            u64,
            pb::CommandResult,
            Option<openraft::storage::ApplyResponder<TypeConfig>>,
        )>,
    > {
        let (entries, responders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let outcomes = lock(&plugin.apply).apply(entries).map_err(|e| {
            // A node fault (storage, engine): stop applying rather than record a result.
            io_err(format!("plugin {}: {e}", plugin.info.name))
        })?;
        Ok(outcomes
            .into_iter()
            .zip(responders)
            .map(|(outcome, responder)| {
                let outcome_pb = match outcome.result {
                    Ok(bytes) => pb::call_result::Outcome::Ok(bytes),
                    Err(e) => pb::call_result::Outcome::Error(e.to_string()),
                };
                let result = pb::CommandResult {
                    kind: Some(command_result::Kind::Call(pb::CallResult {
                        version: plugin.info.sha256.clone(),
                        outcome: Some(outcome_pb),
                    })),
                };
                (outcome.index, result, responder)
            })
            .collect())
    }

    /// Stores a piece of an upload; the last piece assembles and checks the component.
    fn apply_chunk(&mut self, chunk: pb::BlobChunk) -> io::Result<pb::CommandResult> {
        let store = self.shared.store.clone();
        let max = self.shared.runtime.limits().max_component_bytes as u64;
        if !is_sha256_hex(&chunk.sha256) {
            return Ok(rejected("upload: sha256 must be 64 lowercase hex digits"));
        }
        if chunk.total > max {
            return Ok(rejected(format!(
                "upload: {} bytes is over max_component_bytes ({max})",
                chunk.total
            )));
        }
        let end = chunk.offset.saturating_add(chunk.data.len() as u64);
        if end > chunk.total || chunk.data.is_empty() {
            return Ok(rejected("upload: chunk outside the component"));
        }
        if store.blob_get(&component_key(&chunk.sha256)).map_err(io_err)?.is_some() {
            return Ok(ack()); // already uploaded: an upload is idempotent
        }
        let prefix = upload_prefix(&chunk.sha256);
        let key = format!("{prefix}{:016x}", chunk.offset);
        let mut pending = lock(&self.pending);
        if end < chunk.total {
            pending.batch.put_blob(&key, &chunk.data);
            return Ok(ack());
        }
        // The last piece: assemble from the stored pieces, in offset order.
        let mut bytes = Vec::with_capacity(chunk.total as usize);
        let mut stored = store.blob_scan_prefix(&prefix).map_err(io_err)?;
        stored.push((key, chunk.data.to_vec()));
        for (key, piece) in &stored {
            let offset = u64::from_str_radix(&key[prefix.len()..], 16).map_err(io_err)?;
            if offset == bytes.len() as u64 {
                bytes.extend_from_slice(piece);
            }
            pending.batch.delete_blob(key);
        }
        if bytes.len() as u64 != chunk.total {
            return Ok(rejected(format!(
                "upload {}: pieces cover {} of {} bytes (upload again)",
                chunk.sha256,
                bytes.len(),
                chunk.total
            )));
        }
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != chunk.sha256 {
            return Ok(rejected(format!(
                "upload: content has sha256 {actual}, not {}",
                chunk.sha256
            )));
        }
        pending.batch.put_blob(&component_key(&chunk.sha256), &bytes);
        Ok(ack())
    }

    fn apply_activate(&mut self, index: u64, activate: pb::Activate) -> io::Result<pb::CommandResult> {
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
        let info = pb::RegisteredPlugin {
            name: activate.name.clone(),
            sha256: activate.sha256.clone(),
            size: bytes.len() as u64,
            activated_index: index,
            config: activate.config.clone(),
            // A new version takes over the data where it lies on this node.
            space: live.map_or_else(|| activate.name.clone(), |p| p.space().to_string()),
        };
        let plugin = match ActivePlugin::new(&self.shared, &self.pending, info, &bytes) {
            Ok(plugin) => plugin,
            Err(e) => return Ok(rejected(format!("activate {}: {e}", activate.name))),
        };
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

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        // Plugin calls are synchronous CPU work: keep them off the async workers' queue.
        let replies = blocking(|| self.apply_entries(batch))?;
        for (responder, result) in replies {
            responder.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Between two apply calls (everything applied is written): capture the applied state's
        // header and a RocksDB view of it. The build reads only the view, so applying goes on.
        let plugins = self.shared.plugins();
        let header = pb::SnapshotHeader {
            format: snapshot::FORMAT,
            last_log_id: self.applied.as_ref().map(log_id_to_pb),
            membership: Some(stored_membership_to_pb(&self.membership)),
            registry: Some(pb::Registry {
                plugins: plugins
                    .iter()
                    .map(|p| pb::RegisteredPlugin {
                        space: String::new(),
                        ..p.info.clone()
                    })
                    .collect(),
            }),
            digest: {
                let mut d = self.results_digest.to_vec();
                d.extend_from_slice(&lock(&self.pending).writes_digest);
                d
            },
        };
        let view = Arc::new(self.shared.store.view());
        let plugins = plugins
            .iter()
            .map(|p| {
                let (view, space) = (view.clone(), p.space().to_string());
                let engine = p.instance(move || -> Box<dyn KvBackend> {
                    Box::new(ViewBackend {
                        view: view.clone(),
                        space: space.clone(),
                    })
                });
                (p.info.name.clone(), engine)
            })
            .collect();
        SnapshotBuilder {
            job: Mutex::new(Some(BuildJob {
                header,
                view,
                plugins,
                settings: self.shared.snapshot_settings.clone(),
            })),
            shared: self.shared.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), io::Error> {
        let started = Instant::now();
        let staged = blocking(|| snapshot::stage(&self.shared, &self.pending, &snapshot))?;
        snapshot::failpoint("snapshot-install-staged");
        // The switch: one synced write replaces the live spaces, uploads in progress, applied
        // log id, membership, registry and digest; queries see the old state or the new one.
        let store = self.shared.store.clone();
        let new_spaces: BTreeSet<&str> = staged.plugins.iter().map(|p| p.space()).collect();
        let mut batch = store.batch();
        for old in self.shared.plugins() {
            if !new_spaces.contains(old.space()) {
                batch.clear_space(old.space());
            }
        }
        batch.delete_blob_prefix(UPLOADS);
        for (key, value) in &staged.blobs {
            batch.put_blob(key, value);
        }
        if let Some(applied) = &meta.last_log_id {
            batch.put_meta(APPLIED, &log_id_to_pb(applied).encode_to_vec());
        }
        batch.put_meta(
            MEMBERSHIP,
            &stored_membership_to_pb(&meta.last_membership).encode_to_vec(),
        );
        let registry = pb::Registry {
            plugins: staged.plugins.iter().map(|p| p.info.clone()).collect(),
        };
        batch.put_meta(REGISTRY, &registry.encode_to_vec());
        let digest = &staged.header.digest;
        if digest.len() != 64 {
            return Err(io_err("snapshot without a state digest"));
        }
        batch.put_meta(DIGEST, digest);
        let plugins: BTreeMap<String, Arc<ActivePlugin>> = staged
            .plugins
            .into_iter()
            .map(|p| (p.info.name.clone(), Arc::new(p)))
            .collect();
        {
            let _writing = self.shared.flush_lock.write().unwrap_or_else(|p| p.into_inner());
            blocking(|| store.write_synced(batch)).map_err(io_err)?;
            self.shared.set_plugins(plugins);
        }
        snapshot::failpoint("snapshot-install-switched");
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.results_digest.copy_from_slice(&digest[..32]);
        let writes_digest: [u8; 32] = digest[32..].try_into().map_err(io_err)?;
        lock(&self.pending).writes_digest = writes_digest;
        self.publish_digest(&writes_digest);
        snapshot::keep_as_current(&self.shared.snapshot_settings, &snapshot)?;
        let stats = &self.shared.snapshot_stats;
        stats.installed.fetch_add(1, Ordering::Relaxed);
        stats.record(
            Phase::Install,
            snapshot::phase_stats(staged.raw_bytes, snapshot.size, started),
        );
        info!(last_log_id = ?self.applied, secs = started.elapsed().as_secs_f64(), "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SnapshotFile>>, io::Error> {
        let Some(file) = snapshot::current(&self.shared.snapshot_settings.dir)? else {
            return Ok(None);
        };
        let header = match snapshot::read_header(&file.path) {
            Ok(header) => header,
            Err(e) => {
                warn!(path = %file.path.display(), "ignoring unreadable snapshot: {e}");
                return Ok(None);
            }
        };
        Ok(Some(Snapshot {
            meta: snapshot::meta_of(&header)?,
            snapshot: file,
        }))
    }
}

/// A snapshot build, captured by [`StateMachine::get_snapshot_builder`] and run by openraft on a
/// task of its own.
pub struct SnapshotBuilder {
    /// In a mutex only because openraft wants a `Sync` builder (plugin instances are not).
    job: Mutex<Option<BuildJob>>,
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot<SnapshotFile>, io::Error> {
        let job = lock(&self.job).take().ok_or_else(|| io_err("snapshot already built"))?;
        let header = job.header.clone();
        let stats = &self.shared.snapshot_stats;
        stats.building.store(true, Ordering::Relaxed);
        let built = tokio::task::spawn_blocking(move || snapshot::build(job)).await;
        stats.building.store(false, Ordering::Relaxed);
        let built = built.map_err(io_err)?;
        match built {
            Ok(built) => {
                stats.built.fetch_add(1, Ordering::Relaxed);
                stats.record(Phase::Build, built.stats);
                Ok(Snapshot {
                    meta: snapshot::meta_of(&header)?,
                    snapshot: built.file,
                })
            }
            Err(e) => {
                // openraft treats a failed build as a storage fault and stops the node. A plugin
                // whose snapshot export fails must not take the node down: hand back a snapshot
                // of nothing (no log id), which openraft ignores as not newer than what it has.
                tracing::error!("snapshot build failed (the node goes on without it): {e}");
                stats.build_failed(e.to_string());
                Ok(Snapshot {
                    meta: SnapshotMeta {
                        last_log_id: None,
                        last_membership: StoredMembership::default(),
                    },
                    snapshot: SnapshotFile {
                        path: self.shared.snapshot_settings.dir.join("failed-build"),
                        size: 0,
                        verified: false,
                    },
                })
            }
        }
    }
}
