//! Writes: a command is proposed on the leader (forwarded there from any other node) and answered
//! with its log index and replicated result. The leader stamps each entry's time.
//!
//! Writes wait out elections: when no leader is known, or the node asked refuses *before* the
//! entry reaches its log (it does not lead, or it was just elected and has no quorum
//! acknowledgement yet), the write goes to the (new) leader, for up to [`LEADER_WAIT`]. A write
//! that may have reached a log is never sent again: its outcome is reported as unknown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::Either;
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use tonic::Status;

use super::forward::{self, ForwardLink};
use super::{LEADER_WAIT, NodeInner};
use crate::pb::{self, peer_client::PeerClient};
use crate::util::lock;

/// Marks a status whose command reached no log: the sender may send it again.
const NOT_PROPOSED: &str = "wasmraft-not-proposed";

/// How long a write that was refused before reaching a log waits for news before it is tried
/// again (metrics changing, e.g. a new leader or its first quorum acknowledgement, end it early).
const RETRY_WAIT: Duration = Duration::from_millis(50);

pub(super) fn not_proposed(message: impl Into<String>) -> Status {
    let mut status = Status::unavailable(message);
    status.metadata_mut().insert(NOT_PROPOSED, "1".parse().expect("ascii"));
    status
}

/// The longest a forwarded write waits for the leader while leadership does not move.
const FORWARD_CAP: Duration = Duration::from_secs(30);

/// A write that may or may not take effect: it may sit in a log that commits later, or be
/// dropped there. Sending it again may apply it twice.
fn unknown_outcome(why: String) -> Status {
    Status::deadline_exceeded(format!(
        "{why}; the write's outcome is unknown (it may still take effect): check before sending it again"
    ))
}

/// Whether `status` says its command reached no log.
pub(super) fn was_not_proposed(status: &Status) -> bool {
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

    /// Hands `command` to the leader `leader` at `addr`, on this node's forwarding stream to it
    /// (`forward.rs`). If leadership moves while the leader has it (the leader was cut off), the
    /// stream breaks under it, or the leader does not answer within [`FORWARD_CAP`], the write may
    /// sit in its log: the outcome is unknown.
    async fn forward(&self, leader: u64, addr: &str, command: pb::Command) -> Result<(u64, pb::CommandResult), Status> {
        let link = self.forward_link(leader, addr).await?;
        let term = self.raft.metrics().borrow_watched().current_term;
        let answered = match link {
            Some(link) => {
                let answered = link.send(command)?;
                Either::Left(async move {
                    match answered.await {
                        Ok(answer) => forward::outcome(answer),
                        Err(_) => Err(unknown_outcome(format!(
                            "the connection to the leader (node {leader}) broke while it had the write"
                        ))),
                    }
                })
            }
            None => Either::Right(self.forward_one(leader, addr, command)),
        };
        tokio::pin!(answered);
        let started = Instant::now();
        loop {
            tokio::select! {
                answer = &mut answered => return answer,
                _ = self.new_leader_since(leader, term, self.peer_deadline()) => {
                    let m = self.raft.metrics().borrow_watched().clone();
                    if m.current_leader.is_some_and(|l| l != leader) || m.current_term > term {
                        return Err(unknown_outcome(format!(
                            "leadership moved from node {leader} (term {term}) while it had the write"
                        )));
                    }
                    if started.elapsed() > FORWARD_CAP {
                        return Err(unknown_outcome(format!(
                            "the leader (node {leader}) did not answer within {FORWARD_CAP:?}"
                        )));
                    }
                }
            }
        }
    }

    /// `command` to `leader` in a `Forward` call of its own: for a leader that has no
    /// `ForwardStream` (an older version, during a rolling upgrade).
    async fn forward_one(
        &self,
        leader: u64,
        addr: &str,
        command: pb::Command,
    ) -> Result<(u64, pb::CommandResult), Status> {
        let channel = self
            .network
            .channel(leader, addr)
            .map_err(|e| not_proposed(e.to_string()))?;
        let mut client = PeerClient::new(channel).max_encoding_message_size(usize::MAX);
        let resp = client
            .forward(pb::ForwardRequest { command: Some(command) })
            .await
            .map_err(|status| match status.code() {
                // The connection broke under the request (the leader's own answers are never
                // `Unknown`): it may have logged the write.
                tonic::Code::Unknown => unknown_outcome(format!(
                    "the connection to the leader (node {leader}) broke while it had the write: {}",
                    status.message()
                )),
                _ => status,
            })?;
        let index = resp
            .metadata()
            .get("wasmraft-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((index, resp.into_inner()))
    }

    /// This node's forwarding stream to `leader` at `addr`, opened if there is none (or the one
    /// there ended); none if the leader has no such stream (an older version). A leader that
    /// cannot be reached never saw the write: not proposed.
    async fn forward_link(&self, leader: u64, addr: &str) -> Result<Option<Arc<ForwardLink>>, Status> {
        if let Some(link) = lock(&self.forwarding)
            .as_ref()
            .filter(|link| link.leader == leader && link.addr == addr && link.is_open())
        {
            return Ok(Some(link.clone()));
        }
        let mut channel = self
            .network
            .channel(leader, addr)
            .map_err(|e| not_proposed(e.to_string()))?;
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut channel, cx))
            .await
            .map_err(|e| not_proposed(format!("cannot reach the leader (node {leader}): {e}")))?;
        let client = PeerClient::new(channel)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(usize::MAX);
        let link = match ForwardLink::open(leader, addr, client).await {
            Ok(link) => Arc::new(link),
            Err(e) if e.code() == tonic::Code::Unimplemented => return Ok(None),
            Err(e) => {
                return Err(not_proposed(format!(
                    "cannot reach the leader (node {leader}): {}",
                    e.message()
                )));
            }
        };
        *lock(&self.forwarding) = Some(link.clone());
        Ok(Some(link))
    }

    /// Whether this node leads and a quorum acknowledged it within `within` (a node that is the
    /// only voter always has).
    fn quorum_acked_within(&self, within: Duration) -> bool {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        if membership.voter_ids().eq([self.id]) {
            return true;
        }
        m.state == openraft::ServerState::Leader
            && m.last_quorum_acked
                .as_ref()
                .is_some_and(|at| openraft::Instant::elapsed(&**at) < within)
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
        let mut pending = self.proposer.write(command);
        // A slow write is waited for while a quorum keeps acknowledging this leader; once none
        // has for a peer deadline, the leader is cut off and the write may never commit.
        let answer = loop {
            let deadline = self.peer_deadline();
            match tokio::time::timeout(deadline, &mut pending.answer).await {
                Ok(Ok(answer)) => break answer,
                Ok(Err(_)) => return Err(unknown_outcome("the node stopped".into())),
                Err(_) if !self.quorum_acked_within(deadline) => {
                    let why = format!("no quorum acknowledged this leader within {deadline:?} (cut off?)");
                    if self.proposer.withdraw(&pending) {
                        return Err(not_proposed(format!("{why}; the write was not proposed: retry")));
                    }
                    return Err(unknown_outcome(why));
                }
                Err(_) => {}
            }
        };
        let written = match answer {
            Ok(written) => written.map_err(RaftError::APIError),
            Err(fatal) => Err(RaftError::Fatal(fatal)),
        };
        match written {
            Ok(resp) => Ok((resp.log_id.index, resp.response)),
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
