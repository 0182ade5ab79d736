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
use wasmraft_node::security::{PluginTrust, Role, TlsConfig, Tokens, token_sha256};
use wasmraft_node::{Node, NodeConfig, RaftConfig, SnapshotConfig};
use wasmraft_runtime::Limits;

use crate::certs::{CertDir, new_token};
use crate::client::{self, Target};
use crate::context::Context as ClientContext;
use crate::deploy::Upload;

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
    /// Plaintext and no tokens (and no context file).
    pub insecure: bool,
}

/// The dev cluster's security: its own CA and node certificates, and an admin token, made on a
/// fresh start and kept in its data directory (so a restart with `--data-dir` resumes them).
struct DevSecurity {
    certs: CertDir,
    token: String,
}

impl DevSecurity {
    fn open(data_dir: &Path, nodes: u64) -> anyhow::Result<DevSecurity> {
        let certs = CertDir(data_dir.join("certs"));
        let token_path = data_dir.join("certs").join("admin-token");
        if !certs.ca().exists() {
            certs.init_ca()?;
            std::fs::write(&token_path, new_token()?)?;
            std::fs::set_permissions(&token_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        for id in 1..=nodes {
            if !certs.node_cert(id).exists() {
                certs.add_node(id, &["127.0.0.1".to_string(), "localhost".to_string()])?;
            }
        }
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("reading {}", token_path.display()))?
            .trim()
            .to_string();
        Ok(DevSecurity { certs, token })
    }

    fn node(&self, id: u64, config: &mut NodeConfig) -> anyhow::Result<()> {
        config.tls = Some(TlsConfig::from_files(
            &self.certs.ca(),
            &self.certs.node_cert(id),
            &self.certs.node_key(id),
        )?);
        config.tokens = Some(Tokens::new([(token_sha256(&self.token).as_str(), Role::Admin)])?);
        Ok(())
    }
}

/// Node N's peer listener is at the base port + this + N - 1.
pub const PEER_PORT_OFFSET: u64 = 50;

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
    let security = match opts.insecure {
        true => None,
        false => Some(DevSecurity::open(&data_dir, opts.nodes)?),
    };
    let mut nodes = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=opts.nodes {
        let port = |offset: u64| {
            u16::try_from(opts.base_port as u64 + offset + id - 1)
                .with_context(|| format!("--base-port + {offset} + --nodes is past port 65535"))
        };
        let listen = SocketAddr::from(([127, 0, 0, 1], port(0)?));
        let mut config = NodeConfig::new(id, listen, data_dir.join(format!("node-{id}")));
        config.peer_listen = Some(SocketAddr::from(([127, 0, 0, 1], port(PEER_PORT_OFFSET)?)));
        config.compile_cache_dir = Some(data_dir.join("compiled"));
        config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], port(100)?)));
        if let Some(security) = &security {
            security.node(id, &mut config)?;
        }
        let node = Node::start(config)
            .await
            .with_context(|| format!("starting node {id} on {listen} (is the port in use? try --base-port)"))?;
        members.insert(id, node.peer_addr().to_string());
        nodes.push(node);
    }
    let first = nodes[0].addr().to_string();
    let target = match &security {
        Some(security) => {
            let ca = std::fs::read(security.certs.ca())?;
            Target::new(&first, Some(ca), Some(security.token.clone()))
        }
        None => Target::new(&first, None, None),
    };
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
    let mut api = client::connect(&target).await?;
    let active = api.list_plugins(pb::ListPluginsRequest {}).await?.into_inner().plugins;
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if !active.iter().any(|p| p.name == "kv" && p.sha256 == sha256) {
        let index = crate::deploy::deploy_bytes(&mut api, Upload::new("kv", bytes), |_| {})
            .await
            .map_err(|s| anyhow::anyhow!("deploying kv: {}", s.message()))?
            .index;
        eprintln!(
            "deployed {} as `kv` (sha256 {sha256}, log index {index})",
            plugin.display()
        );
    }

    let secured = match &security {
        Some(_) => "TLS (mutual between peers) and an admin token",
        None => "INSECURE: plaintext, no tokens",
    };
    println!(
        "wasmraft dev: {} nodes, {secured}, data in {}",
        opts.nodes,
        data_dir.display()
    );
    for node in &nodes {
        let metrics = node.metrics_addr().map_or(String::new(), |a| {
            format!("  status http://{a}/  metrics http://{a}/metrics")
        });
        println!(
            "  node {}  clients {}  peers {}{metrics}",
            node.id(),
            node.addr(),
            node.peer_addr()
        );
    }
    let mut ep = if opts.base_port == 7001 {
        String::new()
    } else {
        format!("--endpoint {first} ")
    };
    if let Some(security) = &security {
        let context = ClientContext {
            endpoints: nodes.iter().map(|n| n.addr().to_string()).collect(),
            ca: std::path::absolute(security.certs.ca())?,
            token: security.token.clone(),
        };
        let path = context.save()?;
        println!(
            "  context {} (endpoints, CA, admin token): client commands use it",
            path.display()
        );
        ep.clear();
    }
    println!();
    println!("Try (in another terminal):");
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
    /// Where clients connect, e.g. "127.0.0.1:7001".
    pub listen: SocketAddr,
    /// Where peers connect, e.g. "127.0.0.1:7051" (required with TLS or tokens; without, peers
    /// share `listen`).
    pub peer_listen: Option<SocketAddr>,
    /// What peers dial (the address the membership records); default https://{peer_listen}
    /// (http:// without TLS).
    pub advertise: Option<String>,
    /// TLS for both listeners, mutual between peers: PEM files (relative to this file).
    pub tls: Option<TlsFiles>,
    /// The client tokens a node accepts, by sha256, each with its role.
    #[serde(default)]
    pub tokens: Vec<TokenRule>,
    /// Which plugin components this node runs.
    #[serde(default)]
    pub plugins: PluginsFile,
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

