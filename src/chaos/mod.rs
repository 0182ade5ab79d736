//! `wasmraft chaos`: the long form of the fault runs. Node processes on loopback (4 of them: 3
//! voters and a spare for membership changes) serve a workload of concurrent clients (put,
//! linearizable get, compare-and-swap through any node) while a seeded nemesis injects one fault
//! after another: partitions (nftables rules in the run's own network namespace), SIGKILL and
//! restart, SIGSTOP and SIGCONT, leader transfer, swapping a voter for a fresh node, snapshot and
//! purge, a snapshot transfer cut mid-stream, and a plugin deploy.
//!
//! After each schedule everything heals; the schedule's history is checked for linearizability
//! (`crate::linearizability`), the replicas' digests are compared, and a node process that exited
//! on its own is a failure too. The last line is the summary
//! `schedules: N, ops checked: M, faults: F, violations: V`.

mod procs;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::transport::Channel;
use wasmraft::linearizability::{Client, History, SessionRetry, lazy_api};
use wasmraft::workload::{SplitMix, noise};
use wasmraft_node::pb::{self, api_client::ApiClient};

use crate::context::{Api, Target, connect_lazy};
use crate::deploy::Upload;
use crate::dev::wait_for;
use procs::{Firewall, Procs};

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// Schedules to run: each is a workload under a seeded mix of faults, then checked.
    #[arg(long, default_value_t = 10)]
    schedules: u64,
    /// The first schedule's seed (schedule i uses SEED + i); default: from the clock. A failing
    /// schedule names its seed: `--seed THAT --schedules 1` runs it again.
    #[arg(long)]
    seed: Option<u64>,
    /// How long each schedule's workload and faults last.
    #[arg(long, value_name = "SECS", default_value_t = 6.0)]
    duration_per_schedule: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: u32,
    /// Keep the nodes' data and logs in DIR (default: a temporary directory, deleted unless the
    /// run fails).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Deploy this component as `kv` (default: the bundled kv plugin).
    #[arg(long, value_name = "FILE.wasm")]
    plugin: Option<PathBuf>,
    /// Test-only: arm a failpoint in every node (e.g. `read-skips-read-index`), to show the run
    /// catches a broken node.
    #[arg(long, hide = true)]
    failpoint: Option<String>,
}

/// Set in the copy of this command that runs inside its own network namespace.
const INSIDE_NAMESPACE: &str = "WASMRAFT_CHAOS_NETNS";

/// Runs the command, inside a new network namespace when one can be made (partitions need one:
/// their firewall rules must not touch the host's network).
pub fn main(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let network = match std::env::var_os(INSIDE_NAMESPACE) {
        Some(_) => Network::inside(),
        None => match rerun_in_namespace()? {
            Ok(code) => return Ok(code),
            Err(why) => Network::Shared(why),
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args, network))
}

/// Runs this same command again under `unshare --net` (as root, or in a user namespace that
/// maps this user to root); its exit code, or why no namespace could be made.
fn rerun_in_namespace() -> anyhow::Result<Result<ExitCode, String>> {
    let exe = std::env::current_exe().context("finding the wasmraft binary")?;
    let mut why = String::new();
    for user_namespace in [false, true] {
        let unshare = |rest: &[OsString]| {
            let mut cmd = Command::new("unshare");
            if user_namespace {
                cmd.arg("--map-root-user");
            }
            cmd.arg("--net").args(rest);
            cmd
        };
        match unshare(&["true".into()]).output() {
            Ok(out) if out.status.success() => {
                let mut rest: Vec<OsString> = vec!["--".into(), exe.into()];
                rest.extend(std::env::args_os().skip(1));
                let status = unshare(&rest)
                    .env(INSIDE_NAMESPACE, "1")
                    .status()
                    .context("running unshare")?;
                return Ok(Ok(ExitCode::from(status.code().unwrap_or(1) as u8)));
            }
            Ok(out) => why = String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(err) => why = format!("unshare: {err}"),
        }
    }
    Ok(Err(why))
}

/// Where the run's nodes talk, and whether links between them can be cut.
enum Network {
    /// The run's own network namespace, with a firewall.
    Own(Firewall),
    /// The host's network: no partitions (the reason).
    Shared(String),
}

