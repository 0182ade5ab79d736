//! WASI's blocking calls, answered without blocking the thread.
//!
//! wasmtime-wasi's synchronous bindings run every blocking call (`blocking-write-and-flush`,
//! `poll`, even dropping an output stream) with `Handle::block_on`, which panics on a Tokio
//! worker thread. The node runs short plugin calls right on its async workers, so these
//! bindings shadow wasmtime-wasi's: each blocking call is polled once, and it must be ready then.
//! Everything the node gives a plugin is: stdout and stderr discard, stdin is empty, and there is
//! no file or socket to wait on. What is not ready (a timer a plugin waits on) traps, the same on
//! every replica: a plugin cannot wait for time or the outside world to move.
//!
//! Outside any Tokio runtime (the runtime's own tests, `wasmraft plugin test`) the calls go to
//! wasmtime-wasi's own implementation, which blocks.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::io::streams::{HostInputStream as AsyncIn, HostOutputStream as AsyncOut};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::sync::sockets::network::{self, ErrorCode, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sync::sockets::udp_create_socket;
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, SocketError, SocketResult, StreamError, StreamResult, UdpSocket,
};
use wasmtime_wasi::sockets::{WasiSocketsCtxView, WasiSocketsView};

/// A plugin's resource table, seen through the non-blocking bindings.
pub(crate) struct NoWait<'a>(&'a mut ResourceTable);

struct HasNoWait;

impl HasData for HasNoWait {
    type Data<'a> = NoWait<'a>;
}

/// A plugin's sockets, of which it may create none.
pub(crate) struct NoSockets<'a>(WasiSocketsCtxView<'a>);

struct HasNoSockets;

impl HasData for HasNoSockets {
    type Data<'a> = NoSockets<'a>;
}

/// Links the non-blocking `wasi:io/poll`, `wasi:io/streams` and `wasi:sockets/udp-create-socket`
/// over wasmtime-wasi's synchronous ones (which must be linked first).
pub(crate) fn shadow<T: WasiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    poll::add_to_linker::<T, HasNoWait>(linker, |t| NoWait(t.ctx().table))?;
    streams::add_to_linker::<T, HasNoWait>(linker, |t| NoWait(t.ctx().table))?;
    udp_create_socket::add_to_linker::<T, HasNoSockets>(linker, |t| NoSockets(t.sockets()))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Whether this thread runs inside a Tokio runtime (where `block_on` may panic).
fn in_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

/// What a plugin is told when it waits on something that is not ready.
fn would_block(what: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "the plugin waited on {what}, which was not ready: a plugin cannot wait for time or I/O"
    ))
}

/// `future`'s output if it is ready at its first poll.
fn now<F: Future>(future: F) -> Option<F::Output> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// A stream call's output if ready now, else a trap.
fn stream_now<T>(what: &str, future: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    now(future).unwrap_or_else(|| Err(StreamError::Trap(would_block(what))))
}

impl poll::Host for NoWait<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        if !in_runtime() {
            return poll::Host::poll(self.0, pollables);
        }
        now(async_poll::Host::poll(self.0, pollables)).unwrap_or_else(|| Err(would_block("`poll`")))
    }
}

impl poll::HostPollable for NoWait<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        if !in_runtime() {
            return poll::HostPollable::ready(self.0, pollable);
        }
        // `ready` never waits: a pollable that is not ready yet is just not ready.
        now(async_poll::HostPollable::ready(self.0, pollable)).unwrap_or(Ok(false))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        if !in_runtime() {
            return poll::HostPollable::block(self.0, pollable);
        }
        now(async_poll::HostPollable::block(self.0, pollable)).unwrap_or_else(|| Err(would_block("a pollable")))
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.0, pollable)
    }
}

impl streams::Host for NoWait<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for NoWait<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        if !in_runtime() {
            return streams::HostOutputStream::drop(self.0, stream);
        }
        now(AsyncOut::drop(self.0, stream)).unwrap_or_else(|| Err(would_block("an output stream's end")))
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        if !in_runtime() {
            return streams::HostOutputStream::blocking_write_and_flush(self.0, stream, bytes);
        }
        stream_now(
            "an output stream",
            AsyncOut::blocking_write_and_flush(self.0, stream, bytes),
        )
    }

    fn blocking_write_zeroes_and_flush(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        if !in_runtime() {
            return streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len);
        }
        stream_now(
            "an output stream",
            AsyncOut::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }

    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        if !in_runtime() {
            return streams::HostOutputStream::blocking_flush(self.0, stream);
        }
        stream_now("an output stream", AsyncOut::blocking_flush(self.0, stream))
    }

    fn splice(&mut self, dst: Resource<DynOutputStream>, src: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        if !in_runtime() {
            return streams::HostOutputStream::blocking_splice(self.0, dst, src, len);
        }
        stream_now("a stream", AsyncOut::blocking_splice(self.0, dst, src, len))
    }
}

impl streams::HostInputStream for NoWait<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        if !in_runtime() {
            return streams::HostInputStream::drop(self.0, stream);
        }
        now(AsyncIn::drop(self.0, stream)).unwrap_or_else(|| Err(would_block("an input stream's end")))
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        if !in_runtime() {
            return streams::HostInputStream::blocking_read(self.0, stream, len);
        }
        stream_now("an input stream", AsyncIn::blocking_read(self.0, stream, len))
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        if !in_runtime() {
            return streams::HostInputStream::blocking_skip(self.0, stream, len);
        }
        stream_now("an input stream", AsyncIn::blocking_skip(self.0, stream, len))
    }

    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.0, stream)
    }
}

impl network::Host for NoSockets<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.0, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi::p2::bindings::sync::io::error::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.0, err)
    }
}

impl network::HostNetwork for NoSockets<'_> {
    fn drop(&mut self, this: Resource<network::Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.0, this)
    }
}

impl udp_create_socket::Host for NoSockets<'_> {
    /// The node gives plugins no network.
    fn create_udp_socket(&mut self, _family: IpAddressFamily) -> SocketResult<Resource<UdpSocket>> {
        Err(ErrorCode::AccessDenied.into())
    }
}
