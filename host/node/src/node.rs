//! A node's assembly: its config, and [`Node::start`], which opens the store, the state machine
//! and Raft, and serves the gRPC services; [`Node::shutdown`] stops them. What a node does lives
//! in the modules it assembles (`cluster` for the services' operations, `api` for the handlers).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::Config;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::info;
use wasmraft_runtime::{Limits, Runtime, RuntimeConfig};
use wasmraft_store::Store;

use crate::cluster::NodeInner;
use crate::raft::{Faults, LogStore, Network, Raft, StateMachine};
use crate::security::{PluginTrust, TlsConfig, Tokens};
use crate::snapshot::{SnapshotConfig, SnapshotSettings};
use crate::types::NodeId;
use crate::util::blocking;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Where the client API listens (port 0: any free port).
    pub listen: SocketAddr,
    /// Where the peer API (Raft, and node-to-node calls) listens, so the two can be firewalled
    /// apart; none: peers share `listen` (only without TLS and tokens).
    pub peer_listen: Option<SocketAddr>,
    /// The address peers dial, which the membership records (`https://host:port`); default the
    /// peer listener's (`http://` without TLS).
    pub advertise: Option<String>,
    /// TLS on both listeners, mutual between peers; none: plaintext.
    pub tls: Option<TlsConfig>,
    /// The client tokens and their roles; none: every client may do everything.
    pub tokens: Option<Tokens>,
    /// Which plugin components this node runs (at deploy and at apply).
    pub plugin_trust: PluginTrust,
    pub data_dir: PathBuf,
    pub raft: RaftConfig,
    pub limits: Limits,
    /// Where compiled components are cached; default `data_dir/compiled`. Nodes on one machine
    /// may share one (entries are written atomically, named by sha256 and engine).
    pub compile_cache_dir: Option<PathBuf>,
    /// Where `/metrics` (Prometheus text) and the status page (`/`) are served over HTTP; none:
    /// not served.
    pub metrics_listen: Option<SocketAddr>,
    /// The voters (id -> address) an `Init` naming none uses; empty: this node alone.
    pub initial_members: BTreeMap<NodeId, String>,
    pub snapshot: SnapshotConfig,
    /// The address this node's connections to its peers come from (one of this host's); none:
    /// the OS picks. Firewall rules between nodes that share a host tell them apart by it.
    pub peer_source: Option<IpAddr>,
    /// Test-only: linearizable and lease reads skip the read barrier and answer from this node's
    /// state, so a test can show the linearizability checker catches a stale read. Never set in
    /// a config file.
    #[doc(hidden)]
    pub test_read_skips_read_index: bool,
}

/// Raft's timers. In a node's config file, `[raft]` sets any of them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
        }
    }
}

impl NodeConfig {
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            listen,
            peer_listen: None,
            advertise: None,
            tls: None,
            tokens: None,
            plugin_trust: PluginTrust::default(),
            data_dir: data_dir.into(),
            raft: RaftConfig::default(),
            limits: Limits::default(),
            compile_cache_dir: None,
            metrics_listen: None,
            initial_members: BTreeMap::new(),
            test_read_skips_read_index: false,
            snapshot: SnapshotConfig::default(),
            peer_source: None,
        }
    }
}

