//! Sending a snapshot to a peer: from where the receiver's copy ends (a broken transfer resumes),
//! in CRC-checked chunks, at most [`SNAPSHOT_WINDOW`] ahead of its acknowledgements and under the
//! configured rate cap; then the receiver verifies and installs the file.

use std::time::{Duration, Instant};

use openraft::errors::{NetworkError, RPCError, StreamingError, Unreachable};
use openraft::raft::SnapshotResponse;
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::transport::Channel;
use tracing::info;

use super::{SnapshotFile, Snapshots, format};
use crate::pb::{self, peer_client::PeerClient};
use crate::types::{NodeId, Snapshot, TypeConfig, Vote};
use crate::wire::{Malformed, vote_from_pb, vote_to_pb};

/// Snapshot chunks sent ahead of the receiver's acknowledgements.
const SNAPSHOT_WINDOW: u64 = 4;
/// How long a snapshot sender waits for the receiver to acknowledge a chunk.
const SNAPSHOT_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it waits for the receiver to verify and install a whole snapshot.
const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(3600);

fn malformed(e: Malformed) -> StreamingError<TypeConfig> {
    StreamingError::from(RPCError::Network(NetworkError::from_string(format!("peer sent {e}"))))
}

fn status_to_streaming(status: tonic::Status) -> StreamingError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
            StreamingError::from(RPCError::Unreachable(Unreachable::new(&status)))
        }
        _ => StreamingError::from(RPCError::Network(NetworkError::new(&status))),
    }
}

fn snapshot_io(e: std::io::Error) -> StreamingError<TypeConfig> {
    StreamingError::StorageError(StorageError::from_io_error(
        ErrorSubject::Snapshot(None),
        ErrorVerb::Read,
        e,
    ))
}

fn snapshot_peer(message: String) -> StreamingError<TypeConfig> {
    StreamingError::from(RPCError::Network(NetworkError::from_string(message)))
}

fn closed() -> StreamingError<TypeConfig> {
    snapshot_peer("the receiver closed the snapshot stream".into())
}

/// The receiver's next acknowledgement, within `wait`.
async fn next_ack(
    acks: &mut tonic::Streaming<pb::SnapshotAck>,
    wait: Duration,
) -> Result<pb::SnapshotAck, StreamingError<TypeConfig>> {
    match tokio::time::timeout(wait, acks.message()).await {
        Err(_) => Err(snapshot_peer(format!("no snapshot acknowledgement in {wait:?}"))),
        Ok(Err(status)) => Err(status_to_streaming(status)),
        Ok(Ok(None)) => Err(closed()),
        Ok(Ok(Some(ack))) => Ok(ack),
    }
}

/// Sends `snapshot` to `target` through `client`; answers the receiver's vote once it installed it.
pub(crate) async fn send(
    mut client: PeerClient<Channel>,
    target: NodeId,
    snapshots: &Snapshots,
    vote: Vote,
    snapshot: Snapshot<SnapshotFile>,
) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
    let file = snapshot.snapshot;
    let (size, sha256) = format::identity(&file.path).map_err(snapshot_io)?;
    let chunk_bytes = snapshots.settings.chunk_bytes.max(1) as u64;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(SNAPSHOT_WINDOW as usize);
    let start = pb::SnapshotChunk {
        part: Some(pb::snapshot_chunk::Part::Start(pb::SnapshotStart {
            vote: Some(vote_to_pb(&vote)),
            size,
            sha256: sha256.to_vec(),
            last_log_id: snapshot.meta.last_log_id.as_ref().map(crate::wire::log_id_to_pb),
        })),
    };
    tx.send(start).await.map_err(|_| closed())?;
    let mut acks = client
        .install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(status_to_streaming)?
        .into_inner();
    let first = next_ack(&mut acks, SNAPSHOT_ACK_TIMEOUT).await?;
    if first.installed {
        // The receiver has this state already (or newer): nothing to send.
        let vote = vote_from_pb(first.vote.as_ref()).map_err(malformed)?;
        return Ok(SnapshotResponse::new(vote));
    }
    let mut offset = first.offset;
    if offset > size {
        return Err(snapshot_peer(format!(
            "the receiver asked for offset {offset} of {size}"
        )));
    }
    if offset > 0 {
        info!(target = target, offset, size, "resuming a snapshot transfer");
    }
    let mut reader = tokio::fs::File::open(&file.path).await.map_err(snapshot_io)?;
    reader
        .seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(snapshot_io)?;
    let started = Instant::now();
    let first_offset = offset;
    let rate = snapshots.settings.max_send_bytes_per_sec;
    let mut acked = offset;
    while offset < size {
        let len = chunk_bytes.min(size - offset) as usize;
        let mut data = vec![0; len];
        reader.read_exact(&mut data).await.map_err(snapshot_io)?;
        let chunk = pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Data(pb::SnapshotData {
                offset,
                crc32: crc32fast::hash(&data),
                data: data.into(),
            })),
        };
        tx.send(chunk).await.map_err(|_| closed())?;
        offset += len as u64;
        while offset - acked > SNAPSHOT_WINDOW * chunk_bytes {
            acked = next_ack(&mut acks, SNAPSHOT_ACK_TIMEOUT).await?.offset;
        }
        if rate > 0 {
            let due = Duration::from_secs_f64((offset - first_offset) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    loop {
        let ack = next_ack(&mut acks, SNAPSHOT_INSTALL_TIMEOUT).await?;
        if ack.installed {
            let vote = vote_from_pb(ack.vote.as_ref()).map_err(malformed)?;
            return Ok(SnapshotResponse::new(vote));
        }
    }
}
