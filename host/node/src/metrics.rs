//! The node's metrics, in the Prometheus text format (`prometheus-client`). Two kinds:
//! - **event metrics**, counters and histograms bumped where things happen: the apply loop, the
//!   log's fsync thread, the gRPC layer, the snapshot phases;
//! - **scrape-time metrics**, read from the node when a scrape comes in (Raft state and indexes,
//!   snapshot counters, plugins and compiles, RocksDB sizes): [`Metrics::encode`] takes them as a
//!   [`Scraped`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use wasmraft_runtime::{EntryOutcome, PluginError};
use wasmraft_store::FamilySize;

use crate::activity::Activity;
use crate::pb;
use crate::util::lock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub plugin: String,
    /// returned, panic, trap, fuel, limit, read_only, protocol.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsistencyLabels {
    /// LINEARIZABLE, LEASE or LOCAL.
    pub consistency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The gRPC path, e.g. `/wasmraft.Api/Call` (`other` for a path no service serves).
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: String,
    /// The gRPC status code's name (`Ok`, `Unavailable`, ...).
    pub code: String,
}

/// The gRPC paths of the two requests every client makes (a pipelined call or query counts as
/// one of them).
pub(crate) const CALL: &str = "/wasmraft.v1.Api/Call";
pub(crate) const QUERY: &str = "/wasmraft.v1.Api/Query";

/// The series every answered call and query updates, looked up once: a lookup in a family
/// allocates and hashes its labels, which cost about 5% of the node's CPU per read when reads
/// cost about 10 us. They share their values with the families' series.
#[derive(Debug)]
struct Hot {
    calls_ok: Counter,
    call_grpc_seconds: Histogram,
    queries_ok: Counter,
    query_grpc_seconds: Histogram,
    /// Queries' time by consistency (the `query_seconds` family).
    linearizable_seconds: Histogram,
    lease_seconds: Histogram,
    local_seconds: Histogram,
}

