//! The fault layer between this node and its peers, for tests. Per link (this node's connections
//! to one peer), it acts on new RPCs and on established streams alike: `drop` fails new RPCs at
//! once and resets open connections; `delay` holds every byte this node sends on the link for a
//! while (one direction: what the peer sends back is not delayed); `duplicate` sends each unary
//! RPC twice and each append of a stream opened meanwhile twice; `silent` is what a firewall that
//! drops packets does: connections stay open, new ones hang, and no byte moves in either
//! direction until the link heals, when everything held is delivered (as TCP retransmission
//! would). Two finer faults shape a partition's edges the way real TCP does:
//! `deaf` holds only the replies (those in flight when a cut begins), and `pace` delivers held
//! replies a few bytes at a time (a connection's first round trips after a retransmission
//! timeout). Empty, and one atomic load per socket poll, unless a test sets a fault.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::Uri;

use crate::types::NodeId;
use crate::util::lock;

/// What happens to RPCs from this node to one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkFault {
    /// Fail every new RPC as unreachable, and reset open connections (a partition whose
    /// firewall rejects rather than drops).
    pub drop: bool,
    /// Hold every byte this node sends on the link this long (one direction).
    pub delay: Duration,
    /// Send every unary RPC (vote, append) twice, the second answer counting, and every append
    /// of a stream opened while it is set twice, the second reply counting.
    pub duplicate: bool,
    /// Hold every byte on this node's connections to the peer, both ways, and hold new
    /// connections, until the link heals (a partition by a packet-dropping firewall).
    pub silent: bool,
    /// Hold every byte this node's connections to the peer receive (the peer's replies), while
    /// what this node sends still goes out: replies in flight as a partition begins.
    pub deaf: bool,
    /// When not zero, this node's connections to the peer receive at most [`PACED_BYTES`] per
    /// `pace`: held replies arrive one by one, as after a TCP retransmission timeout.
    pub pace: Duration,
}

impl LinkFault {
    /// Whether this fault acts on the bytes of established connections.
    fn shapes_streams(&self) -> bool {
        self.drop || self.silent || self.deaf || !self.pace.is_zero() || !self.delay.is_zero()
    }
}

/// The most a paced connection reads at a time.
pub const PACED_BYTES: usize = 32;

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
    /// Whether any link shapes its streams: the only thing a socket poll reads when none does.
    any_shaped: AtomicBool,
    /// Sockets waiting for a silent link to heal.
    waiting: Mutex<Vec<Waker>>,
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
            .any_shaped
            .store(links.values().any(LinkFault::shapes_streams), Ordering::SeqCst);
        for waker in lock(&self.inner.waiting).drain(..) {
            waker.wake();
        }
    }

    /// The fault on the link to `addr` now, if it shapes streams.
    fn shaping(&self, addr: &str) -> Option<LinkFault> {
        if !self.inner.any_shaped.load(Ordering::SeqCst) {
            return None;
        }
        let links = lock(&self.inner.links);
        let peer = lock(&self.inner.addrs).get(addr).copied();
        peer.and_then(|p| links.get(&p).copied())
            .filter(LinkFault::shapes_streams)
    }

    /// Wakes `cx` when the links change.
    fn wake_on_change(&self, cx: &mut Context<'_>) {
        lock(&self.inner.waiting).push(cx.waker().clone());
    }

    /// Pending until the links change: a poll that a fault holds.
    fn hold<T>(&self, cx: &mut Context<'_>) -> Poll<T> {
        self.wake_on_change(cx);
        Poll::Pending
    }

    /// Whether the link to `addr` is silent now.
    fn silent(&self, addr: &str) -> bool {
        self.shaping(addr).is_some_and(|f| f.silent)
    }

    /// A tonic connector whose connections go through this fault layer, from `source` when
    /// given (else the address the OS picks).
    pub(crate) fn connector(&self, addr: &str, source: Option<IpAddr>) -> Connector {
        Connector {
            faults: self.clone(),
            addr: addr.into(),
            source,
        }
    }
}

