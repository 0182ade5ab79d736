//! Run a plugin natively, without wasm, against an in-memory kv with the host's semantics.
//!
//! The same words as the real runtime: each entry is atomic (an `Err` or a panic rolls back its
//! writes and becomes the result, with `panicked: MESSAGE` for a panic), a panic drops the machine
//! (as a trap drops the wasm instance), queries are read-only, and snapshots stream through the
//! same [`crate::snapshot`] code as in wasm. The checks [`check_snapshot_round_trip`] and
//! [`check_batch_independence`] are the native halves of `wasmraft plugin test`.
//!
//! ```
//! # use wasmraft_guest::{testing::TestHost, *};
//! # #[derive(Default)] struct Echo;
//! # impl StateMachine for Echo {
//! #     type Command = String; type Response = String; type Query = (); type QueryResponse = ();
//! #     fn apply(&mut self, _: &EntryContext, _: &mut Kv, c: String) -> Result<String, Error> { Ok(c) }
//! #     fn query(&self, _: &Kv, _: ()) -> Result<(), Error> { Ok(()) }
//! # }
//! let mut host = TestHost::<Echo>::new();
//! assert_eq!(host.apply_json(r#""hi""#), Ok(r#""hi""#.to_string()));
//! wasmraft_guest::testing::check_snapshot_round_trip(&host).unwrap();
//! ```

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::export::{PANIC_WITHOUT_MESSAGE, apply_payload, query_payload};
use crate::snapshot::{SnapshotReader, SnapshotWriter};
use crate::{EntryContext, InitContext, Kv, StateMachine};

/// Chunk size of the snapshots the checks take: small, so records straddle chunk boundaries.
const CHECK_CHUNK_BYTES: usize = 61;

/// A plugin running natively on an in-memory kv space.
pub struct TestHost<T: StateMachine> {
    machine: Option<T>,
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    next_index: u64,
    term: u64,
    timestamp_ms: u64,
}

impl<T: StateMachine> Default for TestHost<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: StateMachine> TestHost<T> {
    /// A host with an empty kv space on which `init` ran with an empty [`InitContext`].
    ///
    /// # Panics
    /// If `init` fails: use [`TestHost::with_init`] to test that.
    pub fn new() -> Self {
        Self::with_init(&InitContext::default()).expect("init failed")
    }

    /// A host with an empty kv space on which `init` ran with `ctx`.
    pub fn with_init(ctx: &InitContext) -> Result<Self, String> {
        let mut host = Self::empty();
        host.init(ctx)?;
        Ok(host)
    }

    fn empty() -> Self {
        Self {
            machine: None,
            kv: BTreeMap::new(),
            next_index: 1,
            term: 1,
            timestamp_ms: 0,
        }
    }

    /// Runs `init` (as an activation would), atomically.
    pub fn init(&mut self, ctx: &InitContext) -> Result<(), String> {
        self.run_atomic(|machine| machine.init(ctx, &mut Kv::new()).map_err(String::from))
    }

    /// Sets the leader timestamp the next entries carry.
    pub fn set_timestamp_ms(&mut self, timestamp_ms: u64) {
        self.timestamp_ms = timestamp_ms;
    }

    /// Applies one entry with the next log index; its writes commit only if it succeeds.
    pub fn apply(&mut self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let ctx = EntryContext {
            index: self.next_index,
            term: self.term,
            timestamp_ms: self.timestamp_ms,
        };
        self.next_index += 1;
        self.run_atomic(|machine| apply_payload(machine, &ctx, payload))
    }

    /// [`TestHost::apply`] with JSON text in and out.
    pub fn apply_json(&mut self, command: &str) -> Result<String, String> {
        self.apply(command.as_bytes()).map(into_text)
    }

    /// Answers a query from the committed state.
    pub fn query(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
        let kv = std::mem::take(&mut self.kv);
        let machine = self.machine.get_or_insert_with(T::default);
        let (result, state) = native::run(kv, true, || {
            catch_unwind(AssertUnwindSafe(|| query_payload(machine, request)))
        });
        self.kv = state.committed;
        self.settle(result)
    }

    /// [`TestHost::query`] with JSON text in and out.
    pub fn query_json(&mut self, request: &str) -> Result<String, String> {
        self.query(request.as_bytes()).map(into_text)
    }

    /// The committed kv space.
    pub fn kv(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.kv
    }

    /// Drops the machine, as the runtime does after a trap, a restart or an upgrade: the next call
    /// starts from `T::default()` and whatever is in kv.
    pub fn reload(&mut self) {
        self.machine = None;
    }

    /// The default snapshot stream of the kv space, in chunks of at most `chunk_bytes`.
    pub fn snapshot(&self, chunk_bytes: usize) -> Vec<Vec<u8>> {
        let (chunks, _) = native::run(self.kv.clone(), true, || {
            let mut writer = SnapshotWriter::new();
            std::iter::from_fn(|| writer.next_chunk(&Kv::new(), chunk_bytes)).collect()
        });
        chunks
    }

