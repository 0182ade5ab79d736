//! Small helpers every layer uses.

use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// A storage or format failure as the `io::Error` openraft's storage traits speak.
pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Locks `m`, taking the data of a poisoned lock as it is (every critical section here leaves
/// its data consistent at each step).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the test-only failpoint `name` is armed: `WASMRAFT_FAILPOINT` names it (read once,
/// when first asked: the hot paths that ask pay one load).
pub(crate) fn failpoint_armed(name: &str) -> bool {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("WASMRAFT_FAILPOINT").ok())
        .as_deref()
        == Some(name)
}

/// The CPU time this thread has used so far: unlike wall time, it leaves out the time the
/// thread waited for a core (zero if the clock cannot be read).
pub(crate) fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write to; the clock id is a constant Linux knows.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec.max(0) as u64, now.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Runs synchronous work (plugin calls, RocksDB writes) from async code, telling a
/// multi-threaded runtime to move other tasks off this worker meanwhile.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
