//! Hostile plugin `hostile-huge-output`. An entry whose result is 1.5 MiB: it must hit the output limit.
//! The commands other than `"attack"` are those of `hostile-common`.

hostile_common::hostile!(
    apply: |ctx, kv| {
        Ok("x".repeat(3 << 19))
    }
);
