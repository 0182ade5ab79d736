//! Hostile plugin `hostile-loop`. An entry that never finishes: it must run out of fuel, alone.
//! The commands other than `"attack"` are those of `hostile-common`.

hostile_common::hostile!(
    apply: |ctx, kv| {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
);
