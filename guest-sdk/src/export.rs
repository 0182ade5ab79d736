use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Kv};

/// What a plugin knows about the entry it applies. The same on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryContext {
    /// Raft log index of the entry.
    pub index: u64,
    /// Raft term of the entry.
    pub term: u64,
    /// Leader-assigned proposal time, milliseconds since the Unix epoch: use it instead of a clock.
    pub timestamp_ms: u64,
}

/// What a plugin learns when its version is activated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InitContext {
    /// sha256 (hex) of the version this one replaces, if any: migrate its data here.
    pub previous_version: Option<String>,
    /// Deployment configuration bytes (empty when none).
    pub config: Vec<u8>,
}

/// A replicated state machine.
///
/// # Contract
/// - `apply` must be a pure function of the command, the [`EntryContext`] and the kv space: the
///   same on every replica, whatever was applied before in this instance. `self` may only hold
///   caches that can be rebuilt from kv: the host re-creates it with `Default` after a trap, a
///   restart, an upgrade or a restore.
/// - Returning `Err` (or panicking) fails the entry: its kv writes are rolled back and the message
///   is the replicated result.
/// - `query` gets a read-only view and must not change anything observable.
pub trait StateMachine: Default + 'static {
    /// A command, decoded from the entry's payload as JSON.
    type Command: DeserializeOwned;
    /// The result of a command, encoded as JSON.
    type Response: Serialize;
    /// A read request, decoded from JSON.
    type Query: DeserializeOwned;
    /// The answer to a read request, encoded as JSON.
    type QueryResponse: Serialize;

    /// Runs once when this version is activated. The default does nothing.
    fn init(&mut self, ctx: &InitContext, kv: &mut Kv) -> Result<(), Error> {
        let _ = (ctx, kv);
        Ok(())
    }

    /// Applies one committed command.
    fn apply(&mut self, ctx: &EntryContext, kv: &mut Kv, command: Self::Command) -> Result<Self::Response, Error>;

    /// Answers a read request from the current state.
    fn query(&self, kv: &Kv, request: Self::Query) -> Result<Self::QueryResponse, Error>;
}

/// Decodes, applies and encodes one entry: the same code natively and in wasm.
pub(crate) fn apply_payload<T: StateMachine>(
    machine: &mut T,
    ctx: &EntryContext,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let command: T::Command = serde_json::from_slice(payload).map_err(|err| format!("malformed command: {err}"))?;
    let response = machine.apply(ctx, &mut Kv::new(), command)?;
    serde_json::to_vec(&response).map_err(|err| format!("encoding the response: {err}"))
}

/// Decodes, answers and encodes one query.
pub(crate) fn query_payload<T: StateMachine>(machine: &T, request: &[u8]) -> Result<Vec<u8>, String> {
    let request: T::Query = serde_json::from_slice(request).map_err(|err| format!("malformed query: {err}"))?;
    let response = machine.query(&Kv::new(), request)?;
    serde_json::to_vec(&response).map_err(|err| format!("encoding the response: {err}"))
}

/// What a panic whose payload is not a string reports (the host reports `panicked: MESSAGE`).
pub(crate) const PANIC_WITHOUT_MESSAGE: &str = "Box<dyn Any>";

/// The functions behind the [`crate::export!`] macro. One plugin instance runs one machine.
pub mod guest {
    use std::any::Any;
    use std::cell::RefCell;

    use super::*;
    use crate::snapshot::{SnapshotReader, SnapshotWriter};

    thread_local! {
        static MACHINE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
        static WRITER: RefCell<Option<SnapshotWriter>> = const { RefCell::new(None) };
        static READER: RefCell<Option<SnapshotReader>> = const { RefCell::new(None) };
    }

    fn with_machine<T: StateMachine, R>(f: impl FnOnce(&mut T) -> R) -> R {
        install_panic_hook();
        // Take the machine out while it runs, so a re-entrant call cannot double-borrow it.
        let mut machine = MACHINE
            .with(|cell| cell.borrow_mut().take())
            .and_then(|boxed| boxed.downcast::<T>().ok())
            .unwrap_or_default();
        let result = f(&mut machine);
        MACHINE.with(|cell| *cell.borrow_mut() = Some(machine));
        result
    }

    fn install_panic_hook() {
        #[cfg(target_arch = "wasm32")]
        {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                std::panic::set_hook(Box::new(|info| {
                    if let Some(location) = info.location() {
                        crate::sys::log_error(&format!("plugin panicked at {location}"));
                    }
                    crate::sys::panic_message(info.payload_as_str().unwrap_or(PANIC_WITHOUT_MESSAGE));
                }));
            });
        }
    }

    pub fn init<T: StateMachine>(previous_version: Option<String>, config: Vec<u8>) -> Result<(), String> {
        let ctx = InitContext {
            previous_version,
            config,
        };
        with_machine(|machine: &mut T| machine.init(&ctx, &mut Kv::new())).map_err(String::from)
    }

    #[cfg(target_arch = "wasm32")]
    pub fn apply<T: StateMachine>() {
        with_machine(|machine: &mut T| {
            while let Some(entry) = crate::sys::next_entry() {
                let ctx = EntryContext {
                    index: entry.index,
                    term: entry.term,
                    timestamp_ms: entry.timestamp_ms,
                };
                let result = apply_payload(machine, &ctx, &entry.payload);
                crate::sys::finish_entry(&result);
            }
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn apply<T: StateMachine>() {
        unreachable!("apply() is driven by the wasm host; natively use wasmraft_guest::testing")
    }

    pub fn query<T: StateMachine>(request: &[u8]) -> Result<Vec<u8>, String> {
        with_machine(|machine: &mut T| query_payload(machine, request))
    }

    pub fn snapshot_begin() {
        WRITER.with(|cell| *cell.borrow_mut() = Some(SnapshotWriter::new()));
    }

    pub fn snapshot_next(max_bytes: u32) -> Option<Vec<u8>> {
        WRITER.with(|cell| {
            let mut writer = cell.borrow_mut();
            let chunk = writer.as_mut()?.next_chunk(&Kv::new(), max_bytes as usize);
            if chunk.is_none() {
                *writer = None;
            }
            chunk
        })
    }

    pub fn restore_begin() {
        READER.with(|cell| *cell.borrow_mut() = Some(SnapshotReader::new()));
    }

    pub fn restore_chunk(chunk: &[u8]) -> Result<(), String> {
        READER.with(|cell| match cell.borrow_mut().as_mut() {
            Some(reader) => reader.push(&mut Kv::new(), chunk).map_err(String::from),
            None => Err("restore-chunk called before restore-begin".to_string()),
        })
    }

    pub fn restore_finish<T: StateMachine>() -> Result<(), String> {
        let reader = READER.with(|cell| cell.borrow_mut().take());
        // Caches describe the old state: the next call starts from a fresh machine.
        MACHINE.with(|cell| *cell.borrow_mut() = None);
        match reader {
            Some(reader) => reader.finish().map_err(String::from),
            None => Err("restore-finish called before restore-begin".to_string()),
        }
    }
}
