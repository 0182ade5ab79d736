//! The peer transport: openraft's network over tonic, one cached channel per peer, with a fault
//! layer ([`Faults`]) between this node and each peer for tests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ErrorSubject, ErrorVerb, StorageError};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::transport::{Channel, Endpoint};
use tracing::info;

use crate::node::SnapshotConfig;
use crate::pb::{self, peer_client::PeerClient};
use crate::snapshot::{self, SnapshotFile};
use crate::state_machine::Shared;
use crate::types::{
    NodeId, Snapshot, TypeConfig, Vote, entry_to_pb, log_id_from_pb, opt_log_id_from_pb, opt_log_id_to_pb,
    vote_from_pb, vote_to_pb,
};

/// Snapshot chunks sent ahead of the receiver's acknowledgements.
const SNAPSHOT_WINDOW: u64 = 4;
/// How long a snapshot sender waits for the receiver to acknowledge a chunk.
const SNAPSHOT_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it waits for the receiver to verify and install a whole snapshot.
const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// What happens to RPCs from this node to one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkFault {
    /// Fail every RPC as unreachable (a partition, one direction).
    pub drop: bool,
    /// Hold every RPC this long before sending it.
    pub delay: Duration,
    /// Send every unary RPC (vote, append) twice; the second answer counts.
    pub duplicate: bool,
}

/// The fault layer between this node and its peers. Empty (no faults) unless a test sets one.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    links: Arc<Mutex<HashMap<NodeId, LinkFault>>>,
}

impl Faults {
    pub fn set(&self, peer: NodeId, fault: LinkFault) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, fault);
    }

    pub fn heal_all(&self) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn get(&self, peer: NodeId) -> LinkFault {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .copied()
            .unwrap_or_default()
    }
}

/// Makes the peer clients; channels are cached by address and shared.
#[derive(Clone)]
pub struct Network {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    faults: Faults,
    snapshot: SnapshotConfig,
    shared: Arc<Shared>,
}

impl Network {
    pub fn new(faults: Faults, snapshot: SnapshotConfig, shared: Arc<Shared>) -> Self {
        Self {
            channels: Arc::default(),
            faults,
            snapshot,
            shared,
        }
    }

    /// A lazily connecting channel to `addr` (`http://host:port`).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(addr.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            channel: self.channel(&node.addr).map_err(|e| e.to_string()),
            faults: self.faults.clone(),
            snapshot: self.snapshot.clone(),
            shared: self.shared.clone(),
            stream_failures: 0,
        }
    }
}

/// openraft's view of one peer.
pub struct PeerConnection {
    target: NodeId,
    channel: Result<Channel, String>,
    faults: Faults,
    snapshot: SnapshotConfig,
    shared: Arc<Shared>,
    /// Replication streams that failed to open in a row: openraft reopens one at once, so we
    /// wait [`retry_delay`] first rather than spin on a peer that is down.
    stream_failures: u32,
}

/// The wait before the next attempt after `failures` in a row: 50 ms, doubling to at most 1 s.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << failures.saturating_sub(1).min(5)).min(1000))
}

fn status_to_rpc(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn unreachable(msg: impl Into<String>) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg.into()))
}

fn malformed(e: crate::types::Malformed) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!("peer sent {e}")))
}

pub(crate) fn append_request_to_pb(rpc: &AppendEntriesRequest<TypeConfig>) -> pb::AppendRequest {
    pb::AppendRequest {
        vote: Some(vote_to_pb(&rpc.vote)),
        prev_log_id: opt_log_id_to_pb(rpc.prev_log_id.as_ref()),
        entries: rpc.entries.iter().map(entry_to_pb).collect(),
        leader_commit: opt_log_id_to_pb(rpc.leader_commit.as_ref()),
    }
}

pub(crate) fn vote_request_to_pb(rpc: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&rpc.vote)),
        last_log_id: opt_log_id_to_pb(rpc.last_log_id.as_ref()),
        leadership_transfer: rpc.leadership_transfer,
    }
}

fn vote_response_from_pb(resp: pb::VoteResponse) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
    let vote = vote_from_pb(resp.vote.as_ref()).map_err(malformed)?;
    Ok(VoteResponse::new(
        vote,
        opt_log_id_from_pb(resp.last_log_id.as_ref()),
        resp.vote_granted,
    ))
}

