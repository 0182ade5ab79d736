//! `wasmraft:plugin/entries`: hands out the entries of an `apply` call one at a time and meters
//! each one (and none after the caller's deadline: `Plugin::apply_until`). Defined by hand (not
//! through the generated trait) because it needs the store: every `next` resets the fuel to the
//! per-entry budget, which is what makes fuel, failures and results independent of how entries
//! are batched.

use std::time::Instant;

use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

use crate::bindings::Entry as WitEntry;
use crate::entry::EntryOutcome;
use crate::error::{HostAbort, PluginError};
use crate::host::{HostState, Mode};
use crate::limits::LimitExceeded;

const INTERFACE: &str = "wasmraft:plugin/entries@0.1.0";

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut instance = linker.instance(INTERFACE)?;
    instance.func_wrap("next", |store: StoreContextMut<'_, HostState>, (): ()| {
        next(store).map(|e| (e,))
    })?;
    instance.func_wrap(
        "finish",
        |store: StoreContextMut<'_, HostState>, (outcome,): (Result<Vec<u8>, String>,)| finish(store, outcome),
    )?;
    Ok(())
}

fn in_apply(state: &HostState, call: &str) -> Result<(), HostAbort> {
    if state.mode == Mode::Apply {
        Ok(())
    } else {
        Err(HostAbort::Protocol(format!("entries.{call} called outside apply")))
    }
}

fn next(mut store: StoreContextMut<'_, HostState>) -> wasmtime::Result<Option<WitEntry>> {
    let fuel_left = store.get_fuel()?;
    let state = store.data_mut();
    in_apply(state, "next")?;
    if let Some(index) = state.apply.current.take() {
        let error = PluginError::Protocol(format!("entries.next called before entry {index} was finished"));
        record(state, index, fuel_left, Err(error))?;
    }
    if !state.apply.queue.is_empty() && state.apply.until.is_some_and(|until| Instant::now() >= until) {
        // The caller's time is up: the call ends here, as at the end of the queue, and the
        // entries left apply in a later call (outcomes do not depend on where calls are cut).
        state.apply.cut = true;
        return Ok(None);
    }
    let Some(entry) = state.apply.queue.pop_front() else {
        return Ok(None);
    };
    state.begin_unit();
    state.apply.current = Some(entry.index);
    state.wasi.enter(entry.index, entry.timestamp_ms);
    let budget = state.limits.fuel_per_entry;
    state.fuel_budget = budget;
    store.set_fuel(budget)?;
    Ok(Some(WitEntry {
        index: entry.index,
        term: entry.term,
        timestamp_ms: entry.timestamp_ms,
        payload: entry.payload,
    }))
}

fn finish(mut store: StoreContextMut<'_, HostState>, outcome: Result<Vec<u8>, String>) -> wasmtime::Result<()> {
    let fuel_left = store.get_fuel()?;
    let state = store.data_mut();
    in_apply(state, "finish")?;
    let Some(index) = state.apply.current.take() else {
        return Err(
            HostAbort::Protocol("entries.finish called without an entry (call entries.next first)".into()).into(),
        );
    };
    let result = check_output(state.limits.max_output_bytes, outcome);
    record(state, index, fuel_left, result)?;
    // Work between entries gets a fresh budget, so it never depends on the previous entry's usage.
    let budget = store.data().limits.fuel_per_entry;
    store.set_fuel(budget)?;
    Ok(())
}

/// An `ok` or `err` over the output limit becomes the limit error.
pub(crate) fn check_output(limit: usize, outcome: Result<Vec<u8>, String>) -> Result<Vec<u8>, PluginError> {
    let size = match &outcome {
        Ok(bytes) => bytes.len(),
        Err(message) => message.len(),
    };
    if size > limit {
        return Err(PluginError::Limit(LimitExceeded::Output { size, limit }));
    }
    outcome.map_err(PluginError::Returned)
}

/// Closes the current entry: commits its writes if it succeeded, discards them otherwise.
pub(crate) fn record(
    state: &mut HostState,
    index: u64,
    fuel_left: u64,
    result: Result<Vec<u8>, PluginError>,
) -> Result<(), HostAbort> {
    let fuel_used = state.fuel_budget.saturating_sub(fuel_left);
    state.max_entry_fuel = state.max_entry_fuel.max(fuel_used);
    match &result {
        Ok(_) => state.commit_overlay()?,
        Err(_) => state.discard_overlay(),
    }
    state.apply.outcomes.push(EntryOutcome {
        index,
        result,
        fuel_used,
    });
    Ok(())
}
