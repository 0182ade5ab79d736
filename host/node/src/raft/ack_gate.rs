//! Keeps a follower's reply from being credited to a request the follower had not seen.
//!
//! openraft (0.10.0-alpha.37) times a leader's quorum acknowledgements from its replication
//! stream: when a reply acknowledges log id `m`, `InflightAppendQueue::drain_acked` removes every
//! request in flight whose last log id is `<= m` and credits the follower with the *newest* one's
//! send time. Usually that is harmless; but when a commit advances with no new entry, openraft
//! sends an entry-less request (prev = last = the last entry sent). A reply for that same entry
//! that was already on its way, say held by a partition since before the cut, then drains the
//! new request too, and the leader counts that follower as having acknowledged it *now*. A
//! deposed leader did exactly that after a partition healed (issue 18): it served a linearizable
//! read and a lease read from its old state, since the quorum it counted had "acked" after the
//! read arrived.
//!
//! The gate sits between openraft and one append stream. Requests and replies pair up in order
//! (the peer answers each request in turn), so the gate knows which request a reply answers. It
//! hands a reply that acknowledges `m` to openraft only once every later request with a last log
//! id `<= m` has been answered with success: the follower has then seen those requests, and their
//! send time is a true acknowledgement. If one of them was refused (a higher vote, a conflict) or
//! the stream ends first, the held reply is dropped: openraft resends what it covered. While
//! openraft matches a reply, the gate does not let it make a new request, so none can join its
//! queue between the gate's decision and openraft's match.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::Stream;
use openraft::entry::RaftEntry;
use openraft::errors::RPCError;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};

use crate::types::{LogId, TypeConfig};
use crate::util::lock;

/// One reply on an append stream, as openraft takes it.
pub type Reply = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// Wraps one append stream: `requests` (openraft's, going out) and then the replies coming back.
pub fn gate<S>(requests: S) -> (GatedRequests<S>, ReplyGate) {
    let shared = Arc::new(Mutex::new(Gate::default()));
    (
        GatedRequests {
            inner: requests,
            gate: shared.clone(),
        },
        ReplyGate { gate: shared },
    )
}

#[derive(Default)]
struct Gate {
    /// The last log id of each request sent whose reply openraft has not been given, oldest
    /// first; the first `held.len()` of them are answered.
    unreleased: VecDeque<Option<LogId>>,
    /// Replies received and not yet given to openraft, oldest first.
    held: VecDeque<Reply>,
    /// The replies ended: a reply still waiting for a later one is dropped.
    ended: bool,
    /// openraft is matching a reply the gate just gave it (until it asks for the next one).
    matching: bool,
    /// The request stream, waiting for `matching` to clear.
    requests_waker: Option<Waker>,
}

/// What to do with the oldest held reply.
enum Verdict {
    Release,
    Drop,
    Wait,
}

impl Gate {
    fn verdict(&self) -> Verdict {
        let Some(front) = self.held.front() else {
            return Verdict::Wait;
        };
        let Ok(Ok(matching)) = front else {
            // A refusal or an error credits no later request.
            return Verdict::Release;
        };
        // Later requests this reply's log id covers: openraft would credit their send time.
        for (i, last) in self.unreleased.iter().enumerate().skip(1) {
            if last > matching {
                break;
            }
            match self.held.get(i) {
                Some(Ok(Ok(_))) => {}
                Some(_) => return Verdict::Drop,
                None if self.ended => return Verdict::Drop,
                None => return Verdict::Wait,
            }
        }
        Verdict::Release
    }

    fn pop(&mut self) -> Option<Reply> {
        self.unreleased.pop_front();
        self.held.pop_front()
    }
}

/// openraft's request stream, recorded by the gate as it goes out.
pub struct GatedRequests<S> {
    inner: S,
    gate: Arc<Mutex<Gate>>,
}

impl<S> Stream for GatedRequests<S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    type Item = AppendEntriesRequest<TypeConfig>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Held across the poll: openraft records a request in its queue as it makes it, and the
        // gate must record it before it judges the next reply.
        let mut gate = lock(&this.gate);
        if gate.matching {
            gate.requests_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let next = std::task::ready!(Pin::new(&mut this.inner).poll_next(cx));
        if let Some(request) = &next {
            let last = request.entries.last().map(RaftEntry::log_id).or(request.prev_log_id);
            gate.unreleased.push_back(last);
        }
        Poll::Ready(next)
    }
}

/// The gate on the replies of one append stream; [`ReplyGate::wrap`] it around them.
pub struct ReplyGate {
    gate: Arc<Mutex<Gate>>,
}

impl ReplyGate {
    pub fn wrap<R>(self, replies: R) -> GatedReplies<R> {
        GatedReplies {
            inner: replies,
            gate: self.gate,
        }
    }
}

/// The replies of one append stream, given to openraft in order once they are safe to match.
pub struct GatedReplies<R> {
    inner: R,
    gate: Arc<Mutex<Gate>>,
}

