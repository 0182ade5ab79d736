//! # wasmraft-store: the node's RocksDB, and the only crate that touches it
//!
//! One database, five column families:
//!
//! | family | keys | values |
//! |---|---|---|
//! | `log` | log index, 8-byte big-endian (so keys sort by index) | an encoded raft entry |
//! | `raft_meta` | names (`vote`, `committed`, `purged`) | encoded raft state |
//! | `sm_meta` | names (`applied`, `membership`, `registry`, `digest`) | encoded state-machine state |
//! | `data` | `space \0 key`: one key space per plugin (a snapshot install restores into a fresh one) | the plugin's value |
//! | `blobs` | names (a component's sha256, upload chunks) | bytes |
//!
//! The API is bytes in, bytes out: encodings belong to the node, which owns the Raft types.
//!
//! ## Durability
//! - Log and raft-meta writes are made durable by [`Store::sync`] (a WAL fsync). RocksDB's WAL is
//!   sequential, so one sync covers every earlier write: the node groups concurrent appends under
//!   one sync before acknowledging them.
//! - State-machine writes ([`SmBatch`]) are atomic and not synced: after a crash the state machine
//!   is at some earlier applied index and re-applies the log from there. Because the applied index
//!   travels in the same batch as the writes, an entry is either fully applied or not at all.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions,
    WriteOptions,
};

const LOG: &str = "log";
const RAFT_META: &str = "raft_meta";
const SM_META: &str = "sm_meta";
const DATA: &str = "data";
const BLOBS: &str = "blobs";
const FAMILIES: [&str; 5] = [LOG, RAFT_META, SM_META, DATA, BLOBS];

/// A RocksDB failure, or a database that is not ours. Always a node fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("invalid key space name {0:?}: use 1-64 of [a-z0-9_-], starting with a letter or digit")]
    BadSpace(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A key-value pair.
pub type Pair = (Vec<u8>, Vec<u8>);

/// One column family's size, from RocksDB's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilySize {
    pub family: &'static str,
    /// Live and obsolete-but-not-yet-deleted SST files.
    pub sst_bytes: u64,
    pub memtable_bytes: u64,
    /// Index and filter blocks of the open SST files, held outside the block cache.
    pub table_readers_bytes: u64,
    /// What compaction has left to rewrite (RocksDB's estimate).
    pub pending_compaction_bytes: u64,
}

/// The node's database. Cheap to clone; every clone is the same database.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// The block cache every family shares.
    cache: Cache,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

/// Checks a key space (plugin) name: it is part of every key of the space.
pub fn check_space(space: &str) -> Result<()> {
    let ok = !space.is_empty()
        && space.len() <= 64
        && space
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && space.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadSpace(space.to_string()))
    }
}

