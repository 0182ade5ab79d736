//! The counter example plugin: named signed counters.
//!
//! Command `{"name": "hits", "by": 3}` adds `by` (default 1) and returns the new value; an overflow
//! is an error and changes nothing. Query `{"name": "hits"}` returns
//! `{"value": 3, "updated_ms": T}` (zeros if never set), where `T` is the leader timestamp of the
//! entry that last changed it: a plugin tells time from its entries, never from a clock.

use serde::{Deserialize, Serialize};
use wasmraft_guest::{EntryContext, Error, Kv, StateMachine};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Add {
    name: String,
    #[serde(default = "one")]
    by: i64,
}

fn one() -> i64 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Read {
    name: String,
}

#[derive(Serialize, Deserialize, Default, Clone, Copy)]
pub struct Stored {
    value: i64,
    updated_ms: u64,
}

#[derive(Default)]
pub struct Counter;

fn key(name: &str) -> Vec<u8> {
    format!("counter/{name}").into_bytes()
}

impl StateMachine for Counter {
    type Command = Add;
    type Response = i64;
    type Query = Read;
    type QueryResponse = Stored;

    fn apply(&mut self, ctx: &EntryContext, kv: &mut Kv, add: Add) -> Result<i64, Error> {
        let key = key(&add.name);
        let stored: Stored = kv.get_json(&key)?.unwrap_or_default();
        let value = stored
            .value
            .checked_add(add.by)
            .ok_or_else(|| Error::new(format!("counter {} would overflow", add.name)))?;
        kv.set_json(
            &key,
            &Stored {
                value,
                updated_ms: ctx.timestamp_ms,
            },
        )?;
        Ok(value)
    }

    fn query(&self, kv: &Kv, read: Read) -> Result<Stored, Error> {
        Ok(kv.get_json(&key(&read.name))?.unwrap_or_default())
    }
}

wasmraft_guest::export!(Counter);

#[cfg(test)]
mod tests {
    use wasmraft_guest::testing::{TestHost, check_batch_independence};

    use super::*;

    #[test]
    fn adds_accumulate_per_name_and_record_the_leader_timestamp() {
        let mut host = TestHost::<Counter>::new();
        host.set_timestamp_ms(1_700_000_000_000);
        assert_eq!(host.apply_json(r#"{"name":"a"}"#), Ok("1".into()));
        assert_eq!(host.apply_json(r#"{"name":"a","by":4}"#), Ok("5".into()));
        assert_eq!(host.apply_json(r#"{"name":"b","by":2}"#), Ok("2".into()));
        assert_eq!(
            host.query_json(r#"{"name":"a"}"#),
            Ok(r#"{"value":5,"updated_ms":1700000000000}"#.into())
        );
    }

    #[test]
    fn overflow_is_an_error_that_changes_nothing() {
        let mut host = TestHost::<Counter>::new();
        host.apply_json(&format!(r#"{{"name":"a","by":{}}}"#, i64::MAX))
            .unwrap();
        let before = host.kv().clone();
        assert_eq!(
            host.apply_json(r#"{"name":"a"}"#),
            Err("counter a would overflow".into())
        );
        assert_eq!(host.kv(), &before);
    }

    #[test]
    fn counting_is_batch_independent() {
        let commands: Vec<Vec<u8>> = (0..20)
            .map(|i| format!(r#"{{"name":"n{}","by":{i}}}"#, i % 3).into_bytes())
            .collect();
        check_batch_independence::<Counter>(&commands).unwrap();
    }
}
