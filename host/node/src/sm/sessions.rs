//! Retry-safe writes. A call may carry a session (client id, sequence number): the state machine
//! applies each (client, seq) once and keeps, per client, the last sequence applied with its
//! result, as the blob `session/CLIENT` (so snapshots carry sessions). A call that repeats that
//! sequence is answered with the kept result instead of being applied again; an older sequence
//! is refused. Sessions idle for [`SESSION_TTL_MS`] of leader time are forgotten, by a sweep
//! before each entry whose index is a multiple of [`SWEEP_EVERY`]: the same entries on every
//! replica, whatever the batches, so every replica forgets the same sessions at the same index.

use std::io;

use prost::Message;

use super::Machine;
use crate::pb;
use crate::util::{io_err, lock};

/// Blob-key prefix of session records.
pub(crate) const SESSIONS: &str = "session/";
/// A session with no call for this long (leader time) is forgotten.
pub(crate) const SESSION_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Sessions are swept before the entries at multiples of this index: a sweep reads every session
/// record, so not often (every 2-3 s at 25K writes/s; the TTL is a day).
pub(crate) const SWEEP_EVERY: u64 = 65_536;
// Apply calls break at checkpoints, so at sweeps too.
const _: () = assert!(SWEEP_EVERY.is_multiple_of(super::CHECKPOINT_EVERY));

/// Session records kept in memory across apply calls (a bound on its memory: about 200 bytes
/// each). Without them every call would read and decode its client's record from RocksDB.
pub(super) const CACHED: usize = 16_384;

/// The longest client id.
const MAX_CLIENT_BYTES: usize = 128;

/// What a call with a session gets before it reaches its plugin.
pub(super) enum Seen {
    /// Not applied yet: apply it (and remember its result).
    New,
    /// Answered without applying it: a repeat (the kept result) or a refusal.
    Answered(pb::CommandResult),
}

fn key(client: &str) -> String {
    format!("{SESSIONS}{client}")
}

fn rejected(message: String) -> pb::CommandResult {
    pb::CommandResult {
        kind: Some(pb::command_result::Kind::Rejected(message)),
    }
}

impl Machine {
    /// The record of `client`: written by this process (not flushed yet, perhaps), or stored.
    fn session(&mut self, client: &str) -> io::Result<Option<&pb::SessionRecord>> {
        if !self.sessions.contains_key(client) {
            let stored = self.shared.store.blob_get(&key(client)).map_err(io_err)?;
            let record = match stored {
                Some(bytes) => Some(pb::SessionRecord::decode(bytes.as_slice()).map_err(io_err)?),
                None => None,
            };
            self.sessions.insert(client.to_string(), record);
        }
        Ok(self.sessions.get(client).and_then(Option::as_ref))
    }

    /// Whether a call with `session` is new, or answered without being applied.
    pub(super) fn seen(&mut self, session: &pb::Session) -> io::Result<Seen> {
        if session.client.is_empty() || session.client.len() > MAX_CLIENT_BYTES {
            return Ok(Seen::Answered(rejected(format!(
                "a session's client id is 1 to {MAX_CLIENT_BYTES} bytes"
            ))));
        }
        if session.seq == 0 {
            return Ok(Seen::Answered(rejected("session sequence numbers start at 1".into())));
        }
        Ok(match self.session(&session.client)? {
            Some(record) if record.seq == session.seq => Seen::Answered(record.result.clone().unwrap_or_default()),
            Some(record) if record.seq > session.seq => Seen::Answered(rejected(format!(
                "session {:?}: call {} is older than its last applied call ({}); its result is no longer kept",
                session.client, session.seq, record.seq
            ))),
            _ => Seen::New,
        })
    }

    /// Keeps `result` as the last call of `session`, made at leader time `now_ms`.
    pub(super) fn remember(&mut self, session: &pb::Session, now_ms: u64, result: &pb::CommandResult) {
        let record = pb::SessionRecord {
            seq: session.seq,
            result: Some(result.clone()),
            last_ms: now_ms,
        };
        lock(&self.pending)
            .batch
            .put_blob(&key(&session.client), &record.encode_to_vec());
        self.sessions.insert(session.client.clone(), Some(record));
    }

