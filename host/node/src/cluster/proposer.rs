//! The leader's writes go to Raft in batches that grow with the load.
//!
//! Every batch proposed costs the same chain whatever its size: the leader's log append and
//! fsync, an append message to each follower and their fsyncs, the messages that carry the
//! commit, an apply call on every node. Here that is about 0.8 ms of CPU across the three nodes,
//! against about 40 us per entry (`docs/performance.md`). Proposed as they arrived, 64 clients'
//! writes went to Raft about 5 at a time, each batch behind the last.
//!
//! So a write goes to Raft at once while the node is not busy: while fewer than [`BUSY_AT`]
//! requests are in progress here (queries, and writes proposed and not yet answered). A lone
//! write, or a few, never wait. Once the node is busy its CPU is the limit, and every batch saved
//! is CPU for the other requests: a write then waits while a batch is in flight, and the writes
//! waiting go together as one batch when one is answered and the node is no longer busy, or none
//! is in flight (or as soon as [`FULL_BATCH`] wait). The batches grow with the load: 64 writing
//! clients, about 17 writes per batch instead of 5 (1.2x the writes per second at 0.8x the CPU
//! per write); 64 clients reading 90% of the time, their ~50 queries in progress keep the node
//! busy and the writes go about 3.5 per batch instead of 1 (1.04-1.17x the operations per
//! second).
//!
//! A waiting write is in no log yet. One whose caller gave up (it went away, or saw no quorum
//! acknowledge this leader for a peer deadline and withdrew it) is never proposed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use openraft::errors::Fatal;
use openraft::raft::WriteResult;
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::pb;
use crate::raft::Raft;
use crate::types::TypeConfig;
use crate::util::lock;

/// Requests in progress from which the node is busy. Measured (2026-12-05, `wasmraft bench`
/// rows): 16 keeps 1-16 writing clients as they were; holding whenever a batch is in flight,
/// busy or not, cost 4 and 8 clients 0.8-0.9x (their writes waited with no CPU to save).
const BUSY_AT: usize = 16;

/// Writes waiting that go as a batch even so: a batch this large costs little per write, and
/// holding more only idles the nodes between rounds. (16 clients x 64 in flight: batches of
/// about 550 without it, 0.89-0.96x the writes/s of no hold at all; about 120 with it, 0.93-1.0x.)
const FULL_BATCH: usize = 128;

/// A write's answer: its result once applied, or Raft stopped.
pub(crate) type Answer = Result<WriteResult<TypeConfig>, Fatal<TypeConfig>>;

/// Proposes this node's writes to its Raft.
pub(crate) struct Proposer {
    raft: Raft,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Queries in progress at this node.
    queries: AtomicUsize,
}

/// A query in progress, counted while it lives.
pub(crate) struct QueryInProgress<'a>(&'a AtomicUsize);

impl Drop for QueryInProgress<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A write handed to the [`Proposer`].
pub(crate) struct Pending {
    id: u64,
    /// Its answer; dropping it before the write is proposed withdraws the write.
    pub(crate) answer: oneshot::Receiver<Answer>,
}

struct Waiting {
    id: u64,
    command: pb::Command,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    /// Writes proposed and not yet answered.
    in_flight: usize,
    /// Batches proposed and not yet answered.
    batches: usize,
    next_id: u64,
}

impl State {
    fn add(&mut self, command: pb::Command) -> Pending {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push(Waiting {
            id,
            command,
            answer: tx,
        });
        Pending { id, answer: rx }
    }

    /// The writes to propose now as one batch, if any: all those waiting whose callers still
    /// wait, unless the node is busy (at least [`BUSY_AT`] requests in progress: the `queries`,
    /// and the writes in flight) and a batch is in flight, and fewer than [`FULL_BATCH`] wait. A
    /// write held so goes when the batches in flight are answered.
    fn take(&mut self, queries: usize) -> Option<Vec<Waiting>> {
        let busy = queries + self.in_flight >= BUSY_AT;
        if busy && self.batches > 0 && self.waiting.len() < FULL_BATCH {
            return None;
        }
        let batch: Vec<Waiting> = self.waiting.drain(..).filter(|w| !w.answer.is_closed()).collect();
        if batch.is_empty() {
            return None;
        }
        self.in_flight += batch.len();
        self.batches += 1;
        Some(batch)
    }

    /// A batch of `writes` was answered.
    fn answered(&mut self, writes: usize) {
        self.in_flight -= writes;
        self.batches -= 1;
    }

    /// Takes the write `id` back if it still waits.
    fn withdraw(&mut self, id: u64) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| w.id != id);
        self.waiting.len() < before
    }
}

