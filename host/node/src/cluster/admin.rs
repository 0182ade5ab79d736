//! Admin operations: cluster init, the leader's admin API (membership and leader transfer are
//! forwarded there), status, and snapshots on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
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
        if crate::util::failpoint_armed("status-digest-perturbed") {
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
            usage: Some(self.usage()),
            client_addr: self.client_addr.clone(),
        }
    }

    /// This process's CPU time and memory, and the log's fsyncs.
    fn usage(&self) -> pb::NodeUsage {
        // The second field of /proc/self/statm: resident pages.
        let rss_pages: u64 = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
        let (log_fsyncs, log_fsync_appends, log_fsync_entries) = self.shared.metrics.fsync_counts();
        let (apply_calls, apply_entries) = self.shared.metrics.apply_counts();
        let (peer_appends, peer_append_entries) = self.network.traffic().counts();
        let (write_batches, write_batch_writes) = self.shared.metrics.write_counts();
        pb::NodeUsage {
            pid: std::process::id(),
            cpu_micros: process_cpu_micros(),
            rss_bytes: rss_pages * page,
            log_fsyncs,
            log_fsync_appends,
            log_fsync_entries,
            apply_calls,
            apply_entries,
            peer_appends,
            peer_append_entries,
            write_batches,
            write_batch_writes,
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

/// How long the leader waits for a would-be learner to say who it is.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks a member address: `http://HOST:PORT` (or https), nothing after the port.
pub fn check_member_addr(addr: &str) -> Result<(), Status> {
    let bad = |why: &str| {
        Status::invalid_argument(format!(
            "address {addr:?} {why}: write http://HOST:PORT, e.g. http://127.0.0.1:7004"
        ))
    };
    let uri: http::Uri = addr.parse().map_err(|e| bad(&format!("does not parse ({e})")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("has no http:// or https:// scheme"));
    }
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.host().is_empty() {
        return Err(bad("has no host"));
    }
    if authority.port_u16().is_none() {
        return Err(bad("has no port"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("has a path"));
    }
    Ok(())
}

impl NodeInner {
    /// The membership this node knows (the leader's is the latest).
    fn membership(&self) -> openraft::Membership<NodeId, BasicNode> {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .clone()
    }

    /// On the leader, before adding `id` at `addr` as a learner: `id` is not a voter, not a
    /// learner at another address, and the node that answers at `addr` says it is `id`.
    pub async fn check_new_learner(&self, id: NodeId, addr: &str) -> Result<(), AdminError> {
        let membership = self.membership();
        if membership.voter_ids().any(|v| v == id) {
            return Err(AdminError::Failed(Status::already_exists(format!(
                "node {id} is already a voter"
            ))));
        }
        if let Some(node) = membership.get_node(&id)
            && node.addr != addr
        {
            return Err(AdminError::Failed(Status::already_exists(format!(
                "node {id} is already a learner at {}: remove-learner it first",
                node.addr
            ))));
        }
        let probe = async {
            let channel = self.network.channel(id, addr).map_err(|e| e.to_string())?;
            let status = ApiClient::new(channel)
                .cluster_status(pb::ClusterStatusRequest {})
                .await
                .map_err(|e| e.message().to_string())?;
            Ok::<_, String>(status.into_inner().id)
        };
        let answered = tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
        match answered {
            Ok(answered) if answered == id => Ok(()),
            Ok(other) => Err(AdminError::Failed(Status::failed_precondition(format!(
                "the node at {addr} is node {other}, not node {id}"
            )))),
            Err(e) => Err(AdminError::Failed(Status::unavailable(format!(
                "no wasmraft node answers at {addr} ({e}); start it first"
            )))),
        }
    }

    /// On the leader, before a leader transfer to `to`: `to` is a voter.
    pub fn check_transfer_target(&self, to: NodeId) -> Result<(), AdminError> {
        let membership = self.membership();
        if membership.voter_ids().any(|v| v == to) {
            return Ok(());
        }
        let voters: Vec<String> = membership.voter_ids().map(|v| v.to_string()).collect();
        Err(AdminError::Failed(Status::invalid_argument(format!(
            "node {to} is not a voter (voters: {})",
            voters.join(", ")
        ))))
    }

    /// On the leader: removes the learner `id` from the membership; returns the log index.
    pub async fn remove_learner(&self, id: NodeId) -> Result<u64, AdminError> {
        let membership = self.membership();
        if membership.voter_ids().any(|v| v == id) {
            return Err(AdminError::Failed(Status::failed_precondition(format!(
                "node {id} is a voter: change-membership without it first (it stays a learner), then remove it"
            ))));
        }
        if membership.get_node(&id).is_none() {
            return Err(AdminError::Failed(Status::not_found(format!(
                "node {id} is not a member"
            ))));
        }
        let change = openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]));
        let resp = self.raft.change_membership(change, false).await;
        Ok(resp.map_err(membership_error)?.log_id.index)
    }
}

/// A membership change's error: "forward to leader" means leadership moved before it took effect.
pub fn membership_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> AdminError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => AdminError::Moved(forward.to_string()),
        e => AdminError::Failed(Status::failed_precondition(e.to_string())),
    }
}

/// This process's user and system CPU time, in microseconds.
pub fn process_cpu_micros() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given when it returns 0; it is zeroed anyway.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_addresses_need_a_scheme_a_host_and_a_port_and_nothing_else() {
        for good in [
            "http://127.0.0.1:7004",
            "https://node-4.example:443",
            "http://[::1]:7004/",
        ] {
            assert!(check_member_addr(good).is_ok(), "{good}");
        }
        for bad in [
            "bogus",
            "http://[::1",
            "127.0.0.1:7004",
            "http://127.0.0.1",
            "ftp://h:1",
            "http://h:1/x",
            "",
        ] {
            let e = check_member_addr(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().contains("http://HOST:PORT"), "{bad}: {}", e.message());
        }
    }
}
