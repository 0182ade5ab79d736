//! A node: its store, state machine, Raft and gRPC server, and the operations the services call
//! (propose with forwarding to the leader, reads at each consistency level, membership).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{BasicNode, Config, ReadPolicy, ServerState};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Status;
use tracing::info;
use wasmraft_runtime::{Limits, Runtime, RuntimeConfig};
use wasmraft_store::Store;

use crate::log_store::LogStore;
use crate::network::{Faults, Network};
use crate::pb::{self, api_client::ApiClient, peer_client::PeerClient};
use crate::service::{ApiService, PeerService};
use crate::snapshot::SnapshotSettings;
use crate::state_machine::{Shared, StateMachine};
use crate::types::{NodeId, TypeConfig};

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// How long a request waits for an election in progress before it fails with "no leader yet".
const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long `wasmraft snapshot` waits for the build.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3600);

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Where the gRPC server listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The address peers and clients use (`http://host:port`); default `http://{listen}`.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub limits: Limits,
    /// Where compiled components are cached; default `data_dir/compiled`. Nodes on one machine
    /// may share one (entries are written atomically, named by sha256 and engine).
    pub compile_cache_dir: Option<PathBuf>,
    /// The voters (id -> address) an `Init` naming none uses; empty: this node alone.
    pub initial_members: BTreeMap<NodeId, String>,
    pub snapshot: SnapshotConfig,
}

/// When a node snapshots, what it keeps, and how it sends snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Build a snapshot once this many entries were applied since the last one; 0: only on
    /// demand (`wasmraft snapshot`).
    pub logs_since_last: u64,
    /// Log entries kept below a snapshot for followers that are a little behind (they get
    /// entries, not the snapshot).
    pub keep_logs: u64,
    /// Snapshot files kept (the newest).
    pub keep_files: usize,
    /// Bytes per message of a snapshot transfer.
    pub chunk_bytes: usize,
    /// Cap on the bytes per second this node sends a snapshot at; 0: none.
    pub max_send_bytes_per_sec: u64,
    pub zstd_level: i32,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            logs_since_last: 10_000,
            keep_logs: 1_000,
            keep_files: 2,
            chunk_bytes: 1 << 20,
            max_send_bytes_per_sec: 0,
            zstd_level: 1,
        }
    }
}

impl NodeConfig {
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            listen,
            advertise: None,
            data_dir: data_dir.into(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            limits: Limits::default(),
            compile_cache_dir: None,
            initial_members: BTreeMap::new(),
            snapshot: SnapshotConfig::default(),
        }
    }
}

/// The parts of a node the services share.
pub struct NodeInner {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub network: Network,
    pub faults: Faults,
    pub snapshot: SnapshotConfig,
    /// Held while a snapshot is being received: one transfer at a time.
    pub(crate) receiving: Arc<tokio::sync::Mutex<()>>,
    /// The voters `cluster init` uses when it names none (from the node's config file).
    initial_members: BTreeMap<NodeId, String>,
}

/// A running node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    pub inner: Arc<NodeInner>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

fn no_leader() -> Status {
    Status::unavailable("no leader yet: the cluster is electing one (or not initialized: `wasmraft cluster init`)")
}

