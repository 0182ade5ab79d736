//! The client commands: `call`, `query`, `cluster ...` (plugin commands are in `deploy`).

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use wasmraft_node::pb;

pub use crate::context::{Api, Target, connect};

/// One member's answer in a `Members` reply: `value`, or why the member did not answer.
pub fn member_answer<T>(value: Option<T>, error: String) -> Result<T, String> {
    match value {
        Some(value) if error.is_empty() => Ok(value),
        _ => Err(error),
    }
}

/// Prints a failed request's status the way users read it, and picks the exit code.
pub fn report(status: &tonic::Status) -> ExitCode {
    let kind = match status.code() {
        tonic::Code::NotFound => "not found",
        tonic::Code::FailedPrecondition => "failed",
        tonic::Code::InvalidArgument => "bad request",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission denied",
        _ => "error",
    };
    eprintln!("error ({kind}): {}", status.message());
    ExitCode::from(1)
}

/// Text given on the command line, or a file's bytes with `--file`.
pub fn payload(text: Option<String>, file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    match (text, file) {
        (Some(_), Some(_)) => anyhow::bail!("give the payload as text or with --file, not both"),
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(file)) => std::fs::read(file).with_context(|| format!("reading {}", file.display())),
        (None, None) => anyhow::bail!("no payload: give it as text or with --file"),
    }
}

fn print_bytes(bytes: &[u8]) {
    use std::io::Write as _;
    let mut out = std::io::stdout();
    let _ = out.write_all(bytes);
    if !bytes.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
}

/// A client id for retry-safe calls, unique to this process and thread (and time).
pub fn new_client_id() -> String {
    let seed = format!(
        "{:?} {} {:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        std::thread::current().id()
    );
    hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(seed)[..16])
}

/// How long a call is sent again while it fails retryably.
const CALL_RETRY_FOR: Duration = Duration::from_secs(20);

/// Sends `req` (which should carry a session), and sends it again, with the same session, while
/// it fails retryably: `UNAVAILABLE` (no leader; not proposed) or `DEADLINE_EXCEEDED` (outcome
/// unknown: the session makes a repeat safe, the state machine applies it once).
pub async fn call_retrying(
    api: &mut Api,
    req: pb::CallRequest,
) -> Result<tonic::Response<pb::CallResponse>, tonic::Status> {
    retrying(|| {
        let (mut api, req) = (api.clone(), req.clone());
        async move { api.call(req).await }
    })
    .await
}

