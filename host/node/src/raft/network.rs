//! The peer transport: openraft's network over tonic, one cached channel per peer, through the
//! fault layer ([`Faults`]) that tests use to cut, delay or silence links.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use openraft::BasicNode;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, debug, info, info_span, warn};

use super::ack_gate;
use super::coalesce::Coalesce;
use super::faults::Faults;
use super::standing::{self, Standing};
use crate::pb::{self, peer_client::PeerClient};
use crate::security::TlsConfig;
use crate::snapshot::{SnapshotFile, Snapshots};
use crate::types::{NodeId, Snapshot, TypeConfig, Vote};
use crate::util::lock;
use crate::wire::{
    Malformed, append_request_to_pb, append_response_from_pb, opt_log_id_to_pb, stream_result_from_pb,
    vote_request_to_pb, vote_response_from_pb, vote_to_pb,
};

/// A cached channel's peer, address, and whether it carries snapshots (a connection of their own).
type ChannelKey = (NodeId, String, bool);

/// Makes the peer clients; channels are cached by address and shared.
#[derive(Clone)]
pub struct Network {
    /// This node's id, for its logs' spans.
    id: NodeId,
    channels: Arc<Mutex<HashMap<ChannelKey, Channel>>>,
    faults: Faults,
    /// The address connections to peers come from; none: the OS picks.
    source: Option<IpAddr>,
    /// Mutual TLS to peers; none: plaintext.
    tls: Option<TlsConfig>,
    snapshots: Arc<Snapshots>,
    health: Arc<Health>,
    traffic: Arc<Traffic>,
}

/// Append messages sent to peers (heartbeats included) and the entries they carried.
#[derive(Debug, Default)]
pub struct Traffic {
    appends: std::sync::atomic::AtomicU64,
    entries: std::sync::atomic::AtomicU64,
}

impl Traffic {
    /// Append messages sent so far, and the entries in them.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.appends.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        )
    }

    fn sent(&self, rpc: &AppendEntriesRequest<TypeConfig>) {
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.entries.fetch_add(rpc.entries.len() as u64, Ordering::Relaxed);
    }
}

/// Which peers this node cannot reach, and since when. A peer that is not up yet (a cluster
/// starting, a node restarting) is not news: it is reported once it stays unreachable past
/// `down_after` (an election timeout), and again when it is back. openraft's own per-RPC
/// warnings are filtered out by the CLI for the same reason.
#[derive(Debug)]
struct Health {
    /// This node.
    node: NodeId,
    down_after: Duration,
    down_since: Mutex<HashMap<NodeId, (Instant, bool)>>,
}

impl Health {
    fn failed(&self, peer: NodeId, error: &RPCError<TypeConfig>) {
        let mut down = lock(&self.down_since);
        let (since, reported) = down.entry(peer).or_insert((Instant::now(), false));
        if !*reported && since.elapsed() >= self.down_after {
            *reported = true;
            warn!(
                node = self.node,
                peer,
                secs = since.elapsed().as_secs_f64(),
                "peer unreachable: {error}"
            );
        } else {
            debug!(node = self.node, peer, "peer RPC failed: {error}");
        }
    }

    fn reached(&self, peer: NodeId) {
        if let Some((since, true)) = lock(&self.down_since).remove(&peer) {
            info!(
                node = self.node,
                peer,
                secs = since.elapsed().as_secs_f64(),
                "peer reachable again"
            );
        }
    }

    /// Records how an RPC to `peer` went, and passes its result on.
    fn observe<T>(&self, peer: NodeId, result: Result<T, RPCError<TypeConfig>>) -> Result<T, RPCError<TypeConfig>> {
        match &result {
            Ok(_) => self.reached(peer),
            Err(e @ RPCError::Unreachable(_)) => self.failed(peer, e),
            Err(_) => {}
        }
        result
    }
}

impl Network {
    /// `down_after`: how long a peer may be unreachable before it is reported (an election
    /// timeout).
    pub fn new(
        id: NodeId,
        faults: Faults,
        source: Option<IpAddr>,
        tls: Option<TlsConfig>,
        snapshots: Arc<Snapshots>,
        down_after: Duration,
    ) -> Self {
        Self {
            id,
            channels: Arc::default(),
            faults,
            source,
            tls,
            snapshots,
            traffic: Arc::default(),
            health: Arc::new(Health {
                node: id,
                down_after,
                down_since: Mutex::default(),
            }),
        }
    }

    /// What this node sent its peers.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// A lazily connecting channel to `peer` at `addr` (`http://host:port`). Under TLS it is
    /// always `https` (whatever the address says), and `peer`'s certificate must name it.
    pub fn channel(&self, peer: NodeId, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.channel_of(peer, addr, false)
    }

