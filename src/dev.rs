//! `wasmraft dev` (a local cluster in one process, with the kv plugin) and `wasmraft node` (one
//! node from a config file).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use wasmraft_node::pb;
use wasmraft_node::{Node, NodeConfig, RaftConfig, SnapshotConfig};
use wasmraft_runtime::Limits;

use crate::client;

/// Waits until `check` gives a value (polling), or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct DevOptions {
    pub nodes: u64,
    pub data_dir: Option<PathBuf>,
    pub base_port: u16,
    pub plugin: Option<PathBuf>,
}

pub async fn dev(opts: DevOptions) -> anyhow::Result<ExitCode> {
    if opts.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    let (data_dir, fresh) = match &opts.data_dir {
        Some(dir) => (dir.clone(), !dir.join("node-1").exists()),
        None => {
            let dir = std::env::temp_dir().join(format!("wasmraft-dev-{}", opts.base_port));
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
            }
            (dir, true)
        }
    };
    let mut nodes = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=opts.nodes {
        let port = opts.base_port as u64 + id - 1;
        let port = u16::try_from(port).context("--base-port + --nodes is past port 65535")?;
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let mut config = NodeConfig::new(id, listen, data_dir.join(format!("node-{id}")));
        config.compile_cache_dir = Some(data_dir.join("compiled"));
        let metrics_port = u16::try_from(port as u64 + 100).context("--base-port + 100 is past port 65535")?;
        config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], metrics_port)));
        let node = Node::start(config)
            .await
            .with_context(|| format!("starting node {id} on {listen} (is the port in use? try --base-port)"))?;
        members.insert(id, node.addr().to_string());
        nodes.push(node);
    }
    let first = nodes[0].addr().to_string();
    if fresh {
        nodes[0]
            .inner
            .initialize(members.clone())
            .await
            .map_err(|s| anyhow::anyhow!("initializing the cluster: {}", s.message()))?;
    }
    wait_for("a leader", Duration::from_secs(20), || async {
        nodes[0].inner.leader().map(|_| ())
    })
    .await?;

    let plugin = opts
        .plugin
        .clone()
        .unwrap_or_else(|| PathBuf::from(wasmraft::plugins::KV));
    let bytes = std::fs::read(&plugin)
        .with_context(|| format!("reading the kv plugin {} (build it: cargo build)", plugin.display()))?;
    let mut api = client::connect(&first).await?;
    let active = api.list_plugins(pb::ListPluginsRequest {}).await?.into_inner().plugins;
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if !active.iter().any(|p| p.name == "kv" && p.sha256 == sha256) {
        let index = crate::deploy::deploy_bytes(&mut api, "kv", bytes, Vec::new(), "", false, |_| {})
            .await
            .map_err(|s| anyhow::anyhow!("deploying kv: {}", s.message()))?
            .index;
        eprintln!(
            "deployed {} as `kv` (sha256 {sha256}, log index {index})",
            plugin.display()
        );
    }

    println!("wasmraft dev: {} nodes, data in {}", opts.nodes, data_dir.display());
    for node in &nodes {
        let metrics = node.metrics_addr().map_or(String::new(), |a| {
            format!("  status http://{a}/  metrics http://{a}/metrics")
        });
        println!("  node {}  {}{metrics}", node.id(), node.addr());
    }
    println!();
    println!("Try (in another terminal):");
    let ep = if opts.base_port == 7001 {
        String::new()
    } else {
        format!("--endpoint {first} ")
    };
    println!("  wasmraft call {ep}kv '{{\"op\":\"put\",\"key\":\"a\",\"value\":\"1\"}}'");
    println!("  wasmraft query {ep}kv '{{\"op\":\"get\",\"key\":\"a\"}}'");
    println!("  wasmraft cluster status {ep}");
    println!("  wasmraft plugins {ep}");
    println!("  wasmraft bench {ep}--clients 16 --ops 20000");
    println!();
    println!("Ctrl-C stops the cluster.");
    tokio::signal::ctrl_c().await?;
    eprintln!("stopping...");
    for node in nodes {
        node.shutdown().await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `wasmraft node --config FILE`: the TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub id: u64,
    /// e.g. "127.0.0.1:7001"
    pub listen: SocketAddr,
    /// What peers and clients dial; default http://{listen}.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Compiled-component cache; default data_dir/compiled. Nodes on one machine may share one.
    pub compile_cache_dir: Option<PathBuf>,
    /// Where `/metrics` is served over HTTP (e.g. "127.0.0.1:7101"); default: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// The address connections to peers come from (one of this host's, e.g. "127.0.1.2");
    /// default: the OS picks. Firewall rules between nodes on one host tell them apart by it.
    pub peer_source: Option<std::net::IpAddr>,
    /// The initial voters other than this node, id -> address; `wasmraft cluster init` uses them.
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    #[serde(default)]
    pub raft: RaftConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub snapshot: SnapshotConfig,
}

pub fn read_node_file(path: &Path) -> anyhow::Result<(NodeConfig, BTreeMap<u64, String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: NodeFile =
        toml::from_str(&text).with_context(|| format!("{} is not a valid node config", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut config = NodeConfig::new(file.id, file.listen, base.join(&file.data_dir));
    config.advertise = file.advertise;
    config.compile_cache_dir = file.compile_cache_dir.map(|dir| base.join(dir));
    config.metrics_listen = file.metrics_listen;
    config.raft = file.raft;
    config.limits = file.limits;
    config.snapshot = file.snapshot;
    config.peer_source = file.peer_source;
    // Test-only: lets `wasmraft chaos --failpoint read-skips-read-index` show its checker fails.
    config.test_read_skips_read_index =
        std::env::var("WASMRAFT_FAILPOINT").is_ok_and(|armed| armed == "read-skips-read-index");
    if config.snapshot.keep_files == 0 || config.snapshot.chunk_bytes == 0 {
        anyhow::bail!(
            "{}: [snapshot] keep_files and chunk_bytes must be at least 1",
            path.display()
        );
    }
    if !(1..=22).contains(&config.snapshot.zstd_level) {
        anyhow::bail!("{}: [snapshot] zstd_level is 1 to 22", path.display());
    }
    let mut peers = BTreeMap::new();
    for (id, addr) in file.peers {
        let id: u64 = id.parse().with_context(|| format!("peer id {id:?} is not a number"))?;
        peers.insert(id, addr);
    }
    Ok((config, peers))
}

pub async fn node(path: &Path) -> anyhow::Result<ExitCode> {
    let (mut config, peers) = read_node_file(path)?;
    let id = config.id;
    if !peers.is_empty() {
        // `cluster init` without members: these peers and this node.
        let own = config
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.listen));
        config.initial_members = peers;
        config.initial_members.insert(id, own);
    }
    let node = Node::start(config).await?;
    println!("node {id} serving on {}", node.addr());
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm() => {}
    }
    eprintln!("node {id}: stopping");
    node.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
