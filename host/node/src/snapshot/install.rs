//! Installing a snapshot: restore every plugin into a fresh key space next to the live state
//! (staging), then switch to it in one synced write.

use std::collections::{BTreeMap, BTreeSet};

use super::format::*;
use super::*;
use crate::sm::Shadow;
use wasmraft_store::Store;

/// A snapshot restored next to the live state, waiting for the switch.
pub(crate) struct Staged {
    pub header: pb::SnapshotHeader,
    /// The snapshot's plugins, each on its freshly restored key space.
    pub plugins: Vec<ActivePlugin>,
    /// The snapshot's shadow runs, likewise (a stopped one's space stays empty).
    pub shadows: Vec<Shadow>,
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

/// Most upload blobs (deploys in progress) a snapshot may carry, and their bytes in all.
const MAX_STAGED_BLOBS: usize = 1024;
const MAX_STAGED_BLOB_BYTES: u64 = 1 << 30;

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
    let mut staged_bytes = 0u64;
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
            // Uploads in progress, held until install: bounded, like everything a sender sends.
            staged_bytes += value.len() as u64;
            if blobs.len() >= MAX_STAGED_BLOBS || staged_bytes > MAX_STAGED_BLOB_BYTES {
                return Err(invalid(format!(
                    "more than {MAX_STAGED_BLOBS} blobs or {MAX_STAGED_BLOB_BYTES} bytes of uploads"
                )));
            }
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
        let name = info.name.clone();
        let info = pb::RegisteredPlugin { space, ..info };
        clear_space(store, &info.space)?;
        let plugin =
            ActivePlugin::new(shared, pending, info, &component).map_err(|e| io_err(format!("plugin {name}: {e}")))?;
        restore(store, &plugin, &mut body)?;
        plugins.push(plugin);
    }
    let mut shadows = Vec::with_capacity(registry.shadows.len());
    for mut record in registry.shadows {
        let candidate = record.candidate.take().unwrap_or_default();
        let name = candidate.name.clone();
        let component = store
            .blob_get(&component_key(&candidate.sha256))
            .map_err(io_err)?
            .ok_or_else(|| {
                invalid(format!(
                    "shadow {name}: component {} is not in the snapshot",
                    candidate.sha256
                ))
            })?;
        let live = shared.shadow(&name);
        let space = fresh_space(
            &format!("{name}.shadow"),
            index,
            live.as_ref().map(|s| s.plugin.space()),
        );
        let info = pb::RegisteredPlugin { space, ..candidate };
        clear_space(store, &info.space)?;
        let plugin = ActivePlugin::candidate(shared, pending, info.clone(), &component)
            .map_err(|e| io_err(format!("shadow {name}: {e}")))?;
        if record.stopped_index.is_none() {
            restore(store, &plugin, &mut body)?;
        }
        record.candidate = Some(info);
        shadows.push(Shadow::new(plugin, record));
    }
    let mut rest = [0u8; 1];
    if body.read(&mut rest)? != 0 {
        return Err(invalid("data after the last plugin section"));
    }
    Ok(Staged {
        header,
        plugins,
        shadows,
        blobs,
        raw_bytes: body.bytes,
    })
}

fn clear_space(store: &Store, space: &str) -> io::Result<()> {
    let mut clear = store.batch();
    clear.clear_space(space);
    store.write(clear).map_err(io_err)
}

/// Rebuilds `plugin`'s (fresh) space from its section of `body`, through its restore export.
fn restore(store: &Store, plugin: &ActivePlugin, body: &mut impl Read) -> io::Result<()> {
    let name = &plugin.info.name;
    let staging = Arc::new(Mutex::new(Staging::new(store.clone(), plugin.space().to_string())));
    let mut engine = plugin.instance({
        let staging = staging.clone();
        move || -> Box<dyn KvBackend> { Box::new(StagingBackend(staging.clone())) }
    });
    let mut chunks = SectionChunks { r: body, error: None };
    let restored = engine.restore(&mut chunks);
    if let Some(e) = chunks.error {
        return Err(e);
    }
    restored
        .map_err(|e| io_err(format!("plugin {name}: {e}")))?
        .map_err(|e| io_err(format!("plugin {name}: its restore export failed: {e}")))?;
    lock(&staging).flush().map_err(io_err)
}

