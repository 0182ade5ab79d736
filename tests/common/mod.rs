//! A cluster of real `wasmraft node` processes on loopback, for end-to-end tests.

#![allow(dead_code)] // each test file uses a different part

pub mod in_process;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use wasmraft_node::pb::{self, api_client::ApiClient};

pub const BIN: &str = env!("CARGO_BIN_EXE_wasmraft");

/// The `/metrics` text a node serves at `addr` (its metrics listener).
pub async fn metrics_text(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port that is free now, below Linux's ephemeral range (32768 and up): a port the kernel
/// handed out for `:0` can be taken by an outgoing connection before the node binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts at its own place in 20000..32000.
    let start = std::process::id() % 1200 * 10;
    loop {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        let port = 20_000 + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A base port for a 3-node `wasmraft dev` whose client, peer (base + 50) and HTTP (base + 100)
/// ports are all free. Each call starts its search further on: tests running side by side in one
/// process would otherwise all find the same free base before any of their clusters binds it
/// (a cluster that then cannot bind never prints its banner).
pub fn free_dev_base_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 600 + CALLS.fetch_add(1, Ordering::Relaxed) * 7) * 10;
    (0..600)
        .map(|i| 33_000 + ((start + i * 10) % 6000) as u16)
        .find(|base| {
            [0, 1, 2, 50, 51, 52, 100, 101, 102]
                .iter()
                .all(|offset| TcpListener::bind(("127.0.0.1", base + offset)).is_ok())
        })
        .expect("nine free ports in 33000..39200")
}

/// `wasmraft dev` in a child process at a free base port, ready (its banner printed); killed when
/// dropped. Its data, stdout and (unless the args name one) context file live in `dir`.
pub struct DevCluster {
    child: Child,
    pub base_port: u16,
    /// What it printed on stdout.
    pub printed: String,
}

impl DevCluster {
    pub async fn start(dir: &std::path::Path, args: &[&str]) -> DevCluster {
        let base_port = free_dev_base_port();
        let stdout = dir.join("dev.out");
        let child = Command::new(BIN)
            .args(["dev", "--base-port", &base_port.to_string(), "--data-dir"])
            .arg(dir.join("data"))
            .args(args)
            .env("WASMRAFT_CONTEXT", dir.join("context.toml"))
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning wasmraft dev");
        let mut dev = DevCluster {
            child,
            base_port,
            printed: String::new(),
        };
        dev.printed = eventually("wasmraft dev to be ready", Duration::from_secs(90), || async {
            let printed = std::fs::read_to_string(&stdout).unwrap_or_default();
            printed.contains("Ctrl-C stops the cluster").then_some(printed)
        })
        .await;
        dev
    }

    /// Node 1's client endpoint (plaintext form; the context upgrades it under TLS).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.base_port)
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct NodeProc {
    pub id: u64,
    pub addr: String,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl NodeProc {
    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the process with extra environment variables (e.g. `WASMRAFT_FAILPOINT`).
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["node", "--insecure", "--config"])
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("WASMRAFT_TEST_LOG").unwrap_or_else(|_| "wasmraft=info,openraft=warn,warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning wasmraft node");
        self.child = Some(child);
    }

    pub async fn api(&self) -> ApiClient<Channel> {
        let addr = self.addr.clone();
        let channel = eventually(
            &format!("node {} to accept connections", self.id),
            Duration::from_secs(30),
            || {
                let addr = addr.clone();
                async move { tonic::transport::Endpoint::from_shared(addr).ok()?.connect().await.ok() }
            },
        )
        .await;
        ApiClient::new(channel).max_decoding_message_size(64 << 20)
    }

    /// Waits until the node answers (a leader checks a would-be learner does before adding it).
    pub async fn serving(&self) {
        eventually(&format!("node {} to answer", self.id), Duration::from_secs(30), || {
            self.status()
        })
        .await;
    }

    pub async fn status(&self) -> Option<pb::ClusterStatusResponse> {
        status_at(&self.addr).await
    }

