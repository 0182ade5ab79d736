//! Structured logs: node processes run with `WASMRAFT_LOG_FORMAT=json`, and the records of the
//! apply, deploy and snapshot paths carry their span: node id, term and log index.

mod common;

use std::time::Duration;

use common::{Cluster, call, eventually, stderr};
use serde_json::Value;

/// Every JSON record in node `id`'s log (lines that are not JSON fail the test).
fn records(cluster: &Cluster, id: u64) -> Vec<Value> {
    let log = cluster.dir.path().join(format!("node-{id}.log"));
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON record ({e}): {line}")))
        .collect()
}

/// The first record of node `id` whose message starts with `text`, once it is logged.
async fn record(cluster: &Cluster, id: u64, text: &str) -> Value {
    eventually(
        &format!("node {id} to log {text:?}"),
        Duration::from_secs(10),
        || async move {
            records(cluster, id)
                .into_iter()
                .find(|r| r["fields"]["message"].as_str().is_some_and(|m| m.starts_with(text)))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_node_term_and_log_index_on_the_apply_deploy_and_snapshot_paths() {
    let cluster = Cluster::spawn_with_env(3, "", &[("WASMRAFT_LOG_FORMAT", "json")]);
    let mut api = cluster.nodes[0].api().await;
    api.init(wasmraft_node::pb::InitRequest::default()).await.unwrap();
    cluster.leader().await;

    // Deploy through node 1: its deploy span names the node, the plugin and the version.
    cluster.deploy("panics", wasmraft::plugins::HOSTILE_PANIC).await;
    let activated = record(&cluster, 1, "activated").await;
    let span = &activated["span"];
    assert_eq!(span["name"], "deploy", "{activated}");
    assert_eq!(span["node"], 1, "{activated}");
    assert_eq!(span["plugin"], "panics", "{activated}");
    assert_eq!(span["sha256"].as_str().unwrap().len(), 64, "{activated}");
    let index = activated["fields"]["index"].as_u64().unwrap();

    // Every node logs the activation inside the apply span of the batch that holds it.
    for id in 1..=3 {
        let activated = record(&cluster, id, "plugin activated").await;
        let span = &activated["span"];
        assert_eq!(span["name"], "apply", "{activated}");
        assert_eq!(span["node"], id, "{activated}");
        assert!(span["term"].as_u64() >= Some(1), "{activated}");
        assert!(span["first"].as_u64() <= Some(index) && span["last"].as_u64() >= Some(index));
        assert_eq!(activated["fields"]["index"], index, "{activated}");
    }

    // A plugin's own log record (the panic hook's) lands in the apply span on every replica,
    // with the plugin's name and the entry's index.
    let failed = call(&mut api, "panics", r#""attack""#).await.unwrap_err();
    assert!(failed.message().contains("panic"), "{failed:?}");
    for id in 1..=3 {
        let logged = record(&cluster, id, "plugin panicked").await;
        assert_eq!(logged["target"], "wasmraft::plugin", "{logged}");
        assert_eq!(logged["fields"]["plugin"], "panics", "{logged}");
        let entry = logged["fields"]["entry"].as_u64().unwrap();
        let span = &logged["span"];
        assert_eq!(span["name"], "apply", "{logged}");
        assert_eq!(span["node"], id, "{logged}");
        assert!(span["first"].as_u64() <= Some(entry) && span["last"].as_u64() >= Some(entry));
    }

    // A snapshot build on node 2 logs in its span, with the index it covers.
    let out = common::cli_at(&cluster.nodes[1].addr, &["snapshot"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let built = record(&cluster, 2, "snapshot built").await;
    let span = &built["span"];
    assert_eq!(span["name"], "snapshot_build", "{built}");
    assert_eq!(span["node"], 2, "{built}");
    assert!(span["index"].as_u64() > Some(index), "{built}");
    assert!(span["term"].as_u64() >= Some(1), "{built}");
}
