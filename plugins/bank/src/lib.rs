//! wasmraft example plugin: a bank. `open` creates an account with a balance; `transfer` moves an
//! amount between two accounts, refused (changing nothing) when the source lacks it. Only `open`
//! changes the total, so a test that opens its accounts first can check, on every replica and at
//! any moment, that the total never moves.
//!
//! | command | fields | answer |
//! |---|---|---|
//! | `open` | `account`, `balance` | the balance |
//! | `transfer` | `from`, `to`, `amount` | the source's new balance |
//!
//! | query | fields | answer |
//! |---|---|---|
//! | `balance` | `account` | its balance |
//! | `total` | | the sum of every balance |

use serde::Deserialize;
use wasmraft_guest::{EntryContext, Error, Kv, StateMachine};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Command {
    Open { account: String, balance: u64 },
    Transfer { from: String, to: String, amount: u64 },
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Query {
    Balance { account: String },
    Total,
}

const PREFIX: &str = "account/";
/// Accounts one `total` sums per scan.
const PAGE: u32 = 500;

fn key(account: &str) -> Vec<u8> {
    format!("{PREFIX}{account}").into_bytes()
}

fn balance(kv: &Kv, account: &str) -> Result<u64, Error> {
    kv.get_json(&key(account))?
        .ok_or_else(|| Error::new(format!("no account {account:?}")))
}

#[derive(Default)]
pub struct Bank;

impl StateMachine for Bank {
    type Command = Command;
    type Response = u64;
    type Query = Query;
    type QueryResponse = u64;

    fn apply(&mut self, _ctx: &EntryContext, kv: &mut Kv, command: Command) -> Result<u64, Error> {
        match command {
            Command::Open { account, balance } => {
                if kv.get(&key(&account)).is_some() {
                    return Err(Error::new(format!("account {account:?} exists")));
                }
                kv.set_json(&key(&account), &balance)?;
                Ok(balance)
            }
            Command::Transfer { from, to, amount } => {
                if from == to {
                    return Err(Error::new("a transfer needs two accounts"));
                }
                let (source, target) = (balance(kv, &from)?, balance(kv, &to)?);
                let left = source
                    .checked_sub(amount)
                    .ok_or_else(|| Error::new(format!("{from} has {source}, not {amount}")))?;
                let credited = target
                    .checked_add(amount)
                    .ok_or_else(|| Error::new(format!("{to} would overflow")))?;
                kv.set_json(&key(&from), &left)?;
                kv.set_json(&key(&to), &credited)?;
                Ok(left)
            }
        }
    }

    fn query(&self, kv: &Kv, query: Query) -> Result<u64, Error> {
        match query {
            Query::Balance { account } => balance(kv, &account),
            Query::Total => {
                let (mut total, mut start) = (0u64, PREFIX.as_bytes().to_vec());
                let mut end = PREFIX.as_bytes().to_vec();
                *end.last_mut().expect("a prefix") += 1;
                loop {
                    let page = kv.scan(&start, Some(&end), PAGE);
                    let Some((last, _)) = page.last() else { break };
                    start = last.clone();
                    start.push(0);
                    for (_, value) in &page {
                        let value: u64 =
                            serde_json::from_slice(value).map_err(|e| Error::new(format!("a stored balance: {e}")))?;
                        total = total.saturating_add(value);
                    }
                }
                Ok(total)
            }
        }
    }
}

wasmraft_guest::export!(Bank);

#[cfg(test)]
mod tests {
    use wasmraft_guest::testing::{TestHost, check_batch_independence};

    use super::*;

    #[test]
    fn transfers_move_money_and_a_refused_one_changes_nothing() {
        let mut host = TestHost::<Bank>::new();
        host.apply_json(r#"{"op":"open","account":"a","balance":10}"#).unwrap();
        host.apply_json(r#"{"op":"open","account":"b","balance":5}"#).unwrap();
        assert_eq!(
            host.apply_json(r#"{"op":"transfer","from":"a","to":"b","amount":4}"#),
            Ok("6".into())
        );
        let before = host.kv().clone();
        assert_eq!(
            host.apply_json(r#"{"op":"transfer","from":"a","to":"b","amount":7}"#),
            Err("a has 6, not 7".into())
        );
        assert_eq!(host.kv(), &before);
        assert_eq!(host.query_json(r#"{"op":"balance","account":"b"}"#), Ok("9".into()));
        assert_eq!(host.query_json(r#"{"op":"total"}"#), Ok("15".into()));
    }

    #[test]
    fn transfers_are_batch_independent() {
        let mut commands: Vec<Vec<u8>> = ["a", "b", "c"]
            .iter()
            .map(|a| format!(r#"{{"op":"open","account":"{a}","balance":10}}"#).into_bytes())
            .collect();
        for i in 0..20 {
            let (from, to) = (["a", "b", "c"][i % 3], ["b", "c", "a"][i % 3]);
            commands
                .push(format!(r#"{{"op":"transfer","from":"{from}","to":"{to}","amount":{}}}"#, i % 7).into_bytes());
        }
        check_batch_independence::<Bank>(&commands).unwrap();
    }
}
