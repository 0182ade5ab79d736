//! Snapshot files: what the state machine had applied, every blob (components, pieces of uploads
//! in progress) and each active plugin's kv space as its `snapshot` export streams it.
//!
//! Layout (format 2):
//! - the magic `WRSNAP\0\x02`, then a u32-length-prefixed [`pb::SnapshotHeader`] (last log id,
//!   membership, the plugin registry with names, sha256s and configs, the state digest);
//! - one zstd stream with, in order:
//!   - the blobs section: (u32 key length, key, u64 value length, value) records, ended by a zero
//!     key length;
//!   - one section per plugin of the header's registry, in registry order: the chunks of its
//!     `snapshot` export as (u32 length, bytes), ended by a zero length;
//! - the sha256 of everything before it (32 bytes): the file's identity.
//!
//! Integers are little-endian. Files are written to a temp name, fsynced and renamed; the newest
//! `keep` are kept. Nothing is ever held whole in memory: building streams plugin chunks through
//! zstd into the file, installing streams them back out of it into fresh key spaces.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prost::Message;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use wasmraft_runtime::KvBackend;
use wasmraft_store::View;

use crate::backend::{SharedPending, Staging, StagingBackend};
use crate::engine::{BUILTIN_PREFIX, Engine};
use crate::log_store::io_err;
use crate::pb;
use crate::state_machine::{ActivePlugin, Shared, component_key};
use crate::types::{SnapshotMeta, opt_log_id_from_pb, stored_membership_from_pb};

pub const FORMAT: u32 = 2;
const MAGIC: &[u8; 8] = b"WRSNAP\0\x02";
/// Every format's magic starts with this; the last byte is the format.
const MAGIC_STEM: &[u8; 7] = b"WRSNAP\0";
const SUFFIX: &str = "snap";
/// The sha256 trailer.
const TRAILER: u64 = 32;
/// Largest chunk asked of a plugin's snapshot export, and read back on install.
const CHUNK: u32 = 1 << 20;
/// Largest blob key a snapshot may hold (component and upload keys are under 100 bytes).
const MAX_BLOB_KEY: u32 = 4096;
/// A receiver fsyncs an incoming file (and records how far it got) every this many bytes: a
/// transfer broken by a crash resumes from there.
const INCOMING_SYNC_BYTES: u64 = 4 << 20;

/// How a node builds and keeps snapshots.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    pub dir: PathBuf,
    /// Snapshot files kept (the newest).
    pub keep: usize,
    pub zstd_level: i32,
}

/// A snapshot on disk.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub size: u64,
    /// Its whole-file sha256 was checked since it was written (a received file).
    pub verified: bool,
}

/// Why a received snapshot is refused. The node stays on its state and counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("corrupted snapshot: {0}")]
    Corrupted(String),
    #[error("truncated snapshot: {0}")]
    Truncated(String),
    #[error("stale snapshot: {0}")]
    Stale(String),
    #[error("unknown snapshot format: {0}")]
    Format(String),
}

/// A node's snapshot counters, shown by `cluster status`.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    pub building: AtomicBool,
    pub built: AtomicU64,
    pub build_failed: AtomicU64,
    last_build_error: Mutex<String>,
    pub sent: AtomicU64,
    pub installed: AtomicU64,
    pub resumed: AtomicU64,
    pub resumed_bytes: AtomicU64,
    rejected_corrupted: AtomicU64,
    rejected_truncated: AtomicU64,
    rejected_stale: AtomicU64,
    rejected_format: AtomicU64,
    last_build: Mutex<pb::PhaseStats>,
    last_transfer: Mutex<pb::PhaseStats>,
    last_install: Mutex<pb::PhaseStats>,
}

