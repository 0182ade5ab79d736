//! Building a snapshot file from a build job (captured between two apply calls): the header,
//! every blob, then each plugin's `snapshot` export, through zstd into a temp file that is fsynced,
//! hashed and renamed into place.

use super::format::*;
use super::*;

/// What a build needs, captured between two apply calls: the header of the applied state, a
/// RocksDB view of exactly that state, and a snapshot instance of each plugin reading that view.
pub(crate) struct BuildJob {
    pub header: pb::SnapshotHeader,
    pub view: Arc<View>,
    pub plugins: Vec<(String, Engine)>,
    pub settings: SnapshotSettings,
}

impl BuildJob {
    /// Captures a build of `core`'s applied state. Call it between two apply calls (everything
    /// applied is written); the build then reads only the view, so applying goes on.
    pub(crate) fn capture(core: &Machine, settings: &SnapshotSettings) -> BuildJob {
        let plugins = core.shared().plugins();
        let shadows = core.shared().shadows();
        let header = pb::SnapshotHeader {
            format: FORMAT,
            last_log_id: core.applied().as_ref().map(log_id_to_pb),
            membership: Some(stored_membership_to_pb(core.membership())),
            registry: Some(pb::Registry {
                plugins: plugins
                    .iter()
                    .map(|p| pb::RegisteredPlugin {
                        space: String::new(),
                        ..p.info.clone()
                    })
                    .collect(),
                shadows: shadows
                    .iter()
                    .map(|s| {
                        let mut record = s.record();
                        if let Some(candidate) = &mut record.candidate {
                            candidate.space.clear();
                        }
                        record
                    })
                    .collect(),
            }),
            digest: core.digest_bytes(),
        };
        let view = Arc::new(core.shared().store.view());
        // Each plugin's section, then each running shadow's (a stopped one's state is not kept).
        let running = shadows.iter().filter(|s| !s.stopped()).map(|s| s.plugin.clone());
        let plugins = plugins
            .iter()
            .cloned()
            .chain(running)
            .map(|p| {
                let (view, space) = (view.clone(), p.space().to_string());
                let engine = p.instance(move || -> Box<dyn KvBackend> {
                    Box::new(ViewBackend {
                        view: view.clone(),
                        space: space.clone(),
                    })
                });
                (p.info.name.clone(), engine)
            })
            .collect();
        BuildJob {
            header,
            view,
            plugins,
            settings: settings.clone(),
        }
    }
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
pub(crate) fn write_file(mut job: BuildJob, tmp: &Path) -> io::Result<u64> {
    let dir = tmp.parent().unwrap_or(Path::new("."));
    let mut out = HashingWriter {
        inner: DiskBudget {
            inner: BufWriter::with_capacity(1 << 20, File::create(tmp)?),
            left: free_bytes(dir)?.saturating_sub(DISK_RESERVE_BYTES),
        },
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
    let mut file = out.inner.inner.into_inner().map_err(|e| e.into_error())?;
    file.write_all(&digest)?;
    file.sync_all()?;
    Ok(raw)
}
