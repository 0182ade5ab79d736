//! `wasmraft:plugin/log`: plugin log records go to the node's `tracing` output, tagged with the
//! plugin name and the log index of the entry being applied. Never part of replicated state.

use crate::bindings::{Level, log, wasmraft::plugin::types};
use crate::host::HostState;

/// Longest log record or panic message kept: the rest is cut (at a character boundary) so a
/// plugin cannot flood the node's log or a result.
pub const MAX_LOG_MESSAGE_BYTES: usize = 4 << 10;

pub(crate) fn truncate(mut message: String) -> String {
    if message.len() > MAX_LOG_MESSAGE_BYTES {
        let mut cut = MAX_LOG_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let message = truncate(message);
        let plugin = &*self.plugin;
        // The log index of the entry being applied; none in init, queries and snapshots.
        let entry = self.apply.current;
        match level {
            Level::Trace => tracing::trace!(target: "wasmraft::plugin", plugin, entry, "{message}"),
            Level::Debug => tracing::debug!(target: "wasmraft::plugin", plugin, entry, "{message}"),
            Level::Info => tracing::info!(target: "wasmraft::plugin", plugin, entry, "{message}"),
            Level::Warn => tracing::warn!(target: "wasmraft::plugin", plugin, entry, "{message}"),
            Level::Error => tracing::error!(target: "wasmraft::plugin", plugin, entry, "{message}"),
        }
        Ok(())
    }

    fn panic_message(&mut self, message: String) -> wasmtime::Result<()> {
        self.panic_message = Some(truncate(message));
        Ok(())
    }
}
