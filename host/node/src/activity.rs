//! What the status page shows over time: a sample of the node's counters each second for the last
//! five minutes (the page turns them into throughput and latency), and the last errors seen.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::util::lock;

/// Samples kept: one a second for five minutes.
pub const SAMPLES: usize = 300;
/// Errors kept.
pub const ERRORS: usize = 20;
/// The longest error message kept (in bytes; longer ones are cut).
const MESSAGE_BYTES: usize = 300;

/// The node's counters at one moment. Rates are differences between two samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    pub unix_ms: u64,
    pub applied_index: u64,
    /// `Call` requests this node answered, and their total latency.
    pub calls: u64,
    pub call_micros: u64,
    /// `Query` requests this node answered, and their total latency.
    pub queries: u64,
    pub query_micros: u64,
}

/// An error worth showing an operator: a plugin's failed entry, a failed snapshot build, a
/// refused snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    pub unix_ms: u64,
    /// What failed, e.g. `plugin kv: trap`, `snapshot build`.
    pub source: String,
    /// The log index of the entry, for a plugin's error.
    pub index: Option<u64>,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Activity {
    calls: AtomicU64,
    call_micros: AtomicU64,
    queries: AtomicU64,
    query_micros: AtomicU64,
    samples: Mutex<VecDeque<Sample>>,
    errors: Mutex<VecDeque<RecentError>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Activity {
    pub fn count_call(&self, took: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.call_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count_query(&self, took: Duration) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.query_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Takes a sample now (the caller's ticker calls this once a second).
    pub fn sample(&self, applied_index: u64) {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let sample = Sample {
            unix_ms: unix_ms(),
            applied_index,
            calls: n(&self.calls),
            call_micros: n(&self.call_micros),
            queries: n(&self.queries),
            query_micros: n(&self.query_micros),
        };
        let mut samples = lock(&self.samples);
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Every sample kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).iter().copied().collect()
    }

    pub fn error(&self, source: String, index: Option<u64>, message: &str) {
        let mut end = message.len().min(MESSAGE_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let error = RecentError {
            unix_ms: unix_ms(),
            source,
            index,
            message: message[..end].to_string(),
        };
        let mut errors = lock(&self.errors);
        if errors.len() == ERRORS {
            errors.pop_front();
        }
        errors.push_back(error);
    }

    /// The errors kept, newest first.
    pub fn errors(&self) -> Vec<RecentError> {
        lock(&self.errors).iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_five_minutes_of_samples_and_the_last_errors_newest_first() {
        let activity = Activity::default();
        for i in 0..SAMPLES as u64 + 10 {
            activity.count_call(Duration::from_micros(100));
            activity.sample(i);
        }
        let samples = activity.samples();
        assert_eq!(samples.len(), SAMPLES);
        assert_eq!(samples[0].applied_index, 10);
        assert_eq!(samples.last().unwrap().calls, SAMPLES as u64 + 10);
        assert_eq!(samples.last().unwrap().call_micros, 100 * (SAMPLES as u64 + 10));

        for i in 0..ERRORS as u64 + 5 {
            activity.error("plugin kv: trap".into(), Some(i), &"é".repeat(1000));
        }
        let errors = activity.errors();
        assert_eq!(errors.len(), ERRORS);
        assert_eq!(errors[0].index, Some(ERRORS as u64 + 4));
        assert!(errors[0].message.len() <= MESSAGE_BYTES);
    }
}