fn stream_result_from_pb(resp: pb::AppendResponse) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
    use pb::append_response::Result as R;
    match resp.result {
        Some(R::Success(f)) | Some(R::Partial(f)) => Ok(Ok(opt_log_id_from_pb(f.log_id.as_ref()))),
        Some(R::Conflict(c)) => {
            let id = c
                .log_id
                .as_ref()
                .ok_or_else(|| malformed(crate::types::Malformed("conflict without a log id")))?;
            Ok(Err(StreamAppendError::Conflict(log_id_from_pb(id))))
        }
        Some(R::HigherVote(v)) => Ok(Err(StreamAppendError::HigherVote(
            vote_from_pb(Some(&v)).map_err(malformed)?,
        ))),
        None => Err(malformed(crate::types::Malformed("empty append response"))),
    }
}

fn snapshot_io(e: std::io::Error) -> StreamingError<TypeConfig> {
    StreamingError::StorageError(StorageError::from_io_error(
        ErrorSubject::Snapshot(None),
        ErrorVerb::Read,
        e,
    ))
}

fn snapshot_peer(message: String) -> StreamingError<TypeConfig> {
    StreamingError::from(RPCError::Network(NetworkError::from_string(message)))
}

fn closed() -> StreamingError<TypeConfig> {
    snapshot_peer("the receiver closed the snapshot stream".into())
}

/// The receiver's next acknowledgement, within `wait`.
async fn next_ack(
    acks: &mut tonic::Streaming<pb::SnapshotAck>,
    wait: Duration,
) -> Result<pb::SnapshotAck, StreamingError<TypeConfig>> {
    match tokio::time::timeout(wait, acks.message()).await {
        Err(_) => Err(snapshot_peer(format!("no snapshot acknowledgement in {wait:?}"))),
        Ok(Err(status)) => Err(StreamingError::from(status_to_rpc(status))),
        Ok(Ok(None)) => Err(closed()),
        Ok(Ok(Some(ack))) => Ok(ack),
    }
}

