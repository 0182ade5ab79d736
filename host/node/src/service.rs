//! The gRPC services: `Peer` (Raft between nodes) and `Api` (clients and admins).

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, TransferLeaderRequest, VoteRequest, VoteResponse,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use crate::node::NodeInner;
use crate::pb::{self, command, command_result};
use crate::snapshot;
use crate::types::{
    Malformed, Snapshot, TypeConfig, entry_from_pb, opt_log_id_from_pb, opt_log_id_to_pb, vote_from_pb, vote_to_pb,
};

/// Upload pieces per log entry.
pub const DEPLOY_CHUNK_BYTES: usize = 1 << 20;

fn bad(e: Malformed) -> Status {
    Status::invalid_argument(e.to_string())
}

fn raft_err<E: std::fmt::Display>(e: RaftError<TypeConfig, E>) -> Status {
    Status::unavailable(e.to_string())
}

fn append_request_from_pb(req: pb::AppendRequest) -> Result<AppendEntriesRequest<TypeConfig>, Malformed> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(req.vote.as_ref())?,
        prev_log_id: opt_log_id_from_pb(req.prev_log_id.as_ref()),
        entries: req.entries.into_iter().map(entry_from_pb).collect::<Result<_, _>>()?,
        leader_commit: opt_log_id_from_pb(req.leader_commit.as_ref()),
    })
}

fn vote_request_from_pb(req: &pb::VoteRequest) -> Result<VoteRequest<TypeConfig>, Malformed> {
    let mut rpc = VoteRequest::new(
        vote_from_pb(req.vote.as_ref())?,
        opt_log_id_from_pb(req.last_log_id.as_ref()),
    );
    rpc.leadership_transfer = req.leadership_transfer;
    Ok(rpc)
}

fn vote_response_to_pb(resp: VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&resp.vote)),
        vote_granted: resp.vote_granted,
        last_log_id: opt_log_id_to_pb(resp.last_log_id.as_ref()),
    }
}

fn append_response(result: pb::append_response::Result) -> pb::AppendResponse {
    pb::AppendResponse { result: Some(result) }
}

