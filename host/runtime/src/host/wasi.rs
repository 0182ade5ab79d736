//! A deterministic WASI context for guests that import WASI (Rust `std`, componentize-py, ...).
//!
//! Nothing in it observes the outside world: no environment, no arguments, no preopened
//! directories, no network, stdin empty, stdout and stderr discarded. Both clocks read the
//! leader-assigned timestamp of the entry being applied. Randomness is a SplitMix64 stream
//! reseeded from the entry's index at every entry, so it is the same on every replica however
//! entries are batched. (SplitMix64 is our own ten lines rather than a library RNG so that no
//! dependency upgrade can silently change the stream.) Guests that import nothing get none of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::host::HostState;

/// Seed of the random stream outside entries (init, queries, snapshots).
const IDLE_SEED: u64 = 0x7761_736d_7261_6674; // "wasmraft"

#[derive(Default)]
struct Shared {
    now_ms: AtomicU64,
    rng: Mutex<SplitMix64>,
}

pub(crate) struct DeterministicWasi {
    shared: Arc<Shared>,
    ctx: WasiCtx,
    table: ResourceTable,
}

impl DeterministicWasi {
    pub(crate) fn new() -> Self {
        let shared = Arc::new(Shared {
            now_ms: AtomicU64::new(0),
            rng: Mutex::new(SplitMix64(IDLE_SEED)),
        });
        let ctx = WasiCtxBuilder::new()
            .wall_clock(EntryClock(shared.clone()))
            .monotonic_clock(EntryClock(shared.clone()))
            .secure_random(EntryRng(shared.clone()))
            .insecure_random(EntryRng(shared.clone()))
            .insecure_random_seed(u128::from(IDLE_SEED))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            shared,
            ctx,
            table: ResourceTable::new(),
        }
    }

    /// Points the clocks at the entry's timestamp and reseeds randomness from its index.
    pub(crate) fn enter(&self, index: u64, timestamp_ms: u64) {
        self.shared.now_ms.store(timestamp_ms, Ordering::Relaxed);
        *self.shared.rng.lock().unwrap_or_else(|e| e.into_inner()) = SplitMix64(index ^ IDLE_SEED);
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.ctx,
            table: &mut self.wasi.table,
        }
    }
}

struct EntryClock(Arc<Shared>);

impl HostWallClock for EntryClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.now_ms.load(Ordering::Relaxed))
    }
}

impl HostMonotonicClock for EntryClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.now_ms.load(Ordering::Relaxed).saturating_mul(1_000_000)
    }
}

#[derive(Default)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

struct EntryRng(Arc<Shared>);

impl rand::TryRng for EntryRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.try_next_u64().map(|n| n as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.rng.lock().unwrap_or_else(|e| e.into_inner()).next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        let mut rng = self.0.rng.lock().unwrap_or_else(|e| e.into_inner());
        for chunk in dst.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}
