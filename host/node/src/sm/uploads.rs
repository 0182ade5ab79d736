//! Uploads: a component travels through the log in pieces (`BlobChunk` entries), stored under
//! `upload/<sha256>/`; the last piece assembles them, checks the sha256, and stores the component
//! content-addressed. An upload is idempotent.
//!
//! An upload nobody finishes (its deploy failed, its leader died) is deleted everywhere: its first
//! piece records the leader's timestamp, and the first control entry (piece, activation,
//! retirement) whose leader timestamp is more than [`UPLOAD_TTL_MS`] later deletes its pieces.
//! A component that was assembled but never activated (its deploy's barrier failed) is marked
//! the same way and deleted the same way, unless a plugin runs it or keeps it by then. The
//! decisions rest on log data only, at a control entry (which flushes what came before it), so
//! every replica deletes at the same index.

use std::io;

use sha2::{Digest, Sha256};

use super::registry::component_key;
use super::{Machine, ack, rejected};
use crate::pb;
use crate::util::{io_err, lock};
use tracing::info;

/// The largest component an upload may carry, whatever a node's limits say (those are checked
/// off the apply path).
const MAX_UPLOAD_BYTES: u64 = 1 << 30;

/// How long (leader time) an upload may take before it counts as abandoned.
pub(crate) const UPLOAD_TTL_MS: u64 = 10 * 60 * 1000;

/// When each upload in progress started (its first piece's leader timestamp, u64 LE).
pub(crate) const STARTED: &str = "upload-started/";

/// Components assembled and not yet activated, with the leader timestamp of their last piece.
pub(crate) const UNUSED: &str = "component-unused/";

/// Where pieces of uploads in progress live in the blobs family.
pub(crate) const UPLOADS: &str = "upload/";

