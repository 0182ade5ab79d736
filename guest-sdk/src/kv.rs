use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, sys};

/// Pairs fetched per host call when iterating a range.
const SCAN_PAGE: u32 = 256;

/// The plugin's durable, ordered key-value space.
///
/// Keys order bytewise. Writes made while applying an entry commit together with the entry or not
/// at all. `query` receives `&Kv`, so queries cannot write.
#[derive(Debug)]
pub struct Kv {
    _private: (),
}

impl Kv {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        sys::get(key)
    }

    /// Up to `limit` pairs with `start <= key < end` (no `end`: to the end of the space), ascending.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        sys::scan(start, end, limit)
    }

    /// Every pair with `start <= key < end`, ascending, fetched page by page.
    pub fn range<'a>(&'a self, start: &[u8], end: Option<&'a [u8]>) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + 'a {
        let mut next_start = Some(start.to_vec());
        let mut page = Vec::new().into_iter();
        std::iter::from_fn(move || {
            loop {
                if let Some(pair) = page.next() {
                    return Some(pair);
                }
                let start = next_start.take()?;
                let pairs = self.scan(&start, end, SCAN_PAGE);
                if pairs.len() == SCAN_PAGE as usize {
                    next_start = pairs.last().map(|(key, _)| key_successor(key));
                }
                page = pairs.into_iter();
            }
        })
    }

    /// Stores `value` at `key`.
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        sys::set(key, value)
    }

    /// Removes `key` (a missing key is fine).
    pub fn delete(&mut self, key: &[u8]) {
        sys::delete(key)
    }

    /// Applies several writes in one host call, in order: `Some` sets, `None` deletes.
    pub fn write_batch(&mut self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) {
        sys::write_batch(writes)
    }

    /// The JSON value at `key`, decoded.
    pub fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, Error> {
        self.get(key)
            .map(|bytes| serde_json::from_slice(&bytes))
            .transpose()
            .map_err(Error::from)
    }

    /// Stores `value` at `key` as JSON.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, key: &[u8], value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value)?;
        self.set(key, &bytes);
        Ok(())
    }
}

/// The smallest key greater than `key`: scanning from it continues right after `key`.
pub(crate) fn key_successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}
