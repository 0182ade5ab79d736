//! Snapshot files: what the state machine had applied, every blob (components, pieces of uploads
//! in progress) and each active plugin's kv space as its `snapshot` export streams it.
//!
//! Layout (format 2):
//! - the magic `WRSNAP\0\x02`, then a u32-length-prefixed [`pb::SnapshotHeader`] (last log id,
//!   membership, the plugin registry with names, sha256s and configs, the state digest);
//! - one zstd stream with, in order:
//!   - the blobs section: (u32 key length, key, u64 value length, value) records, ended by a zero
//!     key length;
//!   - one section per plugin of the header's registry, in registry order: the chunks of its
//!     `snapshot` export as (u32 length, bytes), ended by a zero length;
//! - the sha256 of everything before it (32 bytes): the file's identity.
//!
//! Integers are little-endian. Files are written to a temp name, fsynced and renamed; the newest
//! `keep` are kept. Nothing is ever held whole in memory: building streams plugin chunks through
//! zstd into the file, installing streams them back out of it into fresh key spaces.

mod build;
mod format;
mod install;
mod receive;
mod send;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prost::Message;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use wasmraft_runtime::KvBackend;
use wasmraft_store::View;

pub(crate) use build::{BuildJob, build};
pub(crate) use format::{clean, current, meta_of, read_header};
pub(crate) use install::install;
pub(crate) use receive::{Incoming, forget, receive};
pub(crate) use send::send;

use crate::metrics::Metrics;
use crate::pb;
use crate::sm::{
    APPLIED, ActivePlugin, BUILTIN_PREFIX, COMPONENTS_UNUSED, DIGEST, Engine, MEMBERSHIP, Machine, REGISTRY, SESSIONS,
    Shared, SharedPending, Staging, StagingBackend, UPLOADS, UPLOADS_STARTED, ViewBackend, component_key,
};
use crate::types::SnapshotMeta;
use crate::util::{io_err, lock};
use crate::wire::{log_id_to_pb, opt_log_id_from_pb, stored_membership_from_pb, stored_membership_to_pb};

pub const FORMAT: u32 = 2;
pub(crate) const MAGIC: &[u8; 8] = b"WRSNAP\0\x02";
/// Every format's magic starts with this; the last byte is the format.
pub(crate) const MAGIC_STEM: &[u8; 7] = b"WRSNAP\0";
pub(crate) const SUFFIX: &str = "snap";
/// The sha256 trailer.
pub(crate) const TRAILER: u64 = 32;
/// Largest chunk asked of a plugin's snapshot export, and read back on install.
pub(crate) const CHUNK: u32 = 1 << 20;
/// Largest blob key a snapshot may hold (component and upload keys are under 100 bytes).
pub(crate) const MAX_BLOB_KEY: u32 = 4096;
/// A receiver drops a transfer whose sender sent nothing for this long (what arrived is kept for
/// a resume), so a stalled or hostile sender cannot hold the one receiving slot.
pub(crate) const RECEIVE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// A receiver fsyncs an incoming file (and records how far it got) every this many bytes: a
/// transfer broken by a crash resumes from there.
pub(crate) const INCOMING_SYNC_BYTES: u64 = 4 << 20;

/// When a node snapshots, what it keeps, and how it sends snapshots. In a node's config file,
/// `[snapshot]` sets any of them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Build a snapshot once this many entries were applied since the last one; 0: only on
    /// demand (`wasmraft snapshot`).
    pub logs_since_last: u64,
    /// Log entries kept below a snapshot for followers that are a little behind (they get
    /// entries, not the snapshot).
    pub keep_logs: u64,
    /// Snapshot files kept (the newest).
    pub keep_files: usize,
    /// Bytes per message of a snapshot transfer.
    pub chunk_bytes: usize,
    /// Cap on the bytes per second this node sends a snapshot at; 0: none.
    pub max_send_bytes_per_sec: u64,
    pub zstd_level: i32,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            logs_since_last: 100_000,
            keep_logs: 1_000,
            keep_files: 2,
            chunk_bytes: 1 << 20,
            max_send_bytes_per_sec: 0,
            zstd_level: 1,
        }
    }
}

/// How a node builds, keeps and sends snapshot files.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    pub dir: PathBuf,
    /// Snapshot files kept (the newest).
    pub keep: usize,
    pub zstd_level: i32,
    /// Bytes per message of a transfer.
    pub chunk_bytes: usize,
    /// Cap on the bytes per second a transfer is sent at; 0: none.
    pub max_send_bytes_per_sec: u64,
}

impl SnapshotSettings {
    /// The settings of a node whose snapshots live in `dir`.
    pub fn new(dir: PathBuf, config: &SnapshotConfig) -> Self {
        Self {
            dir,
            keep: config.keep_files.max(1),
            zstd_level: config.zstd_level,
            chunk_bytes: config.chunk_bytes.max(1),
            max_send_bytes_per_sec: config.max_send_bytes_per_sec,
        }
    }
}

/// A node's snapshot settings and counters, shared by its state machine, network and services.
#[derive(Debug)]
pub struct Snapshots {
    pub settings: SnapshotSettings,
    pub stats: SnapshotStats,
}