impl Network {
    fn inside() -> Network {
        let up = Command::new("ip").args(["link", "set", "lo", "up"]).output();
        match up {
            Ok(out) if out.status.success() => {}
            Ok(out) => return Network::Shared(format!("ip link set lo up: {}", String::from_utf8_lossy(&out.stderr))),
            Err(err) => return Network::Shared(format!("ip (Debian: apt-get install iproute2): {err}")),
        }
        match Firewall::new() {
            Ok(firewall) => Network::Own(firewall),
            Err(err) => Network::Shared(format!("{err:#}")),
        }
    }
}

/// Fault kinds, as the summary names them.
const PARTITION: &str = "partition";
const ONE_WAY: &str = "one-way partition";
const KILL: &str = "kill";
const PAUSE: &str = "pause";
const TRANSFER: &str = "leader transfer";
const MEMBERSHIP: &str = "membership change";
const SNAPSHOT: &str = "snapshot+purge";
const SNAPSHOT_CUT: &str = "snapshot transfer cut";
const DEPLOY: &str = "deploy";

/// The state a run carries from schedule to schedule.
struct Run {
    procs: Procs,
    firewall: Option<Firewall>,
    voters: BTreeSet<u64>,
    plugin: Vec<u8>,
    deploys: u64,
    /// Faults injected, by kind.
    faults: BTreeMap<&'static str, u64>,
    /// What the faults' effects were seen to be (e.g. snapshot transfers that resumed).
    seen: BTreeMap<&'static str, u64>,
}

async fn run(args: ChaosArgs, network: Network) -> anyhow::Result<ExitCode> {
    if args.schedules == 0 || args.clients == 0 || args.duration_per_schedule <= 0.0 {
        anyhow::bail!("--schedules, --clients and --duration-per-schedule must be above 0");
    }
    let seed = args.seed.unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(1, |d| d.as_secs() % 1_000_000)
    });
    let firewall = match network {
        Network::Own(firewall) => {
            eprintln!("partitions: nftables rules in the run's own network namespace");
            Some(firewall)
        }
        Network::Shared(why) => {
            eprintln!("partitions skipped: no network namespace could be made ({why})");
            None
        }
    };
    let (dir, temp) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new().prefix("wasmraft-chaos-").tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let plugin_path = args
        .plugin
        .clone()
        .unwrap_or_else(|| PathBuf::from(wasmraft::plugins::KV));
    let plugin = std::fs::read(&plugin_path).with_context(|| format!("reading {}", plugin_path.display()))?;
    // In its own namespace the run has every port; on the host's network it finds a free one.
    let port = match firewall {
        Some(_) => 7000,
        None => free_port()?,
    };
    let mut run = Run {
        procs: Procs::create(&dir, 4, 3, port, args.failpoint.clone())?,
        firewall,
        voters: (1..=3).collect(),
        plugin,
        deploys: 0,
        faults: BTreeMap::new(),
        seen: BTreeMap::new(),
    };
    eprintln!(
        "chaos: {} schedules of {} s from seed {seed}; 3 voters and a spare; data and logs in {}",
        args.schedules,
        args.duration_per_schedule,
        dir.display()
    );
    if let Err(e) = run.start_cluster().await {
        run.procs.stop_all();
        keep_logs(temp);
        return Err(e);
    }

    let (mut schedules, mut checked, mut unknown, mut violations) = (0, 0, 0, 0);
    for i in 0..args.schedules {
        let schedule_seed = seed + i;
        let started = Instant::now();
        let outcome = match run.schedule(&args, schedule_seed).await {
            Ok(outcome) => outcome,
            Err(e) => {
                run.procs.stop_all();
                keep_logs(temp);
                return Err(e.context(format!("schedule {} (seed {schedule_seed})", i + 1)));
            }
        };
        schedules += 1;
        checked += outcome.checked;
        unknown += outcome.unknown;
        let head = format!("schedule {}/{} (seed {schedule_seed})", i + 1, args.schedules);
        let faults = outcome.faults.join(", ");
        match &outcome.violation {
            None => eprintln!(
                "{head}: {} ops checked ({} of unknown outcome) under {faults}: ok ({:.0} s, check {:.1} s)",
                outcome.checked,
                outcome.unknown,
                started.elapsed().as_secs_f64(),
                outcome.check_time.as_secs_f64()
            ),
            Some(violation) => {
                violations += 1;
                eprintln!(
                    "{head} FAILED under {faults}:\n{violation}\nreplay: wasmraft chaos --seed {schedule_seed} --schedules 1"
                );
                break;
            }
        }
    }
    run.procs.stop_all();
    let total: u64 = run.faults.values().sum();
    let kinds: Vec<String> = run.faults.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    eprintln!("faults by kind: {}", kinds.join(", "));
    let seen: Vec<String> = run.seen.iter().map(|(what, n)| format!("{what} {n}")).collect();
    if !seen.is_empty() {
        eprintln!("seen: {}", seen.join(", "));
    }
    eprintln!("operations of unknown outcome (open to the end of their history): {unknown}");
    if violations > 0 {
        keep_logs(temp);
    }
    println!("schedules: {schedules}, ops checked: {checked}, faults: {total}, violations: {violations}");
    Ok(if violations > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A run that failed keeps its nodes' data and logs (a passing run's temp dir is deleted).
