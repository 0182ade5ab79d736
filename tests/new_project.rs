//! A plugin in any language from nothing: `wasmraft new` in a folder outside this repository, the
//! project's own tests in its language's runner, `wasmraft build`, `wasmraft plugin test` on the
//! component, then deploy it to a `wasmraft dev` cluster and call it.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{BIN, DevCluster, succeeded as ok};

/// Runs `program args` in `dir`; a missing toolchain points at `./dev.sh setup`.
fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        // Its own target directory: the one this test runs from is cargo's, and busy.
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("new-project-target"),
        )
        .output()
        .unwrap_or_else(|e| panic!("running {program} ({e}): ./dev.sh setup installs the toolchains"))
}

async fn new_project_builds_tests_and_deploys(lang: &str, test: Option<(&str, &[&str])>) {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("my-{lang}-counter");
    ok("wasmraft new", run(dir.path(), BIN, &["new", &name, "--lang", lang]));
    let project = dir.path().join(&name);
    assert!(project.join("README.md").exists());
    if let Some((program, args)) = test {
        ok("the project's own tests", run(&project, program, args));
    }
    let built = ok("wasmraft build", run(&project, BIN, &["build"]));
    let wasm = format!("target/{name}.wasm");
    assert!(built.contains(&wasm) && built.contains("sha256"), "{built}");
    let checked = ok(
        "wasmraft plugin test",
        run(&project, BIN, &["plugin", "test", &wasm, "--script", "cases.jsonl"]),
    );
    assert!(checked.contains("0 failed"), "{checked}");

    // A secure dev cluster; the CLI reaches it through the context file it wrote.
    let dev = DevCluster::start(dir.path(), &["--nodes", "1"]).await;
    let context = dir.path().join("context.toml");
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("WASMRAFT_CONTEXT", &context)
            .env("WASMRAFT_ENDPOINT", dev.endpoint())
            .output()
            .expect("running wasmraft")
    };
    let component = project.join(&wasm);
    ok("deploy", cli(&["deploy", &name, component.to_str().unwrap()]));
    let added = ok("call", cli(&["call", &name, r#"{"op":"add","key":"a","by":2}"#]));
    assert!(added.contains(r#"{"key":"a","value":2}"#), "{added}");
    let read = ok("query", cli(&["query", &name, r#"{"key":"a"}"#]));
    assert!(read.contains(r#"{"key":"a","value":2}"#), "{read}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_rust_plugin_tests_builds_passes_the_checks_and_serves() {
    new_project_builds_tests_and_deploys("rust", Some(("cargo", &["test", "--quiet"]))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_python_plugin_tests_builds_passes_the_checks_and_serves() {
    let python = wasmraft_tools().join("venv/bin/python");
    let python = python.to_str().unwrap();
    new_project_builds_tests_and_deploys(
        "python",
        Some((python, &["-m", "pytest", "-q", "-p", "no:cacheprovider"])),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_javascript_plugin_tests_builds_passes_the_checks_and_serves() {
    new_project_builds_tests_and_deploys("js", Some(("node", &["--test"]))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_c_plugin_builds_passes_the_checks_and_serves() {
    new_project_builds_tests_and_deploys("c", None).await;
}

fn wasmraft_tools() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools")
}
