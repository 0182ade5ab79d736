//! openraft, adapted: the log store (with its group-commit sync thread), the state machine
//! adapter, and the peer network (client side) with its fault layer.

mod ack_gate;
mod coalesce;
mod faults;
mod inline;
mod log_store;
mod network;
mod standing;
mod state_machine;

pub use faults::{Faults, LinkFault};
pub use log_store::LogStore;
pub(crate) use network::Network;
pub use state_machine::StateMachine;

use crate::types::TypeConfig;

/// A node's Raft.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;
