//! Hostile plugin `hostile-huge-writes`. An entry that writes 2,000 values of 16 KiB (32 MiB): it must hit the write-set limit, and none of it may stay.
//! The commands other than `"attack"` are those of `hostile-common`.

hostile_common::hostile!(
    apply: |ctx, kv| {
        let value = vec![b'x'; 16 << 10];
        for i in 0..2_000u32 {
            kv.set(format!("flood/{i:08}").as_bytes(), &value);
        }
        Ok("flooded".to_string())
    }
);