impl Hot {
    fn new(
        grpc_requests: &Family<GrpcLabels, Counter>,
        grpc_seconds: &Family<MethodLabels, Histogram, fn() -> Histogram>,
        query_seconds: &Family<ConsistencyLabels, Histogram, fn() -> Histogram>,
    ) -> Self {
        let ok = |method: &str| {
            let labels = GrpcLabels {
                method: method.into(),
                code: format!("{:?}", tonic::Code::Ok),
            };
            grpc_requests.get_or_create(&labels).clone()
        };
        let seconds = |method: &str| {
            grpc_seconds
                .get_or_create(&MethodLabels { method: method.into() })
                .clone()
        };
        let at = |consistency: pb::Consistency| {
            let labels = ConsistencyLabels {
                consistency: consistency.as_str_name().into(),
            };
            query_seconds.get_or_create(&labels).clone()
        };
        Hot {
            calls_ok: ok(CALL),
            call_grpc_seconds: seconds(CALL),
            queries_ok: ok(QUERY),
            query_grpc_seconds: seconds(QUERY),
            linearizable_seconds: at(pb::Consistency::Linearizable),
            lease_seconds: at(pb::Consistency::Lease),
            local_seconds: at(pb::Consistency::Local),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// build, transfer (received) or install.
    pub phase: String,
}

/// What a scrape reads from the node at that moment.
#[derive(Debug, Default)]
pub struct Scraped {
    pub term: u64,
    /// leader, follower, candidate, learner or shutdown.
    pub role: &'static str,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    /// Followers' lag behind this leader's last log index (empty on a follower).
    pub follower_lag: Vec<(u64, u64)>,
    pub snapshot: pb::SnapshotStatus,
    pub plugins: Vec<pb::PluginInfo>,
    /// Background compiles by component sha256: compiling, ready or failed.
    pub compiles: Vec<pb::CompileState>,
    pub store: Vec<FamilySize>,
    /// Bytes in RocksDB's block cache (one for every family).
    pub block_cache_bytes: u64,
}

/// One node's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Every metric below, registered once (they share their values with the fields), and the
    /// scrape-time ones through [`ScrapeTime`].
    registry: Registry,
    /// What the scrape in progress read from the node.
    scraped: Arc<Mutex<Scraped>>,
    /// Off: nothing is recorded (a node that serves no metrics pays nothing for them).
    recording: AtomicBool,
    /// Plugin apply calls and the entries they carried, over every plugin (for `wasmraft bench`).
    apply_calls_total: AtomicU64,
    apply_entries_total: AtomicU64,
    /// Batches of writes this node proposed to Raft, and the writes in them (`write_counts`; the
    /// histogram's count and sum are not readable outside tests).
    write_batches_total: AtomicU64,
    write_batch_writes_total: AtomicU64,
    /// Log fsyncs (one covers every append queued before it).
    fsyncs: Counter,
    /// Appends covered by those fsyncs (their ratio: appends per fsync).
    fsync_appends: Counter,
    /// Entries covered by those fsyncs (their ratio: the group commit's size).
    fsync_entries: Counter,
    /// How long each log fsync took, in seconds.
    fsync_seconds: Histogram,
    /// How long queries took (read barrier and answer), by consistency, in seconds.
    query_seconds: Family<ConsistencyLabels, Histogram, fn() -> Histogram>,
    /// Writes in each batch this node proposes to Raft (`cluster/proposer.rs`).
    write_batch_writes: Histogram,
    /// Entries in each batch Raft hands the state machine.
    apply_batch_entries: Histogram,
    /// How long each apply call into a plugin took, by plugin.
    apply_seconds: Family<PluginLabels, Histogram, fn() -> Histogram>,
    /// Fuel each entry used, by plugin.
    entry_fuel: Family<PluginLabels, Histogram, fn() -> Histogram>,
    /// Command entries applied, by plugin.
    entries_applied: Family<PluginLabels, Counter>,
    /// Apply calls into a plugin (a run of entries to one plugin is one call), by plugin.
    apply_calls: Family<PluginLabels, Counter>,
    /// Apply calls on an async worker that reached their deadline with entries left (those
    /// applied off the worker).
    apply_deadline_cuts: Counter,
    /// Entries a plugin failed, by plugin and kind.
    plugin_errors: Family<ErrorLabels, Counter>,
    /// gRPC requests served, by method and status code.
    grpc_requests: Family<GrpcLabels, Counter>,
    /// The series of `grpc_requests`, `grpc_seconds` and `query_seconds` every request updates.
    hot: Hot,
    /// How long gRPC requests took to answer (to the response's head, for streams), by method.
    grpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// How long each snapshot phase took, by phase.
    snapshot_seconds: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    /// Snapshot file bytes built, received and installed, by phase.
    snapshot_bytes: Family<PhaseLabels, Counter>,
    /// The status page's history and recent errors.
    pub activity: Activity,
}

impl Default for Metrics {
    fn default() -> Self {
        let query_seconds: Family<ConsistencyLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let grpc_requests = Family::default();
        let grpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let hot = Hot::new(&grpc_requests, &grpc_seconds, &query_seconds);
        Self {
            registry: Registry::default(),
            scraped: Arc::default(),
            recording: AtomicBool::new(true),
            apply_calls_total: AtomicU64::new(0),
            apply_entries_total: AtomicU64::new(0),
            write_batches_total: AtomicU64::new(0),
            write_batch_writes_total: AtomicU64::new(0),
            fsyncs: Counter::default(),
            fsync_appends: Counter::default(),
            fsync_entries: Counter::default(),
            fsync_seconds: latency_histogram(),
            query_seconds,
            write_batch_writes: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            apply_batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            apply_seconds: Family::new_with_constructor(latency_histogram),
            entry_fuel: Family::new_with_constructor(fuel_histogram),
            entries_applied: Family::default(),
            apply_calls: Family::default(),
            apply_deadline_cuts: Counter::default(),
            plugin_errors: Family::default(),
            grpc_requests,
            hot,
            grpc_seconds,
            snapshot_seconds: Family::new_with_constructor(phase_histogram),
            snapshot_bytes: Family::default(),
            activity: Activity::default(),
        }
        .registered()
    }
}

/// Buckets for latencies: 50 µs to about 0.8 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 15))
}

