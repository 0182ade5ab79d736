//! `wasmraft new` and `wasmraft build`: a plugin project in Rust, Python, JavaScript or C,
//! anywhere on disk, with its own copy of the SDK and the WIT, built with the pinned toolchains
//! `./dev.sh setup` installed into this repository's `tools/`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use wasmraft_runtime::{Runtime, RuntimeConfig};

include!(concat!(env!("OUT_DIR"), "/templates.rs"));

/// The file that names a project's plugin and language (`wasmraft build` reads it).
const PROJECT_FILE: &str = "wasmraft.toml";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

impl Lang {
    fn key(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
        }
    }

    /// The command that runs project `name`'s own tests.
    fn test_command(self, tools: &Path, name: &str) -> String {
        match self {
            Lang::Rust => "cargo test".into(),
            Lang::Python => format!("{}/venv/bin/python -m pytest", tools.display()),
            Lang::Js => "node --test".into(),
            Lang::C => format!("wasmraft plugin test target/{name}.wasm --script cases.jsonl"),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ProjectFile {
    name: String,
    lang: Lang,
}

/// This repository's `tools/` (where `./dev.sh setup` installs the pinned toolchains):
/// `$WASMRAFT_TOOLS`, else the one beside the sources this binary was built from.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("WASMRAFT_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tools"))
}

/// `wasmraft new NAME --lang L`: the folder NAME in the current directory.
pub fn new(name: &str, lang: Lang) -> anyhow::Result<ExitCode> {
    wasmraft_node::check_plugin_name(name).map_err(|_| {
        anyhow::anyhow!("{name:?} cannot name a plugin: use 1-64 of [a-z0-9_-], starting with a letter or digit")
    })?;
    anyhow::ensure!(
        lang != Lang::Rust || name.starts_with(|c: char| c.is_ascii_lowercase()),
        "{name:?}: a Rust crate's name starts with a letter"
    );
    let dir = PathBuf::from(name);
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    let tools = std::path::absolute(tools_dir())?;
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{tools}}", &tools.display().to_string())
    };
    let files = TEMPLATES
        .iter()
        .map(|(l, path, text)| (l, fill(path), fill(text)))
        .chain(
            SDK_FILES
                .iter()
                .map(|(l, path, text)| (l, path.to_string(), text.to_string())),
        )
        .filter(|(l, _, _)| **l == lang.key());
    let mut written = 0;
    for (_, path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written += 1;
    }
    let project = ProjectFile {
        name: name.to_string(),
        lang,
    };
    std::fs::write(dir.join(PROJECT_FILE), toml::to_string(&project)?)?;
    println!(
        "created {name}/ ({} files): a {} plugin, with its own copy of the SDK",
        written + 1,
        lang.key()
    );
    println!();
    println!("  cd {name}");
    println!("  wasmraft build                                  # -> target/{name}.wasm");
    println!("  {}", lang.test_command(&tools, name));
    println!("  wasmraft deploy {name} target/{name}.wasm");
    println!();
    println!("See {name}/README.md.");
    if !tools.join("venv").exists() {
        println!(
            "note: {} has no toolchains yet: run ./dev.sh setup in the wasmraft repository",
            tools.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `wasmraft build [DIR]`: builds the project into `DIR/target/NAME.wasm` and checks it loads
/// as a node would load it.
pub fn build(dir: &Path) -> anyhow::Result<ExitCode> {
    let file = dir.join(PROJECT_FILE);
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "{} is not a plugin project (no {PROJECT_FILE}; `wasmraft new` makes one)",
            dir.display()
        )
    })?;
    let project: ProjectFile = toml::from_str(&text).with_context(|| format!("{} is not valid", file.display()))?;
    let tools = std::path::absolute(tools_dir())?;
    let target = dir.join("target");
    std::fs::create_dir_all(&target)?;
    let out = std::path::absolute(target.join(format!("{}.wasm", project.name)))?;
    let started = Instant::now();
    eprintln!("building {} ({}) ...", project.name, project.lang.key());
    match project.lang {
        Lang::Rust => {
            let built = build_rust(dir)?;
            std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
        }
        Lang::Python => run(Command::new(tool(&tools, "venv/bin/componentize-py")?)
            .args([
                "-d",
                "wit",
                "-w",
                "state-machine",
                "componentize",
                "-p",
                ".",
                "app",
                "-o",
            ])
            .arg(&out)
            .current_dir(dir))?,
        Lang::Js => {
            tool(&tools, "node_modules/@bytecodealliance/componentize-js")?;
            run(Command::new("node")
                .args(["sdk/build.mjs", "plugin.js"])
                .arg(&out)
                .env("WASMRAFT_TOOLS", &tools)
                .env("WASMRAFT_WIT", "wit")
                .current_dir(dir))?
        }
        Lang::C => build_c(dir, &tools, &out)?,
    }
    let bytes = std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?;
    let built_secs = started.elapsed().as_secs_f64();
    let checked = Instant::now();
    Runtime::new(RuntimeConfig::default())?
        .load(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a valid plugin: {e}", out.display()))?;
    println!("{}", out.display());
    println!("  size     {} bytes", bytes.len());
    println!("  sha256   {}", hex::encode(Sha256::digest(&bytes)));
    println!(
        "  built in {built_secs:.1} s; implements the world state-machine (compiled as a node would, in {:.1} s)",
        checked.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// A Rust project: `cargo build --release --target wasm32-wasip2`; answers the component cargo
/// wrote (wherever its target directory is).
fn build_rust(dir: &Path) -> anyhow::Result<PathBuf> {
    let output = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo")?;
    anyhow::ensure!(output.status.success(), "cargo build failed ({})", output.status);
    let artifacts = String::from_utf8_lossy(&output.stdout);
    artifacts
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .filter_map(|m| m["filenames"].as_array().cloned())
        .flatten()
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .rfind(|f| f.extension().is_some_and(|e| e == "wasm"))
        .context("cargo built no .wasm (is the crate a cdylib?)")
}

/// A C project: bindings from `wit-bindgen c`, every `*.c` at the top with the SDK compiled by
/// zig for wasm32-wasi (a reactor), wrapped by `wasm-tools component new`.
fn build_c(dir: &Path, tools: &Path, out: &Path) -> anyhow::Result<()> {
    let gen_dir = tempfile::tempdir()?;
    let generated = gen_dir.path();
    run(Command::new(tool(tools, "cargo/bin/wit-bindgen")?)
        .args(["c", "wit", "--world", "state-machine", "--out-dir"])
        .arg(generated)
        .current_dir(dir))?;
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    sources.sort();
    anyhow::ensure!(!sources.is_empty(), "{} has no .c files", dir.display());
    let core = generated.join("core.wasm");
    run(Command::new(tool(tools, "venv/bin/python-zig")?)
        .args(["cc", "-target", "wasm32-wasi", "-std=c11", "-Wall", "-Wextra", "-O2"])
        .args(["-mexec-model=reactor", "-g0", "-Wl,--strip-debug", "-I"])
        .arg(generated)
        .args(["-I", "sdk"])
        .args(&sources)
        .arg("sdk/wasmraft.c")
        .arg(generated.join("state_machine.c"))
        .arg(generated.join("state_machine_component_type.o"))
        .arg("-o")
        .arg(&core)
        .current_dir(dir))?;
    run(Command::new(tool(tools, "venv/bin/wasm-tools")?)
        .args(["component", "new"])
        .arg(&core)
        .arg("-o")
        .arg(out)
        .current_dir(dir))
}

/// A pinned tool under `tools/`, or what to do about its absence.
fn tool(tools: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let path = tools.join(rel);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run ./dev.sh setup in the wasmraft repository (or point $WASMRAFT_TOOLS at its tools/)",
        path.display()
    );
    Ok(path)
}

/// Runs a build step, its output passed through; fails naming it.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().to_string();
    let status = command.status().with_context(|| format!("running {program}"))?;
    anyhow::ensure!(status.success(), "{program} failed ({status})");
    Ok(())
}
