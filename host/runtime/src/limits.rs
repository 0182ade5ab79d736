//! Every limit a plugin runs under, as a named constant with its reason.
//!
//! A limit turns a plugin that would exhaust a node into a deterministic error result: the same
//! entry fails the same way on every replica, and the node goes on. All are overridable per
//! runtime through [`Limits`]; the engine-level ones (stack) are part of the compiled-artifact
//! cache key.

/// Fuel for one entry (roughly one unit per wasm instruction). Generous: the kv plugin spends
/// about 10-30 thousand per entry, an interpreted (Python/JS) guest a few million. What it bounds
/// is a runaway entry, which otherwise would stall the whole cluster's apply path. Fuel, not
/// wall-clock, so every replica stops the entry at the same instruction.
pub const FUEL_PER_ENTRY: u64 = 500_000_000;

/// Fuel for `init`, a query, or one snapshot/restore call: interpreters build their heap in init,
/// and a snapshot chunk may scan many pairs.
pub const FUEL_PER_CALL: u64 = 2_000_000_000;

/// Linear memory of one plugin instance. Interpreted guests need tens of MiB; a node runs many
/// plugins, so one plugin must not take the node's memory.
pub const MAX_MEMORY_BYTES: usize = 256 << 20;

/// Elements of one table. Function-pointer tables of large interpreted guests reach ~20k.
pub const MAX_TABLE_ELEMENTS: usize = 200_000;

/// Core instances, memories and tables in one component: real guests use a handful; bounding them
/// bounds the host memory one instantiation can claim.
pub const MAX_INSTANCES: usize = 64;
/// See [`MAX_INSTANCES`].
pub const MAX_MEMORIES: usize = 8;
/// See [`MAX_INSTANCES`].
pub const MAX_TABLES: usize = 16;

/// Native stack the wasm code may use. Explicit (it is wasmtime's default) so that the depth at
/// which deep recursion traps is part of our configuration, and it fits the 2 MiB stacks of
/// tokio's worker threads with room to spare.
pub const MAX_WASM_STACK: usize = 512 << 10;

/// Size of one key: keys are copied into every index and snapshot; big keys are a design error.
pub const MAX_KEY_BYTES: usize = 4 << 10;

/// Size of one value: one RocksDB write stays small, and a Raft entry stays far below the gRPC
/// message limit.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Bytes (keys plus values) written by one entry: its write set is buffered in host memory until
/// the entry finishes and lands in one storage batch.
pub const MAX_WRITE_BYTES_PER_ENTRY: usize = 16 << 20;

/// Writes (sets and deletes) by one entry: bounds the per-entry overlay and the storage batch.
pub const MAX_WRITES_PER_ENTRY: usize = 100_000;

/// Bytes of one result (an entry's `ok` or `err`, a query answer): results are replicated in
/// memory to the client and must fit a gRPC message comfortably.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// Bytes of one plugin's snapshot stream: bounds a stream that never ends. Far above any real
/// plugin state (snapshots are designed for tens of GiB).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 40;

/// A snapshot stream may be this much larger than the plugin's kv state (encodings add
/// framing; a plugin may export derived data)...
pub const SNAPSHOT_STATE_FACTOR: u64 = 4;
/// ... plus this much, whatever the state: a small state's stream is never cut short.
pub const SNAPSHOT_FLOOR_BYTES: u64 = 64 << 20;

/// The most bytes a plugin's snapshot stream may have, given its kv state (`None`: unknown): a
/// stream longer than a small multiple of the state it exports is one that never ends, and must
/// fail long before it fills memory or disk.
pub fn snapshot_bound(max_snapshot_bytes: u64, state_bytes: Option<u64>) -> u64 {
    match state_bytes {
        Some(state) => {
            max_snapshot_bytes.min(SNAPSHOT_FLOOR_BYTES.saturating_add(state.saturating_mul(SNAPSHOT_STATE_FACTOR)))
        }
        None => max_snapshot_bytes,
    }
}

/// Bytes of a component: Python components are ~18 MiB, JavaScript ~12 MiB; components travel
/// through the log and are kept on every node.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// The limits one runtime applies to every plugin it loads. In a node's config file, `[limits]`
/// sets any of them; the rest keep their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub fuel_per_entry: u64,
    pub fuel_per_call: u64,
    pub max_memory_bytes: usize,
    pub max_table_elements: usize,
    pub max_instances: usize,
    pub max_memories: usize,
    pub max_tables: usize,
    pub max_wasm_stack: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_write_bytes_per_entry: usize,
    pub max_writes_per_entry: usize,
    pub max_output_bytes: usize,
    pub max_snapshot_bytes: u64,
    pub max_component_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel_per_entry: FUEL_PER_ENTRY,
            fuel_per_call: FUEL_PER_CALL,
            max_memory_bytes: MAX_MEMORY_BYTES,
            max_table_elements: MAX_TABLE_ELEMENTS,
            max_instances: MAX_INSTANCES,
            max_memories: MAX_MEMORIES,
            max_tables: MAX_TABLES,
            max_wasm_stack: MAX_WASM_STACK,
            max_key_bytes: MAX_KEY_BYTES,
            max_value_bytes: MAX_VALUE_BYTES,
            max_write_bytes_per_entry: MAX_WRITE_BYTES_PER_ENTRY,
            max_writes_per_entry: MAX_WRITES_PER_ENTRY,
            max_output_bytes: MAX_OUTPUT_BYTES,
            max_snapshot_bytes: MAX_SNAPSHOT_BYTES,
            max_component_bytes: MAX_COMPONENT_BYTES,
        }
    }
}

/// Which limit a plugin call exceeded. Part of a deterministic error result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("key of {size} bytes exceeds max_key_bytes ({limit})")]
    KeySize { size: usize, limit: usize },
    #[error("value of {size} bytes exceeds max_value_bytes ({limit})")]
    ValueSize { size: usize, limit: usize },
    #[error("the entry's writes exceed max_write_bytes_per_entry ({limit} bytes)")]
    WriteBytes { limit: usize },
    #[error("the entry's writes exceed max_writes_per_entry ({limit})")]
    WriteCount { limit: usize },
    #[error("result of {size} bytes exceeds max_output_bytes ({limit})")]
    Output { size: usize, limit: usize },
    #[error("linear memory would grow to {desired} bytes, over max_memory_bytes ({limit})")]
    Memory { desired: usize, limit: usize },
    #[error("a table would grow to {desired} elements, over max_table_elements ({limit})")]
    Table { desired: usize, limit: usize },
    #[error("wasm stack overflow (max_wasm_stack is {limit} bytes)")]
    Stack { limit: usize },
    #[error(
        "the snapshot stream passed {limit} bytes: over max_snapshot_bytes or {SNAPSHOT_FLOOR_BYTES} + {SNAPSHOT_STATE_FACTOR} x the plugin's kv state (a stream that never ends?)"
    )]
    Snapshot { limit: u64 },
    #[error("snapshot chunk of {size} bytes is larger than the {limit} bytes asked for")]
    Chunk { size: usize, limit: usize },
}
