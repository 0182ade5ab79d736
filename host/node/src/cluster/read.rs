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

use futures::FutureExt;
use futures::future::BoxFuture;
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{LinearizableReadError, RaftError};
use tonic::Status;

use super::{LEADER_WAIT, NodeInner, leader_of, no_leader};
use crate::pb::{self, peer_client::PeerClient};
use crate::raft::{Network, Raft};
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
            let (leader, _) = self.leader_within(left).await?;
            let term = self.raft.metrics().borrow_watched().current_term;
            if leader == self.id {
                // A leader that cannot confirm it leads fails the read at once: the client may
                // ask another node. It applied the read index by the time this returns.
                return self.read_index_here(consistency).await.map(|_| ());
            }
            // Reads here share their asks of the leader the way the leader's reads share rounds.
            let rounds = match consistency {
                pb::Consistency::Lease => &self.follower_lease_rounds,
                _ => &self.follower_read_rounds,
            };
            match rounds.join().await {
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

    /// On the leader: a read index for a read that arrived now, once it is safe to serve a read at
    /// `consistency` from a state that has applied it (this node has applied it when this returns).
    /// A leader that cannot reach a quorum gives up after [`NodeInner::peer_deadline`].
    async fn read_index_here(&self, consistency: pb::Consistency) -> Result<LogId, Status> {
        match consistency {
            // The lease stands in for the round trip (bounded clock drift assumed).
            pb::Consistency::Lease => self.lease_rounds.join().await,
            _ => self.read_rounds.join().await,
        }
    }
}

/// Waits until a read at `policy` that arrived now may be served, and answers its read log id
/// (applied on this node by then); a leader that cannot confirm within `deadline` fails it.
async fn confirm(raft: Raft, policy: ReadPolicy, deadline: Duration) -> Result<LogId, Status> {
    let confirmed = async {
        let linearizer = raft.get_read_linearizer(policy).await.map_err(read_error)?;
        let read = *linearizer.read_log_id().log_id();
        linearizer
            .await_ready(&raft)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(read)
    };
    tokio::time::timeout(deadline, confirmed)
        .await
        .unwrap_or_else(|_| Err(not_leading(&None)))
}

/// Asks the node this one takes for the leader for a read index, within `deadline`
/// (`UNAVAILABLE` past it: the leader may be cut off). One ask serves a round of reads
/// ([`Rounds`]): it is sent after every read of its round arrived.
async fn ask_leader(
    raft: Raft,
    network: Network,
    id: NodeId,
    consistency: pb::Consistency,
    deadline: Duration,
) -> Result<Option<pb::LogId>, Status> {
    let (leader, addr) = leader_of(&raft)
        .filter(|(leader, _)| *leader != id)
        .ok_or_else(no_leader)?;
    let channel = network
        .channel(leader, &addr)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut client = PeerClient::new(channel);
    let ask = client.read_index(pb::ReadIndexRequest {
        consistency: consistency as i32,
    });
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

/// Reads share rounds. openraft broadcasts a heartbeat for every ReadIndex read it is asked to
/// confirm, so under load the leader sent a heartbeat per read; a lease read costs a message to
/// its core each; a follower's read asked the leader for a read index in a call of its own. Here
/// a read that arrives while a round is in flight waits for the next one, and each round serves
/// every read that arrived before it started: its read index is taken (on the leader: its read
/// log id, confirmed as each read needs; on a follower: asked of the leader) after they all
/// arrived.
pub(crate) struct Rounds<T> {
    /// Makes one round.
    round: Box<dyn Fn() -> BoxFuture<'static, Result<T, Status>> + Send + Sync>,
    state: Mutex<RoundState<T>>,
}

/// A read waiting for its round's outcome.
type Waiter<T> = tokio::sync::oneshot::Sender<Result<T, Status>>;

struct RoundState<T> {
    /// The reads waiting for the next round.
    waiting: Vec<Waiter<T>>,
    /// Whether a task is running rounds.
    running: bool,
}

impl<T: Clone + Send + 'static> Rounds<T> {
    fn new(round: impl Fn() -> BoxFuture<'static, Result<T, Status>> + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Rounds {
            round: Box::new(round),
            state: Mutex::new(RoundState {
                waiting: Vec::new(),
                running: false,
            }),
        })
    }

    /// The outcome of a round that started after this call.
    async fn join(self: &Arc<Self>) -> Result<T, Status> {
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
            let outcome = (self.round)().await;
            for read in batch {
                let _ = read.send(outcome.clone());
            }
        }
    }
}

/// Rounds of reads on the leader at `policy` (ReadIndex or the lease).
pub(crate) fn leader_rounds(raft: Raft, policy: ReadPolicy, deadline: Duration) -> Arc<Rounds<LogId>> {
    Rounds::new(move || confirm(raft.clone(), policy.clone(), deadline).boxed())
}

/// Rounds of reads on a follower at `consistency`: each round asks the leader for a read index.
pub(crate) fn follower_rounds(
    raft: Raft,
    network: Network,
    id: NodeId,
    consistency: pb::Consistency,
    deadline: Duration,
) -> Arc<Rounds<Option<pb::LogId>>> {
    Rounds::new(move || ask_leader(raft.clone(), network.clone(), id, consistency, deadline).boxed())
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