/// The phases [`SnapshotStats`] times.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    Build,
    Transfer,
    Install,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SnapshotStats {
    pub fn reject(&self, rejection: &Rejection) {
        let counter = match rejection {
            Rejection::Corrupted(_) => &self.rejected_corrupted,
            Rejection::Truncated(_) => &self.rejected_truncated,
            Rejection::Stale(_) => &self.rejected_stale,
            Rejection::Format(_) => &self.rejected_format,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed build and keeps its error for `cluster status` and `wasmraft snapshot`.
    pub fn build_failed(&self, error: String) {
        *locked(&self.last_build_error) = error;
        self.build_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn last_build_error(&self) -> String {
        locked(&self.last_build_error).clone()
    }

    pub fn record(&self, phase: Phase, stats: pb::PhaseStats) {
        let slot = match phase {
            Phase::Build => &self.last_build,
            Phase::Transfer => &self.last_transfer,
            Phase::Install => &self.last_install,
        };
        *locked(slot) = stats;
    }

    pub fn last(&self, phase: Phase) -> pb::PhaseStats {
        match phase {
            Phase::Build => *locked(&self.last_build),
            Phase::Transfer => *locked(&self.last_transfer),
            Phase::Install => *locked(&self.last_install),
        }
    }

    /// The counters and phase times (the caller fills in the snapshot and purge positions).
    pub fn to_pb(&self) -> pb::SnapshotStatus {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        pb::SnapshotStatus {
            building: self.building.load(Ordering::Relaxed),
            built: n(&self.built),
            build_failed: n(&self.build_failed),
            last_build_error: self.last_build_error(),
            sent: n(&self.sent),
            installed: n(&self.installed),
            resumed: n(&self.resumed),
            resumed_bytes: n(&self.resumed_bytes),
            rejected_corrupted: n(&self.rejected_corrupted),
            rejected_truncated: n(&self.rejected_truncated),
            rejected_stale: n(&self.rejected_stale),
            rejected_format: n(&self.rejected_format),
            last_build: Some(self.last(Phase::Build)),
            last_transfer: Some(self.last(Phase::Transfer)),
            last_install: Some(self.last(Phase::Install)),
            ..Default::default()
        }
    }
}

pub(crate) fn phase_stats(raw_bytes: u64, file_bytes: u64, started: Instant) -> pb::PhaseStats {
    pb::PhaseStats {
        raw_bytes,
        file_bytes,
        micros: started.elapsed().as_micros() as u64,
    }
}

/// Aborts the process at a named point when `WASMRAFT_FAILPOINT` names it: how the crash tests
/// stop a node exactly there (an abort, like a power cut for the process: nothing is cleaned up).
pub(crate) fn failpoint(name: &str) {
    if std::env::var("WASMRAFT_FAILPOINT").is_ok_and(|armed| armed == name) {
        eprintln!("wasmraft: failpoint {name}: aborting");
        std::process::abort();
    }
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

/// Counts the bytes that pass through (the uncompressed size of a snapshot body).
struct Counted<T> {
    inner: T,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

fn file_name(header: &pb::SnapshotHeader) -> String {
    let (term, index) = header.last_log_id.as_ref().map_or((0, 0), |id| (id.term, id.index));
    format!("snapshot-{term:020}-{index:020}.{SUFFIX}")
}

// ---------------------------------------------------------------- build

/// What a build needs, captured between two apply calls: the header of the applied state, a
/// RocksDB view of exactly that state, and a snapshot instance of each plugin reading that view.
pub(crate) struct BuildJob {
    pub header: pb::SnapshotHeader,
    pub view: Arc<View>,
    pub plugins: Vec<(String, Engine)>,
    pub settings: SnapshotSettings,
}

/// A snapshot just written.
pub(crate) struct Built {
    pub file: SnapshotFile,
    pub stats: pb::PhaseStats,
}

/// Writes the snapshot `job` describes. Runs off the state machine's task: applying goes on.
pub(crate) fn build(job: BuildJob) -> io::Result<Built> {
    let started = Instant::now();
    let name = file_name(&job.header);
    let dir = job.settings.dir.clone();
    let tmp = dir.join(format!("{name}.tmp"));
    let keep = job.settings.keep;
    let raw = match write_file(job, &tmp) {
        Ok(raw) => raw,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let path = dir.join(&name);
    fs::rename(&tmp, &path)?;
    File::open(&dir)?.sync_all()?;
    let size = fs::metadata(&path)?.len();
    prune(&dir, keep, &path)?;
    let stats = phase_stats(raw, size, started);
    info!(
        file = %path.display(),
        state_mb = raw as f64 / 1e6,
        file_mb = size as f64 / 1e6,
        secs = stats.micros as f64 / 1e6,
        "snapshot built"
    );
    Ok(Built {
        file: SnapshotFile {
            path,
            size,
            verified: true,
        },
        stats,
    })
}

/// Writes the file and returns the uncompressed size of its body.
fn write_file(mut job: BuildJob, tmp: &Path) -> io::Result<u64> {
    let mut out = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, File::create(tmp)?),
        hasher: Sha256::new(),
    };
    out.write_all(MAGIC)?;
    let header = job.header.encode_to_vec();
    out.write_all(&(header.len() as u32).to_le_bytes())?;
    out.write_all(&header)?;
    let mut encoder = zstd::stream::write::Encoder::new(&mut out, job.settings.zstd_level)?;
    // zstd's own frame checksum: a damaged body fails as corrupted, not as cut short.
    encoder.include_checksum(true)?;
    let mut body = Counted {
        inner: encoder,
        bytes: 0,
    };
    for blob in job.view.blobs() {
        let (key, value) = blob.map_err(io_err)?;
        body.write_all(&(key.len() as u32).to_le_bytes())?;
        body.write_all(key.as_bytes())?;
        body.write_all(&(value.len() as u64).to_le_bytes())?;
        body.write_all(&value)?;
    }
    body.write_all(&0u32.to_le_bytes())?;
    for (name, engine) in &mut job.plugins {
        let mut write_error = None;
        let result = engine.snapshot(CHUNK, |chunk| {
            let written = body
                .write_all(&(chunk.len() as u32).to_le_bytes())
                .and_then(|_| body.write_all(&chunk));
            written.map_err(|e| {
                let message = e.to_string();
                write_error = Some(e);
                wasmraft_runtime::RuntimeError::Engine(format!("writing the snapshot: {message}"))
            })
        });
        if let Some(e) = write_error {
            return Err(e);
        }
        result
            .map_err(|e| io_err(format!("plugin {name}: {e}")))?
            .map_err(|e| io_err(format!("plugin {name}: its snapshot export failed: {e}")))?;
        body.write_all(&0u32.to_le_bytes())?;
    }
    let raw = body.bytes;
    body.inner.finish()?;
    let digest = out.hasher.finalize();
    let mut file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.write_all(&digest)?;
    file.sync_all()?;
    Ok(raw)
}

/// Deletes all but the newest `keep` snapshots (never `current`), and leftover temp files.
fn prune(dir: &Path, keep: usize, current: &Path) -> io::Result<()> {
    let mut names = list(dir)?;
    names.sort();
    let excess = names.len().saturating_sub(keep.max(1));
    for path in names.into_iter().take(excess) {
        if path != current {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == SUFFIX) {
            out.push(path);
        }
    }
    Ok(out)
}

/// Deletes temp files a crash left in the snapshot directory.
pub(crate) fn clean(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            warn!(path = %path.display(), "deleting a snapshot left unfinished by a crash");
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// The newest snapshot in `dir`.
pub(crate) fn current(dir: &Path) -> io::Result<Option<SnapshotFile>> {
    let Some(path) = list(dir)?.into_iter().max() else {
        return Ok(None);
    };
    let size = fs::metadata(&path)?.len();
    Ok(Some(SnapshotFile {
        path,
        size,
        verified: false,
    }))
}

/// Makes `file` this node's current snapshot (moving it into `dir` if it lives elsewhere, as a
/// received one does) and prunes older ones.
pub(crate) fn keep_as_current(settings: &SnapshotSettings, file: &SnapshotFile) -> io::Result<()> {
    let header = read_header(&file.path)?;
    let target = settings.dir.join(file_name(&header));
    if file.path != target {
        fs::rename(&file.path, &target)?;
        File::open(&settings.dir)?.sync_all()?;
    }
    prune(&settings.dir, settings.keep, &target)
}

// ---------------------------------------------------------------- reading

fn read_exact_vec(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "snapshot ends inside a record",
        ));
    }
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

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads the magic and header; returns the header and the bytes they took.
fn read_header_from(r: &mut impl Read) -> Result<(pb::SnapshotHeader, u64), Rejection> {
    let eof = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => Rejection::Truncated("the file ends inside its header".into()),
        _ => Rejection::Corrupted(e.to_string()),
    };
    let mut magic = [0; 8];
    r.read_exact(&mut magic).map_err(eof)?;
    if &magic[..7] != MAGIC_STEM {
        return Err(Rejection::Format("not a wasmraft snapshot (bad magic)".into()));
    }
    if magic[7] != MAGIC[7] {
        return Err(Rejection::Format(format!(
            "format {} (this node reads format {FORMAT})",
            magic[7]
        )));
    }
    let len = read_u32(r).map_err(eof)?;
    if len > 64 << 20 {
        return Err(Rejection::Corrupted(format!("a header of {len} bytes")));
    }
    let bytes = read_exact_vec(r, len as usize).map_err(eof)?;
    let header =
        pb::SnapshotHeader::decode(bytes.as_slice()).map_err(|e| Rejection::Corrupted(format!("header: {e}")))?;
    if header.format != FORMAT {
        return Err(Rejection::Format(format!(
            "header says format {} (this node reads format {FORMAT})",
            header.format
        )));
    }
    Ok((header, 8 + 4 + u64::from(len)))
}

/// Reads a snapshot's header (without checking the whole file).
pub(crate) fn read_header(path: &Path) -> io::Result<pb::SnapshotHeader> {
    let mut r = BufReader::new(File::open(path)?);
    read_header_from(&mut r).map(|(h, _)| h).map_err(io_err)
}

/// A snapshot's identity: its size and the sha256 trailer.
pub(crate) fn identity(path: &Path) -> io::Result<(u64, [u8; 32])> {
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    if size < TRAILER {
        return Err(io_err("snapshot shorter than its checksum"));
    }
    f.seek(SeekFrom::Start(size - TRAILER))?;
    let mut sha = [0; 32];
    f.read_exact(&mut sha)?;
    Ok((size, sha))
}

/// Checks a file whose sha256 is already known to match: the magic, format and header.
pub(crate) fn check_header(path: &Path) -> Result<pb::SnapshotHeader, Rejection> {
    let size = fs::metadata(path)
        .map_err(|e| Rejection::Corrupted(e.to_string()))?
        .len();
    let mut r = BufReader::new(File::open(path).map_err(|e| Rejection::Corrupted(e.to_string()))?);
    let (header, header_len) = read_header_from(&mut r)?;
    if size < header_len + TRAILER {
        return Err(Rejection::Truncated(format!("{size} bytes")));
    }
    Ok(header)
}

/// Checks a whole file: the magic and format, the header, and the sha256 over everything. A
/// checksum mismatch is told apart: a body that ends early is truncated, anything else corrupted.
pub(crate) fn check(path: &Path) -> Result<pb::SnapshotHeader, Rejection> {
    let size = fs::metadata(path)
        .map_err(|e| Rejection::Corrupted(e.to_string()))?
        .len();
    let mut r = BufReader::with_capacity(
        1 << 20,
        File::open(path).map_err(|e| Rejection::Corrupted(e.to_string()))?,
    );
    let (header, header_len) = read_header_from(&mut r)?;
    if size < header_len + TRAILER {
        return Err(Rejection::Truncated(format!("{size} bytes")));
    }
    let mut hasher = Sha256::new();
    let mut all = BufReader::with_capacity(
        1 << 20,
        File::open(path).map_err(|e| Rejection::Corrupted(e.to_string()))?,
    );
    io::copy(&mut (&mut all).take(size - TRAILER), &mut hasher).map_err(|e| Rejection::Corrupted(e.to_string()))?;
    let mut expected = [0u8; 32];
    all.read_exact(&mut expected)
        .map_err(|e| Rejection::Corrupted(e.to_string()))?;
    if hasher.finalize().as_slice() == expected {
        return Ok(header);
    }
    // Which kind of damage: decode the body to see whether it ends early.
    let body = (&mut r).take(size - header_len - TRAILER);
    let damage = zstd::stream::read::Decoder::new(body).and_then(|mut d| skip_body(&mut d, &header));
    Err(match damage {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Rejection::Truncated(format!("{size} bytes, the body ends early ({e})"))
        }
        _ => Rejection::Corrupted("the sha256 does not match the content".into()),
    })
}

/// Reads through a body's sections without keeping them.
fn skip_body(r: &mut impl Read, header: &pb::SnapshotHeader) -> io::Result<()> {
    let skip = |r: &mut dyn Read, n: u64| -> io::Result<()> {
        if io::copy(&mut r.take(n), &mut io::sink())? != n {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short record"));
        }
        Ok(())
    };
    loop {
        let key = read_u32(r)?;
        if key == 0 {
            break;
        }
        skip(r, u64::from(key))?;
        let value = read_u64(r)?;
        skip(r, value)?;
    }
    for _ in registry(header).plugins {
        loop {
            let len = read_u32(r)?;
            if len == 0 {
                break;
            }
            skip(r, u64::from(len))?;
        }
    }
    Ok(())
}

fn registry(header: &pb::SnapshotHeader) -> pb::Registry {
    header.registry.clone().unwrap_or_default()
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

// ---------------------------------------------------------------- install

/// A snapshot restored next to the live state, waiting for the switch.
pub(crate) struct Staged {
    pub header: pb::SnapshotHeader,
    /// The snapshot's plugins, each on its freshly restored key space.
    pub plugins: Vec<ActivePlugin>,
    /// Blobs other than components (pieces of uploads in progress): they replace this node's.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// Uncompressed bytes read.
    pub raw_bytes: u64,
}

/// A space for restoring `name` at `index` that is not `current` (the live one).
pub(crate) fn fresh_space(name: &str, index: u64, current: Option<&str>) -> String {
    let space = format!("{name}.{index}");
    if current == Some(space.as_str()) {
        format!("{space}.b")
    } else {
        space
    }
}

/// Restores a snapshot into fresh key spaces without touching the live state: components are
/// checked against their sha256 (and stored, content-addressed) first, then each plugin's
/// `restore` export rebuilds its space from its section. The caller switches to the result in
/// one write; a crash before that leaves only unreferenced spaces, which opening deletes.
pub(crate) fn stage(shared: &Shared, pending: &SharedPending, file: &SnapshotFile) -> io::Result<Staged> {
    if !file.verified {
        check(&file.path).map_err(io_err)?;
    }
    let store = &shared.store;
    let mut r = BufReader::with_capacity(1 << 20, File::open(&file.path)?);
    let (header, header_len) = read_header_from(&mut r).map_err(io_err)?;
    let index = header.last_log_id.as_ref().map_or(0, |id| id.index);
    let body_len = file
        .size
        .checked_sub(header_len + TRAILER)
        .ok_or_else(|| io_err("snapshot truncated"))?;
    let mut body = Counted {
        inner: zstd::stream::read::Decoder::new((&mut r).take(body_len))?,
        bytes: 0,
    };
    let max_blob = shared.runtime.limits().max_component_bytes as u64;
    let mut blobs = Vec::new();
    loop {
        let key_len = read_u32(&mut body)?;
        if key_len == 0 {
            break;
        }
        if key_len > MAX_BLOB_KEY {
            return Err(invalid(format!("a blob key of {key_len} bytes")));
        }
        let key = String::from_utf8(read_exact_vec(&mut body, key_len as usize)?)
            .map_err(|_| invalid("a blob key is not UTF-8"))?;
        let value_len = read_u64(&mut body)?;
        if value_len > max_blob {
            return Err(invalid(format!("blob {key} of {value_len} bytes")));
        }
        let value = read_exact_vec(&mut body, value_len as usize)?;
        if let Some(sha) = key.strip_prefix("component/") {
            let actual = hex::encode(Sha256::digest(&value));
            if actual != sha {
                return Err(invalid(format!("component {sha} has sha256 {actual}")));
            }
            if store.blob_get(&key).map_err(io_err)?.is_none() {
                let mut batch = store.batch();
                batch.put_blob(&key, &value);
                store.write(batch).map_err(io_err)?;
            }
        } else {
            blobs.push((key, value));
        }
    }
    let registry = registry(&header);
    let mut components = Vec::with_capacity(registry.plugins.len());
    for info in &registry.plugins {
        let bytes = if info.sha256.starts_with(BUILTIN_PREFIX) {
            Vec::new()
        } else {
            store
                .blob_get(&component_key(&info.sha256))
                .map_err(io_err)?
                .ok_or_else(|| {
                    invalid(format!(
                        "plugin {}: component {} is not in the snapshot",
                        info.name, info.sha256
                    ))
                })?
        };
        components.push(bytes);
    }
    let mut plugins = Vec::with_capacity(registry.plugins.len());
    for (info, component) in registry.plugins.into_iter().zip(components) {
        let live = shared.plugin(&info.name);
        let space = fresh_space(&info.name, index, live.as_ref().map(|p| p.space()));
        let mut clear = store.batch();
        clear.clear_space(&space);
        store.write(clear).map_err(io_err)?;
        let name = info.name.clone();
        let info = pb::RegisteredPlugin { space, ..info };
        let plugin =
            ActivePlugin::new(shared, pending, info, &component).map_err(|e| io_err(format!("plugin {name}: {e}")))?;
        let staging = Arc::new(Mutex::new(Staging::new(store.clone(), plugin.space().to_string())));
        let mut engine = plugin.instance({
            let staging = staging.clone();
            move || -> Box<dyn KvBackend> { Box::new(StagingBackend(staging.clone())) }
        });
        let mut chunks = SectionChunks {
            r: &mut body,
            error: None,
        };
        let restored = engine.restore(&mut chunks);
        if let Some(e) = chunks.error {
            return Err(e);
        }
        restored
            .map_err(|e| io_err(format!("plugin {name}: {e}")))?
            .map_err(|e| io_err(format!("plugin {name}: its restore export failed: {e}")))?;
        locked(&staging).flush().map_err(io_err)?;
        plugins.push(plugin);
    }
    let mut rest = [0u8; 1];
    if body.read(&mut rest)? != 0 {
        return Err(invalid("data after the last plugin section"));
    }
    Ok(Staged {
        header,
        plugins,
        blobs,
        raw_bytes: body.bytes,
    })
}

/// One plugin section's chunks, read as the plugin's restore asks for them.
struct SectionChunks<'a, R: Read> {
    r: &'a mut R,
    error: Option<io::Error>,
}

impl<R: Read> SectionChunks<'_, R> {
    fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let len = read_u32(self.r)?;
        if len == 0 {
            return Ok(None);
        }
        if len > CHUNK {
            return Err(invalid(format!("a plugin chunk of {len} bytes (at most {CHUNK})")));
        }
        read_exact_vec(self.r, len as usize).map(Some)
    }
}

