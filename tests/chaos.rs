//! `wasmraft chaos`, the long form of the fault runs, in its short form: node processes, seeded
//! faults (partitions in the run's own network namespace, kills, pauses, membership changes,
//! snapshots, deploys), every history checked. And the proof that the run can fail: nodes armed
//! to answer linearizable reads from their own state are caught.

mod common;

use std::process::Command;

/// The summary line: `schedules: N, ops checked: M, faults: F, violations: V`.
fn summary(stdout: &str) -> [u64; 4] {
    let last = stdout.lines().last().unwrap_or_default();
    let numbers: Vec<u64> = last
        .split(", ")
        .filter_map(|part| part.rsplit_once(": ")?.1.parse().ok())
        .collect();
    assert!(
        last.starts_with("schedules: ") && numbers.len() == 4,
        "no summary line in {stdout:?}"
    );
    [numbers[0], numbers[1], numbers[2], numbers[3]]
}

fn chaos(args: &[&str]) -> (std::process::Output, String) {
    let out = Command::new(common::BIN)
        .arg("chaos")
        .args(args)
        .output()
        .expect("running wasmraft chaos");
    let stderr = common::stderr(&out);
    (out, stderr)
}

#[test]
fn chaos_runs_seeded_schedules_against_node_processes_and_finds_no_violation() {
    let (out, stderr) = chaos(&["--schedules", "3", "--seed", "11", "--duration-per-schedule", "5"]);
    println!("{stderr}");
    assert!(out.status.success(), "chaos failed:\n{stderr}");
    let [schedules, checked, faults, violations] = summary(&common::stdout(&out));
    assert_eq!((schedules, violations), (3, 0));
    assert!(checked >= 300, "only {checked} operations checked");
    assert!(faults >= 3, "only {faults} faults");
    // This machine and CI can make network namespaces: partitions must be in the mix.
    assert!(
        stderr.contains("partitions: nftables rules in the run's own network namespace"),
        "{stderr}"
    );
}

#[test]
fn chaos_catches_nodes_that_read_without_a_read_index_and_names_the_seed() {
    let (out, stderr) = chaos(&[
        "--schedules",
        "5",
        "--seed",
        "100",
        "--duration-per-schedule",
        "5",
        "--failpoint",
        "read-skips-read-index",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the broken nodes were not caught:\n{stderr}"
    );
    let [_, _, _, violations] = summary(&common::stdout(&out));
    assert_eq!(violations, 1);
    assert!(stderr.contains("not linearizable: key s"), "{stderr}");
    assert!(stderr.contains("replay: wasmraft chaos --seed "), "{stderr}");
    println!("caught, as it must be:\n{stderr}");
}
