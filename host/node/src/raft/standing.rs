//! A heartbeat client's standing append stream: one gRPC stream to a peer carries every heartbeat.
//!
//! openraft's heartbeat worker sends each heartbeat as a `stream_append` of one request, and a
//! linearizable read's round is one such heartbeat to each follower. Opened per call, every
//! heartbeat paid for a new HTTP/2 stream on both nodes (HEADERS and trailers, a handler task
//! and openraft's stream task on the follower); on the standing stream it is one message each way.
//!
//! A call borrows the stream, sends its requests and takes exactly their replies, in order (the
//! peer answers each request in turn), then gives it back. The stream is dropped instead, and the
//! next call opens a new one, when anything but success came back (the peer ends its stream after
//! a refusal), when it broke, or when the call was dropped with replies still due (a timed-out
//! heartbeat): replies are never paired with the wrong call.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::channel::mpsc;
use openraft::raft::AppendEntriesRequest;
use tonic::Status;
use tonic::transport::Channel;

use crate::pb::{self, peer_client::PeerClient};
use crate::types::TypeConfig;
use crate::wire::append_request_to_pb;

/// The replies of an append stream.
type Replies = Pin<Box<dyn Stream<Item = Result<pb::AppendResponse, Status>> + Send + Sync>>;

/// An open append stream to one peer, between calls.
pub struct Standing {
    requests: mpsc::UnboundedSender<pb::AppendRequest>,
    replies: Replies,
}

impl Standing {
    /// Opens the stream (one round trip: the peer's response headers).
    pub async fn open(mut client: PeerClient<Channel>) -> Result<Standing, Status> {
        let (requests, outgoing) = mpsc::unbounded();
        let replies = client.stream_append(outgoing).await?.into_inner();
        Ok(Standing {
            requests,
            replies: Box::pin(replies),
        })
    }
}

/// One `stream_append` call on a standing stream: its replies, as the peer sends them.
pub struct Call<'s, S, F> {
    /// The call's requests (openraft's, through the ack gate).
    requests: S,
    /// How many copies of a request to send (the fault layer may duplicate it).
    copies: F,
    /// The stream, while this call holds it; `None` once it broke or was given back.
    standing: Option<Standing>,
    /// Where the stream goes back when this call ends cleanly.
    slot: &'s mut Option<Standing>,
    /// For each request sent whose reply has not come: how many replies are still due for it
    /// (the last one counts).
    due: VecDeque<usize>,
    requests_ended: bool,
}

impl<'s, S, F> Call<'s, S, F> {
    /// A call on `standing`, which goes back to `slot` when the call ends cleanly.
    pub fn new(requests: S, copies: F, standing: Standing, slot: &'s mut Option<Standing>) -> Self {
        Call {
            requests,
            copies,
            standing: Some(standing),
            slot,
            due: VecDeque::new(),
            requests_ended: false,
        }
    }
}

