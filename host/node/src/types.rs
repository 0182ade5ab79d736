//! The Raft type configuration, and the conversions between openraft's types and the protobuf
//! messages that carry them over the wire and onto disk. Every openraft-facing type lives in this
//! crate, so an openraft upgrade is one deliberate change here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use openraft::entry::RaftEntry;
use openraft::impls::leader_id_std;
use openraft::{BasicNode, EntryPayload};
use prost::Message;

use crate::pb;

openraft::declare_raft_types!(
    /// wasmraft's Raft types: u64 node ids, standard Raft leader ids (one leader per term, log ids
    /// are (term, index)), commands and results as protobuf messages.
    pub TypeConfig:
        D = pb::Command,
        R = pb::CommandResult,
        NodeId = u64,
        Node = BasicNode,
        Term = u64,
        LeaderId = leader_id_std::LeaderId<u64, u64>,
);

pub type NodeId = u64;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, BasicNode>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot<SD> = openraft::type_config::alias::SnapshotOf<TypeConfig, SD>;

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
            Some(pb::command::Kind::Activate(a)) => write!(f, "activate {} = {}", a.name, a.sha256),
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
