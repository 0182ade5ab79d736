//! The `Api` gRPC service (clients and admins): thin handlers that check the request, call the
//! node (`cluster`), and turn its answer into the reply.

use std::collections::BTreeSet;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info_span};
use wasmraft_runtime::PluginError;

use super::access::Granted;
use super::{BoxStream, in_flight};
use crate::cluster::{AdminError, NodeInner, check_member_addr, control_outcome, membership_error};
use crate::metrics::{CALL, QUERY};
use crate::pb::{self, command, command_result};
use crate::security::Role;

pub struct ApiService(pub Arc<NodeInner>);

/// The method a pipelined request with neither a call nor a query is counted as in the metrics
/// (the others count as `Call` or `Query`).
const PIPELINE: &str = "/wasmraft.v1.Api/Pipeline";

/// The most calls and queries one `Pipeline` stream runs at a time; more wait in the stream
/// (HTTP/2 flow control pushes back on the client).
const PIPELINE_IN_FLIGHT: usize = 1024;

/// The fuel a query may use on an async worker: about a millisecond of guest code at most.
const INLINE_QUERY_FUEL: u64 = 1_000_000;

impl ApiService {
    /// A deploy of `builtin:NAME`: nothing to upload, just the activation.
    async fn activate_builtin(
        &self,
        start: pb::DeployStart,
    ) -> Result<Response<BoxStream<pb::DeployProgress>>, Status> {
        if crate::sm::builtin_name(&start.sha256).is_none() {
            return Err(Status::invalid_argument(crate::sm::missing_builtin(&start.sha256)));
        }
        let activate = pb::Command {
            timestamp_ms: 0,
            kind: Some(command::Kind::Activate(pb::Activate {
                name: start.name,
                sha256: start.sha256.clone(),
                config: start.config,
                label: start.label,
                shadow: false,
                signature: Vec::new(),
                key_id: String::new(),
            })),
        };
        let (index, result) = self.0.propose(activate).await?;
        control_outcome(result)?;
        let done = pb::DeployProgress {
            committed_bytes: 0,
            total_bytes: 0,
            activated_index: Some(index),
            sha256: start.sha256,
            compiles: Vec::new(),
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

#[tonic::async_trait]
impl pb::api_server::Api for ApiService {
    async fn call(&self, req: Request<pb::CallRequest>) -> Result<Response<pb::CallResponse>, Status> {
        Ok(Response::new(self.answer_call(req.into_inner()).await?))
    }

    async fn query(&self, req: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        Ok(Response::new(self.observed_query(req.into_inner()).await?))
    }

    type PipelineStream = BoxStream<pb::PipelineReply>;

    async fn pipeline(
        &self,
        req: Request<Streaming<pb::PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        let may_call = req.extensions().get::<Granted>().is_none_or(|g| g.0 >= Role::Write);
        // Its calls and queries run side by side (`in_flight`). A broken stream drops what was
        // running: a call already proposed still applies; its client saw the stream break, so
        // it knows the outcome is unknown.
        let node = self.0.clone();
        Ok(Response::new(in_flight::answered(
            req.into_inner(),
            PIPELINE_IN_FLIGHT,
            move |request| {
                let api = ApiService(node.clone());
                async move { api.pipelined(request, may_call).await }
            },
        )))
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
        if start.sha256.starts_with(crate::sm::BUILTIN_PREFIX) {
            if start.shadow {
                return Err(Status::invalid_argument("built-ins cannot run in shadow"));
            }
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
        self.0
            .shared
            .plugin_trust
            .check(&sha256, &start.signature, &start.key_id)
            .map_err(|e| Status::permission_denied(format!("deploy {} refused: {e}", start.name)))?;
        // Validate (and compile into this node's cache) before anything reaches the log.
        let runtime = self.0.shared.runtime.clone();
        let checked = bytes.clone();
        tokio::task::spawn_blocking(move || runtime.load(&checked))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::invalid_argument(format!("{} is not a valid plugin: {e}", start.name)))?;

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let node = self.0.clone();
        let span = info_span!("deploy", node = node.id, plugin = %start.name, %sha256);
        tokio::spawn(async move { node.deploy(start, sha256, bytes, tx).await }.instrument(span));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_plugins(
        &self,
        _req: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        Ok(Response::new(self.0.list_plugins()))
    }

    type RollbackStream = BoxStream<pb::DeployProgress>;

    async fn rollback(&self, req: Request<pb::RollbackRequest>) -> Result<Response<Self::RollbackStream>, Status> {
        let req = req.into_inner();
        let (activate, index) = self.0.rollback_target(&req.name, &req.sha256)?;
        let base = pb::DeployProgress {
            sha256: activate.sha256.clone(),
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let node = self.0.clone();
        let span = info_span!("rollback", node = node.id, plugin = %activate.name, sha256 = %activate.sha256);
        tokio::spawn(async move { node.activate_stored(activate, index, base, tx).await }.instrument(span));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn remove_plugin(
        &self,
        req: Request<pb::RemovePluginRequest>,
    ) -> Result<Response<pb::RemovePluginResponse>, Status> {
        let index = self.0.remove_plugin(req.into_inner().name).await?;
        Ok(Response::new(pb::RemovePluginResponse { index }))
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
        let req = req.into_inner();
        check_member_addr(&req.addr)?;
        let index = self
            .0
            .on_leader(
                || async {
                    self.0.check_new_learner(req.id, &req.addr).await?;
                    let node = openraft::BasicNode { addr: req.addr.clone() };
                    let resp = self.0.raft.add_learner(req.id, node, req.blocking).await;
                    Ok(resp.map_err(membership_error)?.log_id.index)
                },
                |mut leader| {
                    let req = req.clone();
                    async move { Ok(leader.add_learner(req).await?.into_inner().index) }
                },
            )
            .await?;
        Ok(Response::new(pb::MembershipResponse { index }))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = req.into_inner();
        let voters: BTreeSet<u64> = req.voters.iter().copied().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("a membership needs at least one voter"));
        }
        let index = self
            .0
            .on_leader(
                || async {
                    let resp = self.0.raft.change_membership(voters.clone(), req.retain).await;
                    Ok(resp.map_err(membership_error)?.log_id.index)
                },
                |mut leader| {
                    let req = req.clone();
                    async move { Ok(leader.change_membership(req).await?.into_inner().index) }
                },
            )
            .await?;
        Ok(Response::new(pb::MembershipResponse { index }))
    }

    async fn remove_learner(
        &self,
        req: Request<pb::RemoveLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = req.into_inner();
        let index = self
            .0
            .on_leader(
                || self.0.remove_learner(req.id),
                |mut leader| async move { Ok(leader.remove_learner(req).await?.into_inner().index) },
            )
            .await?;
        Ok(Response::new(pb::MembershipResponse { index }))
    }

    async fn checkpoints(
        &self,
        _req: Request<pb::CheckpointsRequest>,
    ) -> Result<Response<pb::CheckpointsResponse>, Status> {
        Ok(Response::new(self.0.checkpoints()))
    }

    async fn check_digests(
        &self,
        _req: Request<pb::CheckDigestsRequest>,
    ) -> Result<Response<pb::CheckDigestsResponse>, Status> {
        Ok(Response::new(self.0.check_digests().await))
    }

    async fn snapshot(&self, _req: Request<pb::SnapshotRequest>) -> Result<Response<pb::SnapshotResponse>, Status> {
        Ok(Response::new(self.0.snapshot_now().await?))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderToRequest>,
    ) -> Result<Response<pb::TransferLeaderToResponse>, Status> {
        let req = req.into_inner();
        self.0
            .on_leader(
                || async {
                    self.0.check_transfer_target(req.to)?;
                    let started = self.0.raft.trigger().transfer_leader(req.to).await;
                    started.map_err(|e| AdminError::Failed(Status::internal(e.to_string())))
                },
                |mut leader| async move { leader.transfer_leader(req).await.map(|_| ()) },
            )
            .await?;
        Ok(Response::new(pb::TransferLeaderToResponse {}))
    }

    async fn shadow_status(
        &self,
        req: Request<pb::ShadowStatusRequest>,
    ) -> Result<Response<pb::ShadowStatusResponse>, Status> {
        Ok(Response::new(self.0.shadow_status(&req.into_inner().name)))
    }

    async fn members(&self, req: Request<pb::MembersRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        let shadow = req.into_inner().shadow;
        let shadow = (!shadow.is_empty()).then_some(shadow.as_str());
        let members = self.0.members(shadow).await;
        Ok(Response::new(pb::MembersResponse {
            members: members.iter().map(|m| m.to_pb()).collect(),
        }))
    }

    async fn end_shadow(&self, req: Request<pb::EndShadowRequest>) -> Result<Response<pb::EndShadowResponse>, Status> {
        let req = req.into_inner();
        let index = self.0.end_shadow(req.name, req.promote).await?;
        Ok(Response::new(pb::EndShadowResponse { index }))
    }
}

impl ApiService {
    /// A call: its command through the log, then its replicated result.
    async fn answer_call(&self, req: pb::CallRequest) -> Result<pb::CallResponse, Status> {
        if req.payload.len() > super::MAX_COMMAND_BYTES {
            return Err(Status::invalid_argument(format!(
                "the command is {} bytes, over the limit of {} (one command is one log entry)",
                req.payload.len(),
                super::MAX_COMMAND_BYTES
            )));
        }
        let plugin = req.plugin.clone();
        let command = pb::Command {
            timestamp_ms: 0,
            kind: Some(command::Kind::Call(pb::PluginCall {
                plugin: req.plugin,
                payload: req.payload.into(),
                session: req.session,
            })),
        };
        let (index, result) = self.0.propose(command).await?;
        call_outcome(&plugin, index, result)
    }

    /// [`ApiService::answer_query`], timed in the query metrics.
    async fn observed_query(&self, req: pb::QueryRequest) -> Result<pb::QueryResponse, Status> {
        let started = std::time::Instant::now();
        let consistency = req.consistency();
        let answer = self.answer_query(req).await;
        self.0.shared.metrics.observe_query(consistency, started.elapsed());
        answer
    }

    /// One request of a `Pipeline` stream, answered (and counted in the metrics) as `Call` or
    /// `Query` would.
    async fn pipelined(&self, request: pb::PipelineRequest, may_call: bool) -> pb::PipelineReply {
        use pb::pipeline_reply::Outcome;
        use pb::pipeline_request::Op;
        let started = std::time::Instant::now();
        let (method, outcome) = match request.op {
            Some(Op::Call(_)) if !may_call => (
                CALL,
                Err(Status::permission_denied(
                    "a call needs the `write` role; the token has `read`",
                )),
            ),
            Some(Op::Call(call)) => (CALL, self.answer_call(call).await.map(Outcome::Call)),
            Some(Op::Query(query)) => (QUERY, self.observed_query(query).await.map(Outcome::Query)),
            None => (
                PIPELINE,
                Err(Status::invalid_argument("a pipeline request carries a call or a query")),
            ),
        };
        let code = outcome.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        self.0.shared.metrics.observe_grpc(method, code, started.elapsed());
        pb::PipelineReply {
            id: request.id,
            outcome: Some(outcome.unwrap_or_else(|status| {
                Outcome::Error(pb::PipelineError {
                    code: status.code() as i32,
                    message: status.message().to_string(),
                })
            })),
        }
    }

    /// A query at its consistency: the read barrier, then the plugin's answer.
    async fn answer_query(&self, req: pb::QueryRequest) -> Result<pb::QueryResponse, Status> {
        let _busy = self.0.proposer.query();
        self.0.read_barrier(req.consistency()).await?;
        let plugin = if req.shadow {
            let shadow = self
                .0
                .shared
                .shadow(&req.plugin)
                .ok_or_else(|| Status::not_found(format!("{:?} has no shadow run", req.plugin)))?;
            let record = shadow.record();
            if let Some(stopped) = record.stopped_index {
                return Err(Status::failed_precondition(format!(
                    "{}'s shadow stopped at log index {stopped} ({})",
                    req.plugin, record.stopped_reason
                )));
            }
            shadow.plugin.clone()
        } else {
            self.0
                .shared
                .plugin(&req.plugin)
                .ok_or_else(|| Status::not_found(format!("unknown plugin {:?}", req.plugin)))?
        };
        let shared = self.0.shared.clone();
        let name = req.plugin.clone();
        let version = plugin.info.sha256.clone();
        // A query that fits a small budget runs right here, when nothing would make it wait (an
        // idle instance, the flush lock free): a trip to the blocking pool and back costs more
        // than it. One that does not fit is run again there with the full budget (queries never
        // write, so that is safe), and so are the plugin's later queries.
        let quick = match plugin.queries_fit_inline() {
            true => match shared.query_now(&plugin, &req.request, INLINE_QUERY_FUEL) {
                Some(Ok(Err(PluginError::FuelExhausted { .. }))) => {
                    plugin.query_did_not_fit_inline();
                    None
                }
                answer => answer,
            },
            false => None,
        };
        let answer = match quick {
            Some(answer) => answer,
            None => tokio::task::spawn_blocking(move || shared.query(&plugin, &req.request))
                .await
                .map_err(|e| Status::internal(e.to_string()))?,
        };
        let applied_index = self.0.shared.applied_index();
        let answer = answer.map_err(|e| Status::internal(format!("plugin {name}: {e}")))?;
        let result = answer.map_err(|e| Status::failed_precondition(format!("plugin {name}: {e}")))?;
        Ok(pb::QueryResponse {
            result,
            version,
            applied_index,
        })
    }
}
