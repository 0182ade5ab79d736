//! Writes: a command is proposed on the leader (forwarded there from any other node) and answered
//! with its log index and replicated result. The leader stamps each entry's time.
//!
//! Writes wait out elections: when no leader is known, or the node asked refuses *before* the
//! entry reaches its log (it does not lead, or it was just elected and has no quorum
//! acknowledgement yet), the write goes to the (new) leader, for up to [`LEADER_WAIT`]. A write
//! that may have reached a log is never sent again: its outcome is reported as unknown.

use std::time::{Duration, Instant};

use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use tonic::Status;

use super::{LEADER_WAIT, NodeInner};
use crate::pb::{self, peer_client::PeerClient};

/// Marks a status whose command reached no log: the sender may send it again.
const NOT_PROPOSED: &str = "wasmraft-not-proposed";

/// How long a write that was refused before reaching a log waits for news before it is tried
/// again (metrics changing, e.g. a new leader or its first quorum acknowledgement, end it early).
const RETRY_WAIT: Duration = Duration::from_millis(50);

fn not_proposed(message: impl Into<String>) -> Status {
    let mut status = Status::unavailable(message);
    status.metadata_mut().insert(NOT_PROPOSED, "1".parse().expect("ascii"));
    status
}

/// Whether `status` says its command reached no log.
fn was_not_proposed(status: &Status) -> bool {
    status.metadata().contains_key(NOT_PROPOSED)
}

impl NodeInner {
    /// Proposes a command through Raft: here if this node leads, else on the leader. Returns the
    /// entry's log index and its replicated result.
    pub async fn propose(&self, command: pb::Command) -> Result<(u64, pb::CommandResult), Status> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (leader, addr) = self.leader_within(left).await?;
            let outcome = if leader == self.id {
                self.propose_local(command.clone()).await
            } else {
                self.forward(leader, &addr, command.clone()).await
            };
            match outcome {
                Err(status) if was_not_proposed(&status) && Instant::now() < deadline => {
                    let mut metrics = self.raft.metrics();
                    let _ = tokio::time::timeout(RETRY_WAIT, metrics.changed()).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Hands `command` to the leader `leader` at `addr`.
    async fn forward(&self, leader: u64, addr: &str, command: pb::Command) -> Result<(u64, pb::CommandResult), Status> {
        let channel = self
            .network
            .channel(leader, addr)
            .map_err(|e| not_proposed(e.to_string()))?;
        let resp = PeerClient::new(channel)
            .max_encoding_message_size(usize::MAX)
            .forward(pb::ForwardRequest { command: Some(command) })
            .await?;
        let index = resp
            .metadata()
            .get("wasmraft-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((index, resp.into_inner()))
    }

    /// Proposes on this node, which must lead. The leader stamps the entry's time.
    pub async fn propose_local(&self, mut command: pb::Command) -> Result<(u64, pb::CommandResult), Status> {
        if !self.raft.is_leader() {
            return Err(not_proposed("not the leader (leadership moved); retry"));
        }
        if let Some(pb::command::Kind::Call(call)) = &command.kind
            && self.shared.plugin(&call.plugin).is_none()
        {
            // Fail fast, without a log entry. A new leader may not have applied everything
            // committed before its term yet: catch up to a read index first, then decide.
            let _ = self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await;
            if self.shared.plugin(&call.plugin).is_none() {
                return Err(Status::not_found(format!("unknown plugin {:?}", call.plugin)));
            }
        }
        command.timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        match self.raft.client_write(command).await {
            Ok(resp) => Ok((resp.log_id.index, resp.data)),
            // Refused before the log: no leadership, or no quorum acknowledgement yet.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(not_proposed("leadership changed; retry"))
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => Err(Status::aborted(
                "the entry was discarded by a leader change: its outcome is unknown; retry if idempotent",
            )),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}
