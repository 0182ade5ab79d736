//! The `wasmraft` command-line tool: its library half, shared by the binary and the tests.

/// Paths of the example plugin components built by `build.rs` (`target/plugins/NAME.wasm`).
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// Test and bench data.
pub mod workload {
    /// `len` characters that zstd can squeeze only a little (64 symbols, pseudo-random, about
    /// 0.75 of their size), different for each `seed` and the same on every run.
    pub fn noise(seed: u64, len: usize) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHABET[(x & 63) as usize] as char
            })
            .collect()
    }
}
