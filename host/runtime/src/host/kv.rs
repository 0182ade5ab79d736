//! `wasmraft:plugin/kv`: reads merge the current entry's overlay over the backend; writes are
//! checked against the limits and buffered in the overlay until the entry finishes.

use std::collections::BTreeMap;

use crate::backend::range_bounds;
use crate::bindings::kv;
use crate::error::HostAbort;
use crate::host::{HostState, Mode};
use crate::limits::LimitExceeded;

/// Most pairs one `scan` call may ask for: the answer is materialized in host and guest memory.
pub const MAX_SCAN_PAIRS: u32 = 10_000;

type Pair = (Vec<u8>, Vec<u8>);

impl HostState {
    fn check_key(&self, key: &[u8]) -> Result<(), HostAbort> {
        let limit = self.limits.max_key_bytes;
        if key.len() > limit {
            return Err(HostAbort::Limit(LimitExceeded::KeySize { size: key.len(), limit }));
        }
        Ok(())
    }

    /// Records one write in the overlay (or, while restoring, in the backend).
    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), HostAbort> {
        if let Some(name) = self.mode.read_only_name() {
            return Err(HostAbort::ReadOnly(name));
        }
        if self.mode == Mode::Apply && self.apply.current.is_none() {
            return Err(HostAbort::Protocol(
                "kv write outside an entry (call entries.next first)".to_string(),
            ));
        }
        self.check_key(&key)?;
        let value_len = value.as_ref().map_or(0, Vec::len);
        if value_len > self.limits.max_value_bytes {
            return Err(HostAbort::Limit(LimitExceeded::ValueSize {
                size: value_len,
                limit: self.limits.max_value_bytes,
            }));
        }
        self.write_count += 1;
        self.write_bytes += key.len() + value_len;
        if self.write_count > self.limits.max_writes_per_entry {
            return Err(HostAbort::Limit(LimitExceeded::WriteCount {
                limit: self.limits.max_writes_per_entry,
            }));
        }
        if self.write_bytes > self.limits.max_write_bytes_per_entry {
            return Err(HostAbort::Limit(LimitExceeded::WriteBytes {
                limit: self.limits.max_write_bytes_per_entry,
            }));
        }
        self.overlay.insert(key, value);
        if self.mode == Mode::Restore {
            // A restore fills a fresh space that is swapped in as a whole by the caller: there is
            // nothing to roll back per call, so flush as we go and keep host memory bounded.
            self.commit_overlay()?;
        }
        Ok(())
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        self.check_key(&key)?;
        if let Some(value) = self.overlay.get(&key) {
            return Ok(value.clone());
        }
        Ok(self.backend.get(&key).map_err(HostAbort::Backend)?)
    }

    fn scan(&mut self, start: Vec<u8>, end: Option<Vec<u8>>, limit: u32) -> wasmtime::Result<Vec<Pair>> {
        if limit > MAX_SCAN_PAIRS {
            return Err(
                HostAbort::Protocol(format!("scan limit {limit} is over the maximum of {MAX_SCAN_PAIRS}")).into(),
            );
        }
        let limit = limit as usize;
        let Some(range) = range_bounds(&start, end.as_deref()) else {
            return Ok(Vec::new());
        };
        let overlay: Vec<_> = self.overlay.range::<[u8], _>(range).collect();
        // Fetch enough backend pairs that, after the overlay's deletes hide some, `limit` remain.
        // Overlay keys past the fetched window cannot be among the first `limit` results.
        let deletes = overlay.iter().filter(|(_, value)| value.is_none()).count();
        let fetched = self
            .backend
            .scan(&start, end.as_deref(), limit.saturating_add(deletes))
            .map_err(HostAbort::Backend)?;
        if overlay.is_empty() {
            return Ok(fetched);
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = fetched.into_iter().collect();
        for (key, value) in overlay {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        Ok(self.write(key, Some(value))?)
    }

    fn delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        Ok(self.write(key, None)?)
    }

    fn write_batch(&mut self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> wasmtime::Result<()> {
        for (key, value) in writes {
            self.write(key, value)?;
        }
        Ok(())
    }
}
