//! `wasmraft bench`: a closed-loop load against a running cluster, reporting ops/s and latency
//! percentiles; with `--compare-native`, the same workload against the kv logic compiled into the
//! node (`builtin:kv-native`), in the same run, and the ratio.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use wasmraft_node::pb;

use crate::client::{self, Target};
use crate::context::EndpointArg;
use crate::pipeline::Pipeline;
use wasmraft::workload::SplitMix;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    endpoint: EndpointArg,
    /// Concurrent clients, each with its own connection unless `--conns` says fewer.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests each client keeps in flight, all on its connection's one `Pipeline` stream (each
    /// with a session of its own, so retries stay safe).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Connections the clients share, as etcd's benchmark does (`--conns 8 --clients 64`: eight
    /// clients on each connection and its `Pipeline` stream, as the tasks of one application
    /// process would share its channel). Default: one per client.
    #[arg(long)]
    conns: Option<usize>,
    /// One unary `Call`/`Query` RPC per request (an HTTP/2 stream each, as `wasmraft call` does),
    /// instead of each connection's one `Pipeline` stream.
    #[arg(long)]
    unary: bool,
    /// Operations in total.
    #[arg(long, default_value_t = 10_000)]
    ops: usize,
    /// Run for this long instead (e.g. `600s`, `10m`): each client goes on until then, whatever
    /// `--ops` says. For soak runs (the node's RSS is printed at the start and the end).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Every this long (e.g. `1m`), print the ops/s since the previous line and each node
    /// process's RSS: shows whether a soak's memory levels off.
    #[arg(long, value_parser = parse_duration)]
    sample_every: Option<Duration>,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// The plugin under load (kv's command language).
    #[arg(long, default_value = "kv")]
    plugin: String,
    /// Fraction of operations that are reads (queries), 0.0-1.0.
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    /// Read consistency: linearizable, lease or local.
    #[arg(long, default_value = "linearizable", value_parser = client::parse_consistency)]
    consistency: pb::Consistency,
    /// Also run the workload against the kv logic compiled natively into the node (activated as
    /// `native-kv`), and print the WASM/native ratio. Each plugin runs two halves of the
    /// workload, in the order plugin, native, native, plugin. The nodes must be built with
    /// `--features bench`.
    #[arg(long)]
    compare_native: bool,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Build N GiB of kv state on a one-node cluster (in this process), then time the snapshot's
    /// build, transfer to a new learner and install, next to raw disk write and zstd speed.
    Snapshot(crate::snapshot_bench::SnapshotBenchArgs),
}

/// What one run measured.
struct Outcome {
    ops: usize,
    /// Failed operations by status code.
    errors: Errors,
    elapsed: Duration,
    /// Latencies in microseconds.
    latencies: Histogram<u64>,
}

/// Failed operations of one status code, and one of their messages.
struct Failed {
    count: u64,
    example: String,
}

/// Failed operations by status code.
type Errors = BTreeMap<String, Failed>;

fn add_failures(errors: &mut Errors, code: String, failed: Failed) {
    errors
        .entry(code)
        .and_modify(|f| f.count += failed.count)
        .or_insert(failed);
}

impl Outcome {
    /// Both runs, as one.
    fn merge(mut self, other: Outcome) -> anyhow::Result<Outcome> {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.latencies.add(other.latencies)?;
        for (code, failed) in other.errors {
            add_failures(&mut self.errors, code, failed);
        }
        Ok(self)
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0.0-1.0), in milliseconds.
    fn percentile(&self, q: f64) -> f64 {
        self.latencies.value_at_quantile(q) as f64 / 1000.0
    }
}

/// One `--sample-every` line: `ops` done over the last `every`, and each node process's RSS.
fn sample_line(at: Duration, ops: u64, every: Duration, rss: &BTreeMap<u32, u64>) -> String {
    let rss: Vec<String> = rss.values().map(|bytes| format!("{} MiB", bytes >> 20)).collect();
    let rss = match rss.is_empty() {
        true => "not reported".to_string(),
        false => rss.join(", "),
    };
    format!(
        "  at {}s: {:.0} ops/s over the last {}s, node process RSS {rss}",
        at.as_secs(),
        ops as f64 / every.as_secs_f64(),
        every.as_secs()
    )
}

