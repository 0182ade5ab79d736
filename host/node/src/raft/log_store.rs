//! openraft's log storage over [`wasmraft_store::Store`]: entries and raft meta as protobuf bytes.
//!
//! Appends are readable as soon as `append` returns and acknowledged (`IOFlushed`) only after a
//! WAL fsync. A syncer thread groups the appends that arrive while a sync is in flight under the
//! next sync (group commit), so concurrent appends share fsyncs. A vote is fsynced before
//! `save_vote` returns.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, mpsc};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use prost::Message;
use wasmraft_store::Store;

use crate::metrics::Metrics;
use crate::pb;
use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::util::io_err;
use crate::wire::{decode, entry_from_pb, entry_to_pb, log_id_from_pb, log_id_to_pb, vote_from_pb, vote_to_pb};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

/// The raft log and vote of one node.
pub struct LogStore {
    store: Store,
    /// Appends waiting for the sync thread; `None` once dropping.
    syncer: Option<mpsc::Sender<IOFlushed<TypeConfig>>>,
    sync_thread: Option<std::thread::JoinHandle<()>>,
}

impl LogStore {
    pub fn new(store: Store) -> Self {
        Self::with_metrics(store, Arc::default())
    }

    /// A log store that counts its fsyncs in `metrics`.
    pub fn with_metrics(store: Store, metrics: Arc<Metrics>) -> Self {
        let (syncer, pending) = mpsc::channel::<IOFlushed<TypeConfig>>();
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
                    metrics.observe_fsync(group.len(), started.elapsed());
                    for callback in group {
                        callback.io_completed(result.as_ref().map(|_| ()).map_err(io_err));
                    }
                }
            })
            .expect("spawning the log sync thread");
        Self {
            store,
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

fn read_entries(store: &Store, range: impl RangeBounds<u64>) -> io::Result<Vec<Entry>> {
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
        read_entries(&self.store, range)
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
        read_entries(&self.store, range)
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
        let encoded = entries
            .into_iter()
            .map(|entry| (entry.index(), entry_to_pb(&entry).encode_to_vec()));
        if let Err(e) = self.store.log_append(encoded) {
            let e = io_err(e);
            callback.io_completed(Err(io_err(&e)));
            return Err(e);
        }
        let Some(syncer) = &self.syncer else {
            callback.io_completed(Err(io_err("the log store is closing")));
            return Ok(());
        };
        if let Err(mpsc::SendError(callback)) = syncer.send(callback) {
            callback.io_completed(Err(io_err("log sync thread stopped")));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.store.log_truncate_from(from).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let meta = log_id_to_pb(&log_id).encode_to_vec();
        self.store.log_purge_to(log_id.index, (PURGED, &meta)).map_err(io_err)
    }
}