/// `send()` again while it fails retryably, as [`call_retrying`] says.
pub async fn retrying<T, F, Fut>(mut send: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + CALL_RETRY_FOR;
    let mut backoff = Duration::from_millis(50);
    loop {
        match send().await {
            Err(status)
                if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
                    && std::time::Instant::now() < deadline =>
            {
                tracing::debug!("call failed ({}); sending it again", status.message());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            outcome => return outcome,
        }
    }
}

pub async fn call(target: &Target, plugin: String, payload: Vec<u8>) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    let session = pb::Session {
        client: new_client_id(),
        seq: 1,
    };
    let req = pb::CallRequest {
        plugin,
        payload,
        session: Some(session),
    };
    match call_retrying(&mut client, req).await {
        Ok(resp) => {
            print_bytes(&resp.into_inner().result);
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => Ok(report(&status)),
    }
}

pub fn parse_consistency(s: &str) -> Result<pb::Consistency, String> {
    match s {
        "linearizable" => Ok(pb::Consistency::Linearizable),
        "lease" => Ok(pb::Consistency::Lease),
        "local" => Ok(pb::Consistency::Local),
        other => Err(format!(
            "unknown consistency {other:?}: use linearizable, lease or local"
        )),
    }
}

pub async fn query(
    target: &Target,
    plugin: String,
    request: Vec<u8>,
    consistency: pb::Consistency,
    shadow: bool,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    let req = pb::QueryRequest {
        plugin,
        request,
        consistency: consistency as i32,
        shadow,
    };
    match client.query(req).await {
        Ok(resp) => {
            print_bytes(&resp.into_inner().result);
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => Ok(report(&status)),
    }
}

/// Prints one node's status the way `cluster status` shows it.
pub fn print_status(s: &pb::ClusterStatusResponse) {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    println!(
        "node {} ({}), term {}, clients at {}",
        s.id, s.state, s.term, s.client_addr
    );
    match s.leader_id {
        Some(id) => println!("leader      node {id} (peer address {})", s.leader_addr),
        None => println!("leader      none yet"),
    }
    println!(
        "log         last {}, committed {}, applied {}",
        opt(s.last_log_index),
        opt(s.committed_index),
        opt(s.applied_index)
    );
    println!("digest      {} (at index {})", s.state_digest, s.digest_index);
    if s.joint {
        println!("membership  changing (joint consensus)");
    }
    if let Some(snap) = &s.snapshot {
        let last = snap.last_log_id.as_ref().map_or("none".to_string(), |id| {
            format!("at index {} (term {})", id.index, id.term)
        });
        println!(
            "snapshot    {last}, {}, log purged to {}{}",
            mb(snap.file_bytes),
            opt(snap.purged_index),
            if snap.building { " (building a new one now)" } else { "" }
        );
        println!(
            "  built {}, sent {}, installed {}, resumed {} ({}), rejected: {} corrupted, {} truncated, {} stale, {} unknown format",
            snap.built,
            snap.sent,
            snap.installed,
            snap.resumed,
            mb(snap.resumed_bytes),
            snap.rejected_corrupted,
            snap.rejected_truncated,
            snap.rejected_stale,
            snap.rejected_format
        );
        if snap.build_failed > 0 {
            println!("  builds failed {}, last: {}", snap.build_failed, snap.last_build_error);
        }
    }
    for n in &s.nodes {
        println!(
            "  node {:<4} {:<28} {:<8} matched {}",
            n.id,
            n.addr,
            if n.voter { "voter" } else { "learner" },
            opt(n.matched_index)
        );
    }
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Bytes per second as MB/s.
pub fn mb_per_sec(bytes: u64, micros: u64) -> f64 {
    if micros == 0 {
        return 0.0;
    }
    bytes as f64 / micros as f64
}

pub async fn snapshot(target: &Target) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    let progress = crate::progress::spinner("building a snapshot");
    let result = client.snapshot(pb::SnapshotRequest {}).await;
    progress.finish_and_clear();
    let s = match result {
        Ok(resp) => resp.into_inner(),
        Err(status) => return Ok(report(&status)),
    };
    let at = s
        .last_log_id
        .as_ref()
        .map_or("-".to_string(), |id| format!("index {} (term {})", id.index, id.term));
    println!("snapshot at {at}: {}", s.path);
    println!(
        "  {} of state in a {} file, built in {:.2} s ({:.1} MB/s)",
        mb(s.raw_bytes),
        mb(s.file_bytes),
        s.micros as f64 / 1e6,
        mb_per_sec(s.raw_bytes, s.micros)
    );
    match s.purged_index {
        Some(index) => println!("  log purged up to index {index}"),
        None => println!("  log not purged (fewer entries than the kept tail)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `ID=ADDR` pairs.
pub fn parse_members(members: &[String]) -> anyhow::Result<HashMap<u64, String>> {
    members
        .iter()
        .map(|m| {
            let (id, addr) = m
                .split_once('=')
                .with_context(|| format!("member {m:?}: write ID=ADDR, e.g. 2=http://127.0.0.1:7002"))?;
            let id = id
                .parse()
                .with_context(|| format!("member {m:?}: the id is not a number"))?;
            Ok((id, addr.to_string()))
        })
        .collect()
}

pub async fn init(target: &Target, members: HashMap<u64, String>) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    match client.init(pb::InitRequest { members }).await {
        Ok(_) => {
            println!("cluster initialized");
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => Ok(report(&status)),
    }
}

pub async fn add_learner(target: &Target, id: u64, addr: String, no_wait: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    let req = pb::AddLearnerRequest {
        id,
        addr,
        blocking: !no_wait,
    };
    match client.add_learner(req).await {
        Ok(resp) => {
            println!("node {id} added as a learner at log index {}", resp.into_inner().index);
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => Ok(report(&status)),
    }
}

pub async fn change_membership(target: &Target, voters: Vec<u64>, retain: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    let req = pb::ChangeMembershipRequest {
        voters: voters.clone(),
        retain,
    };
    match client.change_membership(req).await {
        Ok(resp) => {
            println!("voters are now {voters:?} (log index {})", resp.into_inner().index);
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => Ok(report(&status)),
    }
}

pub async fn remove_learner(target: &Target, id: u64) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    match client.remove_learner(pb::RemoveLearnerRequest { id }).await {
        Ok(resp) => {
            println!("learner {id} removed at log index {}", resp.into_inner().index);
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => Ok(report(&status)),
    }
}

pub async fn transfer_leader(target: &Target, to: u64) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    match client.transfer_leader(pb::TransferLeaderToRequest { to }).await {
        Ok(_) => {
            println!("leadership transfer to node {to} started");
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => Ok(report(&status)),
    }
}
