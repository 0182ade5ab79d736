//! Hostile plugin `hostile-deep-recursion`. An entry that recurses without bound: it must overflow the wasm stack, alone.
//! The commands other than `"attack"` are those of `hostile-common`.

hostile_common::hostile!(
    apply: |ctx, kv| {
        #[allow(unconditional_recursion, reason = "the attack is the unbounded recursion")]
        fn dive(depth: u64) -> u64 {
            std::hint::black_box(dive(std::hint::black_box(depth + 1))) + 1
        }
        Ok(dive(0).to_string())
    }
);
