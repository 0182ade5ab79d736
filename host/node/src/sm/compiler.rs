//! Compiles uploaded components off the apply path. When an upload completes (its last piece
//! applies), every node starts compiling it on one background thread (wasmtime itself compiles
//! a component's functions in parallel); a deploy waits until every voter reports it ready
//! before it proposes the activation (`Peer.Prepare`), so no node's apply stalls for a compile.
//! A node that reaches an activation without the compiled code (a learner, a node that was down,
//! one restored from a snapshot) compiles it then: a delay on that node only.
//!
//! Invariant: an activation entry reaches the log only after every voter compiled its component
//! (the deploy's barrier), so a compile that fails while applying an activation failed on this
//! node only (memory, a thread): it is retried, then the apply fails as a node fault. It is never
//! a replicated rejection, which would make this replica differ from the others for good.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use wasmraft_runtime::{PluginCode, Runtime};
use wasmraft_store::Store;

use super::component_key;
use crate::util::lock;

/// A compile's state on this node.
#[derive(Clone)]
enum Job {
    Compiling,
    Ready { code: PluginCode, took: Duration },
    Failed(String),
}

/// What [`Compiler::prepare`] reports.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub from_cache: bool,
    pub took: Duration,
}

/// This node's compiles, by sha256.
pub struct Compiler {
    runtime: Runtime,
    store: Store,
    jobs: Mutex<HashMap<String, Job>>,
    done: Condvar,
    queue: std::sync::mpsc::Sender<(String, Vec<u8>)>,
}

/// The nice value of compile threads: a compile is background work, and on a busy machine the
/// node's serving threads (Raft, apply, the API) go first.
const COMPILE_NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority (Linux: `setpriority` on a thread id affects that
/// thread only). Best effort: a failure leaves the thread at its priority.
fn lower_this_threads_priority() {
    // SAFETY: setpriority only reads its integer arguments; `who = 0` is the calling thread.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, COMPILE_NICE) };
}

/// Makes rayon's global pool, where wasmtime compiles a component's functions in parallel, run
/// at [`COMPILE_NICE`]. Only the first call in a process takes effect (several in-process nodes
/// share the pool); it must run before anything else uses rayon.
fn lower_compile_priority() {
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("wasmraft-compile-{i}"))
        .start_handler(|_| lower_this_threads_priority())
        .build_global();
}

impl Compiler {
    pub(super) fn new(node: u64, runtime: Runtime, store: Store) -> Arc<Self> {
        lower_compile_priority();
        let (queue, rx) = std::sync::mpsc::channel::<(String, Vec<u8>)>();
        let compiler = Arc::new(Self {
            runtime,
            store,
            jobs: Mutex::new(HashMap::new()),
            done: Condvar::new(),
            queue,
        });
        let weak = Arc::downgrade(&compiler);
        std::thread::Builder::new()
            .name("wasmraft-compile".into())
            .spawn(move || {
                lower_this_threads_priority();
                let _span = tracing::info_span!("compiler", node).entered();
                // Ends when the compiler is dropped (the sender goes with it).
                while let Ok((sha256, bytes)) = rx.recv() {
                    let Some(compiler) = weak.upgrade() else { return };
                    compiler.run(&sha256, &bytes);
                }
            })
            .expect("spawning the compile thread");
        compiler
    }

    /// Starts compiling `bytes` (of `sha256`) in the background, unless that is done or under way.
    pub fn start(&self, sha256: &str, bytes: Vec<u8>) {
        {
            let mut jobs = lock(&self.jobs);
            if matches!(jobs.get(sha256), Some(Job::Compiling | Job::Ready { .. })) {
                return;
            }
            jobs.insert(sha256.to_string(), Job::Compiling);
        }
        if self.queue.send((sha256.to_string(), bytes)).is_err() {
            self.finish(sha256, Job::Failed("the compile thread is gone".into()));
        }
    }

