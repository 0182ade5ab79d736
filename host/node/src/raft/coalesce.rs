//! Lets the next append carry a commit instead of a message of its own.
//!
//! When the leader's commit advances and there is no new entry to send, openraft's replication
//! stream sends an entry-less append that carries only the commit. Under load the next batch
//! follows within a fraction of a millisecond, with that same commit (or a newer one), so each
//! batch cost every follower two round trips: its entries, then its commit. A follower needs the
//! commit only to apply (for its own reads); the leader has already answered its clients.
//!
//! [`Coalesce`] holds an entry-less request for at most [`HOLD`]: if the next request extends it
//! (same vote, same previous log id, a commit at least as new), that request goes alone and
//! answers both; otherwise the held one goes first. The next request subsumes the held one: a
//! follower that accepts it has the held one's previous log id and learns a commit at least as
//! new; one that refuses it (a higher vote, a conflict at that log id) would have refused the held
//! one for the same reason. So its reply is given to openraft once per request it answers (see
//! the replies' `Due` in `network.rs`), and openraft's queue of requests in flight pairs up as
//! before (issue 18's `ack_gate` sits before this, so it sees every request openraft made).
//! openraft times an acknowledgement from when it made the request; a request goes on the wire
//! then or later, never earlier, so no acknowledgement is credited to a time before the follower
//! could have seen it: a merged reply is credited with the later request's time, when the merged
//! request went out, and a held one sent alone with its own, earlier than it went out.
//!
//! A follower learns a commit at most [`HOLD`] later than it would have; heartbeats, which a
//! ReadIndex round sends, carry the commit on their own stream and are never held.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{Fuse, Stream, StreamExt};
use openraft::raft::AppendEntriesRequest;
use tokio::time::{Instant, Sleep};

use crate::types::TypeConfig;

type Request = AppendEntriesRequest<TypeConfig>;

/// The longest an entry-less request waits for a request to carry it.
pub const HOLD: Duration = Duration::from_millis(1);

/// openraft's append requests, with each entry-less one held for the next (see the module).
/// Yields each request to send and how many of openraft's requests it answers.
pub struct Coalesce<S> {
    inner: Fuse<S>,
    /// An entry-less request waiting until `deadline`, and how many requests it answers.
    held: Option<(Request, usize)>,
    /// A request that could not carry the held one: it goes right after it.
    next: Option<Request>,
    deadline: Pin<Box<Sleep>>,
}

impl<S: Stream<Item = Request>> Coalesce<S> {
    pub fn new(requests: S) -> Self {
        Self {
            inner: requests.fuse(),
            held: None,
            next: None,
            deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

/// Whether `later` says everything `held` says: a follower accepting it has accepted `held`.
fn carries(later: &Request, held: &Request) -> bool {
    later.vote == held.vote && later.prev_log_id == held.prev_log_id && later.leader_commit >= held.leader_commit
}

impl<S: Stream<Item = Request> + Unpin> Stream for Coalesce<S> {
    type Item = (Request, usize);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let incoming = match this.next.take() {
                Some(request) => Some(request),
                None => match this.inner.poll_next_unpin(cx) {
                    Poll::Ready(incoming) => incoming,
                    Poll::Pending => {
                        if this.held.is_some() && this.deadline.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(this.held.take());
                        }
                        return Poll::Pending;
                    }
                },
            };
            let Some(request) = incoming else {
                // openraft ended the stream: what is held still goes.
                return Poll::Ready(this.held.take());
            };
            match this.held.take() {
                None if request.entries.is_empty() => {
                    this.held = Some((request, 1));
                    this.deadline.as_mut().reset(Instant::now() + HOLD);
                }
                None => return Poll::Ready(Some((request, 1))),
                // Another commit: it waits in the first one's place, until the first one's deadline.
                Some((held, answers)) if carries(&request, &held) && request.entries.is_empty() => {
                    this.held = Some((request, answers + 1));
                }
                Some((held, answers)) if carries(&request, &held) => {
                    return Poll::Ready(Some((request, answers + 1)));
                }
                Some(held) => {
                    this.next = Some(request);
                    return Poll::Ready(Some(held));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;
    use openraft::entry::RaftEntry;

    use super::*;
    use crate::types::{Entry, LogId, Vote};

    fn log_id(index: u64) -> LogId {
        LogId::new(1.into(), index)
    }

    /// An append after log id `prev` with `entries` new entries, carrying commit `commit`.
    fn append(prev: u64, entries: u64, commit: u64) -> Request {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(prev)),
            leader_commit: Some(log_id(commit)),
            entries: (prev + 1..=prev + entries)
                .map(|i| Entry::new_blank(log_id(i)))
                .collect(),
        }
    }

    /// A [`Coalesce`] over `requests`, already made, and the sender of any more.
    fn coalescing(
        requests: impl IntoIterator<Item = Request>,
    ) -> (
        mpsc::UnboundedSender<Request>,
        Coalesce<mpsc::UnboundedReceiver<Request>>,
    ) {
        let (tx, rx) = mpsc::unbounded();
        for request in requests {
            tx.unbounded_send(request).unwrap();
        }
        (tx, Coalesce::new(rx))
    }

    fn shape(item: &(Request, usize)) -> (u64, usize, u64, usize) {
        let (request, answers) = item;
        let commit = request.leader_commit.map_or(0, |c| c.index);
        (
            request.prev_log_id.unwrap().index,
            request.entries.len(),
            commit,
            *answers,
        )
    }

    #[tokio::test]
    async fn a_commit_rides_on_the_next_batch_which_answers_for_both() {
        let (_tx, mut out) = coalescing([append(0, 3, 0), append(3, 0, 3), append(3, 2, 3)]);
        assert_eq!(shape(&out.next().await.unwrap()), (0, 3, 0, 1));
        assert_eq!(
            shape(&out.next().await.unwrap()),
            (3, 2, 3, 2),
            "the batch carries the commit"
        );
    }

    #[tokio::test]
    async fn a_commit_with_nothing_behind_it_goes_alone_after_the_hold() {
        let (tx, mut out) = coalescing([append(3, 0, 2), append(3, 0, 3)]);
        let started = Instant::now();
        assert_eq!(
            shape(&out.next().await.unwrap()),
            (3, 0, 3, 2),
            "the newer commit answers for both"
        );
        assert!(started.elapsed() >= HOLD);
        drop(tx);
        assert!(out.next().await.is_none());
    }

    #[tokio::test]
    async fn a_request_that_does_not_extend_the_held_one_goes_after_it() {
        // A conflict sent openraft back to log id 1.
        let (_tx, mut out) = coalescing([append(3, 0, 3), append(1, 2, 3)]);
        assert_eq!(shape(&out.next().await.unwrap()), (3, 0, 3, 1));
        assert_eq!(shape(&out.next().await.unwrap()), (1, 2, 3, 1));
    }

    #[tokio::test]
    async fn a_held_commit_still_goes_when_openraft_ends_the_stream() {
        let (tx, mut out) = coalescing([append(3, 0, 3)]);
        drop(tx);
        assert_eq!(shape(&out.next().await.unwrap()), (3, 0, 3, 1));
        assert!(out.next().await.is_none());
    }
}
