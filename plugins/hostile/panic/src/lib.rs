//! Hostile plugin `hostile-panic`. An entry that writes, then panics: its write must roll back, the message must reach the result.
//! The commands other than `"attack"` are those of `hostile-common`.

hostile_common::hostile!(
    apply: |ctx, kv| {
        kv.set(b"half-done", b"oops");
        panic!("hostile plugin refuses entry {}", ctx.index)
    }
);
