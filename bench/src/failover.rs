//! `clustd-bench failover`: real processes, real failures, measured to the start script.
//!
//! Starts N `clustd` daemons (child processes on loopback, temp dirs), each with a real
//! `clustd-shell-driver` whose start/stop scripts append a timestamped line to a log. Then,
//! round after round, it fails the master (SIGKILL, SIGTERM, SIGSTOP, step-down, a partition
//! or a failing health check), waits for
//! the new master's `start`, brings the old node back and waits for the cluster to settle.
//! The start scripts' log lines time the failover. Whether two masters ever overlapped is
//! decided by the one strict checker, [`clustd_core::check::ServiceChecker`], fed with the
//! daemons' own service records ([`service_log`](crate::service_log)) and the bench's SIGKILLs: a master's
//! interval ends at a confirmed stop or at its drivers' lease end plus the stop budget,
//! never at a stop script's log line.
//!
//! In `partition` mode every peer link goes through the in-process [`proxy`](crate::proxy), which cuts the
//! master off from its peers (its drivers stay connected to it) and heals it afterwards.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clustd::Settings;
use clustd::admin::Client;
use clustd::clock::machine_monotonic_ns;
use clustd::config::write::NodeToml;
use clustd::local::free_port;
use clustd::runtime::SERVICE_LOG_TARGET;
use clustd::status::{ElectionStep, ElectionStepKind, Status};
use clustd_core::NodeId;
use clustd_transport::TransportKind;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::proxy::Network;
use crate::service_log::ServiceLog;
use crate::{BenchError, percentile};

/// How the master is failed in each round (also `clustd-bench failover --mode`, whose help
/// is these lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// SIGKILL the master daemon (its driver is left running: the fail-safe lease must stop
    /// the service).
    Kill,
    /// SIGTERM the master daemon (graceful step-down).
    Term,
    /// SIGSTOP the master daemon (hung process: no heartbeats, sockets open), SIGCONT after
    /// the failover.
    Freeze,
    /// POST /step-down to the master.
    StepDown,
    /// Cut every network link to and from the master (an in-process fault proxy between the
    /// daemons; its local drivers stay connected), heal it after the failover.
    Partition,
    /// Make the master unhealthy: every node gets an exec `[[check]]`, `test -f DIR/node-N.ok`
    /// (--check-interval-ms, --check-fall, rise 2) and health.min_master_ms = 0, so rounds
    /// are not paced; the master's file is removed, and put back after the failover (the
    /// next round waits until the old master is eligible again). Measured from the removal.
    Unhealthy,
}

/// The health check of an `unhealthy` run: `test -f DIR/node-N.ok` on every node, with
/// `health.min_master_ms = 0` so that the rounds are not paced by the hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HealthProfile {
    /// `check.interval_ms` (also its `timeout_ms`).
    pub interval_ms: u64,
    /// `check.fall`: failed runs in a row that make the node unhealthy.
    pub fall: u32,
    /// `check.rise`: passed runs in a row that make it healthy again.
    pub rise: u32,
}

impl HealthProfile {
    /// The bench's default for a heartbeat: an interval of 10 heartbeats (1000 ms at the
    /// defaults, 200 ms at the fast profile's 20 ms), fall 3, rise 2.
    pub fn for_heartbeat(heartbeat_ms: u64) -> Self {
        Self {
            interval_ms: heartbeat_ms.saturating_mul(10).max(1),
            fall: 3,
            rise: 2,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of daemons.
    pub nodes: usize,
    /// Failover rounds per transport.
    pub rounds: usize,
    /// Transports to measure, one after the other.
    pub transports: Vec<TransportKind>,
    /// `election.heartbeat_ms`.
    pub heartbeat_ms: u64,
    /// `election.election_timeout_ms`.
    pub election_timeout_ms: [u64; 2],
    /// `election.stop_budget_ms` (None: the daemon's default).
    pub stop_budget_ms: Option<u64>,
    /// `election.driver_lease_margin_ms` (None: the daemon's default).
    pub driver_lease_margin_ms: Option<u64>,
    /// How the master is failed.
    pub mode: Mode,
    /// The check of [`Mode::Unhealthy`] (ignored by the other modes).
    pub health: HealthProfile,
    /// Path of the `clustd` binary to run.
    pub clustd_bin: PathBuf,
    /// Path of the `clustd-shell-driver` binary to run.
    pub driver_bin: PathBuf,
    /// Seconds to sample idle CPU, memory and wakeups after the rounds, on a fresh cluster
    /// at the production log level (0: skip; with `rounds` 0, only that).
    pub idle_secs: u64,
    /// Print a progress bar on stderr.
    pub progress: bool,
    /// Keep the work directory (logs, configs) instead of deleting it.
    pub keep: bool,
}

/// One failover round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// The master that was failed.
    pub old_master: String,
    /// The node whose `start` ran next.
    pub new_master: String,
    /// Failure to the new master's `start` script, ms.
    pub failover_ms: f64,
    /// Failure to the first campaign (a pre-vote quorum, or a hand-over's) on any node, ms.
    pub detect_ms: Option<f64>,
    /// Failure to the new master's mastership (its first majority-acknowledged round), ms.
    pub elected_ms: Option<f64>,
    /// Campaigns started across the cluster in this round (more than 1: a split or retry).
    pub elections: usize,
    /// Where the time went: the new master's election, step by step.
    pub breakdown: Breakdown,
}

/// From the failure to each step of the new master's election, ms, as its daemon recorded
/// them in its status ([`clustd::status::Status::elections`], on the machine's
/// `CLOCK_MONOTONIC`); `None`: not recorded (a hand-over fires no timer).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Breakdown {
    /// Its election timer fired: it asked for pre-votes.
    pub timer_fired_ms: Option<f64>,
    /// A majority granted the pre-vote (or a hand-over said "campaign now").
    pub pre_vote_quorum_ms: Option<f64>,
    /// Its new term and own vote were written and fsynced.
    pub persisted_ms: Option<f64>,
    /// A majority voted for it.
    pub vote_quorum_ms: Option<f64>,
    /// A majority acknowledged its first heartbeat round: master.
    pub master_ms: Option<f64>,
    /// Its first driver was sent "master".
    pub drivers_told_ms: Option<f64>,
}

