//! The Python guest SDK (`sdk/python`): its native pytest suites (the SDK's and kv-py's) pass, and
//! on the real runtime a Python exception fails only its entry, rolls back the entry's writes and
//! carries the exception's type and message instead of a bare trap; its snapshot stream is the Rust
//! SDK's, byte for byte.
//!
//! Needs the tools `./dev.sh setup` installs in `tools/venv` (componentize-py, pytest).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use wasmraft::plugins;
use wasmraft_runtime::{
    Entry, InitContext, MemoryBackend, Pair, Plugin, PluginCode, PluginError, Runtime, RuntimeConfig,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A program from `tools/venv/bin`, or a panic saying how to install it.
fn venv_tool(name: &str) -> PathBuf {
    let path = Path::new(REPO).join("tools/venv/bin").join(name);
    assert!(path.exists(), "{} is missing: run ./dev.sh setup", path.display());
    path
}

/// Runs `command` in the repository and panics with its output (and `hint`) if it fails.
fn run(command: &mut Command, hint: &str) -> Output {
    let output = command
        .current_dir(REPO)
        .output()
        .expect("starting a tools/venv program");
    assert!(
        output.status.success(),
        "{command:?} failed ({hint}):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn the_sdk_and_kv_py_pass_their_native_pytest_suites() {
    run(
        Command::new(venv_tool("python"))
            .args("-m pytest -q -p no:cacheprovider sdk/python/tests plugins/kv-py".split(' '))
            // Bytecode files in a plugin's sources would make build.rs rebuild its component.
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        "if pytest is missing, run ./dev.sh setup",
    );
}

fn entry(index: u64, payload: &str) -> Entry {
    Entry {
        index,
        term: 1,
        timestamp_ms: 1_700_000_000_000,
        payload: payload.as_bytes().to_vec(),
    }
}

/// The runtime, and the test plugin `sdk/python/tests/fixtures/raising_app.py` built with the SDK
/// and loaded in it (once per run: building and compiling take tens of seconds).
fn runtime_and_raising_plugin() -> &'static (Runtime, PluginCode) {
    static LOADED: OnceLock<(Runtime, PluginCode)> = OnceLock::new();
    LOADED.get_or_init(|| {
        let wasm = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-python-raising.wasm");
        run(
            Command::new(venv_tool("componentize-py"))
                .args("-d wit -w state-machine componentize -p sdk/python/tests/fixtures -p sdk/python".split(' '))
                .args(["raising_app", "-o"])
                .arg(&wasm),
            "building sdk/python/tests/fixtures/raising_app.py",
        );
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let code = runtime.load(&std::fs::read(&wasm).unwrap()).unwrap();
        (runtime, code)
    })
}

fn fresh(code: &PluginCode) -> Plugin {
    let mut plugin = code.instantiate("test", Box::new(MemoryBackend::new()));
    plugin.init(&InitContext::default()).unwrap().unwrap();
    plugin
}

fn pairs(plugin: &Plugin) -> Vec<Pair> {
    plugin.backend().scan(b"", None, usize::MAX).unwrap()
}

fn snapshot(plugin: &mut Plugin, max_chunk: u32) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    plugin
        .snapshot(max_chunk, |chunk| {
            chunks.push(chunk);
            Ok(())
        })
        .unwrap()
        .unwrap();
    chunks
}

#[test]
fn a_python_exception_fails_only_its_entry_rolls_back_its_writes_and_names_its_type_and_message() {
    let mut plugin = fresh(&runtime_and_raising_plugin().1);
    let outcomes = plugin
        .apply(vec![entry(1, "a"), entry(2, "fail-b"), entry(3, "c")])
        .unwrap();
    assert_eq!(outcomes[0].result, Ok(b"ok a".to_vec()));
    assert_eq!(outcomes[2].result, Ok(b"ok c".to_vec()), "the next entry still applies");
    let Err(PluginError::Returned(message)) = &outcomes[1].result else {
        panic!("expected an error result, got {:?}", outcomes[1].result);
    };
    let lines: Vec<_> = message.lines().collect();
    assert_eq!(lines[0], "ValueError: refusing fail-b", "{message}");
    assert!(
        lines.len() == 3 && lines[1].contains(r#"File "raising_app.py""#) && lines[2].ends_with("in refuse"),
        "the error ends with the plugin's frames: {message}"
    );
    let rolled_back = plugin.backend().get(b"fail-b").unwrap();
    assert_eq!(rolled_back, None, "the failed entry's write is rolled back");
    assert_eq!(plugin.backend().get(b"c").unwrap(), Some(b"written".to_vec()));
    let instantiations = plugin.stats().instantiations;
    assert_eq!(instantiations, 1, "an exception is an error result, not a trap");

    assert_eq!(plugin.query(b"c").unwrap(), Ok(b"written".to_vec()));
    let refused = plugin.query(b"write").unwrap().unwrap_err();
    assert_eq!(
        refused.to_string(),
        "read-only: a query tried to write to kv",
        "wasmraft_sdk.testing.READ_ONLY_ERROR says the same"
    );
}

#[test]
fn python_and_rust_snapshots_are_byte_identical_and_a_truncated_one_is_refused() {
    let (runtime, python) = runtime_and_raising_plugin();
    let rust = runtime.load(&std::fs::read(plugins::KV).unwrap()).unwrap();
    let mut source = fresh(python);
    let keys: Vec<_> = (1..=300).map(|i| format!("key/{i:04}")).collect();
    source
        .apply(keys.iter().zip(1..).map(|(key, i)| entry(i, key)).collect())
        .unwrap();
    let chunks = snapshot(&mut source, 61);

    let mut in_rust = fresh(&rust);
    in_rust.restore(chunks.clone()).unwrap().unwrap();
    assert_eq!(pairs(&in_rust), pairs(&source));
    assert_eq!(
        snapshot(&mut in_rust, 61),
        chunks,
        "the Rust SDK writes the same stream"
    );
    let mut back_in_python = fresh(python);
    back_in_python.restore(snapshot(&mut in_rust, 1000)).unwrap().unwrap();
    assert_eq!(pairs(&back_in_python), pairs(&source));

    let mut truncated = chunks.concat();
    truncated.pop();
    assert_eq!(
        fresh(python).restore([truncated]).unwrap(),
        Err(PluginError::Returned(
            "snapshot stream truncated: 22 bytes of an incomplete record".into()
        ))
    );
}
