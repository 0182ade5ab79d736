//! The node processes of a chaos run, and the firewall between them.
//!
//! Node N listens on 127.0.1.N and dials its peers from that address (`peer_source`), so an
//! nftables rule can drop the packets from one node to another while clients (on 127.0.0.1)
//! still reach every node. The rules drop at the input hook: the sender sees no error, its
//! connections stay open and retransmit, as behind a real firewall that drops packets.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// Node `id`'s address.
pub fn node_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, id as u8)
}

pub struct NodeProc {
    pub id: u64,
    /// `http://127.0.1.N:PORT`
    pub addr: String,
    config: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl NodeProc {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The process id, while it runs.
    fn pid(&self) -> Option<libc::pid_t> {
        self.child.as_ref().map(|c| c.id() as libc::pid_t)
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child, which is not reaped while `self.child` holds it.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

impl NodeProc {
    /// SIGKILL: no shutdown, no flush.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Procs {
    pub nodes: Vec<NodeProc>,
    bin: PathBuf,
    /// `WASMRAFT_FAILPOINT` for every node (test-only).
    failpoint: Option<String>,
}

impl Procs {
    /// Writes the configs of nodes 1..=`count` under `dir`; the first `voters` name each other
    /// as the initial voters. Nothing is started.
    pub fn create(dir: &Path, count: u64, voters: u64, port: u16, failpoint: Option<String>) -> anyhow::Result<Procs> {
        let bin = std::env::current_exe().context("finding the wasmraft binary")?;
        let mut nodes = Vec::new();
        for id in 1..=count {
            let ip = node_ip(id);
            let addr = format!("http://{ip}:{port}");
            let mut text = format!(
                r#"id = {id}
listen = "{ip}:{port}"
data_dir = "node-{id}"
compile_cache_dir = "compiled"
peer_source = "{ip}"

[raft]
heartbeat_ms = 50
election_timeout_min_ms = 300
election_timeout_max_ms = 600

# Snapshots often, a short log tail and a slow send: followers that were down need a snapshot,
# and a transfer lasts long enough to be cut.
[snapshot]
logs_since_last = 500
keep_logs = 50
chunk_bytes = 65536
max_send_bytes_per_sec = 4000000

[peers]
"#
            );
            if id <= voters {
                for peer in (1..=voters).filter(|p| *p != id) {
                    text += &format!("\"{peer}\" = \"http://{}:{port}\"\n", node_ip(peer));
                }
            }
            let config = dir.join(format!("node-{id}.toml"));
            std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
            nodes.push(NodeProc {
                id,
                addr,
                config,
                data_dir: dir.join(format!("node-{id}")),
                log: dir.join(format!("node-{id}.log")),
                child: None,
                paused: false,
            });
        }
        Ok(Procs { nodes, bin, failpoint })
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[id as usize - 1]
    }

    /// Starts node `id`'s process (its log goes to `node-N.log`).
    pub fn start(&mut self, id: u64) -> anyhow::Result<()> {
        let bin = self.bin.clone();
        let failpoint = self.failpoint.clone();
        let node = self.node_mut(id);
        if node.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(["node", "--insecure", "--config"])
            .arg(&node.config)
            .env_remove("WASMRAFT_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(failpoint) = failpoint {
            cmd.env("WASMRAFT_FAILPOINT", failpoint);
        }
        node.child = Some(cmd.spawn().context("starting a wasmraft node")?);
        node.paused = false;
        Ok(())
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, id: u64) {
        self.node_mut(id).kill();
    }

    /// Kills node `id` and deletes its data: a node retired from the cluster.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id);
        let dir = &self.node(id).data_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("deleting {}", dir.display()))?;
        }
        Ok(())
    }

    /// SIGSTOP: the process holds its sockets and answers nothing until [`Procs::resume`].
    pub fn pause(&mut self, id: u64) {
        let node = self.node_mut(id);
        node.signal(libc::SIGSTOP);
        node.paused = node.running();
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) {
        let node = self.node_mut(id);
        node.signal(libc::SIGCONT);
        node.paused = false;
    }

    /// Kills every node process.
    pub fn stop_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.kill(id);
        }
    }

    /// A node process that exited on its own (a crash): its id and the end of its log.
    pub fn crashed(&mut self) -> Option<(u64, String)> {
        for node in &mut self.nodes {
            let exited = match node.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                node.child = None;
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Some((node.id, format!("{status}; log ends:\n{}", tail.join("\n"))));
            }
        }
        None
    }
}

/// The nftables rules that cut links between nodes (in the run's own network namespace).
pub struct Firewall;

const TABLE: &str = "wasmraft_chaos";

fn nft(args: &str) -> anyhow::Result<()> {
    let out = Command::new("nft")
        .args(args.split(' '))
        .output()
        .context("running nft (Debian: apt-get install nftables)")?;
    if !out.status.success() {
        anyhow::bail!("nft {args}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Firewall {
    /// Creates the table and its (empty) input chain.
    pub fn new() -> anyhow::Result<Firewall> {
        nft(&format!("add table inet {TABLE}"))?;
        nft(&format!(
            "add chain inet {TABLE} cut {{ type filter hook input priority 0 ; policy accept ; }}"
        ))?;
        Ok(Firewall)
    }

    /// Drops every packet from node `from` to node `to`.
    pub fn cut(&self, from: u64, to: u64) -> anyhow::Result<()> {
        nft(&format!(
            "add rule inet {TABLE} cut ip saddr {} ip daddr {} drop",
            node_ip(from),
            node_ip(to)
        ))
    }

    /// Removes every cut.
    pub fn heal(&self) -> anyhow::Result<()> {
        nft(&format!("flush chain inet {TABLE} cut"))
    }
}