impl<R: Read> Iterator for SectionChunks<'_, R> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.error.is_some() {
            return None;
        }
        match self.read_chunk() {
            Ok(chunk) => chunk,
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

// ---------------------------------------------------------------- receiving

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

    fn sync(&mut self) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header(format: u32, index: u64) -> pb::SnapshotHeader {
        pb::SnapshotHeader {
            format,
            last_log_id: Some(pb::LogId { term: 1, index }),
            membership: Some(pb::StoredMembership::default()),
            registry: Some(pb::Registry {
                plugins: vec![pb::RegisteredPlugin {
                    name: "kv".into(),
                    sha256: "builtin:kv-native".into(),
                    ..Default::default()
                }],
            }),
            digest: vec![0; 64],
        }
    }

    /// A well-formed file: no blobs, one plugin section with two chunks.
    fn write_sample(path: &Path, header: &pb::SnapshotHeader) {
        let mut out = HashingWriter {
            inner: Vec::new(),
            hasher: Sha256::new(),
        };
        out.write_all(MAGIC).unwrap();
        let h = header.encode_to_vec();
        out.write_all(&(h.len() as u32).to_le_bytes()).unwrap();
        out.write_all(&h).unwrap();
        let mut enc = zstd::stream::write::Encoder::new(&mut out, 1).unwrap();
        enc.include_checksum(true).unwrap();
        enc.write_all(&0u32.to_le_bytes()).unwrap();
        // Bytes zstd cannot shrink, so the body is long enough to cut and damage.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for chunk in [&b"first"[..], &noise[..]] {
            enc.write_all(&(chunk.len() as u32).to_le_bytes()).unwrap();
            enc.write_all(chunk).unwrap();
        }
        enc.write_all(&0u32.to_le_bytes()).unwrap();
        enc.finish().unwrap();
        let digest = out.hasher.finalize();
        let mut bytes = out.inner;
        bytes.extend_from_slice(&digest);
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_whole_file_passes_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_sample(&path, &header(FORMAT, 9));
        assert_eq!(check(&path).unwrap().last_log_id.unwrap().index, 9);
    }

    #[test]
    fn a_flipped_byte_is_rejected_as_corrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_sample(&path, &header(FORMAT, 9));
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() - 40;
        bytes[middle] ^= 0x55;
        fs::write(&path, bytes).unwrap();
        assert!(
            matches!(check(&path), Err(Rejection::Corrupted(_))),
            "{:?}",
            check(&path)
        );
    }

    #[test]
    fn a_short_file_is_rejected_as_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_sample(&path, &header(FORMAT, 9));
        let bytes = fs::read(&path).unwrap();
        for keep in [bytes.len() - 60, 20, 10] {
            fs::write(&path, &bytes[..keep]).unwrap();
            assert!(
                matches!(check(&path), Err(Rejection::Truncated(_))),
                "{keep}: {:?}",
                check(&path)
            );
        }
    }

    #[test]
    fn an_unknown_format_is_rejected_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_sample(&path, &header(FORMAT, 9));
        let mut bytes = fs::read(&path).unwrap();
        bytes[7] = 9;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(check(&path), Err(Rejection::Format(_))));
        bytes[0] = b'X';
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(check(&path), Err(Rejection::Format(_))));
        write_sample(&path, &header(FORMAT + 1, 9));
        assert!(matches!(check(&path), Err(Rejection::Format(_))));
    }

    #[test]
    fn a_file_received_across_a_broken_transfer_checks_out_without_a_second_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_sample(&path, &header(FORMAT, 9));
        let bytes = fs::read(&path).unwrap();
        let sha: [u8; 32] = bytes[bytes.len() - 32..].try_into().unwrap();
        let incoming_dir = dir.path().join("incoming");
        let size = bytes.len() as u64;
        // All but the last 10 bytes, then a crash (a whole file is synced as it completes, so
        // sync by hand here the way reaching the sync interval would).
        let mut incoming = Incoming::open(&incoming_dir, &sha, size).unwrap();
        incoming.write(0, &bytes[..bytes.len() - 10]).unwrap();
        incoming.sync().unwrap();
        drop(incoming);
        let mut incoming = Incoming::open(&incoming_dir, &sha, size).unwrap();
        assert_eq!(incoming.offset(), size - 10);
        incoming.write(size - 10, &bytes[bytes.len() - 10..]).unwrap();
        let file = incoming.complete();
        assert!(file.verified);
        // One damaged byte, received whole: not verified (check() then says why).
        let mut damaged = bytes.clone();
        damaged[30] ^= 1;
        let mut incoming = Incoming::open(&incoming_dir, &[9u8; 32], size).unwrap();
        incoming.write(0, &damaged).unwrap();
        assert!(!incoming.complete().verified);
    }

    #[test]
    fn an_incoming_file_resumes_from_its_last_synced_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let sha = [3u8; 32];
        let size = INCOMING_SYNC_BYTES * 2;
        let piece = vec![1u8; (INCOMING_SYNC_BYTES / 2) as usize];
        let mut incoming = Incoming::open(dir.path(), &sha, size).unwrap();
        for i in 0..3 {
            incoming.write(i * piece.len() as u64, &piece).unwrap();
        }
        assert_eq!(incoming.offset(), piece.len() as u64 * 3);
        drop(incoming); // a crash: the unsynced half is not counted
        let mut incoming = Incoming::open(dir.path(), &sha, size).unwrap();
        assert_eq!(incoming.offset(), INCOMING_SYNC_BYTES);
        assert!(incoming.write(0, &piece).is_err(), "out of order");
        incoming.write(INCOMING_SYNC_BYTES, &piece).unwrap();
        incoming
            .write(INCOMING_SYNC_BYTES + piece.len() as u64, &piece)
            .unwrap();
        assert!(incoming.write(size, &piece).is_err(), "past the end");
        let file = incoming.complete();
        assert!(!file.verified, "ones are not a snapshot with its sha256 trailer");
        assert_eq!(fs::metadata(&file.path).unwrap().len(), size);
        // Another snapshot's transfer drops this one's leftovers.
        let other = Incoming::open(dir.path(), &[4u8; 32], 100).unwrap();
        assert_eq!(other.offset(), 0);
        assert!(!file.path.exists());
    }
}
