//! The plugins' kv spaces on RocksDB, as the runtime's [`KvBackend`].
//!
//! The apply path writes through [`ApplyBackend`]: every committed write set goes into one pending
//! [`SmBatch`] (shared by all plugins) and an overlay that later reads of the same apply call see.
//! The state machine writes the batch with the applied log id and the digest, so a crash leaves
//! all of an apply call's entries applied or none. Queries read through [`ReadBackend`], a
//! snapshot build through [`ViewBackend`] (a point-in-time view), and a snapshot install writes a
//! fresh space through [`StagingBackend`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmraft_runtime::{BackendError, KvBackend, Pair, WriteSet};
use wasmraft_store::{SmBatch, Store, StoreError, View};

/// Writes of the current apply call, not yet in RocksDB.
pub(crate) struct Pending {
    pub batch: SmBatch,
    overlay: HashMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Chain over every non-empty write set in log order: it does not depend on how the log is
    /// cut into apply calls.
    pub writes_digest: [u8; 32],
}

impl Pending {
    pub fn new(store: &Store, writes_digest: [u8; 32]) -> Self {
        Self {
            batch: store.batch(),
            overlay: HashMap::new(),
            writes_digest,
        }
    }

    /// Takes the batch to write, leaving an empty one; the overlay is dropped (the batch is
    /// about to land in RocksDB).
    pub fn take_batch(&mut self, store: &Store) -> SmBatch {
        self.overlay.clear();
        std::mem::replace(&mut self.batch, store.batch())
    }
}

pub(crate) type SharedPending = Arc<Mutex<Pending>>;

/// Makes a fresh backend for a plugin instance (each instance owns one).
pub(crate) type BackendFactory = Box<dyn Fn() -> Box<dyn KvBackend> + Send + Sync>;

fn lock(pending: &SharedPending) -> std::sync::MutexGuard<'_, Pending> {
    // A panic while holding this lock already stopped the apply path; the data is still whole.
    pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn backend_err(e: impl std::fmt::Display) -> BackendError {
    BackendError(e.to_string())
}

/// A plugin's kv space on the apply path.
pub(crate) struct ApplyBackend {
    pub store: Store,
    /// The plugin's name: what the writes digest records (the same on every replica).
    pub name: String,
    /// Where its pairs live on this node (differs between replicas after a snapshot install).
    pub space: String,
    pub pending: SharedPending,
    /// Whether its writes go into the writes digest: a shadow candidate's do not (they are
    /// compared, not part of the state replicas must agree on).
    pub in_digest: bool,
}

impl KvBackend for ApplyBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        if let Some(value) = lock(&self.pending).overlay.get(&self.space).and_then(|o| o.get(key)) {
            return Ok(value.clone());
        }
        self.store.data_get(&self.space, key).map_err(backend_err)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, BackendError> {
        let pending = lock(&self.pending);
        let overlay: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = match pending.overlay.get(&self.space) {
            None => Vec::new(),
            Some(o) => o
                .range::<[u8], _>((
                    std::ops::Bound::Included(start),
                    end.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
                ))
                .collect(),
        };
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        // Each overlay entry hides or adds at most one stored pair: this many stored pairs are
        // enough to fill `limit` after merging.
        let stored = self
            .store
            .data_scan(&self.space, start, end, limit.saturating_add(overlay.len()))
            .map_err(backend_err)?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
        for (key, value) in overlay {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    fn commit(&mut self, writes: WriteSet) -> Result<(), BackendError> {
        let mut pending = lock(&self.pending);
        if !self.in_digest {
            for (key, value) in &writes {
                match value {
                    Some(value) => pending.batch.put_data(&self.space, key, value),
                    None => pending.batch.delete_data(&self.space, key),
                }
            }
            pending.overlay.entry(self.space.clone()).or_default().extend(writes);
            return Ok(());
        }
        let mut hasher = Sha256::new();
        hasher.update(pending.writes_digest);
        hasher.update((self.name.len() as u64).to_be_bytes());
        hasher.update(self.name.as_bytes());
        for (key, value) in &writes {
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(key);
            match value {
                Some(value) => {
                    hasher.update([1]);
                    hasher.update((value.len() as u64).to_be_bytes());
                    hasher.update(value);
                    pending.batch.put_data(&self.space, key, value);
                }
                None => {
                    hasher.update([0]);
                    pending.batch.delete_data(&self.space, key);
                }
            }
        }
        pending.writes_digest = hasher.finalize().into();
        pending.overlay.entry(self.space.clone()).or_default().extend(writes);
        Ok(())
    }
}

/// A plugin's kv space as queries see it: the RocksDB view (a point-in-time snapshot) the query
/// was given, taken between two apply calls. One per query instance; the view changes per query.
pub(crate) struct QueryBackend {
    pub space: String,
    pub view: QueryView,
}

/// The view a query instance reads (none between queries).
pub(crate) type QueryView = Arc<Mutex<Option<Arc<View>>>>;

impl QueryBackend {
    fn view(&self) -> Result<Arc<View>, BackendError> {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        view.ok_or_else(|| BackendError("a query instance read outside a query".into()))
    }
}

impl KvBackend for QueryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.view()?.data_get(&self.space, key).map_err(backend_err)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, BackendError> {
        self.view()?
            .data_scan(&self.space, start, end, limit)
            .map_err(backend_err)
    }

    fn commit(&mut self, _writes: WriteSet) -> Result<(), BackendError> {
        Err(BackendError("queries are read-only".into()))
    }
}

