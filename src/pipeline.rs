//! A client of the `Pipeline` stream: many calls and queries in flight on one HTTP/2 stream,
//! each answered by id as soon as the node is done with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};
use wasmraft_node::pb::{self, pipeline_reply::Outcome, pipeline_request::Op};

use crate::client::Api;

/// Requests the client may queue before `send` waits for the stream to take them.
const QUEUED: usize = 1024;

/// The requests waiting for their answer, by id; `None` once the stream has ended.
type Waiting = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Outcome>>>>>;

/// One `Pipeline` stream; clones share it.
#[derive(Clone)]
pub struct Pipeline {
    requests: mpsc::Sender<pb::PipelineRequest>,
    waiting: Waiting,
    next_id: Arc<AtomicU64>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pipeline {
    /// Opens a `Pipeline` stream on `api`'s connection.
    pub async fn open(api: &mut Api) -> Result<Self, Status> {
        let (requests, queued) = mpsc::channel(QUEUED);
        let replies = api
            .pipeline(tokio_stream::wrappers::ReceiverStream::new(queued))
            .await?
            .into_inner();
        let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(dispatch(replies, waiting.clone()));
        Ok(Self {
            requests,
            waiting,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    /// A call, answered as the `Call` RPC would.
    pub async fn call(&self, req: pb::CallRequest) -> Result<pb::CallResponse, Status> {
        match self.send(Op::Call(req)).await? {
            Outcome::Call(answer) => Ok(answer),
            other => Err(unexpected(other)),
        }
    }

    /// A query, answered as the `Query` RPC would.
    pub async fn query(&self, req: pb::QueryRequest) -> Result<pb::QueryResponse, Status> {
        match self.send(Op::Query(req)).await? {
            Outcome::Query(answer) => Ok(answer),
            other => Err(unexpected(other)),
        }
    }

    async fn send(&self, op: Op) -> Result<Outcome, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        match lock(&self.waiting).as_mut() {
            Some(waiting) => waiting.insert(id, answer),
            None => return Err(Status::unavailable("the pipeline stream has ended")),
        };
        let request = pb::PipelineRequest { id, op: Some(op) };
        if self.requests.send(request).await.is_err() {
            return Err(Status::unavailable("the pipeline stream has ended"));
        }
        // The node may have the request: if the stream breaks now, its outcome is unknown.
        match answered.await {
            Ok(Outcome::Error(error)) => Err(Status::new(Code::from_i32(error.code), error.message)),
            Ok(outcome) => Ok(outcome),
            Err(_) => Err(Status::deadline_exceeded(
                "the pipeline stream broke before the answer; the outcome is unknown",
            )),
        }
    }
}

fn unexpected(outcome: Outcome) -> Status {
    Status::internal(format!("the node answered with {outcome:?}"))
}

/// Hands each reply to its request; when the stream ends, every request still waiting learns it
/// (its answer sender is dropped) and later ones are refused.
async fn dispatch(mut replies: tonic::Streaming<pb::PipelineReply>, waiting: Waiting) {
    while let Ok(Some(reply)) = replies.message().await {
        let answer = lock(&waiting).as_mut().and_then(|w| w.remove(&reply.id));
        if let (Some(answer), Some(outcome)) = (answer, reply.outcome) {
            let _ = answer.send(outcome);
        }
    }
    lock(&waiting).take();
}
