//! The node as the services see it ([`NodeInner`]): who leads, and the operations that must
//! reach the leader. A write goes out through `write` (here, or forwarded to the leader), a read
//! waits at `read` for the consistency it asked for, a deploy goes through the log in `deploy`,
//! and membership, snapshots and status are in `admin`.

mod admin;
mod deploy;
pub(crate) mod forward;
mod overview;
pub(crate) mod proposer;
mod read;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tonic::Status;

pub use admin::{AdminError, check_member_addr, membership_error, process_cpu_micros};
pub(crate) use deploy::control_outcome;
pub use deploy::{DEPLOY_CHUNK_BYTES, PREPARE_TIMEOUT};
pub use overview::{Member, diverged};
pub(crate) use read::{follower_rounds, leader_rounds};

use crate::raft::{Faults, Network, Raft};
use crate::sm::Shared;
use crate::snapshot::{SnapshotConfig, Snapshots};
use crate::types::{LogId, NodeId};

/// How long a request waits for an election in progress before it fails with "no leader yet".
pub(crate) const LEADER_WAIT: Duration = Duration::from_secs(3);

/// The parts of a node the services share.
pub struct NodeInner {
    pub id: NodeId,
    /// Where peers reach this node (its address in the membership).
    pub addr: String,
    /// Where clients reach it.
    pub client_addr: String,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub snapshots: Arc<Snapshots>,
    pub network: Network,
    pub faults: Faults,
    pub snapshot: SnapshotConfig,
    /// Held while a snapshot is being received: one transfer at a time.
    pub(crate) receiving: Arc<tokio::sync::Mutex<()>>,
    /// The voters `cluster init` uses when it names none (from the node's config file).
    pub(crate) initial_members: BTreeMap<NodeId, String>,
    /// Test-only: reads skip the read barrier (see `NodeConfig`).
    pub(crate) test_read_skips_read_index: bool,
    /// Linearizable reads on this node, when it leads, share ReadIndex rounds.
    pub(crate) read_rounds: Arc<read::Rounds<LogId>>,
    /// Lease reads share lease checks the same way.
    pub(crate) lease_rounds: Arc<read::Rounds<LogId>>,
    /// Linearizable reads on this node, when it follows, share their asks of the leader...
    pub(crate) follower_read_rounds: Arc<read::Rounds<Option<crate::pb::LogId>>>,
    /// ...and so do lease reads.
    pub(crate) follower_lease_rounds: Arc<read::Rounds<Option<crate::pb::LogId>>>,
    /// Where this node forwards its clients' writes: its stream to the leader, once opened.
    pub(crate) forwarding: std::sync::Mutex<Option<Arc<forward::ForwardLink>>>,
    /// Hands this node's writes to Raft, in batches that grow with the load.
    pub(crate) proposer: Arc<proposer::Proposer>,
}

/// See [`NodeInner::peer_deadline`].
pub(crate) fn peer_deadline(raft: &Raft) -> Duration {
    Duration::from_millis(raft.config().election_timeout_max * 2).max(Duration::from_secs(1))
}

/// The leader `raft` knows, and its address.
pub(crate) fn leader_of(raft: &Raft) -> Option<(NodeId, String)> {
    // Borrowed, not cloned: a read asks this of every request.
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    let leader = metrics.current_leader?;
    let addr = metrics.membership_config.membership().get_node(&leader)?.addr.clone();
    Some((leader, addr))
}

pub(crate) fn no_leader() -> Status {
    Status::unavailable("no leader yet: the cluster is electing one (or not initialized: `wasmraft cluster init`)")
}

impl NodeInner {
    /// The leader, waiting up to `timeout` for one to be known (an election in progress).
    pub async fn leader_within(&self, timeout: Duration) -> Result<(NodeId, String), Status> {
        if let Some(leader) = self.leader() {
            return Ok(leader);
        }
        let _ = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
        self.leader().ok_or_else(no_leader)
    }

    /// How long a request to the leader (a forwarded read or write) or a leader's quorum round
    /// may take before the leader is taken to be cut off: two election timeouts, at least 1 s
    /// (by then the others have elected a new leader).
    pub(crate) fn peer_deadline(&self) -> Duration {
        peer_deadline(&self.raft)
    }

    /// Waits, up to `timeout`, until this node knows a leader other than `leader` or a term
    /// after `term`.
    pub(crate) async fn new_leader_since(&self, leader: NodeId, term: u64, timeout: Duration) {
        let _ = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != leader) || m.current_term > term,
                "a new leader",
            )
            .await;
    }

    /// The current leader's id and address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        leader_of(&self.raft)
    }
}
