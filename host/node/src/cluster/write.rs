//! Writes: a command is proposed on the leader (forwarded there from any other node) and answered
//! with its log index and replicated result. The leader stamps each entry's time.

use openraft::ReadPolicy;
use openraft::errors::{ClientWriteError, RaftError};
use tonic::Status;

use super::{LEADER_WAIT, NodeInner};
use crate::pb::{self, peer_client::PeerClient};

impl NodeInner {
    /// Proposes a command through Raft: here if this node leads, else on the leader. Returns the
    /// entry's log index and its replicated result.
    pub async fn propose(&self, command: pb::Command) -> Result<(u64, pb::CommandResult), Status> {
        let (leader, addr) = self.leader_within(LEADER_WAIT).await?;
        if leader == self.id {
            return self.propose_local(command).await;
        }
        let channel = self
            .network
            .channel(leader, &addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
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
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(Status::unavailable("leadership changed; retry"))
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => Err(Status::aborted(
                "the entry was discarded by a leader change: its outcome is unknown; retry if idempotent",
            )),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}
