//! The `wasmraft` command-line tool: its library half, shared by the binary and the tests.

/// Paths of the example plugin components built by `build.rs` (`target/plugins/NAME.wasm`).
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

pub mod linearizability;

/// Test and bench data.
pub mod workload {
    /// A small deterministic generator (SplitMix64): the same sequence for a seed on every run.
    pub struct SplitMix(pub u64);

    impl SplitMix {
        #[allow(clippy::should_implement_trait)]
        pub fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// A number below `n`.
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

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
