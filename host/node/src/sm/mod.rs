//! The replicated state machine's core: committed entries go to plugins through the runtime
//! (one `apply` crossing per run of calls to one plugin); control entries upload components
//! (`uploads`) and activate them (`registry`); everything an apply call did lands in RocksDB with
//! the applied log id and the state digest in one write. openraft's traits are implemented over
//! it in `raft::state_machine`; snapshots read and replace it through `snapshot`.
//!
//! Invariant: the stored applied log id always matches the effects stored with it (control
//! entries flush what came before them first), so replay after a crash is exact.

mod backend;
mod compiler;
mod digest;
mod engine;
mod registry;
mod sessions;
mod shadow;
mod uploads;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use prost::Message;
use tracing::{error, info, warn};
use wasmraft_runtime::{Entry as PluginEntry, Runtime};
use wasmraft_store::Store;

pub(crate) use backend::{Pending, SharedPending, Staging, StagingBackend, ViewBackend};
pub(crate) use digest::state_digest_hex;
pub use engine::BUILTINS;
pub(crate) use engine::{BUILTIN_PREFIX, Engine, builtin_name, missing_builtin};
pub(crate) use registry::{ActivePlugin, Shared, component_key};
pub(crate) use sessions::SESSIONS;
pub(crate) use shadow::Shadow;
pub(crate) use uploads::{STARTED as UPLOADS_STARTED, UNUSED as COMPONENTS_UNUSED, UPLOADS};

use crate::pb::{self, command, command_result};
use crate::security::PluginTrust;
use crate::types::{LogId, StoredMembership, TypeConfig};
use crate::util::{io_err, lock};
use crate::wire::{decode, log_id_from_pb, log_id_to_pb, stored_membership_from_pb, stored_membership_to_pb};

/// The state digest is kept at the indexes before multiples of this (apply calls break there,
/// so the digest exists on every replica whatever its batches)...
pub(crate) const CHECKPOINT_EVERY: u64 = 256;
/// ... for this many checkpoints.
const CHECKPOINTS_KEPT: usize = 64;

pub(crate) const APPLIED: &str = "applied";
pub(crate) const MEMBERSHIP: &str = "membership";
pub(crate) const REGISTRY: &str = "registry";
pub(crate) const DIGEST: &str = "digest";

/// The state machine's core: what it has applied, and the writes of the apply call in progress.
pub struct Machine {
    shared: Arc<Shared>,
    pending: SharedPending,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// Chain over every command entry's (index, result).
    results_digest: [u8; 32],
    /// Session records as the store holds them once the pending batch lands (`None`: none, or
    /// just forgotten): the ones read or written lately, up to [`sessions::CACHED`] after a flush.
    sessions: HashMap<String, Option<pb::SessionRecord>>,
    /// A shadow's record changed since the last flush (it is stored with the registry).
    shadows_changed: bool,
    /// CPU time of the entries that apply calls on an async worker left at their deadline and
    /// applied off it, since [`Machine::take_off_worker_cpu`].
    off_worker_cpu: Duration,
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

/// What an apply call answers: one result per command entry, with whoever waits for it.
pub(crate) type Replies = Vec<(openraft::storage::ApplyResponder<TypeConfig>, pb::CommandResult)>;

impl Machine {
    /// Opens the state machine on `store`: reads what was applied and re-creates the active
    /// plugins from their stored components.
    /// A component this node does not trust never runs here: its activation stops this node's
    /// apply (a node fault, not a replicated result, since nodes may trust different keys).
    fn check_trusted(&self, activate: &pb::Activate, index: u64) -> io::Result<()> {
        if activate.sha256.starts_with(BUILTIN_PREFIX) {
            return Ok(());
        }
        let trust = &self.shared.plugin_trust;
        trust
            .check(&activate.sha256, &activate.signature, &activate.key_id)
            .map_err(|e| {
                error!(plugin = %activate.name, index, "refusing to run an untrusted component; apply stops: {e}");
                io_err(format!("activate {}: {e}", activate.name))
            })
    }

