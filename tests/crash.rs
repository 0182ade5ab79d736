//! End-to-end: nodes SIGKILLed while they apply a steady load restart consistent: no entry is
//! lost and none is applied twice.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Cluster, call, eventually, query};
use wasmraft_node::pb::{self, Consistency};

#[tokio::test(flavor = "multi_thread")]
async fn an_apply_interrupted_by_a_crash_is_neither_lost_nor_doubled() {
    let mut cluster = Cluster::start_with_kv(3).await;
    cluster.deploy("counter", wasmraft::plugins::COUNTER).await;
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();

    // Clients increment one counter through every node. Each acknowledged increment returns the
    // counter's new value: the values must be distinct, the final count must cover every
    // acknowledged increment (none lost), and must not exceed the increments that may have been
    // committed (none applied twice).
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for endpoint in endpoints.clone() {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                let Ok(channel) = tonic::transport::Endpoint::from_shared(endpoint.clone())
                    .unwrap()
                    .connect()
                    .await
                else {
                    // The node is down: nothing was sent.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let mut api = pb::api_client::ApiClient::new(channel);
                while !stop.load(Ordering::Relaxed) {
                    match call(&mut api, "counter", r#"{"name":"n"}"#).await {
                        Ok(value) => acked.push(value.parse::<i64>().expect("counter value")),
                        Err(status) if status.code() == tonic::Code::Unavailable => {
                            // Not sent or refused before the log: no effect; reconnect.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            break;
                        }
                        Err(_) => {
                            failed += 1; // outcome unknown: it may or may not have committed
                            break;
                        }
                    }
                }
            }
            (acked, failed)
        }));
    }

    // Crash a follower, then the leader, each in the middle of the load, and bring them back.
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let leader = cluster.leader().await;
        let victim = if round == 0 {
            cluster.nodes.iter().find(|n| n.id != leader).unwrap().id
        } else {
            leader
        };
        cluster.node(victim).kill();
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.node(victim).start();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut acked, mut unknown) = (Vec::new(), 0);
    for client in clients {
        let (a, f) = client.await.unwrap();
        acked.extend(a);
        unknown += f;
    }
    assert!(
        acked.len() > 20,
        "the load barely ran: {} acknowledged increments",
        acked.len()
    );
    let distinct: BTreeSet<i64> = acked.iter().copied().collect();
    assert_eq!(distinct.len(), acked.len(), "two increments returned the same value");

    let digests = cluster.converged().await;
    assert!(
        digests.iter().all(|(_, _, d)| *d == digests[0].2),
        "replicas diverged: {digests:?}"
    );
    let api = cluster.nodes[0].api().await;
    let answer = eventually("a linearizable read", Duration::from_secs(10), || {
        let mut api = api.clone();
        async move {
            query(&mut api, "counter", r#"{"name":"n"}"#, Consistency::Linearizable)
                .await
                .ok()
        }
    })
    .await;
    let value: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let final_value = value["value"].as_i64().unwrap();
    let max_acked = *distinct.last().unwrap();
    assert!(
        final_value >= max_acked,
        "acknowledged increments lost: {final_value} < {max_acked}"
    );
    assert!(
        final_value <= acked.len() as i64 + unknown as i64,
        "increments applied twice: the counter is {final_value} after {} acknowledged and {unknown} unknown",
        acked.len()
    );
    for node in &cluster.nodes {
        let mut api = node.api().await;
        let local = query(&mut api, "counter", r#"{"name":"n"}"#, Consistency::Local)
            .await
            .unwrap();
        assert_eq!(local, answer, "node {} disagrees", node.id);
    }
}
