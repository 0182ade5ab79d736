//! The snapshot file format: writing helpers, the files on disk (naming, listing, pruning, the
//! current one), and reading and checking a file (header, body, trailer) before anyone trusts it.

use super::*;

/// Writes, and hashes, everything that passes through.
pub(crate) struct HashingWriter<W: Write> {
    pub(crate) inner: W,
    pub(crate) hasher: Sha256,
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

/// Space a snapshot build leaves free on its disk, for the log and RocksDB.
pub(crate) const DISK_RESERVE_BYTES: u64 = 256 << 20;

/// Bytes free for this process on the file system that holds `dir`.
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stat` is writable; statvfs fills it when it returns 0.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // fsblkcnt_t and c_ulong are u64 here, not on every target.
    #[allow(clippy::unnecessary_cast)]
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Fails a write that would take the file past `left` bytes: a snapshot must not fill the disk.
pub(crate) struct DiskBudget<W> {
    pub(crate) inner: W,
    pub(crate) left: u64,
}

impl<W: Write> Write for DiskBudget<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("the snapshot would leave less than {DISK_RESERVE_BYTES} bytes free on its disk"),
            ));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts the bytes that pass through (the uncompressed size of a snapshot body).
pub(crate) struct Counted<T> {
    pub(crate) inner: T,
    pub(crate) bytes: u64,
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

pub(crate) fn file_name(header: &pb::SnapshotHeader) -> String {
    let (term, index) = header.last_log_id.as_ref().map_or((0, 0), |id| (id.term, id.index));
    format!("snapshot-{term:020}-{index:020}.{SUFFIX}")
}

pub(crate) fn read_exact_vec(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
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

pub(crate) fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

pub(crate) fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

pub(crate) fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads the magic and header; returns the header and the bytes they took.
pub(crate) fn read_header_from(r: &mut impl Read) -> Result<(pb::SnapshotHeader, u64), Rejection> {
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
    validate_header(&header)?;
    Ok((header, 8 + 4 + u64::from(len)))
}

/// Most plugins (and, separately, shadow runs) a snapshot header may list.
pub(crate) const MAX_SNAPSHOT_PLUGINS: usize = 1024;
/// Most earlier versions a header may list per plugin (a node keeps 5).
const MAX_SNAPSHOT_HISTORY: usize = 64;

/// What a header claims, checked before anything acts on it: plugin names by deploy's rule (so
/// no name can reach into another plugin's key range), each name once, component ids that are
/// sha256s or built-ins, and bounded counts. A sender is never trusted to have checked.
pub(crate) fn validate_header(header: &pb::SnapshotHeader) -> Result<(), Rejection> {
    let bad = |message: String| Err(Rejection::Corrupted(message));
    if header.membership.is_none() {
        return bad("its header has no membership".into());
    }
    let registry = registry(header);
    for (what, count) in [
        ("plugins", registry.plugins.len()),
        ("shadow runs", registry.shadows.len()),
    ] {
        if count > MAX_SNAPSHOT_PLUGINS {
            return bad(format!(
                "its header lists {count} {what} (at most {MAX_SNAPSHOT_PLUGINS})"
            ));
        }
    }
    let plugins: Vec<_> = registry.plugins.iter().map(Some).collect();
    let candidates: Vec<_> = registry.shadows.iter().map(|s| s.candidate.as_ref()).collect();
    for (kind, plugins) in [("plugin", plugins), ("shadow run", candidates)] {
        let mut seen = std::collections::HashSet::new();
        for plugin in plugins {
            let Some(plugin) = plugin else {
                return bad(format!("its header has a {kind} without a plugin"));
            };
            if wasmraft_store::check_space(&plugin.name).is_err() {
                return bad(format!(
                    "its header names a {kind} {:?}: not a valid plugin name",
                    plugin.name
                ));
            }
            if !seen.insert(plugin.name.as_str()) {
                return bad(format!("its header lists the {kind} {:?} twice", plugin.name));
            }
            if plugin.history.len() > MAX_SNAPSHOT_HISTORY {
                return bad(format!(
                    "{kind} {} lists {} earlier versions",
                    plugin.name,
                    plugin.history.len()
                ));
            }
            let ids = std::iter::once(&plugin.sha256).chain(plugin.history.iter().map(|v| &v.sha256));
            if let Some(id) = ids.into_iter().find(|id| !is_component_id(id)) {
                return bad(format!("{kind} {}: {id:?} is not a component id", plugin.name));
            }
        }
    }
    Ok(())
}

/// A sha256 in lowercase hex, or a built-in's id (`builtin:NAME`, NAME a valid plugin name).
fn is_component_id(id: &str) -> bool {
    match id.strip_prefix(crate::sm::BUILTIN_PREFIX) {
        Some(name) => wasmraft_store::check_space(name).is_ok(),
        None => id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
    }
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
pub(crate) fn skip_body(r: &mut impl Read, header: &pb::SnapshotHeader) -> io::Result<()> {
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

pub(crate) fn registry(header: &pb::SnapshotHeader) -> pb::Registry {
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

// ---------------------------------------------------------------- files on disk

/// Deletes all but the newest `keep` snapshots (never `current`), and leftover temp files.
pub(crate) fn prune(dir: &Path, keep: usize, current: &Path) -> io::Result<()> {
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

pub(crate) fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
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
                shadows: Vec::new(),
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
    fn a_write_past_the_disk_budget_fails_as_storage_full_and_nothing_past_it_is_written() {
        let mut out = DiskBudget {
            inner: Vec::new(),
            left: 10,
        };
        out.write_all(b"0123456").unwrap();
        let e = out.write_all(b"7890").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(out.inner, b"0123456");
        assert!(free_bytes(Path::new("/")).unwrap() > 0);
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
    fn a_header_with_a_bad_or_duplicate_plugin_name_or_no_membership_is_rejected() {
        let named = |names: &[&str]| pb::SnapshotHeader {
            registry: Some(pb::Registry {
                plugins: names
                    .iter()
                    .map(|name| pb::RegisteredPlugin {
                        name: name.to_string(),
                        sha256: "ab".repeat(32),
                        ..Default::default()
                    })
                    .collect(),
                shadows: Vec::new(),
            }),
            ..header(FORMAT, 9)
        };
        assert!(validate_header(&named(&["kv", "bank"])).is_ok());
        for (header, reason) in [
            (named(&["kv\0x"]), "not a valid plugin name"),
            (named(&["KV"]), "not a valid plugin name"),
            (named(&[""]), "not a valid plugin name"),
            (named(&["kv", "kv"]), "twice"),
            (
                pb::SnapshotHeader {
                    membership: None,
                    ..named(&["kv"])
                },
                "no membership",
            ),
        ] {
            let rejection = validate_header(&header).unwrap_err().to_string();
            assert!(rejection.contains(reason), "{rejection}");
        }
        let mut bad_id = named(&["kv"]);
        bad_id.registry.as_mut().unwrap().plugins[0].sha256 = "../../etc".into();
        assert!(
            validate_header(&bad_id)
                .unwrap_err()
                .to_string()
                .contains("not a component id")
        );
        let many: Vec<String> = (0..=MAX_SNAPSHOT_PLUGINS).map(|i| format!("p{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(
            validate_header(&named(&many))
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
    }

    /// A node reads whatever file a sender streamed: random and mutated files must be refused
    /// (or, if whole, accepted), never panic the readers.
    #[test]
    fn random_and_mutated_snapshot_files_are_refused_without_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_sample(&path, &header(FORMAT, 9));
        let good = fs::read(&path).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut refused = 0;
        for round in 0..2_000 {
            let mut bytes = good.clone();
            match round % 4 {
                0 => bytes = (0..(next() % 200) as usize).map(|_| next() as u8).collect(),
                1 => bytes.truncate((next() % good.len() as u64) as usize),
                2 => {
                    // Inside the magic, the header length or the header itself.
                    let at = (next() % 64.min(good.len() as u64)) as usize;
                    bytes[at] ^= 1 << (next() % 8);
                }
                _ => {
                    let at = (next() % good.len() as u64) as usize;
                    bytes[at] ^= 1 << (next() % 8);
                }
            }
            fs::write(&path, &bytes).unwrap();
            let _ = read_header(&path);
            let _ = identity(&path);
            refused += usize::from(check(&path).is_err());
        }
        assert!(refused > 1_900, "{refused} of 2000 damaged files refused");
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
