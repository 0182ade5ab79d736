//! `wasmraft`: the command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wasmraft_runtime::conformance::{self, Script};
use wasmraft_runtime::{Limits, Runtime, RuntimeConfig};

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

#[derive(Parser)]
#[command(
    name = "wasmraft",
    version,
    about = "Run application logic as a replicated, sandboxed WebAssembly state machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugin {
            command:
                PluginCommand::Test {
                    file,
                    script,
                    reference,
                    cache_dir,
                    fuel_per_entry,
                    max_memory,
                },
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
        eprintln!(
            "error: check `{}` failed: {}",
            check.name,
            check.outcome.as_ref().err().map_or("", String::as_str)
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
