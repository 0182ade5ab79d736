//! `/metrics`: a 3-node cluster (in this process) under writes; the text parses as Prometheus
//! exposition and the counters move as the load implies.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use wasmraft_node::pb::Consistency;
use wasmraft_node::{Node, NodeConfig};

async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let body = common::metrics_text(addr).await;
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of `name` with `labels` (all of them must match), if scraped.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// How many observations the histogram `name` with `labels` counted.
fn observed(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map(|b| b.count),
            _ => None,
        })
        .unwrap_or(0.0)
}

/// How many queries at `consistency` the latency histogram counted.
fn queries(scrape: &prometheus_parse::Scrape, consistency: &str) -> f64 {
    observed(scrape, "wasmraft_query_seconds", &[("consistency", consistency)])
}

/// Three nodes in this process, each serving its metrics, initialized as one cluster.
async fn cluster(dir: &std::path::Path) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut config = NodeConfig::new(id, SocketAddr::from(([127, 0, 0, 1], 0)), dir.join(format!("n{id}")));
        config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        nodes.push(Node::start(config).await.unwrap());
    }
    let members: BTreeMap<u64, String> = nodes.iter().map(|n| (n.id(), n.addr().to_string())).collect();
    nodes[0].inner.initialize(members).await.unwrap();
    nodes
}

/// [`cluster`] with the kv plugin deployed, and where its leader is in the `Vec`.
async fn kv_cluster(dir: &std::path::Path) -> (Vec<Node>, usize) {
    let nodes = cluster(dir).await;
    let out = common::cli_at(nodes[0].addr(), &["deploy", "kv", wasmraft::plugins::KV]).await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    let leader = common::eventually("a leader", Duration::from_secs(10), || async {
        nodes[0].current_leader()
    })
    .await;
    let leader = nodes.iter().position(|n| n.id() == leader).unwrap();
    (nodes, leader)
}

type ApiClient = wasmraft_node::pb::api_client::ApiClient<tonic::transport::Channel>;

/// A client of `node`'s API.
async fn client_of(node: &Node) -> ApiClient {
    ApiClient::connect(node.addr().to_string()).await.unwrap()
}

