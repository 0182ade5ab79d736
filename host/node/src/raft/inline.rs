//! Where a batch of plugin calls applies (`state_machine`): right on the async worker, or off it
//! (`block_in_place`). Handing the worker's queue to another thread costs more than a short
//! batch (a thread wake, and the worker's role hopping between threads), but a batch that runs
//! long on the worker stalls every task queued behind it. So a batch runs on the worker while
//! its expected time (its entries times the recent time per entry) fits [`BUDGET`], and such
//! batches keep to what was expected. Times are the applying thread's CPU time: on a busy
//! machine a worker is preempted now and then, which says nothing about the work. Time decides
//! only where calls run, never what they do.

use std::time::{Duration, Instant};

/// A batch runs on the worker when its entries times the time per entry fit this...
const BUDGET: Duration = Duration::from_millis(1);
/// ...and it has at most this many entries (the estimate is an average; the first batches have none).
const MAX_ENTRIES: usize = 64;
/// One that then takes longer than this is slow (entries left at this point run off the worker)...
const SLOW: Duration = Duration::from_millis(2);
/// ...but this many slow ones are tolerated (a plugin's cold first call, a busy machine that
/// preempts the worker now and then), each forgiven after [`FORGIVEN_AFTER`] batches on time...
const SLOW_TOLERATED: u32 = 3;
const FORGIVEN_AFTER: u32 = 100;
/// ...after which batches leave the worker for this long, then try again...
const PAUSE: Duration = Duration::from_secs(60);
/// ...unless one took this long (a plugin burning its fuel): then for good.
const CEILING: Duration = Duration::from_millis(10);
/// The time per entry is a moving average: each batch weighs 1/WEIGHT.
const WEIGHT: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Batches may run on the worker; `slow` of them were slow and not yet forgiven, and
    /// `on_time` ran on time since the last forgiveness.
    On { slow: u32, on_time: u32 },
    /// Batches run off the worker until then.
    Paused { until: Instant },
    /// Batches run off the worker from now on.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Inline {
    mode: Mode,
    /// Recent CPU time per entry of the batches of plugin calls, wherever they ran.
    per_entry: Duration,
}

impl Inline {
    pub(super) fn new() -> Self {
        Inline {
            mode: Mode::On { slow: 0, on_time: 0 },
            per_entry: Duration::ZERO,
        }
    }

    /// Whether a batch of `entries` plugin calls may run on the worker at `now`: if so, until
    /// when (no entry starts on the worker after then: those left run off it).
    pub(super) fn until(&mut self, entries: usize, now: Instant) -> Option<Instant> {
        match self.mode {
            Mode::On { .. } => {}
            Mode::Paused { until } if now >= until => self.mode = Mode::On { slow: 0, on_time: 0 },
            Mode::Paused { .. } | Mode::Off => return None,
        }
        (entries <= MAX_ENTRIES && self.per_entry * entries as u32 <= BUDGET).then_some(now + SLOW)
    }

    /// Records that a batch of `entries` took `took`, on the worker or off it: the time per entry.
    pub(super) fn observe(&mut self, took: Duration, entries: usize) {
        let Some(entries) = u32::try_from(entries).ok().filter(|&n| n > 0) else {
            return;
        };
        self.per_entry = (self.per_entry * (WEIGHT - 1) + took / entries) / WEIGHT;
    }

