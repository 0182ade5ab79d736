//! The host side of the WIT world: the state a plugin's store carries and one file per imported
//! interface (`kv`, `entries`, `log`, and the deterministic WASI context).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;

use crate::backend::{KvBackend, WriteSet};
use crate::entry::{Entry, EntryOutcome};
use crate::error::HostAbort;
use crate::limits::{LimitExceeded, Limits};

pub(crate) mod entries;
pub(crate) mod kv;
pub(crate) mod log;
pub(crate) mod nowait;
pub(crate) mod wasi;

/// What the plugin is doing, which decides what its imports may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Between calls.
    Idle,
    /// Inside `apply`: writes belong to the current entry.
    Apply,
    /// Inside `init`: writes commit if init succeeds.
    Init,
    /// Inside `query`: read-only.
    Query,
    /// Inside `snapshot-*`: read-only.
    Snapshot,
    /// Inside `restore-*`: writes go straight to the (fresh) backend.
    Restore,
}

impl Mode {
    /// The name used in read-only errors, or `None` if the mode may write.
    pub(crate) fn read_only_name(self) -> Option<&'static str> {
        match self {
            Mode::Query => Some("a query"),
            Mode::Snapshot => Some("a snapshot"),
            Mode::Idle => Some("a call outside any export"),
            Mode::Apply | Mode::Init | Mode::Restore => None,
        }
    }
}

/// The entries of the `apply` call in progress.
#[derive(Default)]
pub(crate) struct ApplyState {
    pub(crate) queue: VecDeque<Entry>,
    /// The index of the entry handed out by `next` and not yet finished.
    pub(crate) current: Option<u64>,
    pub(crate) outcomes: Vec<EntryOutcome>,
    /// `next` hands out no entry after this (`Plugin::apply_until`)...
    pub(crate) until: Option<Instant>,
    /// ...and says here that it cut the call short.
    pub(crate) cut: bool,
}

/// Everything a plugin's store holds.
pub(crate) struct HostState {
    pub(crate) backend: Box<dyn KvBackend>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) plugin: Arc<str>,
    pub(crate) mode: Mode,
    /// Writes of the current entry (or init), not yet committed.
    pub(crate) overlay: WriteSet,
    pub(crate) write_bytes: usize,
    pub(crate) write_count: usize,
    pub(crate) apply: ApplyState,
    /// Fuel granted to the running entry or call, to report usage and name the limit.
    pub(crate) fuel_budget: u64,
    /// Set by the guest's panic handler just before it traps.
    pub(crate) panic_message: Option<String>,
    /// A limit the guest ran into without the host aborting it (a refused memory grow).
    pub(crate) limit_hit: Option<LimitExceeded>,
    pub(crate) peak_memory_bytes: usize,
    pub(crate) max_entry_fuel: u64,
    pub(crate) wasi: wasi::DeterministicWasi,
}

impl HostState {
    pub(crate) fn new(backend: Box<dyn KvBackend>, limits: Arc<Limits>, plugin: Arc<str>) -> Self {
        Self {
            backend,
            limits,
            plugin,
            mode: Mode::Idle,
            overlay: WriteSet::new(),
            write_bytes: 0,
            write_count: 0,
            apply: ApplyState::default(),
            fuel_budget: 0,
            panic_message: None,
            limit_hit: None,
            peak_memory_bytes: 0,
            max_entry_fuel: 0,
            wasi: wasi::DeterministicWasi::new(),
        }
    }

    /// Starts a fresh unit of work (an entry or a call): empty overlay, no stale failure marks.
    pub(crate) fn begin_unit(&mut self) {
        self.discard_overlay();
        self.panic_message = None;
        self.limit_hit = None;
    }

    pub(crate) fn discard_overlay(&mut self) {
        self.overlay.clear();
        self.write_bytes = 0;
        self.write_count = 0;
    }

    /// Commits the overlay to the backend as one write set.
    pub(crate) fn commit_overlay(&mut self) -> Result<(), HostAbort> {
        let writes = std::mem::take(&mut self.overlay);
        self.write_bytes = 0;
        self.write_count = 0;
        if writes.is_empty() {
            return Ok(());
        }
        self.backend.commit(writes).map_err(HostAbort::Backend)
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limits.max_memory_bytes {
            self.limit_hit = Some(LimitExceeded::Memory {
                desired,
                limit: self.limits.max_memory_bytes,
            });
            return Ok(false);
        }
        self.peak_memory_bytes = self.peak_memory_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limits.max_table_elements {
            self.limit_hit = Some(LimitExceeded::Table {
                desired,
                limit: self.limits.max_table_elements,
            });
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.limits.max_instances
    }

    fn tables(&self) -> usize {
        self.limits.max_tables
    }

    fn memories(&self) -> usize {
        self.limits.max_memories
    }
}
