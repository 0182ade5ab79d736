//! Nodes in the test's own process, with short Raft timers, behind the fault layer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use wasmraft_node::{LinkFault, Node, NodeConfig, RaftConfig};

/// Starts `n` nodes (each config passed through `configure` first) and initializes them as one
/// cluster.
pub async fn start(n: u64, dir: &Path, configure: impl Fn(&mut NodeConfig)) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        let mut config = NodeConfig::new(
            id,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            dir.join(format!("node-{id}")),
        );
        config.raft = RaftConfig {
            heartbeat_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
        };
        configure(&mut config);
        nodes.push(Node::start(config).await.unwrap());
    }
    let members: BTreeMap<u64, String> = nodes.iter().map(|n| (n.id(), n.addr().to_string())).collect();
    nodes[0].inner.initialize(members).await.unwrap();
    nodes
}

/// Silences every link between `isolated` and the rest, both ways: connections stay open and
/// hold their bytes, as behind a firewall that drops packets.
pub fn silence(nodes: &[Node], isolated: &[u64]) {
    let silent = LinkFault {
        silent: true,
        ..LinkFault::default()
    };
    for node in nodes {
        let inside = isolated.contains(&node.id());
        for peer in nodes.iter().filter(|p| isolated.contains(&p.id()) != inside) {
            node.faults().set(peer.id(), silent);
        }
    }
}

pub fn heal(nodes: &[Node]) {
    for node in nodes {
        node.faults().heal_all();
    }
}

/// Sets `fault` on `victim`'s links to every other node and, with `both_ways`, on theirs to it.
pub fn set_links(nodes: &[Node], victim: u64, fault: LinkFault, both_ways: bool) {
    for node in nodes {
        for peer in nodes.iter().filter(|p| p.id() != node.id()) {
            if node.id() == victim || (both_ways && peer.id() == victim) {
                node.faults().set(peer.id(), fault);
            }
        }
    }
}
