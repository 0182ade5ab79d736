//! Shadow runs: a candidate version of an active plugin applies every call to the plugin right
//! after the active version, in the same apply step, on its own copy of the plugin's state, and
//! each result is compared with the active one. Its results never reach clients; its writes land
//! in its own key space and stay out of the writes digest.
//!
//! Everything here is deterministic, so every replica holds the same shadow: it starts at one log
//! index (an `Activate` with `shadow`, after the deploy's readiness barrier), copies the active
//! state as of that index and runs the candidate's `init` as a migration from the active version;
//! it stops at the first call the candidate traps, panics, runs out of fuel or hits a limit on
//! (the same call everywhere: results do not depend on batching); it ends with an `EndShadow`
//! entry that promotes it (its state becomes the live state, no second migration) or drops it.
//! A stopped shadow can only be dropped: past its stop, what it wrote in the same apply step is
//! not the same on every replica. It runs synchronously, so it never falls behind; a hostile
//! candidate costs the active path one call's limits (fuel, memory) once, then it is stopped.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{info, warn};
use wasmraft_runtime::{Entry as PluginEntry, EntryOutcome, InitContext, KvBackend, PluginError};

use super::backend::ApplyBackend;
use super::registry::{ActivePlugin, component_key, history_after};
use super::{Machine, rejected};
use crate::pb::{self, command_result};
use crate::util::{io_err, lock};

/// Differences a shadow keeps (the first ones).
pub const DIFFERENCES_KEPT: usize = 20;

/// Pairs copied per page when a shadow starts.
const COPY_PAGE: usize = 1024;

/// A candidate version running in shadow beside the active plugin of the same name.
pub struct Shadow {
    /// The candidate: `info.name` is the plugin's, `info.space` its own.
    pub plugin: Arc<ActivePlugin>,
    record: Mutex<pb::ShadowRecord>,
}

impl Shadow {
    pub(crate) fn new(plugin: ActivePlugin, record: pb::ShadowRecord) -> Self {
        Self {
            plugin: Arc::new(plugin),
            record: Mutex::new(record),
        }
    }

    /// Its record: the candidate, where it started, the comparison so far.
    pub fn record(&self) -> pb::ShadowRecord {
        lock(&self.record).clone()
    }

    pub fn stopped(&self) -> bool {
        lock(&self.record).stopped_index.is_some()
    }
}

/// The key space of a shadow started at `index`.
pub(crate) fn shadow_space(name: &str, index: u64) -> String {
    format!("{name}.shadow.{index}")
}

/// An outcome as a difference shows it.
fn shown(result: &Result<Vec<u8>, PluginError>) -> String {
    match result {
        Ok(bytes) => format!("ok: {}", String::from_utf8_lossy(bytes)),
        Err(e) => format!("error: {e}"),
    }
}

/// Whether a candidate's error stops its shadow (anything but an error it returned).
fn stops(error: &PluginError) -> bool {
    !matches!(error, PluginError::Returned(_))
}

impl Machine {
    /// Starts a shadow run of `activate.sha256` beside the active plugin `activate.name`.
    pub(super) fn apply_start_shadow(&mut self, index: u64, activate: pb::Activate) -> io::Result<pb::CommandResult> {
        let name = activate.name.clone();
        let Some(active) = self.shared.plugin(&name) else {
            return Ok(rejected(format!(
                "shadow: no plugin {name} is active (deploy it first)"
            )));
        };
        if let Some(shadow) = self.shared.shadow(&name) {
            return Ok(rejected(format!(
                "shadow: {name} already runs {} in shadow; promote or drop it first",
                shadow.plugin.info.sha256
            )));
        }
        let Some(bytes) = self
            .shared
            .store
            .blob_get(&component_key(&activate.sha256))
            .map_err(io_err)?
        else {
            return Ok(rejected(format!(
                "shadow: component {} was not uploaded (built-ins cannot run in shadow)",
                activate.sha256
            )));
        };
        let space = shadow_space(&name, index);
        // The candidate's own copy of the plugin's state as of this entry.
        let backend = |space: &str, in_digest: bool| ApplyBackend {
            store: self.shared.store.clone(),
            name: name.clone(),
            space: space.to_string(),
            pending: self.pending.clone(),
            in_digest,
        };
        let (from, mut to) = (backend(active.space(), true), backend(&space, false));
        let mut start = Vec::new();
        loop {
            let page = from.scan(&start, None, COPY_PAGE).map_err(|e| io_err(e.0))?;
            let Some((last, _)) = page.last() else { break };
            start = last.clone();
            start.push(0);
            to.commit(page.into_iter().map(|(k, v)| (k, Some(v))).collect())
                .map_err(|e| io_err(e.0))?;
        }
        let info = pb::RegisteredPlugin {
            name: name.clone(),
            sha256: activate.sha256.clone(),
            size: bytes.len() as u64,
            activated_index: index,
            config: activate.config.clone(),
            space: space.clone(),
            history: Vec::new(),
            label: activate.label.clone(),
            signature: activate.signature.clone(),
            key_id: activate.key_id.clone(),
        };
        // Every voter compiled it before the entry was proposed (the deploy's barrier).
        let candidate = ActivePlugin::candidate(&self.shared, &self.pending, info.clone(), &bytes)
            .map_err(|e| io_err(format!("shadow {name} on this node: {e}")))?;
        let ctx = InitContext {
            previous_version: Some(active.info.sha256.clone()),
            config: activate.config.clone(),
        };
        let init = lock(&candidate.apply)
            .init(&ctx)
            .map_err(|e| io_err(format!("shadow {name}: {e}")))?;
        if let Err(e) = init {
            lock(&self.pending).batch.clear_space(&space);
            return Ok(rejected(format!("shadow {name}: the candidate's init failed: {e}")));
        }
        let record = pb::ShadowRecord {
            candidate: Some(info),
            started_index: index,
            ..Default::default()
        };
        self.shared.insert_shadow(Arc::new(Shadow::new(candidate, record)));
        lock(&self.pending)
            .batch
            .delete_blob(&format!("{}{}", super::uploads::UNUSED, activate.sha256));
        info!(plugin = %name, sha256 = %activate.sha256, index, "shadow run started");
        Ok(pb::CommandResult {
            kind: Some(command_result::Kind::Activated(pb::Activated {
                name,
                sha256: activate.sha256,
                previous: Some(active.info.sha256.clone()),
            })),
        })
    }