/// A running node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    pub inner: Arc<NodeInner>,
    /// The client API's address (`Node::addr`).
    client_addr: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    /// The HTTP server (`/metrics`, the status page): its address, and what stops it.
    metrics: Option<(SocketAddr, oneshot::Sender<()>)>,
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
        let settings = SnapshotSettings::new(config.data_dir.join("snapshots"), &config.snapshot);
        let trust = config.plugin_trust.clone();
        let state_machine = blocking(|| StateMachine::open(config.id, store.clone(), runtime, settings, trust))?;
        let shared = state_machine.shared();
        if config.metrics_listen.is_none() {
            // Nobody can read them: do not pay for them.
            shared.metrics.stop_recording();
        }
        let snapshots = state_machine.snapshots();
        if config.peer_listen.is_none() && (config.tls.is_some() || config.tokens.is_some()) {
            anyhow::bail!("with TLS or tokens, peers need a listener of their own: set peer_listen");
        }
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("client listener on {}: {e}", config.listen))?;
        let client_addr = format!("{scheme}://{}", listener.local_addr()?);
        let peer_listener = match config.peer_listen {
            Some(peer_listen) => Some(
                TcpListener::bind(peer_listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("peer listener on {peer_listen}: {e}"))?,
            ),
            None => None,
        };
        let peer_local = match &peer_listener {
            Some(listener) => listener.local_addr()?,
            None => listener.local_addr()?,
        };
        let addr = config
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{peer_local}"));
        let raft_config = Config {
            cluster_name: "wasmraft".into(),
            heartbeat_interval: config.raft.heartbeat_ms,
            election_timeout_min: config.raft.election_timeout_min_ms,
            election_timeout_max: config.raft.election_timeout_max_ms,
            enable_pre_vote: Some(true),
            snapshot_policy: match config.snapshot.logs_since_last {
                0 => openraft::SnapshotPolicy::Never,
                n => openraft::SnapshotPolicy::LogsSinceLast(n),
            },
            max_in_snapshot_log_to_keep: config.snapshot.keep_logs,
            max_payload_entries: crate::api::MAX_PAYLOAD_ENTRIES as u64,
            ..Default::default()
        }
        .validate()?;
        let faults = Faults::default();
        let network = Network::new(
            config.id,
            faults.clone(),
            config.peer_source,
            config.tls.clone(),
            snapshots.clone(),
            Duration::from_millis(config.raft.election_timeout_max_ms),
        );
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            network.clone(),
            LogStore::with_metrics(store, shared.metrics.clone()),
            state_machine,
        )
        .await?;
        let deadline = crate::cluster::peer_deadline(&raft);
        let read_rounds = crate::cluster::leader_rounds(raft.clone(), openraft::ReadPolicy::ReadIndex, deadline);
        let lease_rounds = crate::cluster::leader_rounds(raft.clone(), openraft::ReadPolicy::LeaseRead, deadline);
        let follower_rounds = |consistency| {
            crate::cluster::follower_rounds(raft.clone(), network.clone(), config.id, consistency, deadline)
        };
        let follower_read_rounds = follower_rounds(crate::pb::Consistency::Linearizable);
        let follower_lease_rounds = follower_rounds(crate::pb::Consistency::Lease);
        let proposer = crate::cluster::proposer::Proposer::new(raft.clone(), shared.metrics.clone());
        let inner = Arc::new(NodeInner {
            id: config.id,
            addr: addr.clone(),
            client_addr: client_addr.clone(),
            raft,
            shared,
            snapshots,
            network,
            faults,
            snapshot: config.snapshot.clone(),
            receiving: Arc::default(),
            initial_members: config.initial_members.clone(),
            test_read_skips_read_index: config.test_read_skips_read_index,
            read_rounds,
            lease_rounds,
            follower_read_rounds,
            follower_lease_rounds,
            forwarding: std::sync::Mutex::new(None),
            proposer,
        });
        let metrics = match config.metrics_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("metrics on {addr}: {e}"))?;
                let bound = listener.local_addr()?;
                let (stop, stopped) = oneshot::channel::<()>();
                crate::api::serve_http(inner.clone(), listener, async {
                    let _ = stopped.await;
                });
                Some((bound, stop))
            }
            None => None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = crate::api::Listeners {
            client: listener,
            peer: peer_listener,
            tls: config.tls.clone(),
            tokens: config.tokens.clone().map(Arc::new),
        };
        let server = crate::api::serve(inner.clone(), listeners, async {
            let _ = stopped.await;
        })?;
        info!(id = config.id, clients = %client_addr, peers = %addr, "node started");
        Ok(Node {
            inner,
            client_addr,
            stop: Some(stop),
            server: Some(server),
            metrics,
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Where clients connect.
    pub fn addr(&self) -> &str {
        &self.client_addr
    }

    /// Where peers connect: the address the membership records for this node.
    pub fn peer_addr(&self) -> &str {
        &self.inner.addr
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
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

    /// The last entry in this node's log as (term, index); (0, 0) when it is empty. Two nodes
    /// with the same last entry hold the same log.
    pub fn last_log_id(&self) -> (u64, u64) {
        let last = self.inner.raft.data_metrics().borrow_watched().last_log;
        last.map_or((0, 0), |id| (id.leader_id.term, id.index))
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
        if let Some((_, stop)) = self.metrics.take() {
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