/// The rows of the breakdown, in election order, as [`render`] prints them; the start
/// script (the round's `failover_ms`) follows them.
const STAGES: [(&str, ElectionStepKind); 6] = [
    ("election timer fired", ElectionStepKind::TimerFired),
    ("pre-vote quorum", ElectionStepKind::Campaign),
    ("term+vote persisted", ElectionStepKind::Persisted),
    ("vote quorum", ElectionStepKind::VoteQuorum),
    ("master (lease)", ElectionStepKind::Master),
    ("drivers told", ElectionStepKind::DriversTold),
];

impl Breakdown {
    /// The time of `step`.
    fn get(&self, step: ElectionStepKind) -> Option<f64> {
        match step {
            ElectionStepKind::TimerFired => self.timer_fired_ms,
            ElectionStepKind::Campaign => self.pre_vote_quorum_ms,
            ElectionStepKind::Persisted => self.persisted_ms,
            ElectionStepKind::VoteQuorum => self.vote_quorum_ms,
            ElectionStepKind::Master => self.master_ms,
            ElectionStepKind::DriversTold => self.drivers_told_ms,
            _ => None,
        }
    }

    /// The breakdown of the election of `term` from the winner's `steps`, relative to the
    /// failure at `failed` (`CLOCK_MONOTONIC`, ns).
    fn of(steps: &[ElectionStep], term: u64, failed: u64) -> Self {
        let since = |s: &ElectionStep| (s.at_mono_ns as f64 - failed as f64) / 1e6;
        let first = |kind: ElectionStepKind| {
            steps
                .iter()
                .find(|s| s.term == term && s.step == kind && s.at_mono_ns >= failed)
        };
        let campaign = first(ElectionStepKind::Campaign);
        // A pre-vote may fail and the timer fire again: the one that led to the campaign.
        let timer = steps.iter().rev().find(|s| {
            s.term == term
                && s.step == ElectionStepKind::TimerFired
                && s.at_mono_ns >= failed
                && campaign.is_none_or(|c| s.at_mono_ns <= c.at_mono_ns)
        });
        Self {
            timer_fired_ms: timer.map(since),
            pre_vote_quorum_ms: campaign.map(since),
            persisted_ms: first(ElectionStepKind::Persisted).map(since),
            vote_quorum_ms: first(ElectionStepKind::VoteQuorum).map(since),
            master_ms: first(ElectionStepKind::Master).map(since),
            drivers_told_ms: first(ElectionStepKind::DriversTold).map(since),
        }
    }
}

/// Results for one transport.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `quic` or `websocket`.
    pub transport: String,
    /// Failure mode.
    pub mode: Mode,
    /// Number of daemons.
    pub nodes: usize,
    /// Minimum election timeout, ms.
    pub et_min_ms: u64,
    /// Heartbeat, ms.
    pub heartbeat_ms: u64,
    /// The check that failed the master ([`Mode::Unhealthy`] only).
    pub health: Option<HealthProfile>,
    /// Rounds that failed over.
    pub rounds: Vec<Round>,
    /// Rounds with no new master in time.
    pub failed_rounds: usize,
    /// Violations found by the strict service checker in the daemons' service records,
    /// in its words: overlapping masters, unreadable records, or no master seen at all
    /// (must be empty).
    pub overlaps: Vec<String>,
    /// Service intervals the checker saw (every master's, start to surely stopped).
    pub service_intervals: usize,
    /// Failed or timed-out stops the daemons reported (they end no interval).
    pub failed_stops: u64,
    /// Idle CPU of one daemon, percent of one core (highest of the nodes).
    pub idle_cpu_percent: Option<f64>,
    /// Resident memory of one daemon, MiB (highest of the nodes).
    pub idle_rss_mib: Option<f64>,
    /// The master's daemon while idle.
    pub idle_leader: Option<IdleSample>,
    /// The busiest follower's daemon while idle (by CPU).
    pub idle_follower: Option<IdleSample>,
    /// Over the idle sample: elections started (all nodes) and times the master lost its
    /// lease or mastership: none should happen in a healthy idle cluster.
    pub idle_disruptions: Option<IdleDisruptions>,
    /// Length of the idle sample, s.
    pub idle_secs: u64,
}

/// What happened in an idle cluster that should not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct IdleDisruptions {
    /// Elections started across the cluster (spurious: no node failed).
    pub elections: u64,
    /// Leader changes seen across the cluster (a node counts each change it saw).
    pub leader_changes: u64,
    /// Times a master lost its lease without losing leadership (acknowledgements came too
    /// late: its drivers were told "backup", then "master" again once a round came back), from
    /// the status history, which keeps the last 32 role changes a node.
    pub lease_losses: u64,
}

/// One daemon over the idle sample.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct IdleSample {
    /// CPU, percent of one core.
    pub cpu_percent: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
    /// Of that, its own (anonymous: heap, stacks), MiB; the rest is the executable's and
    /// libraries' pages, shared with every process that maps them and dropped under memory
    /// pressure.
    pub anon_mib: f64,
    /// Context switches per second, all threads (voluntary and not): its wakeups.
    pub wakeups_per_sec: f64,
}

