//! # wasmraft-node: a wasmraft node
//!
//! Raft (openraft) over the RocksDB store ([`wasmraft_store`]), with the replicated state machine
//! running plugins through [`wasmraft_runtime`], and tonic gRPC for peers and clients.
//! Every openraft and protobuf type stays in this crate.
//!
//! - [`Node::start`] opens a node's data, starts Raft and serves the `Peer` and `Api` services.
//! - [`pb`] is the gRPC interface (`proto/wasmraft.proto`); [`pb::api_client::ApiClient`] is the
//!   client any program can use.

mod backend;
mod engine;
mod log_store;
mod network;
mod node;
mod service;
mod snapshot;
mod state_machine;
pub mod types;

/// The generated protobuf messages and gRPC services.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("wasmraft.v1");
}

pub use engine::BUILTINS;
pub use log_store::LogStore;
pub use network::{Faults, LinkFault};
pub use node::{Node, NodeConfig, Raft, SnapshotConfig};
pub use service::DEPLOY_CHUNK_BYTES;
pub use snapshot::SnapshotSettings;
pub use state_machine::StateMachine;
