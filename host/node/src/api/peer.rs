//! The `Peer` gRPC service (Raft between nodes): thin handlers that decode, call openraft or the
//! node, and encode. Snapshot receiving itself lives in `snapshot::receive`.

use std::sync::Arc;

use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{AppendEntriesResponse, StreamAppendError, TransferLeaderRequest};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, warn};

use super::{BoxStream, bad, in_flight, raft_err};
use crate::cluster::{NodeInner, PREPARE_TIMEOUT, forward};
use crate::pb;
use crate::snapshot;
use crate::wire::{
    append_request_from_pb, append_response, opt_log_id_from_pb, opt_log_id_to_pb, vote_from_pb, vote_request_from_pb,
    vote_response_to_pb, vote_to_pb,
};

pub struct PeerService(pub Arc<NodeInner>);

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
        let node = self.0.id;
        // A malformed or failed request ends the input (the leader sees the stream close and
        // retries): it is never skipped, since the leader pairs each reply with its request.
        let input = req
            .into_inner()
            .map(move |item| match item.map(append_request_from_pb) {
                Ok(Ok(rpc)) => Some(rpc),
                Ok(Err(e)) => {
                    warn!(node, "stream append: {e}");
                    None
                }
                Err(_) => None,
            })
            .take_while(|rpc| futures::future::ready(rpc.is_some()))
            .filter_map(futures::future::ready);
        let output = self.0.raft.stream_append(input).map(|result| match result {
            Ok(Ok(flushed)) => Ok(append_response(R::Success(pb::Flushed {
                log_id: opt_log_id_to_pb(flushed.as_ref()),
            }))),
            Ok(Err(StreamAppendError::Conflict(id))) => Ok(append_response(R::Conflict(pb::Conflict {
                log_id: Some(crate::wire::log_id_to_pb(&id)),
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
            .map(crate::wire::log_id_from_pb)
            .ok_or_else(|| Status::invalid_argument("a snapshot without a last log id"))?;
        let span = tracing::info_span!(
            "snapshot_receive",
            node = self.0.id,
            term = vote.leader_id.term,
            index = last_log_id.index,
        );
        let node = self.0.clone();
        let receiving = node
            .receiving
            .clone()
            .try_lock_owned()
            .map_err(|_| Status::unavailable("this node is already receiving a snapshot"))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::SnapshotAck, Status>>(16);
        let stats = &node.snapshots.stats;
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
            warn!(parent: &span, "rejected a {rejection}");
            let ack = pb::SnapshotAck {
                offset: start.size,
                installed: true,
                vote: Some(vote_to_pb(&current_vote)),
            };
            let _ = tx.send(Ok(ack)).await;
            return Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))));
        }
        let dir = node.snapshots.settings.dir.join("incoming");
        let incoming = crate::util::blocking(|| snapshot::Incoming::open(&dir, &sha256, start.size))?;
        let resumed = incoming.offset();
        if resumed > 0 {
            stats.resumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            stats
                .resumed_bytes
                .fetch_add(resumed, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                parent: &span,
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
        tokio::spawn(
            async move {
                let _receiving = receiving;
                let Some((snapshot, path, received)) =
                    snapshot::receive(input, incoming, vote, last_log_id, &tx, &node.snapshots.stats).await
                else {
                    return;
                };
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
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn forward(&self, req: Request<pb::ForwardRequest>) -> Result<Response<pb::CommandResult>, Status> {
        let command = req
            .into_inner()
            .command
            .ok_or_else(|| Status::invalid_argument("forward without a command"))?;
        let (index, result) = self.0.propose_local(command).await?;
        let mut resp = Response::new(result);
        resp.metadata_mut().insert("wasmraft-index", index.into());
        Ok(resp)
    }

    type ForwardStreamStream = BoxStream<pb::ForwardAnswer>;

    async fn forward_stream(
        &self,
        req: Request<Streaming<pb::ForwardItem>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        // Test-only: a leader of a version without this stream.
        if crate::util::failpoint_armed("forward-stream-unimplemented") {
            return Err(Status::unimplemented("ForwardStream (failpoint)"));
        }
        // Each command proposed as it comes and answered by id once applied (`in_flight`). A
        // broken stream drops what was running: each was proposed, so it still applies.
        let node = self.0.clone();
        Ok(Response::new(in_flight::answered(
            req.into_inner(),
            FORWARDS_IN_FLIGHT,
            move |item: pb::ForwardItem| {
                let node = node.clone();
                async move {
                    let outcome = match item.command {
                        Some(command) => node.propose_local(command).await,
                        None => Err(Status::invalid_argument("forward without a command")),
                    };
                    forward::answer(item.id, outcome)
                }
            },
        )))
    }

    async fn prepare(&self, req: Request<pb::PrepareRequest>) -> Result<Response<pb::PrepareResponse>, Status> {
        let req = req.into_inner();
        let answer = self.0.prepare(&req.sha256, req.index, PREPARE_TIMEOUT).await;
        Ok(Response::new(answer))
    }

    async fn read_index(&self, req: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let consistency = req.get_ref().consistency();
        let read_log_id = self.0.read_index(consistency).await?;
        Ok(Response::new(pb::ReadIndexResponse { read_log_id }))
    }
}

/// The most forwarded writes one stream runs at a time; more wait in the stream.
const FORWARDS_IN_FLIGHT: usize = 1024;
