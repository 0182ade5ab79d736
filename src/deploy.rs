//! The plugin commands: `deploy` (upload, the readiness barrier's progress, activation),
//! `plugins` (versions, and each node's view), `plugins rollback`, `plugins remove`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wasmraft_node::pb;

use crate::client::{Api, Target, connect, report};
use crate::signing::Signature;

/// Piece size of a deploy stream (the node re-chunks into log entries).
const UPLOAD_PIECE: usize = 256 << 10;

/// A deploy's outcome: the component's sha256, its activation index, and each voter's compile.
pub struct Deployed {
    pub sha256: String,
    pub index: u64,
    pub compiles: Vec<pb::NodeCompile>,
}

/// What a deploy sends.
pub struct Upload {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Handed to the plugin's `init`.
    pub config: Vec<u8>,
    /// A name for this version, shown by `plugins`.
    pub label: String,
    /// Run it in shadow beside the active version instead of activating it.
    pub shadow: bool,
    /// Its detached signature (`wasmraft plugin sign`), if it has one.
    pub signature: Option<Signature>,
}

impl Upload {
    /// `bytes` as `name`: no config, label or signature, activated.
    pub fn new(name: &str, bytes: Vec<u8>) -> Upload {
        Upload {
            name: name.to_string(),
            bytes,
            config: Vec::new(),
            label: String::new(),
            shadow: false,
            signature: None,
        }
    }
}

/// Uploads and activates a component, reporting each progress message to `on_progress`.
pub async fn deploy_bytes(
    client: &mut Api,
    upload: Upload,
    mut on_progress: impl FnMut(&pb::DeployProgress),
) -> Result<Deployed, tonic::Status> {
    let Upload {
        name,
        bytes,
        config,
        label,
        shadow,
        signature,
    } = upload;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let (signature, key_id) = match signature {
        Some(s) => (
            s.bytes().map_err(|e| tonic::Status::invalid_argument(e.to_string()))?,
            s.key_id,
        ),
        None => (Vec::new(), String::new()),
    };
    let start = pb::DeployRequest {
        part: Some(pb::deploy_request::Part::Start(pb::DeployStart {
            name,
            sha256: sha256.clone(),
            size: bytes.len() as u64,
            config,
            label,
            shadow,
            signature,
            key_id,
        })),
    };
    let pieces: Vec<pb::DeployRequest> = bytes
        .chunks(UPLOAD_PIECE)
        .map(|piece| pb::DeployRequest {
            part: Some(pb::deploy_request::Part::Data(piece.to_vec())),
        })
        .collect();
    let requests = futures::stream::iter(std::iter::once(start).chain(pieces));
    let mut progress = client.deploy(requests).await?.into_inner();
    let mut activated = None;
    let mut compiles = Vec::new();
    while let Some(msg) = progress.next().await {
        let msg = msg?;
        on_progress(&msg);
        if !msg.compiles.is_empty() {
            compiles = msg.compiles;
        }
        if let Some(index) = msg.activated_index {
            activated = Some(index);
        }
    }
    let index = activated.ok_or_else(|| tonic::Status::internal("deploy ended without an activation"))?;
    Ok(Deployed {
        sha256,
        index,
        compiles,
    })
}

/// One voter's compile, as a deploy reports it: "node 2 ready (cached)", "node 3 compiling".
fn compile_state(c: &pb::NodeCompile) -> String {
    match c.state.as_str() {
        "ready" if c.from_cache => format!("node {} ready (cached)", c.node),
        "ready" => format!("node {} ready ({:.1} s)", c.node, c.compile_ms as f64 / 1000.0),
        state => format!("node {} {state}", c.node),
    }
}