/// A latency histogram in microseconds, 1 µs to 1 h at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// `90`, `90s`, `10m` or `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 90s, 10m or 1h"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

impl BenchArgs {
    /// How many connections the clients share.
    fn connections(&self) -> usize {
        let clients = self.clients.max(1);
        self.conns.unwrap_or(clients).clamp(1, clients)
    }

    /// The connections, as the header line says them.
    fn connections_line(&self) -> String {
        let (connections, clients) = (self.connections(), self.clients.max(1));
        let how = if self.unary {
            "unary RPCs"
        } else {
            "one Pipeline stream"
        };
        match connections == clients {
            true => format!("{how} each"),
            false => format!("sharing {connections} connections, {how} each"),
        }
    }
}

/// How a lane sends its requests.
#[derive(Clone)]
enum Lane {
    Unary(client::Api),
    Pipelined(Pipeline),
}

impl Lane {
    async fn call(&mut self, req: pb::CallRequest) -> Result<(), tonic::Status> {
        match self {
            Lane::Unary(api) => client::call_retrying(api, req).await.map(|_| ()),
            Lane::Pipelined(pipeline) => client::retrying(|| pipeline.call(req.clone())).await.map(|_| ()),
        }
    }

    async fn query(&mut self, req: pb::QueryRequest) -> Result<(), tonic::Status> {
        match self {
            Lane::Unary(api) => api.query(req).await.map(|_| ()),
            Lane::Pipelined(pipeline) => pipeline.query(req).await.map(|_| ()),
        }
    }
}

