//! Reads: the barrier a query waits at before it reads this node's state, at the consistency it
//! asked for (`linearizable`, `lease`, `local`), on the leader or, through `Peer.ReadIndex`, on a
//! follower.
//!
//! Invariant: a linearizable read is answered only from a state that includes every write
//! acknowledged before the read arrived. The leader takes openraft's read log id (its commit
//! index, at least its own term's first entry) when the read arrives, and openraft answers once a
//! quorum acknowledged a heartbeat or append sent after that: votes only grow, so no later leader
//! existed by then. That timing rests on each acknowledgement being credited to a request the
//! follower actually saw, which `raft/ack_gate.rs` guarantees on every append stream (issue 18:
//! without it, a reply held by a partition was credited to a request sent after the heal).
use std::time::Duration;

use openraft::ReadPolicy;
use openraft::errors::{LinearizableReadError, RaftError};
use tonic::Status;

use super::{LEADER_WAIT, NodeInner, no_leader};
use crate::pb::{self, peer_client::PeerClient};
use crate::types::{LogId, NodeId, TypeConfig};
use crate::wire::log_id_to_pb;

/// How long a follower waits to apply up to a read index it got from the leader.
const APPLY_WAIT: Duration = Duration::from_secs(10);

impl NodeInner {
    /// Waits until this node may answer a read at `consistency`.
    pub async fn read_barrier(&self, consistency: pb::Consistency) -> Result<(), Status> {
        if consistency == pb::Consistency::Local {
            return Ok(());
        }
        let (leader, addr) = self.leader_within(LEADER_WAIT).await?;
        if leader == self.id {
            self.read_index_here(consistency).await?;
            return Ok(());
        }
        let channel = self
            .network
            .channel(leader, &addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let resp = PeerClient::new(channel)
            .read_index(pb::ReadIndexRequest {
                consistency: consistency as i32,
            })
            .await?
            .into_inner();
        if let Some(read) = resp.read_log_id {
            self.raft
                .wait(Some(APPLY_WAIT))
                .applied_index_at_least(Some(read.index), "read index")
                .await
                .map_err(|e| Status::deadline_exceeded(format!("waiting to apply the read index: {e}")))?;
        }
        Ok(())
    }

    /// The read log id for a follower's read (this node must lead).
    pub async fn read_index(&self, consistency: pb::Consistency) -> Result<Option<pb::LogId>, Status> {
        let read = self.read_index_here(consistency).await?;
        Ok(Some(log_id_to_pb(&read)))
    }

    /// On the leader: a read index for a read that arrived now, once it is safe to serve a read at
    /// `consistency` from a state that has applied it (this node has applied it when this returns).
    async fn read_index_here(&self, consistency: pb::Consistency) -> Result<LogId, Status> {
        let policy = match consistency {
            // The lease stands in for the round trip (bounded clock drift assumed).
            pb::Consistency::Lease => ReadPolicy::LeaseRead,
            _ => ReadPolicy::ReadIndex,
        };
        let linearizer = self.raft.get_read_linearizer(policy).await.map_err(read_error)?;
        let read = *linearizer.read_log_id().log_id();
        linearizer
            .await_ready(&self.raft)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(read)
    }
}

/// A read this node cannot answer because it does not (or no longer) lead: retryable.
fn not_leading(leader: &Option<NodeId>) -> Status {
    match leader {
        Some(leader) => Status::unavailable(format!(
            "this node no longer leads (node {leader} does): retry the read"
        )),
        None => Status::unavailable(
            "this node could not confirm it still leads (a partition or an election): retry the read",
        ),
    }
}

fn read_error(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)) => match forward.leader_id {
            Some(leader) => not_leading(&Some(leader)),
            None => no_leader(),
        },
        e => Status::unavailable(e.to_string()),
    }
}