    /// A connection of its own for snapshot transfers to `peer`, so a large transfer never
    /// queues heartbeats and appends behind it (both pass the same fault layer).
    pub fn snapshot_channel(&self, peer: NodeId, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.channel_of(peer, addr, true)
    }

    fn channel_of(&self, peer: NodeId, addr: &str, snapshots: bool) -> Result<Channel, tonic::transport::Error> {
        self.faults.learn(peer, addr);
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(&(peer, addr.to_string(), snapshots)) {
            return Ok(channel.clone());
        }
        let mut endpoint = match &self.tls {
            Some(tls) => {
                let rest = addr.split_once("://").map_or(addr, |(_, rest)| rest);
                Endpoint::from_shared(format!("https://{rest}"))?.tls_config(tls.peer_client(peer))?
            }
            None => Endpoint::from_shared(addr.to_string())?,
        };
        endpoint = endpoint
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(5));
        let channel = endpoint.connect_with_connector_lazy(self.faults.connector(addr, self.source));
        channels.insert((peer, addr.to_string(), snapshots), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            id: self.id,
            target,
            channel: self.channel(target, &node.addr).map_err(|e| e.to_string()),
            snapshot_channel: self.snapshot_channel(target, &node.addr).map_err(|e| e.to_string()),
            faults: self.faults.clone(),
            snapshots: self.snapshots.clone(),
            health: self.health.clone(),
            traffic: self.traffic.clone(),
            stream_failures: 0,
            heartbeats: false,
            standing: None,
        }
    }

    /// The heartbeat worker's client: it sends every heartbeat on one standing stream.
    async fn new_heartbeat_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            heartbeats: true,
            ..self.new_client(target, node).await
        }
    }
}

/// openraft's view of one peer.
pub struct PeerConnection {
    /// This node.
    id: NodeId,
    target: NodeId,
    channel: Result<Channel, String>,
    /// Snapshot transfers' own connection.
    snapshot_channel: Result<Channel, String>,
    faults: Faults,
    snapshots: Arc<Snapshots>,
    health: Arc<Health>,
    traffic: Arc<Traffic>,
    /// Replication streams that failed to open in a row: openraft reopens one at once, so we
    /// wait [`retry_delay`] first rather than spin on a peer that is down.
    stream_failures: u32,
    /// Whether this is the heartbeat worker's client, which keeps a standing stream.
    heartbeats: bool,
    /// The heartbeat worker's standing append stream, between heartbeats.
    standing: Option<Standing>,
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

/// One reply of an append stream, as openraft takes it.
fn append_result(item: Result<pb::AppendResponse, tonic::Status>) -> ack_gate::Reply {
    match item {
        Ok(resp) => stream_result_from_pb(resp).map_err(malformed),
        Err(status) => Err(status_to_rpc(status)),
    }
}

/// What one request on an append stream is owed: `copies` replies on the wire (the last one
/// kept), which openraft is given `answers` times.
struct Due {
    copies: usize,
    answers: usize,
}

fn unreachable(msg: impl Into<String>) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg.into()))
}

fn malformed(e: Malformed) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!("peer sent {e}")))
}

impl PeerConnection {
    /// Whether the fault layer sends this RPC twice.
    fn duplicated(&self) -> bool {
        self.faults.get(self.target).duplicate
    }

    /// Opens an append stream with `open`, after a wait when the last ones failed to open.
    async fn open_stream<T>(
        &mut self,
        open: impl Future<Output = Result<T, RPCError<TypeConfig>>>,
    ) -> Result<T, RPCError<TypeConfig>> {
        if self.stream_failures > 0 {
            tokio::time::sleep(retry_delay(self.stream_failures)).await;
        }
        let opened = self.health.observe(self.target, open.await);
        self.stream_failures = match opened {
            Ok(_) => 0,
            Err(_) => self.stream_failures.saturating_add(1),
        };
        opened
    }