async fn run_once(
    args: &BenchArgs,
    target: &Target,
    plugin: &str,
    total_ops: usize,
    duration: Option<Duration>,
) -> anyhow::Result<Outcome> {
    let value = "x".repeat(args.value_size);
    let mut connections = Vec::new();
    for _ in 0..args.connections() {
        let mut api = client::connect(target).await?;
        connections.push(match args.unary {
            true => Lane::Unary(api),
            false => Lane::Pipelined(Pipeline::open(&mut api).await?),
        });
    }
    // A lane is one request in flight: each client has `pipeline` of them, and the lanes take
    // turns over the connections.
    let lanes = args.clients.max(1) * args.pipeline.max(1);
    let per_lane = total_ops.div_ceil(lanes);
    let clients: Vec<_> = (0..lanes)
        .map(|lane| connections[lane % connections.len()].clone())
        .collect();
    let progress = match duration {
        Some(duration) => crate::progress::bar(duration.as_secs(), &format!("{plugin} (seconds)")),
        None => crate::progress::bar(total_ops as u64, plugin),
    };
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let mut tasks = Vec::new();
    for (c, mut api) in clients.into_iter().enumerate() {
        let plugin = plugin.to_string();
        let value = value.clone();
        let (keys, read_ratio, consistency) = (args.keys.max(1), args.read_ratio, args.consistency);
        let ops = match deadline {
            Some(_) => usize::MAX,
            None => per_lane.min(total_ops.saturating_sub(c * per_lane)),
        };
        let done = done.clone();
        // Each client's writes are retry-safe: one session, its sequence numbers.
        let client_id = format!("bench-{}-{c}", client::new_client_id());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            let mut rng = SplitMix(c as u64 + 1);
            let mut latencies = histogram();
            let mut errors = Errors::new();
            for _ in 0..ops {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let key = rng.next() % keys as u64;
                let read = (rng.next() % 10_000) as f64 / 10_000.0 < read_ratio;
                let t = Instant::now();
                let ok = if read {
                    let request = format!(r#"{{"op":"get","key":"k{key}"}}"#).into_bytes();
                    let req = pb::QueryRequest {
                        plugin: plugin.clone(),
                        request,
                        consistency: consistency as i32,
                        shadow: false,
                    };
                    api.query(req).await
                } else {
                    let payload = format!(r#"{{"op":"put","key":"k{key}","value":"{value}"}}"#).into_bytes();
                    seq += 1;
                    let req = pb::CallRequest {
                        plugin: plugin.clone(),
                        payload,
                        session: Some(pb::Session {
                            client: client_id.clone(),
                            seq,
                        }),
                    };
                    api.call(req).await
                };
                latencies.saturating_record(t.elapsed().as_micros() as u64);
                done.fetch_add(1, Ordering::Relaxed);
                if let Err(status) = ok {
                    let failed = Failed {
                        count: 1,
                        example: status.message().to_string(),
                    };
                    add_failures(&mut errors, format!("{:?}", status.code()), failed);
                }
            }
            (latencies, errors)
        }));
    }
    let ticker = {
        let (progress, done) = (progress.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                match deadline {
                    Some(_) => progress.set_position(started.elapsed().as_secs()),
                    None => progress.set_position(done.load(Ordering::Relaxed)),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let sampler = args.sample_every.filter(|every| !every.is_zero()).map(|every| {
        let (progress, done, target) = (progress.clone(), done.clone(), target.clone());
        tokio::spawn(async move {
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let mut before = 0;
            loop {
                interval.tick().await;
                let now = done.load(Ordering::Relaxed);
                let rss = usage(&target).await.server_rss_bytes;
                progress.suspend(|| println!("{}", sample_line(started.elapsed(), now - before, every, &rss)));
                before = now;
            }
        })
    });
    let mut latencies = histogram();
    let mut errors = Errors::new();
    for task in tasks {
        let (l, e) = task.await?;
        latencies.add(l)?;
        for (code, failed) in e {
            add_failures(&mut errors, code, failed);
        }
    }
    let elapsed = started.elapsed();
    ticker.abort();
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    progress.finish_and_clear();
    Ok(Outcome {
        ops: latencies.len() as usize,
        errors,
        elapsed,
        latencies,
    })
}

fn print_row(label: &str, o: &Outcome) {
    println!(
        "{label:<12} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
        o.ops,
        o.ops_per_sec(),
        o.percentile(0.50),
        o.percentile(0.99),
        o.percentile(0.999),
        o.errors.values().map(|f| f.count).sum::<u64>()
    );
}

/// What the cluster's node processes and this client had used at one moment.
#[derive(Default)]
struct Usage {
    /// CPU time of each node process (by pid: `wasmraft dev` runs every node in one).
    server_cpu_micros: BTreeMap<u32, u64>,
    /// Resident memory of each node process.
    server_rss_bytes: BTreeMap<u32, u64>,
    client_cpu_micros: u64,
    counters: Counters,
}

/// The nodes' own counters of what their log, apply path and replication did.
#[derive(Default)]
struct Counters {
    log_fsyncs: u64,
    log_fsync_appends: u64,
    log_fsync_entries: u64,
    apply_calls: u64,
    apply_entries: u64,
    peer_appends: u64,
    peer_append_entries: u64,
    write_batches: u64,
    write_batch_writes: u64,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.log_fsyncs += other.log_fsyncs;
        self.log_fsync_appends += other.log_fsync_appends;
        self.log_fsync_entries += other.log_fsync_entries;
        self.apply_calls += other.apply_calls;
        self.apply_entries += other.apply_entries;
        self.peer_appends += other.peer_appends;
        self.peer_append_entries += other.peer_append_entries;
        self.write_batches += other.write_batches;
        self.write_batch_writes += other.write_batch_writes;
    }

    /// What was counted since `before`.
    fn since(&self, before: &Counters) -> Counters {
        Counters {
            log_fsyncs: self.log_fsyncs.saturating_sub(before.log_fsyncs),
            log_fsync_appends: self.log_fsync_appends.saturating_sub(before.log_fsync_appends),
            log_fsync_entries: self.log_fsync_entries.saturating_sub(before.log_fsync_entries),
            apply_calls: self.apply_calls.saturating_sub(before.apply_calls),
            apply_entries: self.apply_entries.saturating_sub(before.apply_entries),
            peer_appends: self.peer_appends.saturating_sub(before.peer_appends),
            peer_append_entries: self.peer_append_entries.saturating_sub(before.peer_append_entries),
            write_batches: self.write_batches.saturating_sub(before.write_batches),
            write_batch_writes: self.write_batch_writes.saturating_sub(before.write_batch_writes),
        }
    }
}

/// Every member's usage, as each reports it (members that do not answer are left out).
async fn usage(target: &Target) -> Usage {
    let mut usage = Usage {
        client_cpu_micros: wasmraft_node::process_cpu_micros(),
        ..Usage::default()
    };
    let Ok(mut api) = client::connect(target).await else {
        return usage;
    };
    let Ok(members) = api.members(pb::MembersRequest::default()).await else {
        return usage;
    };
    for member in members.into_inner().members {
        if let Some(u) = member.status.and_then(|s| s.usage) {
            usage.server_cpu_micros.insert(u.pid, u.cpu_micros);
            usage.server_rss_bytes.insert(u.pid, u.rss_bytes);
            usage.counters.add(&Counters {
                log_fsyncs: u.log_fsyncs,
                log_fsync_appends: u.log_fsync_appends,
                log_fsync_entries: u.log_fsync_entries,
                apply_calls: u.apply_calls,
                apply_entries: u.apply_entries,
                peer_appends: u.peer_appends,
                peer_append_entries: u.peer_append_entries,
                write_batches: u.write_batches,
                write_batch_writes: u.write_batch_writes,
            });
        }
    }
    usage
}

/// What a run cost the cluster and this client: the difference of two [`Usage`]s.
#[derive(Default)]
struct Cost {
    server_cpu_micros: u64,
    node_processes: usize,
    client_cpu_micros: u64,
    counters: Counters,
    /// Each node process's resident memory at the start (if it was known then) and the end.
    rss_bytes: BTreeMap<u32, (Option<u64>, u64)>,
}

impl Cost {
    fn between(before: &Usage, after: &Usage) -> Cost {
        Cost {
            server_cpu_micros: after
                .server_cpu_micros
                .iter()
                .map(|(pid, cpu)| cpu.saturating_sub(before.server_cpu_micros.get(pid).copied().unwrap_or(*cpu)))
                .sum(),
            node_processes: after.server_cpu_micros.len(),
            client_cpu_micros: after.client_cpu_micros.saturating_sub(before.client_cpu_micros),
            counters: after.counters.since(&before.counters),
            rss_bytes: after
                .server_rss_bytes
                .iter()
                .map(|(pid, end)| (*pid, (before.server_rss_bytes.get(pid).copied(), *end)))
                .collect(),
        }
    }

    /// Both runs' costs, `self` first.
    fn merge(mut self, later: Cost) -> Cost {
        self.server_cpu_micros += later.server_cpu_micros;
        self.node_processes = self.node_processes.max(later.node_processes);
        self.client_cpu_micros += later.client_cpu_micros;
        self.counters.add(&later.counters);
        for (pid, (start, end)) in later.rss_bytes {
            let rss = self.rss_bytes.entry(pid).or_insert((start, end));
            rss.1 = end;
        }
        self
    }

    /// What one of `ops` operations cost.
    fn print(&self, ops: usize) {
        let ops = ops.max(1) as f64;
        let c = &self.counters;
        let mut line = format!(
            "  cost per op: server CPU {:.0} us ({} node processes), client CPU {:.0} us",
            self.server_cpu_micros as f64 / ops,
            self.node_processes,
            self.client_cpu_micros as f64 / ops
        );
        if c.write_batches > 0 {
            line += &format!(
                "; {:.1} writes per batch proposed",
                c.write_batch_writes as f64 / c.write_batches as f64
            );
        }
        if c.log_fsyncs > 0 {
            line += &format!(
                "; {:.1} log appends ({:.1} entries) per fsync",
                c.log_fsync_appends as f64 / c.log_fsyncs as f64,
                c.log_fsync_entries as f64 / c.log_fsyncs as f64
            );
        }
        if c.apply_calls > 0 {
            line += &format!(
                "; {:.1} entries per plugin apply call",
                c.apply_entries as f64 / c.apply_calls as f64
            );
        }
        if c.peer_appends > 0 {
            line += &format!(
                "; {:.2} peer append messages per op ({:.1} entries each)",
                c.peer_appends as f64 / ops,
                c.peer_append_entries as f64 / c.peer_appends as f64
            );
        }
        println!("{line}");
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        let rss: Vec<String> = self
            .rss_bytes
            .values()
            .map(|(start, end)| match start {
                Some(start) => format!("{:.0} -> {:.0} MiB", mib(*start), mib(*end)),
                None => format!("{:.0} MiB", mib(*end)),
            })
            .collect();
        if !rss.is_empty() {
            println!("  node process RSS, start -> end: {}", rss.join(", "));
        }
    }
}

/// One run of the workload against `plugin`, with what it cost.
async fn measure(
    args: &BenchArgs,
    target: &Target,
    plugin: &str,
    ops: usize,
    duration: Option<Duration>,
) -> anyhow::Result<(Outcome, Cost)> {
    let before = usage(target).await;
    let outcome = run_once(args, target, plugin, ops, duration).await?;
    let after = usage(target).await;
    Ok((outcome, Cost::between(&before, &after)))
}

pub async fn run(mut args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(BenchCommand::Snapshot(snapshot)) = args.command.take() {
        return crate::snapshot_bench::run(snapshot).await;
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        anyhow::bail!("--read-ratio must be between 0 and 1");
    }
    let target = args.endpoint.target()?;
    if args.compare_native {
        let mut api = client::connect(&target).await?;
        let plugins = api.list_plugins(pb::ListPluginsRequest {}).await?.into_inner().plugins;
        if !plugins.iter().any(|p| p.name == "native-kv") {
            crate::deploy::activate_builtin(&mut api, "native-kv", "kv-native")
                .await
                .map_err(|s| anyhow::anyhow!("activating native-kv: {}", s.message()))?;
        }
    }
    let amount = match args.duration {
        Some(d) => format!("for {}s", d.as_secs()),
        None => format!("{} ops", args.ops),
    };
    println!(
        "bench: {} clients x {} in flight ({}), {amount}, {}-byte values, {} keys, read ratio {}, {:?} reads, at {}",
        args.clients.max(1),
        args.pipeline.max(1),
        args.connections_line(),
        args.value_size,
        args.keys,
        args.read_ratio,
        args.consistency,
        target.endpoint
    );
    println!(
        "{:<12} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "plugin", "ops", "ops/s", "p50 ms", "p99 ms", "p999 ms", "errors"
    );
    let (wasm, native) = if args.compare_native {
        // Halves in the order kv, native, native, kv: a drift over the row (compactions after a
        // write row, a growing store) weighs on both plugins alike.
        let (ops, duration) = (args.ops.div_ceil(2), args.duration.map(|d| d / 2));
        let first = measure(&args, &target, &args.plugin, ops, duration).await?;
        let native_first = measure(&args, &target, "native-kv", ops, duration).await?;
        let native_second = measure(&args, &target, "native-kv", ops, duration).await?;
        let second = measure(&args, &target, &args.plugin, ops, duration).await?;
        let wasm = (first.0.merge(second.0)?, first.1.merge(second.1));
        let native = (
            native_first.0.merge(native_second.0)?,
            native_first.1.merge(native_second.1),
        );
        (wasm, Some(native))
    } else {
        (
            measure(&args, &target, &args.plugin, args.ops, args.duration).await?,
            None,
        )
    };
    print_row(&args.plugin, &wasm.0);
    wasm.1.print(wasm.0.ops);
    if let Some((native, cost)) = &native {
        print_row("native-kv", native);
        cost.print(native.ops);
        println!(
            "{} / native-kv: {:.2}x ops/s, p50 {:.2}x",
            args.plugin,
            wasm.0.ops_per_sec() / native.ops_per_sec(),
            wasm.0.percentile(0.5) / native.percentile(0.5).max(f64::MIN_POSITIVE)
        );
    }
    let runs = std::iter::once((args.plugin.as_str(), &wasm.0)).chain(native.iter().map(|n| ("native-kv", &n.0)));
    for (plugin, outcome) in runs {
        if !outcome.errors.is_empty() {
            let by_code: Vec<String> = outcome
                .errors
                .iter()
                .map(|(code, f)| format!("{code} {} (e.g. {:?})", f.count, f.example))
                .collect();
            eprintln!(
                "warning: {plugin}: operations failed, by status code: {}",
                by_code.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_seconds_minutes_and_hours_and_refuse_anything_else() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "m", "10 m", "10d", "1.5h", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
