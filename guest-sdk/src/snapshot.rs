//! The default snapshot format: the plugin's whole kv space as a byte stream.
//!
//! The stream is `MAGIC` followed by records `[key len: u32 LE][key][value len: u32 LE][value]` in
//! ascending key order. Chunk boundaries fall anywhere, even inside a record: the reader buffers.
//! Plugins that keep all their state in kv (the recommended way) need nothing else.

use crate::kv::key_successor;
use crate::{Error, Kv};

/// First bytes of a default snapshot stream: format name and version.
pub const MAGIC: &[u8; 8] = b"wrkv\0\0\0\x01";

/// Pairs read from kv per refill of the writer's buffer.
const SCAN_PAGE: u32 = 256;

/// Streams the kv space out in chunks.
#[derive(Debug)]
pub struct SnapshotWriter {
    /// Where the next scan starts; `None` once the space is exhausted.
    next_key: Option<Vec<u8>>,
    pending: Vec<u8>,
}

impl Default for SnapshotWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotWriter {
    /// A writer positioned at the start of the space.
    pub fn new() -> Self {
        Self {
            next_key: Some(Vec::new()),
            pending: MAGIC.to_vec(),
        }
    }

    /// The next chunk, at most `max_bytes` long (at least one byte), or `None` at the end.
    pub fn next_chunk(&mut self, kv: &Kv, max_bytes: usize) -> Option<Vec<u8>> {
        let max_bytes = max_bytes.max(1);
        while self.pending.len() < max_bytes {
            let Some(start) = self.next_key.take() else { break };
            let pairs = kv.scan(&start, None, SCAN_PAGE);
            if pairs.len() == SCAN_PAGE as usize {
                self.next_key = pairs.last().map(|(key, _)| key_successor(key));
            }
            for (key, value) in pairs {
                encode_record(&mut self.pending, &key, &value);
            }
        }
        if self.pending.is_empty() {
            return None;
        }
        let rest = self.pending.split_off(self.pending.len().min(max_bytes));
        Some(std::mem::replace(&mut self.pending, rest))
    }
}

fn encode_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    for part in [key, value] {
        // The host caps keys and values far below 4 GiB, so the length always fits.
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
}

/// Restores a stream written by [`SnapshotWriter`] into an empty kv space.
#[derive(Debug, Default)]
pub struct SnapshotReader {
    buffer: Vec<u8>,
    seen_magic: bool,
}

impl SnapshotReader {
    /// A reader expecting the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next chunk and writes every complete record in it.
    pub fn push(&mut self, kv: &mut Kv, chunk: &[u8]) -> Result<(), Error> {
        self.buffer.extend_from_slice(chunk);
        let mut at = 0;
        if !self.seen_magic {
            if self.buffer.len() < MAGIC.len() {
                return Ok(());
            }
            if &self.buffer[..MAGIC.len()] != MAGIC {
                return Err(Error::new("not a wasmraft kv snapshot (bad magic)"));
            }
            self.seen_magic = true;
            at = MAGIC.len();
        }
        let mut writes = Vec::new();
        while let Some((key, value, next)) = decode_record(&self.buffer, at) {
            writes.push((key.to_vec(), Some(value.to_vec())));
            at = next;
        }
        kv.write_batch(&writes);
        self.buffer.drain(..at);
        Ok(())
    }

    /// Checks that the stream ended on a record boundary.
    pub fn finish(self) -> Result<(), Error> {
        match (self.seen_magic, self.buffer.len()) {
            (true, 0) => Ok(()),
            (false, _) => Err(Error::new("snapshot stream ended before its header")),
            (true, n) => Err(Error::new(format!(
                "snapshot stream truncated: {n} bytes of an incomplete record"
            ))),
        }
    }
}

/// One record at `at`, and where the next starts; `None` if the buffer holds no complete record.
fn decode_record(buf: &[u8], at: usize) -> Option<(&[u8], &[u8], usize)> {
    let (key, at) = decode_part(buf, at)?;
    let (value, at) = decode_part(buf, at)?;
    Some((key, value, at))
}

fn decode_part(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len_bytes = buf.get(at..at.checked_add(4)?)?;
    let len = u32::from_le_bytes(len_bytes.try_into().ok()?) as usize;
    let start = at + 4;
    let part = buf.get(start..start.checked_add(len)?)?;
    Some((part, start + len))
}