    /// A new host whose kv space is restored from `chunks`.
    pub fn restore(chunks: &[Vec<u8>]) -> Result<Self, String> {
        let mut host = Self::empty();
        host.run_atomic(|_| {
            let mut reader = SnapshotReader::new();
            for chunk in chunks {
                reader.push(&mut Kv::new(), chunk)?;
            }
            reader.finish().map_err(String::from).map(|()| Vec::<u8>::new())
        })?;
        Ok(host)
    }

    /// Runs `f` with the machine over a write overlay; commits the overlay only on `Ok`.
    fn run_atomic<R>(&mut self, f: impl FnOnce(&mut T) -> Result<R, String>) -> Result<R, String> {
        let kv = std::mem::take(&mut self.kv);
        let machine = self.machine.get_or_insert_with(T::default);
        let (result, mut state) = native::run(kv, false, || catch_unwind(AssertUnwindSafe(|| f(machine))));
        if matches!(result, Ok(Ok(_))) {
            state.commit();
        }
        self.kv = state.committed;
        self.settle(result)
    }

    fn settle<R>(&mut self, result: std::thread::Result<Result<R, String>>) -> Result<R, String> {
        settle(&mut self.machine, result)
    }
}

/// A committed kv state a [`NativeHost`] reads: the node's own storage, when it runs a plugin's
/// logic natively.
pub trait NativeKv {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Pairs with `start <= key < end` (`None`: unbounded), ascending, at most `limit`.
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)>;
}

/// One entry's writes, last write per key: `Some` sets, `None` deletes.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Runs a plugin's logic natively over an external kv, with the runtime's semantics (an entry is
/// atomic, a panic is the entry's error and drops the machine, queries are read-only). The node
/// uses it for its built-in `kv-native` plugin, the baseline `wasmraft bench --compare-native`
/// measures WASM against.
pub struct NativeHost<T: StateMachine> {
    machine: Option<T>,
}

impl<T: StateMachine> Default for NativeHost<T> {
    fn default() -> Self {
        Self { machine: None }
    }
}

impl<T: StateMachine> NativeHost<T> {
    /// Applies one entry over `kv`: its result, and its writes (empty if it failed) for the
    /// caller to commit.
    pub fn apply(
        &mut self,
        kv: Box<dyn NativeKv>,
        ctx: &EntryContext,
        payload: &[u8],
    ) -> (Result<Vec<u8>, String>, Writes) {
        let machine = self.machine.get_or_insert_with(T::default);
        let (result, mut state) = native::run_external(kv, false, || {
            catch_unwind(AssertUnwindSafe(|| apply_payload(machine, ctx, payload)))
        });
        let writes = match &result {
            Ok(Ok(_)) => std::mem::take(&mut state.overlay),
            _ => Writes::new(),
        };
        (self.settle(result), writes)
    }

    /// Answers a query over `kv`.
    pub fn query(&mut self, kv: Box<dyn NativeKv>, request: &[u8]) -> Result<Vec<u8>, String> {
        let machine = self.machine.get_or_insert_with(T::default);
        let (result, _) = native::run_external(kv, true, || {
            catch_unwind(AssertUnwindSafe(|| query_payload(machine, request)))
        });
        self.settle(result)
    }

    fn settle<R>(&mut self, result: std::thread::Result<Result<R, String>>) -> Result<R, String> {
        settle(&mut self.machine, result)
    }
}

/// A call's result; a panic becomes `panicked: MESSAGE` and drops the machine, as a trap drops a
/// wasm instance.
fn settle<T, R>(machine: &mut Option<T>, result: std::thread::Result<Result<R, String>>) -> Result<R, String> {
    result.unwrap_or_else(|payload| {
        *machine = None;
        let text = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
        Err(format!("panicked: {}", text.unwrap_or(PANIC_WITHOUT_MESSAGE)))
    })
}

fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Snapshots `host`, restores the stream into a fresh host and compares both kv spaces.
pub fn check_snapshot_round_trip<T: StateMachine>(host: &TestHost<T>) -> Result<(), String> {
    let restored = TestHost::<T>::restore(&host.snapshot(CHECK_CHUNK_BYTES))?;
    if restored.kv() == host.kv() {
        Ok(())
    } else {
        Err(format!(
            "snapshot round trip changed the state: {} keys before, {} after restore",
            host.kv().len(),
            restored.kv().len()
        ))
    }
}

