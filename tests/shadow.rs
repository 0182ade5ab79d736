//! Shadow runs over real node processes: a candidate version applies every call beside the active
//! one, its results compared and never returned; `plugins shadow` reports exactly the entries
//! where it differs, on every node, through restarts and snapshots; `promote` makes it serve.
//! A hostile candidate is stopped at its first attack and changes nothing the active plugin
//! answers.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Cluster, eventually};
use serde_json::Value;
use wasmraft_node::pb::{self, Consistency};

/// `plugins shadow NAME --json`: each node's view.
async fn shadow_view(cluster: &Cluster, name: &str) -> Vec<Value> {
    let out = cluster.cli(&["plugins", "shadow", name, "--json"]).await;
    assert!(out.status.success(), "plugins shadow: {}", common::stderr(&out));
    let view: Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    view["nodes"].as_array().unwrap().clone()
}

/// Asks kv's shadow candidate `request`.
async fn query_shadow(
    api: &mut pb::api_client::ApiClient<tonic::transport::Channel>,
    request: &str,
    consistency: Consistency,
) -> pb::QueryResponse {
    let req = pb::QueryRequest {
        plugin: "kv".into(),
        request: request.as_bytes().to_vec(),
        consistency: consistency as i32,
        shadow: true,
    };
    api.query(req).await.unwrap().into_inner()
}

fn deploy_shadow(path: &str) -> [&str; 5] {
    ["deploy", "kv", path, "--shadow", "--label"]
}

