//! The gRPC services, as thin handlers over the node (`cluster`): `Peer` for Raft between nodes,
//! `Api` for clients and admins. [`serve`] runs them on the client and peer listeners.

mod access;
mod client;
mod grpc_metrics;
mod http;
mod in_flight;
mod peer;

pub(crate) use http::serve_http;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use openraft::errors::RaftError;
use tokio::net::TcpListener;
use tonic::Status;

use crate::cluster::NodeInner;
use crate::pb;
use crate::security::{TlsConfig, Tokens};
use crate::types::TypeConfig;
use crate::wire::Malformed;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn bad(e: Malformed) -> Status {
    Status::invalid_argument(e.to_string())
}

fn raft_err<E: std::fmt::Display>(e: RaftError<TypeConfig, E>) -> Status {
    Status::unavailable(e.to_string())
}

/// Largest client message (a deploy streams pieces; a command is at most
/// [`MAX_COMMAND_BYTES`]).
pub(crate) const CLIENT_MESSAGE_LIMIT: usize = 64 << 20;
/// Largest payload of one command: a client's call (or a deploy's 1 MiB piece) is one entry.
pub const MAX_COMMAND_BYTES: usize = 2 << 20;
/// Largest peer message: an append carries at most [`MAX_PAYLOAD_ENTRIES`] entries of at most a
/// command each, with room for their framing; snapshot chunks are far smaller. So no append a
/// leader makes is ever refused by its followers.
pub(crate) const PEER_MESSAGE_LIMIT: usize = MAX_PAYLOAD_ENTRIES * (MAX_COMMAND_BYTES + (64 << 10));
/// Entries per append (openraft's `max_payload_entries`).
pub(crate) const MAX_PAYLOAD_ENTRIES: usize = 512;

/// What a node serves on: the client listener, and the peers' own (none: they share the
/// client's, without TLS or tokens), with TLS on both and the client tokens when configured.
pub(crate) struct Listeners {
    pub client: TcpListener,
    pub peer: Option<TcpListener>,
    pub tls: Option<TlsConfig>,
    pub tokens: Option<Arc<Tokens>>,
}

/// Serves the client API (with its token check) on the client listener, and the peer API with
/// the node-to-node client API (with the member check under TLS) on the peer listener, until
/// `stop` resolves.
pub(crate) fn serve(
    node: Arc<NodeInner>,
    listeners: Listeners,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>> {
    let (stop_all, stopped) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }
    };
    let peer_service = || {
        pb::peer_server::PeerServer::new(peer::PeerService(node.clone()))
            .max_decoding_message_size(PEER_MESSAGE_LIMIT)
            .max_encoding_message_size(PEER_MESSAGE_LIMIT)
    };
    let api_service = |limit| {
        pb::api_server::ApiServer::new(client::ApiService(node.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    };
    let metrics = grpc_metrics::GrpcMetricsLayer(node.shared.metrics.clone());
    let client_tls = listeners.tls.as_ref().map(TlsConfig::client_listener);
    let client_access = listeners.tokens.map_or(access::Access::Open, access::Access::Tokens);
    let mut client = builder(client_tls)?.layer(metrics.clone()).layer(client_access);
    let mut client = client.add_service(api_service(CLIENT_MESSAGE_LIMIT));
    if listeners.peer.is_none() {
        client = client.add_service(peer_service());
    }
    let client = client.serve_with_incoming_shutdown(incoming(listeners.client), stopped());
    let peers = match listeners.peer {
        Some(peer) => {
            let peer_tls = listeners.tls.as_ref().map(TlsConfig::peer_listener);
            let member_access = match listeners.tls {
                Some(_) => access::Access::Members(node.clone()),
                None => access::Access::Open,
            };
            let server = builder(peer_tls)?
                .layer(metrics)
                .layer(member_access)
                .add_service(peer_service())
                .add_service(api_service(PEER_MESSAGE_LIMIT))
                .serve_with_incoming_shutdown(incoming(peer), stopped());
            Some(server)
        }
        None => None,
    };
    tokio::spawn(async move {
        let _ = stop.await;
        let _ = stop_all.send(true);
    });
    Ok(tokio::spawn(async move {
        match peers {
            Some(peers) => {
                let (client, peers) = tokio::join!(client, peers);
                client.and(peers)
            }
            None => client.await,
        }
    }))
}

fn builder(tls: Option<tonic::transport::ServerTlsConfig>) -> anyhow::Result<tonic::transport::Server> {
    let builder = tonic::transport::Server::builder().tcp_nodelay(true);
    Ok(match tls {
        Some(tls) => builder.tls_config(tls)?,
        None => builder,
    })
}

/// Our own listener (to learn the port before serving), so the builder's TCP_NODELAY does not
/// reach it: set it on each connection, or small replies wait out delayed ACKs (40 ms).
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
        if let Ok(conn) = &conn {
            let _ = conn.set_nodelay(true);
        }
        conn
    })
}