impl<S, F> Stream for Call<'_, S, F>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
    F: FnMut(&AppendEntriesRequest<TypeConfig>) -> usize + Unpin,
{
    type Item = Result<pb::AppendResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while !this.requests_ended {
            let Some(standing) = this.standing.as_ref() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.requests).poll_next(cx) {
                Poll::Ready(Some(rpc)) => {
                    let n = (this.copies)(&rpc).max(1);
                    let msg = append_request_to_pb(&rpc);
                    if !(0..n).all(|_| standing.requests.unbounded_send(msg.clone()).is_ok()) {
                        this.standing = None;
                        return Poll::Ready(Some(Err(Status::unavailable("the append stream closed"))));
                    }
                    this.due.push_back(n);
                }
                Poll::Ready(None) => this.requests_ended = true,
                Poll::Pending => break,
            }
        }
        loop {
            if this.due.is_empty() {
                if !this.requests_ended {
                    return Poll::Pending;
                }
                *this.slot = this.standing.take();
                return Poll::Ready(None);
            }
            let Some(standing) = this.standing.as_mut() else {
                return Poll::Ready(None);
            };
            let reply = std::task::ready!(Pin::new(&mut standing.replies).poll_next(cx));
            let Some(Ok(reply)) = reply else {
                // The stream broke or ended with replies due: none can come any more.
                this.standing = None;
                return Poll::Ready(reply);
            };
            match this.due.front_mut() {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    continue;
                }
                _ => {
                    this.due.pop_front();
                }
            }
            if !matches!(reply.result, Some(pb::append_response::Result::Success(_))) {
                // The peer ends its stream after a refusal.
                this.standing = None;
            }
            return Poll::Ready(Some(Ok(reply)));
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};

    use crate::types::Vote;
    use crate::wire::append_response;

    use super::*;

    /// A standing stream over channels: what the test's "peer" received, and its reply sender.
    fn standing() -> (
        Standing,
        mpsc::UnboundedReceiver<pb::AppendRequest>,
        mpsc::UnboundedSender<Result<pb::AppendResponse, Status>>,
    ) {
        let (requests, received) = mpsc::unbounded();
        let (replier, replies) = mpsc::unbounded();
        let replies: Replies = Box::pin(replies);
        (Standing { requests, replies }, received, replier)
    }

    fn heartbeat() -> futures::stream::Iter<std::vec::IntoIter<AppendEntriesRequest<TypeConfig>>> {
        futures::stream::iter(vec![AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        }])
    }

    fn success() -> Result<pb::AppendResponse, Status> {
        Ok(append_response(pb::append_response::Result::Success(pb::Flushed {
            log_id: None,
        })))
    }

    fn conflict() -> Result<pb::AppendResponse, Status> {
        Ok(append_response(pb::append_response::Result::Conflict(pb::Conflict {
            log_id: None,
        })))
    }

    fn once(_: &AppendEntriesRequest<TypeConfig>) -> usize {
        1
    }

    #[test]
    fn each_call_takes_exactly_its_replies_and_gives_the_stream_back() {
        let (stream, mut received, replier) = standing();
        let mut slot = Some(stream);
        for _ in 0..3 {
            let stream = slot.take().expect("the last call gave the stream back");
            let mut call = Call::new(heartbeat(), once, stream, &mut slot);
            assert!(call.next().now_or_never().is_none(), "no reply yet");
            assert!(
                received.next().now_or_never().flatten().is_some(),
                "the heartbeat went out"
            );
            replier.unbounded_send(success()).unwrap();
            assert!(matches!(call.next().now_or_never(), Some(Some(Ok(_)))));
            assert!(
                matches!(call.next().now_or_never(), Some(None)),
                "the call ends after its reply"
            );
        }
        assert!(slot.is_some());
    }

    #[test]
    fn a_call_dropped_with_a_reply_due_drops_the_stream() {
        let (stream, _received, replier) = standing();
        let mut slot = None;
        let mut call = Call::new(heartbeat(), once, stream, &mut slot);
        assert!(call.next().now_or_never().is_none());
        // A heartbeat that timed out: its reply, still on its way, must not answer the next one.
        drop(call);
        assert!(slot.is_none(), "a stream with a reply due is not reused");
        assert!(replier.is_closed(), "the stream was dropped, so the peer's side ends");
    }

    #[test]
    fn a_refusal_is_passed_on_and_drops_the_stream() {
        let (stream, _received, replier) = standing();
        let mut slot = None;
        let mut call = Call::new(heartbeat(), once, stream, &mut slot);
        assert!(call.next().now_or_never().is_none());
        replier.unbounded_send(conflict()).unwrap();
        let reply = call.next().now_or_never().flatten().expect("the refusal").unwrap();
        assert!(matches!(reply.result, Some(pb::append_response::Result::Conflict(_))));
        assert!(matches!(call.next().now_or_never(), Some(None)));
        drop(call);
        assert!(slot.is_none(), "the peer ends its stream after a refusal");
    }

    #[test]
    fn a_duplicated_request_counts_only_its_last_reply() {
        let (stream, mut received, replier) = standing();
        let mut slot = None;
        let mut call = Call::new(heartbeat(), |_: &AppendEntriesRequest<TypeConfig>| 2, stream, &mut slot);
        assert!(call.next().now_or_never().is_none());
        assert_eq!(received.by_ref().take(2).count().now_or_never(), Some(2), "sent twice");
        replier.unbounded_send(conflict()).unwrap();
        assert!(
            call.next().now_or_never().is_none(),
            "the first copy's reply does not count"
        );
        replier.unbounded_send(success()).unwrap();
        assert!(matches!(call.next().now_or_never(), Some(Some(Ok(_)))));
        assert!(matches!(call.next().now_or_never(), Some(None)));
        drop(call);
        assert!(slot.is_some());
    }

    #[test]
    fn a_broken_stream_ends_the_call_and_is_dropped() {
        let (stream, _received, replier) = standing();
        let mut slot = None;
        let mut call = Call::new(heartbeat(), once, stream, &mut slot);
        assert!(call.next().now_or_never().is_none());
        drop(replier);
        assert!(matches!(call.next().now_or_never(), Some(None)));
        drop(call);
        assert!(slot.is_none());
    }
}