/// Dials a peer over TCP (with `TCP_NODELAY`), holding the attempt while the link is silent.
#[derive(Clone)]
pub(crate) struct Connector {
    faults: Faults,
    addr: Arc<str>,
    source: Option<IpAddr>,
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
        let source = self.source;
        Box::pin(async move {
            // A silent link swallows the SYN: wait (the endpoint's connect timeout bounds it).
            std::future::poll_fn(|cx| match faults.silent(&addr) {
                true => faults.hold(cx),
                false => Poll::Ready(()),
            })
            .await;
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
            let port = uri.port_u16().unwrap_or(80);
            let stream = dial(host.trim_start_matches('[').trim_end_matches(']'), port, source).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(FaultyStream {
                io: stream,
                faults,
                addr,
                held: VecDeque::new(),
                held_bytes: 0,
                release_at: None,
                paced_until: None,
            }))
        })
    }
}

/// Connects to `host:port`, from `source` when given.
async fn dial(host: &str, port: u16, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect((host, port)).await;
    };
    let mut last = None;
    for target in tokio::net::lookup_host((host, port)).await? {
        if target.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{host}:{port} has no address of the peer source address {source}'s family"),
        )
    }))
}

/// Bytes a silent or delaying link holds for one connection before the writer has to wait, as a
/// kernel's send buffer would.
const HELD_BYTES: usize = 4 << 20;

/// A peer connection through the fault layer. While its link is silent, reads wait and writes
/// are held (up to [`HELD_BYTES`]); when it heals, held bytes go out first, in order. While it
/// delays, each write is held until its delay has passed. While it drops, the connection fails
/// as a reset one does.
pub(crate) struct FaultyStream {
    io: TcpStream,
    faults: Faults,
    addr: Arc<str>,
    /// Written bytes not sent yet, in order, each with the time it may go.
    held: VecDeque<(Instant, Vec<u8>)>,
    held_bytes: usize,
    /// When the first held write may go, while it waits for its delay.
    release_at: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When a paced link lets this connection read next.
    paced_until: Option<Pin<Box<tokio::time::Sleep>>>,
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "link dropped (fault layer)")
}

impl FaultyStream {
    /// Writes out the held bytes whose time has come; ready when nothing is held.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((at, bytes)) = self.held.front_mut() {
            if self.faults.silent(&self.addr) {
                return self.faults.hold(cx);
            }
            if *at > Instant::now() {
                let at = *at;
                let sleep = self
                    .release_at
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
                sleep.as_mut().reset(at.into());
                std::task::ready!(sleep.as_mut().poll(cx));
                continue;
            }
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, bytes))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held_bytes -= n;
            if n == bytes.len() {
                self.held.pop_front();
            } else {
                bytes.drain(..n);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for FaultyStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(fault) = this.faults.shaping(&this.addr) else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if fault.drop {
            return Poll::Ready(Err(reset()));
        }
        if fault.silent || fault.deaf {
            return this.faults.hold(cx);
        }
        if fault.pace.is_zero() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        if let Some(until) = &mut this.paced_until {
            std::task::ready!(until.as_mut().poll(cx));
        }
        let mut chunk = [0u8; PACED_BYTES];
        let mut small = ReadBuf::new(&mut chunk[..buf.remaining().min(PACED_BYTES)]);
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut small))?;
        buf.put_slice(small.filled());
        this.paced_until = Some(Box::pin(tokio::time::sleep(fault.pace)));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let fault = this.faults.shaping(&this.addr).unwrap_or_default();
        if fault.drop {
            return Poll::Ready(Err(reset()));
        }
        if fault.silent || !fault.delay.is_zero() {
            if this.held_bytes >= HELD_BYTES {
                // Full: wait for held bytes to go out (or, while silent, for the link to change).
                std::task::ready!(this.poll_release(cx))?;
            }
            let n = buf.len().min(HELD_BYTES - this.held_bytes);
            this.held.push_back((Instant::now() + fault.delay, buf[..n].to_vec()));
            this.held_bytes += n;
            // Start the clock (or the wait for a heal) now, so held bytes go even if nobody
            // flushes.
            let _ = this.poll_release(cx)?;
            return Poll::Ready(Ok(n));
        }
        std::task::ready!(this.poll_release(cx))?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.faults.shaping(&this.addr).is_some_and(|f| f.drop) {
            return Poll::Ready(Err(reset()));
        }
        if this.faults.silent(&this.addr) {
            this.faults.wake_on_change(cx);
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(this.poll_release(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.faults.silent(&this.addr) {
            return this.faults.hold(cx);
        }
        std::task::ready!(this.poll_release(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
