//! The wire and disk encoding of openraft's types: every conversion between them and the
//! protobuf messages of `proto/wasmraft.proto`, in one place. Our own versioned encoding, never
//! openraft's serde, so an openraft upgrade cannot change what is on disk or on the wire.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use openraft::entry::RaftEntry;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, EntryPayload};
use prost::Message;

use crate::pb;
use crate::types::{Entry, LogId, Membership, NodeId, StoredMembership, TypeConfig, Vote};

impl fmt::Display for pb::Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Some(pb::command::Kind::Call(call)) => write!(f, "call {} ({} bytes)", call.plugin, call.payload.len()),
            Some(pb::command::Kind::BlobChunk(c)) => {
                write!(
                    f,
                    "blob {} [{}..{}) of {}",
                    c.sha256,
                    c.offset,
                    c.offset + c.data.len() as u64,
                    c.total
                )
            }
            Some(pb::command::Kind::Activate(a)) if a.shadow => write!(f, "shadow {} = {}", a.name, a.sha256),
            Some(pb::command::Kind::Activate(a)) => write!(f, "activate {} = {}", a.name, a.sha256),
            Some(pb::command::Kind::EndShadow(e)) if e.promote => write!(f, "promote shadow {}", e.name),
            Some(pb::command::Kind::EndShadow(e)) => write!(f, "drop shadow {}", e.name),
            Some(pb::command::Kind::Retire(r)) => write!(f, "retire {}", r.name),
            None => write!(f, "empty command"),
        }
    }
}

/// A protobuf message that does not map onto a Raft type.
#[derive(Debug, thiserror::Error)]
#[error("malformed {0}")]
pub struct Malformed(pub &'static str);

pub fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId {
        term: id.leader_id.term,
        index: id.index,
    }
}

pub fn log_id_from_pb(id: &pb::LogId) -> LogId {
    LogId::new(id.term.into(), id.index)
}

pub fn opt_log_id_to_pb(id: Option<&LogId>) -> Option<pb::LogId> {
    id.map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(id: Option<&pb::LogId>) -> Option<LogId> {
    id.map(log_id_from_pb)
}

pub fn vote_to_pb(vote: &Vote) -> pb::Vote {
    pb::Vote {
        term: vote.leader_id.term,
        voted_for: Some(vote.leader_id.voted_for),
        committed: vote.committed,
    }
}

pub fn vote_from_pb(vote: Option<&pb::Vote>) -> Result<Vote, Malformed> {
    let vote = vote.ok_or(Malformed("vote: missing"))?;
    let voted_for = vote.voted_for.ok_or(Malformed("vote: no voted_for"))?;
    let mut v = Vote::new(vote.term, voted_for);
    v.committed = vote.committed;
    Ok(v)
}

pub fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|ids| pb::NodeIdSet {
                ids: ids.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
    }
}

pub fn membership_from_pb(m: &pb::Membership) -> Result<Membership, Malformed> {
    let configs: Vec<BTreeSet<NodeId>> = m.configs.iter().map(|c| c.ids.iter().copied().collect()).collect();
    let nodes: BTreeMap<NodeId, BasicNode> = m
        .nodes
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    Membership::new(configs, nodes).map_err(|_| Malformed("membership: a voter without a node"))
}

pub fn stored_membership_to_pb(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to_pb(m.log_id().as_ref()),
        membership: Some(membership_to_pb(m.membership())),
    }
}

pub fn stored_membership_from_pb(m: &pb::StoredMembership) -> Result<StoredMembership, Malformed> {
    let membership = m.membership.as_ref().ok_or(Malformed("stored membership"))?;
    Ok(StoredMembership::new(
        opt_log_id_from_pb(m.log_id.as_ref()),
        membership_from_pb(membership)?,
    ))
}

pub fn entry_to_pb(entry: &Entry) -> pb::Entry {
    let payload = match &entry.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(command) => pb::entry::Payload::Command(command.clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&entry.log_id())),
        payload: Some(payload),
    }
}