impl Proposer {
    pub(crate) fn new(raft: Raft, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Proposer {
            raft,
            metrics,
            state: Mutex::default(),
            queries: AtomicUsize::new(0),
        })
    }

    /// Counts a query in progress at this node until the guard drops: the proposer holds writes
    /// back to batch them only while the node is busy.
    pub(crate) fn query(&self) -> QueryInProgress<'_> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        QueryInProgress(&self.queries)
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }

    /// Hands `command` to Raft, now or with the next batch.
    pub(crate) fn write(self: &Arc<Self>, command: pb::Command) -> Pending {
        let (pending, batch) = {
            let mut state = lock(&self.state);
            let pending = state.add(command);
            (pending, state.take(self.queries()))
        };
        if let Some(batch) = batch {
            // A task of its own: the batch carries other callers' writes, which must not be lost
            // if this caller goes away.
            tokio::spawn(self.clone().propose(batch));
        }
        pending
    }

    /// Takes `pending` back if it was not proposed yet: then it never will be.
    pub(crate) fn withdraw(&self, pending: &Pending) -> bool {
        lock(&self.state).withdraw(pending.id)
    }

    /// Proposes `batch`, answers its writes, then proposes what waited meanwhile, if it may.
    async fn propose(self: Arc<Self>, mut batch: Vec<Waiting>) {
        loop {
            let writes = batch.len();
            self.metrics.observe_write_batch(writes);
            let (commands, answers): (Vec<_>, Vec<_>) = batch.into_iter().map(|w| (w.command, w.answer)).unzip();
            match self.raft.client_write_many(commands).await {
                Ok(mut results) => {
                    for answer in answers {
                        let result = results.next().await.unwrap_or(Err(Fatal::Stopped));
                        let _ = answer.send(result);
                    }
                }
                Err(fatal) => {
                    for answer in answers {
                        let _ = answer.send(Err(fatal.clone()));
                    }
                }
            }
            let mut state = lock(&self.state);
            state.answered(writes);
            match state.take(self.queries()) {
                Some(next) => batch = next,
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(n: u64) -> pb::Command {
        pb::Command {
            timestamp_ms: n,
            kind: None,
        }
    }

    fn stamps(batch: &[Waiting]) -> Vec<u64> {
        batch.iter().map(|w| w.command.timestamp_ms).collect()
    }

    #[test]
    fn writes_go_at_once_until_the_node_is_busy_then_one_batch_at_a_time() {
        let mut state = State::default();
        let mut pending = Vec::new();
        for n in 0..BUSY_AT as u64 {
            pending.push(state.add(command(n)));
            assert_eq!(
                stamps(&state.take(0).unwrap()),
                vec![n],
                "write {n} went alone, at once"
            );
        }
        for n in 100..103 {
            pending.push(state.add(command(n)));
            assert!(state.take(0).is_none(), "{BUSY_AT} in flight: write {n} waits");
        }
        // Kept busy by queries too, they wait for every batch in flight.
        for _ in 1..BUSY_AT {
            state.answered(1);
            assert!(
                state.take(BUSY_AT).is_none(),
                "busy: they wait for every batch in flight"
            );
        }
        state.answered(1);
        assert_eq!(
            stamps(&state.take(BUSY_AT).unwrap()),
            vec![100, 101, 102],
            "the waiting writes go together"
        );
        assert_eq!((state.in_flight, state.batches), (3, 1));
        for n in 0..FULL_BATCH as u64 - 1 {
            pending.push(state.add(command(1000 + n)));
            assert!(state.take(BUSY_AT).is_none());
        }
        pending.push(state.add(command(2000)));
        assert_eq!(
            state.take(BUSY_AT).unwrap().len(),
            FULL_BATCH,
            "a full batch goes without waiting"
        );
    }

    #[test]
    fn queries_in_progress_make_the_node_busy_so_a_few_writes_share_a_batch() {
        let mut state = State::default();
        let queries = BUSY_AT;
        let first = state.add(command(1));
        assert_eq!(
            stamps(&state.take(queries).unwrap()),
            vec![1],
            "no batch in flight: it goes"
        );
        let waiting: Vec<_> = (2..5).map(|n| state.add(command(n))).collect();
        assert!(state.take(queries).is_none(), "busy, a batch in flight: they wait");
        state.answered(1);
        assert_eq!(stamps(&state.take(queries).unwrap()), vec![2, 3, 4]);
        let idle = state.add(command(5));
        assert_eq!(
            stamps(&state.take(0).unwrap()),
            vec![5],
            "once the queries are done a write goes at once again"
        );
        drop((first, waiting, idle));
    }

    #[test]
    fn a_write_withdrawn_or_given_up_while_waiting_is_never_proposed() {
        let mut state = State::default();
        let _in_flight: Vec<_> = (0..BUSY_AT as u64)
            .map(|n| {
                let pending = state.add(command(n));
                state.take(0).unwrap();
                pending
            })
            .collect();
        let withdrawn = state.add(command(100));
        let kept = state.add(command(101));
        let gone = state.add(command(102));
        drop(gone);
        assert!(state.withdraw(withdrawn.id));
        assert!(!state.withdraw(withdrawn.id), "withdrawn once");
        for _ in 0..BUSY_AT {
            state.answered(1);
        }
        assert_eq!(stamps(&state.take(0).unwrap()), vec![101]);
        assert!(!state.withdraw(kept.id), "a proposed write cannot be taken back");
    }
}
