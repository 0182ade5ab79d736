//! `wasmraft bench snapshot`: builds N GiB of kv state on a one-node cluster, then measures each
//! snapshot phase (build on that node, transfer to and install on a new learner) next to this
//! machine's raw disk write speed and zstd's speed on the same kind of data, in the same run.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmraft::workload::noise;
use wasmraft_node::pb;
use wasmraft_node::{Node, NodeConfig, SnapshotConfig};

use crate::client::{self, Target};
use crate::dev::wait_for;

#[derive(clap::Args)]
pub struct SnapshotBenchArgs {
    /// GiB of kv state to snapshot.
    #[arg(long, default_value_t = 1.0)]
    gib: f64,
    /// Bytes per value (the state is this many keys' worth of values).
    #[arg(long, default_value_t = 64 << 10)]
    value_size: usize,
    /// Concurrent writers while the state is built up.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// zstd level of the snapshot, and of the zstd baseline.
    #[arg(long, default_value_t = 1)]
    zstd_level: i32,
    /// Where the nodes keep their data (on the disk to measure); default: a fresh directory under
    /// the system temp dir, deleted afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The plugin to load the state through (kv's command language); default: the bundled kv.
    #[arg(long, value_name = "FILE.wasm")]
    plugin: Option<PathBuf>,
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn node_config(id: u64, dir: &Path, zstd_level: i32) -> NodeConfig {
    let mut config = NodeConfig::new(
        id,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.join(format!("node-{id}")),
    );
    config.compile_cache_dir = Some(dir.join("compiled"));
    config.snapshot = SnapshotConfig {
        logs_since_last: 0,
        keep_logs: 0,
        zstd_level,
        ..SnapshotConfig::default()
    };
    config
}

pub async fn run(args: SnapshotBenchArgs) -> anyhow::Result<ExitCode> {
    if args.gib.is_nan() || args.gib <= 0.0 || args.value_size == 0 || args.clients == 0 {
        anyhow::bail!("--gib, --value-size and --clients must be positive");
    }
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("wasmraft-bench-snapshot-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = bench(&args, &dir).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn bench(args: &SnapshotBenchArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let target = (args.gib * (1u64 << 30) as f64) as u64;
    let keys = target.div_ceil(args.value_size as u64);
    println!(
        "bench snapshot: {:.2} GiB of kv state ({keys} keys x {} B values), zstd level {}, in {}",
        args.gib,
        args.value_size,
        args.zstd_level,
        dir.display()
    );

    // One node with the kv plugin.
    let leader = Node::start(node_config(1, dir, args.zstd_level)).await?;
    leader
        .inner
        .initialize(Default::default())
        .await
        .map_err(|s| anyhow::anyhow!("initializing: {}", s.message()))?;
    wait_for("a leader", Duration::from_secs(20), || async {
        leader.inner.leader().map(|_| ())
    })
    .await?;
    // The nodes run in this process without TLS or tokens.
    let endpoint = Target::new(leader.addr(), None, None);
    let plugin = args
        .plugin
        .clone()
        .unwrap_or_else(|| PathBuf::from(wasmraft::plugins::KV));
    let bytes = std::fs::read(&plugin).with_context(|| format!("reading {}", plugin.display()))?;
    let mut api = client::connect(&endpoint).await?;
    crate::deploy::deploy_bytes(&mut api, crate::deploy::Upload::new("kv", bytes), |_| {})
        .await
        .map_err(|s| anyhow::anyhow!("deploying kv: {}", s.message()))?;

    // The state, through the log.
    let started = Instant::now();
    load(&endpoint, keys, args.value_size, args.clients).await?;
    let load_secs = started.elapsed().as_secs_f64();
    println!(
        "loaded {:.0} MB in {load_secs:.1} s ({:.1} MB/s through consensus)",
        mb(keys * args.value_size as u64),
        mb(keys * args.value_size as u64) / load_secs
    );

    // Build, with a writer going on meanwhile: the build reads a view, so applying continues.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (mut api, stop) = (client::connect(&endpoint).await?, stop.clone());
        tokio::spawn(async move {
            let mut done = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let payload = format!(r#"{{"op":"put","key":"during-build","value":"{done}"}}"#);
                let call = pb::CallRequest {
                    plugin: "kv".into(),
                    payload: payload.into_bytes(),
                    session: None,
                };
                if api.call(call).await.is_ok() {
                    done += 1;
                }
            }
            done
        })
    };
    let built = api.snapshot(pb::SnapshotRequest {}).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes_during_build = writer.await?;
    let built = built?.into_inner();

    // Transfer and install, to a new learner.
    let learner = Node::start(node_config(2, dir, args.zstd_level)).await?;
    api.add_learner(pb::AddLearnerRequest {
        id: 2,
        addr: learner.addr().to_string(),
        blocking: false,
    })
    .await?;
    let waiting = Instant::now();
    let mut last_report = Instant::now();
    wait_for("the learner to install the snapshot", Duration::from_secs(3600), || {
        let status = learner.inner.status().snapshot.unwrap_or_default();
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  ... {:.0} s, waiting for the learner's install",
                waiting.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        async move { (status.installed >= 1).then_some(()) }
    })
    .await?;
    let status = learner.inner.status().snapshot.unwrap_or_default();
    let transfer = status.last_transfer.unwrap_or_default();
    let install = status.last_install.unwrap_or_default();
    leader.shutdown().await?;
    learner.shutdown().await?;

    // Baselines on the same disk and data.
    let disk = disk_write(dir, built.file_bytes.max(256 << 20))?;
    let (compress, decompress) = zstd_speed(args.value_size, built.raw_bytes.min(512 << 20), args.zstd_level)?;

    let rate = |bytes: u64, micros: u64| client::mb_per_sec(bytes, micros);
    println!();
    println!(
        "{:<38} {:>10} {:>8} {:>9} {:>9}",
        "phase", "MB", "secs", "MB/s", "vs disk"
    );
    let row = |label: &str, bytes: u64, micros: u64| {
        let r = rate(bytes, micros);
        println!(
            "{label:<38} {:>10.1} {:>8.2} {:>9.1} {:>8.2}x",
            mb(bytes),
            micros as f64 / 1e6,
            r,
            r / disk.max(f64::MIN_POSITIVE)
        );
    };
    row("build (state read -> file written)", built.raw_bytes, built.micros);
    row(
        "transfer (file received + sha256)",
        transfer.file_bytes,
        transfer.micros,
    );
    row(
        "install (file read -> state written)",
        install.raw_bytes,
        install.micros,
    );
    println!(
        "{:<38} {:>10.1} {:>8} {:>9.1} {:>8.2}x",
        "disk write (1 MiB writes + fsync)",
        mb(built.file_bytes.max(256 << 20)),
        "",
        disk,
        1.0
    );
    println!(
        "{:<38} {:>10} {:>8} {:>9.1} {:>8.2}x",
        format!("zstd -{} compress (same values)", args.zstd_level),
        "",
        "",
        compress,
        compress / disk
    );
    println!(
        "{:<38} {:>10} {:>8} {:>9.1} {:>8.2}x",
        format!("zstd -{} decompress", args.zstd_level),
        "",
        "",
        decompress,
        decompress / disk
    );
    println!(
        "writes applied while the snapshot was built: {writes_during_build} ({:.0}/s, one client)",
        writes_during_build as f64 / (built.micros as f64 / 1e6).max(f64::MIN_POSITIVE)
    );
    println!(
        "snapshot file {:.1} MB for {:.1} MB of state ({:.2}x)",
        mb(built.file_bytes),
        mb(built.raw_bytes),
        built.file_bytes as f64 / built.raw_bytes.max(1) as f64
    );
    Ok(ExitCode::SUCCESS)
}

/// Puts `keys` values through the log with `clients` writers, showing progress.
async fn load(target: &Target, keys: u64, value_size: usize, clients: usize) -> anyhow::Result<()> {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients as u64 {
        let mut api = client::connect(target).await?;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut key = c;
            while key < keys {
                let payload = format!(r#"{{"op":"put","key":"k{key}","value":"{}"}}"#, noise(key, value_size));
                api.call(pb::CallRequest {
                    plugin: "kv".into(),
                    payload: payload.into_bytes(),
                    session: None,
                })
                .await
                .map_err(|s| anyhow::anyhow!("put k{key}: {}", s.message()))?;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                key += clients as u64;
            }
            anyhow::Ok(())
        }));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = done.load(std::sync::atomic::Ordering::Relaxed);
                eprintln!(
                    "  ... loading: {n} of {keys} keys ({:.0}%)",
                    n as f64 * 100.0 / keys as f64
                );
            }
        })
    };
    for task in tasks {
        task.await??;
    }
    progress.abort();
    Ok(())
}

