//! Recorded histories, checked for linearizability: concurrent clients put, read (linearizable)
//! and compare-and-swap keys of the kv plugin through any nodes; each records when it called and
//! when it got its answer. The history is checked key by key with Porcupine's algorithm
//! (`porcupine-rs`) against a register model.
//!
//! A write whose outcome is unknown (it failed or timed out after it may have reached a log) stays
//! open to the end of the history, as Porcupine expects: it may take effect at any point after
//! its call, or never. A write the node reports as never proposed, and a failed read, changed
//! nothing and are dropped. A violation prints the key's operations with their times.
//!
//! Used by `wasmraft chaos` (node processes) and `tests/linearizability.rs` (in-process nodes).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use porcupine_rs::{CheckResult, Model, Operation};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};
use wasmraft_node::pb::{self, Consistency, api_client::ApiClient};

use crate::workload::SplitMix;

/// What one operation did to one key, as its client saw it.
#[derive(Clone, Debug)]
pub enum Op {
    /// `previous`: what the put replaced; `None` when the outcome is unknown.
    Put {
        value: String,
        previous: Option<Option<String>>,
    },
    Get {
        value: Option<String>,
    },
    /// `swapped`: `None` when the outcome is unknown.
    Cas {
        expected: Option<String>,
        value: String,
        swapped: Option<bool>,
    },
}

/// One register per key.
#[derive(Clone, Debug)]
pub struct Registers;

impl Model for Registers {
    type State = Option<String>;
    type Op = (String, Op);
    type Metadata = ();

    fn partition_operations(history: &[Operation<Self>]) -> Vec<Vec<Operation<Self>>> {
        by_key(history).into_values().collect()
    }

    fn init() -> Self::State {
        None
    }

    fn step(state: &Self::State, (_, op): &Self::Op) -> (bool, Self::State) {
        match op {
            Op::Put { value, previous } => (
                previous.as_ref().is_none_or(|previous| previous == state),
                Some(value.clone()),
            ),
            Op::Get { value } => (value == state, state.clone()),
            Op::Cas {
                expected,
                value,
                swapped,
            } => {
                let swaps = expected == state;
                let ok = swapped.is_none_or(|swapped| swapped == swaps);
                (ok, if swaps { Some(value.clone()) } else { state.clone() })
            }
        }
    }
}

fn by_key(ops: &[Operation<Registers>]) -> BTreeMap<String, Vec<Operation<Registers>>> {
    let mut by_key: BTreeMap<String, Vec<Operation<Registers>>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.op.0.clone()).or_default().push(op.clone());
    }
    by_key
}

