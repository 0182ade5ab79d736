//! The plugin runtime's semantics, proved on real components built from `plugins/`: entry
//! atomicity, batch independence, read-only queries, snapshot round trips, every hostile plugin
//! contained, and clear errors for components that are not plugins.

use std::time::{Duration, Instant};

use wasmraft::plugins;
use wasmraft_runtime::{
    Entry, EntryOutcome, InitContext, LimitExceeded, Limits, LoadError, MemoryBackend, Pair, Plugin, PluginCode,
    PluginError, Runtime, RuntimeConfig,
};

/// Limits small enough that hostile plugins hit them in milliseconds.
fn test_limits() -> Limits {
    Limits {
        fuel_per_entry: 100_000_000,
        max_memory_bytes: 32 << 20,
        ..Limits::default()
    }
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        limits: test_limits(),
        cache_dir: None,
    })
    .unwrap()
}

fn load(runtime: &Runtime, path: &str) -> PluginCode {
    runtime.load(&std::fs::read(path).unwrap()).unwrap()
}

fn fresh(code: &PluginCode) -> Plugin {
    let mut plugin = code.instantiate("test", Box::new(MemoryBackend::new()));
    plugin.init(&InitContext::default()).unwrap().unwrap();
    plugin
}

fn entries(payloads: &[&str]) -> Vec<Entry> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| Entry {
            index: i as u64 + 1,
            term: 1,
            timestamp_ms: 1_700_000_000_000 + i as u64,
            payload: payload.as_bytes().to_vec(),
        })
        .collect()
}

/// The `{"op":...}` JSON for the kv plugin's put.
fn put(key: &str, value: &str) -> String {
    format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#)
}

fn pairs(plugin: &Plugin) -> Vec<Pair> {
    plugin.backend().scan(b"", None, usize::MAX).unwrap()
}

type Results = Vec<Result<Vec<u8>, PluginError>>;

fn results(outcomes: &[EntryOutcome]) -> Results {
    outcomes.iter().map(|o| o.result.clone()).collect()
}

fn ok(text: &str) -> Result<Vec<u8>, PluginError> {
    Ok(text.as_bytes().to_vec())
}

