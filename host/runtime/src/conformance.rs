//! The conformance checks behind `wasmraft plugin test`: run any plugin component, whatever its
//! language, through the guarantees a wasmraft node relies on.
//!
//! The checks, in order (each named in the report):
//! - `validate`: a component of our world, within the static limits;
//! - `init`: `init` succeeds on an empty space;
//! - `apply`: every scripted entry applies without a trap, exhausted fuel, an exceeded limit or an
//!   unexpected `err`, and matches its `expect` when given;
//! - `batch-independence`: the same log applied in batches of 7 and one entry at a time, each
//!   batch on a fresh instance (as replicas that batch differently or restart would), gives the
//!   same results and the same kv state;
//! - `query-read-only`: scripted queries answer (and match `expect`) without changing the state;
//! - `snapshot-round-trip`: a snapshot restored into an empty space on a fresh instance gives the
//!   same kv state and the same query answers;
//! - `same-as-reference` (only with a reference component): the same log and queries give
//!   byte-identical results and the same kv state as the reference implementation (errors must be
//!   errors in both; their messages may differ between languages).
//!
//! A script is JSON lines: `{"apply": CMD}` or `{"query": REQ}` where `CMD`/`REQ` is the JSON
//! value sent as the payload, optionally with `"expect": VALUE` (the result, as JSON) or
//! `"expect_error": "substring"`. Without a script, [`Script::kv_smoke`] drives kv-style plugins.

use std::time::{Duration, Instant};

use crate::{Entry, InitContext, MemoryBackend, Pair, Plugin, PluginCode, PluginError, Runtime};

/// Chunk size asked of the plugin's snapshot: small enough that a smoke state spans many chunks.
const SNAPSHOT_CHUNK_BYTES: u32 = 4096;

/// Batch sizes compared against applying the whole script at once.
const BATCH_SIZES: [usize; 2] = [7, 1];

/// What a script step expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Success; the result is not checked.
    Success,
    /// Success with exactly this result (compared as JSON when both sides parse).
    Result(Vec<u8>),
    /// An error whose message contains this text.
    Error(String),
}

/// One scripted step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Line number in the script (1-based), for messages.
    pub line: usize,
    pub payload: Vec<u8>,
    pub expect: Expect,
}

/// Entries to apply and queries to ask.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    pub applies: Vec<Step>,
    pub queries: Vec<Step>,
}