    /// Forgets every session idle for [`SESSION_TTL_MS`] at leader time `now_ms`.
    pub(super) fn sweep_sessions(&mut self, now_ms: u64) -> io::Result<()> {
        let Some(cutoff) = now_ms.checked_sub(SESSION_TTL_MS) else {
            return Ok(());
        };
        // A session written since the last flush is fresh (written at about `now_ms`): the
        // stored records are the only ones that can be idle.
        for (blob, bytes) in self.shared.store.blob_scan_prefix(SESSIONS).map_err(io_err)? {
            let client = &blob[SESSIONS.len()..];
            let last_ms = match self.sessions.get(client) {
                Some(Some(written)) => written.last_ms,
                Some(None) => continue,
                None => pb::SessionRecord::decode(bytes.as_slice()).map_err(io_err)?.last_ms,
            };
            if last_ms < cutoff {
                lock(&self.pending).batch.delete_blob(&blob);
                self.sessions.insert(client.to_string(), None);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use wasmraft_runtime::{Runtime, RuntimeConfig};
    use wasmraft_store::Store;

    use super::*;

    fn machine(dir: &std::path::Path) -> Machine {
        let store = Store::open(dir.join("db")).unwrap();
        Machine::open(
            1,
            store,
            Runtime::new(RuntimeConfig::default()).unwrap(),
            Default::default(),
        )
        .unwrap()
    }

    fn session(client: &str, seq: u64) -> pb::Session {
        pb::Session {
            client: client.into(),
            seq,
        }
    }

    fn known(sm: &mut Machine, s: &pb::Session) -> bool {
        matches!(sm.seen(s).unwrap(), Seen::Answered(_))
    }

    #[test]
    fn the_sweep_forgets_sessions_idle_past_their_ttl_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let ok = crate::sm::ack();
        let (old, fresh) = (session("old", 3), session("fresh", 1));
        sm.remember(&old, 1_000, &ok);
        sm.remember(&fresh, 1_000 + SESSION_TTL_MS, &ok);
        sm.flush(false).unwrap();
        assert!(known(&mut sm, &old) && known(&mut sm, &fresh));

        sm.sweep_sessions(1_001 + SESSION_TTL_MS).unwrap();
        assert!(!known(&mut sm, &old), "forgotten before the flush already");
        sm.flush(false).unwrap();
        assert!(!known(&mut sm, &old), "and in the store");
        assert!(known(&mut sm, &fresh));

        // A session used since the last flush is judged by that use, not by its stored record.
        sm.remember(&session("fresh", 2), 10 * SESSION_TTL_MS, &ok);
        sm.sweep_sessions(10 * SESSION_TTL_MS + 1).unwrap();
        sm.flush(false).unwrap();
        assert!(known(&mut sm, &session("fresh", 2)));
        assert!(known(&mut sm, &fresh), "an older sequence is refused, not applied");
    }

    #[test]
    fn a_snapshot_install_replaces_the_cached_session_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let ok = crate::sm::ack();
        sm.remember(&session("c", 3), 1_000, &ok);
        sm.flush(false).unwrap();
        assert!(matches!(sm.seen(&session("c", 7)).unwrap(), Seen::New), "cached: seq 3");

        // An install switches the store to the leader's state, where `c` is at seq 7.
        let record = pb::SessionRecord {
            seq: 7,
            result: Some(ok.clone()),
            last_ms: 2_000,
        };
        let mut batch = sm.shared.store.batch();
        batch.put_blob(&key("c"), &record.encode_to_vec());
        sm.shared.store.write(batch).unwrap();
        let digest = sm.digest_bytes();
        sm.installed(None, Default::default(), &digest).unwrap();

        assert!(
            known(&mut sm, &session("c", 7)),
            "a repeat of the installed seq must be answered, not applied again"
        );
    }
}
