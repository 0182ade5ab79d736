//! Snapshot files: what the state machine had applied, each active plugin's component, and each
//! plugin's kv space as its `snapshot` export streams it.
//!
//! Layout (format 1): the magic `WRSNAP\0\x01`; a length-prefixed [`pb::SnapshotHeader`]; then per
//! plugin of the header's registry, in order, the component (u64 length + bytes) and the plugin's
//! snapshot stream (u32-length-prefixed chunks, ended by a zero length); then the sha256 of
//! everything before it. Files are written to a temp name, fsynced and renamed.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};
use wasmraft_store::SmBatch;

use crate::backend::SharedPending;
use crate::engine::BUILTIN_PREFIX;
use crate::log_store::io_err;
use crate::pb;
use crate::state_machine::{APPLIED, ActivePlugin, DIGEST, MEMBERSHIP, REGISTRY, Shared, component_key};
use crate::types::{SnapshotMeta, opt_log_id_from_pb, stored_membership_from_pb};

pub const FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"WRSNAP\0\x01";
const SUFFIX: &str = ".snap";
/// Snapshots kept in the snapshot directory (the newest ones).
const KEEP: usize = 2;
/// Largest chunk asked of a plugin's snapshot export.
const CHUNK: u32 = 1 << 20;

/// A snapshot on disk.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub size: u64,
}

/// Writes, and hashes, everything that passes through.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn file_name(header: &pb::SnapshotHeader) -> String {
    let (term, index) = header.last_log_id.as_ref().map_or((0, 0), |id| (id.term, id.index));
    format!("snapshot-{term:020}-{index:020}{SUFFIX}")
}

/// Writes a snapshot of the current state into `dir`. The caller keeps the state still.
pub(crate) fn write(shared: &Shared, dir: &Path, header: &pb::SnapshotHeader) -> io::Result<SnapshotFile> {
    let name = file_name(header);
    let tmp = dir.join(format!("{name}.tmp"));
    let file = File::create(&tmp)?;
    let mut out = HashingWriter {
        inner: BufWriter::new(file),
        hasher: Sha256::new(),
    };
    out.write_all(MAGIC)?;
    let header_bytes = header.encode_to_vec();
    out.write_all(&(header_bytes.len() as u32).to_le_bytes())?;
    out.write_all(&header_bytes)?;
    let registry = header.registry.clone().unwrap_or_default();
    for info in &registry.plugins {
        let component = if info.sha256.starts_with(BUILTIN_PREFIX) {
            Vec::new()
        } else {
            shared
                .store
                .blob_get(&component_key(&info.sha256))
                .map_err(io_err)?
                .ok_or_else(|| io_err(format!("component {} of {} missing", info.sha256, info.name)))?
        };
        out.write_all(&(component.len() as u64).to_le_bytes())?;
        out.write_all(&component)?;
        let plugin = shared
            .plugin(&info.name)
            .ok_or_else(|| io_err(format!("plugin {} not active", info.name)))?;
        let mut write_error = None;
        let result = plugin.snapshot(CHUNK, |chunk| {
            let written = out
                .write_all(&(chunk.len() as u32).to_le_bytes())
                .and_then(|_| out.write_all(&chunk));
            if let Err(e) = written {
                write_error = Some(e);
                return Err(wasmraft_runtime::RuntimeError::Engine("snapshot write failed".into()));
            }
            Ok(())
        });
        if let Some(e) = write_error {
            return Err(e);
        }
        result
            .map_err(|e| io_err(format!("plugin {}: {e}", info.name)))?
            .map_err(|e| io_err(format!("plugin {} snapshot failed: {e}", info.name)))?;
        out.write_all(&0u32.to_le_bytes())?;
    }
    let digest = out.hasher.finalize();
    let mut inner = out.inner.into_inner().map_err(|e| e.into_error())?;
    inner.write_all(&digest)?;
    inner.sync_all()?;
    let path = dir.join(&name);
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    let size = fs::metadata(&path)?.len();
    prune(dir, &path)?;
    Ok(SnapshotFile { path, size })
}

/// Deletes all but the newest [`KEEP`] snapshots, never `keep`.
fn prune(dir: &Path, keep: &Path) -> io::Result<()> {
    let mut names = list(dir)?;
    names.sort();
    let excess = names.len().saturating_sub(KEEP);
    for path in names.into_iter().take(excess) {
        if path != keep {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "snap") {
            out.push(path);
        }
    }
    Ok(out)
}

/// The newest snapshot in `dir`.
pub(crate) fn current(dir: &Path) -> io::Result<Option<SnapshotFile>> {
    let Some(path) = list(dir)?.into_iter().max() else {
        return Ok(None);
    };
    let size = fs::metadata(&path)?.len();
    Ok(Some(SnapshotFile { path, size }))
}

