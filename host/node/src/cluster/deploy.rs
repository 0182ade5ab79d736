//! Deploy through the log: a validated component goes out as 1 MiB `BlobChunk` entries; every
//! voter then compiles it in the background, and once all of them report it ready (the readiness
//! barrier, `Peer.Prepare`) one `Activate` entry goes out: every replica switches versions at that
//! entry's index, and none stalls its apply for the compile.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{info, warn};

use super::NodeInner;
use crate::pb::{self, command, command_result, peer_client::PeerClient};
use crate::types::NodeId;

/// Upload pieces per log entry.
pub const DEPLOY_CHUNK_BYTES: usize = 1 << 20;

/// How long the readiness barrier waits for a voter to compile a component (a large Python or
/// JavaScript component takes tens of seconds on a small machine).
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);

/// A control entry's replicated result as the client's answer.
pub(crate) fn control_outcome(result: pb::CommandResult) -> Result<pb::CommandResult, Status> {
    match &result.kind {
        Some(command_result::Kind::Rejected(message)) => Err(Status::failed_precondition(message.clone())),
        _ => Ok(result),
    }
}

impl NodeInner {
    /// Proposes `bytes` (a component already validated here, of sha256 `sha256`) in pieces, then
    /// its activation as `start.name`, reporting progress on `tx` and ending with the activation
    /// index (or the error).
    pub async fn deploy(
        &self,
        start: pb::DeployStart,
        sha256: String,
        bytes: Vec<u8>,
        tx: mpsc::Sender<Result<pb::DeployProgress, Status>>,
    ) {
        let total = bytes.len() as u64;
        let progress = |committed: u64| pb::DeployProgress {
            committed_bytes: committed,
            total_bytes: total,
            sha256: sha256.clone(),
            ..Default::default()
        };
        let mut last_chunk = 0;
        for (i, piece) in bytes.chunks(DEPLOY_CHUNK_BYTES).enumerate() {
            let offset = (i * DEPLOY_CHUNK_BYTES) as u64;
            let command = pb::Command {
                timestamp_ms: 0,
                kind: Some(command::Kind::BlobChunk(pb::BlobChunk {
                    sha256: sha256.clone(),
                    offset,
                    total,
                    data: piece.to_vec().into(),
                })),
            };
            let sent = match self
                .propose(command)
                .await
                .and_then(|(i, r)| control_outcome(r).map(|_| i))
            {
                Ok(index) => {
                    last_chunk = index;
                    tx.send(Ok(progress(offset + piece.len() as u64))).await
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            if sent.is_err() {
                return; // the client went away
            }
        }
        info!(bytes = total, index = last_chunk, "component uploaded through the log");
        let activate = pb::Activate {
            name: start.name,
            sha256: sha256.clone(),
            config: start.config,
            label: start.label,
            shadow: start.shadow,
            signature: start.signature,
            key_id: start.key_id,
        };
        self.activate_stored(activate, last_chunk, progress(total), tx).await;
    }
}

impl NodeInner {
    /// The readiness barrier: every voter compiles `sha256` (uploaded up to log index `index`)
    /// and reports it ready, within [`PREPARE_TIMEOUT`]; each report goes to `tx`, and the last
    /// one is returned. The error names every voter that is not ready, and why.
    async fn ready_everywhere(
        &self,
        sha256: &str,
        index: u64,
        tx: &mpsc::Sender<Result<pb::DeployProgress, Status>>,
        report: impl Fn(&[pb::NodeCompile]) -> pb::DeployProgress,
    ) -> Result<Vec<pb::NodeCompile>, Status> {
        let voters: Vec<(NodeId, String)> = {
            let metrics = self.raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            membership
                .voter_ids()
                .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
                .collect()
        };
        let mut compiles: Vec<pb::NodeCompile> = voters
            .iter()
            .map(|(id, _)| pb::NodeCompile {
                node: *id,
                state: "compiling".into(),
                ..Default::default()
            })
            .collect();
        let _ = tx.send(Ok(report(&compiles))).await;
        let request = pb::PrepareRequest {
            sha256: sha256.to_string(),
            index,
        };
        let mut asks: FuturesUnordered<_> = voters
            .into_iter()
            .map(|(id, addr)| {
                let request = request.clone();
                async move {
                    let answer = if id == self.id {
                        Ok(self.prepare(&request.sha256, request.index, PREPARE_TIMEOUT).await)
                    } else {
                        self.ask_prepare(id, &addr, request).await
                    };
                    (id, answer)
                }
            })
            .collect();
        while let Some((id, answer)) = asks.next().await {
            let Some(entry) = compiles.iter_mut().find(|c| c.node == id) else {
                continue;
            };
            match answer {
                Ok(resp) if resp.error.is_empty() => {
                    entry.state = "ready".into();
                    entry.from_cache = resp.from_cache;
                    entry.compile_ms = resp.compile_ms;
                }
                Ok(resp) => entry.state = resp.error,
                Err(status) => entry.state = format!("unreachable: {}", status.message()),
            }
            let _ = tx.send(Ok(report(&compiles))).await;
        }
        let not_ready: Vec<String> = compiles
            .iter()
            .filter(|c| c.state != "ready")
            .map(|c| format!("node {}: {}", c.node, c.state))
            .collect();
        if not_ready.is_empty() {
            Ok(compiles)
        } else {
            Err(Status::failed_precondition(format!(
                "not activated: the component is not ready on every voter ({}); nothing changed",
                not_ready.join("; ")
            )))
        }
    }

    async fn ask_prepare(
        &self,
        id: NodeId,
        addr: &str,
        request: pb::PrepareRequest,
    ) -> Result<pb::PrepareResponse, Status> {
        let channel = self
            .network
            .channel(id, addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(request);
        request.set_timeout(PREPARE_TIMEOUT + Duration::from_secs(5));
        Ok(PeerClient::new(channel).prepare(request).await?.into_inner())
    }

    /// On this node: waits until it applied `index` (the upload's last piece), then until the
    /// component `sha256` is compiled here (starting the compile if needed), within `wait`.
    pub async fn prepare(&self, sha256: &str, index: u64, wait: Duration) -> pb::PrepareResponse {
        let failed = |error: String| pb::PrepareResponse {
            error,
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + wait;
        if let Err(e) = self
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "upload applied")
            .await
        {
            return failed(format!("has not applied the upload (log index {index}): {e}"));
        }
        let compiler = self.shared.compiler.clone();
        let sha = sha256.to_string();
        let compile = tokio::task::spawn_blocking(move || compiler.prepare_blocking(&sha));
        match tokio::time::timeout_at(deadline, compile).await {
            Ok(Ok(Ok(prepared))) => pb::PrepareResponse {
                error: String::new(),
                from_cache: prepared.from_cache,
                compile_ms: prepared.took.as_millis() as u64,
            },
            Ok(Ok(Err(e))) => failed(e),
            Ok(Err(e)) => failed(format!("the compile task failed: {e}")),
            Err(_) => failed(format!("still compiling after {} s", wait.as_secs())),
        }
    }
}

impl NodeInner {
    /// The active plugins with their version history, and this node's background compiles.
    pub fn list_plugins(&self) -> pb::ListPluginsResponse {
        let plugins = self
            .shared
            .plugins()
            .iter()
            .map(|p| pb::PluginInfo {
                name: p.info.name.clone(),
                sha256: p.info.sha256.clone(),
                activated_index: p.info.activated_index,
                size: p.info.size,
                history: p.info.history.clone(),
                label: p.info.label.clone(),
            })
            .collect();
        let compiles = self
            .shared
            .compiler
            .states()
            .into_iter()
            .map(|(sha256, state)| pb::CompileState { sha256, state })
            .collect();
        pb::ListPluginsResponse {
            plugins,
            node: self.id,
            compiles,
            shadows: self.shared.shadows().iter().map(|s| s.record()).collect(),
        }
    }
}

impl NodeInner {
    /// What `plugins rollback NAME [SHA256]` activates: the version `sha256` (one of the plugin's
    /// earlier versions; empty: the one before the active one), with the active version's config,
    /// and the log index by which every node stores its component.
    pub fn rollback_target(&self, name: &str, sha256: &str) -> Result<(pb::Activate, u64), Status> {
        let plugin = self
            .shared
            .plugin(name)
            .ok_or_else(|| Status::not_found(format!("no plugin {name} is active")))?;
        let history = &plugin.info.history;
        let target = if sha256.is_empty() {
            history
                .last()
                .ok_or_else(|| Status::failed_precondition(format!("{name} has no earlier version to roll back to")))?
        } else {
            history.iter().find(|v| v.sha256 == sha256).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{name} has no earlier version {sha256} (earlier versions: {})",
                    if history.is_empty() {
                        "none".to_string()
                    } else {
                        history.iter().map(|v| v.sha256.as_str()).collect::<Vec<_>>().join(", ")
                    }
                ))
            })?
        };
        let activate = pb::Activate {
            name: name.to_string(),
            sha256: target.sha256.clone(),
            config: plugin.info.config.clone(),
            label: target.label.clone(),
            shadow: false,
            signature: target.signature.clone(),
            key_id: target.key_id.clone(),
        };
        Ok((activate, plugin.info.activated_index))
    }

    /// Activates `activate` (a component every node stores by log index `index`) once every voter
    /// has it compiled, reporting progress on `tx` as a deploy does: each message is `base` with
    /// the voters' compiles, and the last one has the activation index.
    pub async fn activate_stored(
        &self,
        activate: pb::Activate,
        index: u64,
        base: pb::DeployProgress,
        tx: mpsc::Sender<Result<pb::DeployProgress, Status>>,
    ) {
        let report = |compiles: &[pb::NodeCompile]| pb::DeployProgress {
            compiles: compiles.to_vec(),
            ..base.clone()
        };
        let compiles = if activate.sha256.starts_with(crate::sm::BUILTIN_PREFIX) {
            Vec::new()
        } else {
            match self.ready_everywhere(&activate.sha256, index, &tx, report).await {
                Ok(compiles) => {
                    info!(voters = compiles.len(), "every voter has compiled the component");
                    compiles
                }
                Err(status) => {
                    warn!("not activated: {}", status.message());
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        };
        let command = pb::Command {
            timestamp_ms: 0,
            kind: Some(command::Kind::Activate(activate)),
        };
        let last = match self.propose(command).await {
            Ok((index, result)) => control_outcome(result).map(|_| {
                info!(index, "activated");
                pb::DeployProgress {
                    activated_index: Some(index),
                    compiles,
                    ..base
                }
            }),
            Err(status) => Err(status),
        };
        let _ = tx.send(last).await;
    }

    /// Retires the plugin `name` and deletes its kv pairs; returns the log index.
    pub async fn remove_plugin(&self, name: String) -> Result<u64, Status> {
        if self.shared.plugin(&name).is_none() {
            return Err(Status::not_found(format!("no plugin {name} is active")));
        }
        let command = pb::Command {
            timestamp_ms: 0,
            kind: Some(command::Kind::Retire(pb::Retire { name })),
        };
        let (index, result) = self.propose(command).await?;
        control_outcome(result)?;
        Ok(index)
    }
}

impl NodeInner {
    /// Promotes (or drops) the shadow run of the plugin `name`; returns the log index.
    pub async fn end_shadow(&self, name: String, promote: bool) -> Result<u64, Status> {
        if self.shared.shadow(&name).is_none() {
            return Err(Status::not_found(format!("{name} has no shadow run")));
        }
        let command = pb::Command {
            timestamp_ms: 0,
            kind: Some(command::Kind::EndShadow(pb::EndShadow { name, promote })),
        };
        let (index, result) = self.propose(command).await?;
        control_outcome(result)?;
        Ok(index)
    }
}
