//! A stream of requests whose requests run side by side, each answered as soon as it is done:
//! the client API's `Pipeline` and the peers' `ForwardStream`.
//!
//! The answer stream itself drives them, on the connection's own task: no task of its own, no
//! channel, no wake between the two per request. At most `limit` run at a time; more wait in the
//! request stream (HTTP/2 flow control pushes back on the sender), and a sender that stops reading
//! its answers stops its requests. When the sender closes its side, those running still finish
//! and are answered; a broken request stream ends the answers at once and drops what was running.

use std::future::Future;
use std::pin::Pin;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tonic::{Status, Streaming};

use super::BoxStream;

/// The answers to `input`'s requests, each made by `start`, in the order they finish.
pub(super) fn answered<Req, Reply, F, Fut>(input: Streaming<Req>, limit: usize, start: F) -> BoxStream<Reply>
where
    Req: Send + 'static,
    Reply: Send + 'static,
    F: FnMut(Req) -> Fut + Send + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let state = InFlight {
        input,
        running: FuturesUnordered::new(),
        open: true,
        limit,
        start,
    };
    Box::pin(futures::stream::unfold(Some(state), InFlight::next_answer))
}

struct InFlight<Req, Reply, F> {
    input: Streaming<Req>,
    running: FuturesUnordered<Pin<Box<dyn Future<Output = Reply> + Send>>>,
    /// Whether the sender may still send requests.
    open: bool,
    limit: usize,
    start: F,
}

impl<Req, Reply, F, Fut> InFlight<Req, Reply, F>
where
    Reply: Send + 'static,
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Reply> + Send + 'static,
{
    /// The next answer, and the state after it (`None`: nothing follows).
    async fn next_answer(state: Option<Self>) -> Option<(Result<Reply, Status>, Option<Self>)> {
        let mut state = state?;
        loop {
            tokio::select! {
                request = state.input.message(), if state.open && state.running.len() < state.limit => {
                    match request {
                        Ok(Some(request)) => {
                            let answer = (state.start)(request);
                            state.running.push(Box::pin(answer));
                        }
                        Ok(None) => state.open = false,
                        Err(status) => return Some((Err(status), None)),
                    }
                }
                Some(answer) = state.running.next(), if !state.running.is_empty() => {
                    return Some((Ok(answer), Some(state)));
                }
                else => return None,
            }
        }
    }
}
