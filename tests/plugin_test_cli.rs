//! `wasmraft plugin test`, run as a user would: passes on good plugins, and fails with a message
//! naming the check on plugins that break batch independence, the snapshot round trip, or a limit.

use std::process::Command;

use wasmraft::plugins;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn plugin_test(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_wasmraft"))
        .args(["plugin", "test"])
        .args(args)
        .output()
        .expect("running wasmraft");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn script(lines: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), lines).unwrap();
    file
}

#[test]
fn the_kv_plugin_passes_every_check_with_the_built_in_script() {
    let run = plugin_test(&[plugins::KV]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for check in [
        "validate",
        "init",
        "apply",
        "batch-independence",
        "query-read-only",
        "snapshot-round-trip",
    ] {
        assert!(
            run.stdout.contains(&format!("ok    {check}")),
            "{check} missing:\n{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("plugin test: 6 passed, 0 failed"));
    assert!(run.stdout.contains("fuel per entry") && run.stdout.contains("peak linear memory"));
}

#[test]
fn the_counter_plugin_passes_its_script_with_expected_results_and_errors() {
    let cases = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins/counter/cases.jsonl");
    let run = plugin_test(&[plugins::COUNTER, "--script", cases]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
}

#[test]
fn a_wrong_expectation_fails_the_apply_check_naming_the_line() {
    let cases = script("{\"apply\": {\"name\": \"a\"}, \"expect\": 2}\n");
    let run = plugin_test(&[plugins::COUNTER, "--script", cases.path().to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("check `apply` failed: entry at script line 1"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("expected 2 but got 1"), "{}", run.stderr);
}

#[test]
fn a_plugin_keeping_state_outside_kv_fails_batch_independence() {
    let run = plugin_test(&[plugins::FIXTURE_BATCH_DEPENDENT]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("check `batch-independence` failed: entry 8"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_plugin_whose_snapshot_loses_keys_fails_the_round_trip() {
    let run = plugin_test(&[plugins::FIXTURE_BAD_SNAPSHOT]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("check `snapshot-round-trip` failed"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("first at key \"k10\""), "{}", run.stderr);
}

#[test]
fn running_out_of_fuel_during_the_script_names_the_entry_and_the_limit() {
    let cases = script("{\"apply\": \"warm-up\"}\n{\"apply\": \"attack\"}\n");
    let run = plugin_test(&[
        plugins::HOSTILE_LOOP,
        "--script",
        cases.path().to_str().unwrap(),
        "--fuel-per-entry",
        "5000000",
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("entry at script line 2 (\"attack\") failed: fuel exhausted: used more than the 5000000 units"),
        "{}",
        run.stderr
    );
}

#[test]
fn exceeding_memory_during_the_script_names_the_limit() {
    let cases = script("{\"apply\": \"attack\"}\n");
    let run = plugin_test(&[
        plugins::HOSTILE_MEMORY_BOMB,
        "--script",
        cases.path().to_str().unwrap(),
        "--max-memory",
        "16777216",
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("over max_memory_bytes (16777216)"),
        "{}",
        run.stderr
    );
}

#[test]
fn works_on_a_component_outside_the_repository_and_rejects_non_components() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("my-plugin.wasm");
    std::fs::copy(plugins::KV, &copy).unwrap();
    assert_eq!(plugin_test(&[copy.to_str().unwrap()]).code, 0);

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"hello").unwrap();
    let run = plugin_test(&[junk.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("check `validate` failed: not a WebAssembly binary"),
        "{}",
        run.stderr
    );

    let missing = plugin_test(&[dir.path().join("nope.wasm").to_str().unwrap()]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("reading"), "{}", missing.stderr);
}

#[test]
fn reference_comparison_passes_for_another_language_and_fails_for_a_divergent_plugin() {
    let cases = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins/kv/cases.jsonl");
    let run = plugin_test(&[plugins::KV_C, "--script", cases, "--reference", plugins::KV]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("ok    same-as-reference"), "{}", run.stdout);

    let run = plugin_test(&[plugins::FIXTURE_KV_DIVERGENT, "--reference", plugins::KV]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("check `same-as-reference` failed: entry 27"),
        "{}",
        run.stderr
    );
}

#[test]
fn without_a_script_a_plugin_that_is_not_kv_is_told_the_built_in_script_is_kv() {
    let run = plugin_test(&[plugins::COUNTER]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("the built-in script speaks the kv command language")
            && run.stderr.contains("--script"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_script_with_an_apply_after_a_query_is_refused_naming_both_lines() {
    let file = script("{\"apply\":\"a\"}\n{\"query\":\"a\"}\n{\"apply\":\"b\"}\n");
    let run = plugin_test(&[plugins::COUNTER, "--script", file.path().to_str().unwrap()]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("script line 3: an apply after the query at line 2"),
        "{}",
        run.stderr
    );
}