fn upload_prefix(sha256: &str) -> String {
    format!("{UPLOADS}{sha256}/")
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Machine {
    /// Deletes the uploads (but `except`) that started more than [`UPLOAD_TTL_MS`] before
    /// `now_ms`, the leader timestamp of the control entry being applied, and the components
    /// assembled that long ago that no plugin has used since.
    pub(super) fn collect_garbage(&mut self, now_ms: u64, except: Option<&str>) -> io::Result<()> {
        let store = &self.shared.store;
        let started = store.blob_scan_prefix(STARTED).map_err(io_err)?;
        let unused = store.blob_scan_prefix(UNUSED).map_err(io_err)?;
        let expired = |value: Vec<u8>| {
            let since = value.try_into().map(u64::from_le_bytes).unwrap_or(0);
            now_ms > since.saturating_add(UPLOAD_TTL_MS)
        };
        let mut pending = lock(&self.pending);
        for (key, value) in unused {
            let sha256 = &key[UNUSED.len()..];
            if !expired(value) {
                continue;
            }
            if !self.shared.uses_component(sha256) {
                info!(%sha256, now_ms, "deleting a component that was never activated");
                pending.batch.delete_blob(&component_key(sha256));
                self.shared.compiler.forget(sha256);
            }
            pending.batch.delete_blob(&key);
        }
        for (key, value) in started {
            let sha256 = &key[STARTED.len()..];
            if Some(sha256) == except || !expired(value) {
                continue;
            }
            info!(%sha256, now_ms, "deleting an abandoned upload");
            pending.batch.delete_blob_prefix(&upload_prefix(sha256));
            pending.batch.delete_blob(&key);
        }
        Ok(())
    }

    /// Stores a piece of an upload; the last piece assembles and checks the component.
    /// `timestamp_ms` is the entry's leader timestamp.
    pub(super) fn apply_chunk(&mut self, chunk: pb::BlobChunk, timestamp_ms: u64) -> io::Result<pb::CommandResult> {
        let store = self.shared.store.clone();
        if !is_sha256_hex(&chunk.sha256) {
            return Ok(rejected("upload: sha256 must be 64 lowercase hex digits"));
        }
        // Not this node's `max_component_bytes`: a result must not depend on a node's config.
        // The receiving node checked its limit, and every voter checks its own before the
        // activation is proposed (the deploy's barrier).
        if chunk.total > MAX_UPLOAD_BYTES {
            return Ok(rejected(format!(
                "upload: {} bytes is over the largest upload ({MAX_UPLOAD_BYTES})",
                chunk.total
            )));
        }
        let end = chunk.offset.saturating_add(chunk.data.len() as u64);
        if end > chunk.total || chunk.data.is_empty() {
            return Ok(rejected("upload: chunk outside the component"));
        }
        if store.blob_get(&component_key(&chunk.sha256)).map_err(io_err)?.is_some() {
            return Ok(ack()); // already uploaded: an upload is idempotent
        }
        let prefix = upload_prefix(&chunk.sha256);
        let key = format!("{prefix}{:016x}", chunk.offset);
        let started = format!("{STARTED}{}", chunk.sha256);
        let first = store.blob_get(&started).map_err(io_err)?.is_none();
        let mut pending = lock(&self.pending);
        if end < chunk.total {
            if first {
                pending.batch.put_blob(&started, &timestamp_ms.to_le_bytes());
            }
            pending.batch.put_blob(&key, &chunk.data);
            return Ok(ack());
        }
        pending.batch.delete_blob(&started);
        // The last piece: assemble from the stored pieces, in offset order.
        let mut bytes = Vec::with_capacity(chunk.total as usize);
        let mut stored = store.blob_scan_prefix(&prefix).map_err(io_err)?;
        stored.push((key, chunk.data.to_vec()));
        for (key, piece) in &stored {
            let offset = u64::from_str_radix(&key[prefix.len()..], 16).map_err(io_err)?;
            if offset == bytes.len() as u64 {
                bytes.extend_from_slice(piece);
            }
            pending.batch.delete_blob(key);
        }
        if bytes.len() as u64 != chunk.total {
            return Ok(rejected(format!(
                "upload {}: pieces cover {} of {} bytes (upload again)",
                chunk.sha256,
                bytes.len(),
                chunk.total
            )));
        }
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != chunk.sha256 {
            return Ok(rejected(format!(
                "upload: content has sha256 {actual}, not {}",
                chunk.sha256
            )));
        }
        pending.batch.put_blob(&component_key(&chunk.sha256), &bytes);
        pending
            .batch
            .put_blob(&format!("{UNUSED}{}", chunk.sha256), &timestamp_ms.to_le_bytes());
        // Compile it now, in the background: the deploy waits for every voter before it
        // proposes the activation.
        self.shared.compiler.start(&chunk.sha256, bytes);
        Ok(ack())
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use wasmraft_runtime::{Runtime, RuntimeConfig};
    use wasmraft_store::Store;

    use super::*;
    use crate::pb::command;
    use crate::types::{Entry, LogId};

    fn machine(dir: &std::path::Path) -> Machine {
        let store = Store::open(dir.join("db")).unwrap();
        Machine::open(
            1,
            store,
            Runtime::new(RuntimeConfig::default()).unwrap(),
            Default::default(),
        )
        .unwrap()
    }

    /// Applies piece `[offset, offset + 4)` of a 12-byte upload `sha256` at `index`, stamped `ms`.
    fn piece(sm: &mut Machine, index: u64, ms: u64, sha256: &str, offset: u64) {
        let command = pb::Command {
            timestamp_ms: ms,
            kind: Some(command::Kind::BlobChunk(pb::BlobChunk {
                sha256: sha256.into(),
                offset,
                total: 12,
                data: vec![7; 4].into(),
            })),
        };
        let entry = Entry {
            log_id: LogId::new(1.into(), index),
            payload: EntryPayload::Normal(command),
        };
        sm.apply_entries(vec![(entry, None)], None).unwrap();
    }

    fn stored(sm: &Machine, sha256: &str) -> bool {
        sm.shared.store.blob_get(&component_key(sha256)).unwrap().is_some()
    }

    #[test]
    fn a_component_never_activated_is_deleted_at_the_first_control_entry_past_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let sha = hex::encode(Sha256::digest([7u8; 12]));
        for (i, offset) in [0, 4, 8].into_iter().enumerate() {
            piece(&mut sm, i as u64 + 1, 1_000, &sha, offset);
        }
        assert!(stored(&sm, &sha), "the upload completed");
        let other = "c".repeat(64);
        piece(&mut sm, 4, 1_000 + UPLOAD_TTL_MS, &other, 0);
        assert!(stored(&sm, &sha), "not past the deadline yet");
        piece(&mut sm, 5, 1_001 + UPLOAD_TTL_MS, &other, 4);
        assert!(!stored(&sm, &sha), "never activated: deleted");
    }

    fn pieces(sm: &Machine, sha256: &str) -> usize {
        sm.shared.store.blob_scan_prefix(&upload_prefix(sha256)).unwrap().len()
    }

    #[test]
    fn an_unfinished_upload_is_deleted_at_the_first_control_entry_past_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        piece(&mut sm, 1, 1_000, &a, 0);
        piece(&mut sm, 2, 1_000, &a, 4);
        assert_eq!(pieces(&sm, &a), 2);
        piece(&mut sm, 3, 1_000 + UPLOAD_TTL_MS, &b, 0);
        assert_eq!(pieces(&sm, &a), 2, "not past the deadline yet");
        piece(&mut sm, 4, 1_001 + UPLOAD_TTL_MS, &b, 4);
        assert_eq!(pieces(&sm, &a), 0, "abandoned: deleted");
        assert_eq!(pieces(&sm, &b), 2, "the upload in progress stays");
        // A late piece of the abandoned upload starts it over (it cannot complete on old pieces).
        piece(&mut sm, 5, 2_000 + UPLOAD_TTL_MS, &a, 8);
        assert_eq!(
            pieces(&sm, &a),
            0,
            "the last piece assembles: pieces are gone, the upload is refused"
        );
    }
}