    /// The node's snapshot counters and positions (waits for it to answer).
    pub async fn snapshot_status(&self) -> pb::SnapshotStatus {
        let status = eventually(&format!("node {} to answer", self.id), Duration::from_secs(30), || {
            self.status()
        })
        .await;
        status.snapshot.unwrap_or_default()
    }

    /// Whether the process has exited (it crashed, or hit a failpoint); reaps it.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                self.child = None;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.config.with_file_name(format!("node-{}", self.id))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    /// Top-level lines added to every node's config.
    pub extra_config: String,
    /// Environment variables every node process added by [`Cluster::add_node`] starts with.
    pub node_env: Vec<(String, String)>,
}

impl Cluster {
    /// Writes configs for `n` voters and starts their processes (not initialized).
    pub fn spawn(n: u64) -> Cluster {
        Self::spawn_with(n, "")
    }

    /// Like [`Cluster::spawn`], with top-level config lines for every node.
    pub fn spawn_with(n: u64, extra_config: &str) -> Cluster {
        Self::spawn_with_env(n, extra_config, &[])
    }

    /// Like [`Cluster::spawn_with`], with environment variables for every node process.
    pub fn spawn_with_env(n: u64, extra_config: &str, env: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
            extra_config: extra_config.to_string(),
            node_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers: BTreeMap<u64, String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, format!("http://127.0.0.1:{p}")))
            .collect();
        for (i, port) in ports.iter().enumerate() {
            cluster.add_node(i as u64 + 1, *port, &peers);
        }
        cluster
    }

    /// Adds (and starts) a node process with its own config.
    pub fn add_node(&mut self, id: u64, port: u16, peers: &BTreeMap<u64, String>) -> usize {
        let config = self.dir.path().join(format!("node-{id}.toml"));
        let mut text = format!(
            "id = {id}\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"node-{id}\"\n{}\n\n[raft]\nheartbeat_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600\n\n[peers]\n",
            self.extra_config
        );
        for (peer, addr) in peers {
            if *peer != id {
                text += &format!("\"{peer}\" = \"{addr}\"\n");
            }
        }
        std::fs::write(&config, text).unwrap();
        let mut node = NodeProc {
            id,
            addr: format!("http://127.0.0.1:{port}"),
            config,
            child: None,
            log: self.dir.path().join(format!("node-{id}.log")),
        };
        let env: Vec<(&str, &str)> = self.node_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        node.start_with_env(&env);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Adds a node that is in no membership yet (for learner tests).
    pub fn add_spare_node(&mut self, id: u64) -> usize {
        self.add_node(id, free_port(), &BTreeMap::new())
    }

    /// Spawns `n` nodes, initializes them as one cluster and deploys the bundled kv as `kv`.
    pub async fn start_with_kv(n: u64) -> Cluster {
        let cluster = Cluster::started(n, "").await;
        cluster.deploy("kv", wasmraft::plugins::KV).await;
        cluster
    }

    /// Spawns `n` nodes (with `extra_config`) and initializes them as one cluster.
    pub async fn started(n: u64, extra_config: &str) -> Cluster {
        let cluster = Cluster::spawn_with(n, extra_config);
        let mut api = cluster.nodes[0].api().await;
        api.init(pb::InitRequest::default()).await.expect("cluster init");
        cluster.leader().await;
        cluster
    }

    pub async fn deploy(&self, name: &str, path: &str) -> u64 {
        let out = self.cli(&["deploy", name, path]).await;
        assert!(
            out.status.success(),
            "deploy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let index = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("activated   at log index "))
            .unwrap_or_else(|| panic!("no activation index in {text}"));
        index.trim().parse().unwrap()
    }

    pub fn node(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("no such node")
    }

    /// The leader's id, as a running node reports it (waits for one).
    pub async fn leader(&self) -> u64 {
        let nodes: Vec<(String, bool)> = self.nodes.iter().map(|n| (n.addr.clone(), n.child.is_some())).collect();
        eventually("a leader", Duration::from_secs(30), || {
            let nodes = nodes.clone();
            async move {
                for (addr, running) in nodes {
                    if !running {
                        continue;
                    }
                    if let Some(s) = status_at(&addr).await
                        && s.state == "leader"
                    {
                        return Some(s.id);
                    }
                }
                None
            }
        })
        .await
    }

    /// Runs the CLI against the first running node.
    pub async fn cli(&self, args: &[&str]) -> Output {
        let endpoint = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .map(|n| n.addr.clone())
            .expect("no running node");
        cli_at(&endpoint, args).await
    }

    /// Waits until every running node has applied at least `index`, then returns their
    /// (id, digest index, digest) once all digests are taken at the same index.
    pub async fn converged(&self) -> Vec<(u64, u64, String)> {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.addr.clone())
            .collect();
        eventually("every node to apply the same log", Duration::from_secs(60), || {
            let addrs = addrs.clone();
            async move {
                let mut seen = Vec::new();
                for addr in addrs {
                    let s = status_at(&addr).await?;
                    seen.push((s.id, s.digest_index, s.state_digest, s.last_log_index));
                }
                let first = seen.first()?.clone();
                let same = seen
                    .iter()
                    .all(|(_, index, _, last)| *index == first.1 && *last == first.3 && Some(*index) == *last);
                same.then(|| seen.into_iter().map(|(id, i, d, _)| (id, i, d)).collect())
            }
        })
        .await
    }

    /// Every node's log, for a failing test's output.
    pub fn dump_logs(&self) {
        for node in &self.nodes {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- node {} log (last {} lines) ----", node.id, tail.len());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A node's own view of the cluster, if it answers.
pub async fn status_at(addr: &str) -> Option<pb::ClusterStatusResponse> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
        .ok()?
        .connect()
        .await
        .ok()?;
    let resp = ApiClient::new(channel)
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .ok()?;
    Some(resp.into_inner())
}

/// Runs the `wasmraft` CLI with `--endpoint`.
pub async fn cli_at(endpoint: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    // Never the user's dev context: the node is plaintext at `endpoint`.
    cmd.args(args)
        .env("WASMRAFT_ENDPOINT", endpoint)
        .env("WASMRAFT_CONTEXT", "/nonexistent/wasmraft-context.toml");
    cmd.output().await.expect("running wasmraft")
}

/// A process's stdout and stderr together, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Its text, once it succeeded (else the test fails, naming `what` and showing the output).
pub fn succeeded(what: &str, out: Output) -> String {
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
    text(&out)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

pub async fn call(api: &mut ApiClient<Channel>, plugin: &str, payload: &str) -> Result<String, tonic::Status> {
    let resp = api
        .call(pb::CallRequest {
            plugin: plugin.into(),
            payload: payload.as_bytes().to_vec(),
            session: None,
        })
        .await?;
    Ok(String::from_utf8_lossy(&resp.into_inner().result).into_owned())
}

pub async fn query(
    api: &mut ApiClient<Channel>,
    plugin: &str,
    request: &str,
    consistency: pb::Consistency,
) -> Result<String, tonic::Status> {
    let resp = api
        .query(pb::QueryRequest {
            plugin: plugin.into(),
            request: request.as_bytes().to_vec(),
            consistency: consistency as i32,
            shadow: false,
        })
        .await?;
    Ok(String::from_utf8_lossy(&resp.into_inner().result).into_owned())
}

/// Sends `requests` on one `Pipeline` stream, all at once, and returns every reply by id once
/// the node has answered them all and ended the stream.
pub async fn pipelined(
    api: &mut ApiClient<Channel>,
    requests: Vec<pb::PipelineRequest>,
) -> std::collections::BTreeMap<u64, pb::pipeline_reply::Outcome> {
    let stream = tokio_stream::iter(requests);
    let mut replies = api.pipeline(stream).await.unwrap().into_inner();
    let mut answers = std::collections::BTreeMap::new();
    while let Some(reply) = replies.message().await.unwrap() {
        let outcome = reply.outcome.expect("every reply has an outcome");
        assert!(
            answers.insert(reply.id, outcome).is_none(),
            "id {} answered twice",
            reply.id
        );
    }
    answers
}