/// Buckets for fuel: 1,000 to about 4 billion (past the per-entry limit).
fn fuel_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1000.0, 4.0, 12))
}

/// Buckets for snapshot phases: 1 ms to about 4.5 minutes.
fn phase_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 19))
}

/// The label value of a plugin error's kind.
pub fn error_kind(e: &PluginError) -> &'static str {
    match e {
        PluginError::Returned(_) => "returned",
        PluginError::Panicked(_) => "panic",
        PluginError::Trapped(_) => "trap",
        PluginError::FuelExhausted { .. } => "fuel",
        PluginError::Limit(_) => "limit",
        PluginError::ReadOnly(_) => "read_only",
        _ => "protocol",
    }
}

impl Metrics {
    /// These metrics with their registry filled in.
    fn registered(mut self) -> Self {
        let mut r = Registry::with_prefix("wasmraft");
        r.register("log_fsyncs", "Log fsyncs", self.fsyncs.clone());
        r.register(
            "log_fsync_appends",
            "Appends covered by log fsyncs (appends per fsync: this over log_fsyncs)",
            self.fsync_appends.clone(),
        );
        r.register(
            "log_fsync_entries",
            "Entries covered by log fsyncs (the group commit's size: this over log_fsyncs)",
            self.fsync_entries.clone(),
        );
        r.register(
            "log_fsync_seconds",
            "How long each log fsync took",
            self.fsync_seconds.clone(),
        );
        r.register(
            "query_seconds",
            "How long queries took (read barrier and answer), by consistency",
            self.query_seconds.clone(),
        );
        r.register(
            "apply_batch_entries",
            "Entries in each batch Raft hands the state machine",
            self.apply_batch_entries.clone(),
        );
        r.register(
            "apply_seconds",
            "How long each apply call into a plugin took (per entry: its sum over entries_applied), by plugin",
            self.apply_seconds.clone(),
        );
        r.register(
            "entry_fuel",
            "Fuel each applied entry used, by plugin",
            self.entry_fuel.clone(),
        );
        r.register(
            "entries_applied",
            "Command entries applied, by plugin",
            self.entries_applied.clone(),
        );
        r.register(
            "apply_calls",
            "Apply calls into a plugin (one per run of entries), by plugin",
            self.apply_calls.clone(),
        );
        r.register(
            "write_batch_writes",
            "Writes in each batch this node proposed to Raft as the leader (more wait for a batch in flight under load)",
            self.write_batch_writes.clone(),
        );
        r.register(
            "apply_deadline_cuts",
            "Apply calls on an async worker that reached their deadline with entries left, which then applied off the workers",
            self.apply_deadline_cuts.clone(),
        );
        r.register(
            "plugin_errors",
            "Entries a plugin failed, by plugin and kind (returned, panic, trap, fuel, limit, read_only, protocol)",
            self.plugin_errors.clone(),
        );
        r.register(
            "grpc_requests",
            "gRPC requests served, by method and status code",
            self.grpc_requests.clone(),
        );
        r.register(
            "grpc_seconds",
            "How long gRPC requests took to answer (to the response head, for streams), by method",
            self.grpc_seconds.clone(),
        );
        r.register(
            "snapshot_seconds",
            "How long each snapshot build, transfer (received) and install took",
            self.snapshot_seconds.clone(),
        );
        r.register(
            "snapshot_bytes",
            "Snapshot file bytes built, received (transfer) and installed",
            self.snapshot_bytes.clone(),
        );
        r.register_collector(Box::new(ScrapeTime(self.scraped.clone())));
        self.registry = r;
        self
    }

    /// Stops recording: for a node that does not serve its metrics.
    pub fn stop_recording(&self) {
        self.recording.store(false, Ordering::Relaxed);
    }

    fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// Plugin apply calls so far, and the entries they carried.
    pub fn apply_counts(&self) -> (u64, u64) {
        (
            self.apply_calls_total.load(Ordering::Relaxed),
            self.apply_entries_total.load(Ordering::Relaxed),
        )
    }

