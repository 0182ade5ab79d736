//! What crosses the boundary for each committed entry: the entry in, its outcome out.

use crate::error::PluginError;

/// A committed log entry, as the plugin receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    /// Leader-assigned proposal time (ms since the Unix epoch), stored in the log entry.
    pub timestamp_ms: u64,
    pub payload: Vec<u8>,
}

/// The replicated outcome of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOutcome {
    pub index: u64,
    /// `Ok` bytes for the client, or the deterministic failure (the entry's writes rolled back).
    pub result: Result<Vec<u8>, PluginError>,
    /// Fuel the entry used: deterministic, reported for tuning limits. Not part of the result.
    pub fuel_used: u64,
}
