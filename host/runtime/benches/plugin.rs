//! The kv plugin in WASM against the same kv logic compiled natively, plus load costs.
//!
//! `cargo bench -p wasmraft-runtime`. Entries are puts with 16-byte keys and 100-byte values. The
//! native side is the same `plugins/kv` crate driven by `wasmraft_guest::testing` (in-memory kv,
//! per-entry overlay and commit, as the runtime does with its `MemoryBackend`). After criterion's
//! figures, summaries print entries/s and the WASM/native ratio per batch size, and queries/s,
//! the ratio and the fuel of one get, measured in the same run so machine noise cancels.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use wasmraft_guest::testing::TestHost;
use wasmraft_runtime::{Entry, InitContext, MemoryBackend, Plugin, PluginCode, Runtime, RuntimeConfig};

mod plugin_build {
    #![allow(dead_code, reason = "shared with build.rs, which uses all of it")]
    include!("../../../build/plugins.rs");
}
use plugin_build::{build_plugins, build_polyglot};

const BATCH_SIZES: [usize; 3] = [1, 16, 256];
/// Distinct keys the puts cycle through, so the map's size stays fixed while benchmarking.
const KEY_SPACE: u64 = 10_000;

/// Builds the plugins (Rust ones, and the other languages' whose tools are installed) and
/// returns every component as `(name, path)`.
fn components() -> Vec<(String, PathBuf)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), PathBuf::from);
    let mut built = build_plugins(&repo, &target).unwrap_or_else(|e| panic!("{e}"));
    let (polyglot, warnings) = build_polyglot(&repo, &target).unwrap_or_else(|e| panic!("{e}"));
    warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    built.extend(polyglot.into_iter().filter(|(_, path)| path.exists()));
    built
}

fn kv_wasm() -> Vec<u8> {
    let (_, path) = components()
        .into_iter()
        .find(|(name, _)| name == "kv")
        .expect("kv plugin");
    std::fs::read(path).unwrap()
}

/// The put commands, made once: formatting them inside the timed loop would dominate a native
/// apply and hide the cost being measured.
fn payloads() -> &'static [Vec<u8>] {
    static PAYLOADS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    PAYLOADS.get_or_init(|| {
        (0..KEY_SPACE)
            .map(|n| {
                let key = format!("key-{n:012}"); // 16 bytes
                let value = format!("{:0100}", n * 7919); // 100 bytes
                format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#).into_bytes()
            })
            .collect()
    })
}

fn payload(n: u64) -> &'static [u8] {
    &payloads()[(n % KEY_SPACE) as usize]
}