impl PeerConnection {
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot<SnapshotFile>,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client().await?;
        let file = snapshot.snapshot;
        let (size, sha256) = snapshot::identity(&file.path).map_err(snapshot_io)?;
        let chunk_bytes = self.snapshot.chunk_bytes.max(1) as u64;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(SNAPSHOT_WINDOW as usize);
        let start = pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Start(pb::SnapshotStart {
                vote: Some(vote_to_pb(&vote)),
                size,
                sha256: sha256.to_vec(),
                last_log_id: snapshot.meta.last_log_id.as_ref().map(crate::types::log_id_to_pb),
            })),
        };
        tx.send(start).await.map_err(|_| closed())?;
        let mut acks = client
            .install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| StreamingError::from(status_to_rpc(s)))?
            .into_inner();
        let first = next_ack(&mut acks, SNAPSHOT_ACK_TIMEOUT).await?;
        if first.installed {
            // The receiver has this state already (or newer): nothing to send.
            let vote = vote_from_pb(first.vote.as_ref()).map_err(|e| StreamingError::from(malformed(e)))?;
            return Ok(SnapshotResponse::new(vote));
        }
        let mut offset = first.offset;
        if offset > size {
            return Err(snapshot_peer(format!(
                "the receiver asked for offset {offset} of {size}"
            )));
        }
        if offset > 0 {
            info!(target = self.target, offset, size, "resuming a snapshot transfer");
        }
        let mut reader = tokio::fs::File::open(&file.path).await.map_err(snapshot_io)?;
        reader
            .seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(snapshot_io)?;
        let started = Instant::now();
        let first_offset = offset;
        let rate = self.snapshot.max_send_bytes_per_sec;
        let mut acked = offset;
        while offset < size {
            let len = chunk_bytes.min(size - offset) as usize;
            let mut data = vec![0; len];
            reader.read_exact(&mut data).await.map_err(snapshot_io)?;
            let chunk = pb::SnapshotChunk {
                part: Some(pb::snapshot_chunk::Part::Data(pb::SnapshotData {
                    offset,
                    crc32: crc32fast::hash(&data),
                    data: data.into(),
                })),
            };
            tx.send(chunk).await.map_err(|_| closed())?;
            offset += len as u64;
            while offset - acked > SNAPSHOT_WINDOW * chunk_bytes {
                acked = next_ack(&mut acks, SNAPSHOT_ACK_TIMEOUT).await?.offset;
            }
            if rate > 0 {
                let due = Duration::from_secs_f64((offset - first_offset) as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        loop {
            let ack = next_ack(&mut acks, SNAPSHOT_INSTALL_TIMEOUT).await?;
            if ack.installed {
                let vote = vote_from_pb(ack.vote.as_ref()).map_err(|e| StreamingError::from(malformed(e)))?;
                return Ok(SnapshotResponse::new(vote));
            }
        }
    }

    /// Whether the fault layer sends this RPC twice.
    fn duplicated(&self) -> bool {
        self.faults.get(self.target).duplicate
    }

    /// The client for one RPC, after the fault layer had its say.
    async fn client(&self) -> Result<PeerClient<Channel>, RPCError<TypeConfig>> {
        let fault = self.faults.get(self.target);
        if !fault.delay.is_zero() {
            tokio::time::sleep(fault.delay).await;
        }
        if fault.drop {
            return Err(unreachable(format!(
                "link to node {} is cut (fault layer)",
                self.target
            )));
        }
        let channel = self.channel.clone().map_err(unreachable)?;
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }
}

fn request<T>(msg: T, option: &RPCOption) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(option.soft_ttl());
    req
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client().await?;
        if self.duplicated() {
            let _ = client.append(request(append_request_to_pb(&rpc), &option)).await;
        }
        let resp = client
            .append(request(append_request_to_pb(&rpc), &option))
            .await
            .map_err(status_to_rpc)?
            .into_inner();
        use pb::append_response::Result as R;
        match resp.result {
            Some(R::Success(_)) => Ok(AppendEntriesResponse::Success),
            Some(R::Partial(f)) => Ok(AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(
                f.log_id.as_ref(),
            ))),
            Some(R::Conflict(_)) => Ok(AppendEntriesResponse::Conflict),
            Some(R::HigherVote(v)) => Ok(AppendEntriesResponse::HigherVote(
                vote_from_pb(Some(&v)).map_err(malformed)?,
            )),
            None => Err(malformed(crate::types::Malformed("empty append response"))),
        }
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        async move {
            if self.stream_failures > 0 {
                tokio::time::sleep(retry_delay(self.stream_failures)).await;
            }
            let opened = async {
                let mut client = self.client().await?;
                let requests = input.map(|rpc| append_request_to_pb(&rpc));
                client.stream_append(requests).await.map_err(status_to_rpc)
            }
            .await;
            let responses = match opened {
                Ok(responses) => {
                    self.stream_failures = 0;
                    responses.into_inner()
                }
                Err(e) => {
                    self.stream_failures = self.stream_failures.saturating_add(1);
                    return Err(e);
                }
            };
            let results = responses.map(|item| match item {
                Ok(resp) => stream_result_from_pb(resp),
                Err(status) => Err(status_to_rpc(status)),
            });
            Ok(results.boxed())
        }
        .boxed()
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client().await?;
        if self.duplicated() {
            let _ = client.vote(request(vote_request_to_pb(&rpc), &option)).await;
        }
        let resp = client
            .vote(request(vote_request_to_pb(&rpc), &option))
            .await
            .map_err(status_to_rpc)?;
        vote_response_from_pb(resp.into_inner())
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client().await?;
        let resp = client
            .pre_vote(request(vote_request_to_pb(&rpc), &option))
            .await
            .map_err(status_to_rpc)?;
        vote_response_from_pb(resp.into_inner())
    }

    /// Streams the snapshot file from where the receiver's copy ends (a broken transfer
    /// resumes), in checksummed chunks, at most [`SNAPSHOT_WINDOW`] ahead of its
    /// acknowledgements, then waits for it to verify and install the file.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send = self.send_snapshot(vote, snapshot);
        let resp = tokio::select! {
            resp = send => resp?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        self.shared.snapshot_stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(resp)
    }

    fn backoff(&self) -> Option<Backoff> {
        // An unreachable peer is retried at 50 ms, doubling to at most 1 s.
        let delays = (1..).map(retry_delay);
        Some(Backoff::new(delays))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client().await?;
        let msg = pb::TransferLeaderRequest {
            from_leader: Some(vote_to_pb(req.from_leader())),
            to: *req.to_node_id(),
            last_log_id: opt_log_id_to_pb(req.last_log_id()),
        };
        let resp = client
            .transfer_leader(request(msg, &option))
            .await
            .map_err(status_to_rpc)?;
        let refused = resp.into_inner().refused;
        if refused.is_empty() {
            Ok(Ok(()))
        } else {
            Err(RPCError::Network(NetworkError::from_string(format!(
                "transfer refused: {refused}"
            ))))
        }
    }
}