fn space_key(space: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(space.len() + 1 + key.len());
    k.extend_from_slice(space.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// The first key after every key of `space` (`space \x01`).
fn space_end(space: &str) -> Vec<u8> {
    let mut k = space.as_bytes().to_vec();
    k.push(1);
    k
}

/// The most bytes of write-ahead log a node keeps. RocksDB deletes a WAL file only once every
/// family has flushed what it holds, so a family written rarely (the vote, the plugin registry)
/// would keep every WAL file since its last write: past this, RocksDB flushes the families that
/// hold the oldest one. (Without it a node under load filled its disk at over 1 GB a minute.)
const MAX_WAL_BYTES: u64 = 256 << 20;

/// The memtable of the families every apply reads and rewrites at random keys (plugin data, and
/// the session records in blobs), instead of RocksDB's 64 MiB. A hot key is rewritten many times
/// between flushes and each version is a node of the memtable's skip list: in 64 MiB the walks of
/// each get and put missed the CPU cache all the way down (a third of a node's CPU at 25K
/// writes/s); with 8 MiB the same load runs on 0.85x the CPU (1.15x the writes pipelined).
const SM_MEMTABLE_BYTES: usize = 8 << 20;

/// The one block cache the families share. Left to RocksDB, each family gets a 32 MiB cache of
/// its own, and under load those of `data` and `blobs` fill with blocks of SST files that
/// compaction has since deleted: a node's memory climbed for minutes. The state machine's hot keys
/// live in the memtables, so a small cache is enough.
const BLOCK_CACHE_BYTES: usize = 16 << 20;

impl Store {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_wal_limit(path, MAX_WAL_BYTES)
    }

    fn open_with_wal_limit(path: impl AsRef<Path>, max_wal_bytes: u64) -> Result<Self> {
        let mut opts = Options::default();
        opts.set_max_total_wal_size(max_wal_bytes);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Writes are small and frequent; keep RocksDB's own threads to what 2 cores can spare.
        opts.increase_parallelism(2);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let families = FAMILIES.iter().map(|name| {
            let mut family = Options::default();
            family.set_block_based_table_factory(&table);
            if [DATA, BLOBS].contains(name) {
                family.set_write_buffer_size(SM_MEMTABLE_BYTES);
            }
            ColumnFamilyDescriptor::new(*name, family)
        });
        let db = DB::open_cf_descriptors(&opts, path, families)?;
        Ok(Self {
            db: Arc::new(db),
            cache,
        })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // Every family is created by `open`, so a missing one is a bug, not an input.
        self.db.cf_handle(name).expect("column family created by Store::open")
    }

    /// Makes every earlier write durable (fsyncs the WAL).
    pub fn sync(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }

    // ---- raft log ----

    /// Writes entries (index, bytes) to the log, atomically. Readable at once; durable after
    /// [`Store::sync`].
    pub fn log_append(&self, entries: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        let cf = self.cf(LOG);
        for (index, bytes) in entries {
            batch.put_cf(cf, index.to_be_bytes(), bytes);
        }
        Ok(self.db.write(batch)?)
    }

    /// Entries with `start <= index < end`, in order, from one consistent view.
    pub fn log_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        if end <= start {
            return Ok(Vec::new());
        }
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(end.to_be_bytes());
        let start_key = start.to_be_bytes();
        let iter = self
            .db
            .iterator_cf_opt(self.cf(LOG), read, IteratorMode::From(&start_key, Direction::Forward));
        iter.map(|item| {
            let (key, value) = item?;
            Ok((decode_index(&key)?, value.into_vec()))
        })
        .collect()
    }

    /// The last entry of the log, if any.
    pub fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        match self.db.iterator_cf(self.cf(LOG), IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item?;
                Ok(Some((decode_index(&key)?, value.into_vec())))
            }
        }
    }

    /// Deletes every entry with `index >= from`.
    pub fn log_truncate_from(&self, from: u64) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(self.cf(LOG), from.to_be_bytes(), u64::MAX.to_be_bytes());
        batch.delete_cf(self.cf(LOG), u64::MAX.to_be_bytes());
        Ok(self.db.write(batch)?)
    }

    /// Deletes every entry with `index <= upto` and records `meta` (e.g. the purged log id) in the
    /// same atomic write, so the log never has a hole the meta does not explain.
    pub fn log_purge_to(&self, upto: u64, meta: (&str, &[u8])) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(self.cf(RAFT_META), meta.0, meta.1);
        batch.delete_range_cf(self.cf(LOG), 0u64.to_be_bytes(), upto.saturating_add(1).to_be_bytes());
        if upto == u64::MAX {
            batch.delete_cf(self.cf(LOG), u64::MAX.to_be_bytes());
        }
        Ok(self.db.write(batch)?)
    }

    // ---- raft meta ----

    pub fn raft_meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(RAFT_META), key)?)
    }

    /// Writes a raft meta value; with `sync`, durable on return.
    pub fn raft_meta_put(&self, key: &str, value: &[u8], sync: bool) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        Ok(self.db.put_cf_opt(self.cf(RAFT_META), key, value, &opts)?)
    }

    // ---- state machine ----

    pub fn sm_meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(SM_META), key)?)
    }

    /// A plugin's value for `key`.
    pub fn data_get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(DATA), space_key(space, key))?)
    }

    /// A plugin's pairs with `start <= key < end` (`end` `None`: to the end of the space), at most
    /// `limit`, in key order.
    pub fn data_scan(&self, space: &str, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>> {
        let Some((from, read)) = scan_range(space, start, end, limit) else {
            return Ok(Vec::new());
        };
        let iter = self
            .db
            .iterator_cf_opt(self.cf(DATA), read, IteratorMode::From(&from, Direction::Forward));
        collect_pairs(iter, space.len() + 1, limit)
    }

    /// Applies a state-machine batch atomically (not synced: see the crate docs).
    pub fn write(&self, batch: SmBatch) -> Result<()> {
        Ok(self.db.write(batch.batch)?)
    }

    /// Applies a state-machine batch atomically and makes it, and every write before it, durable
    /// before returning. For switches that later work relies on (a snapshot install).
    pub fn write_synced(&self, batch: SmBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(batch.batch, &opts)?)
    }

    /// The key spaces that hold at least one pair, in order.
    pub fn spaces(&self) -> Result<Vec<String>> {
        let mut spaces = Vec::new();
        let mut iter = self.db.raw_iterator_cf(self.cf(DATA));
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            let end = key
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| StoreError::Corrupt("data key without a space".into()))?;
            let space = String::from_utf8(key[..end].to_vec())
                .map_err(|_| StoreError::Corrupt("data key space is not UTF-8".into()))?;
            iter.seek(space_end(&space));
            spaces.push(space);
        }
        iter.status()?;
        Ok(spaces)
    }

    /// Each column family's size on disk and in memory, and the bytes RocksDB estimates its
    /// compactions still have to rewrite: what `/metrics` shows of the store.
    pub fn sizes(&self) -> Result<Vec<FamilySize>> {
        FAMILIES
            .iter()
            .map(|&family| {
                let cf = self.cf(family);
                let property = |name: &str| Ok::<_, StoreError>(self.db.property_int_value_cf(cf, name)?.unwrap_or(0));
                Ok(FamilySize {
                    family,
                    sst_bytes: property("rocksdb.total-sst-files-size")?,
                    memtable_bytes: property("rocksdb.cur-size-all-mem-tables")?,
                    table_readers_bytes: property("rocksdb.estimate-table-readers-mem")?,
                    pending_compaction_bytes: property("rocksdb.estimate-pending-compaction-bytes")?,
                })
            })
            .collect()
    }

    /// Bytes in the block cache the families share.
    pub fn block_cache_bytes(&self) -> u64 {
        self.cache.get_usage() as u64
    }

    /// A consistent, read-only view of the state machine as of now: later writes are invisible
    /// to it. Reads through it cost what reads through the store cost.
    pub fn view(&self) -> View {
        let db = self.db.clone();
        let snapshot = db.snapshot();
        // SAFETY: only the lifetime changes. The snapshot borrows the `DB` inside `db`; `View`
        // owns that Arc, which keeps the `DB` alive and in place, and drops the snapshot first
        // (fields drop in declaration order). The `'static` never leaves `View`.
        let snapshot = unsafe {
            std::mem::transmute::<rocksdb::SnapshotWithThreadMode<'_, DB>, rocksdb::SnapshotWithThreadMode<'static, DB>>(
                snapshot,
            )
        };
        View { snapshot, db }
    }

    /// A new, empty state-machine batch.
    pub fn batch(&self) -> SmBatch {
        SmBatch {
            store: self.clone(),
            batch: rocksdb::WriteBatch::default(),
        }
    }

    // ---- blobs ----

    pub fn blob_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(BLOBS), key)?)
    }

    /// Every blob key starting with `prefix`, with its value, in key order.
    pub fn blob_scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let iter = self.db.iterator_cf(
            self.cf(BLOBS),
            IteratorMode::From(prefix.as_bytes(), Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            let key = String::from_utf8(key.into_vec()).map_err(|_| StoreError::Corrupt("blob key".into()))?;
            out.push((key, value.into_vec()));
        }
        Ok(out)
    }
}