impl Snapshots {
    /// Settings and fresh counters; each finished phase is also timed in `metrics`.
    pub fn new(settings: SnapshotSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            stats: SnapshotStats {
                metrics,
                ..SnapshotStats::default()
            },
        }
    }
}

/// A snapshot on disk.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub size: u64,
    /// Its whole-file sha256 was checked since it was written (a received file).
    pub verified: bool,
}

/// Why a received snapshot is refused. The node stays on its state and counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("corrupted snapshot: {0}")]
    Corrupted(String),
    #[error("truncated snapshot: {0}")]
    Truncated(String),
    #[error("stale snapshot: {0}")]
    Stale(String),
    #[error("unknown snapshot format: {0}")]
    Format(String),
}

/// A node's snapshot counters, shown by `cluster status`.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    pub building: AtomicBool,
    pub built: AtomicU64,
    pub build_failed: AtomicU64,
    last_build_error: Mutex<String>,
    /// The count of failed builds, for whoever waits on a build.
    failures: tokio::sync::watch::Sender<u64>,
    pub sent: AtomicU64,
    pub installed: AtomicU64,
    pub resumed: AtomicU64,
    pub resumed_bytes: AtomicU64,
    rejected_corrupted: AtomicU64,
    rejected_truncated: AtomicU64,
    rejected_stale: AtomicU64,
    rejected_format: AtomicU64,
    last_build: Mutex<pb::PhaseStats>,
    last_transfer: Mutex<pb::PhaseStats>,
    last_install: Mutex<pb::PhaseStats>,
    /// The node's `/metrics`, where finished phases are timed too.
    metrics: Arc<Metrics>,
}

/// The phases [`SnapshotStats`] times.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    Build,
    Transfer,
    Install,
}

impl SnapshotStats {
    pub fn reject(&self, rejection: &Rejection) {
        let counter = match rejection {
            Rejection::Corrupted(_) => &self.rejected_corrupted,
            Rejection::Truncated(_) => &self.rejected_truncated,
            Rejection::Stale(_) => &self.rejected_stale,
            Rejection::Format(_) => &self.rejected_format,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .activity
            .error("snapshot refused".into(), None, &rejection.to_string());
    }

    /// Counts a failed build and keeps its error for `cluster status` and `wasmraft snapshot`.
    pub fn build_failed(&self, error: String) {
        self.metrics.activity.error("snapshot build".into(), None, &error);
        *lock(&self.last_build_error) = error;
        let failed = self.build_failed.fetch_add(1, Ordering::Relaxed) + 1;
        self.failures.send_replace(failed);
    }

    /// Watches the count of failed builds.
    pub fn failures(&self) -> tokio::sync::watch::Receiver<u64> {
        self.failures.subscribe()
    }

    pub fn last_build_error(&self) -> String {
        lock(&self.last_build_error).clone()
    }

    /// Keeps a finished phase's figures for `cluster status`, and counts them in `/metrics`.
    pub fn record(&self, phase: Phase, stats: pb::PhaseStats) {
        let (slot, name) = match phase {
            Phase::Build => (&self.last_build, "build"),
            Phase::Transfer => (&self.last_transfer, "transfer"),
            Phase::Install => (&self.last_install, "install"),
        };
        self.metrics.observe_snapshot_phase(name, &stats);
        *lock(slot) = stats;
    }

    pub fn last(&self, phase: Phase) -> pb::PhaseStats {
        match phase {
            Phase::Build => *lock(&self.last_build),
            Phase::Transfer => *lock(&self.last_transfer),
            Phase::Install => *lock(&self.last_install),
        }
    }

    /// The counters and phase times (the caller fills in the snapshot and purge positions).
    pub fn to_pb(&self) -> pb::SnapshotStatus {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        pb::SnapshotStatus {
            building: self.building.load(Ordering::Relaxed),
            built: n(&self.built),
            build_failed: n(&self.build_failed),
            last_build_error: self.last_build_error(),
            sent: n(&self.sent),
            installed: n(&self.installed),
            resumed: n(&self.resumed),
            resumed_bytes: n(&self.resumed_bytes),
            rejected_corrupted: n(&self.rejected_corrupted),
            rejected_truncated: n(&self.rejected_truncated),
            rejected_stale: n(&self.rejected_stale),
            rejected_format: n(&self.rejected_format),
            last_build: Some(self.last(Phase::Build)),
            last_transfer: Some(self.last(Phase::Transfer)),
            last_install: Some(self.last(Phase::Install)),
            ..Default::default()
        }
    }
}

pub(crate) fn phase_stats(raw_bytes: u64, file_bytes: u64, started: Instant) -> pb::PhaseStats {
    pb::PhaseStats {
        raw_bytes,
        file_bytes,
        micros: started.elapsed().as_micros() as u64,
    }
}

/// Aborts the process at a named point when `WASMRAFT_FAILPOINT` names it: how the crash tests
/// stop a node exactly there (an abort, like a power cut for the process: nothing is cleaned up).
pub(crate) fn failpoint(name: &str) {
    if crate::util::failpoint_armed(name) {
        eprintln!("wasmraft: failpoint {name}: aborting");
        std::process::abort();
    }
}