/// A history being recorded by many clients.
#[derive(Clone)]
pub struct History {
    start: Instant,
    ops: Arc<Mutex<Vec<Operation<Registers>>>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Arc::default(),
        }
    }

    /// Nanoseconds since the history began.
    pub fn now(&self) -> i64 {
        self.start.elapsed().as_nanos() as i64
    }

    /// Records an operation called at `call` that returned at `ret`, or whose outcome is unknown
    /// (`None`).
    pub fn record(&self, client: u32, call: i64, ret: Option<i64>, key: &str, op: Op) {
        self.lock().push(Operation {
            client_id: Some(client),
            call_time: call,
            // Unknown outcome: open to the end of the history.
            return_time: ret.unwrap_or(i64::MAX),
            op: (key.to_string(), op),
            metadata: None,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Operation<Registers>>> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Operations recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Operations whose outcome is unknown.
    pub fn unknown(&self) -> usize {
        self.lock().iter().filter(|o| o.return_time == i64::MAX).count()
    }

    /// Checks the history key by key (each for at most `limit`). A violation, or a key the
    /// checker could not decide in time, is an error naming the key and showing the operations
    /// that lead up to the contradiction.
    pub fn check(&self, limit: Duration) -> Result<usize, String> {
        let ops = self.lock().clone();
        for (key, mut ops) in by_key(&ops) {
            let verdict = porcupine_rs::check_operations_timeout(&ops, limit);
            if matches!(verdict, CheckResult::Ok) {
                continue;
            }
            ops.sort_by_key(|o| o.call_time);
            let shown = match verdict {
                CheckResult::Illegal => shortest_illegal_prefix(&ops, limit),
                _ => ops.len(),
            };
            let first = shown.saturating_sub(SHOWN_OPS);
            let lines: Vec<String> = ops[first..shown]
                .iter()
                .map(|o| {
                    let ret = match o.return_time {
                        i64::MAX => "unknown".to_string(),
                        ret => format!("{:.3}s", ret as f64 / 1e9),
                    };
                    let call = o.call_time as f64 / 1e9;
                    format!("  client {:?} {call:.3}s..{ret}: {:?}", o.client_id, o.op.1)
                })
                .collect();
            return Err(format!(
                "key {key}: {verdict:?}; the history is already illegal at its {shown}th operation \
                 (of {}); operations {} to {shown} by call time:\n{}",
                ops.len(),
                first + 1,
                lines.join("\n")
            ));
        }
        Ok(ops.len())
    }
}

/// Operations a violation shows: the last ones of the shortest illegal prefix.
const SHOWN_OPS: usize = 24;

/// The fewest operations (by call time) of `ops` that are already illegal, each treated as
/// unanswered when it returned after the last one's call. That only relaxes what they saw, so a
/// prefix found illegal is a real contradiction, and it ends at the operation that completes it.
fn shortest_illegal_prefix(ops: &[Operation<Registers>], limit: Duration) -> usize {
    let illegal = |k: usize| {
        let cut = ops[k - 1].call_time;
        let prefix: Vec<Operation<Registers>> = ops[..k]
            .iter()
            .map(|o| Operation {
                return_time: if o.return_time > cut { i64::MAX } else { o.return_time },
                ..o.clone()
            })
            .collect();
        matches!(
            porcupine_rs::check_operations_timeout(&prefix, limit),
            CheckResult::Illegal
        )
    };
    let (mut legal, mut illegal_at) = (0, ops.len());
    while illegal_at - legal > 1 {
        let mid = (legal + illegal_at) / 2;
        if illegal(mid) {
            illegal_at = mid;
        } else {
            legal = mid;
        }
    }
    illegal_at
}

/// One client of a workload: random puts, linearizable gets and compare-and-swaps on `keys`,
/// each through a random node of `addrs`, recorded in a [`History`].
pub struct Client {
    /// Its id in the history; its values are `c{id}-{n}`.
    pub id: u32,
    pub addrs: Vec<String>,
    pub keys: Vec<String>,
    pub seed: u64,
    /// At most this many operations.
    pub ops: usize,
    /// No operation starts after this.
    pub until: Option<Instant>,
    /// An operation without an answer by then is given up (a write's outcome is then unknown).
    pub timeout: Duration,
    /// Writes carry a session (this client id, the operation's number) and one whose outcome is
    /// unknown is sent again, through another node, for up to `retry_for`: the state machine
    /// applies it at most once, so the answer that finally comes is the write's own. `None`:
    /// no sessions; an unknown outcome stays open to the end of the history.
    pub sessions: Option<SessionRetry>,
}

/// How a client retries its writes (see [`Client::sessions`]).
#[derive(Clone)]
pub struct SessionRetry {
    /// The session's client id (unique to this client).
    pub client: String,
    pub retry_for: Duration,
}

/// A channel that connects when first used, and again after a failure: the node may be down now.
pub fn lazy_api(addr: &str) -> Result<ApiClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(addr.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(ApiClient::new(channel))
}

/// Whether a failed call is known to have done nothing: the node says it never proposed it, or
/// the connection was refused (nothing listens there: the request never left this process).
fn never_proposed(status: &tonic::Status) -> bool {
    if status.metadata().contains_key("wasmraft-not-proposed") {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = err.source();
    }
    false
}

fn field(reply: &str, name: &str) -> Option<Value> {
    serde_json::from_str::<Value>(reply).ok()?.get(name).cloned()
}

fn text(value: Option<Value>) -> Option<String> {
    value.and_then(|v| v.as_str().map(str::to_string))
}

/// The value a kv reply names (`value`, `previous`).
pub fn reply_text(reply: &[u8], name: &str) -> Option<String> {
    text(field(&String::from_utf8_lossy(reply), name))
}

impl Client {
    /// Runs the client to its end; returns the operations it recorded.
    pub async fn run(self, history: History) -> Result<usize, tonic::transport::Error> {
        let mut apis = Vec::new();
        for addr in &self.addrs {
            apis.push(lazy_api(addr)?);
        }
        let mut rng = SplitMix(self.seed);
        // The value this client last saw for each key, which its compare-and-swaps expect.
        let mut seen: HashMap<&str, Option<String>> = HashMap::new();
        let mut recorded = 0;
        for n in 0..self.ops {
            if self.until.is_some_and(|until| Instant::now() >= until) {
                break;
            }
            let key = self.keys[rng.below(self.keys.len() as u64) as usize].as_str();
            let node = rng.below(self.addrs.len() as u64) as usize;
            let value = format!("c{}-{n}", self.id);
            let call = history.now();
            let op = rng.below(10);
            if op < 4 {
                let req = pb::QueryRequest {
                    plugin: "kv".into(),
                    request: format!(r#"{{"op":"get","key":"{key}"}}"#).into_bytes(),
                    consistency: Consistency::Linearizable as i32,
                    shadow: false,
                };
                if let Ok(Ok(reply)) = tokio::time::timeout(self.timeout, apis[node].query(req)).await {
                    let value = reply_text(&reply.into_inner().result, "value");
                    seen.insert(key, value.clone());
                    history.record(self.id, call, Some(history.now()), key, Op::Get { value });
                    recorded += 1;
                }
                continue;
            }
            let (payload, cas) = if op < 8 {
                (format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#), None)
            } else {
                // Mostly the value this client saw last (it may still be there), else absent.
                let expected = match rng.below(4) {
                    0 => None,
                    _ => seen.get(key).cloned().flatten(),
                };
                let json = expected.as_ref().map_or("null".to_string(), |e| format!("\"{e}\""));
                (
                    format!(r#"{{"op":"cas","key":"{key}","expected":{json},"value":"{value}"}}"#),
                    Some(expected),
                )
            };
            let req = pb::CallRequest {
                plugin: "kv".into(),
                payload: payload.into_bytes(),
                session: self.sessions.as_ref().map(|s| pb::Session {
                    client: s.client.clone(),
                    seq: n as u64 + 1,
                }),
            };
            let give_up = Instant::now() + self.sessions.as_ref().map_or(Duration::ZERO, |s| s.retry_for);
            let mut node = node;
            // Whether an attempt may have reached a log.
            let mut maybe_proposed = false;
            let reply = loop {
                match tokio::time::timeout(self.timeout, apis[node].call(req.clone())).await {
                    Ok(Ok(reply)) => break Some(reply.into_inner().result),
                    // Known not to have reached a log: it did nothing (unless an earlier attempt did).
                    Ok(Err(status)) if never_proposed(&status) => {}
                    _ => maybe_proposed = true,
                }
                if Instant::now() >= give_up {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                node = rng.below(self.addrs.len() as u64) as usize;
            };
            if reply.is_none() && !maybe_proposed {
                continue;
            }
            let ret = reply.as_ref().map(|_| history.now());
            let op = match cas {
                None => {
                    seen.insert(key, Some(value.clone()));
                    Op::Put {
                        value,
                        previous: reply.map(|r| reply_text(&r, "previous")),
                    }
                }
                Some(expected) => {
                    let swapped = reply.and_then(|r| field(&String::from_utf8_lossy(&r), "swapped")?.as_bool());
                    if swapped == Some(true) {
                        seen.insert(key, Some(value.clone()));
                    }
                    Op::Cas {
                        expected,
                        value,
                        swapped,
                    }
                }
            };
            history.record(self.id, call, ret, key, op);
            recorded += 1;
        }
        Ok(recorded)
    }
}