struct NodeProc {
    id: String,
    config: PathBuf,
    admin: Client,
    daemon: Option<Child>,
    driver: Child,
    daemon_log: PathBuf,
    /// The file its health check tests ([`Mode::Unhealthy`]).
    health_file: Option<PathBuf>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs the benchmark for every transport in `opts`.
pub async fn run(opts: &Options) -> Result<Vec<Report>, BenchError> {
    let mut reports = Vec::new();
    for &transport in &opts.transports {
        if opts.rounds == 0 {
            // Idle only: one cluster at the production log level.
            reports.push(run_one(opts, transport).await?);
            continue;
        }
        let rounds = Options {
            idle_secs: 0,
            ..opts.clone()
        };
        let mut report = run_one(&rounds, transport).await?;
        if opts.idle_secs > 0 {
            // The rounds' daemons log every lease renewal (at debug, for the checker): the
            // idle cost is measured on a fresh cluster at the production log level instead.
            let idle = Options {
                rounds: 0,
                ..opts.clone()
            };
            let quiet = run_one(&idle, transport).await?;
            report.idle_cpu_percent = quiet.idle_cpu_percent;
            report.idle_rss_mib = quiet.idle_rss_mib;
            report.idle_leader = quiet.idle_leader;
            report.idle_follower = quiet.idle_follower;
            report.idle_disruptions = quiet.idle_disruptions;
            report.idle_secs = quiet.idle_secs;
        }
        reports.push(report);
    }
    Ok(reports)
}

async fn run_one(opts: &Options, transport: TransportKind) -> Result<Report, BenchError> {
    let dir = tempfile::Builder::new().prefix("clustd-bench-").tempdir()?;
    let work = dir.path().to_path_buf();
    let names: Vec<String> = (1..=opts.nodes).map(|i| format!("node-{i}")).collect();
    let public_keys = clustd::local::write_credentials(&work, &names)?.keys;
    let ports: Vec<u16> = names
        .iter()
        .map(|_| free_port())
        .collect::<Result<_, _>>()?;
    let script_log = work.join("service.log");
    let network = match opts.mode {
        Mode::Partition => Some(Network::new(transport, &ports).await?),
        _ => None,
    };

    let mut nodes = Vec::new();
    // The checker's stop budget per node: what the daemon itself loads from its config.
    let mut stop_budgets: BTreeMap<NodeId, Duration> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let admin = Client::socket(
            work.join(format!("data-{name}"))
                .join(clustd::config::ADMIN_SOCKET_FILE),
        );
        let mut config = NodeToml::new(
            name,
            transport,
            SocketAddr::from(([127, 0, 0, 1], ports[i])),
        )
        .data_dir(format!("data-{name}"))
        .key_file(format!("{name}.key"))
        .secret_file("secret")
        .driver_secret_file("driver-secret");
        for (j, n) in names.iter().enumerate().filter(|(j, _)| *j != i) {
            let addr = network
                .as_ref()
                .and_then(|net| net.addr(i, j))
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], ports[j])));
            config = config.peer(n, addr, &public_keys[j]);
        }
        config = config
            .heartbeat_ms(opts.heartbeat_ms)
            .election_timeout_ms(opts.election_timeout_ms);
        if let Some(ms) = opts.stop_budget_ms {
            config = config.stop_budget_ms(ms);
        }
        if let Some(ms) = opts.driver_lease_margin_ms {
            config = config.driver_lease_margin_ms(ms);
        }
        let health_file = (opts.mode == Mode::Unhealthy).then(|| work.join(format!("{name}.ok")));
        let health = match &health_file {
            Some(file) => {
                std::fs::write(file, "")?;
                let HealthProfile {
                    interval_ms,
                    fall,
                    rise,
                } = opts.health;
                format!(
                    "\n[[check]]\nname = \"file\"\nexec = \"test -f {}\"\ninterval_ms = {interval_ms}\ntimeout_ms = {interval_ms}\nfall = {fall}\nrise = {rise}\n\n[health]\nmin_master_ms = 0\n",
                    toml_escape(&shell_quote(&file.display().to_string()))
                )
            }
            None => String::new(),
        };
        let config = config.then_toml(&health).to_toml();
        let config_path = work.join(format!("{name}.toml"));
        std::fs::write(&config_path, config)?;
        let (settings, _) = Settings::load(&config_path)?;
        stop_budgets.insert(settings.id, settings.core.stop_budget);
        // $EPOCHREALTIME (bash 5) needs no fork: the timestamp is taken inside the script.
        let line = |what: &str| {
            format!(
                "printf '%s {what} %s %s\\n' \"$EPOCHREALTIME\" \"$CLUSTD_NODE_ID\" \"$CLUSTD_TERM\" >> '{}'",
                script_log.display()
            )
        };
        let driver_config = format!(
            "daemon = \"127.0.0.1:{}\"\ndaemon_key = \"{}\"\ntransport = \"{}\"\nsecret_file = \"driver-secret\"\ndriver_id = \"shell-{name}\"\nstartup_wait_ms = 60000\n\n[script]\nshell = \"/bin/bash\"\nstart = \"{}\"\nstop = \"{}\"\ntimeout_ms = 10000\n",
            ports[i],
            public_keys[i],
            transport.as_str(),
            toml_escape(&line("start")),
            toml_escape(&line("stop")),
        );
        let driver_path = work.join(format!("driver-{name}.toml"));
        std::fs::write(&driver_path, driver_config)?;
        let daemon_log = work.join(format!("{name}.log"));
        let daemon = spawn_daemon(opts, &config_path, &daemon_log)?;
        let driver = Command::new(&opts.driver_bin)
            .arg("--config")
            .arg(&driver_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(append(&work.join(format!("driver-{name}.log")))?)
            .kill_on_drop(true)
            .spawn()?;
        nodes.push(NodeProc {
            id: name.clone(),
            config: config_path,
            admin,
            daemon: Some(daemon),
            driver,
            daemon_log,
            health_file,
        });
    }

    let et_min = opts.election_timeout_ms[0];
    let settle = Duration::from_millis((opts.election_timeout_ms[1] * 10).max(20_000));
    let mut report = Report {
        transport: transport.as_str().into(),
        mode: opts.mode,
        nodes: opts.nodes,
        et_min_ms: et_min,
        heartbeat_ms: opts.heartbeat_ms,
        health: (opts.mode == Mode::Unhealthy).then_some(opts.health),
        rounds: Vec::new(),
        failed_rounds: 0,
        overlaps: Vec::new(),
        service_intervals: 0,
        failed_stops: 0,
        idle_cpu_percent: None,
        idle_rss_mib: None,
        idle_leader: None,
        idle_follower: None,
        idle_disruptions: None,
        idle_secs: 0,
    };
    let mut service = ServiceLog::new();
    let result = async {
        for round in 0..opts.rounds {
            let master = wait_stable(&nodes, &script_log, settle).await?;
            let index = nodes.iter().position(|n| n.id == master).unwrap_or(0);
            // The script log is on the wall clock, the daemons' steps on CLOCK_MONOTONIC:
            // the failure is read on both, back to back.
            let failed_at = unix_now();
            let failed_mono = machine_monotonic_ns();
            if let Some(at) = fail(&mut nodes[index], opts.mode, index, network.as_ref()).await? {
                service.crashed(at, node_id(&master)?);
            }
            let new_start = wait_new_start(&script_log, failed_at, settle).await;
            match new_start {
                Some(start) => {
                    let failover_ms = (start.at - failed_at) * 1000.0;
                    // The failed node is left out: a frozen daemon does not answer.
                    let others: Vec<&NodeProc> = nodes
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != index)
                        .map(|(_, n)| n)
                        .collect();
                    let steps = election_steps(&others).await;
                    let winner: &[ElectionStep] = steps
                        .iter()
                        .find(|(id, _)| *id == start.node)
                        .map_or(&[], |(_, s)| s);
                    let breakdown = Breakdown::of(winner, start.term, failed_mono);
                    let since = |s: &ElectionStep| (s.at_mono_ns as f64 - failed_mono as f64) / 1e6;
                    let campaigns: Vec<f64> = steps
                        .iter()
                        .flat_map(|(_, s)| s)
                        .filter(|s| {
                            s.step == ElectionStepKind::Campaign && s.at_mono_ns >= failed_mono
                        })
                        .map(since)
                        .filter(|ms| *ms <= failover_ms)
                        .collect();
                    report.rounds.push(Round {
                        old_master: master.clone(),
                        new_master: start.node,
                        failover_ms,
                        detect_ms: campaigns.iter().copied().reduce(f64::min),
                        elected_ms: breakdown.master_ms,
                        elections: campaigns.len(),
                        breakdown,
                    });
                }
                None => report.failed_rounds += 1,
            }
            recover(opts, &mut nodes[index], network.as_ref()).await?;
            if opts.progress {
                let done = round + 1;
                let width = 30;
                let filled = done * width / opts.rounds.max(1);
                let last = report
                    .rounds
                    .last()
                    .map_or("-".to_string(), |r| format!("{:.0} ms", r.failover_ms));
                eprint!(
                    "\r  {} [{}{}] round {done}/{}  last failover {last}   ",
                    transport.as_str(),
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    opts.rounds
                );
            }
        }
        if opts.progress {
            eprintln!();
        }
        wait_stable(&nodes, &script_log, settle).await?;
        if opts.idle_secs > 0 {
            let idle = sample_idle(&nodes, opts.idle_secs).await;
            report.idle_cpu_percent = idle.cpu;
            report.idle_rss_mib = idle.rss;
            report.idle_leader = idle.leader;
            report.idle_follower = idle.follower;
            report.idle_disruptions = idle.disruptions;
            report.idle_secs = opts.idle_secs;
        }
        Ok::<(), BenchError>(())
    }
    .await;
    for node in &mut nodes {
        if let Some(d) = node.daemon.as_mut() {
            let _ = d.start_kill();
            let _ = d.wait().await;
            // Its drivers are SIGKILLed next, but the checker must not assume so.
            if let Ok(id) = node_id(&node.id) {
                service.crashed(mono_now(), id);
            }
        }
        let _ = node.driver.start_kill();
        let _ = node.driver.wait().await;
    }
    // Without rounds the daemons logged no lease renewals (see `spawn_daemon`): there is
    // nothing the checker could prove, so it does not run.
    if opts.rounds > 0 {
        for node in &nodes {
            let text = std::fs::read_to_string(&node.daemon_log).unwrap_or_default();
            service.add_log(&node.daemon_log.display().to_string(), &text);
        }
        let checker = service.check(&stop_budgets);
        report.overlaps = checker.violations().iter().map(|v| v.0.clone()).collect();
        report.service_intervals = checker.intervals().len();
        report.failed_stops = checker.failed_stops();
    }
    if opts.keep {
        let kept = dir.keep();
        eprintln!("  logs and configs kept in {}", kept.display());
    }
    result?;
    Ok(report)
}