impl Script {
    /// Parses a JSON-lines script (blank lines and lines starting with `#` are skipped).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut script = Script::default();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(trimmed).map_err(|e| format!("script line {line_no}: not JSON: {e}"))?;
            let object = value
                .as_object()
                .ok_or(format!("script line {line_no}: expected an object"))?;
            let expect = match (object.get("expect"), object.get("expect_error")) {
                (Some(_), Some(_)) => return Err(format!("script line {line_no}: both expect and expect_error")),
                (Some(result), None) => Expect::Result(result.to_string().into_bytes()),
                (None, Some(error)) => Expect::Error(error.as_str().map_or_else(|| error.to_string(), str::to_string)),
                (None, None) => Expect::Success,
            };
            let (kind, payload) = match (object.get("apply"), object.get("query")) {
                (Some(cmd), None) => ("apply", cmd),
                (None, Some(req)) => ("query", req),
                _ => {
                    return Err(format!(
                        "script line {line_no}: needs exactly one of \"apply\" or \"query\""
                    ));
                }
            };
            let step = Step {
                line: line_no,
                payload: payload.to_string().into_bytes(),
                expect,
            };
            if kind == "apply" {
                if let Some(query) = script.queries.first() {
                    return Err(format!(
                        "script line {line_no}: an apply after the query at line {}: queries run after every \
                         apply, against the final state, so write them last",
                        query.line
                    ));
                }
                script.applies.push(step);
            } else {
                script.queries.push(step);
            }
        }
        if script.applies.is_empty() {
            return Err("script has no apply steps".to_string());
        }
        Ok(script)
    }

    /// A built-in script for plugins that speak the kv command language (`{"op":"put",...}`).
    /// Its keys include prefixes of each other (`k1`, `k10`) so paging bugs show.
    pub fn kv_smoke() -> Self {
        let mut lines = Vec::new();
        for i in 0..24 {
            lines.push(format!(
                r#"{{"apply":{{"op":"put","key":"k{i}","value":"v{}"}}}}"#,
                "x".repeat(i * 37)
            ));
        }
        lines.push(r#"{"apply":{"op":"put","key":"k1","value":"overwritten"}}"#.to_string());
        lines.push(r#"{"apply":{"op":"delete","key":"k2"}}"#.to_string());
        lines.push(r#"{"apply":{"op":"delete","key":"missing"}}"#.to_string());
        lines.push(r#"{"apply":{"op":"cas","key":"k3","expected":"nope","value":"x"}}"#.to_string());
        lines.push(r#"{"apply":{"op":"cas","key":"new","expected":null,"value":"created"}}"#.to_string());
        lines.push(r#"{"apply":{"op":"get","key":"k1"}}"#.to_string());
        lines.push(r#"{"query":{"op":"get","key":"k1"}}"#.to_string());
        lines.push(r#"{"query":{"op":"get","key":"k2"}}"#.to_string());
        lines.push(r#"{"query":{"op":"scan","start":"k1","end":"k2","limit":100}}"#.to_string());
        Self::parse(&lines.join("\n")).expect("the built-in script parses")
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    /// `Ok(detail)` or `Err(reason)`.
    pub outcome: Result<String, String>,
}

/// Everything `wasmraft plugin test` reports.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
    pub max_entry_fuel: u64,
    pub peak_memory_bytes: usize,
    pub load_time: Duration,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.outcome.is_ok())
    }

    /// The first failed check, if any.
    pub fn failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.outcome.is_err())
    }
}

/// Runs every check on `bytes` (and compares with `reference` when given), calling `progress` as
/// each check ends. Stops at the first failure.
pub fn run(
    runtime: &Runtime,
    bytes: &[u8],
    script: &Script,
    reference: Option<&[u8]>,
    mut progress: impl FnMut(&Check),
) -> Report {
    let mut report = Report::default();
    let mut record = |report: &mut Report, name: &'static str, outcome: Result<String, String>| {
        let check = Check { name, outcome };
        progress(&check);
        let ok = check.outcome.is_ok();
        report.checks.push(check);
        ok
    };

    let started = Instant::now();
    let code = match runtime.load(bytes) {
        Ok(code) => code,
        Err(err) => {
            record(&mut report, "validate", Err(err.to_string()));
            return report;
        }
    };
    report.load_time = started.elapsed();
    let wasi = if code.imports().iter().any(|i| i.starts_with("wasi:")) {
        "imports WASI (deterministic context)"
    } else {
        "imports no WASI"
    };
    let how = if code.from_cache() {
        "loaded from the cache"
    } else {
        "compiled"
    };
    let detail = format!(
        "{} bytes, sha256 {}, {wasi}, {how} in {:.0?}",
        code.size(),
        code.sha256_hex(),
        report.load_time
    );
    if !record(&mut report, "validate", Ok(detail)) {
        return report;
    }

    let mut plugin = match fresh(&code) {
        Ok(plugin) => plugin,
        Err(reason) => {
            record(&mut report, "init", Err(reason));
            return report;
        }
    };
    if !record(&mut report, "init", Ok("ok".into())) {
        return report;
    }

    let log = log_of(script);
    let applied = apply_checked(&mut plugin, &log, script);
    let stats = plugin.stats();
    report.max_entry_fuel = stats.max_entry_fuel;
    report.peak_memory_bytes = stats.peak_memory_bytes;
    let (results, state) = match applied {
        Ok(done) => done,
        Err(reason) => {
            record(&mut report, "apply", Err(reason));
            return report;
        }
    };
    let detail = format!(
        "{} entries, {} keys, max {} fuel per entry",
        log.len(),
        state.len(),
        stats.max_entry_fuel
    );
    if !record(&mut report, "apply", Ok(detail)) {
        return report;
    }

    let outcome = check_batch_independence(&code, &log, &results, &state);
    if !record(&mut report, "batch-independence", outcome) {
        return report;
    }

    let answers = match check_queries(&mut plugin, script, &state) {
        Ok(answers) => answers,
        Err(reason) => {
            record(&mut report, "query-read-only", Err(reason));
            return report;
        }
    };
    if !record(
        &mut report,
        "query-read-only",
        Ok(format!("{} queries, state unchanged", answers.len())),
    ) {
        return report;
    }

    let outcome = check_snapshot_round_trip(&code, &mut plugin, script, &state, &answers);
    let stats = plugin.stats();
    report.peak_memory_bytes = report.peak_memory_bytes.max(stats.peak_memory_bytes);
    if !record(&mut report, "snapshot-round-trip", outcome) {
        return report;
    }

    if let Some(reference) = reference {
        let outcome = compare_with_reference(runtime, reference, &log, script, &results, &state, &answers);
        record(&mut report, "same-as-reference", outcome);
    }
    report
}

type Results = Vec<Result<Vec<u8>, PluginError>>;

fn fresh(code: &PluginCode) -> Result<Plugin, String> {
    let mut plugin = code.instantiate("plugin-test", Box::new(MemoryBackend::new()));
    match plugin.init(&InitContext::default()) {
        Ok(Ok(())) => Ok(plugin),
        Ok(Err(failure)) => Err(format!("init failed: {failure}")),
        Err(fault) => Err(fault.to_string()),
    }
}

fn log_of(script: &Script) -> Vec<Entry> {
    script
        .applies
        .iter()
        .enumerate()
        .map(|(i, step)| Entry {
            index: i as u64 + 1,
            term: 1,
            timestamp_ms: 1_700_000_000_000 + i as u64 * 1000,
            payload: step.payload.clone(),
        })
        .collect()
}

fn dump(plugin: &Plugin) -> Result<Vec<Pair>, String> {
    plugin.backend().scan(b"", None, usize::MAX).map_err(|e| e.to_string())
}

/// Longest payload or result quoted in a message.
const QUOTE_CHARS: usize = 80;

fn text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], bytes.len()),
        None => text.into_owned(),
    }
}