/// Batches of writes `node` has proposed to Raft (its `write_batch_writes` histogram's count).
async fn write_batches(node: &Node) -> f64 {
    observed(
        &scrape(node.metrics_addr().unwrap()).await,
        "wasmraft_write_batch_writes",
        &[],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_fsyncs_applied_entries_and_plugin_errors_by_kind_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path()).await;
    let addr = nodes[0].addr().to_string();
    for (name, path) in [
        ("kv", wasmraft::plugins::KV),
        ("panics", wasmraft::plugins::HOSTILE_PANIC),
    ] {
        let out = common::cli_at(&addr, &["deploy", name, path]).await;
        assert!(out.status.success(), "{}", common::stderr(&out));
    }
    let mut api = wasmraft_node::pb::api_client::ApiClient::connect(addr.clone())
        .await
        .unwrap();
    for i in 0..20 {
        common::call(&mut api, "kv", &format!(r#"{{"op":"put","key":"k{i}","value":"v"}}"#))
            .await
            .unwrap();
    }
    assert!(common::call(&mut api, "kv", r#"{"op":"nope"}"#).await.is_err());
    assert!(common::call(&mut api, "panics", r#""attack""#).await.is_err());

    for consistency in [Consistency::Linearizable, Consistency::Linearizable, Consistency::Local] {
        common::query(&mut api, "kv", r#"{"op":"get","key":"k1"}"#, consistency)
            .await
            .unwrap();
    }
    let first = scrape(nodes[0].metrics_addr().unwrap()).await;
    assert_eq!(queries(&first, "LINEARIZABLE"), 2.0, "{:?}", first.samples);
    assert_eq!(queries(&first, "LOCAL"), 1.0);

    let leader = nodes[0].current_leader().unwrap();
    let last = nodes[0].last_log_id().1;
    for node in &nodes {
        let addr = node.metrics_addr().unwrap();
        let scrape = common::eventually("the node to apply everything", Duration::from_secs(10), || async move {
            let scrape = scrape(addr).await;
            (value(&scrape, "wasmraft_applied_index", &[]) >= Some(last as f64)).then_some(scrape)
        })
        .await;
        let id = node.id();
        assert!(
            value(&scrape, "wasmraft_entries_applied_total", &[("plugin", "kv")]) >= Some(21.0),
            "node {id}: {:?}",
            scrape.samples
        );
        assert_eq!(
            value(
                &scrape,
                "wasmraft_plugin_errors_total",
                &[("plugin", "kv"), ("kind", "returned")]
            ),
            Some(1.0),
            "node {id}"
        );
        assert_eq!(
            value(
                &scrape,
                "wasmraft_plugin_errors_total",
                &[("plugin", "panics"), ("kind", "panic")]
            ),
            Some(1.0),
            "node {id}"
        );
        let fsyncs = value(&scrape, "wasmraft_log_fsyncs_total", &[]).unwrap_or(0.0);
        let appends = value(&scrape, "wasmraft_log_fsync_appends_total", &[]).unwrap_or(0.0);
        assert!(
            fsyncs >= 1.0 && appends >= fsyncs,
            "node {id}: {fsyncs} fsyncs, {appends} appends"
        );
        let leads = if id == leader { 1.0 } else { 0.0 };
        assert_eq!(value(&scrape, "wasmraft_is_leader", &[]), Some(leads), "node {id}");
        let role = if id == leader { "leader" } else { "follower" };
        assert_eq!(
            value(&scrape, "wasmraft_role", &[("role", role)]),
            Some(1.0),
            "node {id}"
        );

        // Every applied entry's fuel is counted, in batches of at least one entry.
        let kv = [("plugin", "kv")];
        let kv_entries = value(&scrape, "wasmraft_entries_applied_total", &kv).unwrap();
        assert_eq!(observed(&scrape, "wasmraft_entry_fuel", &kv), kv_entries, "node {id}");
        let calls = value(&scrape, "wasmraft_apply_calls_total", &kv).unwrap();
        assert_eq!(observed(&scrape, "wasmraft_apply_seconds", &kv), calls, "node {id}");
        assert!(calls >= 1.0 && calls <= kv_entries, "node {id}: {calls} calls");
        let batches = observed(&scrape, "wasmraft_apply_batch_entries", &[]);
        assert!(batches >= 1.0 && batches <= last as f64, "node {id}: {batches} batches");

        // Both plugins are active here, at the same index on every node, and compiled.
        for plugin in ["kv", "panics"] {
            assert!(
                value(&scrape, "wasmraft_plugin_active", &[("plugin", plugin)]) > Some(0.0),
                "node {id}: {plugin}"
            );
        }
        assert_eq!(value(&scrape, "wasmraft_compiles", &[("state", "failed")]), Some(0.0));
        // Activated components leave the compiler: nothing is left compiling.
        assert_eq!(
            value(&scrape, "wasmraft_compiles", &[("state", "compiling")]),
            Some(0.0)
        );
        assert!(value(&scrape, "wasmraft_rocksdb_memtable_bytes", &[("family", "log")]) > Some(0.0));
        assert!(value(&scrape, "wasmraft_rocksdb_sst_bytes", &[("family", "data")]).is_some());
    }

    // gRPC: node 1 served the calls, and followers served the leader's appends.
    let on_first = scrape(nodes[0].metrics_addr().unwrap()).await;
    let call = "/wasmraft.v1.Api/Call";
    assert!(
        value(
            &on_first,
            "wasmraft_grpc_requests_total",
            &[("method", call), ("code", "Ok")]
        ) >= Some(20.0),
        "{:?}",
        on_first.samples
    );
    // A plugin's error reaches its client as FAILED_PRECONDITION.
    assert_eq!(
        value(
            &on_first,
            "wasmraft_grpc_requests_total",
            &[("method", call), ("code", "FailedPrecondition")]
        ),
        Some(2.0)
    );
    assert!(observed(&on_first, "wasmraft_grpc_seconds", &[("method", call)]) >= 22.0);
    let follower = nodes.iter().find(|n| n.id() != leader).unwrap();
    let on_follower = scrape(follower.metrics_addr().unwrap()).await;
    assert!(
        value(
            &on_follower,
            "wasmraft_grpc_requests_total",
            &[("method", "/wasmraft.v1.Peer/StreamAppend"), ("code", "Ok")]
        ) >= Some(1.0),
        "{:?}",
        on_follower.samples
    );

    // Calls and queries on a `Pipeline` stream count as calls and queries.
    let ok = |scrape: &prometheus_parse::Scrape, method| {
        value(
            scrape,
            "wasmraft_grpc_requests_total",
            &[("method", method), ("code", "Ok")],
        )
        .unwrap_or(0.0)
    };
    let query = "/wasmraft.v1.Api/Query";
    let (calls_before, queries_before) = (ok(&on_first, call), ok(&on_first, query));
    let requests: Vec<_> = (0..4)
        .map(|id| {
            use wasmraft_node::pb;
            let op = match id {
                0 => pb::pipeline_request::Op::Query(pb::QueryRequest {
                    plugin: "kv".into(),
                    request: br#"{"op":"get","key":"k1"}"#.to_vec(),
                    consistency: Consistency::Local as i32,
                    shadow: false,
                }),
                _ => pb::pipeline_request::Op::Call(pb::CallRequest {
                    plugin: "kv".into(),
                    payload: format!(r#"{{"op":"put","key":"p{id}","value":"v"}}"#).into_bytes(),
                    session: None,
                }),
            };
            pb::PipelineRequest { id, op: Some(op) }
        })
        .collect();
    let mut replies = api.pipeline(tokio_stream::iter(requests)).await.unwrap().into_inner();
    while replies.message().await.unwrap().is_some() {}
    let after = scrape(nodes[0].metrics_addr().unwrap()).await;
    assert_eq!(ok(&after, call), calls_before + 3.0, "{:?}", after.samples);
    assert_eq!(ok(&after, query), queries_before + 1.0);

    // A snapshot build (on node 1, which was asked) is timed and its bytes counted.
    let built = api
        .snapshot(wasmraft_node::pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let on_first = scrape(nodes[0].metrics_addr().unwrap()).await;
    let build = [("phase", "build")];
    assert_eq!(observed(&on_first, "wasmraft_snapshot_seconds", &build), 1.0);
    assert_eq!(
        value(&on_first, "wasmraft_snapshot_bytes_total", &build),
        Some(built.file_bytes as f64)
    );
    assert_eq!(value(&on_first, "wasmraft_snapshots_built_total", &[]), Some(1.0));

    // Every metric the Grafana dashboard queries is one a node serves (once it built a snapshot).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana.json")).unwrap(),
    )
    .unwrap();
    let served: std::collections::BTreeSet<&str> = on_first.samples.iter().map(|s| s.metric.as_str()).collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("wasmraft_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                assert!(
                    served.contains(name.as_str()) || served.contains(base),
                    "the dashboard's panel {:?} queries {name}, which no node serves",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried > 20, "{queried} metric references in the dashboard");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// Reads in flight at a follower share their asks of the leader for a read index (each ask sent
/// after all of its reads arrived): 200 linearizable reads sent at once cost the leader far fewer
/// `ReadIndex` calls, and every one of them sees the write acknowledged before it, as do the lease
/// reads after the next write.
#[tokio::test(flavor = "multi_thread")]
async fn reads_in_flight_at_a_follower_share_read_index_asks_and_each_sees_every_acknowledged_write() {
    use wasmraft_node::pb;
    let dir = tempfile::tempdir().unwrap();
    let (nodes, leader) = kv_cluster(dir.path()).await;
    let (leader, follower) = (&nodes[leader], &nodes[(leader + 1) % nodes.len()]);
    let mut to_leader = client_of(leader).await;
    let mut to_follower = client_of(follower).await;
    let read_index_calls = || async {
        let scrape = scrape(leader.metrics_addr().unwrap()).await;
        let method = "/wasmraft.v1.Peer/ReadIndex";
        value(
            &scrape,
            "wasmraft_grpc_requests_total",
            &[("method", method), ("code", "Ok")],
        )
        .unwrap_or(0.0)
    };
    for (value, consistency) in [("v1", Consistency::Linearizable), ("v2", Consistency::Lease)] {
        let put = format!(r#"{{"op":"put","key":"k","value":"{value}"}}"#);
        common::call(&mut to_leader, "kv", &put).await.unwrap();
        let before = read_index_calls().await;
        let requests: Vec<_> = (0..200)
            .map(|id| pb::PipelineRequest {
                id,
                op: Some(pb::pipeline_request::Op::Query(pb::QueryRequest {
                    plugin: "kv".into(),
                    request: br#"{"op":"get","key":"k"}"#.to_vec(),
                    consistency: consistency as i32,
                    shadow: false,
                })),
            })
            .collect();
        let answers = common::pipelined(&mut to_follower, requests).await;
        for (id, answer) in &answers {
            match answer {
                pb::pipeline_reply::Outcome::Query(answer) => {
                    let expected = format!(r#"{{"value":"{value}"}}"#);
                    assert_eq!(String::from_utf8_lossy(&answer.result), expected, "read {id}");
                }
                other => panic!("read {id}: {other:?}"),
            }
        }
        assert_eq!(answers.len(), 200);
        let asks = read_index_calls().await - before;
        assert!(
            (1.0..=100.0).contains(&asks),
            "{consistency:?}: 200 reads at the follower asked the leader {asks} times"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_past_sixteen_in_flight_wait_for_a_batch_and_go_to_raft_together_each_its_own_entry() {
    use wasmraft_node::pb::{self, pipeline_reply::Outcome, pipeline_request::Op};
    let dir = tempfile::tempdir().unwrap();
    let (nodes, leader) = kv_cluster(dir.path()).await;
    let leader = &nodes[leader];
    let mut api = client_of(leader).await;
    let before = write_batches(leader).await;
    let requests: Vec<_> = (0..200)
        .map(|id| pb::PipelineRequest {
            id,
            op: Some(Op::Call(pb::CallRequest {
                plugin: "kv".into(),
                payload: format!(r#"{{"op":"put","key":"k{id}","value":"{id}"}}"#).into_bytes(),
                session: None,
            })),
        })
        .collect();
    let mut indexes = std::collections::BTreeSet::new();
    for (id, answer) in common::pipelined(&mut api, requests).await {
        match answer {
            Outcome::Call(call) => {
                assert_eq!(call.result, br#"{"previous":null}"#, "write {id}");
                indexes.insert(call.index);
            }
            other => panic!("write {id}: {other:?}"),
        }
    }
    assert_eq!(indexes.len(), 200, "each write is its own entry");
    let proposed = write_batches(leader).await - before;
    // One by one, 200 writes would be 200 batches; at most 16 go alone before the rest wait.
    assert!(
        (1.0..=100.0).contains(&proposed),
        "200 writes in flight went to Raft in {proposed} batches"
    );
    let value = common::query(
        &mut api,
        "kv",
        r#"{"op":"get","key":"k199"}"#,
        Consistency::Linearizable,
    )
    .await
    .unwrap();
    assert_eq!(value, r#"{"value":"199"}"#);
}

/// A node busy with queries is short of CPU, not of writes: a few writers' writes, which alone
/// would each go to Raft at once, wait for the batch in flight and share the next one.
#[tokio::test(flavor = "multi_thread")]
async fn a_few_writers_on_a_leader_busy_with_queries_share_batches() {
    use wasmraft_node::pb::{self, pipeline_request::Op};
    let dir = tempfile::tempdir().unwrap();
    let (nodes, leader) = kv_cluster(dir.path()).await;
    let leader = &nodes[leader];
    // Two streams of 256 queries in flight each, again and again until the writers are done.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (mut api, writing) = (client_of(leader).await, writing.clone());
        readers.push(tokio::spawn(async move {
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let queries = (0..256)
                    .map(|id| pb::PipelineRequest {
                        id,
                        op: Some(Op::Query(pb::QueryRequest {
                            plugin: "kv".into(),
                            request: br#"{"op":"get","key":"k"}"#.to_vec(),
                            consistency: Consistency::Lease as i32,
                            shadow: false,
                        })),
                    })
                    .collect();
                assert_eq!(common::pipelined(&mut api, queries).await.len(), 256);
            }
        }));
    }
    let before = write_batches(leader).await;
    // Four writers, one write in flight each: never 16 writes in flight.
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut api = client_of(leader).await;
        writers.push(tokio::spawn(async move {
            for n in 0..25 {
                let put = format!(r#"{{"op":"put","key":"w{w}-{n}","value":"v"}}"#);
                common::call(&mut api, "kv", &put).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let proposed = write_batches(leader).await - before;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    // Idle, each of the 100 writes would be a batch of its own.
    assert!(
        (1.0..=90.0).contains(&proposed),
        "100 writes beside the queries went to Raft in {proposed} batches"
    );
}

/// A write's commit reaches the followers on the next write's append instead of an append of
/// its own (`raft/coalesce.rs`): sequential writes cost each follower one append message, not
/// two (entries, then commit).
#[tokio::test(flavor = "multi_thread")]
async fn the_next_write_carries_the_last_ones_commit_so_each_costs_one_append_per_follower() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, leader) = kv_cluster(dir.path()).await;
    let mut api = client_of(&nodes[leader]).await;
    let before = appends_sent(&mut api).await;
    let writes = 100;
    for i in 0..writes {
        common::call(&mut api, "kv", &format!(r#"{{"op":"put","key":"c{i}","value":"v"}}"#))
            .await
            .unwrap();
    }
    let per_write = (appends_sent(&mut api).await - before) as f64 / writes as f64;
    // 2 followers x 1, plus the heartbeats (every 100 ms) and the last write's own commit.
    assert!(
        per_write < 3.0,
        "{per_write:.2} append messages per write to the 2 followers"
    );
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// Append messages the node behind `api` has sent its peers (heartbeats included).
async fn appends_sent(api: &mut ApiClient) -> u64 {
    let status = api
        .cluster_status(wasmraft_node::pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    status.usage.unwrap().peer_appends
}