/// Where a data scan starts, and its read options (the upper bound); `None` when it is empty.
fn scan_range(space: &str, start: &[u8], end: Option<&[u8]>, limit: usize) -> Option<(Vec<u8>, ReadOptions)> {
    if end.is_some_and(|end| end <= start) || limit == 0 {
        return None;
    }
    let upper = end.map_or_else(|| space_end(space), |end| space_key(space, end));
    let mut read = ReadOptions::default();
    read.set_iterate_upper_bound(upper);
    Some((space_key(space, start), read))
}

type KvItem = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>;

/// The first `limit` pairs of a data scan, without their space prefix.
fn collect_pairs(iter: impl Iterator<Item = KvItem>, prefix_len: usize, limit: usize) -> Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    for item in iter.take(limit) {
        let (key, value) = item?;
        pairs.push((key[prefix_len..].to_vec(), value.into_vec()));
    }
    Ok(pairs)
}

/// A point-in-time view of the store ([`Store::view`]): a RocksDB snapshot. Send it to another
/// thread to read a consistent state while writes go on.
pub struct View {
    snapshot: rocksdb::SnapshotWithThreadMode<'static, DB>,
    db: Arc<DB>,
}

impl View {
    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family created by Store::open")
    }

    pub fn sm_meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.snapshot.get_cf(self.cf(SM_META), key)?)
    }

    pub fn data_get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.snapshot.get_cf(self.cf(DATA), space_key(space, key))?)
    }

    /// About how many bytes `space` holds now (not as of this view): its SST bytes (RocksDB's
    /// estimate; nothing is compressed) plus every unflushed write of the data family, so never
    /// much below the real figure.
    pub fn approximate_space_bytes(&self, space: &str) -> Result<u64> {
        let cf = self.cf(DATA);
        let (start, end) = (space_key(space, b""), space_end(space));
        let on_disk = self
            .db
            .get_approximate_sizes_cf(cf, &[rocksdb::Range::new(&start, &end)])
            .first()
            .copied()
            .unwrap_or(0);
        let in_memory = self
            .db
            .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")?
            .unwrap_or(0);
        Ok(on_disk + in_memory)
    }

    /// As [`Store::data_scan`], in this view.
    pub fn data_scan(&self, space: &str, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>> {
        let Some((from, read)) = scan_range(space, start, end, limit) else {
            return Ok(Vec::new());
        };
        let iter = self
            .snapshot
            .iterator_cf_opt(self.cf(DATA), read, IteratorMode::From(&from, Direction::Forward));
        collect_pairs(iter, space.len() + 1, limit)
    }

    /// Every blob, in key order, one at a time.
    pub fn blobs(&self) -> impl Iterator<Item = Result<(String, Vec<u8>)>> + '_ {
        self.snapshot
            .iterator_cf(self.cf(BLOBS), IteratorMode::Start)
            .map(|item| {
                let (key, value) = item?;
                let key = String::from_utf8(key.into_vec()).map_err(|_| StoreError::Corrupt("blob key".into()))?;
                Ok((key, value.into_vec()))
            })
    }
}