    /// Records that a batch of `entries` started on the worker held it for `took` and took
    /// `total` in all (entries left at its deadline ran off the worker), at `now`; says so when
    /// batches leave it.
    pub(super) fn took_on_worker(
        &mut self,
        took: Duration,
        total: Duration,
        entries: usize,
        now: Instant,
    ) -> Option<&'static str> {
        self.observe(total, entries);
        let Mode::On { slow, on_time } = self.mode else {
            return None;
        };
        if took > CEILING {
            self.mode = Mode::Off;
            return Some("for good");
        }
        if took <= SLOW {
            self.mode = match on_time + 1 {
                FORGIVEN_AFTER => Mode::On {
                    slow: slow.saturating_sub(1),
                    on_time: 0,
                },
                on_time => Mode::On { slow, on_time },
            };
            return None;
        }
        if slow < SLOW_TOLERATED {
            self.mode = Mode::On {
                slow: slow + 1,
                on_time,
            };
            return None;
        }
        self.mode = Mode::Paused { until: now + PAUSE };
        Some("for a minute")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_batches_on_the_worker_are_tolerated_thrice_then_paused_and_one_very_slow_batch_ends_it() {
        let t0 = Instant::now();
        let mut inline = Inline::new();
        assert!(inline.until(1, t0).is_some());
        for _ in 0..100 {
            assert_eq!(
                inline.took_on_worker(Duration::from_micros(300), Duration::from_micros(300), 1, t0),
                None
            );
        }
        for _ in 0..SLOW_TOLERATED {
            assert_eq!(
                inline.took_on_worker(Duration::from_millis(3), Duration::from_millis(3), 8, t0),
                None
            );
        }
        assert_eq!(
            inline.took_on_worker(Duration::from_millis(3), Duration::from_millis(3), 8, t0),
            Some("for a minute")
        );
        assert!(inline.until(1, t0 + PAUSE / 2).is_none());
        assert!(inline.until(1, t0 + PAUSE).is_some(), "tried again after the pause");
        assert_eq!(inline.mode, Mode::On { slow: 0, on_time: 0 });

        assert_eq!(
            inline.took_on_worker(Duration::from_millis(11), Duration::from_millis(11), 1, t0),
            Some("for good")
        );
        assert!(inline.until(1, t0 + PAUSE * 100).is_none());
    }

    #[test]
    fn a_slow_batch_is_forgiven_after_a_hundred_on_time() {
        let t0 = Instant::now();
        let mut inline = Inline::new();
        for _ in 0..SLOW_TOLERATED {
            assert_eq!(
                inline.took_on_worker(Duration::from_millis(3), Duration::from_millis(3), 8, t0),
                None
            );
        }
        for _ in 0..FORGIVEN_AFTER {
            assert_eq!(
                inline.took_on_worker(Duration::from_micros(300), Duration::from_micros(300), 8, t0),
                None
            );
        }
        assert_eq!(
            inline.took_on_worker(Duration::from_millis(3), Duration::from_millis(3), 8, t0),
            None,
            "one was forgiven"
        );
        assert_eq!(
            inline.took_on_worker(Duration::from_millis(3), Duration::from_millis(3), 8, t0),
            Some("for a minute")
        );
    }

    #[test]
    fn a_batch_runs_on_the_worker_only_while_its_entries_at_the_recent_time_per_entry_fit_the_budget() {
        let t0 = Instant::now();
        let mut inline = Inline::new();
        assert_eq!(
            inline.until(1, t0),
            Some(t0 + SLOW),
            "no entry starts on the worker after then"
        );
        assert!(
            inline.until(MAX_ENTRIES, t0).is_some(),
            "no estimate yet: any batch up to the cap"
        );
        assert!(inline.until(MAX_ENTRIES + 1, t0).is_none());
        for _ in 0..100 {
            inline.observe(Duration::from_micros(1_000), 10);
        }
        assert!(inline.until(10, t0).is_some(), "10 entries at 100 us fit 1 ms");
        assert!(inline.until(11, t0).is_none());
        for _ in 0..100 {
            assert_eq!(
                inline.took_on_worker(Duration::from_micros(600), Duration::from_micros(600), 2, t0),
                None
            );
        }
        assert!(inline.until(3, t0).is_some(), "slower entries now: 300 us each");
        assert!(inline.until(4, t0).is_none());
        inline.observe(Duration::from_millis(5), 0);
        assert!(inline.until(3, t0).is_some(), "an empty batch says nothing");
    }

    #[test]
    fn a_batch_cut_at_its_deadline_is_judged_by_its_time_on_the_worker_and_estimated_by_all_of_it() {
        let t0 = Instant::now();
        let mut inline = Inline::new();
        // Its entries left at the deadline took 50 ms off the worker: it held the worker 1 ms.
        for _ in 0..10 {
            let (on_worker, total) = (Duration::from_millis(1), Duration::from_millis(50));
            assert_eq!(inline.took_on_worker(on_worker, total, 10, t0), None);
        }
        assert_eq!(inline.mode, Mode::On { slow: 0, on_time: 10 });
        assert!(inline.until(1, t0).is_none(), "5 ms per entry now: none fits 1 ms");
    }
}
