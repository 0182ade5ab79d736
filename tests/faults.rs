//! The peer transport's fault layer, on nodes run in this process: a partitioned leader is
//! replaced, and the cluster heals.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wasmraft_node::{LinkFault, Node, NodeConfig};

async fn start(n: u64, dir: &std::path::Path) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        let mut config = NodeConfig::new(
            id,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            dir.join(format!("node-{id}")),
        );
        config.heartbeat_ms = 50;
        config.election_timeout_min_ms = 300;
        config.election_timeout_max_ms = 600;
        nodes.push(Node::start(config).await.unwrap());
    }
    let members: BTreeMap<u64, String> = nodes.iter().map(|n| (n.id(), n.addr().to_string())).collect();
    nodes[0].inner.initialize(members).await.unwrap();
    nodes
}

/// The leader as `node` sees it, once it sees one that satisfies `ok`.
async fn leader_seen_by(node: &Node, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = node.current_leader();
        if let Some(leader) = leader
            && ok(leader)
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "node {} saw no acceptable leader", node.id());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node` commits an entry (an election may still be settling).
async fn commits(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match node.commit_blank().await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "node {} cannot commit: {e}", node.id()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_leader_is_replaced_and_the_cluster_heals() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(3, dir.path()).await;
    let old = leader_seen_by(&nodes[0], |_| true).await;

    // Cut every link to and from the leader, in both directions.
    let cut = LinkFault {
        drop: true,
        ..LinkFault::default()
    };
    for node in &nodes {
        if node.id() == old {
            for peer in nodes.iter().filter(|p| p.id() != old) {
                node.faults().set(peer.id(), cut);
            }
        } else {
            node.faults().set(old, cut);
        }
    }
    let majority: Vec<&Node> = nodes.iter().filter(|n| n.id() != old).collect();
    let new = leader_seen_by(majority[0], |leader| leader != old).await;
    assert_eq!(leader_seen_by(majority[1], |leader| leader != old).await, new);

    // The majority commits without the old leader.
    let term_before = majority[0].current_term();
    commits(nodes.iter().find(|n| n.id() == new).unwrap()).await;

    // Heal: the old leader learns the new term and follows.
    for node in &nodes {
        node.faults().heal_all();
    }
    let old_node = nodes.iter().find(|n| n.id() == old).unwrap();
    assert_eq!(leader_seen_by(old_node, |leader| leader != old).await, new);
    assert!(old_node.current_term() >= term_before);

    // Delayed and duplicated messages still make progress.
    for node in &nodes {
        for peer in nodes.iter().filter(|p| p.id() != node.id()) {
            node.faults().set(
                peer.id(),
                LinkFault {
                    delay: Duration::from_millis(20),
                    duplicate: true,
                    ..LinkFault::default()
                },
            );
        }
    }
    let leader = nodes.iter().find(|n| n.id() == new).unwrap();
    commits(leader).await;
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