    /// A heartbeat's `stream_append`: its requests and their replies on this client's standing
    /// stream ([`standing`]), opened when there is none.
    fn stream_heartbeat<'s, S>(
        &'s mut self,
        input: S,
    ) -> BoxFuture<'s, Result<BoxStream<'s, ack_gate::Reply>, RPCError<TypeConfig>>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        async move {
            let standing = match self.standing.take() {
                // A cut link fails new calls at once, as a new stream would.
                Some(standing) if !self.faults.get(self.target).drop => standing,
                _ => {
                    let client = self.client().await;
                    self.open_stream(async { Standing::open(client?).await.map_err(status_to_rpc) })
                        .await?
                }
            };
            let (requests, replies) = ack_gate::gate(input);
            let (faults, target, traffic) = (self.faults.clone(), self.target, self.traffic.clone());
            let copies = move |rpc: &AppendEntriesRequest<TypeConfig>| {
                traffic.sent(rpc);
                if faults.get(target).duplicate { 2 } else { 1 }
            };
            let call = standing::Call::new(requests, copies, standing, &mut self.standing);
            Ok(replies.wrap(call.map(append_result)).boxed())
        }
        .boxed()
    }

    /// The client for one RPC, after the fault layer had its say.
    async fn client(&self) -> Result<PeerClient<Channel>, RPCError<TypeConfig>> {
        self.client_on(&self.channel)
    }

    /// The client for one RPC on `channel`, after the fault layer had its say.
    fn client_on(&self, channel: &Result<Channel, String>) -> Result<PeerClient<Channel>, RPCError<TypeConfig>> {
        // A delay acts on the connection's bytes (`faults`), established streams included.
        let fault = self.faults.get(self.target);
        if fault.drop {
            return Err(unreachable(format!(
                "link to node {} is cut (fault layer)",
                self.target
            )));
        }
        let channel = channel.clone().map_err(unreachable)?;
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
        self.traffic.sent(&rpc);
        let sent = async {
            let mut client = self.client().await?;
            if self.duplicated() {
                let _ = client.append(request(append_request_to_pb(&rpc), &option)).await;
            }
            let resp = client
                .append(request(append_request_to_pb(&rpc), &option))
                .await
                .map_err(status_to_rpc)?
                .into_inner();
            append_response_from_pb(resp).map_err(malformed)
        };
        self.health.observe(self.target, sent.await)
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
        if self.heartbeats {
            return self.stream_heartbeat(input);
        }
        let span = info_span!("replicate", node = self.id, peer = self.target);
        async move {
            let (requests, replies) = ack_gate::gate(input);
            // What each request sent is owed: a duplicating link sends each append twice and
            // keeps the second reply, and a request carrying a held commit (`coalesce`) answers
            // for it too.
            let due: Arc<Mutex<VecDeque<Due>>> = Arc::default();
            let client = self.client().await;
            let (faults, target, sent) = (self.faults.clone(), self.target, due.clone());
            let traffic = self.traffic.clone();
            let opened = async move {
                let mut client = client?;
                let requests = Coalesce::new(requests).flat_map(move |(rpc, answers)| {
                    traffic.sent(&rpc);
                    let copies = if faults.get(target).duplicate { 2 } else { 1 };
                    lock(&sent).push_back(Due { copies, answers });
                    futures::stream::iter(std::iter::repeat_n(append_request_to_pb(&rpc), copies))
                });
                client.stream_append(requests).await.map_err(status_to_rpc)
            };
            let responses = self.open_stream(opened).await?.into_inner();
            let responses = responses.flat_map(move |item| {
                let mut due = lock(&due);
                let answers = match due.front_mut() {
                    Some(owed) if owed.copies > 1 => {
                        owed.copies -= 1;
                        0
                    }
                    Some(owed) => {
                        let answers = owed.answers;
                        due.pop_front();
                        answers
                    }
                    None => 1,
                };
                // An error ends the stream: openraft is told once.
                let answers = if item.is_err() { 1 } else { answers };
                futures::stream::iter(std::iter::repeat_n(item, answers).map(append_result))
            });
            Ok(replies.wrap(responses).boxed())
        }
        .instrument(span)
        .boxed()
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let sent = async {
            let mut client = self.client().await?;
            if self.duplicated() {
                let _ = client.vote(request(vote_request_to_pb(&rpc), &option)).await;
            }
            let resp = client
                .vote(request(vote_request_to_pb(&rpc), &option))
                .await
                .map_err(status_to_rpc)?;
            vote_response_from_pb(resp.into_inner()).map_err(malformed)
        };
        self.health.observe(self.target, sent.await)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let sent = async {
            let mut client = self.client().await?;
            let resp = client
                .pre_vote(request(vote_request_to_pb(&rpc), &option))
                .await
                .map_err(status_to_rpc)?;
            vote_response_from_pb(resp.into_inner()).map_err(malformed)
        };
        self.health.observe(self.target, sent.await)
    }

    /// Streams the snapshot file to the peer (`snapshot::send`: resumable, checksummed chunks
    /// in a window), then waits for it to verify and install the file.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let client = self.client_on(&self.snapshot_channel)?;
        let index = snapshot.meta.last_log_id.map_or(0, |l| l.index);
        let span = info_span!(
            "snapshot_send",
            node = self.id,
            peer = self.target,
            term = vote.leader_id.term,
            index,
        );
        let send = crate::snapshot::send(client, self.target, &self.snapshots, vote, snapshot).instrument(span);
        let resp = tokio::select! {
            resp = send => resp?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        self.snapshots.stats.sent.fetch_add(1, Ordering::Relaxed);
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
