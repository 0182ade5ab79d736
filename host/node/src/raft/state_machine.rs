//! openraft's state machine over the core (`sm::Machine`) and the snapshot files (`snapshot`):
//! apply calls go to the core; a snapshot build is captured between two apply calls and run on
//! openraft's task; an install stages and switches (`snapshot::install`).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use tracing::{info_span, warn};
use wasmraft_runtime::Runtime;
use wasmraft_store::Store;

use super::inline::Inline;
use crate::security::PluginTrust;
use crate::sm::{Machine, Shared};
use crate::snapshot::{self, BuildJob, Phase, SnapshotFile, SnapshotSettings, Snapshots};
use crate::types::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::util::{blocking, failpoint_armed, io_err, lock, thread_cpu_time};

/// openraft's state machine.
pub struct StateMachine {
    /// The node's id, for its logs' spans.
    id: u64,
    core: Machine,
    snapshots: Arc<Snapshots>,
    /// Whether a lone plugin call applies on the async worker.
    inline: Inline,
}

impl StateMachine {
    /// Opens the state machine on `store`: what was applied, the active plugins, and the snapshot
    /// directory (cleared of temp files a crash left).
    pub fn open(
        id: u64,
        store: Store,
        runtime: Runtime,
        settings: SnapshotSettings,
        plugin_trust: PluginTrust,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&settings.dir)?;
        snapshot::clean(&settings.dir)?;
        let core = Machine::open(id, store, runtime, plugin_trust)?;
        let snapshots = Arc::new(Snapshots::new(settings, core.shared().metrics.clone()));
        Ok(Self {
            id,
            core,
            snapshots,
            inline: Inline::new(),
        })
    }

    /// The active plugins and the state, as queries and the services see them.
    pub fn shared(&self) -> Arc<Shared> {
        self.core.shared()
    }

    /// The snapshot settings and counters.
    pub fn snapshots(&self) -> Arc<Snapshots> {
        self.snapshots.clone()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.core.applied(), self.core.membership().clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let span = info_span!(
            "apply",
            node = self.id,
            term = last.0.log_id.leader_id.term,
            first = first.0.log_id.index,
            last = last.0.log_id.index,
        );
        // Plugin calls are synchronous CPU work: keep them off the async workers' queue, except
        // a short batch of plugin calls while such batches stay quick (`inline`).
        let entries = batch.len();
        let quick = Machine::quick_to_apply(&batch);
        let now = Instant::now();
        let until = if quick {
            // Test-only: every batch on the worker is cut before its first entry, so all of it
            // takes the path of the entries left at a deadline.
            let passed = failpoint_armed("apply-deadline-passed");
            self.inline
                .until(entries, now)
                .map(|until| if passed { now } else { until })
        } else {
            None
        };
        // Judged by this thread's CPU time: a worker preempted on a busy machine is not slow work.
        let cpu = thread_cpu_time();
        let replies = if until.is_some() {
            let replies = span.in_scope(|| self.core.apply_entries(batch, until))?;
            let cpu = thread_cpu_time().saturating_sub(cpu);
            // Entries left at the deadline applied off the worker: they did not hold it.
            let on_worker = cpu.saturating_sub(self.core.take_off_worker_cpu());
            if let Some(how_long) = self.inline.took_on_worker(on_worker, cpu, entries, Instant::now()) {
                warn!(
                    node = self.id,
                    ?on_worker,
                    ?cpu,
                    "plugin calls take too long to apply on an async worker: they run off the \
                     async workers {how_long}"
                );
            }
            replies
        } else {
            let replies = blocking(|| span.in_scope(|| self.core.apply_entries(batch, None)))?;
            if quick {
                self.inline.observe(thread_cpu_time().saturating_sub(cpu), entries);
            }
            replies
        };
        for (responder, result) in replies {
            responder.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            id: self.id,
            job: Mutex::new(Some(BuildJob::capture(&self.core, &self.snapshots.settings))),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), io::Error> {
        let (term, index) = meta.last_log_id.map_or((0, 0), |l| (l.leader_id.term, l.index));
        let span = info_span!("snapshot_install", node = self.id, term, index);
        blocking(|| span.in_scope(|| snapshot::install(&mut self.core, &self.snapshots, meta, snapshot)))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SnapshotFile>>, io::Error> {
        let Some(file) = snapshot::current(&self.snapshots.settings.dir)? else {
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

/// A snapshot build, captured by `get_snapshot_builder` and run by openraft on a
/// task of its own.
pub struct SnapshotBuilder {
    id: u64,
    /// In a mutex only because openraft wants a `Sync` builder (plugin instances are not).
    job: Mutex<Option<BuildJob>>,
    snapshots: Arc<Snapshots>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot<SnapshotFile>, io::Error> {
        let job = lock(&self.job).take().ok_or_else(|| io_err("snapshot already built"))?;
        let header = job.header.clone();
        let stats = &self.snapshots.stats;
        let last = header.last_log_id.unwrap_or_default();
        let span = info_span!("snapshot_build", node = self.id, term = last.term, index = last.index);
        stats.building.store(true, Ordering::Relaxed);
        let build_span = span.clone();
        let built = tokio::task::spawn_blocking(move || build_span.in_scope(|| snapshot::build(job))).await;
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
                tracing::error!(parent: &span, "snapshot build failed (the node goes on without it): {e}");
                stats.build_failed(e.to_string());
                Ok(Snapshot {
                    meta: SnapshotMeta {
                        last_log_id: None,
                        last_membership: StoredMembership::default(),
                    },
                    snapshot: SnapshotFile {
                        path: self.snapshots.settings.dir.join("failed-build"),
                        size: 0,
                        verified: false,
                    },
                })
            }
        }
    }
}
