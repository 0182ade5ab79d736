//! One kv command language, four implementations (Rust, Python, JavaScript, C): the same scripted
//! log must give byte-identical results and the same kv state in every one, each must be batch
//! independent and round-trip its snapshot, and a divergent implementation must be caught at its
//! first differing entry.
//!
//! The non-Rust components are built by build.rs with the toolchains `./dev.sh setup` installs in
//! `tools/`; without them these tests fail and say so.

use wasmraft::plugins;
use wasmraft_runtime::conformance::{self, Report, Script};
use wasmraft_runtime::{Runtime, RuntimeConfig};

const IMPLEMENTATIONS: [(&str, &str); 4] = [
    ("Rust", plugins::KV),
    ("Python", plugins::KV_PY),
    ("JavaScript", plugins::KV_JS),
    ("C", plugins::KV_C),
];

fn component(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| {
        panic!(
            "{path}: {err}. The non-Rust plugins are built by build.rs once ./dev.sh setup has installed their tools"
        )
    })
}

/// A runtime whose compiled-artifact cache outlives the test run: the Python and JavaScript
/// components take tens of seconds to compile, and are compiled once per change.
fn runtime() -> Runtime {
    let cache_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("polyglot-cache");
    Runtime::new(RuntimeConfig {
        cache_dir: Some(cache_dir),
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn check(runtime: &Runtime, path: &str, script: &Script) -> Report {
    conformance::run(runtime, &component(path), script, Some(&component(plugins::KV)), |_| {})
}

fn kv_cases() -> Script {
    Script::parse(include_str!("../plugins/kv/cases.jsonl")).unwrap()
}

#[test]
fn every_language_passes_the_kv_script_with_results_identical_to_rust() {
    let runtime = runtime();
    for (language, path) in IMPLEMENTATIONS {
        for (name, script) in [("kv cases", kv_cases()), ("smoke", Script::kv_smoke())] {
            let report = check(&runtime, path, &script);
            assert!(report.passed(), "{language}, {name} script: {:?}", report.failure());
            let checks: Vec<_> = report.checks.iter().map(|c| c.name).collect();
            assert_eq!(
                checks,
                [
                    "validate",
                    "init",
                    "apply",
                    "batch-independence",
                    "query-read-only",
                    "snapshot-round-trip",
                    "same-as-reference"
                ]
            );
        }
    }
}

#[test]
fn a_divergent_implementation_fails_naming_its_first_differing_entry() {
    let runtime = runtime();
    let report = check(&runtime, plugins::FIXTURE_KV_DIVERGENT, &Script::kv_smoke());
    let failure = report.failure().expect("the divergent plugin must fail");
    assert_eq!(failure.name, "same-as-reference");
    let message = failure.outcome.as_ref().unwrap_err();
    assert!(
        message.starts_with(r#"entry 27 ({"key":"missing","op":"delete"}) gave ok {"deleted":true} but the reference gave ok {"deleted":false}"#),
        "{message}"
    );
}