/// Checks one result against its step's expectation.
fn check_step(kind: &str, step: &Step, result: &Result<Vec<u8>, PluginError>) -> Result<(), String> {
    let at = format!("{kind} at script line {} ({})", step.line, text(&step.payload));
    match (&step.expect, result) {
        (Expect::Success, Ok(_)) => Ok(()),
        (Expect::Result(want), Ok(got)) => {
            let same = match (
                serde_json::from_slice::<serde_json::Value>(want),
                serde_json::from_slice::<serde_json::Value>(got),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => want == got,
            };
            if same {
                Ok(())
            } else {
                Err(format!("{at}: expected {} but got {}", text(want), text(got)))
            }
        }
        (Expect::Error(want), Err(err)) if err.to_string().contains(want.as_str()) => Ok(()),
        (Expect::Error(want), Err(err)) => {
            Err(format!("{at}: expected an error containing {want:?}, got error: {err}"))
        }
        (Expect::Error(want), Ok(got)) => Err(format!(
            "{at}: expected an error containing {want:?}, got {}",
            text(got)
        )),
        (_, Err(err)) => Err(format!("{at} failed: {err}")),
    }
}

fn apply_checked(plugin: &mut Plugin, log: &[Entry], script: &Script) -> Result<(Results, Vec<Pair>), String> {
    let outcomes = plugin.apply(log.to_vec()).map_err(|e| format!("node fault: {e}"))?;
    let results: Results = outcomes.into_iter().map(|o| o.result).collect();
    for (step, result) in script.applies.iter().zip(&results) {
        check_step("entry", step, result)?;
    }
    Ok((results, dump(plugin)?))
}

fn check_batch_independence(
    code: &PluginCode,
    log: &[Entry],
    whole: &Results,
    state: &[Pair],
) -> Result<String, String> {
    for batch in BATCH_SIZES {
        let mut results = Vec::new();
        let mut last = None;
        for chunk in log.chunks(batch) {
            let mut plugin = match last.take() {
                // A fresh instance over the same data: what a replica that restarted would have.
                Some(backend) => code.instantiate("plugin-test", backend),
                None => fresh(code)?,
            };
            let outcomes = plugin.apply(chunk.to_vec()).map_err(|e| format!("node fault: {e}"))?;
            results.extend(outcomes.into_iter().map(|o| o.result));
            last = Some(plugin.into_backend());
        }
        if let Some(i) = (0..whole.len()).find(|&i| results.get(i) != Some(&whole[i])) {
            return Err(format!(
                "entry {} ({}) gave {} when applied in one batch but {} in batches of {batch} on fresh instances: \
                 its result depends on batching or on state kept outside kv",
                i + 1,
                text(&log[i].payload),
                show(&whole[i]),
                results.get(i).map_or("nothing".into(), show),
            ));
        }
        let backend = last.ok_or("empty log")?;
        let pairs = backend.scan(b"", None, usize::MAX).map_err(|e| e.to_string())?;
        if pairs != state {
            return Err(format!(
                "kv state after batches of {batch} differs from one batch ({} vs {} keys{})",
                pairs.len(),
                state.len(),
                first_difference(state, &pairs)
            ));
        }
    }
    Ok(format!(
        "same results and state in batches of {:?} and one batch",
        BATCH_SIZES
    ))
}

