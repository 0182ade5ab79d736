//! Uploads: a component travels through the log in pieces (`BlobChunk` entries), stored under
//! `upload/<sha256>/`; the last piece assembles them, checks the sha256, and stores the component
//! content-addressed. An upload is idempotent.

use std::io;

use sha2::{Digest, Sha256};

use super::registry::component_key;
use super::{Machine, ack, rejected};
use crate::pb;
use crate::util::{io_err, lock};

/// The largest component an upload may carry, whatever a node's limits say (those are checked
/// off the apply path).
const MAX_UPLOAD_BYTES: u64 = 1 << 30;

/// Where pieces of uploads in progress live in the blobs family.
pub(crate) const UPLOADS: &str = "upload/";

fn upload_prefix(sha256: &str) -> String {
    format!("{UPLOADS}{sha256}/")
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Machine {
    /// Stores a piece of an upload; the last piece assembles and checks the component.
    pub(super) fn apply_chunk(&mut self, chunk: pb::BlobChunk) -> io::Result<pb::CommandResult> {
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
        let mut pending = lock(&self.pending);
        if end < chunk.total {
            pending.batch.put_blob(&key, &chunk.data);
            return Ok(ack());
        }
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
        // Compile it now, in the background: the deploy waits for every voter before it
        // proposes the activation.
        self.shared.compiler.start(&chunk.sha256, bytes);
        Ok(ack())
    }
}
