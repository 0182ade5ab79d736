//! Hostile plugin `hostile-memory-bomb`. An entry that allocates without bound: it must hit the memory limit, alone.
//! The commands other than `"attack"` are those of `hostile-common`.

hostile_common::hostile!(
    apply: |ctx, kv| {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(Vec::with_capacity(1 << 20)));
        }
    }
);