fn compare_with_reference(
    runtime: &Runtime,
    reference: &[u8],
    log: &[Entry],
    script: &Script,
    results: &Results,
    state: &[Pair],
    answers: &Results,
) -> Result<String, String> {
    let code = runtime
        .load(reference)
        .map_err(|e| format!("the reference does not load: {e}"))?;
    let mut plugin = fresh(&code).map_err(|e| format!("the reference: {e}"))?;
    let outcomes = plugin.apply(log.to_vec()).map_err(|e| format!("node fault: {e}"))?;
    let same = |a: &Result<Vec<u8>, PluginError>, b: &Result<Vec<u8>, PluginError>| match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(_), Err(_)) => true,
        _ => false,
    };
    for (i, (outcome, mine)) in outcomes.iter().zip(results).enumerate() {
        if !same(&outcome.result, mine) {
            return Err(format!(
                "entry {} ({}) gave {} but the reference gave {}",
                i + 1,
                text(&log[i].payload),
                show(mine),
                show(&outcome.result)
            ));
        }
    }
    let pairs = dump(&plugin)?;
    if pairs != state {
        return Err(format!(
            "kv state differs from the reference ({} vs {} keys{})",
            state.len(),
            pairs.len(),
            first_difference(&pairs, state)
        ));
    }
    for (step, mine) in script.queries.iter().zip(answers) {
        let theirs = plugin.query(&step.payload).map_err(|e| format!("node fault: {e}"))?;
        if !same(&theirs, mine) {
            return Err(format!(
                "query at script line {} gave {} but the reference gave {}",
                step.line,
                show(mine),
                show(&theirs)
            ));
        }
    }
    Ok(format!(
        "{} entries, {} queries and {} keys identical to the reference",
        log.len(),
        answers.len(),
        state.len()
    ))
}

fn show(result: &Result<Vec<u8>, PluginError>) -> String {
    match result {
        Ok(bytes) => format!("ok {}", text(bytes)),
        Err(err) => format!("error \"{err}\""),
    }
}

fn first_difference(want: &[Pair], got: &[Pair]) -> String {
    let key = want
        .iter()
        .zip(got)
        .find(|(a, b)| a != b)
        .map(|(a, _)| &a.0)
        .or_else(|| want.get(got.len()).map(|p| &p.0))
        .or_else(|| got.get(want.len()).map(|p| &p.0));
    key.map_or(String::new(), |k| format!(", first at key {:?}", text(k)))
}

fn check_queries(plugin: &mut Plugin, script: &Script, state: &[Pair]) -> Result<Results, String> {
    let mut answers = Vec::new();
    for step in &script.queries {
        let answer = plugin.query(&step.payload).map_err(|e| format!("node fault: {e}"))?;
        check_step("query", step, &answer)?;
        answers.push(answer);
    }
    if dump(plugin)? != state {
        return Err("the state changed while answering queries".to_string());
    }
    Ok(answers)
}

fn check_snapshot_round_trip(
    code: &PluginCode,
    plugin: &mut Plugin,
    script: &Script,
    state: &[Pair],
    answers: &Results,
) -> Result<String, String> {
    let mut chunks = Vec::new();
    let snapshot = plugin.snapshot(SNAPSHOT_CHUNK_BYTES, |chunk| {
        chunks.push(chunk);
        Ok(())
    });
    match snapshot {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => return Err(format!("snapshot failed: {failure}")),
        Err(fault) => return Err(format!("node fault: {fault}")),
    }
    let bytes: usize = chunks.iter().map(Vec::len).sum();
    let count = chunks.len();
    let mut restored = code.instantiate("plugin-test", Box::new(MemoryBackend::new()));
    match restored.restore(chunks) {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => return Err(format!("restore failed: {failure}")),
        Err(fault) => return Err(format!("node fault: {fault}")),
    }
    let pairs = dump(&restored)?;
    if pairs != state {
        return Err(format!(
            "restoring the snapshot gave {} keys where the plugin had {}{}",
            pairs.len(),
            state.len(),
            first_difference(state, &pairs)
        ));
    }
    for (step, want) in script.queries.iter().zip(answers) {
        let got = restored.query(&step.payload).map_err(|e| format!("node fault: {e}"))?;
        if &got != want {
            return Err(format!(
                "after restore, query at line {} gave {} instead of {}",
                step.line,
                show(&got),
                show(want)
            ));
        }
    }
    Ok(format!("{bytes} bytes in {count} chunks, state and answers identical"))
}