pub fn entry_from_pb(entry: pb::Entry) -> Result<Entry, Malformed> {
    let log_id = log_id_from_pb(entry.log_id.as_ref().ok_or(Malformed("entry: no log id"))?);
    let payload = match entry.payload.ok_or(Malformed("entry: no payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Command(command) => EntryPayload::Normal(command),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)?),
    };
    Ok(Entry::new(log_id, payload))
}

/// Decodes a protobuf message read from our own disk.
pub fn decode<M: Message + Default>(bytes: &[u8], what: &'static str) -> Result<M, Malformed> {
    M::decode(bytes).map_err(|_| Malformed(what))
}

pub fn append_request_to_pb(rpc: &AppendEntriesRequest<TypeConfig>) -> pb::AppendRequest {
    pb::AppendRequest {
        vote: Some(vote_to_pb(&rpc.vote)),
        prev_log_id: opt_log_id_to_pb(rpc.prev_log_id.as_ref()),
        entries: rpc.entries.iter().map(entry_to_pb).collect(),
        leader_commit: opt_log_id_to_pb(rpc.leader_commit.as_ref()),
    }
}

pub fn vote_request_to_pb(rpc: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&rpc.vote)),
        last_log_id: opt_log_id_to_pb(rpc.last_log_id.as_ref()),
        leadership_transfer: rpc.leadership_transfer,
    }
}

pub fn append_request_from_pb(req: pb::AppendRequest) -> Result<AppendEntriesRequest<TypeConfig>, Malformed> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(req.vote.as_ref())?,
        prev_log_id: opt_log_id_from_pb(req.prev_log_id.as_ref()),
        entries: req.entries.into_iter().map(entry_from_pb).collect::<Result<_, _>>()?,
        leader_commit: opt_log_id_from_pb(req.leader_commit.as_ref()),
    })
}

pub fn vote_request_from_pb(req: &pb::VoteRequest) -> Result<VoteRequest<TypeConfig>, Malformed> {
    let mut rpc = VoteRequest::new(
        vote_from_pb(req.vote.as_ref())?,
        opt_log_id_from_pb(req.last_log_id.as_ref()),
    );
    rpc.leadership_transfer = req.leadership_transfer;
    Ok(rpc)
}

pub fn vote_response_to_pb(resp: VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&resp.vote)),
        vote_granted: resp.vote_granted,
        last_log_id: opt_log_id_to_pb(resp.last_log_id.as_ref()),
    }
}

pub fn append_response(result: pb::append_response::Result) -> pb::AppendResponse {
    pb::AppendResponse { result: Some(result) }
}

pub fn vote_response_from_pb(resp: pb::VoteResponse) -> Result<VoteResponse<TypeConfig>, Malformed> {
    Ok(VoteResponse::new(
        vote_from_pb(resp.vote.as_ref())?,
        opt_log_id_from_pb(resp.last_log_id.as_ref()),
        resp.vote_granted,
    ))
}

pub fn append_response_from_pb(resp: pb::AppendResponse) -> Result<AppendEntriesResponse<TypeConfig>, Malformed> {
    use pb::append_response::Result as R;
    match resp.result.ok_or(Malformed("empty append response"))? {
        R::Success(_) => Ok(AppendEntriesResponse::Success),
        R::Partial(f) => Ok(AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(
            f.log_id.as_ref(),
        ))),
        R::Conflict(_) => Ok(AppendEntriesResponse::Conflict),
        R::HigherVote(v) => Ok(AppendEntriesResponse::HigherVote(vote_from_pb(Some(&v))?)),
    }
}