fn keep_logs(temp: Option<tempfile::TempDir>) {
    if let Some(temp) = temp {
        eprintln!("node logs kept in {}", temp.keep().display());
    }
}

/// A port free on every node's address (the host's network is shared with others).
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = std::net::TcpListener::bind((procs::node_ip(1), 0))?
            .local_addr()?
            .port();
        if (2..=4).all(|id| std::net::TcpListener::bind((procs::node_ip(id), port)).is_ok()) {
            return Ok(port);
        }
    }
    anyhow::bail!("no port is free on 127.0.1.1-4")
}

/// What one schedule did and found.
struct Outcome {
    /// How long the history check took.
    check_time: Duration,
    checked: usize,
    unknown: usize,
    faults: Vec<String>,
    violation: Option<String>,
}

/// How long a nemesis's own request may take (a paused node never answers).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

async fn status(addr: &str) -> Option<pb::ClusterStatusResponse> {
    let mut api = lazy_api(addr).ok()?;
    let req = api.cluster_status(pb::ClusterStatusRequest {});
    let status = tokio::time::timeout(Duration::from_secs(1), req).await.ok()?.ok()?;
    Some(status.into_inner())
}

/// Writes between killing a follower and the leader's snapshot: more than the nodes' `keep_logs`.
const CUT_FILLER_WRITES: u64 = 80;

/// Filler state: enough that a snapshot transfer lasts a while at the nodes' send cap.
const FILLER_KEYS: u64 = 24;
const FILLER_BYTES: usize = 96 << 10;

impl Run {
    fn addr(&self, id: u64) -> String {
        self.procs.node(id).addr.clone()
    }

    fn api(&self, id: u64) -> anyhow::Result<ApiClient<Channel>> {
        Ok(lazy_api(&self.addr(id))?.max_decoding_message_size(64 << 20))
    }

    /// A client for deploys (the nodes run `--insecure`: plaintext, no token).
    fn deployer(&self, id: u64) -> anyhow::Result<Api> {
        connect_lazy(&Target::new(&self.addr(id), None, None))
    }

