//! The kv example plugin's logic: a replicated key-value store. The `kv` crate exports it as a
//! component; other crates (the divergent test fixture, the runtime's native bench baseline)
//! reuse it without exporting it a second time.
//!
//! Commands and queries are JSON objects tagged by `op` (string keys and values):
//!
//! | op       | fields                                   | result                                   |
//! |----------|------------------------------------------|------------------------------------------|
//! | `put`    | `key`, `value`                           | `{"previous": old value or null}`        |
//! | `get`    | `key`                                    | `{"value": value or null}`               |
//! | `delete` | `key`                                    | `{"deleted": true if it existed}`        |
//! | `cas`    | `key`, `expected` (or null: absent), `value` | `{"swapped": bool, "current": value}` |
//! | `scan`   | `start`, optional `end`, optional `limit`| `{"items": [{"key", "value"}, ...]}`     |
//!
//! Queries accept only `get` and `scan`. Writes are commands and go through the log.

use serde::{Deserialize, Serialize};
use wasmraft_guest::{EntryContext, Error, Kv, StateMachine};

/// Most pairs one `scan` returns; a larger `limit` is clamped to it.
pub const MAX_SCAN_LIMIT: u32 = 1000;

/// A command or query.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Op {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    Cas {
        key: String,
        expected: Option<String>,
        value: String,
    },
    Scan {
        start: String,
        end: Option<String>,
        limit: Option<u32>,
    },
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub value: String,
}

/// A result; serialized without a tag, one shape per op.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Reply {
    Put { previous: Option<String> },
    Get { value: Option<String> },
    Delete { deleted: bool },
    Cas { swapped: bool, current: Option<String> },
    Scan { items: Vec<Item> },
}

#[derive(Default)]
pub struct KvPlugin;

fn text(bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes).map_err(|_| Error::new("stored value is not UTF-8"))
}

fn get(kv: &Kv, key: &str) -> Result<Option<String>, Error> {
    kv.get(key.as_bytes()).map(text).transpose()
}

fn read(kv: &Kv, op: Op) -> Result<Reply, Error> {
    match op {
        Op::Get { key } => Ok(Reply::Get { value: get(kv, &key)? }),
        Op::Scan { start, end, limit } => {
            let limit = limit.unwrap_or(MAX_SCAN_LIMIT).min(MAX_SCAN_LIMIT);
            let items = kv
                .scan(start.as_bytes(), end.as_ref().map(String::as_bytes), limit)
                .into_iter()
                .map(|(key, value)| {
                    Ok(Item {
                        key: text(key)?,
                        value: text(value)?,
                    })
                })
                .collect::<Result<_, Error>>()?;
            Ok(Reply::Scan { items })
        }
        other => Err(Error::new(format!(
            "{other:?} is a write: send it as a command, not a query"
        ))),
    }
}

impl StateMachine for KvPlugin {
    type Command = Op;
    type Response = Reply;
    type Query = Op;
    type QueryResponse = Reply;

    fn apply(&mut self, _ctx: &EntryContext, kv: &mut Kv, op: Op) -> Result<Reply, Error> {
        match op {
            Op::Put { key, value } => {
                let previous = get(kv, &key)?;
                kv.set(key.as_bytes(), value.as_bytes());
                Ok(Reply::Put { previous })
            }
            Op::Delete { key } => {
                let deleted = kv.get(key.as_bytes()).is_some();
                kv.delete(key.as_bytes());
                Ok(Reply::Delete { deleted })
            }
            Op::Cas { key, expected, value } => {
                let current = get(kv, &key)?;
                if current == expected {
                    kv.set(key.as_bytes(), value.as_bytes());
                    Ok(Reply::Cas {
                        swapped: true,
                        current: Some(value),
                    })
                } else {
                    Ok(Reply::Cas {
                        swapped: false,
                        current,
                    })
                }
            }
            read_op => read(kv, read_op),
        }
    }

    fn query(&self, kv: &Kv, op: Op) -> Result<Reply, Error> {
        read(kv, op)
    }
}

#[cfg(test)]
mod tests {
    use wasmraft_guest::testing::{TestHost, check_batch_independence, check_snapshot_round_trip};