    fn run(&self, sha256: &str, bytes: &[u8]) {
        let started = Instant::now();
        let job = match self.runtime.load(bytes) {
            Ok(code) => {
                let took = started.elapsed();
                info!(%sha256, from_cache = code.from_cache(), ms = took.as_millis() as u64, "component compiled");
                Job::Ready { code, took }
            }
            Err(e) => {
                warn!(%sha256, "component does not compile: {e}");
                Job::Failed(e.to_string())
            }
        };
        self.finish(sha256, job);
    }

    fn finish(&self, sha256: &str, job: Job) {
        lock(&self.jobs).insert(sha256.to_string(), job);
        self.done.notify_all();
    }

    /// Waits until the compile of `sha256` is done, starting it from the stored component if it
    /// is not under way (this node started after the upload, or a snapshot brought it). An error
    /// says why this node cannot run the component.
    pub fn prepare_blocking(&self, sha256: &str) -> Result<Prepared, String> {
        let mut retried = false;
        let mut jobs = lock(&self.jobs);
        loop {
            match jobs.get(sha256).cloned() {
                Some(Job::Ready { code, took }) => {
                    return Ok(Prepared {
                        from_cache: code.from_cache(),
                        took,
                    });
                }
                Some(Job::Compiling) => jobs = self.done.wait(jobs).unwrap_or_else(|p| p.into_inner()),
                Some(Job::Failed(e)) if retried => return Err(e),
                Some(Job::Failed(_)) | None => {
                    drop(jobs);
                    let bytes = self.stored(sha256)?;
                    lock(&self.jobs).remove(sha256);
                    self.start(sha256, bytes);
                    retried = true;
                    jobs = lock(&self.jobs);
                }
            }
        }
    }

    /// The compiled code for activating `sha256` (its component is `bytes`): the background
    /// compile's once it is done, else compiled here and now. The deploy's barrier saw every
    /// voter compile it, so a failure here is this node's: tried three times, then returned.
    pub fn take(&self, sha256: &str, bytes: &[u8]) -> Result<PluginCode, String> {
        let job = {
            let mut jobs = lock(&self.jobs);
            while matches!(jobs.get(sha256), Some(Job::Compiling)) {
                jobs = self.done.wait(jobs).unwrap_or_else(|p| p.into_inner());
            }
            jobs.remove(sha256)
        };
        if let Some(Job::Ready { code, .. }) = job {
            return Ok(code);
        }
        let mut failure = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            match self.runtime.load(bytes) {
                Ok(code) => return Ok(code),
                Err(e) => {
                    warn!(%sha256, attempt, "compiling a component to activate failed on this node: {e}");
                    failure = e.to_string();
                }
            }
        }
        Err(failure)
    }

    /// Drops what this node compiled of `sha256` (its component is being deleted).
    pub fn forget(&self, sha256: &str) {
        let mut jobs = lock(&self.jobs);
        if !matches!(jobs.get(sha256), Some(Job::Compiling)) {
            jobs.remove(sha256);
        }
    }

    /// Every compile this node ran or runs, as (sha256, "compiling" | "ready" | the error).
    pub fn states(&self) -> Vec<(String, String)> {
        let jobs = lock(&self.jobs);
        let mut states: Vec<(String, String)> = jobs
            .iter()
            .map(|(sha, job)| {
                let state = match job {
                    Job::Compiling => "compiling".to_string(),
                    Job::Ready { .. } => "ready".to_string(),
                    Job::Failed(e) => format!("failed: {e}"),
                };
                (sha.clone(), state)
            })
            .collect();
        states.sort();
        states
    }

    /// The stored component `sha256`.
    fn stored(&self, sha256: &str) -> Result<Vec<u8>, String> {
        match self.store.blob_get(&component_key(sha256)) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(format!("component {sha256} is not stored on this node (yet)")),
            Err(e) => Err(format!("reading component {sha256}: {e}")),
        }
    }
}
