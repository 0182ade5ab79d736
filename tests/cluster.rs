//! End-to-end: real `wasmraft node` processes on loopback, the kv plugin deployed through the log.

mod common;

use std::time::Duration;

use common::{Cluster, call, cli_at, eventually, query, status_at, stderr, stdout};
use wasmraft_node::pb::{self, Consistency};

fn put(key: &str, value: &str) -> String {
    format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#)
}

fn get(key: &str) -> String {
    format!(r#"{{"op":"get","key":"{key}"}}"#)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_replicate_writes_and_agree_on_the_state_digest() {
    let cluster = Cluster::start_with_kv(3).await;
    let mut api = cluster.nodes[0].api().await;
    for i in 0..20 {
        call(&mut api, "kv", &put(&format!("k{i}"), &format!("v{i}")))
            .await
            .unwrap();
    }
    let digests = cluster.converged().await;
    assert!(
        digests.iter().all(|(_, _, d)| *d == digests[0].2),
        "replicas diverged: {digests:?}"
    );
    for node in &cluster.nodes {
        let mut api = node.api().await;
        let value = query(&mut api, "kv", &get("k19"), Consistency::Local).await.unwrap();
        assert_eq!(value, r#"{"value":"v19"}"#, "node {}", node.id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_sent_to_a_follower_is_forwarded_to_the_leader() {
    let cluster = Cluster::start_with_kv(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let mut api = follower.api().await;
    call(&mut api, "kv", &put("via-follower", "yes")).await.unwrap();
    // A linearizable read on the follower: the leader confirms, the follower catches up.
    let value = query(&mut api, "kv", &get("via-follower"), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(value, r#"{"value":"yes"}"#);
    let value = query(&mut api, "kv", &get("via-follower"), Consistency::Lease)
        .await
        .unwrap();
    assert_eq!(value, r#"{"value":"yes"}"#);
}

/// Writes sent to a follower share its one forwarding stream to the leader: many in flight at
/// once, each answered with its own entry; and a leader without that stream (an older version,
/// here a failpoint on every node) still takes them, one `Forward` call each.
#[tokio::test(flavor = "multi_thread")]
async fn many_writes_in_flight_through_a_follower_each_get_their_own_entry_even_from_an_older_leader() {
    use pb::pipeline_request::Op;
    for env in [&[][..], &[("WASMRAFT_FAILPOINT", "forward-stream-unimplemented")][..]] {
        let cluster = Cluster::spawn_with_env(3, "", env);
        let mut api = cluster.nodes[0].api().await;
        api.init(pb::InitRequest::default()).await.unwrap();
        let leader = cluster.leader().await;
        cluster.deploy("kv", wasmraft::plugins::KV).await;
        let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
        let mut api = follower.api().await;
        let requests = (0..200)
            .map(|i| pb::PipelineRequest {
                id: i,
                op: Some(Op::Call(pb::CallRequest {
                    plugin: "kv".into(),
                    payload: put(&format!("f{i}"), &i.to_string()).into_bytes(),
                    session: None,
                })),
            })
            .collect();
        let answers = common::pipelined(&mut api, requests).await;
        let mut indexes: Vec<u64> = answers
            .iter()
            .map(|(id, answer)| match answer {
                pb::pipeline_reply::Outcome::Call(call) => {
                    assert_eq!(call.result, br#"{"previous":null}"#, "write {id}");
                    call.index
                }
                other => panic!("write {id} ({env:?}): {other:?}"),
            })
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), 200, "each write is its own entry ({env:?})");
        let value = query(&mut api, "kv", &get("f199"), Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(value, r#"{"value":"199"}"#);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_elects_another_and_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start_with_kv(3).await;
    let old_leader = cluster.leader().await;
    let mut api = cluster.node(old_leader).api().await;
    for i in 0..50 {
        call(&mut api, "kv", &put(&format!("ack{i}"), &i.to_string()))
            .await
            .unwrap();
    }
    cluster.node(old_leader).kill();
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    let mut api = cluster.node(new_leader).api().await;
    for i in 0..50 {
        let value = query(&mut api, "kv", &get(&format!("ack{i}")), Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(value, format!(r#"{{"value":"{i}"}}"#), "acknowledged write ack{i} lost");
    }
    call(&mut api, "kv", &put("after-failover", "1")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_catches_up_on_what_it_missed() {
    let mut cluster = Cluster::start_with_kv(3).await;
    let leader = cluster.leader().await;
    let victim = cluster.nodes.iter().find(|n| n.id != leader).unwrap().id;
    cluster.node(victim).kill();
    let mut api = cluster.node(leader).api().await;
    for i in 0..30 {
        call(&mut api, "kv", &put(&format!("missed{i}"), "x")).await.unwrap();
    }
    cluster.node(victim).start();
    let digests = cluster.converged().await;
    assert!(digests.iter().all(|(_, _, d)| *d == digests[0].2), "{digests:?}");
    let mut api = cluster.node(victim).api().await;
    let value = query(&mut api, "kv", &get("missed29"), Consistency::Local)
        .await
        .unwrap();
    assert_eq!(value, r#"{"value":"x"}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_learner_added_and_promoted_serves_reads() {
    let mut cluster = Cluster::start_with_kv(3).await;
    let mut api = cluster.nodes[0].api().await;
    call(&mut api, "kv", &put("before-learner", "1")).await.unwrap();
    let i = cluster.add_spare_node(4);
    let learner_addr = cluster.nodes[i].addr.clone();
    let endpoint = cluster.nodes[0].addr.clone();
    // The leader checks that node 4 answers at its address.
    cluster.nodes[i].serving().await;

    let out = cli_at(&endpoint, &["cluster", "add-learner", "4", &learner_addr]).await;
    assert!(out.status.success(), "add-learner: {}", stderr(&out));
    let out = cli_at(&endpoint, &["cluster", "change-membership", "1", "2", "3", "4"]).await;
    assert!(out.status.success(), "change-membership: {}", stderr(&out));

    // The new voter may still be catching up: a joint quorum does not wait for it.
    let learner = &cluster.nodes[i];
    eventually("node 4 to see itself a voter", Duration::from_secs(10), || async {
        let status = learner.status().await?;
        status.nodes.iter().any(|n| n.id == 4 && n.voter).then_some(())
    })
    .await;
    let mut api = cluster.nodes[i].api().await;
    let value = query(&mut api, "kv", &get("before-learner"), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(value, r#"{"value":"1"}"#);
    call(&mut api, "kv", &put("from-node-4", "2")).await.unwrap();
}

/// Retry-safe writes: a call sent again with its session (also many times at once, so repeats
/// meet in one apply batch) is applied once and answered with the first result on every
/// replica; the next sequence applies; an older one, or a malformed session, is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_sent_again_with_its_session_is_applied_once_and_answered_with_its_first_result() {
    let cluster = Cluster::started(3, "").await;
    cluster.deploy("counter", wasmraft::plugins::COUNTER).await;
    let mut api = cluster.nodes[0].api().await;
    let add = |client: &str, seq: u64| pb::CallRequest {
        plugin: "counter".into(),
        payload: br#"{"name":"hits","by":1}"#.to_vec(),
        session: Some(pb::Session {
            client: client.into(),
            seq,
        }),
    };
    let result = |resp: Result<tonic::Response<pb::CallResponse>, tonic::Status>| {
        String::from_utf8(resp.unwrap().into_inner().result).unwrap()
    };
    assert_eq!(result(api.call(add("alice", 1)).await), "1");
    assert_eq!(result(api.call(add("alice", 1)).await), "1");
    // Forty copies at once, through every node: one is applied (repeats meet in apply batches).
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(40));
    let mut copies = Vec::new();
    for i in 0..40 {
        let mut api = cluster.nodes[i % 3].api().await;
        let (req, start) = (add("alice", 2), start.clone());
        copies.push(tokio::spawn(async move {
            start.wait().await;
            api.call(req).await
        }));
    }
    for copy in copies {
        assert_eq!(result(copy.await.unwrap()), "2");
    }
    assert_eq!(result(api.call(add("bob", 1)).await), "3");
    let stale = api.call(add("alice", 1)).await.unwrap_err();
    assert!(
        stale.message().contains("older than its last applied call (2)"),
        "{stale:?}"
    );
    for bad in [add("", 1), add("alice", 0), add(&"x".repeat(129), 1)] {
        let refused = api.call(bad).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    }
    // Without a session, a call applies every time.
    call(&mut api, "counter", r#"{"name":"hits","by":1}"#).await.unwrap();
    let digests = cluster.converged().await;
    assert!(digests.iter().all(|(_, _, d)| *d == digests[0].2), "{digests:?}");
    for node in &cluster.nodes {
        let value = query(
            &mut node.api().await,
            "counter",
            r#"{"name":"hits"}"#,
            Consistency::Local,
        )
        .await
        .unwrap();
        assert!(value.starts_with(r#"{"value":4,"#), "node {}: {value}", node.id);
    }
}

/// Every hostile guest deployed into one running cluster: each attack fails with an error naming
/// its fault (the same on every replica: their result digests agree), the cluster stays
/// available, a snapshot build with the endless exporter fails without taking a node down, and
/// the kv plugin beside them is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_in_a_running_cluster_fail_alike_everywhere_and_harm_nothing_else() {
    use wasmraft::plugins as p;
    let cluster = Cluster::start_with_kv(3).await;
    let attacks = [
        ("loop", p::HOSTILE_LOOP, "fuel exhausted"),
        ("memory-bomb", p::HOSTILE_MEMORY_BOMB, "max_memory_bytes"),
        ("deep-recursion", p::HOSTILE_DEEP_RECURSION, "stack overflow"),
        ("huge-output", p::HOSTILE_HUGE_OUTPUT, "max_output_bytes"),
        ("huge-writes", p::HOSTILE_HUGE_WRITES, "max_write_bytes_per_entry"),
        ("trap-mid-batch", p::HOSTILE_TRAP_MID_BATCH, "unreachable"),
        ("panic", p::HOSTILE_PANIC, "panicked"),
    ];
    for (name, path, _) in &attacks {
        cluster.deploy(name, path).await;
    }
    cluster.deploy("query-write", p::HOSTILE_QUERY_WRITE).await;
    cluster.deploy("endless", p::HOSTILE_ENDLESS_SNAPSHOT).await;
    let mut api = cluster.nodes[0].api().await;
    call(&mut api, "kv", &put("safe", "1")).await.unwrap();
    for (name, _, fault) in &attacks {
        let e = call(&mut api, name, r#""attack""#).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{name}: {e:?}");
        assert!(e.message().contains(fault), "{name}: {}", e.message());
        call(&mut api, "kv", &put(name, "after")).await.unwrap();
    }
    let e = query(&mut api, "query-write", r#""attack""#, Consistency::Linearizable)
        .await
        .unwrap_err();
    assert!(e.message().contains("read-only"), "{e:?}");
    let out = cli_at(&cluster.nodes[1].addr, &["snapshot"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));

    let digests = cluster.converged().await;
    assert!(digests.iter().all(|(_, _, d)| *d == digests[0].2), "{digests:?}");
    for node in &cluster.nodes {
        let mut api = node.api().await;
        for (name, _, _) in &attacks {
            let value = query(&mut api, "kv", &get(name), Consistency::Local).await.unwrap();
            assert_eq!(value, r#"{"value":"after"}"#, "node {}", node.id);
        }
        let value = query(&mut api, "kv", &get("safe"), Consistency::Local).await.unwrap();
        assert_eq!(value, r#"{"value":"1"}"#, "node {}", node.id);
    }
}

/// A node whose batches on an async worker all reach their deadline before their first entry (a
/// test-only failpoint) applies every one of them through the path of the entries a deadline
/// leaves (`Engine::apply_within`: off the worker, after the cut): its state and results are its
/// replicas', batch after batch, sequential writes (batches of one) and pipelined (many).
#[tokio::test(flavor = "multi_thread")]
async fn batches_cut_at_their_deadline_apply_the_rest_off_the_worker_as_the_replicas_do() {
    use pb::pipeline_request::Op;
    let mut cluster = Cluster::spawn(3);
    // Node 3, before the cluster forms: the failpoint, and its metrics served.
    let metrics_port = common::free_port();
    let node = cluster.node(3);
    node.kill();
    let config = std::fs::read_to_string(&node.config).unwrap();
    let config = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n{config}");
    std::fs::write(&node.config, config).unwrap();
    node.start_with_env(&[("WASMRAFT_FAILPOINT", "apply-deadline-passed")]);
    let mut api = cluster.nodes[0].api().await;
    api.init(pb::InitRequest::default()).await.unwrap();
    cluster.leader().await;
    cluster.deploy("kv", wasmraft::plugins::KV).await;

    for i in 0..40 {
        call(&mut api, "kv", &put(&format!("k{}", i % 7), &i.to_string()))
            .await
            .unwrap();
    }
    // Batches of many entries (each round arrives at once), rewriting the same few keys: an
    // entry applied out of its place would change the state.
    for round in 0..10 {
        let requests = (0..20)
            .map(|i| pb::PipelineRequest {
                id: i,
                op: Some(Op::Call(pb::CallRequest {
                    plugin: "kv".into(),
                    payload: put(&format!("p{}", i % 3), &format!("{round}.{i}")).into_bytes(),
                    session: None,
                })),
            })
            .collect();
        let answers = common::pipelined(&mut api, requests).await;
        assert!(
            answers
                .values()
                .all(|a| matches!(a, pb::pipeline_reply::Outcome::Call(_))),
            "{answers:?}"
        );
    }

    let digests = cluster.converged().await;
    assert!(digests.iter().all(|(_, _, d)| *d == digests[0].2), "{digests:?}");
    let metrics = common::metrics_text(([127, 0, 0, 1], metrics_port).into()).await;
    let cuts: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("wasmraft_apply_deadline_cuts_total "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no cut counter in:\n{metrics}"));
    assert!(cuts >= 10.0, "node 3 cut {cuts} batches");
}

/// `cluster check` compares every member's state digest at the latest checkpoint they all kept:
/// on a healthy cluster they agree; a node whose plugin answers differently from its replicas
/// (a test-only failpoint, as a nondeterministic plugin would) is named, with the index.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_check_names_the_node_whose_apply_results_differ_and_the_index() {
    let mut cluster = Cluster::start_with_kv(3).await;
    let mut api = cluster.nodes[0].api().await;
    for i in 0..300 {
        call(&mut api, "kv", &put(&format!("k{i}"), "v")).await.unwrap();
    }
    cluster.converged().await;
    let out = cluster.cli(&["cluster", "check"]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("index 255: nodes 1, 2, 3 agree"),
        "{}",
        stdout(&out)
    );

    let node = cluster.node(3);
    node.kill();
    node.start_with_env(&[("WASMRAFT_FAILPOINT", "apply-result-perturbed")]);
    node.serving().await;
    let mut api = cluster.nodes[0].api().await;
    for i in 0..300 {
        call(&mut api, "kv", &put(&format!("again{i}"), "v")).await.unwrap();
    }
    cluster.converged().await;
    let out = cluster.cli(&["cluster", "check", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    let checked: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(checked["diverged"], serde_json::json!([3]), "{checked}");
    assert!(checked["index"].as_u64() >= Some(511), "{checked}");
    let table = stdout(&cluster.cli(&["cluster", "check"]).await);
    let flagged: Vec<&str> = table.lines().filter(|l| l.contains("DIVERGED")).collect();
    assert_eq!(flagged.len(), 1, "{table}");
    assert!(flagged[0].starts_with("node 3 "), "{table}");
}

/// Runs the CLI with `args` and checks it is refused (exit 1) with `why` on stderr.
async fn refused(endpoint: &str, args: &[&str], why: &str) {
    let out = cli_at(endpoint, args).await;
    assert_eq!(out.status.code(), Some(1), "{args:?} was not refused: {}", stdout(&out));
    assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
}

/// Admin calls check their input: a leader transfer to a non-voter, a learner at an address that
/// does not parse or where no node (or another node) answers, or with a voter's id, are refused
/// with the reason and change nothing; a learner can be removed again.
#[tokio::test(flavor = "multi_thread")]
async fn admin_calls_refuse_bad_input_with_the_reason_and_a_learner_can_be_removed() {
    let mut cluster = Cluster::start_with_kv(3).await;
    let leader = cluster.leader().await;
    let endpoint = cluster.nodes[0].addr.clone();
    refused(
        &endpoint,
        &["cluster", "transfer-leader", "99"],
        "node 99 is not a voter (voters: 1, 2, 3)",
    )
    .await;
    refused(
        &endpoint,
        &["cluster", "add-learner", "4", "bogus"],
        "has no http:// or https:// scheme",
    )
    .await;
    refused(
        &endpoint,
        &["cluster", "add-learner", "4", "http://[::1"],
        "does not parse",
    )
    .await;
    refused(
        &endpoint,
        &["cluster", "add-learner", "4", "http://127.0.0.1:1"],
        "no wasmraft node answers",
    )
    .await;
    let voter_addr = cluster.nodes[1].addr.clone();
    refused(
        &endpoint,
        &["cluster", "add-learner", "2", &voter_addr],
        "node 2 is already a voter",
    )
    .await;
    let i = cluster.add_spare_node(4);
    let learner_addr = cluster.nodes[i].addr.clone();
    cluster.nodes[i].serving().await;
    refused(
        &endpoint,
        &["cluster", "add-learner", "5", &learner_addr],
        "is node 4, not node 5",
    )
    .await;
    refused(&endpoint, &["cluster", "remove-learner", "2"], "node 2 is a voter").await;
    refused(&endpoint, &["cluster", "remove-learner", "4"], "node 4 is not a member").await;

    // Nothing changed: the same leader, three voters, no learner.
    assert_eq!(cluster.leader().await, leader);
    let status = status_at(&endpoint).await.unwrap();
    assert_eq!(
        status.nodes.iter().map(|n| (n.id, n.voter)).collect::<Vec<_>>(),
        [(1, true), (2, true), (3, true)]
    );

    let out = cli_at(&endpoint, &["cluster", "add-learner", "4", &learner_addr]).await;
    assert!(out.status.success(), "add-learner: {}", stderr(&out));
    let out = cli_at(&endpoint, &["cluster", "remove-learner", "4"]).await;
    assert!(out.status.success(), "remove-learner: {}", stderr(&out));
    eventually("node 4 to leave the membership", Duration::from_secs(10), || async {
        let status = status_at(&endpoint).await?;
        (!status.nodes.iter().any(|n| n.id == 4)).then_some(())
    })
    .await;
    let mut api = cluster.nodes[0].api().await;
    call(&mut api, "kv", &put("after", "1")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_stream_answers_many_calls_and_queries_in_flight_each_by_its_id() {
    use pb::pipeline_reply::Outcome;
    use pb::pipeline_request::Op;
    let cluster = Cluster::start_with_kv(3).await;
    // Any node: a follower forwards the calls.
    let mut api = cluster.nodes[2].api().await;
    let call = |id: u64, plugin: &str, payload: String| pb::PipelineRequest {
        id,
        op: Some(Op::Call(pb::CallRequest {
            plugin: plugin.into(),
            payload: payload.into_bytes(),
            session: None,
        })),
    };
    let mut requests: Vec<_> = (0..300)
        .map(|i| call(i, "kv", put(&format!("k{i}"), &format!("v{i}"))))
        .collect();
    requests.push(call(1000, "nope", put("k", "v")));
    requests.push(call(1001, "kv", "{not json".into()));
    let answers = common::pipelined(&mut api, requests).await;
    assert_eq!(answers.len(), 302);
    let mut indexes: Vec<u64> = (0..300)
        .map(|i| match &answers[&i] {
            Outcome::Call(answer) => answer.index,
            other => panic!("call {i}: {other:?}"),
        })
        .collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), 300, "each call is its own log entry");
    let code = |id: u64| match &answers[&id] {
        Outcome::Error(e) => tonic::Code::from_i32(e.code),
        other => panic!("{id}: {other:?}"),
    };
    assert_eq!(code(1000), tonic::Code::NotFound, "one failed request fails alone");
    assert_eq!(code(1001), tonic::Code::FailedPrecondition);

    let query = |id: u64, key: String| pb::PipelineRequest {
        id,
        op: Some(Op::Query(pb::QueryRequest {
            plugin: "kv".into(),
            request: get(&key).into_bytes(),
            consistency: Consistency::Linearizable as i32,
            shadow: false,
        })),
    };
    let answers = common::pipelined(&mut api, (0..300).map(|i| query(i, format!("k{i}"))).collect()).await;
    assert_eq!(answers.len(), 300);
    for (id, outcome) in answers {
        match outcome {
            Outcome::Query(answer) => {
                let text = String::from_utf8(answer.result).unwrap();
                assert!(text.contains(&format!(r#""v{id}""#)), "query {id}: {text}");
            }
            other => panic!("query {id}: {other:?}"),
        }
    }
}

/// Short queries run on the node's async workers within a small fuel budget; a query over it
/// (a 100-pair scan of 1 KB values takes about 3x) is answered in full all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_over_the_inline_fuel_budget_is_answered_in_full() {
    let cluster = Cluster::start_with_kv(1).await;
    let mut api = cluster.nodes[0].api().await;
    let value = "v".repeat(1000);
    for i in 0..100 {
        call(&mut api, "kv", &put(&format!("k{i:03}"), &value)).await.unwrap();
    }
    let get = r#"{"op":"get","key":"k007"}"#;
    let scan = r#"{"op":"scan","start":"","limit":100}"#;
    for consistency in [Consistency::Linearizable, Consistency::Local] {
        let small = query(&mut api, "kv", get, consistency).await.unwrap();
        assert!(small.contains(&value), "{small}");
        let big = query(&mut api, "kv", scan, consistency).await.unwrap();
        assert_eq!(big.matches(&value).count(), 100, "every pair, in full");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_plugin_and_a_malformed_payload_get_clear_errors_and_change_nothing() {
    let cluster = Cluster::start_with_kv(3).await;
    let mut api = cluster.nodes[0].api().await;
    call(&mut api, "kv", &put("a", "1")).await.unwrap();
    let scan = r#"{"op":"scan","start":""}"#;
    let before = query(&mut api, "kv", scan, Consistency::Linearizable).await.unwrap();

    let err = call(&mut api, "nope", &put("a", "2")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("unknown plugin"), "{}", err.message());

    let err = call(&mut api, "kv", "{not json").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("malformed"), "{}", err.message());

    let err = query(&mut api, "nope", scan, Consistency::Linearizable)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let after = query(&mut api, "kv", scan, Consistency::Linearizable).await.unwrap();
    assert_eq!(before, after, "a rejected call changed the state");

    // The CLI says the same, on stderr, with a failing exit status.
    let endpoint = &cluster.nodes[0].addr;
    let out = cli_at(endpoint, &["call", "nope", "{}"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown plugin"), "{}", stderr(&out));
    let out = cli_at(endpoint, &["call", "kv", "{not json"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("malformed"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_calls_queries_and_reports_the_cluster() {
    let cluster = Cluster::start_with_kv(3).await;
    let endpoint = &cluster.nodes[1].addr;
    let out = cli_at(endpoint, &["call", "kv", &put("cli", "works")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), r#"{"previous":null}"#);
    for consistency in ["linearizable", "lease", "local"] {
        let out = eventually("the read to see the write", Duration::from_secs(10), || async {
            let out = cli_at(endpoint, &["query", "--consistency", consistency, "kv", &get("cli")]).await;
            (stdout(&out) == r#"{"value":"works"}"#).then_some(out)
        })
        .await;
        assert!(out.status.success());
    }
    let out = cli_at(endpoint, &["cluster", "status"]).await;
    assert!(stdout(&out).contains("leader      node"), "{}", stdout(&out));
    let out = cli_at(endpoint, &["plugins"]).await;
    assert!(stdout(&out).starts_with("kv "), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_leader_yet_is_a_clear_unavailable_error() {
    let cluster = Cluster::spawn(1);
    let mut api = cluster.nodes[0].api().await;
    let err = call(&mut api, "kv", &put("a", "1")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("no leader"), "{}", err.message());
}

/// The names of the plugins active on the cluster's first node.
async fn active_plugins(cluster: &Cluster) -> Vec<String> {
    plugins_at(&cluster.nodes[0])
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// The plugins (name, sha256) active on `node`.
async fn plugins_at(node: &common::NodeProc) -> Vec<(String, String)> {
    let plugins = node
        .api()
        .await
        .list_plugins(pb::ListPluginsRequest {})
        .await
        .unwrap()
        .into_inner()
        .plugins;
    plugins.into_iter().map(|p| (p.name, p.sha256)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploying_an_invalid_component_is_refused_before_it_reaches_the_log() {
    let cluster = Cluster::start_with_kv(1).await;
    let junk = cluster.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    let out = cluster.cli(&["deploy", "junk", junk.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a valid plugin"), "{}", stderr(&out));
    assert_eq!(active_plugins(&cluster).await, ["kv"]);
}

/// A soak shows its memory as it goes: `--sample-every` prints the ops/s since the previous
/// sample and the node process's RSS, once per interval until the run ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_timed_bench_samples_throughput_and_node_memory_while_it_runs() {
    let cluster = Cluster::start_with_kv(1).await;
    let out = cluster
        .cli(&["bench", "--clients", "2", "--duration", "3s", "--sample-every", "1s"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let samples: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("at ")).collect();
    assert!(samples.len() >= 2, "{text}");
    for sample in samples {
        let (ops, rss) = sample
            .split_once(" ops/s over the last 1s, node process RSS ")
            .unwrap_or_else(|| panic!("{sample}"));
        let ops: f64 = ops.rsplit(' ').next().unwrap().parse().unwrap();
        let rss: u64 = rss
            .strip_suffix(" MiB")
            .unwrap_or_else(|| panic!("{sample}"))
            .parse()
            .unwrap();
        assert!(ops > 0.0 && rss > 0, "{sample}");
    }
}

/// Clients may share connections, as etcd's benchmark has them do: six clients over two
/// connections, each connection's one `Pipeline` stream carrying three clients' requests, get
/// every answer.
#[tokio::test(flavor = "multi_thread")]
async fn bench_clients_sharing_connections_each_get_their_answers() {
    let cluster = Cluster::start_with_kv(1).await;
    let out = cluster
        .cli(&[
            "bench",
            "--clients",
            "6",
            "--conns",
            "2",
            "--ops",
            "60",
            "--read-ratio",
            "0.5",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("6 clients x 1 in flight (sharing 2 connections"),
        "{text}"
    );
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("kv "))
        .unwrap_or_else(|| panic!("{text}"))
        .split_whitespace()
        .collect();
    assert_eq!((row[1], row[6]), ("60", "0"), "60 ops, no errors: {text}");
}

/// The bench's native baseline is test code: a node built without `--features bench` does not
/// link it, and refuses to activate it with a reason, before anything reaches the log.
#[cfg(not(feature = "bench"))]
#[tokio::test(flavor = "multi_thread")]
async fn a_production_node_refuses_the_bench_only_native_plugin() {
    let cluster = Cluster::start_with_kv(1).await;
    let out = cluster
        .cli(&["bench", "--compare-native", "--clients", "1", "--ops", "1"])
        .await;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("native-kv") && stderr(&out).contains("--features bench"),
        "{}",
        stderr(&out)
    );
    assert_eq!(active_plugins(&cluster).await, ["kv"]);
}

/// Issue 4's promise end to end: the Python port of kv, deployed to a 3-node cluster, serves
/// writes and reads, and the replicas agree.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_kv_plugin_deployed_to_three_nodes_serves_writes_and_reads() {
    // Share the compiled-component cache with tests/polyglot.rs: Python takes ~15 s to compile.
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("polyglot-cache");
    let cluster = Cluster::started(3, &format!("compile_cache_dir = {:?}", cache.to_str().unwrap())).await;
    cluster.deploy("kv", wasmraft::plugins::KV_PY).await;
    let leader = cluster.leader().await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let mut api = follower.api().await;
    assert_eq!(
        call(&mut api, "kv", &put("py", "thon")).await.unwrap(),
        r#"{"previous":null}"#
    );
    assert_eq!(
        call(&mut api, "kv", &put("py", "3")).await.unwrap(),
        r#"{"previous":"thon"}"#
    );
    let value = query(&mut api, "kv", &get("py"), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(value, r#"{"value":"3"}"#);
    let digests = cluster.converged().await;
    assert!(digests.iter().all(|(_, _, d)| *d == digests[0].2), "{digests:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn leadership_can_be_handed_to_another_voter() {
    let cluster = Cluster::start_with_kv(3).await;
    let old = cluster.leader().await;
    let to = cluster.nodes.iter().find(|n| n.id != old).unwrap().id;
    let out = cluster.cli(&["cluster", "transfer-leader", &to.to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    eventually("the new leader", Duration::from_secs(10), || async {
        let status = cluster.nodes[0].status().await?;
        (status.leader_id == Some(to) && status.state != "candidate").then_some(())
    })
    .await;
    let mut api = cluster.nodes[0].api().await;
    call(&mut api, "kv", &put("after-transfer", "1")).await.unwrap();
}

/// The plugins (name, sha256) active on every running node, one list per node.
async fn plugins_on_every_node(cluster: &Cluster) -> Vec<Vec<(String, String)>> {
    let mut all = Vec::new();
    for node in cluster.nodes.iter().filter(|n| n.child.is_some()) {
        all.push(plugins_at(node).await);
    }
    all
}

/// Filling the compiled-component cache is one node's business: a node that cannot write its
/// cache (here the directory is replaced by a file) activates a new component like the others,
/// instead of recording a rejection they do not (which split the replicas for good).
#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_compile_cache_is_broken_activates_like_the_others() {
    let mut cluster = Cluster::start_with_kv(3).await;
    let cache = cluster.node(3).data_dir().join("compiled");
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::write(&cache, b"not a directory").unwrap();

    let index = cluster.deploy("counter", wasmraft::plugins::COUNTER).await;
    assert!(index > 0);
    let mut api = cluster.nodes[0].api().await;
    call(&mut api, "counter", r#"{"name":"hits","by":2}"#).await.unwrap();
    let digests = cluster.converged().await;
    assert!(
        digests.iter().all(|(_, _, d)| *d == digests[0].2),
        "replicas diverged: {digests:?}"
    );
    let plugins = plugins_on_every_node(&cluster).await;
    assert!(plugins.iter().all(|p| *p == plugins[0]), "{plugins:?}");
    assert!(plugins[0].iter().any(|(name, _)| name == "counter"), "{plugins:?}");
}

/// The readiness barrier: every voter must have compiled a component before its activation is
/// proposed. A voter that cannot run it (here node 3 allows no component larger than kv, which it
/// runs already) fails the deploy with its reason, and nothing is activated anywhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_that_one_voter_cannot_run_is_refused_naming_it_and_changes_nothing() {
    let kv_size = std::fs::metadata(wasmraft::plugins::KV).unwrap().len();
    let larger = wasmraft::plugins::FIXTURE_KV_DIVERGENT;
    assert!(
        std::fs::metadata(larger).unwrap().len() > kv_size,
        "pick a component larger than kv"
    );
    let mut cluster = Cluster::start_with_kv(3).await;
    {
        let node = cluster.node(3);
        node.kill();
        let mut config = std::fs::read_to_string(&node.config).unwrap();
        config += &format!("\n[limits]\nmax_component_bytes = {kv_size}\n");
        std::fs::write(&node.config, config).unwrap();
        node.start();
    }
    cluster.converged().await;

    let out = cluster.cli(&["deploy", "larger", larger]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not ready on every voter") && err.contains("node 3") && err.contains("max_component_bytes"),
        "{err}"
    );
    assert!(!err.contains("node 1:") && !err.contains("node 2:"), "{err}");
    let plugins = plugins_on_every_node(&cluster).await;
    assert!(
        plugins.iter().all(|p| p.len() == 1 && p[0].0 == "kv"),
        "nothing may change: {plugins:?}"
    );
}

/// The version that answers a call to `plugin`.
async fn version_of_call(cluster: &Cluster, plugin: &str, payload: &str) -> String {
    let mut api = cluster.nodes[0].api().await;
    let resp = api
        .call(pb::CallRequest {
            plugin: plugin.into(),
            payload: payload.as_bytes().to_vec(),
            session: None,
        })
        .await
        .unwrap()
        .into_inner();
    resp.version
}

fn sha256_of(path: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Upgrade, rollback and removal: kv (Rust) is upgraded to its C port; `plugins` lists the Rust
/// version as earlier; `plugins rollback kv` makes it answer again, on the same data; a rollback
/// to a version the plugin never ran is refused; `plugins remove kv --yes` retires it and deletes
/// its data on every node at one index (a new deploy starts empty).
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_is_upgraded_rolled_back_and_removed_on_every_node() {
    let cluster = Cluster::start_with_kv(3).await;
    let (rust, c) = (sha256_of(wasmraft::plugins::KV), sha256_of(wasmraft::plugins::KV_C));
    assert_eq!(version_of_call(&cluster, "kv", &put("a", "1")).await, rust);

    let out = cluster
        .cli(&["deploy", "kv", wasmraft::plugins::KV_C, "--label", "c-port"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of_call(&cluster, "kv", &put("b", "2")).await, c);
    let listed = stdout(&cluster.cli(&["plugins"]).await);
    assert!(
        listed.contains(&c) && listed.contains("(c-port)") && listed.contains(&rust) && listed.contains("earlier"),
        "{listed}"
    );
    for id in 1..=3 {
        assert!(listed.contains(&format!("node {id}    kv {}", &c[..12])), "{listed}");
    }
    let out = cluster.cli(&["plugins", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let kv = &listed["plugins"][0];
    assert_eq!(
        (&kv["name"], &kv["sha256"], &kv["label"]),
        (&"kv".into(), &c.clone().into(), &"c-port".into())
    );
    assert_eq!(kv["earlier"][0]["sha256"], rust.as_str(), "{listed}");
    let nodes = listed["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{listed}");
    assert!(
        nodes.iter().all(|n| n["plugins"][0]["sha256"] == c.as_str()),
        "{listed}"
    );

    let out = cluster.cli(&["plugins", "rollback", "kv", &"0".repeat(64)]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no earlier version"), "{}", stderr(&out));
    assert_eq!(version_of_call(&cluster, "kv", &put("c", "3")).await, c);

    let out = cluster.cli(&["plugins", "rollback", "kv"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of_call(&cluster, "kv", &put("d", "4")).await, rust);
    let mut api = cluster.nodes[0].api().await;
    for (key, value) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")] {
        let got = query(&mut api, "kv", &get(key), Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(got, format!(r#"{{"value":"{value}"}}"#), "{key} after the rollback");
    }
    let plugins = plugins_on_every_node(&cluster).await;
    assert!(
        plugins.iter().all(|p| *p == [("kv".to_string(), rust.clone())]),
        "{plugins:?}"
    );

    let out = cluster.cli(&["plugins", "remove", "kv"]).await;
    assert_eq!(out.status.code(), Some(1), "remove needs --yes");
    let out = cluster.cli(&["plugins", "remove", "kv", "--yes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let digests = cluster.converged().await;
    assert!(digests.iter().all(|(_, _, d)| *d == digests[0].2), "{digests:?}");
    assert!(plugins_on_every_node(&cluster).await.iter().all(|p| p.is_empty()));

    cluster.deploy("kv", wasmraft::plugins::KV).await;
    let got = query(&mut api, "kv", &get("a"), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(got, r#"{"value":null}"#, "the removed plugin's data is gone");
}

/// One write's answer as a client saw it: (log index, version that answered).
type Answered = (u64, String);

/// Writes `key-N = vN` through `addr` until `stop`, recording every answer; any failure fails.
fn keep_writing(
    addr: String,
    key: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Answered>> {
    tokio::spawn(async move {
        let mut api = pb::api_client::ApiClient::connect(addr).await.unwrap();
        let mut answered = Vec::new();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            let resp = api
                .call(pb::CallRequest {
                    plugin: "kv".into(),
                    payload: put(&format!("{key}-{}", i % 20), &format!("v{i}")).into_bytes(),
                    session: None,
                })
                .await
                .unwrap_or_else(|e| panic!("write {i} by {key} failed during the upgrade: {e:?}"))
                .into_inner();
            assert!(
                !String::from_utf8_lossy(&resp.result).contains("error"),
                "write {i} by {key}: {:?}",
                String::from_utf8_lossy(&resp.result)
            );
            answered.push((resp.index, resp.version));
        }
        answered
    })
}

/// Issue 11's upgrade under load: writers through every node keep going while kv is upgraded to
/// a version that re-encodes every value in its `init`. A first attempt whose `init` refuses
/// (config `fail`) changes nothing and names the plugin's reason; the second activates at one
/// index: every write below it was answered by v1 and every write at or above it by v2, no write
/// fails, every value reads back migrated, and the replicas agree.
#[tokio::test(flavor = "multi_thread")]
async fn kv_is_upgraded_under_load_with_a_migration_at_one_index_on_every_node() {
    let cluster = Cluster::start_with_kv(3).await;
    let (v1, v2) = (
        sha256_of(wasmraft::plugins::KV),
        sha256_of(wasmraft::plugins::FIXTURE_KV_V2),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| keep_writing(n.addr.clone(), format!("w{i}"), stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let out = cluster
        .cli(&["deploy", "kv", wasmraft::plugins::FIXTURE_KV_V2, "--config", "fail"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("migration refused"), "{}", stderr(&out));
    let plugins = plugins_on_every_node(&cluster).await;
    assert!(
        plugins.iter().all(|p| *p == [("kv".to_string(), v1.clone())]),
        "{plugins:?}"
    );

    let activated = cluster.deploy("kv", wasmraft::plugins::FIXTURE_KV_V2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut answered = Vec::new();
    for writer in writers {
        answered.extend(writer.await.unwrap());
    }
    let before = answered.iter().filter(|(index, _)| *index < activated).count();
    assert!(
        before > 0 && before < answered.len(),
        "writes on both sides of index {activated}"
    );
    for (index, version) in &answered {
        let want = if *index < activated { &v1 } else { &v2 };
        assert_eq!(version, want, "the write at index {index} (activation at {activated})");
    }

    let digests = cluster.converged().await;
    assert!(digests.iter().all(|(_, _, d)| *d == digests[0].2), "{digests:?}");
    for node in &cluster.nodes {
        let mut api = node.api().await;
        for w in 0..3 {
            for k in 0..20 {
                let got = query(&mut api, "kv", &get(&format!("w{w}-{k}")), Consistency::Local).await;
                assert!(got.is_ok(), "node {}: w{w}-{k}: {got:?}", node.id);
            }
        }
    }
}

/// Bad input to `deploy` and `plugins rollback` is refused before anything changes, with the
/// reason and exit code 1.
#[tokio::test(flavor = "multi_thread")]
async fn bad_deploys_are_refused_with_the_reason_and_change_nothing() {
    let cluster = Cluster::start_with_kv(1).await;
    let dir = cluster.dir.path();
    let kv = std::fs::read(wasmraft::plugins::KV).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let cases = [
        ("Bad Name!".to_string(), wasmraft::plugins::KV.to_string(), "name"),
        ("empty".into(), file("empty.wasm", b""), "not a WebAssembly binary"),
        (
            "truncated".into(),
            file("truncated.wasm", &kv[..kv.len() / 2]),
            "invalid component",
        ),
        (
            "core".into(),
            file("core.wasm", b"\0asm\x01\0\0\0"),
            "core WebAssembly module",
        ),
        (
            "other".into(),
            wasmraft::plugins::FIXTURE_OTHER_WORLD.to_string(),
            "does not implement world wasmraft:plugin/state-machine: no export `apply`",
        ),
    ];
    for (name, path, reason) in &cases {
        let out = cluster.cli(&["deploy", name, path]).await;
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stdout(&out));
        assert!(stderr(&out).contains(reason), "{name}: {}", stderr(&out));
        assert_eq!(active_plugins(&cluster).await, ["kv"], "{name}");
    }
    let out = cluster.cli(&["plugins", "rollback", "kv"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no earlier version"), "{}", stderr(&out));
    let out = cluster.cli(&["plugins", "rollback", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no plugin nope"), "{}", stderr(&out));
}

/// A component over the cluster's size limit is refused before its upload.
#[tokio::test(flavor = "multi_thread")]
async fn a_component_over_the_size_limit_is_refused_before_its_upload() {
    let cluster = Cluster::started(1, "[limits]\nmax_component_bytes = 1000").await;
    let out = cluster.cli(&["deploy", "kv", wasmraft::plugins::KV]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("over max_component_bytes (1000)"),
        "{}",
        stderr(&out)
    );
    assert!(active_plugins(&cluster).await.is_empty());
}

/// Two plugins side by side keep separate state: the same keys, written to both in turn, read
/// back each plugin's own values on every node.
#[tokio::test(flavor = "multi_thread")]
async fn two_plugins_side_by_side_keep_separate_state_under_interleaved_writes() {
    let cluster = Cluster::start_with_kv(3).await;
    cluster.deploy("kv2", wasmraft::plugins::KV_C).await;
    let mut api = cluster.nodes[1].api().await;
    for i in 0..40 {
        let key = format!("k{}", i % 10);
        call(&mut api, "kv", &put(&key, &format!("one-{i}"))).await.unwrap();
        call(&mut api, "kv2", &put(&key, &format!("two-{i}"))).await.unwrap();
    }
    cluster.converged().await;
    for node in &cluster.nodes {
        let mut api = node.api().await;
        for k in 0..10 {
            let key = format!("k{k}");
            for (plugin, prefix) in [("kv", "one"), ("kv2", "two")] {
                let got = query(&mut api, plugin, &get(&key), Consistency::Local).await.unwrap();
                assert_eq!(
                    got,
                    format!(r#"{{"value":"{prefix}-{}"}}"#, 30 + k),
                    "node {} {plugin} {key}",
                    node.id
                );
            }
        }
    }
}

/// A deploy whose leader dies in the middle of the upload either completes or fails, and is never
/// half-active: afterwards the plugin is active on every node at one index with one version, or
/// on none, and the replicas agree. Through the leader, the client loses its deploy; through a
/// follower, the follower carries on with the next leader (or fails what it cannot be sure of).
async fn deploy_while_the_leader_dies(through_the_leader: bool) {
    // A component of many 1 MiB pieces; its compile is cached (shared with tests/polyglot.rs).
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("polyglot-cache");
    let mut cluster = Cluster::started(3, &format!("compile_cache_dir = {:?}", cache.to_str().unwrap())).await;
    let leader = cluster.leader().await;
    let receiver = cluster
        .nodes
        .iter()
        .find(|n| (n.id == leader) == through_the_leader)
        .unwrap();
    let endpoint = receiver.addr.clone();
    let before = status_at(&endpoint).await.unwrap().last_log_index.unwrap_or(0);
    let deploy = tokio::spawn(async move { cli_at(&endpoint, &["deploy", "big", wasmraft::plugins::KV_PY]).await });
    let leader_addr = cluster.nodes.iter().find(|n| n.id == leader).unwrap().addr.clone();
    eventually(
        "a few pieces of the upload in the log",
        Duration::from_secs(120),
        || {
            let addr = leader_addr.clone();
            async move {
                status_at(&addr)
                    .await
                    .filter(|s| s.last_log_index.unwrap_or(0) >= before + 3)
            }
        },
    )
    .await;
    cluster.node(leader).kill();
    let out = deploy.await.unwrap();
    cluster.node(leader).start();
    cluster.leader().await;
    cluster.converged().await;
    let plugins = plugins_on_every_node(&cluster).await;
    assert!(plugins.iter().all(|p| *p == plugins[0]), "half-active: {plugins:?}");
    if out.status.success() {
        assert_eq!(plugins[0].len(), 1, "{plugins:?}");
    } else {
        assert!(
            plugins[0].is_empty(),
            "the deploy failed ({}) but left {plugins:?}",
            stderr(&out)
        );
    }
    let digests = cluster.converged().await;
    assert!(digests.iter().all(|(_, _, d)| *d == digests[0].2), "{digests:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_through_the_leader_that_dies_mid_upload_is_all_or_nothing() {
    deploy_while_the_leader_dies(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_through_a_follower_whose_leader_dies_mid_upload_is_all_or_nothing() {
    deploy_while_the_leader_dies(false).await;
}

/// `cluster status --all` asks every member and prints one table (`--json` for scripts); a node
/// whose digest differs from the others' at the same applied index is flagged, and the command
/// exits 1.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_status_all_shows_every_node_and_flags_a_diverged_digest() {
    let mut cluster = Cluster::start_with_kv(3).await;
    let mut api = cluster.nodes[0].api().await;
    call(&mut api, "kv", &put("a", "1")).await.unwrap();
    cluster.converged().await;

    let out = cluster.cli(&["cluster", "status", "--all"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    for id in 1..=3 {
        assert!(table.lines().any(|l| l.starts_with(&format!("{id} "))), "{table}");
    }
    assert!(table.contains("leader") && !table.contains("DIVERGED"), "{table}");
    let out = cluster.cli(&["cluster", "status", "--all", "--json"]).await;
    let parsed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let nodes = parsed["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(
        nodes.iter().all(|n| n["state_digest"] == nodes[0]["state_digest"]),
        "{parsed}"
    );

    let node = cluster.node(3);
    node.kill();
    node.start_with_env(&[("WASMRAFT_FAILPOINT", "status-digest-perturbed")]);
    cluster.converged().await;
    let out = cluster.cli(&["cluster", "status", "--all"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let table = stdout(&out);
    let flagged: Vec<&str> = table.lines().filter(|l| l.contains("DIVERGED")).collect();
    assert_eq!(flagged.len(), 1, "{table}");
    assert!(flagged[0].starts_with("3 "), "{table}");
}

/// A guest's stdio goes through wasmtime-wasi's blocking bindings, which block on the Tokio
/// runtime: a plugin call made on an async worker itself panics there (and an apply's panic stops
/// Raft). Calls and queries that print must be answered like any other.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_prints_in_its_calls_and_queries_is_answered_everywhere() {
    let cluster = Cluster::start_with_kv(3).await;
    cluster.deploy("probe", wasmraft::plugins::FIXTURE_WASI_PROBE).await;
    let mut api = cluster.nodes[0].api().await;
    for _ in 0..3 {
        assert_eq!(call(&mut api, "probe", r#""print""#).await.unwrap(), r#""printed""#);
    }
    for node in &cluster.nodes {
        let mut api = node.api().await;
        for consistency in [Consistency::Linearizable, Consistency::Local] {
            let answer = query(&mut api, "probe", r#""print""#, consistency).await;
            assert_eq!(answer.unwrap(), r#""printed""#, "node {}", node.id);
        }
    }
    call(&mut api, "kv", &put("after", "1")).await.unwrap();
}
