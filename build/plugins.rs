// Builds the example plugins in `plugins/` to wasm32-wasip2 components and places each at
// `<target>/plugins/NAME.wasm`. Shared (via `include!`) by the root build.rs and the runtime's
// bench, so both build plugins exactly the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Built components, as `(name, path)`.
pub type Built = Vec<(String, PathBuf)>;

/// The plugins workspace's members that build a component (`cdylib`), as `(package name, dir)`,
/// read from its manifests.
pub fn plugin_packages(plugins_dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let manifest = |path: PathBuf| -> Result<toml::Table, String> {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        text.parse().map_err(|e| format!("{}: {e}", path.display()))
    };
    let workspace = manifest(plugins_dir.join("Cargo.toml"))?;
    let members = workspace
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .ok_or("plugins/Cargo.toml has no [workspace] members list")?;
    let mut packages = Vec::new();
    for member in members {
        let member = member.as_str().ok_or("plugins/Cargo.toml: a member is not a string")?;
        let dir = plugins_dir.join(member);
        let package = manifest(dir.join("Cargo.toml"))?;
        let name = package
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .ok_or(format!("{member}/Cargo.toml has no package name"))?;
        let crate_types = package
            .get("lib")
            .and_then(|l| l.get("crate-type"))
            .and_then(|t| t.as_array());
        // Library-only members (shared logic) produce no component.
        if crate_types.is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib"))) {
            packages.push((name.to_string(), dir));
        }
    }
    Ok(packages)
}

/// Builds every plugin (release, wasm32-wasip2) with a nested cargo in `<target>/plugins-build`
/// and copies each component to `<target>/plugins/NAME.wasm`. Returns `(name, path)` pairs.
pub fn build_plugins(repo: &Path, target_dir: &Path) -> Result<Built, String> {
    let plugins_dir = repo.join("plugins");
    let packages = plugin_packages(&plugins_dir)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let build_dir = target_dir.join("plugins-build");
    let output = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--workspace", "--manifest-path"])
        .arg(plugins_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&build_dir)
        // The outer build's flags and target dir are not the plugins'.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .map_err(|e| format!("running {cargo}: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("wasm32-wasip2") && stderr.contains("target may not be installed") {
            "\nhint: run `rustup target add wasm32-wasip2` (./dev.sh does it for you)"
        } else {
            ""
        };
        return Err(format!("building plugins failed:\n{stderr}{hint}"));
    }
    let out_dir = target_dir.join("plugins");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    packages
        .into_iter()
        .map(|(name, _)| {
            let built = build_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
            let dest = out_dir.join(format!("{name}.wasm"));
            let bytes = std::fs::read(&built).map_err(|e| format!("reading {}: {e}", built.display()))?;
            // Rewrite only on change, so the artifact's mtime means "the component changed".
            if std::fs::read(&dest).ok().as_deref() != Some(&bytes[..]) {
                std::fs::write(&dest, &bytes).map_err(|e| format!("writing {}: {e}", dest.display()))?;
            }
            Ok((name, dest))
        })
        .collect()
}

/// The cargo target directory that contains `dir` (cargo marks its root with CACHEDIR.TAG).
pub fn enclosing_target_dir(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.join("CACHEDIR.TAG").is_file()).map(Path::to_path_buf)
}

/// The kv plugin in other languages: `(name, source dirs, command)`. Each command gets the output
/// path appended; tools come from `tools/` (installed by `./dev.sh setup`). A plugin is rebuilt
/// when any of its source dirs (its own, and the SDK it uses) is newer than its component.
fn polyglot_plugins(repo: &Path) -> Vec<(&'static str, Vec<PathBuf>, Vec<String>)> {
    let tools = repo.join("tools");
    let path = |p: PathBuf| p.display().to_string();
    vec![
        (
            "kv-py",
            vec![repo.join("plugins/kv-py"), repo.join("sdk/python/wasmraft_sdk")],
            vec![
                path(tools.join("venv/bin/componentize-py")),
                "-d".into(),
                path(repo.join("wit")),
                "-w".into(),
                "state-machine".into(),
                "componentize".into(),
                "-p".into(),
                path(repo.join("plugins/kv-py")),
                "-p".into(),
                path(repo.join("sdk/python")),
                "app".into(),
                "-o".into(),
            ],
        ),
        (
            "kv-js",
            vec![repo.join("plugins/kv-js"), repo.join("sdk/js")],
            // Bundles kv.js with the SDK (rolldown), then componentize-js, both from tools/.
            vec![path(repo.join("sdk/js/build.mjs")), path(repo.join("plugins/kv-js/kv.js"))],
        ),
        ("kv-c", vec![repo.join("plugins/kv-c"), repo.join("sdk/c")], vec![path(repo.join("plugins/kv-c/build.sh"))]),
    ]
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = std::fs::metadata(dir).ok()?.modified().ok();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let mtime = if path.is_dir() { newest_mtime(&path) } else { entry.metadata().ok()?.modified().ok() };
        newest = newest.max(mtime);
    }
    newest
}

/// Builds the non-Rust kv plugins to `<target>/plugins/NAME.wasm` when their sources (or the
/// WIT) are newer than the component. A plugin whose tool is not installed is skipped and named in
/// the returned warnings: the tests that need it then fail with a hint to run `./dev.sh setup`.
pub fn build_polyglot(repo: &Path, target_dir: &Path) -> Result<(Built, Vec<String>), String> {
    let out_dir = target_dir.join("plugins");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    let wit_mtime = newest_mtime(&repo.join("wit"));
    let mut built = Vec::new();
    let mut warnings = Vec::new();
    for (name, sources, command) in polyglot_plugins(repo) {
        let dest = out_dir.join(format!("{name}.wasm"));
        built.push((name.to_string(), dest.clone()));
        if !Path::new(&command[0]).exists() {
            warnings.push(format!("{name}: {} is not installed (run ./dev.sh setup)", command[0]));
            continue;
        }
        let dest_mtime = std::fs::metadata(&dest).and_then(|m| m.modified()).ok();
        if dest_mtime.is_some() && dest_mtime >= sources.iter().map(|dir| newest_mtime(dir)).max().flatten().max(wit_mtime) {
            continue;
        }
        let tmp = out_dir.join(format!("{name}.wasm.tmp"));
        let output = Command::new(&command[0])
            .args(&command[1..])
            .arg(&tmp)
            .current_dir(repo)
            .output()
            .map_err(|e| format!("running {}: {e}", command[0]))?;
        if !output.status.success() {
            return Err(format!(
                "building {name} failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        std::fs::rename(&tmp, &dest).map_err(|e| format!("moving {name}.wasm into place: {e}"))?;
    }
    Ok((built, warnings))
}