impl<R> Stream for GatedReplies<R>
where
    R: Stream<Item = Reply> + Unpin,
{
    type Item = Reply;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        let this = self.get_mut();
        {
            // openraft asks for the next reply: it has matched the last one.
            let mut gate = lock(&this.gate);
            if gate.matching {
                gate.matching = false;
                if let Some(waker) = gate.requests_waker.take() {
                    waker.wake();
                }
            }
        }
        loop {
            {
                let mut gate = lock(&this.gate);
                loop {
                    match gate.verdict() {
                        Verdict::Release => {
                            gate.matching = true;
                            return Poll::Ready(gate.pop());
                        }
                        Verdict::Drop => {
                            gate.pop();
                        }
                        Verdict::Wait if gate.ended => return Poll::Ready(None),
                        Verdict::Wait => break,
                    }
                }
            }
            let next = std::task::ready!(Pin::new(&mut this.inner).poll_next(cx));
            let mut gate = lock(&this.gate);
            match next {
                Some(reply) => gate.held.push_back(reply),
                None => gate.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;
    use futures::{FutureExt, StreamExt};
    use openraft::raft::StreamAppendError;

    use crate::types::{Entry, Vote};

    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(1.into(), index)
    }

    /// A request carrying entries `(prev, last]`, or none when `prev == last`.
    fn request(prev: u64, last: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(prev)),
            leader_commit: None,
            entries: (prev + 1..=last).map(|i| Entry::new_blank(log_id(i))).collect(),
        }
    }

    fn ok(index: u64) -> Reply {
        Ok(Ok(Some(log_id(index))))
    }

    struct Stream2 {
        requests: mpsc::UnboundedSender<AppendEntriesRequest<TypeConfig>>,
        sent: GatedRequests<mpsc::UnboundedReceiver<AppendEntriesRequest<TypeConfig>>>,
        replies: mpsc::UnboundedSender<Reply>,
        given: GatedReplies<mpsc::UnboundedReceiver<Reply>>,
    }

    impl Stream2 {
        fn new() -> Self {
            let (requests, requests_rx) = mpsc::unbounded();
            let (replies, replies_rx) = mpsc::unbounded();
            let (sent, reply_gate) = gate(requests_rx);
            Self {
                requests,
                sent,
                replies,
                given: reply_gate.wrap(replies_rx),
            }
        }

        /// openraft makes a request and the transport sends it.
        fn send(&mut self, prev: u64, last: u64) {
            self.requests.unbounded_send(request(prev, last)).unwrap();
            assert!(
                self.sent.next().now_or_never().flatten().is_some(),
                "the request went out"
            );
        }

        fn reply(&self, reply: Reply) {
            self.replies.unbounded_send(reply).unwrap();
        }

        /// What openraft is given now, if anything.
        fn given(&mut self) -> Option<Option<Reply>> {
            self.given.next().now_or_never()
        }
    }

    fn acked(given: Option<Option<Reply>>) -> Option<u64> {
        match given {
            Some(Some(Ok(Ok(Some(id))))) => Some(id.index),
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    #[test]
    fn a_reply_reaches_openraft_at_once_when_no_later_request_shares_its_log_id() {
        let mut s = Stream2::new();
        s.send(4, 5);
        s.send(5, 6);
        s.reply(ok(5));
        assert_eq!(acked(s.given()), Some(5));
        s.reply(ok(6));
        assert_eq!(acked(s.given()), Some(6));
    }

    #[test]
    fn a_reply_waits_for_the_answer_to_a_later_entry_less_request_for_the_same_entry() {
        let mut s = Stream2::new();
        s.send(4, 5);
        s.send(5, 5); // the commit advanced, nothing new to send
        s.reply(ok(5));
        assert!(
            s.given().is_none(),
            "the reply left before the follower saw the second request"
        );
        s.reply(ok(5));
        assert_eq!(acked(s.given()), Some(5));
        assert_eq!(acked(s.given()), Some(5));
    }

    #[test]
    fn a_held_reply_is_dropped_when_the_later_request_is_refused() {
        let mut s = Stream2::new();
        s.send(4, 5);
        s.send(5, 5);
        s.reply(ok(5));
        s.reply(Ok(Err(StreamAppendError::HigherVote(Vote::new_committed(2, 2)))));
        match s.given() {
            Some(Some(Ok(Err(StreamAppendError::HigherVote(_))))) => {}
            other => panic!("expected the higher vote alone, got {other:?}"),
        }
    }

    #[test]
    fn a_held_reply_is_dropped_when_the_stream_ends_first() {
        let mut s = Stream2::new();
        s.send(4, 5);
        s.send(5, 5);
        s.reply(ok(5));
        s.replies.close_channel();
        assert!(matches!(s.given(), Some(None)));
    }

    #[test]
    fn no_request_is_made_while_openraft_matches_a_reply() {
        let mut s = Stream2::new();
        s.send(4, 5);
        s.reply(ok(5));
        assert_eq!(acked(s.given()), Some(5));
        s.requests.unbounded_send(request(5, 5)).unwrap();
        assert!(s.sent.next().now_or_never().is_none(), "openraft is still matching");
        assert!(s.given().is_none(), "no reply yet: openraft asked for the next one");
        assert!(s.sent.next().now_or_never().flatten().is_some());
    }
}
