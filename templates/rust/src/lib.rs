//! {{name}}: a wasmraft plugin keeping one counter per key, with all of its state in kv.
//!
//! | command                            | result                     |
//! |------------------------------------|----------------------------|
//! | `{"op":"add","key":"a","by":2}`    | `{"key":"a","value":2}`    |
//! | `{"op":"add","key":"a"}` (by 1)    | `{"key":"a","value":3}`    |
//! | `{"op":"reset","key":"a"}`         | `{"key":"a","value":0}`    |
//!
//! The query `{"key":"a"}` answers `{"key":"a","value":3}` (0 for a key never set). Values stay
//! within ±(2^53 - 1), the integers every SDK language (JavaScript too) holds exactly: an add past
//! that fails with `overflow` and, like every failed command, changes nothing.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use wasmraft_guest::{EntryContext, Error, Kv, StateMachine};

/// The values a counter (and `by`) may take: ±(2^53 - 1).
const RANGE: RangeInclusive<i64> = -((1 << 53) - 1)..=(1 << 53) - 1;

/// A command: `op` is "add" (`by`, default 1) or "reset".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    op: String,
    key: String,
    by: Option<i64>,
}

/// A query: the counter to read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    key: String,
}

/// The answer to every command and query (serialized as `{"key":...,"value":...}`).
#[derive(Serialize)]
pub struct Counter {
    key: String,
    value: i64,
}

/// The plugin. It keeps nothing in memory: the host may re-create it at any time.
#[derive(Default)]
pub struct Counters;

impl StateMachine for Counters {
    type Command = Command;
    type Response = Counter;
    type Query = Query;
    type QueryResponse = Counter;

    fn apply(&mut self, _ctx: &EntryContext, kv: &mut Kv, cmd: Command) -> Result<Counter, Error> {
        let key = cmd.key.as_bytes();
        let value = match cmd.op.as_str() {
            "add" => {
                let by = cmd.by.unwrap_or(1);
                let current: i64 = kv.get_json(key)?.unwrap_or(0);
                let value = current
                    .checked_add(by)
                    .filter(|value| RANGE.contains(&by) && RANGE.contains(value))
                    .ok_or("overflow")?;
                kv.set_json(key, &value)?;
                value
            }
            "reset" => {
                kv.delete(key);
                0
            }
            other => return Err(Error::new(format!("unknown op \"{other}\""))),
        };
        let key = cmd.key;
        Ok(Counter { key, value })
    }

    fn query(&self, kv: &Kv, query: Query) -> Result<Counter, Error> {
        let value = kv.get_json(query.key.as_bytes())?.unwrap_or(0);
        let key = query.key;
        Ok(Counter { key, value })
    }
}

wasmraft_guest::export!(Counters);

#[cfg(test)]
mod tests {
    use wasmraft_guest::testing::{TestHost, check_batch_independence, check_snapshot_round_trip};

    use super::*;

    fn add(key: &str, by: i64) -> String {
        format!(r#"{{"op":"add","key":"{key}","by":{by}}}"#)
    }

    fn counter(key: &str, value: i64) -> Result<String, String> {
        Ok(format!(r#"{{"key":"{key}","value":{value}}}"#))
    }

    #[test]
    fn adds_accumulate_per_key() {
        let mut host = TestHost::<Counters>::new();
        assert_eq!(host.apply_json(r#"{"op":"add","key":"a"}"#), counter("a", 1));
        assert_eq!(host.apply_json(&add("a", 4)), counter("a", 5));
        assert_eq!(host.apply_json(&add("b", -3)), counter("b", -3));
        assert_eq!(host.apply_json(r#"{"op":"reset","key":"a"}"#), counter("a", 0));
        assert_eq!(host.kv().len(), 1, "reset deletes the key");
    }

    #[test]
    fn a_failed_command_changes_nothing() {
        let mut host = TestHost::<Counters>::new();
        host.apply_json(&add("a", (1 << 53) - 1)).unwrap();
        let before = host.kv().clone();
        assert_eq!(host.apply_json(&add("a", 1)), Err("overflow".into()));
        let unknown = host.apply_json(r#"{"op":"double","key":"a"}"#);
        assert_eq!(unknown, Err(r#"unknown op "double""#.into()));
        let malformed = host.apply_json(r#"{"op":"add","key":"a","by":"1"}"#);
        assert!(malformed.unwrap_err().starts_with("malformed command"));
        assert_eq!(host.kv(), &before);
    }

    #[test]
    fn queries_read_the_current_value() {
        let mut host = TestHost::<Counters>::new();
        host.apply_json(&add("a", 2)).unwrap();
        assert_eq!(host.query_json(r#"{"key":"a"}"#), counter("a", 2));
        assert_eq!(host.query_json(r#"{"key":"b"}"#), counter("b", 0));
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        let mut host = TestHost::<Counters>::new();
        for i in 0..30 {
            host.apply_json(&add(&format!("k{}", i % 7), i)).unwrap();
        }
        check_snapshot_round_trip(&host).unwrap();
    }

    #[test]
    fn results_do_not_depend_on_batching() {
        let commands: Vec<Vec<u8>> = (0..30)
            .map(|i| match i % 5 {
                0 => format!(r#"{{"op":"reset","key":"k{}"}}"#, i % 3),
                4 => r#"{"op":"nope","key":"k"}"#.to_string(),
                _ => add(&format!("k{}", i % 3), i - 10),
            })
            .map(String::into_bytes)
            .collect();
        check_batch_independence::<Counters>(&commands).unwrap();
    }
}
