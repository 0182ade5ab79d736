//! Hostile plugin `hostile-query-write`. A query that bypasses the SDK and calls kv.set: the host must refuse it.
//!
//! The command `"attack"` attacks; `"fail"` writes a key and then returns an error; any other
//! string command `s` stores `s -> "ok"` and returns `"ok"`, so tests can check that the runtime stays usable and later entries still apply. A query
//! `s` returns the value stored at `s`.

use wasmraft_guest::{EntryContext, Error, Kv, StateMachine};

#[derive(Default)]
pub struct Hostile;

impl StateMachine for Hostile {
    type Command = String;
    type Response = String;
    type Query = String;
    type QueryResponse = Option<String>;

    fn apply(&mut self, ctx: &EntryContext, kv: &mut Kv, command: String) -> Result<String, Error> {
        let _ = ctx;
        if command == "fail" {
            kv.set(b"half-done", b"oops");
            return Err(Error::new("refused"));
        }
        if command != "attack" {
            kv.set(command.as_bytes(), b"ok");
            return Ok("ok".to_string());
        }
        Err(Error::new("this plugin attacks only in queries"))
    }

    fn query(&self, kv: &Kv, key: String) -> Result<Option<String>, Error> {
        if key == "attack" {
            // Reach past the SDK's read-only `&Kv` to the raw import.
            #[cfg(target_arch = "wasm32")]
            wasmraft_guest::__bindings::wasmraft::plugin::kv::set(b"written-by-query", b"!");
        }
        Ok(kv.get(key.as_bytes()).map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

wasmraft_guest::export!(Hostile);
