//! Reads: the barrier a query waits at before it reads this node's state, at the consistency it
//! asked for (`linearizable`, `lease`, `local`), on the leader or, through `Peer.ReadIndex`, on a
//! follower.
//!
//! Invariant: a linearizable read is answered only from a state that includes every write
//! acknowledged before the read arrived. The leader takes the read index (openraft's read log id:
//! its commit index, at least its own term's first entry) when the read arrives, then proves that
//! it still led *after* that: a quorum of voters, asked afresh (`Peer.ConfirmLeader`), answer
//! that their vote is still exactly the one this leader held when the read arrived. Votes only
//! grow, so no leader of a later term was elected before those answers, and none can have
//! acknowledged a write this leader lacks. The check is ours and stands alone: openraft's own
//! read queue answered a read on a deposed leader once (issue 18), and a fresh unary round cannot
//! be satisfied by a response to anything sent earlier.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{LinearizableReadError, RaftError};
use openraft::{LinearizerOption, ReadPolicy};
use tonic::Status;

use super::{LEADER_WAIT, NodeInner, no_leader};
use crate::pb::{self, peer_client::PeerClient};
use crate::types::{LogId, NodeId, TypeConfig, Vote};
use crate::wire::{log_id_to_pb, vote_to_pb};

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
        let vote = self.leading_vote()?;
        let (option, confirm) = match consistency {
            // The lease stands in for the round trip (bounded clock drift assumed).
            pb::Consistency::Lease => (LinearizerOption::from(ReadPolicy::LeaseRead), false),
            // Any recent quorum acknowledgement will do for openraft's part: the confirmation
            // round below is what proves leadership after the read arrived.
            _ => (LinearizerOption::new(None, false), true),
        };
        let linearizer = self.raft.get_read_linearizer(option).await.map_err(read_error)?;
        let read = *linearizer.read_log_id().log_id();
        if confirm {
            self.confirm_leadership(&vote).await?;
        }
        linearizer
            .await_ready(&self.raft)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(read)
    }

    /// This node's vote, if it is the established leader of its term.
    fn leading_vote(&self) -> Result<Vote, Status> {
        let vote = self.raft.metrics().borrow_watched().vote;
        if vote.committed && vote.leader_id.voted_for == self.id {
            Ok(vote)
        } else {
            Err(not_leading(&self.leader().map(|(id, _)| id)))
        }
    }

    /// Whether this node's vote is exactly `vote` (it follows, or is, that leader of that term).
    /// Read from Raft's own state, in order with the votes it grants (metrics may lag a grant).
    pub async fn follows(&self, vote: &Vote) -> bool {
        let mine = self.raft.with_raft_state(|state| *state.vote_ref()).await;
        mine.is_ok_and(|mine| mine.committed && mine == *vote)
    }

    /// Proves that this node still leads with `vote`: every voter configuration (two during a
    /// joint change) has a majority whose vote, asked now, is still `vote`. Fails as soon as that
    /// cannot happen, or after an election timeout.
    async fn confirm_leadership(&self, vote: &Vote) -> Result<(), Status> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership().clone();
        let configs: Vec<BTreeSet<NodeId>> = membership.get_joint_config().to_vec();
        let mut confirmed: BTreeSet<NodeId> = BTreeSet::from([self.id]);
        let quorate = |confirmed: &BTreeSet<NodeId>| {
            configs
                .iter()
                .all(|voters| voters.iter().filter(|v| confirmed.contains(v)).count() * 2 > voters.len())
        };
        if quorate(&confirmed) {
            return Ok(());
        }
        let peers: BTreeSet<NodeId> = configs.iter().flatten().copied().filter(|id| *id != self.id).collect();
        let request = pb::ConfirmLeaderRequest {
            vote: Some(vote_to_pb(vote)),
        };
        let mut asks: FuturesUnordered<_> = peers
            .into_iter()
            .filter_map(|peer| {
                let addr = membership.get_node(&peer)?.addr.clone();
                let channel = self.network.channel(peer, &addr).ok()?;
                Some(async move {
                    let follows = PeerClient::new(channel)
                        .confirm_leader(request)
                        .await
                        .is_ok_and(|resp| resp.into_inner().follows);
                    (peer, follows)
                })
            })
            .collect();
        let timeout = Duration::from_millis(self.raft.config().election_timeout_max);
        let round = async {
            while let Some((peer, follows)) = asks.next().await {
                if follows {
                    confirmed.insert(peer);
                    if quorate(&confirmed) {
                        return true;
                    }
                }
            }
            false
        };
        match tokio::time::timeout(timeout, round).await {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(not_leading(
                &self.leader().map(|(id, _)| id).filter(|id| *id != self.id),
            )),
        }
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