/// Applies `payloads` three ways: all on one machine, on a fresh machine every 7 entries, and on a
/// fresh machine for each entry (as replicas that batch differently or restart would), and checks
/// that results and kv spaces are identical.
pub fn check_batch_independence<T: StateMachine>(payloads: &[Vec<u8>]) -> Result<(), String> {
    let run = |reload_every: usize| {
        let mut host = TestHost::<T>::new();
        let results: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, payload)| {
                if i % reload_every == 0 {
                    host.reload();
                }
                host.apply(payload)
            })
            .collect();
        (results, host.kv)
    };
    let (reference, reference_kv) = run(usize::MAX);
    for reload_every in [7, 1] {
        let (results, kv) = run(reload_every);
        if let Some(i) = (0..payloads.len()).find(|&i| results[i] != reference[i]) {
            return Err(format!(
                "entry {} gave {:?} in one batch but {:?} in batches of {reload_every}",
                i + 1,
                reference[i],
                results[i]
            ));
        }
        if kv != reference_kv {
            return Err(format!(
                "kv state differs between one batch and batches of {reload_every}"
            ));
        }
    }
    Ok(())
}

/// The in-memory kv the native [`crate::sys`] calls reach while a [`TestHost`] runs the machine.
pub(crate) mod native {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// Committed pairs plus the writes of the call in progress.
    pub(crate) struct State {
        pub(crate) committed: BTreeMap<Vec<u8>, Vec<u8>>,
        /// When set, the committed state lives here instead of in `committed`.
        external: Option<Box<dyn super::NativeKv>>,
        pub(crate) overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        read_only: bool,
    }

    thread_local! {
        static CURRENT: RefCell<Option<State>> = const { RefCell::new(None) };
    }

    /// Installs `committed` for the duration of `f` and hands it back with `f`'s overlay.
    pub(crate) fn run<R>(committed: BTreeMap<Vec<u8>, Vec<u8>>, read_only: bool, f: impl FnOnce() -> R) -> (R, State) {
        run_state(
            State {
                committed,
                external: None,
                overlay: BTreeMap::new(),
                read_only,
            },
            f,
        )
    }

    /// Like [`run`], over an external committed state.
    pub(crate) fn run_external<R>(
        external: Box<dyn super::NativeKv>,
        read_only: bool,
        f: impl FnOnce() -> R,
    ) -> (R, State) {
        run_state(
            State {
                committed: BTreeMap::new(),
                external: Some(external),
                overlay: BTreeMap::new(),
                read_only,
            },
            f,
        )
    }

    fn run_state<R>(state: State, f: impl FnOnce() -> R) -> (R, State) {
        let previous = CURRENT.with(|cell| cell.borrow_mut().replace(state));
        let result = f();
        let state = CURRENT.with(|cell| std::mem::replace(&mut *cell.borrow_mut(), previous));
        (result, state.expect("native kv state vanished during a call"))
    }

    pub(crate) fn with_kv<R>(f: impl FnOnce(&mut State) -> R) -> R {
        CURRENT.with(|cell| {
            let mut state = cell.borrow_mut();
            let state = state
                .as_mut()
                .expect("wasmraft_guest::Kv used outside a plugin call: drive the plugin through testing::TestHost");
            f(state)
        })
    }

    impl State {
        pub(crate) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            match (self.overlay.get(key), &self.external) {
                (Some(value), _) => value.clone(),
                (None, Some(external)) => external.get(key),
                (None, None) => self.committed.get(key).cloned(),
            }
        }

        pub(crate) fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
            use std::ops::Bound::{Excluded, Included, Unbounded};
            if end.is_some_and(|end| end <= start) {
                return Vec::new();
            }
            let range = (Included(start), end.map_or(Unbounded, Excluded));
            if let Some(external) = &self.external {
                // Each overlay entry hides or adds at most one stored pair.
                let extra = self.overlay.range::<[u8], _>(range).count();
                let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = external
                    .scan(start, end, limit.saturating_add(extra))
                    .into_iter()
                    .collect();
                for (key, value) in self.overlay.range::<[u8], _>(range) {
                    match value {
                        Some(value) => merged.insert(key.clone(), value.clone()),
                        None => merged.remove(key),
                    };
                }
                return merged.into_iter().take(limit).collect();
            }
            let mut merged: BTreeMap<&[u8], Option<&Vec<u8>>> = self
                .committed
                .range::<[u8], _>(range)
                .map(|(k, v)| (k.as_slice(), Some(v)))
                .collect();
            for (key, value) in self.overlay.range::<[u8], _>(range) {
                merged.insert(key, value.as_ref());
            }
            merged
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_vec(), v?.clone())))
                .take(limit)
                .collect()
        }

        pub(crate) fn write(&mut self, key: &[u8], value: Option<&[u8]>) {
            assert!(!self.read_only, "kv write during a read-only call");
            self.overlay.insert(key.to_vec(), value.map(<[u8]>::to_vec));
        }

        pub(crate) fn commit(&mut self) {
            for (key, value) in std::mem::take(&mut self.overlay) {
                match value {
                    Some(value) => self.committed.insert(key, value),
                    None => self.committed.remove(&key),
                };
            }
        }
    }
}