#[test]
fn kv_plugin_applies_commands_and_answers_queries() {
    let runtime = runtime();
    let mut kv = fresh(&load(&runtime, plugins::KV));
    let outcomes = kv
        .apply(entries(&[
            &put("a", "1"),
            &put("a", "2"),
            r#"{"op":"delete","key":"zz"}"#,
        ]))
        .unwrap();
    assert_eq!(
        results(&outcomes),
        vec![
            ok(r#"{"previous":null}"#),
            ok(r#"{"previous":"1"}"#),
            ok(r#"{"deleted":false}"#)
        ]
    );
    assert_eq!(outcomes.iter().map(|o| o.index).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(outcomes.iter().all(|o| o.fuel_used > 0));
    assert_eq!(kv.query(br#"{"op":"get","key":"a"}"#).unwrap(), ok(r#"{"value":"2"}"#));
}

#[test]
fn an_err_result_rolls_back_the_entry_and_later_entries_still_apply() {
    let runtime = runtime();
    let mut plugin = fresh(&load(&runtime, plugins::HOSTILE_PANIC));
    let outcomes = plugin.apply(entries(&[r#""a""#, r#""fail""#, r#""b""#])).unwrap();
    assert_eq!(
        results(&outcomes),
        vec![
            ok(r#""ok""#),
            Err(PluginError::Returned("refused".into())),
            ok(r#""ok""#)
        ]
    );
    assert_eq!(
        pairs(&plugin),
        vec![(b"a".to_vec(), b"ok".to_vec()), (b"b".to_vec(), b"ok".to_vec())]
    );
    assert_eq!(plugin.stats().instantiations, 1, "an err result is not a trap");
}

#[test]
fn a_panic_rolls_back_the_entry_carries_its_message_and_replaces_the_instance() {
    let runtime = runtime();
    let mut plugin = fresh(&load(&runtime, plugins::HOSTILE_PANIC));
    let outcomes = plugin.apply(entries(&[r#""a""#, r#""attack""#, r#""b""#])).unwrap();
    assert_eq!(
        results(&outcomes),
        vec![
            ok(r#""ok""#),
            Err(PluginError::Panicked("hostile plugin refuses entry 2".into())),
            ok(r#""ok""#)
        ]
    );
    assert_eq!(plugin.backend().get(b"half-done").unwrap(), None);
    assert_eq!(plugin.stats().instantiations, 2, "the trapped instance was replaced");
}

#[test]
fn a_trap_in_the_middle_of_a_batch_fails_only_that_entry() {
    let runtime = runtime();
    let mut plugin = fresh(&load(&runtime, plugins::HOSTILE_TRAP_MID_BATCH));
    let outcomes = plugin
        .apply(entries(&[r#""a""#, r#""attack""#, r#""b""#, r#""attack""#, r#""c""#]))
        .unwrap();
    let trap = Err(PluginError::Trapped("wasm `unreachable` instruction executed".into()));
    assert_eq!(
        results(&outcomes),
        vec![ok(r#""ok""#), trap.clone(), ok(r#""ok""#), trap, ok(r#""ok""#)]
    );
    assert_eq!(pairs(&plugin).len(), 3, "only a, b and c: no half-done write survives");
    assert!(
        outcomes[1].fuel_used > 0 && outcomes[1].fuel_used < 100_000_000,
        "a trap reports the fuel it used"
    );
    assert_eq!(plugin.stats().instantiations, 3);
}

#[test]
fn an_infinite_loop_exhausts_its_entry_fuel_alone() {
    let runtime = runtime();
    let mut plugin = fresh(&load(&runtime, plugins::HOSTILE_LOOP));
    let outcomes = plugin.apply(entries(&[r#""attack""#, r#""after""#])).unwrap();
    assert_eq!(
        results(&outcomes),
        vec![Err(PluginError::FuelExhausted { limit: 100_000_000 }), ok(r#""ok""#)]
    );
    assert_eq!(outcomes[0].fuel_used, 100_000_000);
}

#[test]
fn a_memory_bomb_hits_the_memory_limit_and_the_runtime_stays_usable() {
    let runtime = runtime();
    let mut plugin = fresh(&load(&runtime, plugins::HOSTILE_MEMORY_BOMB));
    let outcomes = plugin.apply(entries(&[r#""attack""#, r#""after""#])).unwrap();
    match &outcomes[0].result {
        Err(PluginError::Limit(LimitExceeded::Memory { limit, .. })) => assert_eq!(*limit, 32 << 20),
        other => panic!("expected the memory limit, got {other:?}"),
    }
    assert_eq!(outcomes[1].result, ok(r#""ok""#));
    assert!(plugin.stats().peak_memory_bytes <= 32 << 20);
}

#[test]
fn deep_recursion_hits_the_stack_limit() {
    let runtime = runtime();
    let mut plugin = fresh(&load(&runtime, plugins::HOSTILE_DEEP_RECURSION));
    let outcomes = plugin.apply(entries(&[r#""attack""#, r#""after""#])).unwrap();
    assert_eq!(
        results(&outcomes),
        vec![
            Err(PluginError::Limit(LimitExceeded::Stack {
                limit: wasmraft_runtime::limits::MAX_WASM_STACK
            })),
            ok(r#""ok""#)
        ]
    );
}

#[test]
fn a_huge_result_hits_the_output_limit() {
    let runtime = runtime();
    let mut plugin = fresh(&load(&runtime, plugins::HOSTILE_HUGE_OUTPUT));
    let outcomes = plugin.apply(entries(&[r#""attack""#, r#""after""#])).unwrap();
    assert!(
        matches!(outcomes[0].result, Err(PluginError::Limit(LimitExceeded::Output { limit, .. })) if limit == 1 << 20),
        "{:?}",
        outcomes[0].result
    );
    assert_eq!(outcomes[1].result, ok(r#""ok""#));
}

#[test]
fn a_huge_write_set_hits_the_write_limit_and_leaves_nothing_behind() {
    let runtime = runtime();
    let mut plugin = fresh(&load(&runtime, plugins::HOSTILE_HUGE_WRITES));
    let outcomes = plugin.apply(entries(&[r#""attack""#, r#""after""#])).unwrap();
    assert_eq!(
        outcomes[0].result,
        Err(PluginError::Limit(LimitExceeded::WriteBytes { limit: 16 << 20 }))
    );
    assert_eq!(pairs(&plugin), vec![(b"after".to_vec(), b"ok".to_vec())]);
}

#[test]
fn a_query_cannot_write_even_past_the_sdk() {
    let runtime = runtime();
    let mut plugin = fresh(&load(&runtime, plugins::HOSTILE_QUERY_WRITE));
    assert_eq!(
        plugin.query(br#""attack""#).unwrap(),
        Err(PluginError::ReadOnly("a query"))
    );
    assert!(pairs(&plugin).is_empty());
    plugin.apply(entries(&[r#""k""#])).unwrap();
    assert_eq!(
        plugin.query(br#""k""#).unwrap(),
        ok(r#""ok""#),
        "usable after the violation"
    );
}

/// A log that exercises every kind of outcome: writes, deletes, a plugin error, a panic, a trap.
fn mixed_log() -> Vec<String> {
    (0..40)
        .map(|i| match i % 10 {
            3 => r#""fail""#.to_string(),
            7 => r#""attack""#.to_string(),
            _ => format!(r#""key-{i}""#),
        })
        .collect()
}

/// Applies `log` in batches of `batch`, each batch on a fresh instance over the same backend: what
/// replicas that cut the log differently, or restarted in between, would do.
fn apply_in_batches(code: &PluginCode, log: &[Entry], batch: usize) -> (Results, Vec<Pair>) {
    let mut plugin = fresh(code);
    let mut outcomes = Vec::new();
    for chunk in log.chunks(batch) {
        outcomes.extend(plugin.apply(chunk.to_vec()).unwrap());
        plugin = code.instantiate("test", plugin.into_backend());
    }
    (results(&outcomes), pairs(&plugin))
}

#[test]
fn results_and_state_do_not_depend_on_batching_even_with_fuel_exhaustion() {
    let runtime = runtime();
    for path in [
        plugins::HOSTILE_LOOP,
        plugins::HOSTILE_PANIC,
        plugins::HOSTILE_TRAP_MID_BATCH,
    ] {
        let code = load(&runtime, path);
        let log_text = mixed_log();
        let log = entries(&log_text.iter().map(String::as_str).collect::<Vec<_>>());
        let whole = apply_in_batches(&code, &log, log.len());
        assert!(whole.0.iter().any(Result::is_err) && whole.0.iter().any(Result::is_ok));
        for batch in [7, 1] {
            assert_eq!(
                apply_in_batches(&code, &log, batch),
                whole,
                "{path}: batches of {batch}"
            );
        }
    }
}

#[test]
fn an_apply_cut_at_its_deadline_returns_the_entries_left_and_changes_no_outcome() {
    let runtime = runtime();
    let code = load(&runtime, plugins::HOSTILE_LOOP);
    let log_text = mixed_log();
    let log = entries(&log_text.iter().map(String::as_str).collect::<Vec<_>>());
    let whole = apply_in_batches(&code, &log, log.len());

    let mut plugin = fresh(&code);
    let (outcomes, rest) = plugin.apply_until(log.clone(), Some(Instant::now())).unwrap();
    assert!(outcomes.is_empty(), "no entry starts after the deadline");
    assert_eq!(rest, log, "every entry is left, in order");

    // Each burner entry (fuel exhaustion, tens of milliseconds) runs past a 5 ms deadline.
    let (mut outcomes, mut rest, mut cuts) = (Vec::new(), log, 0);
    while !rest.is_empty() {
        let (applied, left) = plugin
            .apply_until(rest, Some(Instant::now() + Duration::from_millis(5)))
            .unwrap();
        cuts += usize::from(!left.is_empty());
        outcomes.extend(applied);
        rest = left;
    }
    assert!(cuts >= 2, "the burners cut the log ({cuts} cuts)");
    assert_eq!((results(&outcomes), pairs(&plugin)), whole);
}

#[test]
fn kv_results_and_state_do_not_depend_on_batching() {
    let runtime = runtime();
    let code = load(&runtime, plugins::KV);
    let log_text: Vec<String> = (0..60)
        .map(|i| match i % 5 {
            0 | 1 => put(&format!("k{}", i % 13), &i.to_string()),
            2 => format!(r#"{{"op":"delete","key":"k{}"}}"#, i % 7),
            3 => format!(r#"{{"op":"cas","key":"k{}","expected":null,"value":"c"}}"#, i % 11),
            _ => r#"{"op":"scan","start":"k","limit":3}"#.to_string(),
        })
        .collect();
    let log = entries(&log_text.iter().map(String::as_str).collect::<Vec<_>>());
    let whole = apply_in_batches(&code, &log, log.len());
    for batch in [7, 1] {
        assert_eq!(apply_in_batches(&code, &log, batch), whole, "batches of {batch}");
    }
}

#[test]
fn snapshot_then_restore_into_an_empty_backend_reproduces_the_state() {
    let runtime = runtime();
    let code = load(&runtime, plugins::KV);
    let mut source = fresh(&code);
    let log_text: Vec<String> = (0..500)
        .map(|i| put(&format!("key/{i:04}"), &"v".repeat(i % 97)))
        .collect();
    source
        .apply(entries(&log_text.iter().map(String::as_str).collect::<Vec<_>>()))
        .unwrap();

    let mut chunks = Vec::new();
    source
        .snapshot(1000, |chunk| {
            chunks.push(chunk);
            Ok(())
        })
        .unwrap()
        .unwrap();
    assert!(chunks.len() > 10 && chunks.iter().all(|c| c.len() <= 1000));

    let mut restored = code.instantiate("restored", Box::new(MemoryBackend::new()));
    restored.restore(chunks).unwrap().unwrap();
    assert_eq!(pairs(&restored), pairs(&source));
    assert_eq!(
        restored.query(br#"{"op":"get","key":"key/0042"}"#).unwrap(),
        source.query(br#"{"op":"get","key":"key/0042"}"#).unwrap()
    );
}

#[test]
fn a_snapshot_cannot_write_and_a_bad_stream_is_rejected() {
    let runtime = runtime();
    let code = load(&runtime, plugins::KV);
    let mut restored = code.instantiate("restored", Box::new(MemoryBackend::new()));
    let result = restored.restore(vec![b"not a snapshot".to_vec()]).unwrap();
    assert_eq!(
        result,
        Err(PluginError::Returned("not a wasmraft kv snapshot (bad magic)".into()))
    );
}

#[test]
fn a_snapshot_stream_that_never_ends_or_makes_no_progress_is_stopped() {
    let runtime = Runtime::new(RuntimeConfig {
        limits: Limits {
            max_snapshot_bytes: 1 << 20,
            ..test_limits()
        },
        cache_dir: None,
    })
    .unwrap();
    let code = load(&runtime, plugins::HOSTILE_ENDLESS_SNAPSHOT);
    let mut endless = fresh(&code);
    let result = endless.snapshot(4096, |_| Ok(())).unwrap();
    assert_eq!(
        result,
        Err(PluginError::Limit(LimitExceeded::Snapshot { limit: 1 << 20 }))
    );

    let mut empty = code.instantiate("test", Box::new(MemoryBackend::new()));
    empty
        .init(&InitContext {
            config: b"empty chunks".to_vec(),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
    match empty.snapshot(4096, |_| Ok(())).unwrap() {
        Err(PluginError::Protocol(message)) => assert!(message.contains("empty chunk"), "{message}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// Whatever `max_snapshot_bytes` allows, a stream is cut at a small multiple of the plugin's kv
/// state plus a floor: the endless stream over an empty state stops at the floor (it used to run
/// until the machine ran out of memory).
#[test]
fn a_snapshot_stream_far_larger_than_the_plugins_state_is_stopped_at_a_bound_of_that_state() {
    let runtime = Runtime::new(RuntimeConfig {
        limits: test_limits(),
        cache_dir: None,
    })
    .unwrap();
    assert_eq!(
        runtime.limits().max_snapshot_bytes,
        wasmraft_runtime::Limits::default().max_snapshot_bytes
    );
    let code = load(&runtime, plugins::HOSTILE_ENDLESS_SNAPSHOT);
    let mut streamed = 0u64;
    let result = fresh(&code)
        .snapshot(1 << 20, |chunk| {
            streamed += chunk.len() as u64;
            Ok(())
        })
        .unwrap();
    let floor = wasmraft_runtime::SNAPSHOT_FLOOR_BYTES;
    assert_eq!(
        result,
        Err(PluginError::Limit(LimitExceeded::Snapshot { limit: floor }))
    );
    assert!(streamed <= floor, "{streamed} bytes streamed");
    assert_eq!(wasmraft_runtime::snapshot_bound(u64::MAX, Some(1000)), floor + 4000);
    assert_eq!(wasmraft_runtime::snapshot_bound(1 << 20, Some(1000)), 1 << 20);
    assert_eq!(wasmraft_runtime::snapshot_bound(1 << 40, None), 1 << 40);
}

#[test]
fn entries_carry_the_leader_timestamp_the_plugin_uses_instead_of_a_clock() {
    let runtime = runtime();
    let mut counter = fresh(&load(&runtime, plugins::COUNTER));
    counter
        .apply(entries(&[r#"{"name":"hits"}"#, r#"{"name":"hits","by":2}"#]))
        .unwrap();
    assert_eq!(
        counter.query(br#"{"name":"hits"}"#).unwrap(),
        ok(r#"{"value":3,"updated_ms":1700000000001}"#)
    );
}

#[test]
fn bytes_that_are_not_a_plugin_are_rejected_with_the_reason() {
    let runtime = runtime();
    assert_eq!(runtime.load(b"definitely not wasm").err(), Some(LoadError::NotWasm));
    let core_module = wat::parse_str("(module)").unwrap();
    assert_eq!(runtime.load(&core_module).err(), Some(LoadError::CoreModule));
    let wrong_world =
        wat::parse_str(r#"(component (core module $m (func (export "f"))) (core instance (instantiate $m)))"#).unwrap();
    assert!(
        matches!(runtime.load(&wrong_world), Err(LoadError::WrongWorld(ref why)) if why.contains("no export")),
        "{:?}",
        runtime.load(&wrong_world).err()
    );
    let foreign_import = wat::parse_str(r#"(component (import "acme:net/sockets" (instance)))"#).unwrap();
    assert_eq!(
        runtime.load(&foreign_import).err(),
        Some(LoadError::UnsupportedImports {
            names: vec!["acme:net/sockets".into()]
        })
    );
    let mut truncated = std::fs::read(plugins::KV).unwrap();
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(runtime.load(&truncated), Err(LoadError::Invalid(_))));
    let small = Runtime::new(RuntimeConfig {
        limits: Limits {
            max_component_bytes: 1000,
            ..Limits::default()
        },
        cache_dir: None,
    })
    .unwrap();
    assert!(matches!(
        small.load(&std::fs::read(plugins::KV).unwrap()),
        Err(LoadError::TooLarge { limit: 1000, .. })
    ));
}

#[test]
fn compiled_components_are_cached_by_hash_and_engine() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        limits: test_limits(),
        cache_dir: Some(dir.path().to_path_buf()),
    };
    let bytes = std::fs::read(plugins::KV).unwrap();
    let first = Runtime::new(config.clone()).unwrap().load(&bytes).unwrap();
    assert!(!first.from_cache());
    let cached = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(cached, 1);
    let second = Runtime::new(config).unwrap().load(&bytes).unwrap();
    assert!(second.from_cache());
    assert_eq!(second.sha256(), first.sha256());
    let mut kv = fresh(&second);
    assert_eq!(
        kv.apply(entries(&[&put("a", "1")])).unwrap()[0].result,
        ok(r#"{"previous":null}"#)
    );
}

#[test]
fn every_bundled_plugin_loads_and_is_exercised_by_a_test() {
    // Cached: the Python and JavaScript components take tens of seconds to compile.
    let runtime = Runtime::new(RuntimeConfig {
        limits: test_limits(),
        cache_dir: Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("polyglot-cache")),
    })
    .unwrap();
    let sources = [
        include_str!("runtime.rs"),
        include_str!("plugin_test_cli.rs"),
        include_str!("polyglot.rs"),
        include_str!("cluster.rs"),
        include_str!("linearizability.rs"),
    ]
    .concat();
    for (name, path) in plugins::ALL {
        // The one bundled component that is not a plugin: it must be refused (tests/cluster.rs).
        if *name != "fixture-other-world" {
            load(&runtime, path);
        }
        let constant = format!("plugins::{}", name.to_uppercase().replace('-', "_"));
        assert!(
            sources.contains(&constant),
            "plugin {name} has no test using {constant}"
        );
    }
}

#[test]
fn wasi_guests_see_the_entry_timestamp_fixed_hash_seeds_and_no_environment_or_files() {
    let runtime = runtime();
    let code = load(&runtime, plugins::FIXTURE_WASI_PROBE);
    let log = entries(&[r#""hash-order""#, r#""time""#, r#""env""#, r#""files""#, r#""time""#]);
    let (whole, _) = apply_in_batches(&code, &log, log.len());
    assert_eq!(
        whole[1],
        ok(r#""1700000000001""#),
        "the clock reads the entry's leader timestamp"
    );
    assert_eq!(whole[4], ok(r#""1700000000004""#));
    assert_eq!(whole[2], ok(r#""0 vars, 0 args""#));
    assert_eq!(whole[3], ok(r#""root listable: false, cwd listable: false""#));
    for batch in [2, 1] {
        assert_eq!(
            apply_in_batches(&code, &log, batch).0,
            whole,
            "fresh instances, batches of {batch}"
        );
    }
    // Hash seeds are fixed: the first HashMap of every instance iterates in the same order.
    let mut other_instance = fresh(&code);
    assert_eq!(other_instance.query(br#""hash-order""#).unwrap(), whole[0]);
}

/// The node runs short plugin calls on its async workers, where wasmtime-wasi's own blocking
/// calls would panic (`Handle::block_on` inside a runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn on_an_async_worker_a_plugin_prints_but_waiting_for_time_traps() {
    let on_worker = tokio::spawn(async {
        let runtime = runtime();
        let code = load(&runtime, plugins::FIXTURE_WASI_PROBE);
        let mut plugin = fresh(&code);
        let printed = plugin.query(br#""print""#).unwrap();
        let slept = plugin.query(br#""sleep""#).unwrap();
        let log = entries(&[r#""print""#, r#""sleep""#, r#""print""#]);
        let applied = results(&plugin.apply(log).unwrap());
        (printed, slept, applied)
    });
    let (printed, slept, applied) = on_worker.await.expect("no panic on the worker");
    assert_eq!(printed, ok(r#""printed""#));
    assert!(
        matches!(&slept, Err(PluginError::Trapped(m)) if m.contains("cannot wait for time")),
        "{slept:?}"
    );
    assert_eq!(applied[0], ok(r#""printed""#));
    assert!(matches!(&applied[1], Err(PluginError::Trapped(_))), "{:?}", applied[1]);
    assert_eq!(applied[2], ok(r#""printed""#), "the entry after the trap still applies");
}

#[test]
fn a_plugin_whose_results_depend_on_hashmap_order_is_caught_by_batch_independence() {
    // Rust std bumps its hash keys for every new HashMap in an instance, so HashMap iteration
    // order depends on the instance's history: exactly what the conformance check exists to catch.
    let runtime = runtime();
    let code = load(&runtime, plugins::FIXTURE_WASI_PROBE);
    let log = entries(&[r#""hash-order""#, r#""hash-order""#]);
    let (whole, _) = apply_in_batches(&code, &log, 2);
    assert_ne!(apply_in_batches(&code, &log, 1).0, whole);
}