/// MB/s of writing `bytes` to a file in `dir` in 1 MiB writes, then fsync.
fn disk_write(dir: &Path, bytes: u64) -> anyhow::Result<f64> {
    let path = dir.join("disk-baseline");
    let block: Vec<u8> = noise(7, 1 << 20).into_bytes();
    let started = Instant::now();
    let mut file = std::fs::File::create(&path)?;
    let mut written = 0;
    while written < bytes {
        file.write_all(&block)?;
        written += block.len() as u64;
    }
    file.sync_all()?;
    let micros = started.elapsed().as_micros() as u64;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(client::mb_per_sec(written, micros))
}

/// zstd's compress and decompress speed (MB/s of input) on `bytes` of values like the loaded ones.
fn zstd_speed(value_size: usize, bytes: u64, level: i32) -> anyhow::Result<(f64, f64)> {
    let mut data = Vec::with_capacity(bytes as usize);
    let mut seed = 0;
    while (data.len() as u64) < bytes.max(1 << 20) {
        data.extend_from_slice(noise(seed, value_size).as_bytes());
        seed += 1;
    }
    let started = Instant::now();
    let compressed = zstd::stream::encode_all(data.as_slice(), level)?;
    let compress = client::mb_per_sec(data.len() as u64, started.elapsed().as_micros() as u64);
    let started = Instant::now();
    let restored = zstd::stream::decode_all(compressed.as_slice())?;
    let decompress = client::mb_per_sec(data.len() as u64, started.elapsed().as_micros() as u64);
    anyhow::ensure!(restored == data, "zstd round trip differs");
    Ok((compress, decompress))
}
