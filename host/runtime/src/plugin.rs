//! A running plugin: one instance over one kv backend, and the semantics of every export call.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::{Store, Trap};

use crate::backend::{KvBackend, MemoryBackend};
use crate::bindings::{self, StateMachine};
use crate::entry::{Entry, EntryOutcome};
use crate::error::{HostAbort, PluginError, RuntimeError};
use crate::host::entries::{check_output, record};
use crate::host::wasi::DeterministicWasi;
use crate::host::{ApplyState, HostState, Mode};
use crate::limits::{LimitExceeded, snapshot_bound};
use crate::runtime::{PluginCode, store_with};

/// What `init` is told about the activation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InitContext {
    /// sha256 (hex) of the version being replaced, if any.
    pub previous_version: Option<String>,
    pub config: Vec<u8>,
}

/// Resource usage observed so far, for reports and tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PluginStats {
    /// Most fuel one entry used.
    pub max_entry_fuel: u64,
    /// Largest linear memory the instance grew to.
    pub peak_memory_bytes: usize,
    /// Instances created (the first, and one after each trap).
    pub instantiations: u64,
}

/// One plugin instance over its kv backend.
///
/// Every call is isolated: a trap, running out of fuel or exceeding a limit becomes a
/// [`PluginError`] (the call's writes are rolled back) and poisons the instance, which is dropped
/// and re-created from the same code on the next call. State lives in the backend, so nothing is
/// lost. A [`RuntimeError`] is a node fault (storage failure, broken engine) and must stop the
/// caller.
pub struct Plugin {
    code: PluginCode,
    name: Arc<str>,
    store: Store<HostState>,
    instance: Option<StateMachine>,
    instantiations: u64,
    /// Fuel left when the last failed call stopped (its store is gone by then).
    fuel_left_at_failure: u64,
}

impl PluginCode {
    /// A plugin of this code over `backend`, named `name` in logs. The wasm instance itself is
    /// created by the first call (and again after a trap), so this cannot fail.
    pub fn instantiate(&self, name: &str, backend: Box<dyn crate::KvBackend>) -> Plugin {
        Plugin::new(self.clone(), name, backend)
    }
}

impl Plugin {
    pub(crate) fn new(code: PluginCode, name: &str, backend: Box<dyn KvBackend>) -> Self {
        let runtime = &code.inner.runtime;
        let name: Arc<str> = name.into();
        let store = store_with(runtime, HostState::new(backend, runtime.limits_arc(), name.clone()));
        Self {
            code,
            name,
            store,
            instance: None,
            instantiations: 0,
            fuel_left_at_failure: 0,
        }
    }

    /// The code this plugin runs.
    pub fn code(&self) -> &PluginCode {
        &self.code
    }

    /// The plugin's kv backend.
    pub fn backend(&self) -> &dyn KvBackend {
        &*self.store.data().backend
    }

    /// The plugin's kv backend, mutably (e.g. to flush it).
    pub fn backend_mut(&mut self) -> &mut dyn KvBackend {
        &mut *self.store.data_mut().backend
    }

    /// Drops the instance and returns the backend.
    pub fn into_backend(self) -> Box<dyn KvBackend> {
        self.store.into_data().backend
    }

    pub fn stats(&self) -> PluginStats {
        let state = self.store.data();
        PluginStats {
            max_entry_fuel: state.max_entry_fuel,
            peak_memory_bytes: state.peak_memory_bytes,
            instantiations: self.instantiations,
        }
    }

    /// Runs `init` for this version. Its writes commit only if it succeeds.
    pub fn init(&mut self, ctx: &InitContext) -> Result<Result<(), PluginError>, RuntimeError> {
        let ctx = bindings::InitContext {
            previous_version: ctx.previous_version.clone(),
            config: ctx.config.clone(),
        };
        let fuel = self.store.data().limits.fuel_per_call;
        let result = self.call(Mode::Init, fuel, |sm, store| sm.call_init(store, &ctx))?;
        let state = self.store.data_mut();
        match result.and_then(|inner| inner.map_err(PluginError::Returned)) {
            Ok(()) => {
                state.commit_overlay().map_err(host_fault)?;
                Ok(Ok(()))
            }
            Err(failure) => {
                state.discard_overlay();
                Ok(Err(failure))
            }
        }
    }

    /// Applies committed entries, one outcome per entry, in order.
    ///
    /// Each entry is atomic and metered alone, so the outcomes and the resulting kv state do not
    /// depend on how a log is cut into `apply` calls.
    pub fn apply(&mut self, entries: Vec<Entry>) -> Result<Vec<EntryOutcome>, RuntimeError> {
        self.apply_until(entries, None).map(|(outcomes, _)| outcomes)
    }

