//! `wasmraft`: the command-line tool.

/// `println!` that ends the program quietly, as a killed-by-SIGPIPE process would (status 141),
/// when stdout is closed (`wasmraft ... | head`), instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(141);
        }
    }};
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod certs;
mod chaos;
mod client;
mod context;
mod deploy;
mod dev;
mod pipeline;
mod progress;
mod project;
mod signing;
mod snapshot_bench;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use context::EndpointArg;
use wasmraft_runtime::conformance::{self, Script};
use wasmraft_runtime::{Limits, Runtime, RuntimeConfig};

#[derive(Parser)]
#[command(
    name = "wasmraft",
    version,
    about = "Run application logic as a replicated, sandboxed WebAssembly state machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs are written to stderr: text, or JSON (one object a line, with every field: node
    /// spans, plugin name and entry index for plugin logs).
    #[arg(long, value_enum, env = "WASMRAFT_LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster in this process, with the bundled kv plugin deployed as `kv`.
    Dev {
        /// Nodes in the cluster.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Keep the nodes' data here (and resume from it); default: a fresh temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Node N listens on 127.0.0.1:(base-port + N - 1).
        #[arg(long, default_value_t = 7001)]
        base_port: u16,
        /// Deploy this component as `kv` instead of the bundled one.
        #[arg(long, value_name = "FILE.wasm")]
        plugin: Option<PathBuf>,
        /// Plaintext and no tokens. By default the cluster makes its own CA and certificates and
        /// an admin token, and writes them to the client context file.
        #[arg(long)]
        insecure: bool,
    },
    /// Run one node from a TOML config file (id, listen, peer_listen, data_dir, peers, [tls],
    /// [[tokens]], [plugins], [raft], [limits], [snapshot]).
    Node {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Start without TLS and tokens (anyone who reaches the node can do anything).
        #[arg(long)]
        insecure: bool,
    },
    /// Create a plugin project in the folder NAME (sources, tests in the language's own runner,
    /// a README with the build, test and deploy commands, and a copy of the SDK).
    New {
        name: String,
        #[arg(long, value_enum)]
        lang: project::Lang,
    },
    /// Build the plugin project in DIR (default: here) into DIR/target/NAME.wasm with the pinned
    /// toolchains, and check it loads as a node would load it.
    Build { dir: Option<PathBuf> },
    /// Make certificates: a cluster CA, node certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Send a command to a plugin through the log; prints the plugin's result.
    Call {
        #[command(flatten)]
        endpoint: EndpointArg,
        plugin: String,
        /// The command (e.g. JSON for kv); or use --file.
        payload: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Ask a plugin a read-only question; prints the plugin's answer.
    Query {
        #[command(flatten)]
        endpoint: EndpointArg,
        /// linearizable (a quorum round trip), lease (the leader's lease) or local (may be stale).
        #[arg(long, default_value = "linearizable", value_parser = client::parse_consistency)]
        consistency: wasmraft_node::pb::Consistency,
        /// Ask the plugin's shadow candidate (`deploy --shadow`) instead of the active version.
        #[arg(long)]
        shadow: bool,
        plugin: String,
        request: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Upload a component and activate it under NAME on every node at one log index.
    Deploy {
        #[command(flatten)]
        endpoint: EndpointArg,
        name: String,
        file: PathBuf,
        /// Configuration handed to the plugin's init.
        #[arg(long, default_value = "")]
        config: String,
        /// A name for this version (e.g. v2), shown by `wasmraft plugins`.
        #[arg(long, default_value = "")]
        label: String,
        /// Run it in shadow beside the active version instead of activating it: it gets a copy
        /// of the state and applies every later call, its results compared, never returned.
        #[arg(long)]
        shadow: bool,
        /// Its detached signature (`wasmraft plugin sign`); default FILE.sig when it exists.
        #[arg(long, value_name = "FILE.sig")]
        signature: Option<PathBuf>,
    },
    /// List the active plugins (with their earlier versions), or roll one back, or remove one.
    Plugins {
        #[command(flatten)]
        endpoint: EndpointArg,
        /// JSON, for scripts: the plugins with their earlier versions, and each node's view.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<PluginsCommand>,
    },
    /// Cluster administration.
    Cluster {
        #[command(flatten)]
        endpoint: EndpointArg,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Build a snapshot on the node at --endpoint now, and purge its log up to it (less the
    /// configured tail).
    Snapshot {
        #[command(flatten)]
        endpoint: EndpointArg,
    },
    /// Load a running cluster and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Run seeded fault schedules against node processes (kills, pauses, partitions, membership
    /// changes, snapshots, deploys) and check every history for linearizability.
    Chaos(chaos::ChaosArgs),
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Activate an earlier version of NAME again (default: the one before the active one); its
    /// `init` sees the version it replaces.
    Rollback {
        name: String,
        /// One of the earlier versions `wasmraft plugins` lists.
        sha256: Option<String>,
    },
    /// Every node's comparison of NAME's shadow run with the active version, and the first
    /// differences.
    Shadow {
        name: String,
        /// JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Make NAME's shadow candidate the active version at one log index (its shadow state
    /// becomes the live state: no second migration).
    Promote { name: String },
    /// Stop NAME's shadow run and delete its state, at one log index.
    DropShadow { name: String },
    /// Retire NAME and delete its data, on every node at one log index.
    Remove {
        name: String,
        /// Confirm: the plugin's kv pairs are deleted.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Initialize a new cluster: the given voters (ID=ADDR ...), or the node's configured peers.
    Init {
        #[arg(long = "member", value_name = "ID=ADDR")]
        members: Vec<String>,
    },
    /// Show the node's view: leader, log and applied indexes, members, state digest. With --all,
    /// every member's in one table; a digest that differs at an equal index is flagged (exit 1).
    Status {
        /// Ask every member and print one table.
        #[arg(long)]
        all: bool,
        /// JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Add a node as a learner (it replicates the log but does not vote); waits until it caught up.
    AddLearner {
        id: u64,
        addr: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Set the voters (joint consensus underneath).
    ChangeMembership {
        #[arg(required = true)]
        voters: Vec<u64>,
        /// Keep removed voters as learners.
        #[arg(long)]
        retain: bool,
    },
    /// Hand leadership to another voter.
    TransferLeader { to: u64 },
    /// Remove a learner (e.g. one that never caught up) from the membership.
    RemoveLearner { id: u64 },
    /// Compare every member's state digest at the latest index they all kept (one every 256
    /// entries): exit 1 when one differs, naming the index and the nodes.
    Check {
        /// JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA and certificates for nodes 1..=N in DIR, and print an admin token.
    Init {
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Host names or IP addresses clients dial the nodes by (repeat it).
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        hosts: Vec<String>,
    },
    /// Sign a certificate for one more node with DIR's CA.
    Node {
        dir: PathBuf,
        #[arg(long)]
        id: u64,
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Make an ed25519 key pair for signing components: KEY and KEY.pub.
    Keygen {
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
    },
    /// Sign a component: writes FILE.sig, which `deploy` sends along.
    Sign {
        file: PathBuf,
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
    },
    /// Run a plugin component (any language) through the conformance checks: validation, init,
    /// the scripted entries, batch independence, read-only queries and the snapshot round trip.
    Test {
        /// The component, e.g. target/plugins/kv.wasm.
        file: PathBuf,
        /// JSON-lines script: {"apply": CMD} / {"query": REQ}, optional "expect" / "expect_error".
        /// Without it, a built-in smoke script for kv-style plugins runs.
        #[arg(long)]
        script: Option<PathBuf>,
        /// A reference implementation (e.g. target/plugins/kv.wasm): also check that this plugin
        /// gives byte-identical results and the same state on the same log.
        #[arg(long, value_name = "REFERENCE.wasm")]
        reference: Option<PathBuf>,
        /// Keep compiled components in this directory (by sha256 and engine), so testing the same
        /// component again skips compilation (Python and JavaScript take tens of seconds).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Fuel allowed per entry.
        #[arg(long, default_value_t = wasmraft_runtime::limits::FUEL_PER_ENTRY)]
        fuel_per_entry: u64,
        /// Linear memory allowed per instance, in bytes.
        #[arg(long, default_value_t = wasmraft_runtime::limits::MAX_MEMORY_BYTES)]
        max_memory: usize,
    },
}

/// The log filter unless `RUST_LOG` sets one: warnings, less openraft's per-RPC ones (every failed
/// heartbeat or append to a peer that is not up yet); the node reports a peer that stays
/// unreachable past an election timeout itself, once.
const DEFAULT_LOG_FILTER: &str = "warn,openraft::replication=error,openraft::core::heartbeat=error,openraft::engine::handler::replication_handler=error";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugin { command } => plugin_command(command),
        Command::New { name, lang } => project::new(&name, lang),
        Command::Build { dir } => project::build(dir.as_deref().unwrap_or(std::path::Path::new("."))),
        // Before any runtime: it may run itself again in a network namespace of its own.
        Command::Chaos(args) => chaos::main(args),
        command => tokio_runtime()?.block_on(cluster_command(command)),
    }
}

async fn cluster_command(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Dev {
            nodes,
            data_dir,
            base_port,
            plugin,
            insecure,
        } => {
            dev::dev(dev::DevOptions {
                nodes,
                data_dir,
                base_port,
                plugin,
                insecure,
            })
            .await
        }
        Command::Node { config, insecure } => dev::node(&config, insecure).await,
        Command::Certs { command } => match command {
            CertsCommand::Init { dir, nodes, hosts } => certs::init(&dir, nodes, &hosts).map(|()| ExitCode::SUCCESS),
            CertsCommand::Node { dir, id, hosts } => certs::node(&dir, id, &hosts).map(|()| ExitCode::SUCCESS),
        },
        Command::Call {
            endpoint,
            plugin,
            payload,
            file,
        } => client::call(&endpoint.target()?, plugin, client::payload(payload, file.as_deref())?).await,
        Command::Query {
            endpoint,
            consistency,
            shadow,
            plugin,
            request,
            file,
        } => {
            let request = client::payload(request, file.as_deref())?;
            client::query(&endpoint.target()?, plugin, request, consistency, shadow).await
        }
        Command::Deploy {
            endpoint,
            name,
            file,
            config,
            label,
            shadow,
            signature,
        } => {
            let upload = deploy::Upload {
                config: config.into_bytes(),
                label,
                shadow,
                ..deploy::Upload::new(&name, Vec::new())
            };
            deploy::deploy(&endpoint.target()?, upload, &file, signature.as_deref()).await
        }
        Command::Plugins {
            endpoint,
            json,
            command,
        } => match command {
            None => deploy::plugins(&endpoint.target()?, json).await,
            Some(PluginsCommand::Rollback { name, sha256 }) => {
                deploy::rollback(&endpoint.target()?, name, sha256.unwrap_or_default()).await
            }
            Some(PluginsCommand::Remove { name, yes }) => deploy::remove(&endpoint.target()?, name, yes).await,
            Some(PluginsCommand::Shadow { name, json }) => deploy::shadow_status(&endpoint.target()?, name, json).await,
            Some(PluginsCommand::Promote { name }) => deploy::end_shadow(&endpoint.target()?, name, true).await,
            Some(PluginsCommand::DropShadow { name }) => deploy::end_shadow(&endpoint.target()?, name, false).await,
        },
        Command::Cluster { endpoint, command } => {
            let ep = &endpoint.target()?;
            match command {
                ClusterCommand::Init { members } => client::init(ep, client::parse_members(&members)?).await,
                ClusterCommand::Status { all, json } => status::status(ep, all, json).await,
                ClusterCommand::AddLearner { id, addr, no_wait } => client::add_learner(ep, id, addr, no_wait).await,
                ClusterCommand::ChangeMembership { voters, retain } => {
                    client::change_membership(ep, voters, retain).await
                }
                ClusterCommand::TransferLeader { to } => client::transfer_leader(ep, to).await,
                ClusterCommand::RemoveLearner { id } => client::remove_learner(ep, id).await,
                ClusterCommand::Check { json } => status::check(ep, json).await,
            }
        }
        Command::Snapshot { endpoint } => client::snapshot(&endpoint.target()?).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Plugin { command } => plugin_command(command),
        Command::Chaos(args) => chaos::main(args),
        Command::New { name, lang } => project::new(&name, lang),
        Command::Build { dir } => project::build(dir.as_deref().unwrap_or(std::path::Path::new("."))),
    }
}

fn plugin_command(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Keygen { out } => signing::keygen(&out).map(|()| ExitCode::SUCCESS),
        PluginCommand::Sign { file, key } => signing::sign(&file, &key).map(|()| ExitCode::SUCCESS),
        PluginCommand::Test {
            file,
            script,
            reference,
            cache_dir,
            fuel_per_entry,
            max_memory,
        } => plugin_test(
            file,
            script,
            reference,
            RuntimeConfig {
                limits: Limits {
                    fuel_per_entry,
                    max_memory_bytes: max_memory,
                    ..Limits::default()
                },
                cache_dir,
            },
        ),
    }
}

fn plugin_test(
    file: PathBuf,
    script: Option<PathBuf>,
    reference: Option<PathBuf>,
    config: RuntimeConfig,
) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let reference = match &reference {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let builtin_script = script.is_none();
    let script = match &script {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Script::parse(&text).map_err(anyhow::Error::msg)?
        }
        None => Script::kv_smoke(),
    };
    let runtime = Runtime::new(config)?;
    say!("plugin test {} ({} bytes)", file.display(), bytes.len());
    let report = conformance::run(&runtime, &bytes, &script, reference.as_deref(), |check| {
        match &check.outcome {
            Ok(detail) => say!("  ok    {:<20} {detail}", check.name),
            Err(reason) => say!("  FAIL  {:<20} {reason}", check.name),
        }
    });
    say!(
        "  usage: max {} fuel per entry, peak linear memory {} KiB",
        report.max_entry_fuel,
        report.peak_memory_bytes / 1024
    );
    let failed = report.checks.iter().filter(|c| c.outcome.is_err()).count();
    say!("plugin test: {} passed, {failed} failed", report.checks.len() - failed);
    if let Some(check) = report.failure() {
        if builtin_script {
            eprintln!(
                "note: without --script, the built-in script speaks the kv command language \
                 ({{\"op\":\"put\",...}}); for another plugin, give its own: --script FILE.jsonl \
                 (docs/writing-plugins.md)"
            );
        }
        eprintln!(
            "error: check `{}` failed: {}",
            check.name,
            check.outcome.as_ref().err().map_or("", String::as_str)
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
