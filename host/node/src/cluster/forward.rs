//! Forwarded writes on one stream: a follower sends its clients' commands to the leader on a
//! `Peer.ForwardStream`, many in flight, each answered by id once applied, rather than one
//! `Peer.Forward` call (a new HTTP/2 stream) per write.
//!
//! A command is registered under its id before it is sent. If the stream ends, every command
//! still waiting learns it at once (its answer's sender is dropped): it may have reached the
//! leader's log, so its outcome is unknown (`write.rs` reports it so). A command that could not
//! be handed to the stream at all reached no log and may be sent again. The leader answers each
//! as `Forward` would, with "not proposed" kept, so a follower's retry rules are the same.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::write::{not_proposed, was_not_proposed};
use crate::pb::{self, forward_answer::Outcome, peer_client::PeerClient};
use crate::types::NodeId;
use crate::util::lock;

/// The commands sent and not answered yet, by id; `None` once the stream has ended.
type Waiting = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Outcome>>>>>;

/// A follower's open `ForwardStream` to one leader.
pub(crate) struct ForwardLink {
    pub(crate) leader: NodeId,
    pub(crate) addr: String,
    items: mpsc::UnboundedSender<pb::ForwardItem>,
    waiting: Waiting,
    next_id: AtomicU64,
}

impl ForwardLink {
    /// Opens the stream on `client` (one round trip: the leader's response headers), and a task
    /// that hands each answer to whoever waits for it.
    pub(crate) async fn open(
        leader: NodeId,
        addr: &str,
        mut client: PeerClient<tonic::transport::Channel>,
    ) -> Result<ForwardLink, Status> {
        let (items, outgoing) = mpsc::unbounded_channel();
        let mut answers = client
            .forward_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(outgoing))
            .await?
            .into_inner();
        let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        let dispatch = waiting.clone();
        tokio::spawn(async move {
            while let Ok(Some(answer)) = answers.message().await {
                let waiter = lock(&dispatch).as_mut().and_then(|w| w.remove(&answer.id));
                if let (Some(waiter), Some(outcome)) = (waiter, answer.outcome) {
                    let _ = waiter.send(outcome);
                }
            }
            // Every command still waiting learns the stream ended (its sender is dropped).
            lock(&dispatch).take();
        });
        Ok(ForwardLink {
            leader,
            addr: addr.to_string(),
            items,
            waiting,
            next_id: AtomicU64::new(1),
        })
    }

    /// Whether the stream may still carry commands.
    pub(crate) fn is_open(&self) -> bool {
        !self.items.is_closed() && lock(&self.waiting).is_some()
    }

    /// Sends `command`; the answer comes on the receiver (dropped unanswered if the stream ends).
    /// An error means the command was not sent (it reached no log).
    pub(crate) fn send(&self, command: pb::Command) -> Result<oneshot::Receiver<Outcome>, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        let gone = || not_proposed("the stream to the leader ended; retry");
        lock(&self.waiting).as_mut().ok_or_else(gone)?.insert(id, answer);
        let item = pb::ForwardItem {
            id,
            command: Some(command),
        };
        if self.items.send(item).is_err() {
            if let Some(waiting) = lock(&self.waiting).as_mut() {
                waiting.remove(&id);
            }
            return Err(gone());
        }
        Ok(answered)
    }
}

/// The leader's answer to forwarded command `id`, from its proposal's outcome.
pub(crate) fn answer(id: u64, outcome: Result<(u64, pb::CommandResult), Status>) -> pb::ForwardAnswer {
    let outcome = match outcome {
        Ok((index, result)) => Outcome::Applied(pb::Forwarded {
            index,
            result: Some(result),
        }),
        Err(status) => Outcome::Error(pb::ForwardError {
            code: status.code() as i32,
            message: status.message().to_string(),
            not_proposed: was_not_proposed(&status),
        }),
    };
    pb::ForwardAnswer {
        id,
        outcome: Some(outcome),
    }
}

/// A forwarded command's outcome, as its sender reports it.
pub(crate) fn outcome(outcome: Outcome) -> Result<(u64, pb::CommandResult), Status> {
    match outcome {
        Outcome::Applied(pb::Forwarded {
            index,
            result: Some(result),
        }) => Ok((index, result)),
        Outcome::Applied(_) => Err(Status::internal(
            "the leader answered a forwarded write without its result",
        )),
        Outcome::Error(error) if error.not_proposed => Err(not_proposed(error.message)),
        Outcome::Error(error) => Err(Status::new(tonic::Code::from_i32(error.code), error.message)),
    }
}
