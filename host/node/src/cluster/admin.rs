//! Admin operations: cluster init, the leader's admin API (membership and leader transfer are
//! forwarded there), status, and snapshots on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::RaftError;
use openraft::{BasicNode, ServerState};
use tonic::Status;
use tonic::transport::Channel;

use super::{LEADER_WAIT, NodeInner};
use crate::pb::{self, api_client::ApiClient};
use crate::snapshot;
use crate::types::{NodeId, TypeConfig};
use crate::wire::log_id_to_pb;

/// Why an admin request failed on the node it reached.
#[derive(Debug)]
pub enum AdminError {
    /// Leadership moved before the request took effect: try the new leader.
    Moved(String),
    /// A final answer.
    Failed(Status),
}

/// How long `wasmraft snapshot` waits for the build.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3600);

impl NodeInner {
    /// Runs an admin request where it must run, on the leader: `local` when this node leads,
    /// else `remote` with an API client to the leader. An election in progress is waited out,
    /// and a request that did not take effect because leadership moved under it (`AdminError::Moved`: openraft
    /// answered "forward to leader", or the leader we forwarded to no longer leads) is tried
    /// again on the new leader, for up to [`LEADER_WAIT`] in all; then it fails with the reason.
    pub async fn on_leader<T, L, LF, R, RF>(&self, local: L, remote: R) -> Result<T, Status>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<T, AdminError>>,
        R: Fn(ApiClient<Channel>) -> RF,
        RF: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (leader, addr) = self.leader_within(left).await?;
            let term = self.raft.metrics().borrow_watched().current_term;
            let outcome = if leader == self.id {
                local().await
            } else {
                let channel = self
                    .network
                    .channel(leader, &addr)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                remote(ApiClient::new(channel))
                    .await
                    .map_err(|status| match status.code() {
                        tonic::Code::Unavailable => AdminError::Moved(status.message().to_string()),
                        _ => AdminError::Failed(status),
                    })
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(AdminError::Failed(status)) => return Err(status),
                Err(AdminError::Moved(reason)) if Instant::now() < deadline => {
                    tracing::debug!(%reason, "leadership moved under an admin request; trying the new leader");
                    // Until a leader other than the one that refused, or one of a later term, is
                    // known (or time is up).
                    let _ = self
                        .raft
                        .wait(Some(deadline.saturating_duration_since(Instant::now())))
                        .metrics(
                            |m| m.current_leader.is_some_and(|l| l != leader || m.current_term > term),
                            "a new leader",
                        )
                        .await;
                }
                Err(AdminError::Moved(reason)) => {
                    return Err(Status::unavailable(format!(
                        "no leader took the request within {LEADER_WAIT:?}: {reason}"
                    )));
                }
            }
        }
    }

    /// Initializes a pristine cluster with `members` (id -> address); none: the configured peers
    /// and this node.
    pub async fn initialize(&self, mut members: BTreeMap<NodeId, String>) -> Result<(), Status> {
        if members.is_empty() {
            members = self.initial_members.clone();
        }
        let members: BTreeMap<NodeId, BasicNode> = if members.is_empty() {
            BTreeMap::from([(
                self.id,
                BasicNode {
                    addr: self.addr.clone(),
                },
            )])
        } else {
            members.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect()
        };
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(e)) => Err(Status::failed_precondition(e.to_string())),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    pub fn status(&self) -> pb::ClusterStatusResponse {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        let nodes = membership
            .nodes()
            .map(|(id, node)| pb::NodeStatus {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index),
            })
            .collect();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let (digest_index, mut state_digest) = self.shared.state_digest();
        // Test-only: report a digest that differs from the replicas' (tests of divergence
        // reporting arm it on one node).
        if std::env::var("WASMRAFT_FAILPOINT").is_ok_and(|armed| armed == "status-digest-perturbed") {
            state_digest = format!("{:0>64}", "bad");
        }
        pb::ClusterStatusResponse {
            id: self.id,
            state: state.into(),
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            committed_index: m.local_committed.map(|l| l.index),
            nodes,
            state_digest,
            digest_index,
            joint: membership.get_joint_config().len() > 1,
            snapshot: Some(self.snapshot_status()),
        }
    }

    fn snapshot_status(&self) -> pb::SnapshotStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let file_bytes = snapshot::current(&self.snapshots.settings.dir)
            .ok()
            .flatten()
            .map_or(0, |f| f.size);
        pb::SnapshotStatus {
            last_log_id: m.snapshot.as_ref().map(log_id_to_pb),
            file_bytes,
            purged_index: m.purged.map(|l| l.index),
            ..self.snapshots.stats.to_pb()
        }
    }

    /// Builds a snapshot of everything this node has applied (unless one covers it already),
    /// waits for it and for the log purge it allows, and describes it.
    pub async fn snapshot_now(&self) -> Result<pb::SnapshotResponse, Status> {
        let applied = self
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .ok_or_else(|| Status::failed_precondition("nothing applied yet: nothing to snapshot"))?;
        let covered = |m: &openraft::RaftMetrics<TypeConfig>| m.snapshot.is_some_and(|s| s.index >= applied.index);
        if !covered(&self.raft.metrics().borrow_watched()) {
            let stats = &self.snapshots.stats;
            let mut failures = stats.failures();
            let failed_before = *failures.borrow_and_update();
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            // Until openraft reports a snapshot covering `applied`, or the build fails.
            let mut metrics = self.raft.metrics();
            let built = async {
                loop {
                    if covered(&metrics.borrow_watched()) {
                        return Ok(());
                    }
                    if *failures.borrow_and_update() > failed_before {
                        return Err(Status::failed_precondition(format!(
                            "the snapshot build failed: {}",
                            stats.last_build_error()
                        )));
                    }
                    tokio::select! {
                        changed = metrics.changed() => {
                            changed.map_err(|_| Status::unavailable("the node is shutting down"))?;
                        }
                        _ = failures.changed() => {}
                    }
                }
            };
            tokio::time::timeout(SNAPSHOT_WAIT, built)
                .await
                .map_err(|_| Status::deadline_exceeded("the snapshot build did not finish in an hour"))??;
        }
        let snapshot = self.raft.metrics().borrow_watched().snapshot;
        // openraft purges after the build, keeping `keep_logs` entries (and whatever replication
        // to a follower still reads): give it a moment to land.
        if let Some(upto) = snapshot.and_then(|s| s.index.checked_sub(self.snapshot.keep_logs)) {
            let _ = self
                .raft
                .wait(Some(Duration::from_secs(2)))
                .metrics(|m| m.purged.is_some_and(|p| p.index >= upto), "the log purge")
                .await;
        }
        let status = self.snapshot_status();
        let file = snapshot::current(&self.snapshots.settings.dir)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::internal("the snapshot file is missing"))?;
        let build = self.snapshots.stats.last(snapshot::Phase::Build);
        Ok(pb::SnapshotResponse {
            last_log_id: status.last_log_id,
            path: file.path.display().to_string(),
            file_bytes: file.size,
            raw_bytes: build.raw_bytes,
            micros: build.micros,
            purged_index: status.purged_index,
        })
    }
}
