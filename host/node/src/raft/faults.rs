//! The fault layer between this node and its peers, for tests: per link, RPCs can fail at once
//! (`drop`), wait (`delay`), be sent twice (`duplicate`), or the link can go `silent`, which is
//! what a firewall that drops packets does: connections stay open, new ones hang, and no byte
//! moves in either direction until the link heals, when everything held is delivered (as TCP
//! retransmission would). Empty, and one atomic load per socket poll, unless a test sets a fault.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::Uri;

use crate::types::NodeId;

/// What happens to RPCs from this node to one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkFault {
    /// Fail every RPC as unreachable (a partition, one direction).
    pub drop: bool,
    /// Hold every RPC this long before sending it.
    pub delay: Duration,
    /// Send every unary RPC (vote, append) twice; the second answer counts.
    pub duplicate: bool,
    /// Hold every byte on this node's connections to the peer, both ways, and hold new
    /// connections, until the link heals (a partition by a packet-dropping firewall).
    pub silent: bool,
}

/// The fault layer between this node and its peers. Empty (no faults) unless a test sets one.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    links: Mutex<HashMap<NodeId, LinkFault>>,
    /// Peer addresses as this node dials them, so a connection finds its link.
    addrs: Mutex<HashMap<String, NodeId>>,
    /// Whether any link is silent: the only thing a socket poll reads when none is.
    any_silent: AtomicBool,
    /// Sockets waiting for a silent link to heal.
    waiting: Mutex<Vec<Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Faults {
    pub fn set(&self, peer: NodeId, fault: LinkFault) {
        let mut links = lock(&self.inner.links);
        links.insert(peer, fault);
        self.changed(&links);
    }

    pub fn heal_all(&self) {
        let mut links = lock(&self.inner.links);
        links.clear();
        self.changed(&links);
    }

    pub(crate) fn get(&self, peer: NodeId) -> LinkFault {
        lock(&self.inner.links).get(&peer).copied().unwrap_or_default()
    }

    /// Records that `peer` is dialed at `addr`.
    pub(crate) fn learn(&self, peer: NodeId, addr: &str) {
        lock(&self.inner.addrs).insert(addr.to_string(), peer);
    }

    fn changed(&self, links: &HashMap<NodeId, LinkFault>) {
        self.inner
            .any_silent
            .store(links.values().any(|f| f.silent), Ordering::SeqCst);
        for waker in lock(&self.inner.waiting).drain(..) {
            waker.wake();
        }
    }

    /// Whether the link to `addr` is silent now; if it is, `cx` is woken when links change.
    fn silent(&self, addr: &str, cx: &mut Context<'_>) -> bool {
        if !self.inner.any_silent.load(Ordering::SeqCst) {
            return false;
        }
        let links = lock(&self.inner.links);
        let peer = lock(&self.inner.addrs).get(addr).copied();
        let silent = peer.is_some_and(|p| links.get(&p).is_some_and(|f| f.silent));
        if silent {
            lock(&self.inner.waiting).push(cx.waker().clone());
        }
        silent
    }

    /// A tonic connector whose connections go through this fault layer.
    pub(crate) fn connector(&self, addr: &str) -> Connector {
        Connector {
            faults: self.clone(),
            addr: addr.into(),
        }
    }
}

/// Dials a peer over TCP (with `TCP_NODELAY`), holding the attempt while the link is silent.
#[derive(Clone)]
pub(crate) struct Connector {
    faults: Faults,
    addr: Arc<str>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<FaultyStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let faults = self.faults.clone();
        let addr = self.addr.clone();
        Box::pin(async move {
            // A silent link swallows the SYN: wait (the endpoint's connect timeout bounds it).
            std::future::poll_fn(|cx| match faults.silent(&addr, cx) {
                true => Poll::Pending,
                false => Poll::Ready(()),
            })
            .await;
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
            let port = uri.port_u16().unwrap_or(80);
            let stream = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(FaultyStream {
                io: stream,
                faults,
                addr,
                held: Vec::new(),
            }))
        })
    }
}

/// Bytes a silent link holds for one connection before the writer has to wait, as a kernel's
/// send buffer would.
const HELD_BYTES: usize = 4 << 20;

/// A peer connection through the fault layer. While its link is silent, reads wait and writes
/// are held (up to [`HELD_BYTES`]); when it heals, held bytes go out first, in order.
pub(crate) struct FaultyStream {
    io: TcpStream,
    faults: Faults,
    addr: Arc<str>,
    held: Vec<u8>,
}

impl FaultyStream {
    /// Writes out what the silent link held; ready when nothing is held.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for FaultyStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.faults.silent(&this.addr, cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.faults.silent(&this.addr, cx) {
            if this.held.len() >= HELD_BYTES {
                return Poll::Pending;
            }
            let n = buf.len().min(HELD_BYTES - this.held.len());
            this.held.extend_from_slice(&buf[..n]);
            return Poll::Ready(Ok(n));
        }
        std::task::ready!(this.poll_release(cx))?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.faults.silent(&this.addr, cx) {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(this.poll_release(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.faults.silent(&this.addr, cx) {
            return Poll::Pending;
        }
        std::task::ready!(this.poll_release(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