    /// The leader as the voters that answer see it (the highest term wins).
    async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for id in &self.voters {
            let node = self.procs.node(*id);
            if !node.running() || node.paused() {
                continue;
            }
            if let Some(s) = status(&node.addr).await
                && s.state == "leader"
                && best.is_none_or(|(term, _)| s.term > term)
            {
                best = Some((s.term, s.id));
            }
        }
        best.map(|(_, id)| id)
    }

    async fn wait_leader(&self) -> anyhow::Result<u64> {
        wait_for("a leader", Duration::from_secs(30), || self.leader()).await
    }

    /// Starts the voters, initializes the cluster, deploys the plugin and writes the filler.
    async fn start_cluster(&mut self) -> anyhow::Result<()> {
        for id in 1..=3 {
            self.procs.start(id)?;
        }
        let first = self.addr(1);
        wait_for("node 1 to answer", Duration::from_secs(30), || status(&first)).await?;
        self.api(1)?
            .init(pb::InitRequest::default())
            .await
            .map_err(|s| anyhow::anyhow!("initializing the cluster: {}", s.message()))?;
        let leader = self.wait_leader().await?;
        let mut deployer = self.deployer(leader)?;
        let upload = Upload {
            label: "chaos-0".into(),
            ..Upload::new("kv", self.plugin.clone())
        };
        crate::deploy::deploy_bytes(&mut deployer, upload, |_| {})
            .await
            .map_err(|s| anyhow::anyhow!("deploying kv: {}", s.message()))?;
        for k in 0..FILLER_KEYS {
            let value = noise(k, FILLER_BYTES);
            let put = format!(r#"{{"op":"put","key":"filler-{k}","value":"{value}"}}"#);
            let req = pb::CallRequest {
                plugin: "kv".into(),
                payload: put.into_bytes(),
                session: None,
            };
            deployer
                .call(req)
                .await
                .map_err(|s| anyhow::anyhow!("writing the filler: {}", s.message()))?;
        }
        Ok(())
    }

    /// One schedule: the workload and the nemesis for `--duration-per-schedule`, then heal,
    /// check the history, and compare the replicas.
    async fn schedule(&mut self, args: &ChaosArgs, seed: u64) -> anyhow::Result<Outcome> {
        let history = History::new();
        let end_at = Instant::now() + Duration::from_secs_f64(args.duration_per_schedule);
        let keys: Vec<String> = (0..5).map(|k| format!("s{seed}-k{k}")).collect();
        let addrs: Vec<String> = (1..=4).map(|id| self.addr(id)).collect();
        let clients: Vec<_> = (0..args.clients)
            .map(|c| {
                let client = Client {
                    id: c,
                    addrs: addrs.clone(),
                    keys: keys.clone(),
                    seed: seed.wrapping_mul(1000) + u64::from(c),
                    ops: usize::MAX,
                    until: Some(end_at),
                    timeout: Duration::from_secs(3),
                    sessions: Some(SessionRetry {
                        client: format!("chaos-{seed}-{c}"),
                        retry_for: Duration::from_secs(20),
                    }),
                };
                tokio::spawn(client.run(history.clone()))
            })
            .collect();
        let mut rng = SplitMix(seed);
        let mut faults = Vec::new();
        let mut failure = None;
        while Instant::now() < end_at && failure.is_none() {
            tokio::time::sleep(Duration::from_millis(200 + rng.below(600))).await;
            match self.fault(&mut rng).await {
                Ok(kind) => faults.push(kind),
                Err(err) => failure = Some(format!("{err:#}")),
            }
        }
        for client in clients {
            client.await??;
        }
        let recovered = self.heal().await;
        let check_started = Instant::now();
        let checked = history.check(Duration::from_secs(120));
        let check_time = check_started.elapsed();
        let violation = match (checked.as_ref(), failure, recovered) {
            (Err(violation), _, _) => Some(format!("not linearizable: {violation}")),
            (_, Some(failure), _) => Some(failure),
            (_, _, Err(err)) => Some(format!("{err:#}")),
            _ => None,
        };
        for fault in &faults {
            *self.faults.entry(fault).or_default() += 1;
        }
        Ok(Outcome {
            check_time,
            checked: checked.unwrap_or(history.len()),
            unknown: history.unknown(),
            faults: faults.iter().map(|f| f.to_string()).collect(),
            violation,
        })
    }

    /// Ends every fault, waits for the cluster to converge and compares the replicas' digests.
    /// An error is a failure of the run: a node that crashed, a cluster that did not recover,
    /// replicas that diverged.
    async fn heal(&mut self) -> anyhow::Result<()> {
        if let Some(firewall) = &self.firewall {
            firewall.heal()?;
        }
        if let Some((id, why)) = self.procs.crashed() {
            anyhow::bail!("node {id} exited on its own: {why}");
        }
        for id in self.voters.clone() {
            self.procs.resume(id);
            self.procs.start(id)?;
        }
        let leader = self.wait_leader().await?;
        let voters: Vec<String> = self.voters.iter().map(|id| self.addr(*id)).collect();
        wait_for("every voter to apply the same log", Duration::from_secs(60), || {
            let voters = voters.clone();
            async move {
                let mut seen = BTreeSet::new();
                for addr in &voters {
                    let s = status(addr).await?;
                    (s.applied_index == s.last_log_index).then_some(())?;
                    seen.insert(s.applied_index);
                }
                (seen.len() == 1).then_some(())
            }
        })
        .await?;
        let mut api = self.api(leader)?;
        let check = api.check_digests(pb::CheckDigestsRequest {});
        let check = tokio::time::timeout(ADMIN_TIMEOUT, check)
            .await
            .context("comparing digests: timed out")?
            .map_err(|s| anyhow::anyhow!("comparing digests: {}", s.message()))?
            .into_inner();
        if !check.diverged.is_empty() {
            let digests: Vec<String> = check
                .members
                .iter()
                .map(|m| format!("node {}: {}", m.id, m.digest))
                .collect();
            anyhow::bail!(
                "replicas diverged at index {:?}: nodes {:?} differ ({})",
                check.index,
                check.diverged,
                digests.join(", ")
            );
        }
        Ok(())
    }

    /// Injects one fault, chosen by `rng`, and ends it; its kind.
    async fn fault(&mut self, rng: &mut SplitMix) -> anyhow::Result<&'static str> {
        let leader = self.wait_leader().await?;
        let voters: Vec<u64> = self.voters.iter().copied().collect();
        let pick = |rng: &mut SplitMix| voters[rng.below(voters.len() as u64) as usize];
        // The leader twice as often as a follower.
        let victim = match rng.below(3) {
            0 => pick(rng),
            _ => leader,
        };
        let hold = Duration::from_millis(500 + rng.below(1500));
        let partitions = self.firewall.is_some();
        Ok(match rng.below(12) {
            0..=2 if partitions => {
                self.cut(victim, true)?;
                tokio::time::sleep(hold).await;
                self.firewall.as_ref().map(Firewall::heal).transpose()?;
                PARTITION
            }
            3 if partitions => {
                self.cut(victim, false)?;
                tokio::time::sleep(hold).await;
                self.firewall.as_ref().map(Firewall::heal).transpose()?;
                ONE_WAY
            }
            0..=4 => {
                self.procs.kill(victim);
                tokio::time::sleep(hold).await;
                self.procs.start(victim)?;
                KILL
            }
            5 | 6 => {
                self.procs.pause(victim);
                tokio::time::sleep(hold).await;
                self.procs.resume(victim);
                PAUSE
            }
            7 => {
                let to = voters.iter().copied().find(|v| *v != leader).unwrap_or(leader);
                let mut api = self.api(leader)?;
                let req = api.transfer_leader(pb::TransferLeaderToRequest { to });
                // Refused when leadership moved meanwhile: the fault still happened (or not) the
                // way a real operator's would.
                let _ = tokio::time::timeout(ADMIN_TIMEOUT, req).await;
                TRANSFER
            }
            8 => {
                self.swap_voter(leader, pick(rng)).await?;
                MEMBERSHIP
            }
            9 => {
                let mut api = self.api(victim)?;
                let req = api.snapshot(pb::SnapshotRequest {});
                let _ = tokio::time::timeout(ADMIN_TIMEOUT, req).await;
                SNAPSHOT
            }
            10 => {
                self.cut_snapshot_transfer(leader, rng).await?;
                SNAPSHOT_CUT
            }
            _ => {
                self.deploys += 1;
                let mut deployer = self.deployer(leader)?;
                let upload = Upload {
                    label: format!("chaos-{}", self.deploys),
                    ..Upload::new("kv", self.plugin.clone())
                };
                let deploy = crate::deploy::deploy_bytes(&mut deployer, upload, |_| {});
                let _ = tokio::time::timeout(Duration::from_secs(30), deploy).await;
                DEPLOY
            }
        })
    }

    /// Cuts node `victim` off from every other node: both ways, or only what it sends.
    fn cut(&self, victim: u64, both_ways: bool) -> anyhow::Result<()> {
        let Some(firewall) = &self.firewall else {
            return Ok(());
        };
        for other in (1..=4).filter(|o| *o != victim) {
            firewall.cut(victim, other)?;
            if both_ways {
                firewall.cut(other, victim)?;
            }
        }
        Ok(())
    }

    /// Swaps voter `out` for the spare: the spare starts empty, joins as a learner, and the
    /// membership change makes it a voter in `out`'s place; `out` is then retired (its process
    /// killed, its data deleted) and becomes the spare.
    async fn swap_voter(&mut self, leader: u64, out: u64) -> anyhow::Result<()> {
        let spare = (1..=4).find(|id| !self.voters.contains(id)).context("no spare node")?;
        self.procs.wipe(spare)?;
        self.procs.start(spare)?;
        let spare_addr = self.addr(spare);
        wait_for("the spare to answer", Duration::from_secs(30), || status(&spare_addr)).await?;
        let mut api = self.api(leader)?;
        let add = api.add_learner(pb::AddLearnerRequest {
            id: spare,
            addr: spare_addr.clone(),
            blocking: true,
        });
        let added = tokio::time::timeout(Duration::from_secs(30), add).await;
        if matches!(added, Ok(Ok(_))) {
            let mut voters: Vec<u64> = self.voters.iter().copied().filter(|v| *v != out).collect();
            voters.push(spare);
            let change = api.change_membership(pb::ChangeMembershipRequest { voters, retain: false });
            let _ = tokio::time::timeout(ADMIN_TIMEOUT, change).await;
        }
        // Whatever the calls answered, the membership is what the leader says it is now.
        let (voters, learners) = wait_for("the membership change to settle", Duration::from_secs(30), || async {
            let leader = self.leader().await?;
            let s = status(&self.addr(leader)).await?;
            (!s.joint).then_some(())?;
            let voters: BTreeSet<u64> = s.nodes.iter().filter(|n| n.voter).map(|n| n.id).collect();
            let learners: Vec<u64> = s.nodes.iter().filter(|n| !n.voter).map(|n| n.id).collect();
            Some((voters, learners))
        })
        .await?;
        anyhow::ensure!(voters.len() == 3, "the cluster has voters {voters:?}, not 3");
        if let Some(learner) = learners.first() {
            let leader = self.wait_leader().await?;
            let mut api = self.api(leader)?;
            let remove = api.remove_learner(pb::RemoveLearnerRequest { id: *learner });
            tokio::time::timeout(ADMIN_TIMEOUT, remove)
                .await
                .context("removing a learner: timed out")?
                .map_err(|s| anyhow::anyhow!("removing learner {learner}: {}", s.message()))?;
        }
        self.voters = voters;
        let retired = (1..=4).find(|id| !self.voters.contains(id)).context("no spare node")?;
        self.procs.wipe(retired)?;
        Ok(())
    }

    /// Kills a follower, has the leader snapshot and purge its log, restarts the follower (which
    /// now needs the snapshot) and cuts it off a moment later, mid-transfer when the timing
    /// falls so, then heals.
    async fn cut_snapshot_transfer(&mut self, leader: u64, rng: &mut SplitMix) -> anyhow::Result<()> {
        let Some(follower) = self.voters.iter().copied().find(|v| *v != leader) else {
            return Ok(());
        };
        self.procs.kill(follower);
        // Past the log tail the leader keeps below a snapshot (`keep_logs`), so the follower
        // needs the snapshot to catch up.
        let mut api = self.api(leader)?;
        for n in 0..CUT_FILLER_WRITES {
            let put = format!(r#"{{"op":"put","key":"cut-filler-{n}","value":"{n}"}}"#);
            let req = pb::CallRequest {
                plugin: "kv".into(),
                payload: put.into_bytes(),
                session: None,
            };
            if tokio::time::timeout(ADMIN_TIMEOUT, api.call(req)).await.is_err() {
                break;
            }
        }
        let snapshot = api.snapshot(pb::SnapshotRequest {});
        let _ = tokio::time::timeout(ADMIN_TIMEOUT, snapshot).await;
        self.procs.start(follower)?;
        // The process starts in about 0.3 s, then the transfer takes about 0.5 s at the send cap.
        tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
        self.cut(follower, true)?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        if let Some(firewall) = &self.firewall {
            firewall.heal()?;
        }
        let addr = self.addr(follower);
        let installed = wait_for(
            "the follower to install a snapshot",
            Duration::from_secs(10),
            || async {
                let snapshot = status(&addr).await?.snapshot?;
                (snapshot.installed > 0).then_some(snapshot)
            },
        )
        .await;
        if let Ok(snapshot) = installed {
            *self.seen.entry("snapshots installed after a restart").or_default() += 1;
            if snapshot.resumed > 0 {
                *self.seen.entry("snapshot transfers resumed after a cut").or_default() += 1;
            }
        }
        Ok(())
    }
}
