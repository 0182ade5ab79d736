//! `/metrics`: a 3-node cluster (in this process) under writes; the text parses as Prometheus
//! exposition and the counters move as the load implies.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmraft_node::pb::Consistency;
use wasmraft_node::{Node, NodeConfig};

async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
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

/// How many queries at `consistency` the latency histogram counted.
fn queries(scrape: &prometheus_parse::Scrape, consistency: &str) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == "wasmraft_query_seconds" && s.labels.get("consistency") == Some(consistency))
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map(|b| b.count),
            _ => None,
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_fsyncs_applied_entries_and_plugin_errors_by_kind_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut config = NodeConfig::new(
            id,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            dir.path().join(format!("n{id}")),
        );
        config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        nodes.push(Node::start(config).await.unwrap());
    }
    let members: BTreeMap<u64, String> = nodes.iter().map(|n| (n.id(), n.addr().to_string())).collect();
    nodes[0].inner.initialize(members).await.unwrap();
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
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