pub struct PeerService(pub Arc<NodeInner>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn vote(&self, req: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = vote_request_from_pb(req.get_ref()).map_err(bad)?;
        let resp = self.0.raft.vote(rpc).await.map_err(raft_err)?;
        Ok(Response::new(vote_response_to_pb(resp)))
    }

    async fn pre_vote(&self, req: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = vote_request_from_pb(req.get_ref()).map_err(bad)?;
        let resp = self.0.raft.pre_vote(rpc).await.map_err(raft_err)?;
        Ok(Response::new(vote_response_to_pb(resp)))
    }

    async fn append(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        use pb::append_response::Result as R;
        let rpc = append_request_from_pb(req.into_inner()).map_err(bad)?;
        let resp = self.0.raft.append_entries(rpc).await.map_err(raft_err)?;
        let result = match resp {
            AppendEntriesResponse::Success => R::Success(pb::Flushed { log_id: None }),
            AppendEntriesResponse::PartialSuccess(id) => R::Partial(pb::Flushed {
                log_id: opt_log_id_to_pb(id.as_ref()),
            }),
            AppendEntriesResponse::Conflict => R::Conflict(pb::Conflict { log_id: None }),
            AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(&v)),
        };
        Ok(Response::new(append_response(result)))
    }

    type StreamAppendStream = BoxStream<pb::AppendResponse>;

    async fn stream_append(
        &self,
        req: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        use pb::append_response::Result as R;
        // A malformed or failed request ends the input: openraft sees the stream close and retries.
        let input = req
            .into_inner()
            .take_while(|item| futures::future::ready(item.is_ok()))
            .filter_map(|item| async move {
                match item.ok().map(append_request_from_pb) {
                    Some(Ok(rpc)) => Some(rpc),
                    Some(Err(e)) => {
                        warn!("stream append: {e}");
                        None
                    }
                    None => None,
                }
            });
        let output = self.0.raft.stream_append(input).map(|result| match result {
            Ok(Ok(flushed)) => Ok(append_response(R::Success(pb::Flushed {
                log_id: opt_log_id_to_pb(flushed.as_ref()),
            }))),
            Ok(Err(StreamAppendError::Conflict(id))) => Ok(append_response(R::Conflict(pb::Conflict {
                log_id: Some(crate::types::log_id_to_pb(&id)),
            }))),
            Ok(Err(StreamAppendError::HigherVote(v))) => Ok(append_response(R::HigherVote(vote_to_pb(&v)))),
            Err(fatal) => Err(Status::internal(fatal.to_string())),
        });
        Ok(Response::new(Box::pin(output)))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let req = req.into_inner();
        let from = vote_from_pb(req.from_leader.as_ref()).map_err(bad)?;
        let rpc = TransferLeaderRequest::new(from, req.to, opt_log_id_from_pb(req.last_log_id.as_ref()));
        let resp = self
            .0
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let refused = match resp {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        };
        Ok(Response::new(pb::TransferLeaderResponse { refused }))
    }

    type InstallSnapshotStream = BoxStream<pb::SnapshotAck>;

    /// Receives a snapshot: resumes a broken transfer of the same file, checks every chunk's
    /// CRC, then the whole file (sha256, format, staleness) before openraft installs it. A
    /// rejected file is logged, counted and deleted; the node stays on its state.
    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<Self::InstallSnapshotStream>, Status> {
        let mut input = req.into_inner();
        let Some(pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Start(start)),
        }) = input.message().await?
        else {
            return Err(Status::invalid_argument("a snapshot stream starts with `start`"));
        };
        let vote = vote_from_pb(start.vote.as_ref()).map_err(bad)?;
        let sha256: [u8; 32] = start
            .sha256
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("a snapshot's sha256 is 32 bytes"))?;
        let last_log_id = start
            .last_log_id
            .as_ref()
            .map(crate::types::log_id_from_pb)
            .ok_or_else(|| Status::invalid_argument("a snapshot without a last log id"))?;
        let node = self.0.clone();
        let receiving = node
            .receiving
            .clone()
            .try_lock_owned()
            .map_err(|_| Status::unavailable("this node is already receiving a snapshot"))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::SnapshotAck, Status>>(16);
        let stats = &node.shared.snapshot_stats;
        // Stale at the door: nothing to transfer. Answer "installed" so the leader moves on (this
        // node's log matches up to what it applied).
        let (applied, current_vote) = {
            let metrics = node.raft.metrics().borrow_watched().clone();
            (metrics.last_applied, metrics.vote)
        };
        if let Some(applied) = applied
            && last_log_id <= applied
        {
            let rejection =
                snapshot::Rejection::Stale(format!("it ends at {last_log_id}, this node has applied {applied}"));
            stats.reject(&rejection);
            warn!(from_term = vote.leader_id.term, "rejected a {rejection}");
            let ack = pb::SnapshotAck {
                offset: start.size,
                installed: true,
                vote: Some(vote_to_pb(&current_vote)),
            };
            let _ = tx.send(Ok(ack)).await;
            return Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))));
        }
        let dir = node.shared.snapshot_settings.dir.join("incoming");
        let mut incoming = crate::state_machine::blocking(|| snapshot::Incoming::open(&dir, &sha256, start.size))?;
        let resumed = incoming.offset();
        if resumed > 0 {
            stats.resumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            stats
                .resumed_bytes
                .fetch_add(resumed, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                offset = resumed,
                size = start.size,
                "resuming a snapshot transfer where the last one broke"
            );
        }
        let _ = tx
            .send(Ok(pb::SnapshotAck {
                offset: resumed,
                ..Default::default()
            }))
            .await;
        tokio::spawn(async move {
            let _receiving = receiving;
            let started = std::time::Instant::now();
            // Receive until the file is whole; a broken stream keeps what arrived for a resume.
            while incoming.offset() < incoming.size() {
                let data = match input.message().await {
                    Ok(Some(pb::SnapshotChunk {
                        part: Some(pb::snapshot_chunk::Part::Data(data)),
                    })) => data,
                    Ok(Some(_)) => {
                        let _ = tx
                            .send(Err(Status::invalid_argument("a snapshot stream has one `start`")))
                            .await;
                        return;
                    }
                    Ok(None) | Err(_) => {
                        tracing::info!(
                            received = incoming.offset(),
                            size = incoming.size(),
                            "snapshot transfer broke off; kept what arrived for a resume"
                        );
                        return;
                    }
                };
                if crc32fast::hash(&data.data) != data.crc32 {
                    let _ = tx
                        .send(Err(Status::data_loss(format!(
                            "snapshot chunk at {} failed its CRC check",
                            data.offset
                        ))))
                        .await;
                    return;
                }
                if let Err(e) = crate::state_machine::blocking(|| incoming.write(data.offset, &data.data)) {
                    let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                    return;
                }
                let ack = pb::SnapshotAck {
                    offset: incoming.offset(),
                    ..Default::default()
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
            let received = incoming.size() - resumed;
            // The sha256 was taken as the bytes arrived; only a file that fails it is read
            // again, to tell corrupted from truncated.
            let file = incoming.complete();
            let path = file.path.clone();
            let checked = crate::state_machine::blocking(|| match file.verified {
                true => snapshot::check_header(&path),
                false => snapshot::check(&path),
            });
            let header = checked.and_then(|header| {
                // A snapshot cannot end in a term beyond the vote of the leader sending it.
                let term = header.last_log_id.as_ref().map_or(0, |id| id.term);
                if term > vote.leader_id.term {
                    return Err(snapshot::Rejection::Corrupted(format!(
                        "it ends in term {term}, after its sender's term {}",
                        vote.leader_id.term
                    )));
                }
                if header.last_log_id.as_ref().map(crate::types::log_id_from_pb) != Some(last_log_id) {
                    return Err(snapshot::Rejection::Corrupted(
                        "its header does not match the announced last log id".into(),
                    ));
                }
                Ok(header)
            });
            let header = match header {
                Ok(header) => header,
                Err(rejection) => {
                    node.shared.snapshot_stats.reject(&rejection);
                    warn!(from_term = vote.leader_id.term, "rejected a {rejection}");
                    snapshot::forget(&path);
                    let _ = tx.send(Err(Status::data_loss(format!("rejected: {rejection}")))).await;
                    return;
                }
            };
            node.shared.snapshot_stats.record(
                snapshot::Phase::Transfer,
                snapshot::phase_stats(received, received, started),
            );
            let meta = match snapshot::meta_of(&header) {
                Ok(meta) => meta,
                Err(e) => {
                    snapshot::forget(&path);
                    let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                    return;
                }
            };
            let file = snapshot::SnapshotFile { verified: true, ..file };
            let snapshot = Snapshot { meta, snapshot: file };
            let result = node.raft.install_full_snapshot(vote, snapshot).await;
            // Installed files moved into the snapshot directory; one openraft declined did not.
            snapshot::forget(&path);
            let reply = match result {
                Ok(resp) => Ok(pb::SnapshotAck {
                    offset: received + resumed,
                    installed: true,
                    vote: Some(vote_to_pb(&resp.vote)),
                }),
                Err(e) => Err(Status::internal(e.to_string())),
            };
            let _ = tx.send(reply).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn forward(&self, req: Request<pb::ForwardRequest>) -> Result<Response<pb::CommandResult>, Status> {
        let command = req
            .into_inner()
            .command
            .ok_or_else(|| Status::invalid_argument("forward without a command"))?;
        if !self.0.raft.is_leader() {
            return Err(Status::unavailable("not the leader (leadership moved); retry"));
        }
        let (index, result) = self.0.propose_local(command).await?;
        let mut resp = Response::new(result);
        resp.metadata_mut().insert("wasmraft-index", index.into());
        Ok(resp)
    }

    async fn read_index(&self, req: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let consistency = req.get_ref().consistency();
        let read_log_id = self.0.read_index(consistency).await?;
        Ok(Response::new(pb::ReadIndexResponse { read_log_id }))
    }
}

pub struct ApiService(pub Arc<NodeInner>);

impl ApiService {
    /// A deploy of `builtin:NAME`: nothing to upload, just the activation.
    async fn activate_builtin(
        &self,
        start: pb::DeployStart,
    ) -> Result<Response<BoxStream<pb::DeployProgress>>, Status> {
        if crate::engine::builtin_name(&start.sha256).is_none() {
            return Err(Status::invalid_argument(format!(
                "no built-in {:?} (built-ins: {:?})",
                start.sha256,
                crate::engine::BUILTINS
            )));
        }
        let activate = pb::Command {
            timestamp_ms: 0,
            kind: Some(command::Kind::Activate(pb::Activate {
                name: start.name,
                sha256: start.sha256.clone(),
                config: start.config,
            })),
        };
        let (index, result) = self.0.propose(activate).await?;
        control_outcome(result)?;
        let done = pb::DeployProgress {
            committed_bytes: 0,
            total_bytes: 0,
            activated_index: Some(index),
            sha256: start.sha256,
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(done)]))))
    }
}