    pub fn open(id: u64, store: Store, runtime: Runtime, plugin_trust: PluginTrust) -> io::Result<Self> {
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
            Some(bytes) => digest::split(&bytes)?,
            None => ([0; 32], [0; 32]),
        };
        let pending = Arc::new(Mutex::new(Pending::new(&store, writes_digest)));
        let shared = Arc::new(Shared::new(
            id,
            store,
            runtime,
            plugin_trust,
            (
                applied.map_or(0, |a| a.index),
                state_digest_hex(&results_digest, &writes_digest),
            ),
        ));
        let sm = Self {
            shared,
            pending,
            applied,
            membership,
            results_digest,
            sessions: HashMap::new(),
            shadows_changed: false,
            off_worker_cpu: Duration::ZERO,
        };
        sm.load_registry()?;
        sm.drop_unused_spaces()?;
        Ok(sm)
    }

    /// Deletes key spaces no active plugin uses: what a crash in the middle of a snapshot
    /// install left (the install had not switched to them).
    fn drop_unused_spaces(&self) -> io::Result<()> {
        let used: BTreeSet<String> = (self.shared.plugins().iter().map(|p| p.space().to_string()))
            .chain(self.shared.shadows().iter().map(|s| s.plugin.space().to_string()))
            .collect();
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
        let mut shadows = BTreeMap::new();
        for record in registry.shadows {
            let info = record.candidate.clone().unwrap_or_default();
            let bytes = self
                .shared
                .store
                .blob_get(&component_key(&info.sha256))
                .map_err(io_err)?
                .ok_or_else(|| {
                    io_err(format!(
                        "shadow {}: component {} missing from blobs",
                        info.name, info.sha256
                    ))
                })?;
            let candidate = ActivePlugin::candidate(&self.shared, &self.pending, info.clone(), &bytes)
                .map_err(|e| io_err(format!("shadow {}: {e}", info.name)))?;
            info!(plugin = %info.name, sha256 = %info.sha256, "shadow run loaded");
            shadows.insert(info.name.clone(), Arc::new(Shadow::new(candidate, record)));
        }
        self.shared.set_shadows(shadows);
        Ok(())
    }

