//! The JavaScript guest SDK (`sdk/js`): its node tests (the SDK's and kv-js's, on the native test
//! host) pass, and in the real runtime an exception thrown by a plugin's `apply` is that entry's
//! error, naming the exception, with the entry's writes rolled back and the batch going on.
//!
//! Needs node and the tools `./dev.sh setup` installs into `tools/node_modules`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wasmraft_runtime::{Entry, InitContext, MemoryBackend, PluginError, Runtime, RuntimeConfig};

const SETUP_HINT: &str = "run ./dev.sh setup to install node and the JavaScript plugin tools";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program` in the repository, panicking with `what` and its output unless it succeeds.
fn run(what: &str, program: &Path, args: &[PathBuf]) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|err| panic!("{what}: running {}: {err} ({SETUP_HINT})", program.display()));
    assert!(
        output.status.success(),
        "{what} failed ({SETUP_HINT} if a tool is missing):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The `*.test.js` files directly in `dir` (its fixtures are no tests).
fn node_tests(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".test.js"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.js in {dir}");
    files
}

#[test]
fn the_sdk_and_kv_js_node_tests_pass() {
    let mut args = vec![PathBuf::from("--test")];
    args.extend(node_tests("sdk/js/test"));
    args.extend(node_tests("plugins/kv-js"));
    let output = run("node --test", Path::new("node"), &args);
    assert!(String::from_utf8_lossy(&output.stdout).contains("# fail 0"));
}

#[test]
fn an_exception_in_apply_is_the_entry_error_and_rolls_back_only_that_entry() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("write-then-throw.wasm");
    run(
        "building the JS fixture",
        &repo().join("sdk/js/build.mjs"),
        &[
            repo().join("sdk/js/test/fixtures/write-then-throw.js"),
            component.clone(),
        ],
    );
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let code = runtime.load(&std::fs::read(&component).unwrap()).unwrap();
    let mut plugin = code.instantiate("sdk-js", Box::new(MemoryBackend::new()));
    plugin.init(&InitContext::default()).unwrap().unwrap();

    let entries = ["a", "throw", "b"]
        .iter()
        .enumerate()
        .map(|(i, payload)| Entry {
            index: i as u64 + 1,
            term: 1,
            timestamp_ms: 1_700_000_000_000,
            payload: payload.as_bytes().to_vec(),
        })
        .collect();
    let results: Vec<_> = plugin.apply(entries).unwrap().into_iter().map(|o| o.result).collect();

    assert_eq!(
        results[0],
        Ok(b"applied a at index 1, term 1, time 1700000000000".to_vec())
    );
    let Err(PluginError::Returned(error)) = &results[1] else {
        panic!("the throwing entry must return an error, got {:?}", results[1]);
    };
    assert!(
        error.starts_with("RangeError: payload out of range\n"),
        "the error names the exception and carries frames: {error}"
    );
    assert!(error.lines().count() <= 5, "at most a few frames: {error}");
    assert_eq!(
        results[2],
        Ok(b"applied b at index 3, term 1, time 1700000000000".to_vec())
    );
    let backend = plugin.backend();
    assert_eq!(
        backend.get(b"written/throw").unwrap(),
        None,
        "the failed entry's write is rolled back"
    );
    assert_eq!(backend.get(b"written/b").unwrap(), Some(b"yes".to_vec()));
    assert_eq!(
        plugin.stats().instantiations,
        1,
        "an exception is an error result, not a trap"
    );
}