fn read_exact_vec(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_header_from(r: &mut impl Read) -> io::Result<pb::SnapshotHeader> {
    let mut magic = [0; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io_err("not a wasmraft snapshot (bad magic)"));
    }
    let len = read_u32(r)? as usize;
    if len > 64 << 20 {
        return Err(io_err("snapshot header over 64 MiB"));
    }
    let header = pb::SnapshotHeader::decode(read_exact_vec(r, len)?.as_slice()).map_err(io_err)?;
    if header.format != FORMAT {
        return Err(io_err(format!(
            "snapshot format {} is unknown (this node reads {FORMAT})",
            header.format
        )));
    }
    Ok(header)
}

/// Reads a snapshot's header (without checking the whole file).
pub(crate) fn read_header(path: &Path) -> io::Result<pb::SnapshotHeader> {
    read_header_from(&mut BufReader::new(File::open(path)?))
}

/// Checks the whole-file sha256.
fn verify(path: &Path) -> io::Result<()> {
    let size = fs::metadata(path)?.len();
    if size < (MAGIC.len() + 4 + 32) as u64 {
        return Err(io_err("snapshot truncated"));
    }
    let mut r = BufReader::new(File::open(path)?);
    let mut hasher = Sha256::new();
    io::copy(&mut (&mut r).take(size - 32), &mut hasher)?;
    let mut expected = [0u8; 32];
    r.read_exact(&mut expected)?;
    if hasher.finalize().as_slice() != expected {
        return Err(io_err("snapshot checksum mismatch (corrupted or truncated)"));
    }
    Ok(())
}

pub(crate) fn meta_of(header: &pb::SnapshotHeader) -> io::Result<SnapshotMeta> {
    let membership = header
        .membership
        .as_ref()
        .ok_or_else(|| io_err("snapshot without membership"))?;
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(header.last_log_id.as_ref()),
        last_membership: stored_membership_from_pb(membership).map_err(io_err)?,
    })
}

/// Replaces the whole state machine with the snapshot's, in one atomic write: components, every
/// plugin's kv space (through its `restore` export), applied log id, membership, registry, digest.
pub(crate) fn install(shared: &Shared, pending: &SharedPending, file: &SnapshotFile) -> io::Result<pb::SnapshotHeader> {
    verify(&file.path)?;
    let mut r = BufReader::new(File::open(&file.path)?);
    let header = read_header_from(&mut r)?;
    let registry = header.registry.clone().unwrap_or_default();
    let store = &shared.store;
    {
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        let batch: &mut SmBatch = &mut p.batch;
        for old in shared.plugins() {
            batch.clear_space(&old.info.name);
        }
        for info in &registry.plugins {
            batch.clear_space(&info.name);
        }
    }
    for info in &registry.plugins {
        let len = read_u64(&mut r)?;
        if len > shared.runtime.limits().max_component_bytes as u64 {
            return Err(io_err(format!("snapshot component {} too large", info.sha256)));
        }
        let component = read_exact_vec(&mut r, len as usize)?;
        let builtin = info.sha256.starts_with(BUILTIN_PREFIX);
        if !builtin && hex::encode(Sha256::digest(&component)) != info.sha256 {
            return Err(io_err(format!(
                "snapshot component for {} does not match its sha256",
                info.name
            )));
        }
        let plugin = ActivePlugin::new(shared, pending, info.clone(), &component).map_err(io_err)?;
        let mut chunks = Vec::new();
        loop {
            let len = read_u32(&mut r)?;
            if len == 0 {
                break;
            }
            chunks.push(read_exact_vec(&mut r, len as usize)?);
        }
        plugin
            .restore(chunks)
            .map_err(|e| io_err(format!("plugin {}: {e}", info.name)))?
            .map_err(|e| io_err(format!("plugin {} restore failed: {e}", info.name)))?;
        if !builtin {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            p.batch.put_blob(&component_key(&info.sha256), &component);
        }
    }
    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
    let mut batch = p.take_batch(store);
    drop(p);
    if let Some(id) = &header.last_log_id {
        batch.put_meta(APPLIED, &id.encode_to_vec());
    }
    if let Some(m) = &header.membership {
        batch.put_meta(MEMBERSHIP, &m.encode_to_vec());
    }
    batch.put_meta(REGISTRY, &registry.encode_to_vec());
    if header.digest.len() == 64 {
        batch.put_meta(DIGEST, &header.digest);
    }
    let _writing = shared.flush_lock.write().unwrap_or_else(|e| e.into_inner());
    store.write(batch).map_err(io_err)?;
    Ok(header)
}

/// Makes `file` this node's current snapshot (copying it into `dir` if it lives elsewhere) and
/// prunes older ones.
pub(crate) fn keep_as_current(dir: &Path, file: &SnapshotFile) -> io::Result<()> {
    let header = read_header(&file.path)?;
    let target = dir.join(file_name(&header));
    if file.path != target {
        let tmp = dir.join(format!("{}.tmp", file_name(&header)));
        fs::copy(&file.path, &tmp)?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()?;
    }
    prune(dir, &target)
}
