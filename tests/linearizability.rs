//! Linearizability, checked (the short form of `wasmraft chaos`, in process). Concurrent clients
//! put, read (linearizable) and compare-and-swap a few keys through every node of an in-process
//! cluster while a seeded nemesis faults a node's links (silent, dropped, delayed, duplicated,
//! deaf; both ways or one) and heals them, again and again. The recorded history is checked per
//! key with Porcupine's algorithm (`wasmraft::linearizability`). These clients use no sessions, so
//! a write whose outcome is unknown stays open to the end of the history, as Porcupine expects.
//!
//! The second test proves the checker can fail: a node with the test-only failpoint
//! `read-skips-read-index` answers linearizable reads from its own state, and a read it serves
//! while cut off is caught.

mod common;

use common::in_process::{heal, set_links, silence};

use std::sync::Arc;
use std::time::Duration;

use wasmraft::linearizability::{Client, History, Op, reply_text};
use wasmraft::workload::SplitMix;
use wasmraft_node::pb::{self, Consistency, api_client::ApiClient};
use wasmraft_node::{LinkFault, Node};

/// How long the checker may take per key.
const CHECK_LIMIT: Duration = Duration::from_secs(60);

async fn start(dir: &std::path::Path, failpoint_node: Option<u64>) -> Vec<Node> {
    let nodes = common::in_process::start(3, dir, |config| {
        config.test_read_skips_read_index = failpoint_node == Some(config.id);
    })
    .await;
    let addr = loop {
        if let Some(leader) = nodes[0].current_leader() {
            break nodes[leader as usize - 1].addr().to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out = common::cli_at(&addr, &["deploy", "kv", wasmraft::plugins::KV]).await;
    assert!(out.status.success(), "deploy: {}", common::stderr(&out));
    nodes
}

/// What one schedule did.
struct Run {
    checked: usize,
    unknown: usize,
    cuts: usize,
}

/// One seeded schedule: 6 clients, 100 operations each on 3 keys, through random nodes, while a
/// nemesis faults a node's links (the leader's, or with the seed's odds a follower's), both ways
/// or one, for 0.8-2 s at a time: silent, dropped, delayed, duplicated or deaf.
/// The seed picks the clients' operations, the cut lengths and the victims; thread timing is not
/// seeded, so a failing seed is a strong hint, not an exact replay.
async fn schedule(seed: u64) -> Result<Run, String> {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(dir.path(), None).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
    let history = History::new();
    let keys: Vec<String> = (0..3).map(|k| format!("k{k}")).collect();
    let clients: Vec<_> = (0..6)
        .map(|id| {
            let client = Client {
                id: id + 100 * seed as u32,
                addrs: addrs.clone(),
                keys: keys.clone(),
                seed: seed * 1000 + u64::from(id),
                ops: 100,
                until: None,
                timeout: Duration::from_secs(6),
                // Unknown outcomes stay open: Porcupine's way, tested here.
                sessions: None,
            };
            tokio::spawn(client.run(history.clone()))
        })
        .collect();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cuts = 0;
    let nemesis = {
        let done = &done;
        let cuts = &mut cuts;
        let nodes = &nodes;
        async move {
            let mut rng = SplitMix(seed);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
                let victim = match (rng.below(4), nodes[0].current_leader()) {
                    (0, _) | (_, None) => rng.below(3) + 1,
                    (_, Some(leader)) => leader,
                };
                // The fault, per link and direction: the victim's links both ways or only what it
                // sends, silent (packets dropped), dropped (connections reset), delayed, or
                // duplicated.
                let fault = match rng.below(6) {
                    0 | 1 => LinkFault {
                        silent: true,
                        ..LinkFault::default()
                    },
                    2 => LinkFault {
                        drop: true,
                        ..LinkFault::default()
                    },
                    3 => LinkFault {
                        delay: Duration::from_millis(50 + rng.below(250)),
                        ..LinkFault::default()
                    },
                    4 => LinkFault {
                        duplicate: true,
                        delay: Duration::from_millis(rng.below(30)),
                        ..LinkFault::default()
                    },
                    _ => LinkFault {
                        deaf: true,
                        ..LinkFault::default()
                    },
                };
                set_links(nodes, victim, fault, rng.below(3) != 0);
                *cuts += 1;
                tokio::time::sleep(Duration::from_millis(800 + rng.below(1200))).await;
                heal(nodes);
            }
        }
    };
    let workload = async {
        for c in clients {
            c.await.unwrap().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    tokio::join!(workload, nemesis);
    heal(&nodes);
    for node in nodes {
        node.shutdown().await.unwrap();
    }
    let checked = history.check(CHECK_LIMIT)?;
    Ok(Run {
        checked,
        unknown: history.unknown(),
        cuts,
    })
}

/// The short form of the chaos runs: 20 seeded schedules, every history checked.
#[tokio::test(flavor = "multi_thread")]
async fn histories_under_cuts_and_heals_are_linearizable_for_20_seeded_schedules() {
    let (mut checked, mut unknown, mut cuts) = (0, 0, 0);
    for seed in 1..=20 {
        let run = schedule(seed)
            .await
            .unwrap_or_else(|violation| panic!("seed {seed}: not linearizable: {violation}"));
        assert!(
            run.checked >= 300,
            "seed {seed}: only {} operations completed",
            run.checked
        );
        checked += run.checked;
        unknown += run.unknown;
        cuts += run.cuts;
    }
    println!(
        "schedules: 20, ops checked: {checked} ({unknown} of unknown outcome), faults: {cuts} link faults, violations: 0"
    );
    assert!(cuts >= 20, "only {cuts} link faults in 20 schedules");
}

/// The checker catches a stale read: node 1 answers linearizable reads from its own state
/// (test-only failpoint); cut off, it still answers, after the others wrote a new value.
#[tokio::test(flavor = "multi_thread")]
async fn the_checker_catches_a_node_that_reads_without_a_read_index() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(dir.path(), Some(1)).await;
    let history = History::new();
    let mut api: Vec<ApiClient<_>> = Vec::new();
    for node in &nodes {
        api.push(ApiClient::connect(node.addr().to_string()).await.unwrap());
    }
    let put = |value: &str| pb::CallRequest {
        plugin: "kv".into(),
        payload: format!(r#"{{"op":"put","key":"k","value":"{value}"}}"#).into_bytes(),
        session: None,
    };
    let call = history.now();
    let reply = api[0].call(put("old")).await.unwrap().into_inner();
    let previous = reply_text(&reply.result, "previous");
    history.record(
        0,
        call,
        Some(history.now()),
        "k",
        Op::Put {
            value: "old".into(),
            previous: Some(previous),
        },
    );
    // Once node 1 applied it, cut it off.
    common::eventually("node 1 to apply the put", Duration::from_secs(10), || async {
        (nodes[0].inner.status().applied_index >= Some(reply.index)).then_some(())
    })
    .await;
    silence(&nodes, &[1]);
    let written = common::eventually("the others to write", Duration::from_secs(20), || {
        let mut api = api[1].clone();
        let history = history.clone();
        async move {
            let call = history.now();
            let reply = api.call(put("new")).await.ok()?.into_inner().result;
            let previous = reply_text(&reply, "previous");
            Some((call, history.now(), previous))
        }
    })
    .await;
    history.record(
        1,
        written.0,
        Some(written.1),
        "k",
        Op::Put {
            value: "new".into(),
            previous: Some(written.2),
        },
    );
    let call = history.now();
    let reply = api[0]
        .query(pb::QueryRequest {
            plugin: "kv".into(),
            request: br#"{"op":"get","key":"k"}"#.to_vec(),
            consistency: Consistency::Linearizable as i32,
            shadow: false,
        })
        .await
        .expect("the failpoint answers without a quorum")
        .into_inner()
        .result;
    let value = reply_text(&reply, "value");
    assert_eq!(
        value.as_deref(),
        Some("old"),
        "the failpoint did not serve a stale read"
    );
    history.record(0, call, Some(history.now()), "k", Op::Get { value });
    heal(&nodes);
    let violation = history
        .check(CHECK_LIMIT)
        .expect_err("the checker accepted a stale read");
    assert!(violation.contains("key k: Illegal"), "{violation}");
    println!("caught, as it must be:\n{violation}");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// The bank's invariant: five accounts opened with 100 each, then transfers between them from 6
/// clients through every node while the nemesis cuts and heals nodes. Transfers only move money,
/// so every node's total, read at any moment from its own state, is 500; at the end the replicas
/// agree.
#[tokio::test(flavor = "multi_thread")]
async fn a_banks_total_never_changes_on_any_node_under_cuts_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(dir.path(), None).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
    let out = common::cli_at(&addrs[0], &["deploy", "bank", wasmraft::plugins::BANK]).await;
    assert!(out.status.success(), "deploy: {}", common::stderr(&out));
    let mut api = ApiClient::connect(addrs[0].clone()).await.unwrap();
    for account in 0..5 {
        let open = format!(r#"{{"op":"open","account":"a{account}","balance":100}}"#);
        common::call(&mut api, "bank", &open).await.unwrap();
    }
    let total = |addr: String| async move {
        let mut api = ApiClient::connect(addr).await.ok()?;
        common::query(&mut api, "bank", r#"{"op":"total"}"#, Consistency::Local)
            .await
            .ok()
    };
    for addr in &addrs {
        common::eventually("every node to open the accounts", Duration::from_secs(10), || {
            let total = total(addr.clone());
            async move { (total.await.as_deref() == Some("500")).then_some(()) }
        })
        .await;
    }

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let transfers: Vec<_> = (0..6u64)
        .map(|c| {
            let addrs = addrs.clone();
            tokio::spawn(async move {
                let mut apis = Vec::new();
                for addr in &addrs {
                    apis.push(ApiClient::connect(addr.clone()).await.unwrap());
                }
                let mut rng = SplitMix(c + 1);
                for _ in 0..250 {
                    let (from, to) = (rng.below(5), rng.below(5));
                    let transfer = format!(
                        r#"{{"op":"transfer","from":"a{from}","to":"a{to}","amount":{}}}"#,
                        rng.below(60)
                    );
                    let api = &mut apis[rng.below(3) as usize];
                    let _ = tokio::time::timeout(Duration::from_secs(6), common::call(api, "bank", &transfer)).await;
                }
            })
        })
        .collect();
    let readers: Vec<_> = addrs
        .iter()
        .map(|addr| {
            let (addr, done) = (addr.clone(), done.clone());
            tokio::spawn(async move {
                let mut api = ApiClient::connect(addr.clone()).await.unwrap();
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let read = common::query(&mut api, "bank", r#"{"op":"total"}"#, Consistency::Local).await;
                    let total = read.unwrap_or_else(|e| panic!("{addr}: {e:?}"));
                    assert_eq!(total, "500", "{addr} saw the total move");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let nemesis = async {
        let mut rng = SplitMix(7);
        let mut cuts = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(300 + rng.below(500))).await;
            silence(&nodes, &[nodes[0].current_leader().unwrap_or(1)]);
            cuts += 1;
            tokio::time::sleep(Duration::from_millis(800 + rng.below(800))).await;
            heal(&nodes);
        }
        cuts
    };
    let workload = async {
        for t in transfers {
            t.await.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let ((), cuts) = tokio::join!(workload, nemesis);
    heal(&nodes);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    for addr in &addrs {
        common::eventually("the node to catch up", Duration::from_secs(20), || {
            let total = total(addr.clone());
            async move { (total.await.as_deref() == Some("500")).then_some(()) }
        })
        .await;
    }
    let last = nodes.iter().map(|n| n.last_log_id().1).max().unwrap();
    let digests = common::eventually("the replicas to converge", Duration::from_secs(20), || async {
        let status: Vec<_> = nodes.iter().map(|n| n.inner.status()).collect();
        let at = |s: &pb::ClusterStatusResponse| (s.digest_index, s.state_digest.clone());
        (status.iter().all(|s| s.digest_index >= last && at(s) == at(&status[0]))).then_some(at(&status[0]))
    })
    .await;
    println!(
        "bank: {reads} totals read during {cuts} cuts, all 500; replicas agree at index {}",
        digests.0
    );
    assert!(cuts >= 2 && reads >= 30, "{cuts} cuts, {reads} reads");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
