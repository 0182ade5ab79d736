//! Hostile plugin `hostile-endless-snapshot`, on the raw WIT bindings: its snapshot stream never
//! ends. With a non-empty config it sends empty chunks forever instead. Every entry succeeds and
//! returns nothing. The host must stop the stream with an error, not loop forever.

#![cfg(target_arch = "wasm32")]

use std::sync::atomic::{AtomicBool, Ordering};

use wasmraft::plugin::entries;

wit_bindgen::generate!({ path: "../../../wit", world: "state-machine" });

static EMPTY_CHUNKS: AtomicBool = AtomicBool::new(false);

struct Plugin;

impl Guest for Plugin {
    fn init(ctx: InitContext) -> Result<(), String> {
        EMPTY_CHUNKS.store(!ctx.config.is_empty(), Ordering::Relaxed);
        Ok(())
    }

    fn apply() {
        while entries::next().is_some() {
            entries::finish(&Ok(Vec::new()));
        }
    }

    fn query(_request: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    fn snapshot_begin() {}

    fn snapshot_next(max_bytes: u32) -> Option<Vec<u8>> {
        let size = if EMPTY_CHUNKS.load(Ordering::Relaxed) {
            0
        } else {
            max_bytes as usize
        };
        Some(vec![7; size])
    }

    fn restore_begin() {}

    fn restore_chunk(_chunk: Vec<u8>) -> Result<(), String> {
        Ok(())
    }

    fn restore_finish() -> Result<(), String> {
        Ok(())
    }
}

export!(Plugin);