    /// [`Plugin::apply`], but no entry starts after `until`: returns the outcomes of the entries
    /// applied and the entries left, in order, for a later call. An entry that started runs to
    /// its end (its fuel bounds it), and where the log is cut changes no outcome: wall time
    /// decides only when entries apply, never what they do.
    pub fn apply_until(
        &mut self,
        entries: Vec<Entry>,
        until: Option<Instant>,
    ) -> Result<(Vec<EntryOutcome>, Vec<Entry>), RuntimeError> {
        self.store.data_mut().apply = ApplyState {
            queue: entries.into(),
            until,
            ..ApplyState::default()
        };
        let fuel = self.store.data().limits.fuel_per_entry;
        while !self.store.data().apply.queue.is_empty() {
            let remaining = self.store.data().apply.queue.len();
            let result = self.call(Mode::Apply, fuel, |sm, store| sm.call_apply(store));
            let fuel_left = match result {
                Ok(Err(_)) => self.fuel_left_at_failure,
                _ => self.store.get_fuel().unwrap_or(0),
            };
            let state = self.store.data_mut();
            match result {
                Err(fault) => {
                    state.apply = Default::default();
                    return Err(fault);
                }
                // Cut short: whatever the guest did after `next` said there was no entry, it
                // would have done at the end of any call.
                Ok(_) if state.apply.cut && state.apply.current.is_none() => break,
                Ok(Ok(())) => {
                    if let Some(index) = state.apply.current.take() {
                        let error = PluginError::Protocol(format!("apply returned before finishing entry {index}"));
                        record(state, index, fuel_left, Err(error)).map_err(host_fault)?;
                    } else if state.apply.queue.len() == remaining
                        && let Some(entry) = state.apply.queue.pop_front()
                    {
                        // Every call must make progress: one that takes nothing fails the next entry.
                        let error =
                            PluginError::Protocol(format!("apply returned without taking entry {}", entry.index));
                        record(state, entry.index, fuel_left, Err(error)).map_err(host_fault)?;
                    }
                }
                Ok(Err(failure)) => {
                    // The entry in flight, or (a trap between entries) the next one, takes the blame.
                    let blamed = state
                        .apply
                        .current
                        .take()
                        .or_else(|| state.apply.queue.pop_front().map(|e| e.index));
                    if let Some(index) = blamed {
                        record(state, index, fuel_left, Err(failure)).map_err(host_fault)?;
                    }
                }
            }
        }
        let apply = std::mem::take(&mut self.store.data_mut().apply);
        Ok((apply.outcomes, apply.queue.into()))
    }

    /// Answers a read-only query. A write attempt fails the query with [`PluginError::ReadOnly`].
    pub fn query(&mut self, request: &[u8]) -> Result<Result<Vec<u8>, PluginError>, RuntimeError> {
        self.query_with_fuel(request, u64::MAX)
    }

    /// [`Plugin::query`] with at most `fuel` (and never more than the configured `fuel_per_call`):
    /// a caller may try a query on a small budget first. Queries never write, so running one
    /// again with more fuel is safe.
    pub fn query_with_fuel(&mut self, request: &[u8], fuel: u64) -> Result<Result<Vec<u8>, PluginError>, RuntimeError> {
        let limits = self.store.data().limits.clone();
        let result = self.call(Mode::Query, fuel.min(limits.fuel_per_call), |sm, store| {
            sm.call_query(store, request)
        })?;
        Ok(result.and_then(|inner| check_output(limits.max_output_bytes, inner)))
    }

    /// Streams the plugin's snapshot to `sink`, in chunks of at most `max_chunk` bytes.
    pub fn snapshot(
        &mut self,
        max_chunk: u32,
        mut sink: impl FnMut(Vec<u8>) -> Result<(), RuntimeError>,
    ) -> Result<Result<(), PluginError>, RuntimeError> {
        let fuel = self.store.data().limits.fuel_per_call;
        if let Err(failure) = self.call(Mode::Snapshot, fuel, |sm, store| sm.call_snapshot_begin(store))? {
            return Ok(Err(failure));
        }
        let limit = snapshot_bound(
            self.store.data().limits.max_snapshot_bytes,
            self.store.data().backend.state_bytes(),
        );
        let mut total: u64 = 0;
        loop {
            let chunk = match self.call(Mode::Snapshot, fuel, |sm, store| {
                sm.call_snapshot_next(store, max_chunk)
            })? {
                Err(failure) => return Ok(Err(failure)),
                Ok(None) => return Ok(Ok(())),
                Ok(Some(chunk)) => chunk,
            };
            // Every chunk must make progress, and the stream must end: a plugin cannot keep the
            // host in this loop forever.
            let failure = if chunk.is_empty() {
                Some(PluginError::Protocol(
                    "snapshot-next returned an empty chunk (return none to end the stream)".into(),
                ))
            } else if chunk.len() > max_chunk as usize {
                let limit = max_chunk as usize;
                Some(PluginError::Limit(LimitExceeded::Chunk {
                    size: chunk.len(),
                    limit,
                }))
            } else {
                total += chunk.len() as u64;
                (total > limit).then_some(PluginError::Limit(LimitExceeded::Snapshot { limit }))
            };
            if let Some(failure) = failure {
                return Ok(Err(failure));
            }
            sink(chunk)?;
        }
    }