/// The get queries, one per key of the put commands.
fn get_query(n: u64) -> &'static [u8] {
    static QUERIES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    let queries = QUERIES.get_or_init(|| {
        (0..KEY_SPACE)
            .map(|n| format!(r#"{{"op":"get","key":"key-{n:012}"}}"#).into_bytes())
            .collect()
    });
    &queries[(n % KEY_SPACE) as usize]
}

fn batch(start: u64, size: usize) -> Vec<Entry> {
    (0..size as u64)
        .map(|i| Entry {
            index: start + i + 1,
            term: 1,
            timestamp_ms: 0,
            payload: payload(start + i).to_vec(),
        })
        .collect()
}

fn wasm_plugin(code: &PluginCode) -> Plugin {
    let mut plugin = code.instantiate("bench", Box::new(MemoryBackend::new()));
    plugin.init(&InitContext::default()).unwrap().unwrap();
    plugin
}

/// Applies `batches` batches of `size` through wasm; returns entries applied.
fn run_wasm(plugin: &mut Plugin, next: &mut u64, size: usize) -> usize {
    let entries = batch(*next, size);
    *next += size as u64;
    let outcomes = plugin.apply(entries).unwrap();
    debug_assert!(outcomes.iter().all(|o| o.result.is_ok()));
    outcomes.len()
}

fn run_native(host: &mut TestHost<kv_core::KvPlugin>, next: &mut u64, size: usize) -> usize {
    for n in *next..*next + size as u64 {
        host.apply(payload(n)).unwrap();
    }
    *next += size as u64;
    size
}

fn apply(c: &mut Criterion) {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let code = runtime.load(&kv_wasm()).unwrap();
    let mut group = c.benchmark_group("apply");
    for size in BATCH_SIZES {
        group.throughput(Throughput::Elements(size as u64));
        let mut plugin = wasm_plugin(&code);
        let mut next = 0;
        group.bench_function(format!("wasm/batch-{size}"), |b| {
            b.iter(|| run_wasm(&mut plugin, &mut next, size))
        });
        let mut host = TestHost::<kv_core::KvPlugin>::new();
        let mut next = 0;
        group.bench_function(format!("native/batch-{size}"), |b| {
            b.iter(|| run_native(&mut host, &mut next, size))
        });
    }
    group.finish();
}

fn load(c: &mut Criterion) {
    let bytes = kv_wasm();
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    group.bench_function("compile", |b| b.iter(|| runtime.load(&bytes).unwrap()));
    let cache = tempfile::tempdir().unwrap();
    let cached = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    cached.load(&bytes).unwrap();
    group.bench_function("precompiled", |b| {
        b.iter(|| assert!(cached.load(&bytes).unwrap().from_cache()))
    });
    group.finish();

    let code = runtime.load(&bytes).unwrap();
    c.bench_function("instantiate+init", |b| {
        b.iter_batched(
            || code.instantiate("bench", Box::new(MemoryBackend::new())),
            |mut plugin| plugin.init(&InitContext::default()).unwrap().unwrap(),
            BatchSize::SmallInput,
        )
    });
}

/// Entries/s for WASM and native in alternating rounds, and their ratio.
fn ratio_summary() {
    const ROUND: Duration = Duration::from_millis(500);
    const ROUNDS: usize = 4;
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let code = runtime.load(&kv_wasm()).unwrap();
    println!("\nkv plugin, puts with 16-byte keys and 100-byte values (entries/s, same run):");
    println!("{:>6} {:>14} {:>14} {:>12}", "batch", "wasm", "native", "wasm/native");
    for size in BATCH_SIZES {
        let (mut wasm_n, mut wasm_t, mut native_n, mut native_t) = (0, Duration::ZERO, 0, Duration::ZERO);
        let mut plugin = wasm_plugin(&code);
        let mut host = TestHost::<kv_core::KvPlugin>::new();
        let (mut next_w, mut next_n) = (0, 0);
        for _ in 0..ROUNDS {
            let start = Instant::now();
            while start.elapsed() < ROUND {
                wasm_n += run_wasm(&mut plugin, &mut next_w, size);
            }
            wasm_t += start.elapsed();
            let start = Instant::now();
            while start.elapsed() < ROUND {
                native_n += run_native(&mut host, &mut next_n, size);
            }
            native_t += start.elapsed();
        }
        let wasm = wasm_n as f64 / wasm_t.as_secs_f64();
        let native = native_n as f64 / native_t.as_secs_f64();
        println!("{size:>6} {wasm:>14.0} {native:>14.0} {:>11.2}x", wasm / native);
    }
}

/// Gets of existing keys (one query call each) for WASM and native in alternating rounds, their
/// ratio, and the fuel one get takes (the least budget it succeeds with).
fn query_summary() {
    const ROUND: Duration = Duration::from_millis(500);
    const ROUNDS: usize = 4;
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let code = runtime.load(&kv_wasm()).unwrap();
    let mut plugin = wasm_plugin(&code);
    let mut host = TestHost::<kv_core::KvPlugin>::new();
    run_wasm(&mut plugin, &mut 0, KEY_SPACE as usize);
    run_native(&mut host, &mut 0, KEY_SPACE as usize);
    let (mut wasm_n, mut wasm_t, mut native_n, mut native_t) = (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        while start.elapsed() < ROUND {
            for _ in 0..100 {
                plugin.query(get_query(wasm_n)).unwrap().unwrap();
                wasm_n += 1;
            }
        }
        wasm_t += start.elapsed();
        let start = Instant::now();
        while start.elapsed() < ROUND {
            for _ in 0..100 {
                host.query(get_query(native_n)).unwrap();
                native_n += 1;
            }
        }
        native_t += start.elapsed();
    }
    let (mut enough, mut short) = (10_000_000u64, 0u64);
    while enough - short > 1 {
        let mid = short + (enough - short) / 2;
        match plugin.query_with_fuel(get_query(7), mid).unwrap() {
            Ok(_) => enough = mid,
            Err(_) => short = mid,
        }
    }
    let wasm = wasm_n as f64 / wasm_t.as_secs_f64();
    let native = native_n as f64 / native_t.as_secs_f64();
    println!("\nkv plugin, gets of existing keys (queries/s, same run):");
    println!(
        "{:>14} {:>14} {:>12} {:>10}",
        "wasm", "native", "wasm/native", "fuel/get"
    );
    println!("{wasm:>14.0} {native:>14.0} {:>11.2}x {enough:>10}", wasm / native);
}

/// Every kv implementation (Rust, Python, JavaScript, C, plus any component named in
/// `WASMRAFT_BENCH_COMPONENTS`, comma-separated paths) in alternating rounds: size, compile time,
/// entries/s at batch 16, and the ratio to the Rust component.
fn language_summary() {
    const ROUND: Duration = Duration::from_millis(400);
    const ROUNDS: usize = 3;
    const BATCH: usize = 16;
    let mut candidates: Vec<(String, PathBuf)> = components()
        .into_iter()
        .filter(|(name, _)| name == "kv" || name.starts_with("kv-"))
        .collect();
    if let Ok(extra) = std::env::var("WASMRAFT_BENCH_COMPONENTS") {
        candidates.extend(
            extra
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| (p.to_string(), PathBuf::from(p))),
        );
    }
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let mut loaded = Vec::new();
    for (name, path) in candidates {
        let bytes = std::fs::read(&path).unwrap();
        let start = Instant::now();
        let code = runtime.load(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        loaded.push((
            name,
            bytes.len(),
            start.elapsed(),
            wasm_plugin(&code),
            0u64,
            0usize,
            Duration::ZERO,
        ));
    }
    for _ in 0..ROUNDS {
        for (_, _, _, plugin, next, applied, spent) in &mut loaded {
            let start = Instant::now();
            while start.elapsed() < ROUND {
                *applied += run_wasm(plugin, next, BATCH);
            }
            *spent += start.elapsed();
        }
    }
    let rate = |applied: usize, spent: Duration| applied as f64 / spent.as_secs_f64();
    let rust = loaded
        .iter()
        .find(|l| l.0 == "kv")
        .map(|l| rate(l.5, l.6))
        .unwrap_or(f64::NAN);
    println!("\nkv implementations, batch {BATCH} (same run; ratio to the Rust component):");
    println!(
        "{:<12} {:>12} {:>12} {:>14} {:>10}",
        "component", "bytes", "compile", "entries/s", "vs Rust"
    );
    for (name, size, compile, _, _, applied, spent) in &loaded {
        let r = rate(*applied, *spent);
        println!("{name:<12} {size:>12} {:>12.2?} {r:>14.0} {:>9.3}x", compile, r / rust);
    }
}

criterion_group!(benches, apply, load);

fn main() {
    benches();
    ratio_summary();
    query_summary();
    language_summary();
    Criterion::default().configure_from_args().final_summary();
}