/// Turns a replicated call result into the client's answer (or error status).
fn call_outcome(plugin: &str, index: u64, result: pb::CommandResult) -> Result<pb::CallResponse, Status> {
    match result.kind {
        Some(command_result::Kind::Call(call)) => match call.outcome {
            Some(pb::call_result::Outcome::Ok(result)) => Ok(pb::CallResponse {
                result,
                version: call.version,
                index,
            }),
            Some(pb::call_result::Outcome::Error(message)) => {
                Err(Status::failed_precondition(format!("plugin {plugin}: {message}")))
            }
            None => Err(Status::internal("empty call result")),
        },
        Some(command_result::Kind::Rejected(message)) if message.starts_with("unknown plugin") => {
            Err(Status::not_found(message))
        }
        Some(command_result::Kind::Rejected(message)) => Err(Status::failed_precondition(message)),
        other => Err(Status::internal(format!("unexpected result {other:?}"))),
    }
}

fn control_outcome(result: pb::CommandResult) -> Result<pb::CommandResult, Status> {
    match &result.kind {
        Some(command_result::Kind::Rejected(message)) => Err(Status::failed_precondition(message.clone())),
        _ => Ok(result),
    }
}

#[tonic::async_trait]
impl pb::api_server::Api for ApiService {
    async fn call(&self, req: Request<pb::CallRequest>) -> Result<Response<pb::CallResponse>, Status> {
        let req = req.into_inner();
        let plugin = req.plugin.clone();
        let command = pb::Command {
            timestamp_ms: 0,
            kind: Some(command::Kind::Call(pb::PluginCall {
                plugin: req.plugin,
                payload: req.payload.into(),
            })),
        };
        let (index, result) = self.0.propose(command).await?;
        Ok(Response::new(call_outcome(&plugin, index, result)?))
    }

