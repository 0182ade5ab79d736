//! The Raft type configuration and its type aliases. Every openraft-facing type lives in this
//! crate, so an openraft upgrade is one deliberate change here (and in `wire`, which converts them
//! to and from the protobuf messages on the wire and on disk).

use openraft::BasicNode;
use openraft::impls::leader_id_std;

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