/// One response of a pipelined append stream.
pub fn stream_result_from_pb(resp: pb::AppendResponse) -> Result<StreamAppendResult<TypeConfig>, Malformed> {
    use pb::append_response::Result as R;
    match resp.result.ok_or(Malformed("empty append response"))? {
        R::Success(f) | R::Partial(f) => Ok(Ok(opt_log_id_from_pb(f.log_id.as_ref()))),
        R::Conflict(c) => {
            let id = c.log_id.as_ref().ok_or(Malformed("conflict without a log id"))?;
            Ok(Err(StreamAppendError::Conflict(log_id_from_pb(id))))
        }
        R::HigherVote(v) => Ok(Err(StreamAppendError::HigherVote(vote_from_pb(Some(&v))?))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: a fixed sequence of test inputs.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        /// `bytes` with a few bytes flipped, cut, or inserted; or noise of its own.
        fn mutate(&mut self, bytes: &[u8]) -> Vec<u8> {
            let mut out = bytes.to_vec();
            match self.below(4) {
                0 => (0..64).map(|_| self.next() as u8).collect(),
                1 => {
                    out.truncate(self.below(bytes.len() + 1));
                    out
                }
                2 => {
                    let at = self.below(out.len() + 1);
                    out.splice(at..at, (0..self.below(8) + 1).map(|_| self.next() as u8));
                    out
                }
                _ => {
                    for _ in 0..self.below(4) + 1 {
                        if !out.is_empty() {
                            let at = self.below(out.len());
                            out[at] ^= 1 << self.below(8);
                        }
                    }
                    out
                }
            }
        }
    }

    fn sample_append() -> pb::AppendRequest {
        let membership = pb::Membership {
            configs: vec![pb::NodeIdSet { ids: vec![1, 2, 3] }],
            nodes: [(1, "http://a".to_string()), (2, "http://b".to_string())].into(),
        };
        pb::AppendRequest {
            vote: Some(pb::Vote {
                term: 3,
                voted_for: Some(1),
                committed: true,
            }),
            prev_log_id: Some(pb::LogId { term: 2, index: 9 }),
            entries: vec![
                pb::Entry {
                    log_id: Some(pb::LogId { term: 3, index: 10 }),
                    payload: Some(pb::entry::Payload::Blank(pb::Blank {})),
                },
                pb::Entry {
                    log_id: Some(pb::LogId { term: 3, index: 11 }),
                    payload: Some(pb::entry::Payload::Membership(membership)),
                },
            ],
            leader_commit: Some(pb::LogId { term: 3, index: 10 }),
        }
    }

    /// A node decodes whatever a peer sends: random and mutated bytes must come out as a
    /// message or an error, never a panic.
    #[test]
    fn random_and_mutated_peer_messages_never_panic_the_decoders() {
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        let append = sample_append().encode_to_vec();
        let vote = pb::VoteRequest {
            vote: Some(pb::Vote {
                term: 3,
                voted_for: Some(2),
                committed: false,
            }),
            last_log_id: Some(pb::LogId { term: 2, index: 9 }),
            leadership_transfer: false,
        }
        .encode_to_vec();
        let response = append_response(pb::append_response::Result::HigherVote(pb::Vote::default())).encode_to_vec();
        let (mut decoded, mut converted) = (0, 0);
        for _ in 0..20_000 {
            if let Ok(req) = pb::AppendRequest::decode(noise.mutate(&append).as_slice()) {
                decoded += 1;
                converted += usize::from(append_request_from_pb(req).is_ok());
            }
            if let Ok(req) = pb::VoteRequest::decode(noise.mutate(&vote).as_slice()) {
                decoded += 1;
                converted += usize::from(vote_request_from_pb(&req).is_ok());
            }
            if let Ok(resp) = pb::AppendResponse::decode(noise.mutate(&response).as_slice()) {
                decoded += 1;
                let _ = append_response_from_pb(resp);
                let _ = stream_result_from_pb(resp);
            }
            if let Ok(resp) = pb::VoteResponse::decode(noise.mutate(&vote).as_slice()) {
                let _ = vote_response_from_pb(resp);
            }
            if let Ok(m) = pb::StoredMembership::decode(noise.mutate(&append).as_slice()) {
                let _ = stored_membership_from_pb(&m);
            }
        }
        // The mutations reached the conversions, not only the protobuf decoder.
        assert!(
            decoded > 5_000 && converted > 1_000,
            "decoded {decoded}, converted {converted}"
        );
    }
}