impl Node {
    /// Opens the node's data, starts Raft and serves gRPC on `config.listen`.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Store::open(config.data_dir.join("db"))?;
        let runtime = Runtime::new(RuntimeConfig {
            limits: config.limits.clone(),
            cache_dir: Some(
                config
                    .compile_cache_dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("compiled")),
            ),
        })?;
        let settings = SnapshotSettings {
            dir: config.data_dir.join("snapshots"),
            keep: config.snapshot.keep_files.max(1),
            zstd_level: config.snapshot.zstd_level,
        };
        let state_machine = crate::state_machine::blocking(|| StateMachine::open(store.clone(), runtime, settings))?;
        let shared = state_machine.shared();
        let listener = TcpListener::bind(config.listen).await?;
        let local = listener.local_addr()?;
        let addr = config.advertise.clone().unwrap_or_else(|| format!("http://{local}"));
        let raft_config = Config {
            cluster_name: "wasmraft".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            enable_pre_vote: Some(true),
            snapshot_policy: match config.snapshot.logs_since_last {
                0 => openraft::SnapshotPolicy::Never,
                n => openraft::SnapshotPolicy::LogsSinceLast(n),
            },
            max_in_snapshot_log_to_keep: config.snapshot.keep_logs,
            max_payload_entries: 1024,
            ..Default::default()
        }
        .validate()?;
        let faults = Faults::default();
        let network = Network::new(faults.clone(), config.snapshot.clone(), shared.clone());
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            network.clone(),
            LogStore::new(store),
            state_machine,
        )
        .await?;
        let inner = Arc::new(NodeInner {
            id: config.id,
            addr: addr.clone(),
            raft,
            shared,
            network,
            faults,
            snapshot: config.snapshot.clone(),
            receiving: Arc::default(),
            initial_members: config.initial_members.clone(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        // Our own listener (to learn the port before serving), so the builder's TCP_NODELAY does
        // not reach it: set it on each connection, or small replies wait out delayed ACKs (40 ms).
        let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
            if let Ok(conn) = &conn {
                let _ = conn.set_nodelay(true);
            }
            conn
        });
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                pb::peer_server::PeerServer::new(PeerService(inner.clone()))
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                pb::api_server::ApiServer::new(ApiService(inner.clone()))
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            )
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        let server = tokio::spawn(server);
        info!(id = config.id, %addr, "node started");
        Ok(Node {
            inner,
            stop: Some(stop),
            server: Some(server),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The leader this node knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow_watched().current_leader
    }

    pub fn current_term(&self) -> u64 {
        self.inner.raft.metrics().borrow_watched().current_term
    }

    /// Commits an empty entry (this node must lead): proves it can reach a quorum.
    pub async fn commit_blank(&self) -> Result<u64, String> {
        self.inner
            .raft
            .write_blank()
            .await
            .map(|r| r.log_id.index)
            .map_err(|e| e.to_string())
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Stops serving and stops Raft.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
        if let Some(mut server) = self.server.take() {
            // Graceful shutdown waits for open streams, and peers keep theirs open (replication):
            // give them a moment, then close the rest.
            match tokio::time::timeout(Duration::from_secs(1), &mut server).await {
                Ok(result) => result??,
                Err(_) => server.abort(),
            }
        }
        Ok(())
    }
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

    /// The current leader's id and address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader?;
        let addr = metrics.membership_config.membership().get_node(&leader)?.addr.clone();
        Some((leader, addr))
    }

    /// Proposes a command through Raft: here if this node leads, else on the leader. Returns the
    /// entry's log index and its replicated result.
    pub async fn propose(&self, command: pb::Command) -> Result<(u64, pb::CommandResult), Status> {
        let (leader, addr) = self.leader_within(LEADER_WAIT).await?;
        if leader == self.id {
            return self.propose_local(command).await;
        }
        let channel = self
            .network
            .channel(&addr)
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

    /// Waits until this node may answer a read at `consistency`.
    pub async fn read_barrier(&self, consistency: pb::Consistency) -> Result<(), Status> {
        let policy = match consistency {
            pb::Consistency::Local => return Ok(()),
            pb::Consistency::Linearizable => ReadPolicy::ReadIndex,
            pb::Consistency::Lease => ReadPolicy::LeaseRead,
        };
        let (leader, addr) = self.leader_within(LEADER_WAIT).await?;
        if leader == self.id {
            return match self.raft.ensure_linearizable(policy).await {
                Ok(_) => Ok(()),
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => Err(no_leader()),
                Err(e) => Err(Status::unavailable(e.to_string())),
            };
        }
        let channel = self
            .network
            .channel(&addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let resp = PeerClient::new(channel)
            .read_index(pb::ReadIndexRequest {
                consistency: consistency as i32,
            })
            .await?
            .into_inner();
        if let Some(read) = resp.read_log_id {
            self.raft
                .wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(Some(read.index), "read index")
                .await
                .map_err(|e| Status::deadline_exceeded(format!("waiting to apply the read index: {e}")))?;
        }
        Ok(())
    }

    /// The read log id for a follower's read (this node must lead).
    pub async fn read_index(&self, consistency: pb::Consistency) -> Result<Option<pb::LogId>, Status> {
        let policy = match consistency {
            pb::Consistency::Lease => ReadPolicy::LeaseRead,
            _ => ReadPolicy::ReadIndex,
        };
        match self.raft.ensure_linearizable(policy).await {
            Ok(read) => Ok(Some(crate::types::log_id_to_pb(read.log_id()))),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => Err(no_leader()),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    /// An API client to the leader, to forward an admin request it must serve.
    pub async fn leader_api(&self) -> Result<ApiClient<tonic::transport::Channel>, Status> {
        let (_, addr) = self.leader_within(LEADER_WAIT).await?;
        let channel = self
            .network
            .channel(&addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(ApiClient::new(channel))
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
        let (digest_index, state_digest) = self.shared.state_digest();
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
        let file_bytes = crate::snapshot::current(&self.shared.snapshot_settings.dir)
            .ok()
            .flatten()
            .map_or(0, |f| f.size);
        pb::SnapshotStatus {
            last_log_id: m.snapshot.as_ref().map(crate::types::log_id_to_pb),
            file_bytes,
            purged_index: m.purged.map(|l| l.index),
            ..self.shared.snapshot_stats.to_pb()
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
            let stats = &self.shared.snapshot_stats;
            let failures = stats.build_failed.load(std::sync::atomic::Ordering::Relaxed);
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            let deadline = tokio::time::Instant::now() + SNAPSHOT_WAIT;
            while !covered(&self.raft.metrics().borrow_watched()) {
                if stats.build_failed.load(std::sync::atomic::Ordering::Relaxed) > failures {
                    return Err(Status::failed_precondition(format!(
                        "the snapshot build failed: {}",
                        stats.last_build_error()
                    )));
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(Status::deadline_exceeded(
                        "the snapshot build did not finish in an hour",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
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
        let file = crate::snapshot::current(&self.shared.snapshot_settings.dir)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::internal("the snapshot file is missing"))?;
        let build = self.shared.snapshot_stats.last(crate::snapshot::Phase::Build);
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
