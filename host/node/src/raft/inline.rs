//! When a lone plugin call may apply right on the async worker (`state_machine`): handing the
//! worker's queue to another thread (`block_in_place`) costs more than such a call, but a call
//! that runs long there stalls every task queued behind it. Wall time decides only where calls
//! run, never what they do.

use std::time::{Duration, Instant};

/// A call on the worker should take at most this long...
const WITHIN: Duration = Duration::from_millis(1);
/// ...but this many slower ones are tolerated (a plugin's cold first call, a busy machine)...
const SLOW_TOLERATED: u32 = 3;
/// ...after which calls leave the worker for this long, then try again...
const PAUSE: Duration = Duration::from_secs(60);
/// ...unless one took this long (a plugin burning its fuel, a RocksDB write stall): then for good.
const CEILING: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inline {
    /// Calls run on the worker; `slow` of them took over [`WITHIN`] so far.
    On { slow: u32 },
    /// Calls run off the worker until then.
    Paused { until: Instant },
    /// Calls run off the worker from now on.
    Off,
}

impl Inline {
    pub(super) fn new() -> Self {
        Inline::On { slow: 0 }
    }

    /// Whether the next lone call may run on the worker at `now`.
    pub(super) fn allows(&mut self, now: Instant) -> bool {
        match *self {
            Inline::On { .. } => true,
            Inline::Paused { until } if now >= until => {
                *self = Inline::new();
                true
            }
            Inline::Paused { .. } | Inline::Off => false,
        }
    }

    /// Records that a call on the worker took `took`, at `now`; says so when calls leave it.
    pub(super) fn took(&mut self, took: Duration, now: Instant) -> Option<&'static str> {
        let Inline::On { slow } = *self else {
            return None;
        };
        if took > CEILING {
            *self = Inline::Off;
            return Some("for good");
        }
        if took <= WITHIN {
            return None;
        }
        if slow < SLOW_TOLERATED {
            *self = Inline::On { slow: slow + 1 };
            return None;
        }
        *self = Inline::Paused { until: now + PAUSE };
        Some("for a minute")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_calls_on_the_worker_are_tolerated_thrice_then_paused_and_one_very_slow_call_ends_it() {
        let t0 = Instant::now();
        let mut inline = Inline::new();
        assert!(inline.allows(t0));
        for _ in 0..100 {
            assert_eq!(inline.took(Duration::from_micros(300), t0), None);
        }
        for _ in 0..SLOW_TOLERATED {
            assert_eq!(inline.took(Duration::from_millis(4), t0), None);
            assert!(inline.allows(t0));
        }
        assert_eq!(inline.took(Duration::from_millis(4), t0), Some("for a minute"));
        assert!(!inline.allows(t0 + PAUSE / 2));
        assert!(inline.allows(t0 + PAUSE), "tried again after the pause");
        assert_eq!(inline, Inline::On { slow: 0 });

        assert_eq!(inline.took(Duration::from_millis(11), t0), Some("for good"));
        assert!(!inline.allows(t0 + PAUSE * 100));
    }
}