    /// Log fsyncs, and the appends and entries they covered.
    pub fn fsync_counts(&self) -> (u64, u64, u64) {
        (self.fsyncs.get(), self.fsync_appends.get(), self.fsync_entries.get())
    }

    /// Records one log fsync that covered `appends` appends of `entries` entries, and took `took`.
    pub fn observe_fsync(&self, appends: usize, entries: u64, took: Duration) {
        if !self.recording() {
            return;
        }
        self.fsync_seconds.observe(took.as_secs_f64());
        self.fsyncs.inc();
        self.fsync_appends.inc_by(appends as u64);
        self.fsync_entries.inc_by(entries);
    }

    /// Records one query's latency at `consistency`.
    pub fn observe_query(&self, consistency: pb::Consistency, took: Duration) {
        if !self.recording() {
            return;
        }
        let seconds = match consistency {
            pb::Consistency::Linearizable => &self.hot.linearizable_seconds,
            pb::Consistency::Lease => &self.hot.lease_seconds,
            pb::Consistency::Local => &self.hot.local_seconds,
        };
        seconds.observe(took.as_secs_f64());
    }

    /// Records the size of one batch Raft handed the state machine.
    pub fn observe_apply_batch(&self, entries: usize) {
        if !self.recording() {
            return;
        }
        self.apply_batch_entries.observe(entries as f64);
    }

    /// Records one batch of `writes` proposed to Raft.
    pub fn observe_write_batch(&self, writes: usize) {
        if !self.recording() {
            return;
        }
        self.write_batches_total.fetch_add(1, Ordering::Relaxed);
        self.write_batch_writes_total
            .fetch_add(writes as u64, Ordering::Relaxed);
        self.write_batch_writes.observe(writes as f64);
    }

    /// Batches of writes proposed to Raft so far, and the writes in them.
    pub fn write_counts(&self) -> (u64, u64) {
        (
            self.write_batches_total.load(Ordering::Relaxed),
            self.write_batch_writes_total.load(Ordering::Relaxed),
        )
    }

    /// Counts an apply call on an async worker cut at its deadline.
    pub fn count_deadline_cut(&self) {
        if self.recording() {
            self.apply_deadline_cuts.inc();
        }
    }

    /// Counts one apply call of `plugin`, which took `took`, and its outcomes.
    pub fn count_apply(&self, plugin: &str, took: Duration, outcomes: &[EntryOutcome]) {
        if !self.recording() {
            return;
        }
        self.apply_calls_total.fetch_add(1, Ordering::Relaxed);
        self.apply_entries_total
            .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        let labels = PluginLabels { plugin: plugin.into() };
        self.apply_calls.get_or_create(&labels).inc();
        self.apply_seconds.get_or_create(&labels).observe(took.as_secs_f64());
        self.entries_applied
            .get_or_create(&labels)
            .inc_by(outcomes.len() as u64);
        let fuel = self.entry_fuel.get_or_create(&labels);
        for outcome in outcomes {
            fuel.observe(outcome.fuel_used as f64);
            if let Err(e) = &outcome.result {
                let kind = error_kind(e);
                let labels = ErrorLabels {
                    plugin: plugin.into(),
                    kind: kind.into(),
                };
                self.plugin_errors.get_or_create(&labels).inc();
                self.activity
                    .error(format!("plugin {plugin}: {kind}"), Some(outcome.index), &e.to_string());
            }
        }
    }

    /// Counts one gRPC request to `method` answered with `code` after `took`.
    pub fn observe_grpc(&self, method: &str, code: tonic::Code, took: Duration) {
        if !self.recording() {
            return;
        }
        let hot = &self.hot;
        match (method, code) {
            (CALL, tonic::Code::Ok) => hot.calls_ok.inc(),
            (QUERY, tonic::Code::Ok) => hot.queries_ok.inc(),
            _ => self
                .grpc_requests
                .get_or_create(&GrpcLabels {
                    method: method.into(),
                    code: format!("{code:?}"),
                })
                .inc(),
        };
        match method {
            CALL => {
                hot.call_grpc_seconds.observe(took.as_secs_f64());
                self.activity.count_call(took);
            }
            QUERY => {
                hot.query_grpc_seconds.observe(took.as_secs_f64());
                self.activity.count_query(took);
            }
            _ => self
                .grpc_seconds
                .get_or_create(&MethodLabels { method: method.into() })
                .observe(took.as_secs_f64()),
        }
    }