fn decode_index(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// State-machine writes that land together or not at all: plugin data, state-machine meta and
/// blobs.
pub struct SmBatch {
    store: Store,
    batch: rocksdb::WriteBatch,
}

impl SmBatch {
    pub fn put_data(&mut self, space: &str, key: &[u8], value: &[u8]) {
        let cf = self.store.cf(DATA);
        self.batch.put_cf(cf, space_key(space, key), value);
    }

    pub fn delete_data(&mut self, space: &str, key: &[u8]) {
        let cf = self.store.cf(DATA);
        self.batch.delete_cf(cf, space_key(space, key));
    }

    /// Deletes a whole key space.
    pub fn clear_space(&mut self, space: &str) {
        let cf = self.store.cf(DATA);
        self.batch.delete_range_cf(cf, space_key(space, b""), space_end(space));
    }

    pub fn put_meta(&mut self, key: &str, value: &[u8]) {
        let cf = self.store.cf(SM_META);
        self.batch.put_cf(cf, key, value);
    }

    pub fn put_blob(&mut self, key: &str, value: &[u8]) {
        let cf = self.store.cf(BLOBS);
        self.batch.put_cf(cf, key, value);
    }

    pub fn delete_blob(&mut self, key: &str) {
        let cf = self.store.cf(BLOBS);
        self.batch.delete_cf(cf, key);
    }

    /// Deletes every blob whose key starts with `prefix` (which must not be empty).
    pub fn delete_blob_prefix(&mut self, prefix: &str) {
        let cf = self.store.cf(BLOBS);
        let mut end = prefix.as_bytes().to_vec();
        // The first key after every key with this prefix: bump the last byte below 0xff.
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                break;
            }
        }
        if end.is_empty() {
            return;
        }
        self.batch.delete_range_cf(cf, prefix.as_bytes(), &end);
    }

    /// Bytes of the writes in this batch so far.
    pub fn size_in_bytes(&self) -> usize {
        self.batch.size_in_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn log_reads_back_ranges_in_index_order_and_truncates_and_purges() {
        let (_dir, store) = open();
        store
            .log_append((1..=300).map(|i| (i, i.to_string().into_bytes())))
            .unwrap();
        let range = store.log_range(255, 258).unwrap();
        assert_eq!(range.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [255, 256, 257]);
        assert_eq!(range[0].1, b"255");
        assert_eq!(store.log_last().unwrap().unwrap().0, 300);

        store.log_truncate_from(100).unwrap();
        assert_eq!(store.log_last().unwrap().unwrap().0, 99);
        store.log_purge_to(50, ("purged", b"50")).unwrap();
        let rest = store.log_range(0, u64::MAX).unwrap();
        assert_eq!(rest.first().unwrap().0, 51);
        assert_eq!(rest.len(), 49);
        assert_eq!(store.raft_meta_get("purged").unwrap().unwrap(), b"50");
    }

    #[test]
    fn the_write_ahead_log_stays_bounded_while_a_family_is_written_rarely() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_wal_limit(dir.path(), 4 << 20).unwrap();
        // Written once, early: its memtable holds on to the first WAL file.
        store.raft_meta_put("vote", b"1", true).unwrap();
        let entry = vec![7u8; 10_000];
        for chunk in 0..48u64 {
            store
                .log_append((0..100).map(|i| (chunk * 100 + i, entry.clone())))
                .unwrap();
        }
        let wal_bytes = || -> u64 {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|f| f.unwrap())
                .filter(|f| f.file_name().to_string_lossy().ends_with(".log"))
                .map(|f| f.metadata().unwrap().len())
                .sum()
        };
        // 48 MB went through the log: without the limit all of it stays in the WAL. With it,
        // RocksDB flushes the vote's family in the background and then deletes the old files.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while wal_bytes() >= 16 << 20 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(wal_bytes() < 16 << 20, "{} bytes of WAL", wal_bytes());
        assert_eq!(store.raft_meta_get("vote").unwrap().unwrap(), b"1");
    }

    #[test]
    fn rewriting_hot_keys_keeps_the_data_and_blob_memtables_small() {
        let (_dir, store) = open();
        let value = vec![7u8; 1000];
        // 40 MB each of rewrites of 100 data keys and 100 blobs (sessions): under RocksDB's default
        // 64 MiB memtable every version would stay in memory.
        for round in 0..400u32 {
            let mut batch = store.batch();
            for key in 0..100u32 {
                batch.put_data("kv", &key.to_be_bytes(), &value);
                batch.put_blob(&format!("session/{key}"), &round.to_be_bytes().repeat(250));
            }
            store.write(batch).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let sizes = store.sizes().unwrap();
            let memtables: Vec<u64> = [DATA, BLOBS]
                .iter()
                .map(|name| sizes.iter().find(|f| f.family == *name).unwrap().memtable_bytes)
                .collect();
            if memtables.iter().all(|&bytes| bytes <= 2 * SM_MEMTABLE_BYTES as u64) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "memtables of {memtables:?} bytes");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(store.data_get("kv", &7u32.to_be_bytes()).unwrap(), Some(value));
    }

    #[test]
    fn reads_of_every_family_fill_one_shared_bounded_block_cache() {
        let (_dir, store) = open();
        // 24 MB each in data and blobs, flushed to SST files and read back: more than the cache.
        let value = vec![7u8; 10_000];
        for chunk in 0..24u32 {
            let mut batch = store.batch();
            for i in 0..100u32 {
                let key = chunk * 100 + i;
                batch.put_data("kv", &key.to_be_bytes(), &value);
                batch.put_blob(&format!("blob/{key}"), &value);
            }
            store.write(batch).unwrap();
        }
        for family in [DATA, BLOBS] {
            store.db.flush_cf(store.cf(family)).unwrap();
        }
        for key in 0..2400u32 {
            assert!(store.data_get("kv", &key.to_be_bytes()).unwrap().is_some());
            assert!(store.blob_get(&format!("blob/{key}")).unwrap().is_some());
        }
        let cached = store.block_cache_bytes();
        assert!(
            cached > (BLOCK_CACHE_BYTES / 2) as u64 && cached <= BLOCK_CACHE_BYTES as u64,
            "{cached} bytes in the block cache"
        );
    }

    #[test]
    fn sizes_show_writes_in_memory_and_then_on_disk() {
        let (_dir, store) = open();
        let before = store.sizes().unwrap();
        assert_eq!(before.iter().map(|f| f.family).collect::<Vec<_>>(), FAMILIES);
        let mut batch = store.batch();
        for i in 0..1000u32 {
            batch.put_data("kv", &i.to_be_bytes(), &[7; 100]);
        }
        store.write(batch).unwrap();
        let data = |sizes: &[FamilySize]| sizes.iter().find(|f| f.family == DATA).unwrap().clone();
        let written = data(&store.sizes().unwrap());
        assert!(
            written.memtable_bytes > data(&before).memtable_bytes + 100_000,
            "{written:?}"
        );
        store.db.flush_cf(store.cf(DATA)).unwrap();
        let flushed = data(&store.sizes().unwrap());
        assert!(flushed.sst_bytes > 0, "{flushed:?}");
    }

    #[test]
    fn key_spaces_do_not_see_each_other() {
        let (_dir, store) = open();
        let mut batch = store.batch();
        batch.put_data("a", b"k1", b"a1");
        batch.put_data("a", b"k2", b"a2");
        batch.put_data("ab", b"k1", b"ab1");
        batch.put_data("b", b"", b"b-empty-key");
        store.write(batch).unwrap();

        let a = store.data_scan("a", b"", None, 100).unwrap();
        assert_eq!(
            a,
            vec![(b"k1".to_vec(), b"a1".to_vec()), (b"k2".to_vec(), b"a2".to_vec())]
        );
        assert_eq!(store.data_scan("a", b"k2", None, 100).unwrap().len(), 1);
        assert_eq!(store.data_scan("a", b"", Some(b"k2"), 100).unwrap().len(), 1);
        assert_eq!(store.data_scan("a", b"", None, 1).unwrap().len(), 1);
        assert_eq!(store.data_get("b", b"").unwrap().unwrap(), b"b-empty-key");
        assert_eq!(store.data_get("ab", b"k2").unwrap(), None);

        let mut batch = store.batch();
        batch.clear_space("a");
        store.write(batch).unwrap();
        assert!(store.data_scan("a", b"", None, 100).unwrap().is_empty());
        assert_eq!(store.data_scan("ab", b"", None, 100).unwrap().len(), 1);
    }

    #[test]
    fn everything_written_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.log_append([(7, b"seven".to_vec())]).unwrap();
            store.raft_meta_put("vote", b"v", true).unwrap();
            let mut batch = store.batch();
            batch.put_data("kv", b"a", b"1");
            batch.put_meta("applied", b"7");
            batch.put_blob("sha", b"component");
            store.write(batch).unwrap();
            store.sync().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.log_last().unwrap().unwrap(), (7, b"seven".to_vec()));
        assert_eq!(store.raft_meta_get("vote").unwrap().unwrap(), b"v");
        assert_eq!(store.data_get("kv", b"a").unwrap().unwrap(), b"1");
        assert_eq!(store.sm_meta_get("applied").unwrap().unwrap(), b"7");
        assert_eq!(
            store.blob_scan_prefix("sh").unwrap(),
            vec![("sha".to_string(), b"component".to_vec())]
        );
    }

    #[test]
    fn space_names_are_checked() {
        assert!(check_space("kv").is_ok());
        assert!(check_space("kv-py_2").is_ok());
        for bad in ["", "-kv", "KV", "a/b", "a\0b", &"x".repeat(65)] {
            assert!(check_space(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_view_keeps_reading_the_state_it_was_taken_at() {
        let (_dir, store) = open();
        let mut batch = store.batch();
        batch.put_data("kv", b"a", b"1");
        batch.put_meta("applied", b"1");
        batch.put_blob("component/x", b"wasm");
        store.write(batch).unwrap();
        let view = store.view();
        let mut batch = store.batch();
        batch.put_data("kv", b"a", b"2");
        batch.put_data("kv", b"b", b"2");
        batch.put_meta("applied", b"2");
        batch.delete_blob("component/x");
        store.write(batch).unwrap();
        // On another thread, as a snapshot build reads it.
        let seen = std::thread::spawn(move || {
            (
                view.data_get("kv", b"a").unwrap(),
                view.data_scan("kv", b"", None, 10).unwrap(),
                view.sm_meta_get("applied").unwrap(),
                view.blobs().collect::<Result<Vec<_>>>().unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(seen.0.unwrap(), b"1");
        assert_eq!(seen.1, vec![(b"a".to_vec(), b"1".to_vec())]);
        assert_eq!(seen.2.unwrap(), b"1");
        assert_eq!(seen.3, vec![("component/x".to_string(), b"wasm".to_vec())]);
        assert_eq!(store.data_get("kv", b"a").unwrap().unwrap(), b"2");
    }

    #[test]
    fn spaces_lists_each_non_empty_space_once() {
        let (_dir, store) = open();
        let mut batch = store.batch();
        for space in ["kv", "kv.7", "counter"] {
            for key in [b"a", b"b", b"c"] {
                batch.put_data(space, key, b"v");
            }
        }
        batch.put_data("empty", b"a", b"v");
        batch.delete_data("empty", b"a");
        store.write(batch).unwrap();
        assert_eq!(store.spaces().unwrap(), vec!["counter", "kv", "kv.7"]);
    }

    #[test]
    fn deleting_a_blob_prefix_leaves_other_blobs() {
        let (_dir, store) = open();
        let mut batch = store.batch();
        for key in ["upload/a/0", "upload/a/1", "upload/b/0", "uploads", "component/a"] {
            batch.put_blob(key, b"x");
        }
        store.write(batch).unwrap();
        let mut batch = store.batch();
        batch.delete_blob_prefix("upload/");
        store.write_synced(batch).unwrap();
        let left: Vec<String> = store
            .blob_scan_prefix("")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec!["component/a", "uploads"]);
    }
}
