//! The shape every hostile plugin shares: the command `"attack"` runs the plugin's attack; `"fail"`
//! writes a key and then returns an error; any other string command `s` stores `s -> "ok"` and
//! returns `"ok"`, so tests can check that the runtime stays usable and later entries still apply.
//! A query `s` returns the value stored at `s`.

pub use wasmraft_guest;

/// Defines and exports a hostile plugin. `apply: |ctx, kv| { ... }` is the attack (it returns
/// `Result<String, Error>`); `query: |kv, key| { ... }` optionally replaces the query.
#[macro_export]
macro_rules! hostile {
    (apply: |$ctx:ident, $kv:ident| $attack:block) => {
        $crate::hostile!(apply: |$ctx, $kv| $attack, query: |kv, key| {
            Ok(kv.get(key.as_bytes()).map(|v| String::from_utf8_lossy(&v).into_owned()))
        });
    };
    (apply: |$ctx:ident, $kv:ident| $attack:block, query: |$qkv:ident, $key:ident| $query:block) => {
        use $crate::wasmraft_guest::{EntryContext, Error, Kv, StateMachine};

        #[derive(Default)]
        pub struct Hostile;

        impl StateMachine for Hostile {
            type Command = String;
            type Response = String;
            type Query = String;
            type QueryResponse = Option<String>;

            #[allow(unreachable_code, reason = "some attacks never return")]
            fn apply(&mut self, $ctx: &EntryContext, $kv: &mut Kv, command: String) -> Result<String, Error> {
                let _ = $ctx;
                match command.as_str() {
                    "fail" => {
                        $kv.set(b"half-done", b"oops");
                        Err(Error::new("refused"))
                    }
                    "attack" => $attack,
                    _ => {
                        $kv.set(command.as_bytes(), b"ok");
                        Ok("ok".to_string())
                    }
                }
            }

            fn query(&self, $qkv: &Kv, $key: String) -> Result<Option<String>, Error> {
                $query
            }
        }

        $crate::wasmraft_guest::export!(Hostile);
    };
}
