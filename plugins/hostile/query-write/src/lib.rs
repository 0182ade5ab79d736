//! Hostile plugin `hostile-query-write`. A query that bypasses the SDK and calls kv.set: the host must refuse it.
//! The commands other than `"attack"` are those of `hostile-common`.

hostile_common::hostile!(
    apply: |ctx, kv| {
        Err(Error::new("this plugin attacks only in queries"))
    },
    query: |kv, key| {
        if key == "attack" {
            // Reach past the SDK's read-only `&Kv` to the raw import.
            #[cfg(target_arch = "wasm32")]
            hostile_common::wasmraft_guest::__bindings::wasmraft::plugin::kv::set(b"written-by-query", b"!");
        }
        Ok(kv.get(key.as_bytes()).map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
);
