//! openraft's log storage over [`wasmraft_store::Store`]: entries and raft meta as protobuf bytes.
//!
//! Appends are readable as soon as `append` returns and acknowledged (`IOFlushed`) only after a
//! WAL fsync. A syncer thread groups the appends that arrive while a sync is in flight under the
//! next sync (group commit), so concurrent appends share fsyncs. A vote is fsynced before
//! `save_vote` returns.
//!
//! The newest entries are also kept decoded in memory ([`Recent`]), so a leader replicates what
//! it just appended without reading it back from RocksDB and decoding it again.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, mpsc};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use prost::Message;
use wasmraft_store::Store;

use crate::metrics::Metrics;
use crate::pb;
use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::util::{io_err, lock};
use crate::wire::{decode, entry_from_pb, entry_to_pb, log_id_from_pb, log_id_to_pb, vote_from_pb, vote_to_pb};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

/// Most bytes (encoded) of recent entries kept in memory.
const RECENT_BYTES: usize = 32 << 20;

/// The newest entries of the log, contiguous and exactly as stored: appended after the store
/// took them, cut on truncation and purge.
#[derive(Default)]
struct Recent {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.index())
    }

    fn push(&mut self, entry: Entry, size: usize) {
        let next = self.entries.back().map(|(e, _)| e.index() + 1);
        if next.is_some_and(|next| next != entry.index()) {
            // Not contiguous (openraft truncates before it overwrites): start again here.
            self.entries.clear();
            self.bytes = 0;
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.bytes > RECENT_BYTES {
            let Some((_, size)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size;
        }
    }

    /// Drops the entries from index `from` on.
    fn truncate_from(&mut self, from: u64) {
        while let Some((entry, size)) = self.entries.back() {
            if entry.index() < from {
                break;
            }
            self.bytes -= size;
            self.entries.pop_back();
        }
    }

    /// Drops the entries up to index `to`.
    fn purge_to(&mut self, to: u64) {
        while let Some((entry, size)) = self.entries.front() {
            if entry.index() > to {
                break;
            }
            self.bytes -= size;
            self.entries.pop_front();
        }
    }

    /// The entries `start..end`, if all of them are here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.entries.back()?.0.index();
        if start < first || end > last + 1 || start >= end {
            return None;
        }
        let from = (start - first) as usize;
        Some(
            self.entries
                .range(from..from + (end - start) as usize)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

/// The raft log and vote of one node.
pub struct LogStore {
    store: Store,
    recent: Arc<Mutex<Recent>>,
    /// Appends waiting for the sync thread, with their entry counts; `None` once dropping.
    syncer: Option<mpsc::Sender<(IOFlushed<TypeConfig>, u64)>>,
    sync_thread: Option<std::thread::JoinHandle<()>>,
}

impl LogStore {
    pub fn new(store: Store) -> Self {
        Self::with_metrics(store, Arc::default())
    }

    /// A log store that counts its fsyncs in `metrics`.
    pub fn with_metrics(store: Store, metrics: Arc<Metrics>) -> Self {
        let (syncer, pending) = mpsc::channel::<(IOFlushed<TypeConfig>, u64)>();
        let sync_store = store.clone();
        let sync_thread = std::thread::Builder::new()
            .name("wasmraft-log-sync".into())
            .spawn(move || {
                // Every callback taken before a sync is covered by it: the WAL is sequential.
                while let Ok(first) = pending.recv() {
                    let mut group = vec![first];
                    group.extend(pending.try_iter());
                    let started = std::time::Instant::now();
                    let result = sync_store.sync();
                    let entries = group.iter().map(|(_, n)| n).sum();
                    metrics.observe_fsync(group.len(), entries, started.elapsed());
                    for (callback, _) in group {
                        callback.io_completed(result.as_ref().map(|_| ()).map_err(io_err));
                    }
                }
            })
            .expect("spawning the log sync thread");
        Self {
            store,
            recent: Arc::default(),
            syncer: Some(syncer),
            sync_thread: Some(sync_thread),
        }
    }
}

impl Drop for LogStore {
    /// Closes the sync thread's queue and waits for it to sync what is queued and let go of its
    /// store handle: a database must never be closed by a detached thread, or a process exiting
    /// meanwhile aborts inside RocksDB ("pthread lock: Invalid argument", seen once in CI).
    fn drop(&mut self) {
        self.syncer.take();
        if let Some(thread) = self.sync_thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the log; any number of readers share the store.
#[derive(Clone)]
pub struct LogReader {
    store: Store,
    recent: Arc<Mutex<Recent>>,
}

fn read_vote(store: &Store) -> io::Result<Option<Vote>> {
    match store.raft_meta_get(VOTE).map_err(io_err)? {
        None => Ok(None),
        Some(bytes) => {
            let vote: pb::Vote = decode(&bytes, "stored vote").map_err(io_err)?;
            Ok(Some(vote_from_pb(Some(&vote)).map_err(io_err)?))
        }
    }
}

fn read_log_id(store: &Store, key: &str) -> io::Result<Option<LogId>> {
    match store.raft_meta_get(key).map_err(io_err)? {
        None => Ok(None),
        Some(bytes) => {
            let id: pb::LogId = decode(&bytes, "stored log id").map_err(io_err)?;
            Ok(Some(log_id_from_pb(&id)))
        }
    }
}

fn read_entries(store: &Store, recent: &Mutex<Recent>, range: impl RangeBounds<u64>) -> io::Result<Vec<Entry>> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    if let Some(entries) = lock(recent).get(start, end) {
        return Ok(entries);
    }
    store
        .log_range(start, end)
        .map_err(io_err)?
        .into_iter()
        .map(|(_, bytes)| {
            let entry: pb::Entry = decode(&bytes, "log entry").map_err(io_err)?;
            entry_from_pb(entry).map_err(io_err)
        })
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        read_entries(&self.store, &self.recent, range)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        read_vote(&self.store)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        read_entries(&self.store, &self.recent, range)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        read_vote(&self.store)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = read_log_id(&self.store, PURGED)?;
        let last_log_id = match self.store.log_last().map_err(io_err)? {
            Some((_, bytes)) => {
                let entry: pb::Entry = decode(&bytes, "log entry").map_err(io_err)?;
                Some(entry_from_pb(entry).map_err(io_err)?.log_id())
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            store: self.store.clone(),
            recent: self.recent.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let store = self.store.clone();
        let bytes = vote_to_pb(vote).encode_to_vec();
        tokio::task::spawn_blocking(move || store.raft_meta_put(VOTE, &bytes, true))
            .await
            .map_err(io_err)?
            .map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: a committed index lost in a crash is re-learned from the leader.
        let Some(committed) = committed else { return Ok(()) };
        self.store
            .raft_meta_put(COMMITTED, &log_id_to_pb(&committed).encode_to_vec(), false)
            .map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        read_log_id(&self.store, COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let count = entries.len() as u64;
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|entry| (entry.index(), entry_to_pb(entry).encode_to_vec()))
            .collect();
        let sizes: Vec<usize> = encoded.iter().map(|(_, bytes)| bytes.len()).collect();
        if let Err(e) = self.store.log_append(encoded) {
            let e = io_err(e);
            callback.io_completed(Err(io_err(&e)));
            return Err(e);
        }
        let mut recent = lock(&self.recent);
        for (entry, size) in entries.into_iter().zip(sizes) {
            recent.push(entry, size);
        }
        drop(recent);
        let Some(syncer) = &self.syncer else {
            callback.io_completed(Err(io_err("the log store is closing")));
            return Ok(());
        };
        if let Err(mpsc::SendError((callback, _))) = syncer.send((callback, count)) {
            callback.io_completed(Err(io_err("log sync thread stopped")));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        // The cache first: a failed store truncation must not leave it ahead of the store.
        lock(&self.recent).truncate_from(from);
        self.store.log_truncate_from(from).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let meta = log_id_to_pb(&log_id).encode_to_vec();
        lock(&self.recent).purge_to(log_id.index);
        self.store.log_purge_to(log_id.index, (PURGED, &meta)).map_err(io_err)
    }
}