/// Calls `payload` through node `i % n`, returning the entry's index.
async fn call_at(cluster: &Cluster, i: usize, payload: &str) -> u64 {
    let node = &cluster.nodes[i % cluster.nodes.len()];
    let mut api = node.api().await;
    let resp = api
        .call(pb::CallRequest {
            plugin: "kv".into(),
            payload: payload.as_bytes().to_vec(),
            session: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{payload}: {e}"))
        .into_inner();
    resp.index
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_reports_exactly_the_differing_entries_on_every_node_and_promote_serves_it() {
    let mut cluster = Cluster::start_with_kv(3).await;
    let mut args = deploy_shadow(wasmraft::plugins::FIXTURE_KV_DIVERGENT).to_vec();
    args.push("v2");
    let out = cluster.cli(&args).await;
    assert!(out.status.success(), "deploy --shadow: {}", common::stderr(&out));
    assert!(
        common::stdout(&out).contains("shadow from log index"),
        "{}",
        common::stdout(&out)
    );

    // Load from 4 concurrent writers through every node: puts, deletes of keys that exist, and
    // deletes of keys that never existed (the one kind of command v2 answers differently).
    let mut writers = Vec::new();
    for w in 0..4usize {
        let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
        writers.push(tokio::spawn(async move {
            let mut missing = Vec::new();
            let mut calls = 0u64;
            for i in 0..60usize {
                let mut api = pb::api_client::ApiClient::connect(nodes[(w + i) % nodes.len()].clone())
                    .await
                    .unwrap();
                let payload = match i % 3 {
                    0 => format!(r#"{{"op":"put","key":"w{w}-{i}","value":"{i}"}}"#),
                    1 => format!(r#"{{"op":"delete","key":"w{w}-{}"}}"#, i - 1),
                    _ => format!(r#"{{"op":"delete","key":"never-{w}-{i}"}}"#),
                };
                let resp = api
                    .call(pb::CallRequest {
                        plugin: "kv".into(),
                        payload: payload.into_bytes(),
                        session: None,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                calls += 1;
                if i % 3 == 2 {
                    missing.push(resp.index);
                }
                // The active version answers; the candidate's answer never reaches a client.
                if i % 3 == 2 {
                    assert_eq!(String::from_utf8_lossy(&resp.result), r#"{"deleted":false}"#);
                }
            }
            (missing, calls)
        }));
    }
    let mut missing = BTreeSet::new();
    let mut calls = 0;
    for w in writers {
        let (m, c) = w.await.unwrap();
        missing.extend(m);
        calls += c;
    }
    let last = call_at(&cluster, 0, r#"{"op":"put","key":"last","value":"1"}"#).await;
    calls += 1;
    cluster.converged().await;

    let check = |nodes: &[Value], calls: u64, missing: &BTreeSet<u64>| {
        assert_eq!(nodes.len(), 3, "{nodes:?}");
        for node in nodes {
            let shadow = &node["shadow"];
            assert_eq!(shadow["compared"], calls, "node {}: {shadow}", node["id"]);
            assert_eq!(
                shadow["different"],
                missing.len() as u64,
                "node {}: {shadow}",
                node["id"]
            );
            assert_eq!(shadow["equal"], calls - missing.len() as u64);
            assert!(shadow["stopped_index"].is_null());
            let differences = shadow["differences"].as_array().unwrap();
            let indexes: Vec<u64> = differences.iter().map(|d| d["index"].as_u64().unwrap()).collect();
            let expected: Vec<u64> = missing.iter().copied().take(differences.len()).collect();
            assert_eq!(indexes, expected, "node {}: differences at other entries", node["id"]);
            assert_eq!(differences.len(), missing.len().min(20));
            for d in differences {
                assert!(d["payload"].as_str().unwrap().contains(r#""key":"never-"#), "{d}");
                assert_eq!(d["active"], r#"ok: {"deleted":false}"#);
                assert_eq!(d["candidate"], r#"ok: {"deleted":true}"#);
            }
        }
    };
    check(&shadow_view(&cluster, "kv").await, calls, &missing);

    // A restarted node keeps its shadow and goes on comparing.
    cluster.node(2).kill();
    cluster.node(2).start();
    cluster.node(2).serving().await;
    let more = call_at(&cluster, 0, r#"{"op":"delete","key":"never-after-restart"}"#).await;
    missing.insert(more);
    calls += 1;
    cluster.converged().await;
    check(&shadow_view(&cluster, "kv").await, calls, &missing);

    // The candidate answers queries on its own state.
    let mut api = cluster.nodes[0].api().await;
    let read = query_shadow(&mut api, r#"{"op":"get","key":"last"}"#, Consistency::Linearizable).await;
    assert_eq!(String::from_utf8_lossy(&read.result), r#"{"value":"1"}"#);
    assert!(read.applied_index >= last);

    // Promote: v2 serves from the promote index on, on every node, with equal digests.
    let out = cluster.cli(&["plugins", "promote", "kv"]).await;
    assert!(out.status.success(), "promote: {}", common::stderr(&out));
    for (i, node) in cluster.nodes.iter().enumerate() {
        let resp = {
            let mut api = node.api().await;
            api.call(pb::CallRequest {
                plugin: "kv".into(),
                payload: format!(r#"{{"op":"delete","key":"never-promoted-{i}"}}"#).into_bytes(),
                session: None,
            })
            .await
            .unwrap()
            .into_inner()
        };
        assert_eq!(
            String::from_utf8_lossy(&resp.result),
            r#"{"deleted":true}"#,
            "node {}",
            node.id
        );
    }
    let digests = cluster.converged().await;
    assert!(digests.iter().all(|(_, _, d)| *d == digests[0].2), "{digests:?}");
    // The state carried over: a key written while v1 served.
    let value = common::query(
        &mut api,
        "kv",
        r#"{"op":"get","key":"last"}"#,
        Consistency::Linearizable,
    )
    .await
    .unwrap();
    assert_eq!(value, r#"{"value":"1"}"#);
    let out = cluster.cli(&["plugins", "shadow", "kv", "--json"]).await;
    assert!(shadow_view_is_empty(&common::stdout(&out)), "{}", common::stdout(&out));
}

fn shadow_view_is_empty(json: &str) -> bool {
    let view: Value = serde_json::from_str(json).unwrap();
    view["nodes"].as_array().unwrap().iter().all(|n| n["shadow"].is_null())
}

/// A node that joins from a snapshot gets the shadow with it: the same record, the same state.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_carries_the_shadow_to_a_node_that_joins() {
    let mut cluster = Cluster::started(3, "[snapshot]\nkeep_logs = 5\n").await;
    cluster.deploy("kv", wasmraft::plugins::KV).await;
    let mut args = deploy_shadow(wasmraft::plugins::FIXTURE_KV_DIVERGENT).to_vec();
    args.push("v2");
    let out = cluster.cli(&args).await;
    assert!(out.status.success(), "deploy --shadow: {}", common::stderr(&out));
    for i in 0..30usize {
        let payload = match i % 2 {
            0 => format!(r#"{{"op":"put","key":"k{i}","value":"{i}"}}"#),
            _ => format!(r#"{{"op":"delete","key":"never-{i}"}}"#),
        };
        call_at(&cluster, i, &payload).await;
    }
    let leader = cluster.leader().await;
    let out = common::cli_at(&cluster.node(leader).addr.clone(), &["snapshot"]).await;
    assert!(out.status.success(), "snapshot: {}", common::stderr(&out));
    let i = cluster.add_spare_node(4);
    cluster.nodes[i].serving().await;
    let addr = cluster.nodes[i].addr.clone();
    let out = cluster.cli(&["cluster", "add-learner", "4", &addr]).await;
    assert!(out.status.success(), "add-learner: {}", common::stderr(&out));
    cluster.converged().await;
    let installed = cluster.nodes[i].snapshot_status().await.installed;
    assert!(installed >= 1, "node 4 did not join from a snapshot");
    let nodes = shadow_view(&cluster, "kv").await;
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    let first = &nodes[0]["shadow"];
    assert_eq!(first["different"], 15);
    for node in &nodes {
        assert_eq!(&node["shadow"], first, "node {} differs", node["id"]);
    }
    // The learner's candidate has the state too.
    let mut api = cluster.nodes[i].api().await;
    let read = query_shadow(&mut api, r#"{"op":"get","key":"k28"}"#, Consistency::Local).await;
    assert_eq!(String::from_utf8_lossy(&read.result), r#"{"value":"28"}"#);
}

/// Hostile candidates (an endless loop, a memory bomb, a panic) in shadow: each is stopped at its
/// first attack, the same on every node; the active kv answers exactly as before; promote is
/// refused with the reason; drop-shadow clears it.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_candidate_in_shadow_is_stopped_and_the_active_plugin_answers_as_before() {
    let cluster = Cluster::start_with_kv(3).await;
    for (hostile, reason) in [
        (wasmraft::plugins::HOSTILE_LOOP, "fuel exhausted"),
        (wasmraft::plugins::HOSTILE_MEMORY_BOMB, "limit exceeded"),
        (wasmraft::plugins::HOSTILE_PANIC, "panicked"),
    ] {
        let mut args = deploy_shadow(hostile).to_vec();
        args.push("hostile");
        let out = cluster.cli(&args).await;
        assert!(
            out.status.success(),
            "deploy --shadow {hostile}: {}",
            common::stderr(&out)
        );
        let put = call_at(&cluster, 0, r#"{"op":"put","key":"a","value":"before"}"#).await;
        assert!(put > 0);
        // The candidate's attack; kv refuses the command as it always did.
        let mut api = cluster.nodes[1].api().await;
        let attack = common::call(&mut api, "kv", r#""attack""#).await;
        assert!(
            matches!(&attack, Err(s) if s.message().contains("malformed"))
                || matches!(&attack, Ok(r) if r.contains("error")),
            "kv answered the attack differently: {attack:?}"
        );
        let value = common::call(&mut api, "kv", r#"{"op":"put","key":"a","value":"after"}"#)
            .await
            .unwrap();
        assert_eq!(value, r#"{"previous":"before"}"#);
        cluster.converged().await;
        let nodes = eventually("every node to report the stop", Duration::from_secs(20), || async {
            let nodes = shadow_view(&cluster, "kv").await;
            nodes
                .iter()
                .all(|n| !n["shadow"]["stopped_index"].is_null())
                .then_some(nodes)
        })
        .await;
        for node in &nodes {
            let shadow = &node["shadow"];
            assert_eq!(shadow["stopped_index"], nodes[0]["shadow"]["stopped_index"]);
            assert!(
                shadow["stopped_reason"].as_str().unwrap().contains(reason),
                "{hostile}: {shadow}"
            );
        }
        let out = cluster.cli(&["plugins", "promote", "kv"]).await;
        assert!(!out.status.success(), "promoted a stopped shadow");
        assert!(
            common::stderr(&out).contains("stopped at log index"),
            "{}",
            common::stderr(&out)
        );
        let out = cluster.cli(&["plugins", "drop-shadow", "kv"]).await;
        assert!(out.status.success(), "drop-shadow: {}", common::stderr(&out));
    }
    let digests = cluster.converged().await;
    assert!(digests.iter().all(|(_, _, d)| *d == digests[0].2), "{digests:?}");

    // Removing the plugin ends its shadow run too.
    let mut args = deploy_shadow(wasmraft::plugins::FIXTURE_KV_DIVERGENT).to_vec();
    args.push("v2");
    let out = cluster.cli(&args).await;
    assert!(out.status.success(), "deploy --shadow: {}", common::stderr(&out));
    let out = cluster.cli(&["plugins", "remove", "kv", "--yes"]).await;
    assert!(out.status.success(), "remove: {}", common::stderr(&out));
    cluster.converged().await;
    let out = cluster.cli(&["plugins", "shadow", "kv", "--json"]).await;
    assert!(shadow_view_is_empty(&common::stdout(&out)), "{}", common::stdout(&out));
}