    /// Promotes or drops the shadow run of `end.name`.
    pub(super) fn apply_end_shadow(&mut self, index: u64, end: pb::EndShadow) -> io::Result<pb::CommandResult> {
        let name = end.name;
        let Some(shadow) = self.shared.shadow(&name) else {
            return Ok(rejected(format!("{name} has no shadow run")));
        };
        let record = shadow.record();
        if !end.promote {
            self.shared.remove_shadow(&name);
            lock(&self.pending).batch.clear_space(shadow.plugin.space());
            self.delete_unreferenced([shadow.plugin.info.sha256.clone()]);
            info!(plugin = %name, index, "shadow run dropped");
            return Ok(pb::CommandResult {
                kind: Some(command_result::Kind::Ack(pb::Ack {})),
            });
        }
        if let Some(stopped) = record.stopped_index {
            return Ok(rejected(format!(
                "{name}'s shadow stopped at log index {stopped} ({}): drop it",
                record.stopped_reason
            )));
        }
        let live = self.shared.plugin(&name);
        let (history, dropped) = history_after(live.as_deref(), &shadow.plugin.info.sha256);
        let info = pb::RegisteredPlugin {
            activated_index: index,
            history,
            ..shadow.plugin.info.clone()
        };
        let promoted = shadow.plugin.promoted(&self.shared, &self.pending, info);
        if let Some(live) = &live {
            lock(&self.pending).batch.clear_space(live.space());
        }
        self.shared.remove_shadow(&name);
        self.shared.insert_plugin(Arc::new(promoted));
        self.delete_unreferenced(dropped);
        info!(plugin = %name, sha256 = %shadow.plugin.info.sha256, index, "shadow promoted");
        Ok(pb::CommandResult {
            kind: Some(command_result::Kind::Activated(pb::Activated {
                name,
                sha256: shadow.plugin.info.sha256.clone(),
                previous: live.map(|p| p.info.sha256.clone()),
            })),
        })
    }

    /// After the active version of `name` applied `entries` (with `active` outcomes), its
    /// shadow applies them too and compares. Whether a shadow's record changed.
    pub(super) fn shadow_calls(
        &mut self,
        name: &str,
        entries: Vec<PluginEntry>,
        active: &[EntryOutcome],
        until: Option<Instant>,
    ) -> io::Result<bool> {
        let Some(shadow) = self.shared.shadow(name) else {
            return Ok(false);
        };
        if shadow.stopped() {
            return Ok(false);
        }
        let payloads: Vec<Vec<u8>> = entries.iter().map(|e| e.payload.clone()).collect();
        // A runtime error is a node fault (storage, engine), as on the active path.
        let (outcomes, off_worker) = lock(&shadow.plugin.apply)
            .apply_within(entries, until)
            .map_err(|e| io_err(format!("shadow {name}: {e}")))?;
        self.off_worker_cpu += off_worker.unwrap_or_default();
        let mut record = lock(&shadow.record);
        for ((payload, a), c) in payloads.into_iter().zip(active).zip(&outcomes) {
            if let Err(e) = &c.result
                && stops(e)
            {
                warn!(plugin = %name, index = c.index, "shadow stopped: the candidate failed: {e}");
                record.stopped_index = Some(c.index);
                record.stopped_reason = e.to_string();
                break;
            }
            let stats = record.stats.get_or_insert_with(Default::default);
            stats.compared += 1;
            stats.active_fuel += a.fuel_used;
            stats.candidate_fuel += c.fuel_used;
            let same = match (&a.result, &c.result) {
                (Ok(a), Ok(c)) => a == c,
                (Err(a), Err(c)) => a.to_string() == c.to_string(),
                _ => false,
            };
            if same {
                stats.equal += 1;
                continue;
            }
            stats.different += 1;
            if a.result.is_ok() && c.result.is_err() {
                stats.candidate_errors += 1;
            }
            if record.differences.len() < DIFFERENCES_KEPT {
                record.differences.push(pb::ShadowDifference {
                    index: c.index,
                    payload,
                    active: shown(&a.result),
                    candidate: shown(&c.result),
                });
            }
        }
        Ok(true)
    }
}
