//! The node's metrics, in the Prometheus text format (`prometheus-client`). Counters are bumped
//! where things happen (the apply loop); gauges are read from openraft's metrics and the node's
//! state when a scrape comes in ([`Metrics::encode`] with a [`Snapshot`]).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use wasmraft_runtime::PluginError;

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
pub struct PeerLabels {
    pub peer: String,
}

/// What a scrape reads from the node at that moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub term: u64,
    pub is_leader: bool,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    /// Followers' lag behind this leader's last log index (empty on a follower).
    pub follower_lag: Vec<(u64, u64)>,
    pub snapshots_built: u64,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
}

/// One node's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Every metric below, registered once (they share their values with the fields).
    registry: Registry,
    /// Log fsyncs (one covers every append queued before it).
    pub fsyncs: Counter,
    /// Appends covered by those fsyncs (their ratio: appends per fsync).
    pub fsync_appends: Counter,
    /// How long each log fsync took, in seconds.
    pub fsync_seconds: Histogram,
    /// How long queries took (read barrier and answer), by consistency, in seconds.
    query_seconds: Family<ConsistencyLabels, Histogram, fn() -> Histogram>,
    /// Command entries applied, by plugin.
    pub entries_applied: Family<PluginLabels, Counter>,
    /// Apply calls into a plugin (a run of entries to one plugin is one call), by plugin.
    pub apply_calls: Family<PluginLabels, Counter>,
    /// Entries a plugin failed, by plugin and kind.
    pub plugin_errors: Family<ErrorLabels, Counter>,
    term: Gauge,
    is_leader: Gauge,
    last_log_index: Gauge<u64, AtomicU64>,
    committed_index: Gauge<u64, AtomicU64>,
    applied_index: Gauge<u64, AtomicU64>,
    follower_lag: Family<PeerLabels, Gauge<u64, AtomicU64>>,
    snapshots_built: Gauge<u64, AtomicU64>,
    snapshots_sent: Gauge<u64, AtomicU64>,
    snapshots_installed: Gauge<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            fsyncs: Counter::default(),
            fsync_appends: Counter::default(),
            fsync_seconds: latency_histogram(),
            query_seconds: Family::new_with_constructor(latency_histogram),
            entries_applied: Family::default(),
            apply_calls: Family::default(),
            plugin_errors: Family::default(),
            term: Gauge::default(),
            is_leader: Gauge::default(),
            last_log_index: Gauge::default(),
            committed_index: Gauge::default(),
            applied_index: Gauge::default(),
            follower_lag: Family::default(),
            snapshots_built: Gauge::default(),
            snapshots_sent: Gauge::default(),
            snapshots_installed: Gauge::default(),
            registry: Registry::default(),
        }
        .registered()
    }
}

/// Buckets for latencies: 50 µs to about 0.8 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 15))
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
        let mut registry = Registry::with_prefix("wasmraft");
        registry.register("log_fsyncs", "Log fsyncs", self.fsyncs.clone());
        registry.register(
            "log_fsync_appends",
            "Appends covered by log fsyncs (appends per fsync: this over log_fsyncs)",
            self.fsync_appends.clone(),
        );
        registry.register(
            "log_fsync_seconds",
            "How long each log fsync took",
            self.fsync_seconds.clone(),
        );
        registry.register(
            "query_seconds",
            "How long queries took (read barrier and answer), by consistency",
            self.query_seconds.clone(),
        );
        registry.register("term", "The node's current Raft term", self.term.clone());
        registry.register("is_leader", "1 when this node leads", self.is_leader.clone());
        registry.register(
            "last_log_index",
            "Last entry in this node's log",
            self.last_log_index.clone(),
        );
        registry.register(
            "committed_index",
            "Last entry known committed",
            self.committed_index.clone(),
        );
        registry.register(
            "applied_index",
            "Last entry applied to the state machine",
            self.applied_index.clone(),
        );
        registry.register(
            "follower_lag_entries",
            "Entries a follower's log is behind this leader's (leader only)",
            self.follower_lag.clone(),
        );
        registry.register(
            "entries_applied",
            "Command entries applied, by plugin",
            self.entries_applied.clone(),
        );
        registry.register(
            "apply_calls",
            "Apply calls into a plugin (one per run of entries), by plugin",
            self.apply_calls.clone(),
        );
        registry.register(
            "plugin_errors",
            "Entries a plugin failed, by plugin and kind (returned, panic, trap, fuel, limit, read_only, protocol)",
            self.plugin_errors.clone(),
        );
        registry.register(
            "snapshots_built",
            "Snapshots this node built",
            self.snapshots_built.clone(),
        );
        registry.register(
            "snapshots_sent",
            "Snapshots this node sent",
            self.snapshots_sent.clone(),
        );
        registry.register(
            "snapshots_installed",
            "Snapshots this node installed",
            self.snapshots_installed.clone(),
        );
        self.registry = registry;
        self
    }

    /// Records one query's latency at `consistency`.
    pub fn observe_query(&self, consistency: &str, took: std::time::Duration) {
        let labels = ConsistencyLabels {
            consistency: consistency.into(),
        };
        self.query_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Counts one apply call of `plugin` and its outcomes.
    pub fn count_apply<'a>(&self, plugin: &str, outcomes: impl Iterator<Item = Option<&'a PluginError>>) {
        let labels = PluginLabels { plugin: plugin.into() };
        self.apply_calls.get_or_create(&labels).inc();
        let mut applied = 0;
        for error in outcomes {
            applied += 1;
            if let Some(e) = error {
                let labels = ErrorLabels {
                    plugin: plugin.into(),
                    kind: error_kind(e).into(),
                };
                self.plugin_errors.get_or_create(&labels).inc();
            }
        }
        self.entries_applied.get_or_create(&labels).inc_by(applied);
    }

    /// The text exposition of every metric, with the gauges set from `now`.
    pub fn encode(&self, now: &Snapshot) -> String {
        self.term.set(now.term as i64);
        self.is_leader.set(i64::from(now.is_leader));
        self.last_log_index.set(now.last_log_index);
        self.committed_index.set(now.committed_index);
        self.applied_index.set(now.applied_index);
        self.follower_lag.clear();
        for (peer, lag) in &now.follower_lag {
            self.follower_lag
                .get_or_create(&PeerLabels { peer: peer.to_string() })
                .set(*lag);
        }
        self.snapshots_built.set(now.snapshots_built);
        self.snapshots_sent.set(now.snapshots_sent);
        self.snapshots_installed.set(now.snapshots_installed);

        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
