//! The leader's writes go to Raft in batches that grow with the load.
//!
//! Every batch proposed costs the same chain whatever its size: the leader's log append and
//! fsync, an append message to each follower and their fsyncs, the messages that carry the
//! commit, an apply call on every node. Here that is about 0.8 ms of CPU across the three nodes,
//! against about 40 us per entry (`docs/performance.md`). Proposed as they arrived, 64 clients'
//! writes went to Raft about 5 at a time, each batch behind the last.
//!
//! So a write goes to Raft at once while fewer than [`HOLD_AT`] writes are in flight (proposed
//! and not yet answered): a lone write, or a few, never wait. Past that, a write waits with
//! every write that arrives meanwhile until a batch in flight is answered; then they all go as
//! one batch, or as soon as [`FULL_BATCH`] wait. The batches then grow with the number of
//! writers (64 clients: about 30 entries per fsync instead of 13, 1.2x the writes per second at
//! 0.8x the CPU per write).
//!
//! A waiting write is in no log yet. One whose caller gave up (it went away, or saw no quorum
//! acknowledge this leader for a peer deadline and withdrew it) is never proposed.

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

/// Writes in flight past which new writes wait for a batch to be answered. Measured
/// (2026-12-05, `bench/throughput.sh` rows): 16 keeps 1-16 clients as they were and gives
/// 64 clients 1.2x; holding whenever a batch is in flight cost 4 clients 0.8x.
const HOLD_AT: usize = 16;

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
    /// wait, unless [`HOLD_AT`] writes are in flight and fewer than [`FULL_BATCH`] wait.
    fn take(&mut self) -> Option<Vec<Waiting>> {
        if self.in_flight >= HOLD_AT && self.waiting.len() < FULL_BATCH {
            return None;
        }
        let batch: Vec<Waiting> = self.waiting.drain(..).filter(|w| !w.answer.is_closed()).collect();
        if batch.is_empty() {
            return None;
        }
        self.in_flight += batch.len();
        Some(batch)
    }

    /// A batch of `writes` was answered.
    fn answered(&mut self, writes: usize) {
        self.in_flight -= writes;
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
        })
    }

    /// Hands `command` to Raft, now or with the next batch.
    pub(crate) fn write(self: &Arc<Self>, command: pb::Command) -> Pending {
        let (pending, batch) = {
            let mut state = lock(&self.state);
            let pending = state.add(command);
            (pending, state.take())
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
            match state.take() {
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
    fn writes_go_at_once_until_enough_are_in_flight_then_wait_to_go_as_one_batch() {
        let mut state = State::default();
        let mut pending = Vec::new();
        for n in 0..HOLD_AT as u64 {
            pending.push(state.add(command(n)));
            assert_eq!(stamps(&state.take().unwrap()), vec![n], "write {n} went alone, at once");
        }
        for n in 100..103 {
            pending.push(state.add(command(n)));
            assert!(state.take().is_none(), "{HOLD_AT} in flight: write {n} waits");
        }
        state.answered(1);
        assert_eq!(
            stamps(&state.take().unwrap()),
            vec![100, 101, 102],
            "the waiting writes go together"
        );
        assert_eq!(state.in_flight, HOLD_AT - 1 + 3);
        for n in 0..FULL_BATCH as u64 - 1 {
            pending.push(state.add(command(1000 + n)));
            assert!(state.take().is_none());
        }
        pending.push(state.add(command(2000)));
        assert_eq!(
            state.take().unwrap().len(),
            FULL_BATCH,
            "a full batch goes without waiting"
        );
    }

    #[test]
    fn a_write_withdrawn_or_given_up_while_waiting_is_never_proposed() {
        let mut state = State::default();
        let _in_flight: Vec<_> = (0..HOLD_AT as u64)
            .map(|n| {
                let pending = state.add(command(n));
                state.take().unwrap();
                pending
            })
            .collect();
        let withdrawn = state.add(command(100));
        let kept = state.add(command(101));
        let gone = state.add(command(102));
        drop(gone);
        assert!(state.withdraw(withdrawn.id));
        assert!(!state.withdraw(withdrawn.id), "withdrawn once");
        state.answered(HOLD_AT);
        assert_eq!(stamps(&state.take().unwrap()), vec![101]);
        assert!(!state.withdraw(kept.id), "a proposed write cannot be taken back");
    }
}