/// `s` in single quotes for `/bin/sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn spawn_daemon(opts: &Options, config: &Path, log: &Path) -> std::io::Result<Child> {
    // Lease renewals are logged at debug; the checker needs every one of them. A cluster
    // without rounds only measures the idle cost: it logs as in production (info).
    // `CLUSTD_BENCH_LOG` adds directives (e.g. `clustd::runtime=debug`) to look closer.
    let base = if opts.rounds == 0 {
        "info".to_string()
    } else {
        format!("info,{SERVICE_LOG_TARGET}=debug")
    };
    Command::new(&opts.clustd_bin)
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            match std::env::var("CLUSTD_BENCH_LOG") {
                Ok(extra) if !extra.is_empty() => format!("{base},{extra}"),
                _ => base,
            },
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(append(log)?)
        .kill_on_drop(true)
        .spawn()
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) -> std::io::Result<()> {
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("process already gone"))?;
    let pid = i32::try_from(pid).map_err(std::io::Error::other)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(std::io::Error::other)
}

fn node_id(id: &str) -> Result<NodeId, BenchError> {
    NodeId::new(id).map_err(|e| BenchError::Stuck(format!("node id {id:?}: {e}")))
}

/// `CLOCK_MONOTONIC` now: the time base of the daemons' service records.
fn mono_now() -> Duration {
    Duration::from_nanos(machine_monotonic_ns())
}

