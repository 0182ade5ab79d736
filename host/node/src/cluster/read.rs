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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{LinearizableReadError, RaftError};
use tonic::Status;

use super::{LEADER_WAIT, NodeInner, no_leader};
use crate::pb::{self, peer_client::PeerClient};
use crate::raft::Raft;
use crate::types::{LogId, NodeId, TypeConfig};
use crate::util::lock;
use crate::wire::log_id_to_pb;

/// How long a follower waits to apply up to a read index it got from the leader.
const APPLY_WAIT: Duration = Duration::from_secs(10);

impl NodeInner {
    /// Waits until this node may answer a read at `consistency`. On the leader, a read it cannot
    /// confirm within [`NodeInner::peer_deadline`] fails (`UNAVAILABLE`). On a follower, a leader
    /// that fails the read index or does not answer within that deadline is taken to be cut off:
    /// the read waits for the next leader and asks it (reads are safe to send again), for up to
    /// [`LEADER_WAIT`] plus two such deadlines in all.
    pub async fn read_barrier(&self, consistency: pb::Consistency) -> Result<(), Status> {
        if consistency == pb::Consistency::Local || self.test_read_skips_read_index {
            return Ok(());
        }
        let deadline = Instant::now() + LEADER_WAIT + 2 * self.peer_deadline();
        let read = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (leader, addr) = self.leader_within(left).await?;
            let term = self.raft.metrics().borrow_watched().current_term;
            if leader == self.id {
                // A leader that cannot confirm it leads fails the read at once: the client may
                // ask another node. It applied the read index by the time this returns.
                return self.read_index_here(consistency).await.map(|_| ());
            }
            match self.ask_read_index(leader, &addr, consistency).await {
                Err(status) if status.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    tracing::debug!(
                        leader,
                        "read barrier: {}; waiting for the next leader",
                        status.message()
                    );
                    self.new_leader_since(leader, term, deadline.saturating_duration_since(Instant::now()))
                        .await;
                }
                outcome => break outcome?,
            }
        };
        if let Some(read) = read {
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

    /// Asks the leader for a read index, within [`NodeInner::peer_deadline`] (`UNAVAILABLE`
    /// past it: the leader may be cut off).
    async fn ask_read_index(
        &self,
        leader: NodeId,
        addr: &str,
        consistency: pb::Consistency,
    ) -> Result<Option<pb::LogId>, Status> {
        let channel = self
            .network
            .channel(leader, addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut client = PeerClient::new(channel);
        let ask = client.read_index(pb::ReadIndexRequest {
            consistency: consistency as i32,
        });
        let deadline = self.peer_deadline();
        match tokio::time::timeout(deadline, ask).await {
            Ok(Ok(resp)) => Ok(resp.into_inner().read_log_id),
            // The connection failed or broke (the leader's own answers are never `Unknown`): a
            // read is safe to ask again, of the next leader.
            Ok(Err(status)) if status.code() == tonic::Code::Unknown => Err(Status::unavailable(format!(
                "cannot reach the leader (node {leader}): {}",
                status.message()
            ))),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::unavailable(format!(
                "the leader (node {leader}) did not answer a read index within {deadline:?}"
            ))),
        }
    }

    /// On the leader: a read index for a read that arrived now, once it is safe to serve a read at
    /// `consistency` from a state that has applied it (this node has applied it when this returns).
    /// A leader that cannot reach a quorum gives up after [`NodeInner::peer_deadline`].
    async fn read_index_here(&self, consistency: pb::Consistency) -> Result<LogId, Status> {
        match consistency {
            // The lease stands in for the round trip (bounded clock drift assumed).
            pb::Consistency::Lease => self.lease_rounds.read_index().await,
            _ => self.read_rounds.read_index().await,
        }
    }
}

/// Waits until a read at `policy` that arrived now may be served, and answers its read log id
/// (applied on this node by then); a leader that cannot confirm within `deadline` fails it.
async fn confirm(raft: &Raft, policy: ReadPolicy, deadline: Duration) -> Result<LogId, Status> {
    let confirmed = async {
        let linearizer = raft.get_read_linearizer(policy).await.map_err(read_error)?;
        let read = *linearizer.read_log_id().log_id();
        linearizer
            .await_ready(raft)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(read)
    };
    tokio::time::timeout(deadline, confirmed)
        .await
        .unwrap_or_else(|_| Err(not_leading(&None)))
}

/// Reads on the leader share rounds. openraft broadcasts a heartbeat for every ReadIndex read it
/// is asked to confirm, so under load the leader sent a heartbeat per read; a lease read costs a
/// message to its core each. Here a read that arrives while a round is in flight waits for the
/// next one, and each round serves every read that arrived before it started: its read log id is
/// taken after they all arrived, and it is confirmed (a quorum acknowledging a heartbeat sent
/// after that, or the lease) as each read needs.
pub(crate) struct ReadRounds {
    raft: Raft,
    policy: ReadPolicy,
    deadline: Duration,
    state: Mutex<RoundState>,
}

/// A read waiting for its round's outcome.
type Waiter = tokio::sync::oneshot::Sender<Result<LogId, Status>>;

#[derive(Default)]
struct RoundState {
    /// The reads waiting for the next round.
    waiting: Vec<Waiter>,
    /// Whether a task is running rounds.
    running: bool,
}

impl ReadRounds {
    pub(crate) fn new(raft: Raft, policy: ReadPolicy, deadline: Duration) -> Arc<ReadRounds> {
        Arc::new(ReadRounds {
            raft,
            policy,
            deadline,
            state: Mutex::default(),
        })
    }

    /// The read log id of a round that started after this call.
    async fn read_index(self: &Arc<Self>) -> Result<LogId, Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut state = lock(&self.state);
            state.waiting.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            tokio::spawn(self.clone().run());
        }
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("the read round was abandoned: retry the read")))
    }

    /// Runs rounds while reads wait, each for all the reads that came before it.
    async fn run(self: Arc<Self>) {
        loop {
            let batch = {
                let mut state = lock(&self.state);
                if state.waiting.is_empty() {
                    state.running = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let outcome = confirm(&self.raft, self.policy.clone(), self.deadline).await;
            for read in batch {
                let _ = read.send(outcome.clone());
            }
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
