//! `cluster status`: one node's view, or with `--all` every member's in one table, with digests
//! that differ at an equal applied index flagged; `--json` for scripts.

use std::process::ExitCode;

use serde_json::{Value, json};
use wasmraft_node::pb;

use crate::client::{Target, connect, mb, report};

/// A node's status as JSON.
fn to_json(s: &pb::ClusterStatusResponse) -> Value {
    let snapshot = s.snapshot.as_ref().map(|snap| {
        json!({
            "last_log_index": snap.last_log_id.as_ref().map(|id| id.index),
            "file_bytes": snap.file_bytes,
            "purged_index": snap.purged_index,
            "built": snap.built,
            "sent": snap.sent,
            "installed": snap.installed,
            "building": snap.building,
            "rejected": {
                "corrupted": snap.rejected_corrupted,
                "truncated": snap.rejected_truncated,
                "stale": snap.rejected_stale,
                "format": snap.rejected_format,
            },
        })
    });
    json!({
        "id": s.id,
        "state": s.state,
        "term": s.term,
        "client_addr": s.client_addr,
        "leader_id": s.leader_id,
        "last_log_index": s.last_log_index,
        "committed_index": s.committed_index,
        "applied_index": s.applied_index,
        "state_digest": s.state_digest,
        "digest_index": s.digest_index,
        "joint": s.joint,
        "snapshot": snapshot,
        "members": s.nodes.iter().map(|n| json!({"id": n.id, "addr": n.addr, "voter": n.voter, "matched_index": n.matched_index})).collect::<Vec<_>>(),
    })
}

/// One member as `--all` sees it.
struct Row {
    id: u64,
    addr: String,
    status: Result<pb::ClusterStatusResponse, String>,
    plugins: Vec<String>,
}

pub async fn status(target: &Target, all: bool, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    let s = match client.cluster_status(pb::ClusterStatusRequest {}).await {
        Ok(resp) => resp.into_inner(),
        Err(status) => return Ok(report(&status)),
    };
    if !all {
        if as_json {
            println!("{}", serde_json::to_string_pretty(&to_json(&s))?);
        } else {
            crate::client::print_status(&s);
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The node asks its peers (over the peer connections) and answers for all of them.
    let members = match client.members(pb::MembersRequest::default()).await {
        Ok(resp) => resp.into_inner().members,
        Err(status) => return Ok(report(&status)),
    };
    let rows: Vec<Row> = members
        .into_iter()
        .map(|m| Row {
            id: m.id,
            addr: m.addr,
            status: crate::client::member_answer(m.status, m.error),
            plugins: m
                .plugins
                .map_or_else(Vec::new, |list| list.plugins.into_iter().map(|p| p.name).collect()),
        })
        .collect();
    let flagged = wasmraft_node::diverged(rows.iter().filter_map(|r| {
        let s = r.status.as_ref().ok()?;
        Some((r.id, s.digest_index, s.state_digest.as_str()))
    }));
    let top = rows
        .iter()
        .filter_map(|r| r.status.as_ref().ok()?.applied_index)
        .max()
        .unwrap_or(0);
    if as_json {
        let nodes: Vec<Value> = rows
            .iter()
            .map(|r| match &r.status {
                Ok(s) => {
                    let mut v = to_json(s);
                    v["plugins"] = json!(r.plugins);
                    v["lag"] = json!(top - s.applied_index.unwrap_or(0));
                    v["diverged"] = json!(flagged.get(&r.id));
                    v
                }
                Err(e) => json!({"id": r.id, "addr": r.addr, "unreachable": e}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "nodes": nodes }))?);
    } else {
        println!(
            "{:<5} {:<10} {:>5} {:>9} {:>6}  {:<26} {:<18} plugins",
            "node", "role", "term", "applied", "lag", "digest @ index", "snapshot"
        );
        for r in &rows {
            let s = match &r.status {
                Ok(s) => s,
                Err(e) => {
                    println!("{:<5} unreachable at {}: {e}", r.id, r.addr);
                    continue;
                }
            };
            let applied = s.applied_index.unwrap_or(0);
            let snapshot = s.snapshot.as_ref().map_or("-".to_string(), |snap| {
                snap.last_log_id.as_ref().map_or("none".to_string(), |id| {
                    format!("@{} {}", id.index, mb(snap.file_bytes))
                })
            });
            let digest = format!(
                "{} @ {}",
                &s.state_digest[..s.state_digest.len().min(12)],
                s.digest_index
            );
            println!(
                "{:<5} {:<10} {:>5} {:>9} {:>6}  {:<26} {:<18} {}{}",
                r.id,
                s.state,
                s.term,
                applied,
                top - applied,
                digest,
                snapshot,
                if r.plugins.is_empty() {
                    "-".to_string()
                } else {
                    r.plugins.join(",")
                },
                flagged
                    .get(&r.id)
                    .map_or(String::new(), |why| format!("  DIVERGED: {why}"))
            );
        }
    }
    Ok(if flagged.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `cluster check`: every member's digest at the latest common checkpoint.
pub async fn check(target: &Target, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    let checked = match client.check_digests(pb::CheckDigestsRequest {}).await {
        Ok(resp) => resp.into_inner(),
        Err(status) => return Ok(report(&status)),
    };
    let unanswered: Vec<&pb::MemberDigest> = checked.members.iter().filter(|m| !m.error.is_empty()).collect();
    if as_json {
        let members: Vec<Value> = checked
            .members
            .iter()
            .map(|m| json!({"id": m.id, "digest": m.digest, "error": (!m.error.is_empty()).then_some(&m.error)}))
            .collect();
        let summary = json!({"index": checked.index, "members": members, "diverged": checked.diverged});
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        match checked.index {
            Some(index) if checked.diverged.is_empty() => {
                let agreed: Vec<String> = checked
                    .members
                    .iter()
                    .filter(|m| m.error.is_empty())
                    .map(|m| m.id.to_string())
                    .collect();
                let digest = checked
                    .members
                    .iter()
                    .find(|m| m.error.is_empty())
                    .map_or("", |m| &m.digest);
                println!("index {index}: nodes {} agree (digest {digest})", agreed.join(", "));
            }
            Some(index) => {
                for m in checked.members.iter().filter(|m| m.error.is_empty()) {
                    let flag = if checked.diverged.contains(&m.id) {
                        "  DIVERGED"
                    } else {
                        ""
                    };
                    println!("node {:<4} digest at index {index}: {}{flag}", m.id, m.digest);
                }
            }
            None => println!("no checkpoint common to the members that answered (one is kept every 256 entries)"),
        }
        for m in &unanswered {
            println!("node {:<4} not compared: {}", m.id, m.error);
        }
    }
    Ok(if !checked.diverged.is_empty() {
        ExitCode::from(1)
    } else if checked.index.is_none() || !unanswered.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
