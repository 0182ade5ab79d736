//! # wasmraft-node: a wasmraft node
//!
//! Raft (openraft) over the RocksDB store ([`wasmraft_store`]), with the replicated state machine
//! running plugins through [`wasmraft_runtime`], and tonic gRPC for peers and clients.
//! Every openraft and protobuf type stays in this crate.
//!
//! - [`Node::start`] opens a node's data, starts Raft and serves the `Peer` and `Api` services.
//!
//! The modules follow the data; imports run one way: `node` (assembly) -> `api` (gRPC
//! handlers) -> `cluster` (what the handlers ask of the node: writes, reads, deploy, admin) ->
//! `raft` (openraft's log store, state machine adapter, network) -> `snapshot` (files, build,
//! install, transfer) -> `sm` (the apply loop, plugins, backends) -> `wire` / `types` / `util`.
//! - [`pb`] is the gRPC interface (`proto/wasmraft.proto`); [`pb::api_client::ApiClient`] is the
//!   client any program can use.

pub mod activity;
mod api;
mod cluster;
pub mod metrics;
mod node;
mod raft;
pub mod security;
mod sm;
mod snapshot;
pub mod types;
mod util;
mod wire;

/// The generated protobuf messages and gRPC services.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("wasmraft.v1");
}

pub use cluster::{DEPLOY_CHUNK_BYTES, Member, NodeInner, diverged, process_cpu_micros};
pub use node::{Node, NodeConfig, RaftConfig};
pub use raft::{Faults, LinkFault, LogStore, Raft, StateMachine};
pub use sm::BUILTINS;
pub use snapshot::{SnapshotConfig, SnapshotSettings};
/// The rule every plugin name follows (it names the plugin's key space).
pub use wasmraft_store::check_space as check_plugin_name;
