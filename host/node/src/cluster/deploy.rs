//! Deploy through the log: a validated component goes out as 1 MiB `BlobChunk` entries, then one
//! `Activate` entry; every replica switches versions at that entry's index.

use tokio::sync::mpsc;
use tonic::Status;

use super::NodeInner;
use crate::pb::{self, command, command_result};

/// Upload pieces per log entry.
pub const DEPLOY_CHUNK_BYTES: usize = 1 << 20;

/// A control entry's replicated result as the client's answer.
pub(crate) fn control_outcome(result: pb::CommandResult) -> Result<pb::CommandResult, Status> {
    match &result.kind {
        Some(command_result::Kind::Rejected(message)) => Err(Status::failed_precondition(message.clone())),
        _ => Ok(result),
    }
}

impl NodeInner {
    /// Proposes `bytes` (a component already validated here, of sha256 `sha256`) in pieces, then
    /// its activation as `start.name`, reporting progress on `tx` and ending with the activation
    /// index (or the error).
    pub async fn deploy(
        &self,
        start: pb::DeployStart,
        sha256: String,
        bytes: Vec<u8>,
        tx: mpsc::Sender<Result<pb::DeployProgress, Status>>,
    ) {
        let total = bytes.len() as u64;
        let progress = |committed: u64, activated: Option<u64>| pb::DeployProgress {
            committed_bytes: committed,
            total_bytes: total,
            activated_index: activated,
            sha256: sha256.clone(),
        };
        for (i, piece) in bytes.chunks(DEPLOY_CHUNK_BYTES).enumerate() {
            let offset = (i * DEPLOY_CHUNK_BYTES) as u64;
            let command = pb::Command {
                timestamp_ms: 0,
                kind: Some(command::Kind::BlobChunk(pb::BlobChunk {
                    sha256: sha256.clone(),
                    offset,
                    total,
                    data: piece.to_vec().into(),
                })),
            };
            let sent = match self.propose(command).await.and_then(|(_, r)| control_outcome(r)) {
                Ok(_) => tx.send(Ok(progress(offset + piece.len() as u64, None))).await,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            if sent.is_err() {
                return; // the client went away
            }
        }
        let activate = pb::Command {
            timestamp_ms: 0,
            kind: Some(command::Kind::Activate(pb::Activate {
                name: start.name.clone(),
                sha256: sha256.clone(),
                config: start.config.clone(),
            })),
        };
        let last = match self.propose(activate).await {
            Ok((index, result)) => control_outcome(result).map(|_| progress(total, Some(index))),
            Err(status) => Err(status),
        };
        let _ = tx.send(last).await;
    }
}