/// A plugin's kv space as a snapshot build sees it: the state at one applied index.
pub(crate) struct ViewBackend {
    pub view: Arc<View>,
    pub space: String,
}

impl KvBackend for ViewBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.view.data_get(&self.space, key).map_err(backend_err)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, BackendError> {
        self.view.data_scan(&self.space, start, end, limit).map_err(backend_err)
    }

    fn commit(&mut self, _writes: WriteSet) -> Result<(), BackendError> {
        Err(BackendError("a snapshot view is read-only".into()))
    }

    fn state_bytes(&self) -> Option<u64> {
        self.view.approximate_space_bytes(&self.space).ok()
    }
}

/// Writes into a fresh space as a snapshot install restores it, a bounded batch at a time (the
/// space is not live until the install switches to it, so these writes need no atomicity).
pub(crate) struct Staging {
    store: Store,
    space: String,
    batch: SmBatch,
}

/// Bytes a staging batch collects before it is written.
const STAGING_BATCH_BYTES: usize = 8 << 20;

impl Staging {
    pub fn new(store: Store, space: String) -> Self {
        let batch = store.batch();
        Self { store, space, batch }
    }

    /// Writes what is buffered.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, self.store.batch());
        self.store.write(batch)
    }
}

pub(crate) struct StagingBackend(pub Arc<Mutex<Staging>>);

impl StagingBackend {
    fn staging(&self) -> std::sync::MutexGuard<'_, Staging> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KvBackend for StagingBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        let mut staging = self.staging();
        staging.flush().map_err(backend_err)?;
        staging.store.data_get(&staging.space, key).map_err(backend_err)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, BackendError> {
        let mut staging = self.staging();
        staging.flush().map_err(backend_err)?;
        staging
            .store
            .data_scan(&staging.space, start, end, limit)
            .map_err(backend_err)
    }

    fn commit(&mut self, writes: WriteSet) -> Result<(), BackendError> {
        let mut staging = self.staging();
        let staging = &mut *staging;
        for (key, value) in &writes {
            match value {
                Some(value) => staging.batch.put_data(&staging.space, key, value),
                None => staging.batch.delete_data(&staging.space, key),
            }
        }
        if staging.batch.size_in_bytes() >= STAGING_BATCH_BYTES {
            staging.flush().map_err(backend_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<Pair> {
        list.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn reads_in_an_apply_call_see_its_earlier_writes_merged_over_rocksdb() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = store.batch();
        for key in ["a", "b", "c", "d"] {
            batch.put_data("kv", key.as_bytes(), b"stored");
        }
        store.write(batch).unwrap();
        let pending = Arc::new(Mutex::new(Pending::new(&store, [0; 32])));
        let mut backend = ApplyBackend {
            store: store.clone(),
            name: "kv".into(),
            space: "kv".into(),
            pending: pending.clone(),
            in_digest: true,
        };
        let writes: WriteSet = [
            (b"b".to_vec(), None),
            (b"bb".to_vec(), Some(b"new".to_vec())),
            (b"e".to_vec(), Some(b"new".to_vec())),
        ]
        .into_iter()
        .collect();
        backend.commit(writes).unwrap();

        assert_eq!(backend.get(b"b").unwrap(), None);
        assert_eq!(backend.get(b"bb").unwrap(), Some(b"new".to_vec()));
        assert_eq!(backend.get(b"c").unwrap(), Some(b"stored".to_vec()));
        // The deleted key must not eat into the limit.
        assert_eq!(
            backend.scan(b"", None, 3).unwrap(),
            pairs(&[("a", "stored"), ("bb", "new"), ("c", "stored")])
        );
        assert_eq!(
            backend.scan(b"b", Some(b"e"), 10).unwrap(),
            pairs(&[("bb", "new"), ("c", "stored"), ("d", "stored")])
        );
        // Nothing reached RocksDB yet; the batch lands it.
        assert_eq!(store.data_get("kv", b"e").unwrap(), None);
        let batch = pending.lock().unwrap().take_batch(&store);
        store.write(batch).unwrap();
        assert_eq!(store.data_get("kv", b"b").unwrap(), None);
        assert_eq!(store.data_get("kv", b"e").unwrap(), Some(b"new".to_vec()));
    }

    #[test]
    fn the_writes_digest_chains_every_write_set_in_log_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest_in = |space: &str, sets: &[&[(&str, &str)]]| {
            let pending = Arc::new(Mutex::new(Pending::new(&store, [0; 32])));
            let mut backend = ApplyBackend {
                store: store.clone(),
                name: "kv".into(),
                space: space.into(),
                pending: pending.clone(),
                in_digest: true,
            };
            for set in sets {
                let writes: WriteSet = set
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())))
                    .collect();
                backend.commit(writes).unwrap();
            }
            pending.lock().unwrap().writes_digest
        };
        let digest_after = |sets: &[&[(&str, &str)]]| digest_in("kv", sets);
        let one = digest_after(&[&[("a", "1")], &[("b", "2")]]);
        // Where a replica keeps the pairs (a restored space) is not part of the digest.
        assert_eq!(one, digest_in("kv.120", &[&[("a", "1")], &[("b", "2")]]));
        assert_eq!(one, digest_after(&[&[("a", "1")], &[("b", "2")]]));
        assert_ne!(one, digest_after(&[&[("a", "1")], &[("b", "3")]]));
        assert_ne!(one, digest_after(&[&[("b", "2")], &[("a", "1")]]));
    }
}
