//! The peer transport's fault layer, on nodes run in this process: a partitioned leader is
//! replaced, the cluster heals, and no read the old leader answers across the heal is stale.

mod common;

use common::in_process::{heal, silence};

use std::time::{Duration, Instant};

use wasmraft_node::pb::{self, Consistency, api_client::ApiClient};
use wasmraft_node::{LinkFault, Node};

async fn start(n: u64, dir: &std::path::Path) -> Vec<Node> {
    common::in_process::start(n, dir, |_| {}).await
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

async fn api(node: &Node) -> ApiClient<tonic::transport::Channel> {
    ApiClient::connect(node.addr().to_string()).await.unwrap()
}

/// A cluster of `n` in-process nodes with the kv plugin active.
async fn start_with_kv(n: u64, dir: &std::path::Path) -> Vec<Node> {
    let nodes = start(n, dir).await;
    let leader = leader_seen_by(&nodes[0], |_| true).await;
    let addr = nodes.iter().find(|n| n.id() == leader).unwrap().addr().to_string();
    let out = common::cli_at(&addr, &["deploy", "kv", wasmraft::plugins::KV]).await;
    assert!(out.status.success(), "deploy: {}", common::stderr(&out));
    nodes
}

fn put(key: &str, value: &str) -> String {
    format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#)
}

/// Every read began after `new` was acknowledged: each returned it, or failed retryably.
fn assert_no_stale_read(reads: &[Read], acked: Instant, what: &str) {
    for read in reads {
        assert!(read.started > acked);
        match &read.result {
            Ok(value) => assert_eq!(
                value, r#"{"value":"new"}"#,
                "{what}: returned a stale value; reads: {reads:#?}"
            ),
            Err(status) => assert!(
                matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded),
                "{what}: a failed read must be retryable: {status:?}"
            ),
        }
    }
}

/// One read's outcome, as a client saw it.
#[derive(Debug)]
struct Read {
    started: Instant,
    result: Result<String, tonic::Status>,
}