/// Fails `node` (number `index`) as `mode` says; `network` is the proxy of a partition run.
/// Returns when the daemon was SIGKILLed (on `CLOCK_MONOTONIC`, read once it was gone).
async fn fail(
    node: &mut NodeProc,
    mode: Mode,
    index: usize,
    network: Option<&Network>,
) -> Result<Option<Duration>, BenchError> {
    use nix::sys::signal::Signal;
    let Some(daemon) = node.daemon.as_mut() else {
        return Err(BenchError::Stuck(format!("{} is not running", node.id)));
    };
    match mode {
        Mode::Kill => {
            daemon.start_kill()?;
            let _ = daemon.wait().await;
            node.daemon = None;
            return Ok(Some(mono_now()));
        }
        Mode::Term => signal(daemon, Signal::SIGTERM)?,
        Mode::Freeze => signal(daemon, Signal::SIGSTOP)?,
        Mode::StepDown => {
            node.admin
                .clone()
                .post("/step-down")
                .await
                .map_err(|e| BenchError::Stuck(e.to_string()))?;
        }
        Mode::Partition => network
            .ok_or_else(|| BenchError::Stuck("partition mode without a fault proxy".into()))?
            .isolate(index),
        Mode::Unhealthy => std::fs::remove_file(health_file(node)?)?,
    }
    Ok(None)
}

fn health_file(node: &NodeProc) -> Result<&Path, BenchError> {
    node.health_file
        .as_deref()
        .ok_or_else(|| BenchError::Stuck(format!("{} has no health check file", node.id)))
}