    fn registry(&self) -> pb::Registry {
        pb::Registry {
            plugins: self.shared.plugins().iter().map(|p| p.info.clone()).collect(),
            shadows: self.shared.shadows().iter().map(|s| s.record()).collect(),
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
        if registry_changed || self.shadows_changed {
            batch.put_meta(REGISTRY, &self.registry().encode_to_vec());
            self.shadows_changed = false;
        }
        let writes_digest = pending.writes_digest;
        drop(pending);
        {
            let _writing = self.shared.flush_lock.write().unwrap_or_else(|p| p.into_inner());
            store.write(batch).map_err(io_err)?;
        }
        // The store has every session record now: the cache may start again from it.
        if self.sessions.len() > sessions::CACHED {
            self.sessions.clear();
        }
        self.publish_digest(&writes_digest);
        Ok(())
    }

    /// Keeps the state digest as of `index` (every entry up to it applied, nothing after) as a
    /// checkpoint `cluster check` compares across members.
    fn checkpoint(&self, index: u64) {
        let writes = lock(&self.pending).writes_digest;
        let digest = state_digest_hex(&self.results_digest, &writes);
        let mut checkpoints = lock(&self.shared.checkpoints);
        if checkpoints.len() == CHECKPOINTS_KEPT {
            checkpoints.pop_front();
        }
        checkpoints.push_back((index, digest));
    }

    /// Shows the digest of what is now stored, with its applied index, to `cluster status`.
    fn publish_digest(&self, writes_digest: &[u8; 32]) {
        let hex = state_digest_hex(&self.results_digest, writes_digest);
        *lock(&self.shared.digest) = (self.applied.map_or(0, |a| a.index), hex);
    }

    fn fold_result(&mut self, index: u64, result: &pb::CommandResult) {
        self.results_digest = digest::chain_result(&self.results_digest, index, result);
    }

    /// Whether `entries` are all plugin calls and no periodic work (a session sweep) comes with
    /// them: short work each, unless the plugin burns its fuel (not an activation, which compiles).
    pub(crate) fn quick_to_apply(entries: &[EntryResponder<TypeConfig>]) -> bool {
        !entries.is_empty() && entries.iter().all(|(entry, _)| {
            !entry.log_id.index.is_multiple_of(sessions::SWEEP_EVERY)
                && matches!(&entry.payload, EntryPayload::Normal(c) if matches!(c.kind, Some(command::Kind::Call(_))))
        })
    }

    /// The CPU time entries left at a deadline took off the async worker since the last call
    /// (the rest of an apply call's time ran on the worker).
    pub(crate) fn take_off_worker_cpu(&mut self) -> Duration {
        std::mem::take(&mut self.off_worker_cpu)
    }

    /// Applies entries in order; returns one result per command entry, with its responder.
    /// With `until`, this runs on an async worker: no plugin entry starts on it after then, those
    /// left apply off the worker (`Engine::apply_within`).
    pub(crate) fn apply_entries(
        &mut self,
        entries: Vec<EntryResponder<TypeConfig>>,
        until: Option<Instant>,
    ) -> io::Result<Replies> {
        self.shared.metrics.observe_apply_batch(entries.len());
        let mut replies = Vec::new();
        let mut registry_changed = false;
        let mut entries = entries.into_iter().peekable();
        while let Some((entry, responder)) = entries.next() {
            let log_id = entry.log_id();
            if log_id.index > 0 && log_id.index.is_multiple_of(CHECKPOINT_EVERY) {
                self.checkpoint(log_id.index - 1);
            }
            if log_id.index.is_multiple_of(sessions::SWEEP_EVERY)
                && let EntryPayload::Normal(command) = &entry.payload
            {
                self.sweep_sessions(command.timestamp_ms)?;
            }
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
                                Some(_)
                                    if let Some(session) = &call.session
                                        && let sessions::Seen::Answered(result) = self.seen(session)? =>
                                {
                                    vec![(log_id.index, result, responder)]
                                }
                                Some(plugin) => {
                                    // Take every following call to the same plugin into one apply
                                    // call, up to a session sweep, a call that will not be applied
                                    // (a repeat), or a second call of one session.
                                    let mut sessions = vec![call.session.clone().map(|s| (s, timestamp_ms))];
                                    let mut clients: HashSet<String> =
                                        call.session.iter().map(|s| s.client.clone()).collect();
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
                                        && !next.log_id().index.is_multiple_of(CHECKPOINT_EVERY)
                                        && match &c.session {
                                            None => true,
                                            Some(s) => {
                                                !clients.contains(&s.client)
                                                    && matches!(self.seen(s)?, sessions::Seen::New)
                                            }
                                        }
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
                                        if let Some(s) = &c.session {
                                            clients.insert(s.client.clone());
                                        }
                                        sessions.push(c.session.map(|s| (s, timestamp_ms)));
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
                                    let results = self.apply_calls(&plugin, batch, until)?;
                                    for ((_, result, _), session) in results.iter().zip(&sessions) {
                                        if let Some((session, at)) = session {
                                            self.remember(session, *at, result);
                                        }
                                    }
                                    results
                                }
                            }
                        }
                        Some(command::Kind::BlobChunk(chunk)) => {
                            self.flush(registry_changed)?;
                            registry_changed = false;
                            self.collect_garbage(timestamp_ms, Some(&chunk.sha256))?;
                            vec![(log_id.index, self.apply_chunk(chunk, timestamp_ms)?, responder)]
                        }
                        Some(command::Kind::Activate(activate)) => {
                            self.flush(registry_changed)?;
                            self.collect_garbage(timestamp_ms, None)?;
                            self.check_trusted(&activate, log_id.index)?;
                            let result = if activate.shadow {
                                self.apply_start_shadow(log_id.index, activate)?
                            } else {
                                self.apply_activate(log_id.index, activate)?
                            };
                            registry_changed = matches!(result.kind, Some(command_result::Kind::Activated(_)));
                            vec![(log_id.index, result, responder)]
                        }
                        Some(command::Kind::Retire(retire)) => {
                            self.flush(registry_changed)?;
                            self.collect_garbage(timestamp_ms, None)?;
                            let result = self.apply_retire(log_id.index, retire)?;
                            registry_changed = matches!(result.kind, Some(command_result::Kind::Retired(_)));
                            vec![(log_id.index, result, responder)]
                        }
                        Some(command::Kind::EndShadow(end)) => {
                            self.flush(registry_changed)?;
                            let result = self.apply_end_shadow(log_id.index, end)?;
                            registry_changed = !matches!(result.kind, Some(command_result::Kind::Rejected(_)));
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
        until: Option<Instant>,
    ) -> io::Result<
        Vec<(
            u64,
            pb::CommandResult,
            Option<openraft::storage::ApplyResponder<TypeConfig>>,
        )>,
    > {
        let (entries, responders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let shadowed = self.shared.shadow(&plugin.info.name).is_some_and(|s| !s.stopped());
        let for_shadow = shadowed.then(|| entries.clone());
        let started = Instant::now();
        let (outcomes, off_worker) = lock(&plugin.apply).apply_within(entries, until).map_err(|e| {
            // A node fault (storage, engine): stop applying rather than record a result.
            io_err(format!("plugin {}: {e}", plugin.info.name))
        })?;
        if let Some(cpu) = off_worker {
            self.off_worker_cpu += cpu;
            self.shared.metrics.count_deadline_cut();
        }
        self.shared
            .metrics
            .count_apply(&plugin.info.name, started.elapsed(), &outcomes);
        if let Some(entries) = for_shadow {
            self.shadows_changed |= self.shadow_calls(&plugin.info.name, entries, &outcomes, until)?;
        }
        // Test-only: a node whose plugin answers differently from its replicas' (as a
        // nondeterministic plugin would), which `cluster check` must catch.
        let perturbed = crate::util::failpoint_armed("apply-result-perturbed");
        Ok(outcomes
            .into_iter()
            .zip(responders)
            .map(|(outcome, responder)| {
                let outcome_pb = match outcome.result {
                    Ok(mut bytes) if perturbed => {
                        bytes.push(b'!');
                        pb::call_result::Outcome::Ok(bytes)
                    }
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

    /// The last applied log id.
    pub(crate) fn applied(&self) -> Option<LogId> {
        self.applied
    }

    pub(crate) fn membership(&self) -> &StoredMembership {
        &self.membership
    }

    /// The writes of the apply call in progress (snapshot installs stage beside them).
    pub(crate) fn pending(&self) -> &SharedPending {
        &self.pending
    }

    /// The state digest as stored: the results chain, then the writes chain (64 bytes).
    pub(crate) fn digest_bytes(&self) -> Vec<u8> {
        let mut d = self.results_digest.to_vec();
        d.extend_from_slice(&lock(&self.pending).writes_digest);
        d
    }

    /// After a snapshot install switched the stored state: take on what it installed.
    pub(crate) fn installed(
        &mut self,
        applied: Option<LogId>,
        membership: StoredMembership,
        digest: &[u8],
    ) -> io::Result<()> {
        let (results, writes) = digest::split(digest)?;
        self.sessions.clear();
        self.applied = applied;
        self.membership = membership;
        self.results_digest = results;
        lock(&self.pending).writes_digest = writes;
        self.publish_digest(&writes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Entry;

    fn entry(index: u64, kind: command::Kind) -> EntryResponder<TypeConfig> {
        let command = pb::Command {
            timestamp_ms: 0,
            kind: Some(kind),
        };
        let entry = Entry {
            log_id: LogId::new(1.into(), index),
            payload: EntryPayload::Normal(command),
        };
        (entry, None)
    }

    fn call(index: u64) -> EntryResponder<TypeConfig> {
        entry(index, command::Kind::Call(pb::PluginCall::default()))
    }

    #[test]
    fn only_plugin_calls_without_a_session_sweep_are_quick_to_apply() {
        assert!(Machine::quick_to_apply(&[call(7)]));
        assert!(Machine::quick_to_apply(&[call(7), call(8)]), "a batch of calls");
        assert!(!Machine::quick_to_apply(&[]));
        let sweep = sessions::SWEEP_EVERY;
        assert!(!Machine::quick_to_apply(&[call(sweep - 1), call(sweep)]), "a sweep");
        let activate = entry(8, command::Kind::Activate(pb::Activate::default()));
        assert!(!Machine::quick_to_apply(&[call(7), activate]), "an activation compiles");
        let blank = (Entry::new_blank(LogId::new(1.into(), 7)), None);
        assert!(!Machine::quick_to_apply(&[blank]));
    }
}
