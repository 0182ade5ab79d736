//! The state digest: two sha256 chains, one over every command entry's (index, result), one over
//! every non-empty write set in log order (kept by the apply backend). Neither depends on how the
//! log was cut into apply calls, so replicas that batch differently agree; `cluster status` shows
//! it with the index it was taken at.

use std::io;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::pb;
use crate::util::io_err;

/// The results chain after the command entry at `index` answered `result`.
pub(crate) fn chain_result(chain: &[u8; 32], index: u64, result: &pb::CommandResult) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(chain);
    h.update(index.to_be_bytes());
    h.update(result.encode_to_vec());
    h.finalize().into()
}

/// The digest shown to operators: one hash over both chains, in hex.
pub(crate) fn state_digest_hex(results: &[u8; 32], writes: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(results);
    h.update(writes);
    hex::encode(h.finalize())
}

/// The stored digest (64 bytes) as its (results, writes) chains.
pub(crate) fn split(stored: &[u8]) -> io::Result<([u8; 32], [u8; 32])> {
    match (stored.get(..32), stored.get(32..)) {
        (Some(results), Some(writes)) if stored.len() == 64 => {
            Ok((results.try_into().map_err(io_err)?, writes.try_into().map_err(io_err)?))
        }
        _ => Err(io_err(format!("a state digest of {} bytes, not 64", stored.len()))),
    }
}
