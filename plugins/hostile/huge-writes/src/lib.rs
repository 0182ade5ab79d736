//! Hostile plugin `hostile-huge-writes`. An entry that writes 2,000 values of 16 KiB (32 MiB): it must hit the write-set limit, and none of it may stay.
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
        let value = vec![b'x'; 16 << 10];
        for i in 0..2_000u32 {
            kv.set(format!("flood/{i:08}").as_bytes(), &value);
        }
        Ok("flooded".to_string())
    }

    fn query(&self, kv: &Kv, key: String) -> Result<Option<String>, Error> {
        Ok(kv.get(key.as_bytes()).map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

wasmraft_guest::export!(Hostile);