/// Activates a built-in of the node (e.g. `kv-native`) under `name`.
pub async fn activate_builtin(client: &mut Api, name: &str, builtin: &str) -> Result<u64, tonic::Status> {
    let start = pb::DeployRequest {
        part: Some(pb::deploy_request::Part::Start(pb::DeployStart {
            name: name.to_string(),
            sha256: format!("builtin:{builtin}"),
            size: 0,
            config: Vec::new(),
            label: String::new(),
            shadow: false,
            signature: Vec::new(),
            key_id: String::new(),
        })),
    };
    let mut progress = client.deploy(futures::stream::iter([start])).await?.into_inner();
    let mut activated = None;
    while let Some(msg) = progress.next().await {
        activated = msg?.activated_index.or(activated);
    }
    activated.ok_or_else(|| tonic::Status::internal("activation did not report an index"))
}

/// `deploy NAME FILE`: `upload` holds everything but the bytes, read from `file` (and its
/// signature, `signature` or FILE.sig, when there is one).
pub async fn deploy(
    target: &Target,
    mut upload: Upload,
    file: &Path,
    signature: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    upload.bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    upload.signature = crate::signing::for_component(file, &upload.bytes, signature)?;
    let (name, shadow) = (upload.name.clone(), upload.shadow);
    let signed = upload.signature.as_ref().map(|s| s.key_id.clone());
    let mut client = connect(target).await?;
    let started = Instant::now();
    let progress = crate::progress::bytes(upload.bytes.len() as u64, &format!("deploy {name}"));
    let result = deploy_bytes(&mut client, upload, |msg| {
        progress.set_position(msg.committed_bytes);
        if !msg.compiles.is_empty() {
            let states: Vec<String> = msg.compiles.iter().map(compile_state).collect();
            progress.set_message(format!("compiling: {}", states.join(", ")));
        }
    })
    .await;
    progress.finish_and_clear();
    match result {
        Ok(deployed) => {
            println!("deployed {name}{}", if shadow { " in shadow" } else { "" });
            println!("  sha256      {}", deployed.sha256);
            if let Some(key_id) = signed {
                println!("  signed by   key {key_id}");
            }
            if shadow {
                println!(
                    "  shadow from log index {} (see: wasmraft plugins shadow {name})",
                    deployed.index
                );
            } else {
                println!("  activated   at log index {}", deployed.index);
            }
            if !deployed.compiles.is_empty() {
                let states: Vec<String> = deployed.compiles.iter().map(compile_state).collect();
                println!("  compiled    {}", states.join(", "));
            }
            println!("  took        {:.2} s", started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => Ok(report(&status)),
    }
}

pub async fn plugins(target: &Target, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    let (plugins, shadows) = match client.list_plugins(pb::ListPluginsRequest {}).await {
        Ok(resp) => {
            let resp = resp.into_inner();
            (resp.plugins, resp.shadows)
        }
        Err(status) => return Ok(report(&status)),
    };
    let nodes = every_node(&mut client).await;
    if as_json {
        let version = |sha256: &str, size: u64, label: &str| json!({"sha256": sha256, "size": size, "label": label});
        let plugins: Vec<Value> = plugins
            .iter()
            .map(|p| {
                let mut v = version(&p.sha256, p.size, &p.label);
                v["name"] = json!(p.name);
                v["activated_index"] = json!(p.activated_index);
                v["earlier"] = p.history.iter().map(|e| version(&e.sha256, e.size, &e.label)).collect();
                if let Some(shadow) = shadows
                    .iter()
                    .find(|s| s.candidate.as_ref().is_some_and(|c| c.name == p.name))
                {
                    v["shadow"] = shadow_json(shadow);
                }
                v
            })
            .collect();
        let nodes: Vec<Value> = nodes
            .iter()
            .map(|(node, view)| match view {
                Ok(view) => json!({
                    "id": node.id,
                    "addr": node.addr,
                    "plugins": view.plugins.iter().map(|p| json!({"name": p.name, "sha256": p.sha256})).collect::<Vec<_>>(),
                    "compiles": view.compiles.iter().map(|c| json!({"sha256": c.sha256, "state": c.state})).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"id": node.id, "addr": node.addr, "unreachable": e}),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"plugins": plugins, "nodes": nodes}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if plugins.is_empty() {
        println!("no plugins (deploy one: wasmraft deploy NAME FILE.wasm)");
    }
    for p in plugins {
        println!(
            "{:<16} {}  {:>9} bytes  active since index {}{}",
            p.name,
            p.sha256,
            p.size,
            p.activated_index,
            labelled(&p.label)
        );
        for (i, earlier) in p.history.iter().rev().enumerate() {
            let what = if i == 0 { "earlier:" } else { "" };
            println!(
                "{what:>16} {}  {:>9} bytes{}",
                earlier.sha256,
                earlier.size,
                labelled(&earlier.label)
            );
        }
        for shadow in shadows
            .iter()
            .filter(|s| s.candidate.as_ref().is_some_and(|c| c.name == p.name))
        {
            let candidate = shadow.candidate.clone().unwrap_or_default();
            let state = match shadow.stopped_index {
                Some(index) => format!("STOPPED at index {index}"),
                None => format!("in shadow since index {}", shadow.started_index),
            };
            println!(
                "{:>16} {}  {:>9} bytes  {state}{}  (wasmraft plugins shadow {})",
                "shadow:",
                candidate.sha256,
                candidate.size,
                labelled(&candidate.label),
                p.name
            );
        }
    }
    if !nodes.is_empty() {
        println!("nodes");
    }
    for (node, view) in nodes {
        let line = match view {
            Ok(view) => {
                let mut parts: Vec<String> = view
                    .plugins
                    .iter()
                    .map(|p| format!("{} {}", p.name, &p.sha256[..p.sha256.len().min(12)]))
                    .collect();
                parts.extend(
                    view.compiles
                        .iter()
                        .filter(|c| c.state != "ready")
                        .map(|c| format!("{} {}", &c.sha256[..c.sha256.len().min(12)], c.state)),
                );
                if parts.is_empty() {
                    "no plugins".to_string()
                } else {
                    parts.join(", ")
                }
            }
            Err(e) => format!("unreachable: {e}"),
        };
        println!("  node {:<4} {line}", node.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// Each member's view: the plugins it runs and its compiles (or why it did not answer).
async fn every_node(client: &mut Api) -> Vec<(pb::MemberView, Result<pb::ListPluginsResponse, String>)> {
    let Ok(members) = client.members(pb::MembersRequest::default()).await else {
        return Vec::new();
    };
    let members = members.into_inner().members;
    members
        .into_iter()
        .map(|mut member| {
            let view = crate::client::member_answer(member.plugins.take(), member.error.clone());
            (member, view)
        })
        .collect()
}

/// `  (label)` after a version, or nothing.
fn labelled(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!("  ({label})")
    }
}

pub async fn rollback(target: &Target, name: String, sha256: String) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    let started = Instant::now();
    let progress = crate::progress::spinner(&format!("rolling back {name}"));
    let request = pb::RollbackRequest {
        name: name.clone(),
        sha256,
    };
    let result = async {
        let mut stream = client.rollback(request).await?.into_inner();
        let mut last = None;
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            if !msg.compiles.is_empty() {
                let states: Vec<String> = msg.compiles.iter().map(compile_state).collect();
                progress.set_message(format!("rolling back {name}: {}", states.join(", ")));
            }
            last = Some(msg);
        }
        last.filter(|m| m.activated_index.is_some())
            .ok_or_else(|| tonic::Status::internal("rollback ended without an activation"))
    }
    .await;
    progress.finish_and_clear();
    match result {
        Ok(done) => {
            println!("rolled back {name}");
            println!("  sha256      {}", done.sha256);
            println!("  activated   at log index {}", done.activated_index.unwrap_or(0));
            println!("  took        {:.2} s", started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => Ok(report(&status)),
    }
}

pub async fn remove(target: &Target, name: String, yes: bool) -> anyhow::Result<ExitCode> {
    if !yes {
        eprintln!("error (bad request): removing {name} deletes its data on every node; add --yes to confirm");
        return Ok(ExitCode::from(1));
    }
    let mut client = connect(target).await?;
    match client
        .remove_plugin(pb::RemovePluginRequest { name: name.clone() })
        .await
    {
        Ok(resp) => {
            println!("removed {name} at log index {}", resp.into_inner().index);
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => Ok(report(&status)),
    }
}

/// `plugins shadow NAME`: every member's comparison, one line each, then the differences.
pub async fn shadow_status(target: &Target, name: String, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    let request = pb::MembersRequest { shadow: name.clone() };
    let members = match client.members(request).await {
        Ok(resp) => resp.into_inner().members,
        Err(status) => return Ok(report(&status)),
    };
    let views: Vec<(u64, Result<pb::ShadowStatusResponse, String>)> = members
        .into_iter()
        .map(|m| (m.id, crate::client::member_answer(m.shadow, m.error)))
        .collect();
    if as_json {
        let nodes: Vec<Value> = views
            .iter()
            .map(|(id, view)| match view {
                Ok(view) => {
                    let shadow = view.shadow.as_ref().map(shadow_json);
                    json!({"id": id, "applied_index": view.applied_index, "shadow": shadow})
                }
                Err(e) => json!({"id": id, "unreachable": e}),
            })
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({"plugin": name, "nodes": nodes}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut shown = None;
    for (id, view) in &views {
        match view {
            Ok(pb::ShadowStatusResponse {
                shadow: Some(record), ..
            }) => {
                let s = record.stats.unwrap_or_default();
                let stopped = record.stopped_index.map_or(String::new(), |index| {
                    format!(", STOPPED at index {index}: {}", record.stopped_reason)
                });
                say!(
                    "node {id}: compared {}, equal {}, different {}, candidate errors {}; fuel: active {}, candidate {}{stopped}",
                    s.compared,
                    s.equal,
                    s.different,
                    s.candidate_errors,
                    s.active_fuel,
                    s.candidate_fuel
                );
                shown.get_or_insert(record.clone());
            }
            Ok(_) => say!("node {id}: no shadow run of {name}"),
            Err(e) => say!("node {id}: unreachable: {e}"),
        }
    }
    let Some(record) = shown else {
        return Ok(ExitCode::from(1));
    };
    let candidate = record.candidate.unwrap_or_default();
    say!(
        "candidate {}{} in shadow since log index {}",
        candidate.sha256,
        labelled(&candidate.label),
        record.started_index
    );
    if !record.differences.is_empty() {
        say!("first differences:");
    }
    for d in &record.differences {
        say!("  index {}: {}", d.index, String::from_utf8_lossy(&d.payload));
        say!("    active     {}", d.active);
        say!("    candidate  {}", d.candidate);
    }
    Ok(ExitCode::SUCCESS)
}

fn shadow_json(record: &pb::ShadowRecord) -> Value {
    let s = record.stats.unwrap_or_default();
    let candidate = record.candidate.clone().unwrap_or_default();
    json!({
        "sha256": candidate.sha256,
        "label": candidate.label,
        "started_index": record.started_index,
        "compared": s.compared,
        "equal": s.equal,
        "different": s.different,
        "candidate_errors": s.candidate_errors,
        "active_fuel": s.active_fuel,
        "candidate_fuel": s.candidate_fuel,
        "stopped_index": record.stopped_index,
        "stopped_reason": (!record.stopped_reason.is_empty()).then_some(&record.stopped_reason),
        "differences": record.differences.iter().map(|d| json!({
            "index": d.index,
            "payload": String::from_utf8_lossy(&d.payload),
            "active": d.active,
            "candidate": d.candidate,
        })).collect::<Vec<_>>(),
    })
}

/// `plugins promote NAME` / `plugins drop-shadow NAME`.
pub async fn end_shadow(target: &Target, name: String, promote: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    let req = pb::EndShadowRequest {
        name: name.clone(),
        promote,
    };
    match client.end_shadow(req).await {
        Ok(resp) => {
            let index = resp.into_inner().index;
            if promote {
                println!("promoted {name}'s shadow: it serves from log index {index}");
            } else {
                println!("dropped {name}'s shadow at log index {index}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => Ok(report(&status)),
    }
}
