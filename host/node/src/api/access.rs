//! A tower layer that refuses a request before any handler sees it. On the client listener the
//! caller's bearer token must carry the role the method needs (`security::required_role`); on
//! the peer listener, over mutual TLS, the caller's certificate must name a member of the
//! cluster (any node of the CA while this node has no members yet, so a new node can be added).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use openraft::async_runtime::WatchReceiver;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower_layer::Layer;
use tower_service::Service;

use crate::cluster::NodeInner;
use crate::security::{Role, Tokens, certificate_names, node_name, required_role};

#[derive(Clone)]
pub(crate) enum Access {
    /// No check (no tokens configured; no TLS between peers).
    Open,
    /// Client listener: a token with the method's role.
    Tokens(Arc<Tokens>),
    /// Peer listener: a certificate naming a member.
    Members(Arc<NodeInner>),
}

/// The role the caller's token carries, in the extensions of a request the token admitted (none
/// when tokens are off): a handler whose stream carries calls checks each against it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Granted(pub(crate) Role);

impl Access {
    /// Admits `request` (noting the token's role in it), or says why not.
    fn check<B>(&self, request: &mut http::Request<B>) -> Result<(), Status> {
        match self {
            Access::Open => Ok(()),
            Access::Tokens(tokens) => {
                let role = token_role(tokens, request)?;
                request.extensions_mut().insert(Granted(role));
                Ok(())
            }
            Access::Members(node) => member_refusal(node, request).map_or(Ok(()), Err),
        }
    }
}

/// The role of the caller's token, if it has the one the method needs.
fn token_role<B>(tokens: &Tokens, request: &http::Request<B>) -> Result<Role, Status> {
    let needed = required_role(request.uri().path());
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(token) = presented else {
        return Err(Status::unauthenticated(format!(
            "no token: this call needs the `{}` role (give --token or $WASMRAFT_TOKEN)",
            needed.as_str()
        )));
    };
    match tokens.role_of(token) {
        None => Err(Status::unauthenticated(format!(
            "the token is not valid here: this call needs the `{}` role",
            needed.as_str()
        ))),
        Some(role) if role < needed => Err(Status::permission_denied(format!(
            "this call needs the `{}` role; the token has `{}`",
            needed.as_str(),
            role.as_str()
        ))),
        Some(role) => Ok(role),
    }
}

fn member_refusal<B>(node: &NodeInner, request: &http::Request<B>) -> Option<Status> {
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs());
    let Some(cert) = certs.as_ref().and_then(|certs| certs.first()) else {
        return Some(Status::unauthenticated("peers present a certificate"));
    };
    let membership = node.raft.metrics().borrow_watched().membership_config.clone();
    let members: Vec<_> = membership.membership().nodes().map(|(id, _)| *id).collect();
    // No members yet: the CA's word is all there is (the TLS handshake checked it).
    if members.is_empty() || members.iter().any(|id| certificate_names(cert, &node_name(*id))) {
        return None;
    }
    Some(Status::permission_denied(
        "the peer's certificate names no member of this cluster",
    ))
}

impl<S> Layer<S> for Access {
    type Service = Checked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked {
            inner,
            access: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Checked<S> {
    inner: S,
    access: Access,
}

impl<S, B, RB> Service<http::Request<B>> for Checked<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.access.check(&mut request) {
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            Ok(()) => Box::pin(self.inner.call(request)),
        }
    }
}
