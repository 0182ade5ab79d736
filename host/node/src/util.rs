//! Small helpers every layer uses.

use std::io;
use std::sync::{Mutex, MutexGuard};

/// A storage or format failure as the `io::Error` openraft's storage traits speak.
pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Locks `m`, taking the data of a poisoned lock as it is (every critical section here leaves
/// its data consistent at each step).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs synchronous work (plugin calls, RocksDB writes) from async code, telling a
/// multi-threaded runtime to move other tasks off this worker meanwhile.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