    use super::*;

    fn host_with(commands: &[&str]) -> TestHost<KvPlugin> {
        let mut host = TestHost::new();
        for command in commands {
            host.apply_json(command).unwrap();
        }
        host
    }

    #[test]
    fn put_then_get_returns_the_value_and_the_previous_one() {
        let mut host = TestHost::<KvPlugin>::new();
        assert_eq!(
            host.apply_json(r#"{"op":"put","key":"a","value":"1"}"#),
            Ok(r#"{"previous":null}"#.into())
        );
        assert_eq!(
            host.apply_json(r#"{"op":"put","key":"a","value":"2"}"#),
            Ok(r#"{"previous":"1"}"#.into())
        );
        assert_eq!(
            host.query_json(r#"{"op":"get","key":"a"}"#),
            Ok(r#"{"value":"2"}"#.into())
        );
    }

    #[test]
    fn cas_swaps_only_on_the_expected_value_and_null_means_absent() {
        let mut host = TestHost::<KvPlugin>::new();
        assert_eq!(
            host.apply_json(r#"{"op":"cas","key":"a","expected":null,"value":"1"}"#),
            Ok(r#"{"swapped":true,"current":"1"}"#.into())
        );
        assert_eq!(
            host.apply_json(r#"{"op":"cas","key":"a","expected":"0","value":"2"}"#),
            Ok(r#"{"swapped":false,"current":"1"}"#.into())
        );
    }

    #[test]
    fn scan_returns_the_half_open_range_in_order_up_to_limit() {
        let mut host = host_with(&[
            r#"{"op":"put","key":"b","value":"2"}"#,
            r#"{"op":"put","key":"a","value":"1"}"#,
            r#"{"op":"put","key":"c","value":"3"}"#,
        ]);
        assert_eq!(
            host.query_json(r#"{"op":"scan","start":"a","end":"c"}"#),
            Ok(r#"{"items":[{"key":"a","value":"1"},{"key":"b","value":"2"}]}"#.into())
        );
        assert_eq!(
            host.query_json(r#"{"op":"scan","start":"b","limit":1}"#),
            Ok(r#"{"items":[{"key":"b","value":"2"}]}"#.into())
        );
    }

    #[test]
    fn delete_reports_whether_the_key_existed() {
        let mut host = host_with(&[r#"{"op":"put","key":"a","value":"1"}"#]);
        assert_eq!(
            host.apply_json(r#"{"op":"delete","key":"a"}"#),
            Ok(r#"{"deleted":true}"#.into())
        );
        assert_eq!(
            host.apply_json(r#"{"op":"delete","key":"a"}"#),
            Ok(r#"{"deleted":false}"#.into())
        );
        assert!(host.kv().is_empty());
    }

    #[test]
    fn malformed_commands_and_writes_sent_as_queries_are_errors_that_change_nothing() {
        let mut host = host_with(&[r#"{"op":"put","key":"a","value":"1"}"#]);
        let before = host.kv().clone();
        assert!(
            host.apply_json(r#"{"op":"nope"}"#)
                .unwrap_err()
                .starts_with("malformed command")
        );
        assert!(host.apply_json("not json").is_err());
        assert!(host.query_json(r#"{"op":"put","key":"a","value":"x"}"#).is_err());
        assert_eq!(host.kv(), &before);
    }

    #[test]
    fn state_survives_snapshot_round_trip_and_is_batch_independent() {
        let commands: Vec<Vec<u8>> = (0..40)
            .map(|i| match i % 4 {
                0 | 1 => format!(r#"{{"op":"put","key":"k{i}","value":"{}"}}"#, "v".repeat(i)),
                2 => format!(r#"{{"op":"delete","key":"k{}"}}"#, i - 2),
                _ => format!(r#"{{"op":"cas","key":"k{}","expected":null,"value":"c"}}"#, i - 2),
            })
            .map(String::into_bytes)
            .collect();
        check_batch_independence::<KvPlugin>(&commands).unwrap();
        let mut host = TestHost::<KvPlugin>::new();
        for command in &commands {
            host.apply(command).unwrap();
        }
        check_snapshot_round_trip(&host).unwrap();
    }
}