    /// Records a finished snapshot `phase` (build, transfer or install).
    pub fn observe_snapshot_phase(&self, phase: &str, stats: &pb::PhaseStats) {
        if !self.recording() {
            return;
        }
        let labels = PhaseLabels { phase: phase.into() };
        self.snapshot_seconds
            .get_or_create(&labels)
            .observe(stats.micros as f64 / 1e6);
        self.snapshot_bytes.get_or_create(&labels).inc_by(stats.file_bytes);
    }

    /// The text exposition of every metric, with the scrape-time ones taken from `now`.
    pub fn encode(&self, now: Scraped) -> String {
        *lock(&self.scraped) = now;
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// A compile's state without its error: compiling, ready or failed.
fn compile_state(state: &str) -> &'static str {
    match state {
        "compiling" => "compiling",
        "ready" => "ready",
        _ => "failed",
    }
}

/// The scrape-time metrics: encodes whatever [`Metrics::encode`] was given.
#[derive(Debug)]
struct ScrapeTime(Arc<Mutex<Scraped>>);

/// Encodes one metric without labels.
fn one(e: &mut DescriptorEncoder, name: &str, help: &str, metric: impl EncodeMetric) -> std::fmt::Result {
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Encodes one metric with a value per label set.
fn each<L: EncodeLabelSet, M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (L, M)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in values {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ScrapeTime {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let now = lock(&self.0);
        let e = &mut e;
        one(e, "term", "The node's current Raft term", ConstGauge::new(now.term))?;
        one(
            e,
            "is_leader",
            "1 when this node leads",
            ConstGauge::new(u64::from(now.role == "leader")),
        )?;
        each(
            e,
            "role",
            "1 for the node's Raft role",
            MetricType::Gauge,
            ["leader", "follower", "candidate", "learner", "shutdown"]
                .map(|role| ([("role", role)], ConstGauge::new(u64::from(now.role == role)))),
        )?;
        one(
            e,
            "last_log_index",
            "Last entry in this node's log",
            ConstGauge::new(now.last_log_index),
        )?;
        one(
            e,
            "committed_index",
            "Last entry known committed",
            ConstGauge::new(now.committed_index),
        )?;
        one(
            e,
            "applied_index",
            "Last entry applied to the state machine",
            ConstGauge::new(now.applied_index),
        )?;
        each(
            e,
            "follower_lag_entries",
            "Entries a follower's log is behind this leader's (leader only)",
            MetricType::Gauge,
            now.follower_lag
                .iter()
                .map(|(peer, lag)| ([("peer", peer.to_string())], ConstGauge::new(*lag))),
        )?;

        let s = &now.snapshot;
        for (name, help, value) in [
            ("snapshots_built", "Snapshots this node built", s.built),
            (
                "snapshot_builds_failed",
                "Snapshot builds that failed (a plugin's snapshot export erred)",
                s.build_failed,
            ),
            ("snapshots_sent", "Snapshots this node sent", s.sent),
            ("snapshots_installed", "Snapshots this node installed", s.installed),
            (
                "snapshot_resumed_bytes",
                "Bytes snapshot transfers did not resend (resumed from an earlier transfer)",
                s.resumed_bytes,
            ),
        ] {
            one(e, name, help, ConstCounter::new(value))?;
        }
        each(
            e,
            "snapshots_rejected",
            "Snapshots refused on receipt, by reason",
            MetricType::Counter,
            [
                ("corrupted", s.rejected_corrupted),
                ("truncated", s.rejected_truncated),
                ("stale", s.rejected_stale),
                ("format", s.rejected_format),
            ]
            .map(|(reason, n)| ([("reason", reason)], ConstCounter::new(n))),
        )?;
        one(
            e,
            "snapshot_file_bytes",
            "Size of the newest snapshot file this node holds",
            ConstGauge::new(s.file_bytes),
        )?;
        one(
            e,
            "snapshot_building",
            "1 while a snapshot build runs",
            ConstGauge::new(u64::from(s.building)),
        )?;

        each(
            e,
            "plugin_active",
            "The active version of each plugin: the log index it activated at",
            MetricType::Gauge,
            now.plugins.iter().map(|p| {
                (
                    [
                        ("plugin", p.name.as_str()),
                        ("version", p.sha256.as_str()),
                        ("label", p.label.as_str()),
                    ],
                    ConstGauge::new(p.activated_index),
                )
            }),
        )?;
        each(
            e,
            "plugin_component_bytes",
            "Size of each plugin's active component",
            MetricType::Gauge,
            now.plugins
                .iter()
                .map(|p| ([("plugin", p.name.as_str())], ConstGauge::new(p.size))),
        )?;
        each(
            e,
            "compiles",
            "Background compiles of deployed components, by state (compiling, ready, failed)",
            MetricType::Gauge,
            ["compiling", "ready", "failed"].map(|state| {
                let n = now.compiles.iter().filter(|c| compile_state(&c.state) == state).count();
                ([("state", state)], ConstGauge::new(n as u64))
            }),
        )?;
        each(
            e,
            "compile_state",
            "1 for each component this node compiled or compiles, with its state",
            MetricType::Gauge,
            now.compiles.iter().map(|c| {
                (
                    [("version", c.sha256.as_str()), ("state", compile_state(&c.state))],
                    ConstGauge::new(1u64),
                )
            }),
        )?;

        one(
            e,
            "rocksdb_block_cache_bytes",
            "Bytes in RocksDB's block cache, which every column family shares",
            ConstGauge::new(now.block_cache_bytes),
        )?;
        for (name, help, value) in [
            (
                "rocksdb_sst_bytes",
                "Size of RocksDB's SST files, by column family",
                (|f: &FamilySize| f.sst_bytes) as fn(&FamilySize) -> u64,
            ),
            (
                "rocksdb_memtable_bytes",
                "Size of RocksDB's memtables, by column family",
                |f| f.memtable_bytes,
            ),
            (
                "rocksdb_table_readers_bytes",
                "Memory of RocksDB's open SST files (index and filter blocks) held outside the block cache, by column family",
                |f| f.table_readers_bytes,
            ),
            (
                "rocksdb_pending_compaction_bytes",
                "Bytes RocksDB estimates its compactions still have to rewrite, by column family",
                |f| f.pending_compaction_bytes,
            ),
        ] {
            each(
                e,
                name,
                help,
                MetricType::Gauge,
                now.store
                    .iter()
                    .map(|f| ([("family", f.family)], ConstGauge::new(value(f)))),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied_text(metrics: &Metrics) -> String {
        let outcome = EntryOutcome {
            index: 7,
            result: Err(PluginError::Returned("no".into())),
            fuel_used: 5000,
        };
        metrics.count_apply("kv", Duration::from_micros(30), &[outcome]);
        metrics.observe_fsync(3, 12, Duration::from_micros(200));
        metrics.encode(Scraped::default())
    }

    #[test]
    fn a_node_that_serves_no_metrics_records_none() {
        let recording = applied_text(&Metrics::default());
        assert!(
            recording.contains(r#"wasmraft_plugin_errors_total{plugin="kv",kind="returned"} 1"#),
            "{recording}"
        );
        assert!(recording.contains("wasmraft_log_fsync_appends_total 3"), "{recording}");
        assert!(recording.contains("wasmraft_log_fsync_entries_total 12"), "{recording}");

        let off = Metrics::default();
        off.stop_recording();
        let text = applied_text(&off);
        assert!(!text.contains("plugin_errors_total{"), "{text}");
        assert!(text.contains("wasmraft_log_fsync_appends_total 0"), "{text}");
    }
}