    /// Restores a snapshot stream into this plugin's backend, which must be empty.
    pub fn restore(
        &mut self,
        chunks: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<Result<(), PluginError>, RuntimeError> {
        let fuel = self.store.data().limits.fuel_per_call;
        if let Err(failure) = self.call(Mode::Restore, fuel, |sm, store| sm.call_restore_begin(store))? {
            return Ok(Err(failure));
        }
        for chunk in chunks {
            let result = self.call(Mode::Restore, fuel, |sm, store| sm.call_restore_chunk(store, &chunk))?;
            if let Err(failure) = result.and_then(|inner| inner.map_err(PluginError::Returned)) {
                return Ok(Err(failure));
            }
        }
        let result = self.call(Mode::Restore, fuel, |sm, store| sm.call_restore_finish(store))?;
        Ok(result.and_then(|inner| inner.map_err(PluginError::Returned)))
    }

    /// Calls one export in `mode` with `fuel`, instantiating first if needed. A failure is
    /// classified, and poisons the instance.
    fn call<R>(
        &mut self,
        mode: Mode,
        fuel: u64,
        export: impl FnOnce(&StateMachine, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<Result<R, PluginError>, RuntimeError> {
        let instance = match self.instance.take() {
            Some(instance) => instance,
            None => {
                self.instantiations += 1;
                self.store
                    .set_fuel(self.store.data().limits.fuel_per_call)
                    .map_err(engine_fault)?;
                self.code
                    .inner
                    .pre
                    .instantiate(&mut self.store)
                    .map_err(|e| RuntimeError::Instantiate(format!("{e:#}")))?
            }
        };
        let state = self.store.data_mut();
        state.mode = mode;
        state.begin_unit();
        state.fuel_budget = fuel;
        self.store.set_fuel(fuel).map_err(engine_fault)?;
        let result = export(&instance, &mut self.store);
        self.store.data_mut().mode = Mode::Idle;
        match result {
            Ok(value) => {
                self.instance = Some(instance);
                Ok(Ok(value))
            }
            Err(err) => {
                let failure = self.classify(err);
                self.fuel_left_at_failure = self.store.get_fuel().unwrap_or(0);
                self.poison();
                failure.map(Err)
            }
        }
    }

    /// Turns a failed call into its deterministic [`PluginError`], or a node fault.
    fn classify(&mut self, err: wasmtime::Error) -> Result<PluginError, RuntimeError> {
        let state = self.store.data_mut();
        if let Some(abort) = err.downcast_ref::<HostAbort>() {
            return match abort.clone() {
                HostAbort::Backend(err) => Err(RuntimeError::Backend(err)),
                HostAbort::Limit(limit) => Ok(PluginError::Limit(limit)),
                HostAbort::ReadOnly(what) => Ok(PluginError::ReadOnly(what)),
                HostAbort::Protocol(message) => Ok(PluginError::Protocol(message)),
            };
        }
        if let Some(limit) = state.limit_hit.take() {
            return Ok(PluginError::Limit(limit));
        }
        if let Some(message) = state.panic_message.take() {
            return Ok(PluginError::Panicked(message));
        }
        Ok(match err.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => PluginError::FuelExhausted {
                limit: state.fuel_budget,
            },
            Some(Trap::StackOverflow) => PluginError::Limit(LimitExceeded::Stack {
                limit: state.limits.max_wasm_stack,
            }),
            Some(trap) => {
                let text = trap.to_string();
                PluginError::Trapped(text.strip_prefix("wasm trap: ").unwrap_or(&text).to_string())
            }
            // Errors raised by the canonical ABI (bad UTF-8, out-of-bounds list) are the guest's
            // fault and as deterministic as traps.
            None => PluginError::Trapped(format!("{:#}", err.root_cause())),
        })
    }

    /// Drops the instance and its store (a trapped instance may be in any state); the backend and
    /// counters move to a fresh store, and the next call instantiates again.
    fn poison(&mut self) {
        self.instance = None;
        let runtime = &self.code.inner.runtime;
        let placeholder = HostState::new(Box::new(MemoryBackend::new()), runtime.limits_arc(), self.name.clone());
        let old = std::mem::replace(&mut self.store, store_with(runtime, placeholder));
        let mut state = old.into_data();
        state.wasi = DeterministicWasi::new();
        state.discard_overlay();
        self.store = store_with(runtime, state);
    }
}

fn host_fault(abort: HostAbort) -> RuntimeError {
    match abort {
        HostAbort::Backend(err) => RuntimeError::Backend(err),
        other => RuntimeError::Engine(other.to_string()),
    }
}

fn engine_fault(err: wasmtime::Error) -> RuntimeError {
    RuntimeError::Engine(format!("{err:#}"))
}