/// `[tls]`: the cluster's CA, and this node's certificate and key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[[tokens]]`: `sha256 = "..."` (of the token, hex), `role = "read" | "write" | "admin"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRule {
    pub sha256: String,
    pub role: Role,
}

/// `[plugins]`: run only components signed by one of `trusted_keys` (ed25519 public keys, hex)
/// or whose sha256 is in `allowed_sha256`; both empty: any valid component.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsFile {
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    #[serde(default)]
    pub allowed_sha256: Vec<String>,
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
    config.peer_listen = file.peer_listen;
    if let Some(tls) = &file.tls {
        let tls = TlsConfig::from_files(&base.join(&tls.ca), &base.join(&tls.cert), &base.join(&tls.key))
            .with_context(|| format!("{}: [tls]", path.display()))?;
        config.tls = Some(tls);
    }
    if !file.tokens.is_empty() {
        let rules = file.tokens.iter().map(|t| (t.sha256.as_str(), t.role));
        config.tokens = Some(Tokens::new(rules).with_context(|| format!("{}: [[tokens]]", path.display()))?);
    }
    let keys = file.plugins.trusted_keys.iter().map(String::as_str);
    let allowed = file.plugins.allowed_sha256.iter().map(String::as_str);
    config.plugin_trust = PluginTrust::new(keys, allowed).with_context(|| format!("{}: [plugins]", path.display()))?;
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

pub async fn node(path: &Path, insecure: bool) -> anyhow::Result<ExitCode> {
    let (mut config, peers) = read_node_file(path)?;
    let id = config.id;
    if insecure {
        tracing::warn!(
            node = id,
            "INSECURE (--insecure): TLS and tokens are off unless configured; anyone who reaches this node's ports can deploy code, change membership and read all state"
        );
    } else {
        let mut missing = Vec::new();
        if config.tls.is_none() {
            missing.push("[tls] (ca, cert, key: `wasmraft certs init` makes them)");
        }
        if config.tokens.is_none() {
            missing.push("[[tokens]] (sha256 and role of each client token)");
        }
        if config.peer_listen.is_none() {
            missing.push("peer_listen (the peers' own listener)");
        }
        if !missing.is_empty() {
            anyhow::bail!(
                "{}: a node runs secure by default and needs {}; or start it with --insecure",
                path.display(),
                missing.join(", ")
            );
        }
    }
    if !peers.is_empty() {
        // `cluster init` without members: these peers and this node.
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let own = config
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", config.peer_listen.unwrap_or(config.listen)));
        config.initial_members = peers;
        config.initial_members.insert(id, own);
    }
    let node = Node::start(config).await?;
    println!(
        "node {id} serving clients on {}, peers on {}",
        node.addr(),
        node.peer_addr()
    );
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
