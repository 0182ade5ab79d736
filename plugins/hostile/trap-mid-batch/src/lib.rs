//! Hostile plugin `hostile-trap-mid-batch`. An entry that writes, then traps without a panic message: its write must roll back.
//! The commands other than `"attack"` are those of `hostile-common`.

hostile_common::hostile!(
    apply: |ctx, kv| {
        kv.set(b"half-done", b"oops");
        #[cfg(target_arch = "wasm32")]
        core::arch::wasm32::unreachable();
        #[cfg(not(target_arch = "wasm32"))]
        unreachable!("trap")
    }
);
