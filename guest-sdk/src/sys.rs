//! The host boundary. On wasm it calls the WIT imports; natively (for `cargo test`) it calls the
//! in-memory host of [`crate::testing`]. Nothing else in the SDK knows which one it runs on.

pub(crate) type Pair = (Vec<u8>, Vec<u8>);

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Pair;
    use crate::__bindings::wasmraft::plugin::{entries, kv, log, types};

    pub(crate) fn get(key: &[u8]) -> Option<Vec<u8>> {
        kv::get(key)
    }
    pub(crate) fn scan(start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<Pair> {
        kv::scan(start, end, limit)
    }
    pub(crate) fn set(key: &[u8], value: &[u8]) {
        kv::set(key, value)
    }
    pub(crate) fn delete(key: &[u8]) {
        kv::delete(key)
    }
    pub(crate) fn write_batch(writes: &[(Vec<u8>, Option<Vec<u8>>)]) {
        kv::write_batch(writes)
    }
    pub(crate) fn next_entry() -> Option<types::Entry> {
        entries::next()
    }
    pub(crate) fn finish_entry(result: &Result<Vec<u8>, String>) {
        entries::finish(result)
    }
    pub(crate) fn log_error(message: &str) {
        log::log(types::Level::Error, message)
    }
    pub(crate) fn panic_message(message: &str) {
        log::panic_message(message)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Pair;
    use crate::testing::native;

    pub(crate) fn get(key: &[u8]) -> Option<Vec<u8>> {
        native::with_kv(|kv| kv.get(key))
    }
    pub(crate) fn scan(start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<Pair> {
        native::with_kv(|kv| kv.scan(start, end, limit as usize))
    }
    pub(crate) fn set(key: &[u8], value: &[u8]) {
        native::with_kv(|kv| kv.write(key, Some(value)))
    }
    pub(crate) fn delete(key: &[u8]) {
        native::with_kv(|kv| kv.write(key, None))
    }
    pub(crate) fn write_batch(writes: &[(Vec<u8>, Option<Vec<u8>>)]) {
        native::with_kv(|kv| {
            for (key, value) in writes {
                kv.write(key, value.as_deref());
            }
        })
    }
}

pub(crate) use imp::*;