/// One plugin section's chunks, read as the plugin's restore asks for them.
pub(crate) struct SectionChunks<'a, R: Read> {
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

/// Installs a received (or own) snapshot file on `core`: stages every plugin into a fresh key
/// space, then switches to the staged state in one synced write, under the flush lock so queries
/// see the old state or the new one. A crash before the switch leaves unreferenced spaces (opening
/// deletes them); after it, the node is on the new state.
pub(crate) fn install(
    core: &mut Machine,
    snapshots: &Snapshots,
    meta: &SnapshotMeta,
    snapshot: SnapshotFile,
) -> io::Result<()> {
    let started = Instant::now();
    let shared = core.shared();
    let staged = stage(&shared, core.pending(), &snapshot)?;
    failpoint("snapshot-install-staged");
    // The switch: one synced write replaces the live spaces, uploads in progress, applied
    // log id, membership, registry and digest; queries see the old state or the new one.
    let store = shared.store.clone();
    let new_spaces: BTreeSet<&str> = (staged.plugins.iter().map(|p| p.space()))
        .chain(staged.shadows.iter().map(|s| s.plugin.space()))
        .collect();
    let mut batch = store.batch();
    let old_spaces: Vec<String> = (shared.plugins().iter().map(|p| p.space().to_string()))
        .chain(shared.shadows().iter().map(|s| s.plugin.space().to_string()))
        .collect();
    for old in &old_spaces {
        if !new_spaces.contains(old.as_str()) {
            batch.clear_space(old);
        }
    }
    batch.delete_blob_prefix(UPLOADS);
    batch.delete_blob_prefix(UPLOADS_STARTED);
    batch.delete_blob_prefix(COMPONENTS_UNUSED);
    // The snapshot's sessions replace this node's (it may hold some the snapshot swept).
    batch.delete_blob_prefix(SESSIONS);
    for (key, value) in &staged.blobs {
        batch.put_blob(key, value);
    }
    if let Some(applied) = &meta.last_log_id {
        batch.put_meta(APPLIED, &log_id_to_pb(applied).encode_to_vec());
    }
    batch.put_meta(
        MEMBERSHIP,
        &stored_membership_to_pb(&meta.last_membership).encode_to_vec(),
    );
    let registry = pb::Registry {
        plugins: staged.plugins.iter().map(|p| p.info.clone()).collect(),
        shadows: staged.shadows.iter().map(|s| s.record()).collect(),
    };
    batch.put_meta(REGISTRY, &registry.encode_to_vec());
    let digest = &staged.header.digest;
    if digest.len() != 64 {
        return Err(io_err("snapshot without a state digest"));
    }
    batch.put_meta(DIGEST, digest);
    let plugins: BTreeMap<String, Arc<ActivePlugin>> = staged
        .plugins
        .into_iter()
        .map(|p| (p.info.name.clone(), Arc::new(p)))
        .collect();
    let shadows: BTreeMap<String, Arc<Shadow>> = staged
        .shadows
        .into_iter()
        .map(|s| (s.plugin.info.name.clone(), Arc::new(s)))
        .collect();
    {
        let _writing = shared.flush_lock.write().unwrap_or_else(|p| p.into_inner());
        store.write_synced(batch).map_err(io_err)?;
        shared.set_plugins(plugins);
        shared.set_shadows(shadows);
    }
    failpoint("snapshot-install-switched");
    core.installed(meta.last_log_id, meta.last_membership.clone(), digest)?;
    keep_as_current(&snapshots.settings, &snapshot)?;
    let stats = &snapshots.stats;
    stats.installed.fetch_add(1, Ordering::Relaxed);
    stats.record(Phase::Install, phase_stats(staged.raw_bytes, snapshot.size, started));
    info!(last_log_id = ?core.applied(), secs = started.elapsed().as_secs_f64(), "snapshot installed");
    Ok(())
}
