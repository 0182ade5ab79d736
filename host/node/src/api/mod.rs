//! The gRPC services, as thin handlers over the node (`cluster`): `Peer` for Raft between nodes,
//! `Api` for clients and admins. [`serve`] runs both on one listener.

mod client;
mod grpc_metrics;
mod http;
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
use crate::types::TypeConfig;
use crate::wire::Malformed;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn bad(e: Malformed) -> Status {
    Status::invalid_argument(e.to_string())
}

fn raft_err<E: std::fmt::Display>(e: RaftError<TypeConfig, E>) -> Status {
    Status::unavailable(e.to_string())
}

/// Serves both services on `listener` until `stop` resolves.
pub(crate) fn serve(
    node: Arc<NodeInner>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    // Our own listener (to learn the port before serving), so the builder's TCP_NODELAY does not
    // reach it: set it on each connection, or small replies wait out delayed ACKs (40 ms).
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
        if let Ok(conn) = &conn {
            let _ = conn.set_nodelay(true);
        }
        conn
    });
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(grpc_metrics::GrpcMetricsLayer(node.shared.metrics.clone()))
        .add_service(
            pb::peer_server::PeerServer::new(peer::PeerService(node.clone()))
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            pb::api_server::ApiServer::new(client::ApiService(node))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(incoming, stop);
    tokio::spawn(server)
}