async fn recover(
    opts: &Options,
    node: &mut NodeProc,
    network: Option<&Network>,
) -> Result<(), BenchError> {
    match opts.mode {
        Mode::Kill => {
            node.daemon = Some(spawn_daemon(opts, &node.config, &node.daemon_log)?);
        }
        Mode::Term => {
            if let Some(mut d) = node.daemon.take() {
                let exited = tokio::time::timeout(Duration::from_secs(30), d.wait()).await;
                if exited.is_err() {
                    let _ = d.start_kill();
                    return Err(BenchError::Stuck(format!(
                        "{} did not exit after SIGTERM",
                        node.id
                    )));
                }
            }
            node.daemon = Some(spawn_daemon(opts, &node.config, &node.daemon_log)?);
        }
        Mode::Freeze => {
            if let Some(d) = node.daemon.as_ref() {
                signal(d, nix::sys::signal::Signal::SIGCONT)?;
            }
        }
        Mode::StepDown => {}
        Mode::Partition => {
            if let Some(network) = network {
                network.recover();
            }
        }
        Mode::Unhealthy => {
            std::fs::write(health_file(node)?, "")?;
            // Healthy again (rise passes) before the next round, so that every round has
            // two healthy successors to choose from.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let metrics = node.admin.clone().metrics().await.unwrap_or_default();
                if metrics.lines().any(|l| l.trim() == "clustd_eligible 1") {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(BenchError::Stuck(format!(
                        "{} was not eligible again 60 s after its check file came back",
                        node.id
                    )));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    Ok(())
}

/// Waits until every daemon answers, exactly one is master, all agree on it, all peers
/// are connected, and the master's `start` is the latest line for it in the service log.
async fn wait_stable(
    nodes: &[NodeProc],
    script_log: &Path,
    timeout: Duration,
) -> Result<String, BenchError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stable_since: Option<(tokio::time::Instant, String)> = None;
    loop {
        let mut statuses = Vec::new();
        for n in nodes {
            let status = match n.admin.clone().status_json().await {
                Ok(body) => serde_json::from_str::<Status>(&body).ok(),
                Err(_) => None,
            };
            statuses.push(status);
        }
        let master = stable_master(&statuses, script_log);
        match (&stable_since, master) {
            (Some((since, id)), Some(m)) if *id == m => {
                // Stable for a few heartbeats: the cluster has settled.
                if since.elapsed() >= Duration::from_millis(300) {
                    return Ok(m);
                }
            }
            (_, Some(m)) => stable_since = Some((tokio::time::Instant::now(), m)),
            (_, None) => stable_since = None,
        }
        if tokio::time::Instant::now() >= deadline {
            // A node that does not answer: the end of its log says why.
            let mut silent = String::new();
            for (n, _) in nodes.iter().zip(&statuses).filter(|(_, s)| s.is_none()) {
                let text = std::fs::read_to_string(&n.daemon_log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(5)..].join("\n");
                silent.push_str(&format!(
                    "{} does not answer; the end of its log:\n{tail}\n",
                    n.id
                ));
            }
            // One line a node that answers: what keeps it from a settled cluster.
            let mut answering = String::new();
            for s in statuses.iter().flatten() {
                let changes = s.history.len();
                let last = s.history.back().map_or("none".to_string(), |c| {
                    format!("{} in term {} ({})", c.role, c.term, c.reason)
                });
                answering.push_str(&format!(
                    "  {}: {} in term {}, leader {}, {}; {changes} recent role changes, the last {last}\n",
                    s.node_id,
                    s.role,
                    s.term,
                    s.leader.as_deref().unwrap_or("none"),
                    s.ineligible_reason.as_deref().unwrap_or("eligible"),
                ));
            }
            return Err(BenchError::Stuck(format!(
                "the cluster did not settle within {} (--keep keeps the logs):\n{silent}{answering}",
                clustd::status::human_duration(timeout)
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn stable_master(statuses: &[Option<Status>], script_log: &Path) -> Option<String> {
    let all: Vec<&Status> = statuses.iter().flatten().collect();
    if all.len() != statuses.len() {
        return None;
    }
    let masters: Vec<&&Status> = all.iter().filter(|s| s.role == "master").collect();
    let [master] = masters[..] else {
        return None;
    };
    let agreed = all
        .iter()
        .all(|s| s.leader.as_deref() == Some(master.node_id.as_str()));
    let connected = all.iter().all(|s| s.peers.iter().all(|p| p.connected));
    let drivers = all
        .iter()
        .all(|s| s.drivers.iter().any(|d| d.connected && d.acknowledged));
    let log = std::fs::read_to_string(script_log).unwrap_or_default();
    let started = service_lines(&log)
        .iter()
        .rev()
        .find(|l| l.node == master.node_id)
        .is_some_and(|l| l.action == "start" && l.term == master.term);
    (agreed && connected && drivers && started).then(|| master.node_id.clone())
}

#[derive(Debug, Clone)]
struct ServiceLine {
    at: f64,
    action: String,
    node: String,
    term: u64,
}

fn service_lines(log: &str) -> Vec<ServiceLine> {
    log.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let at = parts.next()?.parse().ok()?;
            let action = parts.next()?.to_string();
            let node = parts.next()?.to_string();
            let term = parts.next()?.parse().ok()?;
            Some(ServiceLine {
                at,
                action,
                node,
                term,
            })
        })
        .collect()
}

/// The first `start` after the failure: the new master's service is up.
async fn wait_new_start(script_log: &Path, after: f64, timeout: Duration) -> Option<ServiceLine> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(script_log).unwrap_or_default();
        if let Some(line) = service_lines(&log)
            .into_iter()
            .find(|l| l.action == "start" && l.at > after)
        {
            return Some(line);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Each node's recent election steps, from its status (`GET /status`); a node that does
/// not answer within a second is left out.
async fn election_steps(nodes: &[&NodeProc]) -> Vec<(String, Vec<ElectionStep>)> {
    let mut steps = Vec::new();
    for n in nodes {
        let admin = n.admin.clone();
        let status = tokio::time::timeout(Duration::from_secs(1), admin.status_json());
        if let Ok(Ok(body)) = status.await
            && let Ok(status) = serde_json::from_str::<Status>(&body)
        {
            steps.push((n.id.clone(), status.elections.into_iter().collect()));
        }
    }
    steps
}

fn proc_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn proc_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `RssAnon:`).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Context switches so far, summed over every thread of `pid`.
fn proc_switches(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(total)
}

/// What [`sample_idle`] measured.
struct Idle {
    cpu: Option<f64>,
    rss: Option<f64>,
    leader: Option<IdleSample>,
    follower: Option<IdleSample>,
    disruptions: Option<IdleDisruptions>,
}

/// "lease-expired" role changes in the nodes' status histories after `since_ms` (Unix ms).
async fn lease_losses_since(nodes: &[NodeProc], since_ms: f64) -> u64 {
    let mut n = 0;
    for node in nodes {
        let Ok(body) = node.admin.clone().status_json().await else {
            continue;
        };
        let Ok(status) = serde_json::from_str::<Status>(&body) else {
            continue;
        };
        n += status
            .history
            .iter()
            .filter(|c| c.reason == "lease-expired" && c.at_unix_ms as f64 >= since_ms)
            .count() as u64;
    }
    n
}

/// Elections started and leader changes, summed over the nodes that answer.
async fn election_counters(nodes: &[NodeProc]) -> Option<IdleDisruptions> {
    let mut sum = IdleDisruptions::default();
    for n in nodes {
        let body = n.admin.clone().status_json().await.ok()?;
        let status = serde_json::from_str::<Status>(&body).ok()?;
        sum.elections += status.elections_started;
        sum.leader_changes += status.leader_changes;
    }
    Some(sum)
}

async fn sample_idle(nodes: &[NodeProc], secs: u64) -> Idle {
    let pids: Vec<Option<u32>> = nodes
        .iter()
        .map(|n| n.daemon.as_ref().and_then(Child::id))
        .collect();
    let before: Vec<Option<(u64, u64)>> = pids
        .iter()
        .map(|p| Some((proc_ticks((*p)?)?, proc_switches((*p)?)?)))
        .collect();
    let counters = election_counters(nodes).await;
    let started_ms = unix_now() * 1000.0;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let disruptions = match (counters, election_counters(nodes).await) {
        (Some(a), Some(b)) => Some(IdleDisruptions {
            elections: b.elections.saturating_sub(a.elections),
            leader_changes: b.leader_changes.saturating_sub(a.leader_changes),
            lease_losses: lease_losses_since(nodes, started_ms).await,
        }),
        _ => None,
    };
    let mut samples = Vec::new();
    for ((node, pid), before) in nodes.iter().zip(&pids).zip(before) {
        let (Some(pid), Some((ticks, switches))) = (pid, before) else {
            continue;
        };
        let (Some(ticks_now), Some(switches_now), Some(rss)) =
            (proc_ticks(*pid), proc_switches(*pid), proc_rss_kib(*pid))
        else {
            continue;
        };
        let master = match node.admin.status_json().await {
            Ok(body) => serde_json::from_str::<Status>(&body).is_ok_and(|s| s.role == "master"),
            Err(_) => false,
        };
        // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
        let sample = IdleSample {
            cpu_percent: (ticks_now - ticks) as f64 / 100.0 / secs as f64 * 100.0,
            rss_mib: rss as f64 / 1024.0,
            anon_mib: proc_status_kib(*pid, "RssAnon:").unwrap_or(0) as f64 / 1024.0,
            wakeups_per_sec: (switches_now - switches) as f64 / secs as f64,
        };
        samples.push((master, sample));
    }
    let max = |f: fn(&IdleSample) -> f64| samples.iter().map(|(_, s)| f(s)).reduce(f64::max);
    Idle {
        disruptions,
        cpu: max(|s| s.cpu_percent),
        rss: max(|s| s.rss_mib),
        leader: samples.iter().find(|(m, _)| *m).map(|(_, s)| *s),
        follower: samples
            .iter()
            .filter(|(m, _)| !*m)
            .map(|(_, s)| *s)
            .max_by(|a, b| a.cpu_percent.total_cmp(&b.cpu_percent)),
    }
}

/// The human-readable table.
pub fn render(reports: &[Report]) -> String {
    let mut out = String::new();
    for r in reports {
        let mut failover: Vec<f64> = r.rounds.iter().map(|x| x.failover_ms).collect();
        failover.sort_by(f64::total_cmp);
        let splits = r.rounds.iter().filter(|x| x.elections > 1).count();
        let et = r.et_min_ms as f64;
        let _ = writeln!(
            out,
            "\n{} — mode {:?}, {} nodes, heartbeat {} ms, ET_min {} ms, {} rounds ({} without failover)",
            r.transport,
            r.mode,
            r.nodes,
            r.heartbeat_ms,
            r.et_min_ms,
            r.rounds.len(),
            r.failed_rounds
        );
        if let Some(h) = r.health {
            let _ = writeln!(
                out,
                "  failure: the master's exec check fails (interval {} ms, fall {}, rise {}); health.min_master_ms = 0: rounds are not paced",
                h.interval_ms, h.fall, h.rise
            );
        }
        let _ = writeln!(
            out,
            "  {:<28} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "failover to start script", "min", "p50", "p90", "p99", "max"
        );
        if !failover.is_empty() {
            let row = |f: &dyn Fn(f64) -> f64| {
                [0.0, 50.0, 90.0, 99.0, 100.0]
                    .iter()
                    .map(|p| {
                        if *p == 0.0 {
                            failover[0]
                        } else {
                            percentile(&failover, *p)
                        }
                    })
                    .map(|v| format!("{:>7.2}", f(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(
                out,
                "  {:<28} {}",
                "  ms",
                row(&|v| v).replace(".00", "   ")
            );
            let _ = writeln!(out, "  {:<28} {}", "  x ET_min", row(&|v| v / et));
        }
        render_breakdown(&mut out, r);
        let _ = writeln!(out, "  {:<28} {:>7}", "rounds with >1 election", splits);
        let _ = writeln!(
            out,
            "  {:<28} {:>7}",
            "service intervals checked", r.service_intervals
        );
        let _ = writeln!(
            out,
            "  {:<28} {:>7}",
            "overlapping masters",
            r.overlaps.len()
        );
        if r.failed_stops > 0 {
            let _ = writeln!(out, "  {:<28} {:>7}", "failed stops", r.failed_stops);
        }
        if let Some(cpu) = r.idle_cpu_percent {
            let _ = writeln!(out, "  {:<28} {:>7.3}", "idle CPU, % of one core", cpu);
        }
        if let Some(rss) = r.idle_rss_mib {
            let _ = writeln!(out, "  {:<28} {:>7.1}", "idle RSS, MiB", rss);
        }
        for (who, sample) in [
            ("leader", r.idle_leader),
            ("busiest follower", r.idle_follower),
        ] {
            if let Some(s) = sample {
                let _ = writeln!(
                    out,
                    "  idle {who}: {:.3} % CPU, {:.1} MiB RSS ({:.1} MiB its own), {:.0} wakeups/s",
                    s.cpu_percent, s.rss_mib, s.anon_mib, s.wakeups_per_sec
                );
            }
        }
        if let Some(d) = r.idle_disruptions {
            let per_hour = |n: u64| n as f64 * 3600.0 / r.idle_secs.max(1) as f64;
            let _ = writeln!(
                out,
                "  idle {} s: {} spurious elections ({:.0}/h), {} leader changes seen ({:.0}/h), {} lease losses ({:.0}/h)",
                r.idle_secs,
                d.elections,
                per_hour(d.elections),
                d.leader_changes,
                per_hour(d.leader_changes),
                d.lease_losses,
                per_hour(d.lease_losses)
            );
        }
        for o in &r.overlaps {
            let _ = writeln!(out, "  OVERLAP: {o}");
        }
    }
    out
}

/// The breakdown: per step of the new master's election (then its start script), the time
/// from the failure over the rounds, and the p50 of the step's own share (from the step
/// before it in the same round); then the rounds one by one.
fn render_breakdown(out: &mut String, r: &Report) {
    if r.rounds.iter().all(|x| x.breakdown.master_ms.is_none()) {
        return;
    }
    let names: Vec<&str> = STAGES
        .iter()
        .map(|(name, _)| *name)
        .chain(["start script"])
        .collect();
    let value = |x: &Round, i: usize| match STAGES.get(i) {
        Some((_, step)) => x.breakdown.get(*step),
        None => Some(x.failover_ms),
    };
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let _ = writeln!(
        out,
        "  {:<28} {:>7} {:>7} {:>7} {:>7} {:>9}",
        "breakdown, ms from failure", "min", "p50", "p99", "max", "step p50"
    );
    for (i, name) in names.iter().enumerate() {
        let at = sorted(r.rounds.iter().filter_map(|x| value(x, i)).collect());
        let step = sorted(
            r.rounds
                .iter()
                .filter_map(|x| {
                    let before = (0..i).rev().find_map(|j| value(x, j)).unwrap_or(0.0);
                    Some(value(x, i)? - before)
                })
                .collect(),
        );
        let Some(min) = at.first() else {
            let _ = writeln!(out, "    {name:<26} {:>7}", "-");
            continue;
        };
        let _ = writeln!(
            out,
            "    {name:<26} {min:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>+9.1}",
            percentile(&at, 50.0),
            percentile(&at, 99.0),
            at[at.len() - 1],
            percentile(&step, 50.0)
        );
    }
    let _ = writeln!(
        out,
        "    floor: ET_min - heartbeat/2 = {:.0} ms (the last heartbeat came half one before the failure, on average)",
        r.et_min_ms as f64 - r.heartbeat_ms as f64 / 2.0
    );
    let _ = write!(out, "  {:>5} {:<18}", "round", "old -> new");
    for short in [
        "timer", "prevote", "fsync", "vote", "master", "told", "script",
    ] {
        let _ = write!(out, " {short:>7}");
    }
    let _ = writeln!(out);
    for (k, x) in r.rounds.iter().enumerate() {
        let _ = write!(
            out,
            "  {:>5} {:<18}",
            k + 1,
            format!("{} -> {}", x.old_master, x.new_master)
        );
        for i in 0..names.len() {
            match value(x, i) {
                Some(ms) => {
                    let _ = write!(out, " {ms:>7.1}");
                }
                None => {
                    let _ = write!(out, " {:>7}", "-");
                }
            }
        }
        let _ = writeln!(out);
    }
}

/// An SVG histogram of failover times, one colour per transport.
pub fn plot_svg(reports: &[Report]) -> String {
    let all: Vec<f64> = reports
        .iter()
        .flat_map(|r| r.rounds.iter().map(|x| x.failover_ms))
        .collect();
    let max = all.iter().copied().fold(1.0_f64, f64::max);
    let bins = 40usize;
    let width = 800.0;
    let height = 300.0;
    let colors = ["#1f77b4", "#ff7f0e"];
    let mut counts = vec![vec![0usize; bins]; reports.len()];
    for (i, r) in reports.iter().enumerate() {
        for x in &r.rounds {
            let b = ((x.failover_ms / max) * (bins as f64 - 1.0)).round() as usize;
            counts[i][b.min(bins - 1)] += 1;
        }
    }
    let top = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"16\">failover time to the new master's start script (ms)</text>\n",
        w = width + 60.0,
        h = height + 60.0
    );
    let bar = width / bins as f64 / reports.len().max(1) as f64;
    for (i, r) in reports.iter().enumerate() {
        for (b, count) in counts[i].iter().enumerate() {
            let h = *count as f64 / top * height;
            let x = 40.0 + b as f64 * width / bins as f64 + i as f64 * bar;
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/>",
                30.0 + height - h,
                bar.max(1.0),
                colors[i % colors.len()]
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{}\">{} ({} rounds)</text>",
            width - 150.0,
            40 + 16 * i,
            colors[i % colors.len()],
            r.transport,
            r.rounds.len()
        );
    }
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let x = 40.0 + width * k as f64 / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{x:.0}\" y=\"{}\">{v:.0}</text>",
            height + 50.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: ElectionStepKind, term: u64, at_ms: u64) -> ElectionStep {
        ElectionStep {
            step,
            term,
            at_mono_ns: at_ms * 1_000_000,
            at_unix_ms: 0,
        }
    }

    /// The winner's steps of the new term only, after the failure; of two timer firings
    /// (a pre-vote that failed, then the one that won) the one before the campaign.
    #[test]
    fn the_breakdown_is_the_winning_campaign_of_the_new_term() {
        use ElectionStepKind::*;
        let steps = [
            step(Campaign, 4, 500),
            step(Master, 4, 510),
            step(TimerFired, 5, 1_900),
            step(TimerFired, 5, 2_950),
            step(Campaign, 5, 2_952),
            step(Persisted, 5, 2_953),
            step(VoteQuorum, 5, 2_955),
            step(Master, 5, 2_957),
            step(DriversTold, 5, 2_957),
            step(TimerFired, 6, 3_000),
        ];
        let b = Breakdown::of(&steps, 5, 2_000 * 1_000_000);
        assert_eq!(b.timer_fired_ms, Some(950.0));
        assert_eq!(b.pre_vote_quorum_ms, Some(952.0));
        assert_eq!(b.persisted_ms, Some(953.0));
        assert_eq!(b.vote_quorum_ms, Some(955.0));
        assert_eq!(b.master_ms, Some(957.0));
        assert_eq!(b.drivers_told_ms, Some(957.0));
        // A hand-over's campaign fires no timer.
        let b = Breakdown::of(&steps[4..], 5, 2_000 * 1_000_000);
        assert_eq!(b.timer_fired_ms, None);
    }
}
