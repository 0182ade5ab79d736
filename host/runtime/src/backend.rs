//! Where a plugin's kv space lives. The runtime reads and commits through [`KvBackend`]; the node
//! implements it on RocksDB, [`MemoryBackend`] is the in-memory one for tests and tools.

use std::collections::BTreeMap;
use std::ops::Bound;

/// One entry's writes, last write per key wins: `Some` sets, `None` deletes.
pub type WriteSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A key-value pair.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A storage failure. Never a plugin's fault: the caller must stop applying (a node fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kv backend: {0}")]
pub struct BackendError(pub String);

/// A plugin's ordered key-value space.
///
/// # Correctness requirements
/// - Reads see every write set committed before them, in commit order.
/// - [`KvBackend::commit`] applies a whole write set or fails without applying any of it: the
///   runtime commits one entry's writes at a time, and entry atomicity rests on this.
/// - `scan` returns pairs with `start <= key < end` (`end` `None`: unbounded) in ascending byte
///   order, at most `limit` of them.
pub trait KvBackend: Send {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, BackendError>;
    fn commit(&mut self, writes: WriteSet) -> Result<(), BackendError>;

    /// The bytes of keys and values in this space, exactly or as an estimate that is not much
    /// lower; `None` when unknown. A snapshot stream is bounded by it (see
    /// [`crate::limits::snapshot_bound`]).
    fn state_bytes(&self) -> Option<u64> {
        None
    }
}

/// An in-memory [`KvBackend`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryBackend {
    pairs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every pair, in key order.
    pub fn pairs(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.pairs
    }
}

/// A `[start, end)` key range as bounds; `None` when it is empty.
pub(crate) type KeyRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

pub(crate) fn range_bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> Option<KeyRange<'a>> {
    if end.is_some_and(|end| end <= start) {
        return None;
    }
    Some((Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded)))
}

impl KvBackend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.pairs.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, BackendError> {
        let Some(range) = range_bounds(start, end) else {
            return Ok(Vec::new());
        };
        Ok(self
            .pairs
            .range::<[u8], _>(range)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn state_bytes(&self) -> Option<u64> {
        Some(self.pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum())
    }

    fn commit(&mut self, writes: WriteSet) -> Result<(), BackendError> {
        for (key, value) in writes {
            match value {
                Some(value) => self.pairs.insert(key, value),
                None => self.pairs.remove(&key),
            };
        }
        Ok(())
    }
}
