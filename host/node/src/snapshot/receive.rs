//! Receiving a snapshot from the leader: the resumable incoming file, checked chunk by chunk and
//! as a whole before openraft installs it.

use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::format::*;
use super::*;
use crate::types::{LogId, Snapshot, Vote};
use crate::util::blocking;
use crate::wire::log_id_from_pb;

/// A snapshot file arriving from the leader, kept across broken transfers and restarts:
/// `incoming/<sha256>.part`, with `<sha256>.mark` recording how many bytes are fsynced.
pub(crate) struct Incoming {
    file: File,
    path: PathBuf,
    mark: PathBuf,
    size: u64,
    written: u64,
    synced: u64,
    /// The sha256 of the bytes before the trailer, as they arrive (no second pass over the file).
    hasher: Sha256,
    trailer: Vec<u8>,
}

impl Incoming {
    /// Opens the partial file for the snapshot `sha256` of `size` bytes, keeping what an earlier
    /// transfer of the same snapshot fsynced, and deletes partial files of other snapshots.
    pub fn open(dir: &Path, sha256: &[u8; 32], size: u64) -> io::Result<Incoming> {
        if size < TRAILER {
            return Err(invalid(format!("a snapshot of {size} bytes")));
        }
        fs::create_dir_all(dir)?;
        // The announced size must fit, with room left for the log and RocksDB: a sender cannot
        // fill the disk by announcing a huge file.
        let free = free_bytes(dir)?;
        if size.saturating_add(DISK_RESERVE_BYTES) > free {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "a snapshot of {size} bytes does not fit: {free} bytes free, {DISK_RESERVE_BYTES} kept in reserve"
                ),
            ));
        }
        let id = hex::encode(sha256);
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&id)) {
                fs::remove_file(&path)?;
            }
        }
        let path = dir.join(format!("{id}.part"));
        let mark = dir.join(format!("{id}.mark"));
        let kept = match fs::read(&mark) {
            Ok(bytes) if bytes.len() == 8 => u64::from_le_bytes(bytes.try_into().unwrap_or_default()),
            _ => 0,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let on_disk = file.metadata()?.len();
        let resume = kept.min(on_disk).min(size);
        file.set_len(resume)?;
        let mut incoming = Incoming {
            file: file.try_clone()?,
            path,
            mark,
            size,
            written: 0,
            synced: resume,
            hasher: Sha256::new(),
            trailer: Vec::with_capacity(TRAILER as usize),
        };
        // What an earlier transfer kept counts towards the checksum: hash it once.
        let mut kept_bytes = BufReader::with_capacity(1 << 20, &mut file);
        let mut buf = vec![0; 1 << 20];
        while incoming.written < resume {
            let want = (resume - incoming.written).min(buf.len() as u64) as usize;
            let n = kept_bytes.read(&mut buf[..want])?;
            if n == 0 {
                return Err(invalid("the partial snapshot shrank while reading it"));
            }
            incoming.digest(&buf[..n]);
            incoming.written += n as u64;
        }
        incoming.file.seek(SeekFrom::Start(resume))?;
        Ok(incoming)
    }

    /// Feeds bytes that land at `self.written` to the checksum (or the trailer).
    fn digest(&mut self, data: &[u8]) {
        let body_end = self.size - TRAILER;
        let in_body = body_end.saturating_sub(self.written).min(data.len() as u64) as usize;
        self.hasher.update(&data[..in_body]);
        self.trailer.extend_from_slice(&data[in_body..]);
    }

    /// Whether the header has arrived whole (and passed its checks: an error if it failed them).
    /// Read through a descriptor of its own, so the write position is not moved.
    fn header_arrived(&self) -> Result<bool, Rejection> {
        let file = File::open(&self.path).map_err(|e| Rejection::Corrupted(e.to_string()))?;
        match read_header_from(&mut BufReader::new(file.take(self.written))) {
            Ok(_) => Ok(true),
            Err(Rejection::Truncated(_)) => Ok(false),
            Err(rejection) => Err(rejection),
        }
    }

    /// Bytes held: where the sender continues.
    pub fn offset(&self) -> u64 {
        self.written
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the bytes at `offset` (which must be where the file ends).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset != self.written {
            return Err(invalid(format!("chunk at {offset}, expected {}", self.written)));
        }
        if offset + data.len() as u64 > self.size {
            return Err(invalid("chunk past the announced size"));
        }
        self.file.write_all(data)?;
        self.digest(data);
        self.written += data.len() as u64;
        if self.written - self.synced >= INCOMING_SYNC_BYTES || self.written == self.size {
            self.sync()?;
        }
        Ok(())
    }

    pub(super) fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let tmp = self.mark.with_extension("mark.tmp");
        fs::write(&tmp, self.written.to_le_bytes())?;
        fs::rename(&tmp, &self.mark)?;
        self.synced = self.written;
        Ok(())
    }

    /// The complete file, for the install; `verified` when its sha256 trailer matches what
    /// arrived. Its mark stays until the install is done (a crash in between finds the file
    /// whole); [`forget`] removes both.
    pub fn complete(self) -> SnapshotFile {
        let verified = self.written == self.size && self.hasher.finalize().as_slice() == self.trailer.as_slice();
        SnapshotFile {
            path: self.path,
            size: self.size,
            verified,
        }
    }
}

