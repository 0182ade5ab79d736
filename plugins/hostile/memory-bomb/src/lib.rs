//! Hostile plugin `hostile-memory-bomb`. An entry that allocates without bound: it must hit the memory limit, alone.
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

    #[allow(unreachable_code, reason = "the attack never returns")]
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
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(Vec::with_capacity(1 << 20)));
        }
    }

    fn query(&self, kv: &Kv, key: String) -> Result<Option<String>, Error> {
        Ok(kv.get(key.as_bytes()).map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

wasmraft_guest::export!(Hostile);