    async fn query(&self, req: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        let req = req.into_inner();
        let consistency = req.consistency();
        self.0.read_barrier(consistency).await?;
        let plugin = self
            .0
            .shared
            .plugin(&req.plugin)
            .ok_or_else(|| Status::not_found(format!("unknown plugin {:?}", req.plugin)))?;
        let shared = self.0.shared.clone();
        let name = req.plugin.clone();
        let (answer, applied_index) = tokio::task::spawn_blocking(move || {
            let answer = shared.query(&plugin, &req.request);
            (answer.map(|a| (a, plugin.info.sha256.clone())), shared.state_digest().0)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let (answer, version) = answer.map_err(|e| Status::internal(format!("plugin {name}: {e}")))?;
        let result = answer.map_err(|e| Status::failed_precondition(format!("plugin {name}: {e}")))?;
        Ok(Response::new(pb::QueryResponse {
            result,
            version,
            applied_index,
        }))
    }

    type DeployStream = BoxStream<pb::DeployProgress>;

    async fn deploy(&self, req: Request<Streaming<pb::DeployRequest>>) -> Result<Response<Self::DeployStream>, Status> {
        let mut input = req.into_inner();
        let Some(pb::DeployRequest {
            part: Some(pb::deploy_request::Part::Start(start)),
        }) = input.message().await?
        else {
            return Err(Status::invalid_argument("a deploy stream starts with `start`"));
        };
        wasmraft_store::check_space(&start.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if start.sha256.starts_with(crate::engine::BUILTIN_PREFIX) {
            return self.activate_builtin(start).await;
        }
        let limit = self.0.shared.runtime.limits().max_component_bytes as u64;
        if start.size > limit {
            return Err(Status::invalid_argument(format!(
                "component is {} bytes, over max_component_bytes ({limit})",
                start.size
            )));
        }
        let mut bytes = Vec::with_capacity(start.size as usize);
        while let Some(part) = input.message().await? {
            let Some(pb::deploy_request::Part::Data(data)) = part.part else {
                return Err(Status::invalid_argument("a deploy stream has one `start`"));
            };
            if bytes.len() as u64 + data.len() as u64 > start.size {
                return Err(Status::invalid_argument("more bytes than the announced size"));
            }
            bytes.extend_from_slice(&data);
        }
        if bytes.len() as u64 != start.size {
            return Err(Status::invalid_argument(format!(
                "received {} of {} bytes",
                bytes.len(),
                start.size
            )));
        }
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if !start.sha256.is_empty() && start.sha256 != sha256 {
            return Err(Status::invalid_argument(format!(
                "content has sha256 {sha256}, not {}",
                start.sha256
            )));
        }
        // Validate (and compile into this node's cache) before anything reaches the log.
        let runtime = self.0.shared.runtime.clone();
        let checked = bytes.clone();
        tokio::task::spawn_blocking(move || runtime.load(&checked))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::invalid_argument(format!("{} is not a valid plugin: {e}", start.name)))?;

        let node = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let total = bytes.len() as u64;
            let progress = |committed: u64, activated: Option<u64>| pb::DeployProgress {
                committed_bytes: committed,
                total_bytes: total,
                activated_index: activated,
                sha256: sha256.clone(),
            };
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
                let sent = match node.propose(command).await.and_then(|(_, r)| control_outcome(r)) {
                    Ok(_) => tx.send(Ok(progress(offset + piece.len() as u64, None))).await,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if sent.is_err() {
                    return; // the client went away
                }
            }
            let activate = pb::Command {
                timestamp_ms: 0,
                kind: Some(command::Kind::Activate(pb::Activate {
                    name: start.name.clone(),
                    sha256: sha256.clone(),
                    config: start.config.clone(),
                })),
            };
            let last = match node.propose(activate).await {
                Ok((index, result)) => control_outcome(result).map(|_| progress(total, Some(index))),
                Err(status) => Err(status),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_plugins(
        &self,
        _req: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        let plugins = self
            .0
            .shared
            .plugins()
            .iter()
            .map(|p| pb::PluginInfo {
                name: p.info.name.clone(),
                sha256: p.info.sha256.clone(),
                activated_index: p.info.activated_index,
                size: p.info.size,
            })
            .collect();
        Ok(Response::new(pb::ListPluginsResponse { plugins }))
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(self.0.status()))
    }

    async fn init(&self, req: Request<pb::InitRequest>) -> Result<Response<pb::InitResponse>, Status> {
        let members = req.into_inner().members.into_iter().collect();
        self.0.initialize(members).await?;
        Ok(Response::new(pb::InitResponse {}))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        if !self.0.raft.is_leader() {
            return self.0.leader_api().await?.add_learner(req.into_inner()).await;
        }
        let req = req.into_inner();
        let node = openraft::BasicNode { addr: req.addr };
        let resp = self
            .0
            .raft
            .add_learner(req.id, node, req.blocking)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::MembershipResponse {
            index: resp.log_id.index,
        }))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        if !self.0.raft.is_leader() {
            return self.0.leader_api().await?.change_membership(req.into_inner()).await;
        }
        let req = req.into_inner();
        let voters: BTreeSet<u64> = req.voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("a membership needs at least one voter"));
        }
        let resp = self
            .0
            .raft
            .change_membership(voters, req.retain)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::MembershipResponse {
            index: resp.log_id.index,
        }))
    }

    async fn snapshot(&self, _req: Request<pb::SnapshotRequest>) -> Result<Response<pb::SnapshotResponse>, Status> {
        Ok(Response::new(self.0.snapshot_now().await?))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderToRequest>,
    ) -> Result<Response<pb::TransferLeaderToResponse>, Status> {
        if !self.0.raft.is_leader() {
            return self.0.leader_api().await?.transfer_leader(req.into_inner()).await;
        }
        self.0
            .raft
            .trigger()
            .transfer_leader(req.into_inner().to)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::TransferLeaderToResponse {}))
    }
}
