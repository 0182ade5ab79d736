//! Snapshots and log compaction over real `wasmraft node` processes: a node that joins after the
//! log was purged catches up from a snapshot, a transfer broken by a crash resumes, a crash in the
//! middle of an install leaves a consistent node, a corrupted snapshot is refused, and the Python
//! and JavaScript plugins' state survives snapshot, purge and restart.

mod common;

use std::time::Duration;

use common::{Cluster, NodeProc, call, eventually, query, stderr, stdout};
use wasmraft::workload::noise;
use wasmraft_node::pb::{self, Consistency};

fn put(key: &str, value: &str) -> String {
    format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#)
}

fn get(key: &str) -> String {
    format!(r#"{{"op":"get","key":"{key}"}}"#)
}

/// Writes `count` keys `k0..` with `value_len`-character values through `node`; returns them.
async fn fill(node: &NodeProc, count: u64, value_len: usize) -> Vec<(String, String)> {
    let mut api = node.api().await;
    let mut written = Vec::new();
    for i in 0..count {
        let (key, value) = (format!("k{i}"), noise(i, value_len));
        call(&mut api, "kv", &put(&key, &value)).await.expect("put");
        written.push((key, value));
    }
    written
}

/// Checks that `node` answers every key's latest value from its own state.
async fn assert_serves(node: &NodeProc, written: &[(String, String)]) {
    let mut api = node.api().await;
    for (key, value) in written {
        let answer = query(&mut api, "kv", &get(key), Consistency::Local).await.expect("get");
        assert_eq!(
            answer,
            format!(r#"{{"value":"{value}"}}"#),
            "node {} key {key}",
            node.id
        );
    }
}

/// `wasmraft snapshot` on `node`: builds one and purges the log to it.
async fn snapshot_on(node: &NodeProc) {
    let out = common::cli_at(&node.addr, &["snapshot"]).await;
    assert!(out.status.success(), "wasmraft snapshot: {}", stderr(&out));
    assert!(stdout(&out).contains("snapshot at index"), "{}", stdout(&out));
}

/// Adds a fresh node as a learner without waiting for it; returns its position in the cluster.
async fn add_learner(cluster: &mut Cluster, id: u64) -> usize {
    let at = cluster.add_spare_node(id);
    cluster.nodes[at].serving().await;
    let addr = cluster.nodes[at].addr.clone();
    let out = cluster
        .cli(&["cluster", "add-learner", &id.to_string(), &addr, "--no-wait"])
        .await;
    assert!(out.status.success(), "add-learner: {}", stderr(&out));
    at
}

/// Waits until `node` has installed a snapshot (and answers).
async fn installed(node: &NodeProc, timeout: Duration) -> pb::SnapshotStatus {
    eventually(&format!("node {} to install a snapshot", node.id), timeout, || async {
        let status = node.status().await?.snapshot?;
        // Counted before openraft reports the snapshot it now holds: wait for both.
        (status.installed >= 1 && status.last_log_id.is_some()).then_some(status)
    })
    .await
}

fn assert_same_digests(digests: &[(u64, u64, String)]) {
    assert!(digests.iter().all(|(_, _, d)| *d == digests[0].2), "{digests:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_added_after_the_log_was_purged_catches_up_from_a_snapshot_and_serves_the_same_reads() {
    // The policy, not a command: a snapshot every 40 entries, 5 entries kept below it.
    let config = "[snapshot]\nlogs_since_last = 40\nkeep_logs = 5\n";
    let mut cluster = Cluster::started(3, config).await;
    cluster.deploy("kv", wasmraft::plugins::KV).await;
    let leader = cluster.leader().await;
    let written = fill(cluster.node(leader), 150, 40).await;
    let leader_node = cluster.node(leader);
    let purged = eventually("the leader to purge its log", Duration::from_secs(30), || async {
        let s = leader_node.status().await?.snapshot?;
        s.purged_index.filter(|p| *p >= 100)
    })
    .await;
    assert!(leader_node.snapshot_status().await.built >= 1);

    let at = add_learner(&mut cluster, 4).await;
    let learner = &cluster.nodes[at];
    let status = installed(learner, Duration::from_secs(60)).await;
    assert!(
        status.last_log_id.is_some_and(|id| id.index > purged),
        "{status:?} (purged {purged})"
    );
    assert_same_digests(&cluster.converged().await);
    assert_serves(&cluster.nodes[at], &written).await;
    // It takes new writes like any replica.
    let more = fill(&cluster.nodes[at], 3, 8).await;
    cluster.converged().await;
    assert_serves(&cluster.nodes[at], &more).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_transfer_broken_by_a_crash_resumes_where_it_stopped() {
    // About 12 MB of state sent at 2 MB/s: time to kill the receiver half way.
    let config =
        "[snapshot]\nlogs_since_last = 0\nkeep_logs = 0\nchunk_bytes = 262144\nmax_send_bytes_per_sec = 2000000\n";
    let mut cluster = Cluster::started(3, config).await;
    cluster.deploy("kv", wasmraft::plugins::KV).await;
    let leader = cluster.leader().await;
    let written = fill(cluster.node(leader), 120, 100_000).await;
    snapshot_on(cluster.node(leader)).await;

    let at = add_learner(&mut cluster, 4).await;
    let incoming = cluster.nodes[at].data_dir().join("snapshots").join("incoming");
    let part_bytes = || {
        std::fs::read_dir(&incoming)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .max()
            .unwrap_or(0)
    };
    eventually("half the snapshot to arrive", Duration::from_secs(60), || async {
        (part_bytes() >= 6_000_000).then_some(())
    })
    .await;
    cluster.nodes[at].kill();
    let kept = part_bytes();
    assert!(
        kept < 12_000_000,
        "the transfer finished before the kill ({kept} bytes)"
    );
    cluster.nodes[at].start();

    let status = installed(&cluster.nodes[at], Duration::from_secs(60)).await;
    assert!(status.resumed >= 1, "{status:?}");
    assert!(
        status.resumed_bytes >= 4 << 20,
        "resumed from {} bytes: {status:?}",
        status.resumed_bytes
    );
    assert_same_digests(&cluster.converged().await);
    assert_serves(&cluster.nodes[at], &written).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_in_the_middle_of_an_install_restarts_consistent() {
    let config = "[snapshot]\nlogs_since_last = 0\nkeep_logs = 0\n";
    let mut cluster = Cluster::started(3, config).await;
    cluster.deploy("kv", wasmraft::plugins::KV).await;
    let leader = cluster.leader().await;
    let written = fill(cluster.node(leader), 60, 200).await;
    snapshot_on(cluster.node(leader)).await;

    // First it dies with the new state restored beside the old one, before the switch; then
    // right after the switch, before anything else learns of it.
    let at = cluster.add_spare_node(4);
    cluster.nodes[at].kill();
    cluster.nodes[at].start_with_env(&[("WASMRAFT_FAILPOINT", "snapshot-install-staged")]);
    cluster.nodes[at].serving().await;
    let addr = cluster.nodes[at].addr.clone();
    let out = cluster.cli(&["cluster", "add-learner", "4", &addr, "--no-wait"]).await;
    assert!(out.status.success(), "add-learner: {}", stderr(&out));
    for failpoint in ["snapshot-install-staged", "snapshot-install-switched"] {
        let node = &mut cluster.nodes[at];
        eventually(
            &format!("node 4 to die at {failpoint}"),
            Duration::from_secs(60),
            || {
                let exited = node.exited();
                async move { exited.then_some(()) }
            },
        )
        .await;
        let log = std::fs::read_to_string(&node.log).unwrap();
        assert!(log.contains(&format!("failpoint {failpoint}")), "{log}");
        if failpoint == "snapshot-install-staged" {
            node.start_with_env(&[("WASMRAFT_FAILPOINT", "snapshot-install-switched")]);
        }
    }
    cluster.nodes[at].start();
    assert_same_digests(&cluster.converged().await);
    assert_serves(&cluster.nodes[at], &written).await;
    let log = std::fs::read_to_string(&cluster.nodes[at].log).unwrap();
    assert!(
        log.contains("deleting a key space no plugin uses"),
        "the first crash's restored space was not cleaned up:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_snapshot_is_rejected_and_the_node_stays_healthy_on_its_old_state() {
    let config = "[snapshot]\nlogs_since_last = 0\nkeep_logs = 0\n";
    let mut cluster = Cluster::started(3, config).await;
    cluster.deploy("kv", wasmraft::plugins::KV).await;
    let leader = cluster.leader().await;
    let mut written = fill(cluster.node(leader), 40, 500).await;
    snapshot_on(cluster.node(leader)).await;
    // Damage the leader's snapshot on disk: one flipped byte in the middle.
    let dir = cluster.node(leader).data_dir().join("snapshots");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .expect("the leader's snapshot file");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let at = add_learner(&mut cluster, 4).await;
    let learner = &cluster.nodes[at];
    let status = eventually(
        "the learner to reject the snapshot",
        Duration::from_secs(30),
        || async {
            let s = learner.status().await?.snapshot?;
            (s.rejected_corrupted >= 1).then_some(s)
        },
    )
    .await;
    assert_eq!(status.installed, 0, "{status:?}");
    let state = learner.status().await.expect("the learner answers after the rejection");
    assert!(state.applied_index.is_none_or(|i| i == 0), "{state:?}");
    let log = std::fs::read_to_string(&learner.log).unwrap();
    assert!(log.contains("rejected a corrupted snapshot"), "{log}");

    // A fresh snapshot on the leader heals it.
    written.extend(fill(cluster.node(leader), 5, 500).await);
    snapshot_on(cluster.node(leader)).await;
    installed(&cluster.nodes[at], Duration::from_secs(60)).await;
    assert_same_digests(&cluster.converged().await);
    assert_serves(&cluster.nodes[at], &written).await;
}

/// The state of a Python and a JavaScript plugin survives a snapshot, a log purge and a restart
/// of every node, and a new node restores it through the plugin's own restore export.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_and_javascript_kv_plugins_survive_snapshot_purge_and_restart() {
    // Share the compiled-component cache with tests/polyglot.rs: these take ~15 s to compile.
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("polyglot-cache");
    for (language, component) in [
        ("Python", wasmraft::plugins::KV_PY),
        ("JavaScript", wasmraft::plugins::KV_JS),
    ] {
        let config = format!(
            "compile_cache_dir = {:?}\n[snapshot]\nlogs_since_last = 0\nkeep_logs = 0\n",
            cache.to_str().unwrap()
        );
        let mut cluster = Cluster::started(3, &config).await;
        cluster.deploy("kv", component).await;
        let leader = cluster.leader().await;
        let written = fill(cluster.node(leader), 30, 100).await;
        for node in &cluster.nodes {
            snapshot_on(node).await;
            let status = node.snapshot_status().await;
            assert!(
                status.purged_index.is_some(),
                "{language}: node {}: {status:?}",
                node.id
            );
        }
        for node in &mut cluster.nodes {
            node.kill();
            node.start();
        }
        cluster.leader().await;
        for node in &cluster.nodes {
            assert_serves(node, &written).await;
        }
        let at = add_learner(&mut cluster, 4).await;
        installed(&cluster.nodes[at], Duration::from_secs(120)).await;
        assert_same_digests(&cluster.converged().await);
        assert_serves(&cluster.nodes[at], &written).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_voter_that_was_down_while_the_others_purged_catches_up_from_a_snapshot() {
    let config = "[snapshot]\nlogs_since_last = 0\nkeep_logs = 0\n";
    let mut cluster = Cluster::started(3, config).await;
    cluster.deploy("kv", wasmraft::plugins::KV).await;
    let leader = cluster.leader().await;
    let down = cluster.nodes.iter().find(|n| n.id != leader).unwrap().id;
    cluster.node(down).kill();
    let up: Vec<u64> = cluster.nodes.iter().filter(|n| n.id != down).map(|n| n.id).collect();
    let written = fill(cluster.node(leader), 30, 100).await;
    for id in &up {
        snapshot_on(cluster.node(*id)).await;
    }
    for node in &mut cluster.nodes {
        node.kill();
        node.start();
    }
    cluster.leader().await;
    installed(cluster.node(down), Duration::from_secs(60)).await;
    assert_same_digests(&cluster.converged().await);
    for node in &cluster.nodes {
        assert_serves(node, &written).await;
    }
}

/// A plugin whose snapshot export fails (here: a stream that never ends, cut at the bound of its
/// state) makes the build fail fast with a clear error, and the node goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_snapshot_export_fails_the_build_not_the_node() {
    let config = "[snapshot]\nlogs_since_last = 0\n";
    let cluster = Cluster::started(1, config).await;
    cluster
        .deploy("endless", wasmraft::plugins::HOSTILE_ENDLESS_SNAPSHOT)
        .await;
    cluster.deploy("kv", wasmraft::plugins::KV).await;
    let node = &cluster.nodes[0];
    let out = common::cli_at(&node.addr, &["snapshot"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("a stream that never ends?"), "{}", stderr(&out));
    let status = node.snapshot_status().await;
    assert_eq!((status.build_failed, status.built), (1, 0), "{status:?}");
    let written = fill(node, 3, 10).await;
    assert_serves(node, &written).await;
}

/// The build reads a point-in-time view of the state, so the log keeps being applied meanwhile: a
/// write completes between two looks that both see the build running.
#[tokio::test(flavor = "multi_thread")]
async fn writes_are_applied_while_a_snapshot_is_being_built() {
    let config = "[snapshot]\nlogs_since_last = 0\n";
    let cluster = Cluster::started(1, config).await;
    cluster.deploy("kv", wasmraft::plugins::KV).await;
    let node = &cluster.nodes[0];
    fill(node, 600, 100_000).await; // 60 MB: the build takes a good fraction of a second
    let addr = node.addr.clone();
    let building = tokio::spawn(async move { common::cli_at(&addr, &["snapshot"]).await });
    eventually("the build to start", Duration::from_secs(30), || async {
        node.snapshot_status().await.building.then_some(())
    })
    .await;
    let mut api = node.api().await;
    call(&mut api, "kv", &put("during", "build"))
        .await
        .expect("a write during the build");
    let status = node.snapshot_status().await;
    assert!(status.building, "the build ended before the write did: {status:?}");
    let out = building.await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_serves(node, &[("during".into(), "build".into())]).await;
}

/// Sessions travel in snapshots: a node that joined from a snapshot (the log before it purged)
/// and then leads still answers a repeated call with its first result instead of applying it
/// again.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_joined_from_a_snapshot_still_knows_each_sessions_last_call() {
    let config = "[snapshot]\nlogs_since_last = 0\nkeep_logs = 0\n";
    let mut cluster = Cluster::started(1, config).await;
    cluster.deploy("counter", wasmraft::plugins::COUNTER).await;
    let add = pb::CallRequest {
        plugin: "counter".into(),
        payload: br#"{"name":"hits","by":1}"#.to_vec(),
        session: Some(pb::Session {
            client: "alice".into(),
            seq: 1,
        }),
    };
    let mut api = cluster.nodes[0].api().await;
    assert_eq!(api.call(add.clone()).await.unwrap().into_inner().result, b"1");
    snapshot_on(&cluster.nodes[0]).await;

    let at = add_learner(&mut cluster, 2).await;
    installed(&cluster.nodes[at], Duration::from_secs(60)).await;
    let out = cluster.cli(&["cluster", "change-membership", "1", "2"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.cli(&["cluster", "transfer-leader", "2"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let new = &cluster.nodes[at];
    eventually("node 2 to lead", Duration::from_secs(20), || async {
        (new.status().await?.leader_id == Some(2)).then_some(())
    })
    .await;
    let mut api = new.api().await;
    assert_eq!(api.call(add).await.unwrap().into_inner().result, b"1");
    assert_same_digests(&cluster.converged().await);
}