/// Deletes an incoming file (if the install did not move it away) and its mark.
pub(crate) fn forget(part: &Path) {
    let _ = fs::remove_file(part);
    let _ = fs::remove_file(part.with_extension("mark"));
}

/// Receives the rest of a transfer into `incoming`: each chunk CRC-checked, written and
/// acknowledged on `acks`; then the whole file checked (sha256 as it arrived, format, header
/// against the announced `last_log_id` and the sender's `vote`). Answers the verified snapshot,
/// the path to forget once installed, and the bytes received; `None` when the stream broke off
/// (what arrived is kept for a resume) or the file was rejected (counted, logged, deleted, and
/// the sender told).
pub(crate) async fn receive(
    mut input: Streaming<pb::SnapshotChunk>,
    mut incoming: Incoming,
    vote: Vote,
    last_log_id: LogId,
    tx: &mpsc::Sender<Result<pb::SnapshotAck, Status>>,
    stats: &SnapshotStats,
) -> Option<(Snapshot<SnapshotFile>, PathBuf, u64)> {
    let resumed = incoming.offset();
    let started = std::time::Instant::now();
    let mut header_checked = false;
    // Receive until the file is whole; a broken stream keeps what arrived for a resume.
    while incoming.offset() < incoming.size() {
        let Ok(message) = tokio::time::timeout(RECEIVE_IDLE_TIMEOUT, input.message()).await else {
            tracing::info!(
                received = incoming.offset(),
                "snapshot sender idle for {RECEIVE_IDLE_TIMEOUT:?}; dropped the transfer (kept what arrived)"
            );
            return None;
        };
        let data = match message {
            Ok(Some(pb::SnapshotChunk {
                part: Some(pb::snapshot_chunk::Part::Data(data)),
            })) => data,
            Ok(Some(_)) => {
                let _ = tx
                    .send(Err(Status::invalid_argument("a snapshot stream has one `start`")))
                    .await;
                return None;
            }
            Ok(None) | Err(_) => {
                tracing::info!(
                    received = incoming.offset(),
                    size = incoming.size(),
                    "snapshot transfer broke off; kept what arrived for a resume"
                );
                return None;
            }
        };
        if crc32fast::hash(&data.data) != data.crc32 {
            let _ = tx
                .send(Err(Status::data_loss(format!(
                    "snapshot chunk at {} failed its CRC check",
                    data.offset
                ))))
                .await;
            return None;
        }
        if let Err(e) = blocking(|| incoming.write(data.offset, &data.data)) {
            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
            return None;
        }
        // The header is checked as soon as it is whole: a forged one ends the transfer before
        // its body is received.
        if !header_checked {
            match blocking(|| incoming.header_arrived()) {
                Ok(arrived) => header_checked = arrived,
                Err(rejection) => {
                    reject(&incoming.path, rejection, vote, tx, stats).await;
                    return None;
                }
            }
        }
        let ack = pb::SnapshotAck {
            offset: incoming.offset(),
            ..Default::default()
        };
        if tx.send(Ok(ack)).await.is_err() {
            return None;
        }
    }
    let received = incoming.size() - resumed;
    // The sha256 was taken as the bytes arrived; only a file that fails it is read
    // again, to tell corrupted from truncated.
    let file = incoming.complete();
    let path = file.path.clone();
    let checked = blocking(|| match file.verified {
        true => check_header(&path),
        false => check(&path),
    });
    let header = checked.and_then(|header| {
        // A snapshot cannot end in a term beyond the vote of the leader sending it.
        let term = header.last_log_id.as_ref().map_or(0, |id| id.term);
        if term > vote.leader_id.term {
            return Err(Rejection::Corrupted(format!(
                "it ends in term {term}, after its sender's term {}",
                vote.leader_id.term
            )));
        }
        if header.last_log_id.as_ref().map(log_id_from_pb) != Some(last_log_id) {
            return Err(Rejection::Corrupted(
                "its header does not match the announced last log id".into(),
            ));
        }
        Ok(header)
    });
    let header = match header {
        Ok(header) => header,
        Err(rejection) => {
            reject(&path, rejection, vote, tx, stats).await;
            return None;
        }
    };
    stats.record(Phase::Transfer, phase_stats(received, received, started));
    let meta = match meta_of(&header) {
        Ok(meta) => meta,
        Err(e) => {
            forget(&path);
            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
            return None;
        }
    };
    let file = SnapshotFile { verified: true, ..file };
    let snapshot = Snapshot { meta, snapshot: file };
    Some((snapshot, path, received))
}

/// Counts, logs and deletes a rejected file, and tells the sender.
async fn reject(
    path: &Path,
    rejection: Rejection,
    vote: Vote,
    tx: &mpsc::Sender<Result<pb::SnapshotAck, Status>>,
    stats: &SnapshotStats,
) {
    stats.reject(&rejection);
    warn!(from_term = vote.leader_id.term, "rejected a {rejection}");
    forget(path);
    let _ = tx.send(Err(Status::data_loss(format!("rejected: {rejection}")))).await;
}