/// Reads `key` at `node` back to back (`backoff` after a failed read) until `stop` is set, each
/// read waiting at most 5 s.
fn keep_reading(
    node: &Node,
    key: &'static str,
    consistency: Consistency,
    backoff: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Read>> {
    let addr = node.addr().to_string();
    tokio::spawn(async move {
        let mut api = ApiClient::connect(addr).await.unwrap();
        let mut reads = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let started = Instant::now();
            let request = pb::QueryRequest {
                plugin: "kv".into(),
                request: format!(r#"{{"op":"get","key":"{key}"}}"#).into_bytes(),
                consistency: consistency as i32,
                shadow: false,
            };
            let result = match tokio::time::timeout(Duration::from_secs(5), api.query(request)).await {
                Ok(Ok(resp)) => Ok(String::from_utf8_lossy(&resp.into_inner().result).into_owned()),
                Ok(Err(status)) => Err(status),
                Err(_) => Err(tonic::Status::deadline_exceeded("no answer in 5 s")),
            };
            let failed = result.is_err();
            reads.push(Read { started, result });
            if failed {
                // A refused read comes back at once: back off as a client would.
                tokio::time::sleep(backoff).await;
            }
        }
        reads
    })
}

/// The scenario of a stale read after a partition: `old` led and is cut off from a majority by a
/// silent partition (with `minority`, which keeps following it); the majority elects a new leader
/// and acknowledges `key = new`; reads at `reader` (the old leader, or a follower still asking it
/// for the read index) run before, across and after the heal. Every read that succeeds began
/// after `new` was acknowledged, so it must return `new`; a failed read must be retryable.
async fn no_stale_read_across_a_heal(n: u64, reader_is_old_leader: bool, consistency: Consistency) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_with_kv(n, dir.path()).await;
    for round in 0..3 {
        let key: &'static str = format!("k{round}").leak();
        let old = leader_seen_by(&nodes[0], |_| true).await;
        let old_node = nodes.iter().find(|n| n.id() == old).unwrap();
        common::call(&mut api(old_node).await, "kv", &put(key, "old"))
            .await
            .unwrap();
        // Writers through every node, up to and across the cut and the heal: the old leader
        // keeps appending entries it cannot commit, and replication is in flight at the cut.
        let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writers: Vec<_> = nodes
            .iter()
            .map(|n| {
                let (addr, writing) = (n.addr().to_string(), writing.clone());
                tokio::spawn(async move {
                    let mut api = ApiClient::connect(addr).await.unwrap();
                    let mut i = 0;
                    while writing.load(std::sync::atomic::Ordering::SeqCst) {
                        i += 1;
                        let call = api.call(pb::CallRequest {
                            plugin: "kv".into(),
                            payload: put(&format!("other{i}"), "x").into_bytes(),
                            session: None,
                        });
                        let _ = tokio::time::timeout(Duration::from_millis(300), call).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The minority side: the old leader, plus one follower that keeps following it.
        let mut isolated = vec![old];
        if !reader_is_old_leader {
            isolated.push(nodes.iter().find(|n| n.id() != old).unwrap().id());
        }
        let reader = nodes.iter().find(|n| n.id() == *isolated.last().unwrap()).unwrap();
        silence(&nodes, &isolated);
        let majority: Vec<&Node> = nodes.iter().filter(|n| !isolated.contains(&n.id())).collect();
        let new = leader_seen_by(majority[0], |leader| !isolated.contains(&leader)).await;
        let new_node = nodes.iter().find(|n| n.id() == new).unwrap();
        let acked = Instant::now();
        common::call(&mut api(new_node).await, "kv", &put(key, "new"))
            .await
            .unwrap();

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reads = keep_reading(reader, key, consistency, Duration::from_millis(50), stop.clone());
        // Let reads queue on the old leader, which cannot reach a quorum, then heal inside
        // their wait (a leader lease, 600 ms here).
        tokio::time::sleep(Duration::from_millis(300)).await;
        heal(&nodes);
        leader_seen_by(reader, |leader| leader == new).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        writing.store(false, std::sync::atomic::Ordering::SeqCst);
        for writer in writers {
            writer.await.unwrap();
        }
        let reads = reads.await.unwrap();

        let what = format!(
            "round {round}: a {consistency:?} read at node {} (old leader {old}, new {new})",
            reader.id()
        );
        assert_no_stale_read(&reads, acked, &what);
        assert!(
            reads.iter().any(|r| r.result.is_ok()),
            "round {round}: no read succeeded after the heal: {reads:#?}"
        );
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_leader_never_answers_a_linearizable_read_with_a_stale_value() {
    no_stale_read_across_a_heal(3, true, Consistency::Linearizable).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_leader_never_answers_a_lease_read_with_a_stale_value() {
    no_stale_read_across_a_heal(3, true, Consistency::Lease).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_never_serves_a_stale_read_index_from_a_deposed_leader() {
    no_stale_read_across_a_heal(5, false, Consistency::Linearizable).await;
}

/// A leader that hands leadership over (`transfer-leader`) keeps the quorum acknowledgements its
/// lease is computed from, while the new leader already commits: a lease read answered from them
/// would be stale (openraft fixed this upstream, #1747; 0.10.0-alpha.37 refuses reads once a
/// transfer starts). Here the old leader cannot hear the new term (the others' links to it are
/// silent, and its own go silent once the transfer happened): a lease read at it must fail, or
/// see the new value.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_handed_over_never_answers_a_lease_read_with_a_stale_value() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_with_kv(3, dir.path()).await;
    let silent = LinkFault {
        silent: true,
        ..LinkFault::default()
    };
    for round in 0..3 {
        let key: &'static str = format!("handover{round}").leak();
        let old = leader_seen_by(&nodes[0], |_| true).await;
        let old_node = nodes.iter().find(|n| n.id() == old).unwrap();
        let others: Vec<&Node> = nodes.iter().filter(|n| n.id() != old).collect();
        let (target, third) = (others[0], others[1]);
        common::call(&mut api(old_node).await, "kv", &put(key, "old"))
            .await
            .unwrap();
        // A transfer goes only to a node that has the leader's log: the target may be last
        // round's old leader, still catching up after the heal.
        let last = old_node.last_log_id();
        wait_for_last_log(target, |l| l >= last, &format!("round {round}: the target catching up")).await;
        // The others can no longer tell the old leader anything (votes, heartbeats).
        for other in &others {
            other.faults().set(old, silent);
        }
        api(old_node)
            .await
            .transfer_leader(pb::TransferLeaderToRequest { to: target.id() })
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while target.current_leader() != Some(target.id()) {
            assert!(Instant::now() < deadline, "round {round}: the transfer did not happen");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Nor can it hear their answers from now on.
        old_node.faults().set(target.id(), silent);
        old_node.faults().set(third.id(), silent);
        common::call(&mut api(target).await, "kv", &put(key, "new"))
            .await
            .unwrap();
        let read = common::query(
            &mut api(old_node).await,
            "kv",
            &format!(r#"{{"op":"get","key":"{key}"}}"#),
            Consistency::Lease,
        )
        .await;
        heal(&nodes);
        match read {
            Ok(value) => assert_eq!(
                value,
                r#"{"value":"new"}"#,
                "round {round}: node {old} handed over to {} and then answered a lease read with a stale value",
                target.id()
            ),
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "round {round}: {status:?}"),
        }
        leader_seen_by(old_node, |leader| leader == target.id()).await;
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// Issue 18's root cause, on a targeted schedule. openraft (0.10.0-alpha.37) matches a
/// replication reply to the requests in flight by log id alone (`InflightAppendQueue::drain_acked`)
/// and credits the follower with the send time of the newest request that log id covers. A reply
/// that left a follower before the cut can therefore be taken as the ack of an entry-less request
/// the cut-off leader sent after the heal: the leader then counts a quorum that acked it "after"
/// a read arrived (or a lease that is not there), and answers the read from its old state.
///
/// The schedule: the leader writes three entries while the majority's replies are held (replies
/// in flight as the cut begins); the cut goes silent both ways; the majority elects a new leader,
/// which acknowledges `key = new`; reads run at the old leader (or at a follower cut off with it,
/// which asks it for the read index); the old leader's links heal paced, a few
/// bytes at a time as after a TCP retransmission timeout, so the first held reply commits an
/// entry (which sends an entry-less request carrying the commit) before the last held reply, for
/// the same log id, arrives. The others' links to the old leader stay silent, so it learns of the
/// new term only from those replies. Every read must fail (retryably) or return `new`.
async fn no_stale_read_from_replies_held_across_a_cut(n: u64, reader_is_old_leader: bool, consistency: Consistency) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_with_kv(n, dir.path()).await;
    for round in 0..3 {
        let key: &'static str = format!("held{round}").leak();
        let old = leader_seen_by(&nodes[0], |_| true).await;
        let old_node = nodes.iter().find(|n| n.id() == old).unwrap();
        let followers: Vec<&Node> = nodes.iter().filter(|n| n.id() != old).collect();
        // The minority side: the old leader, plus (for a follower read) one follower that keeps
        // following it and asks it for the read index.
        let mut isolated = vec![old];
        if !reader_is_old_leader {
            isolated.push(followers[0].id());
        }
        let reader = nodes.iter().find(|n| n.id() == *isolated.last().unwrap()).unwrap();
        let majority: Vec<&Node> = nodes.iter().filter(|n| !isolated.contains(&n.id())).collect();
        common::call(&mut api(old_node).await, "kv", &put(key, "old"))
            .await
            .unwrap();
        // Every follower holds the leader's log, so replication to each is pipelined (not
        // probing, which would wait for a reply before sending more).
        let synced = old_node.last_log_id();
        for follower in &followers {
            let what = format!("round {round}, before the cut");
            wait_for_last_log(follower, |last| last == synced, &what).await;
        }

        let deaf = LinkFault {
            deaf: true,
            ..LinkFault::default()
        };
        for node in &majority {
            old_node.faults().set(node.id(), deaf);
        }
        // Three entries, one request each: every follower appends one before the next is written.
        let mut pending = Vec::new();
        for i in 0..3 {
            let before = old_node.last_log_id();
            let mut client = api(old_node).await;
            let payload = put(&format!("{key}-w{i}"), "x");
            pending.push(tokio::spawn(
                async move { common::call(&mut client, "kv", &payload).await },
            ));
            let what = format!("round {round}, write {i} at leader {old} (after {before:?})");
            let last = wait_for_last_log(old_node, |last| last > before, &what).await;
            for follower in &followers {
                wait_for_last_log(follower, |id| id == last, &what).await;
            }
        }

        silence(&nodes, &isolated);
        let new = leader_seen_by(majority[0], |leader| !isolated.contains(&leader)).await;
        let new_node = nodes.iter().find(|n| n.id() == new).unwrap();
        let acked = Instant::now();
        common::call(&mut api(new_node).await, "kv", &put(key, "new"))
            .await
            .unwrap();

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reads = keep_reading(reader, key, consistency, Duration::from_millis(2), stop.clone());
        // A linearizable read has to be waiting on the old leader before the replies come in;
        // nothing observable marks that, so give it a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let paced = LinkFault {
            pace: Duration::from_millis(5),
            ..LinkFault::default()
        };
        for node in &majority {
            old_node.faults().set(node.id(), paced);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while old_node.current_term() < new_node.current_term() {
            assert!(
                Instant::now() < deadline,
                "round {round}: node {old} never heard of term {}",
                new_node.current_term()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let reads = reads.await.unwrap();
        heal(&nodes);
        let what = format!(
            "round {round}: a {consistency:?} read at node {} through node {old}, deposed by {new}",
            reader.id()
        );
        assert_no_stale_read(&reads, acked, &what);
        leader_seen_by(old_node, |leader| leader == new).await;
        for write in pending {
            let _ = write.await;
        }
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_leader_never_counts_a_reply_from_before_the_cut_as_a_fresh_ack() {
    no_stale_read_from_replies_held_across_a_cut(3, true, Consistency::Linearizable).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_leader_never_renews_its_lease_from_a_reply_from_before_the_cut() {
    no_stale_read_from_replies_held_across_a_cut(3, true, Consistency::Lease).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_never_gets_a_read_index_from_a_reply_from_before_the_cut() {
    no_stale_read_from_replies_held_across_a_cut(5, false, Consistency::Linearizable).await;
}

/// `node`'s last log id (term, index), once it satisfies `ok`.
async fn wait_for_last_log(node: &Node, ok: impl Fn((u64, u64)) -> bool, what: &str) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let last = node.last_log_id();
        if ok(last) {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: node {} stayed at {last:?}",
            node.id()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A leader cut off from both followers (silent links, as behind a firewall) while writes arrive
/// on both sides of the cut: the writes sent to the old leader, or forwarded to it, fail within
/// their deadlines, with an unknown outcome if they reached its log, or as not proposed if they
/// were still waiting for a batch (the first 16 go, the rest wait); the majority elects a
/// leader and commits its writes; after the heal no minority write exists on any node, a
/// forwarded write exists exactly when it succeeded, and every replica agrees.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_with_writes_on_both_sides_commits_nothing_on_the_minority_side() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_with_kv(3, dir.path()).await;
    let old = leader_seen_by(&nodes[0], |_| true).await;
    let node = |id: u64| nodes.iter().find(|n| n.id() == id).unwrap();
    let mut to_old = api(node(old)).await;
    common::call(&mut to_old, "kv", &put("before", "1")).await.unwrap();
    let follower = nodes.iter().find(|n| n.id() != old).unwrap();
    let mut to_follower = api(follower).await;
    let mut read_at_follower = api(follower).await;

    silence(&nodes, &[old]);
    let cut = Instant::now();
    let minority: Vec<_> = (0..40)
        .map(|i| {
            let mut api = to_old.clone();
            tokio::spawn(async move { common::call(&mut api, "kv", &put(&format!("minority{i}"), "x")).await })
        })
        .collect();
    // Sent at once, before the follower notices: forwarded to the old leader.
    let forwarded = tokio::spawn(async move { common::call(&mut to_follower, "kv", &put("forwarded", "x")).await });
    // A linearizable read there asks the old leader first, then the new one.
    let read = tokio::spawn(async move {
        common::query(
            &mut read_at_follower,
            "kv",
            r#"{"op":"get","key":"before"}"#,
            Consistency::Linearizable,
        )
        .await
    });

    let new = leader_seen_by(follower, |leader| leader != old).await;
    let mut to_new = api(node(new)).await;
    for i in 0..5 {
        common::call(&mut to_new, "kv", &put(&format!("majority{i}"), "y"))
            .await
            .unwrap();
    }
    let (mut unknown, mut not_proposed) = (0, 0);
    for write in minority {
        let e = tokio::time::timeout(Duration::from_secs(15), write)
            .await
            .expect("a write to the cut-off leader still waits")
            .unwrap()
            .unwrap_err();
        match e.code() {
            tonic::Code::DeadlineExceeded if e.message().contains("outcome is unknown") => unknown += 1,
            tonic::Code::Unavailable if e.message().contains("not proposed") => not_proposed += 1,
            _ => panic!("a minority write: {e:?}"),
        }
    }
    // 16 in flight (the proposer's hold) never commit; the writes behind them never reach a log.
    assert!(
        (1..=16).contains(&unknown),
        "{unknown} writes reached the cut-off leader's log"
    );
    assert_eq!(not_proposed, 40 - unknown);
    // It reached the new leader (Ok), the old one (unknown outcome), or neither (unavailable).
    let forwarded = tokio::time::timeout(Duration::from_secs(15), forwarded)
        .await
        .expect("a write forwarded to the cut-off leader still waits")
        .unwrap();
    if let Err(e) = &forwarded {
        assert!(
            matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Unavailable),
            "{e:?}"
        );
    }
    let read = tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("a read at a follower still waits for the cut-off leader")
        .unwrap();
    assert_eq!(read.unwrap(), r#"{"value":"1"}"#);
    let failed_within = cut.elapsed();
    assert!(
        failed_within < Duration::from_secs(8),
        "the cut-off writes took {failed_within:?} to fail"
    );

    heal(&nodes);
    let last = wait_for_last_log(node(new), |_| true, "the new leader's log").await;
    let mut digests = Vec::new();
    for n in &nodes {
        let status = common::eventually(
            &format!("node {} to catch up", n.id()),
            Duration::from_secs(20),
            || async {
                let status = n.inner.status();
                (status.applied_index >= Some(last.1) && status.digest_index == status.applied_index.unwrap_or(0))
                    .then_some(status)
            },
        )
        .await;
        let mut api = api(n).await;
        let scan = common::query(&mut api, "kv", r#"{"op":"scan","start":""}"#, Consistency::Local)
            .await
            .unwrap();
        assert!(
            !scan.contains("minority"),
            "node {} has a minority write: {scan}",
            n.id()
        );
        assert!(scan.contains("majority4"), "node {}: {scan}", n.id());
        assert_eq!(
            scan.contains("forwarded"),
            forwarded.is_ok(),
            "node {}: {scan} after {forwarded:?}",
            n.id()
        );
        digests.push((status.applied_index, status.state_digest));
    }
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// Sets `fault` on the links from `from` to every other node.
fn set_outgoing(nodes: &[Node], from: u64, fault: LinkFault) {
    let node = nodes.iter().find(|n| n.id() == from).unwrap();
    for peer in nodes.iter().filter(|p| p.id() != from) {
        node.faults().set(peer.id(), fault);
    }
}

/// `drop` on the leader's own links, once its replication streams are open: they are reset
/// (not only new RPCs refused), so nothing the cut-off leader takes commits; the others, who
/// hear nothing from it, elect a new leader. Before the fault layer shaped established streams,
/// the open stream kept flowing and the write committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_link_resets_established_streams_so_the_cut_off_leader_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_with_kv(3, dir.path()).await;
    let old = leader_seen_by(&nodes[0], |_| true).await;
    let old_node = nodes.iter().find(|n| n.id() == old).unwrap();
    let mut api_old = api(old_node).await;
    // Replication streams to both followers are open and carrying entries.
    common::call(&mut api_old, "kv", &put("before", "1")).await.unwrap();
    set_outgoing(
        &nodes,
        old,
        LinkFault {
            drop: true,
            ..LinkFault::default()
        },
    );
    let write = tokio::time::timeout(
        Duration::from_secs(10),
        common::call(&mut api_old, "kv", &put("cut-off", "1")),
    )
    .await;
    assert!(
        !matches!(write, Ok(Ok(_))),
        "a leader whose links drop committed a write: {write:?}"
    );
    let others: Vec<&Node> = nodes.iter().filter(|n| n.id() != old).collect();
    let new = leader_seen_by(others[0], |leader| leader != old).await;
    heal(&nodes);
    let new_node = nodes.iter().find(|n| n.id() == new).unwrap();
    common::call(&mut api(new_node).await, "kv", &put("after", "1"))
        .await
        .unwrap();
    for node in &nodes {
        let api = api(node).await;
        let read = common::eventually(
            "the node to apply the write after the heal",
            Duration::from_secs(20),
            || {
                let mut api = api.clone();
                async move {
                    let after =
                        common::query(&mut api, "kv", r#"{"op":"get","key":"after"}"#, Consistency::Local).await;
                    (after.ok()? == r#"{"value":"1"}"#).then_some(())?;
                    common::query(&mut api, "kv", r#"{"op":"get","key":"cut-off"}"#, Consistency::Local)
                        .await
                        .ok()
                }
            },
        )
        .await;
        assert_eq!(
            read,
            r#"{"value":null}"#,
            "node {}: the cut-off write committed",
            node.id()
        );
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// `delay` on the leader's links, once its replication streams are open, holds what it sends:
/// a write (which needs a follower's acknowledgement) takes at least the delay. `duplicate`
/// sends every append on the open streams twice: writes still commit once and the replicas
/// agree.
#[tokio::test(flavor = "multi_thread")]
async fn delays_and_duplicates_act_on_established_streams() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_with_kv(3, dir.path()).await;
    let leader = leader_seen_by(&nodes[0], |_| true).await;
    let leader_node = nodes.iter().find(|n| n.id() == leader).unwrap();
    let mut api_leader = api(leader_node).await;
    common::call(&mut api_leader, "kv", &put("warm", "1")).await.unwrap();
    let delay = Duration::from_millis(400);
    set_outgoing(
        &nodes,
        leader,
        LinkFault {
            delay,
            ..LinkFault::default()
        },
    );
    for i in 0..3 {
        let started = Instant::now();
        common::call(&mut api_leader, "kv", &put("delayed", &i.to_string()))
            .await
            .unwrap();
        assert!(
            started.elapsed() >= delay,
            "write {i} committed in {:?}, under the link's delay of {delay:?}",
            started.elapsed()
        );
    }
    set_outgoing(
        &nodes,
        leader,
        LinkFault {
            duplicate: true,
            ..LinkFault::default()
        },
    );
    for i in 0..20 {
        common::call(
            &mut api_leader,
            "kv",
            &format!(r#"{{"op":"put","key":"dup{i}","value":"{i}"}}"#),
        )
        .await
        .unwrap();
    }
    heal(&nodes);
    let last = leader_node.last_log_id().1;
    common::eventually("the replicas to agree", Duration::from_secs(20), || async {
        let status: Vec<_> = nodes.iter().map(|n| n.inner.status()).collect();
        let at = |s: &pb::ClusterStatusResponse| (s.digest_index, s.state_digest.clone());
        (status.iter().all(|s| s.digest_index >= last && at(s) == at(&status[0]))).then_some(())
    })
    .await;
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
