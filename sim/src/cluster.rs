//! The harness: a cluster of real clustd nodes as turmoil hosts, faults, and observation.
//!
//! Each node `n{i}` runs `clustd::run` with [`SimNet`] sockets, a [`DriftClock`] and a
//! [`SimStore`]; beside it, host `d{i}` runs the real driver library (`clustd_drivers`)
//! with a simulated service, connected to `n{i}` over the cluster transport and reading
//! the same machine clock ([`MachineTime`]). A driver host is never partitioned from its
//! daemon except on purpose (a disconnected driver), and never crashes: a SIGKILLed daemon
//! leaves its driver running, which then demotes itself when its lease runs out.
//! The harness steps the simulation by hand (one tick at a time), and after every tick
//! drains each daemon's driver records, role notices, lease updates, status and durable
//! writes into the [`Checker`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use std::sync::{Arc, Mutex};

use clustd::config::write::NodeToml;
use clustd::runtime::{Command, DriverRecord, Handle, RoleNotice, RuntimeError, Shutdown};
use clustd::store::StoreError;
use clustd_core::Instant;
use clustd_core::driver::{ActionResult, DriverRole};
use clustd_drivers::{Driver, DriverConfig, HealthReporter, RoleChange};
use clustd_transport::TransportKind;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use turmoil::{Protocol, Segment, Sim};

use crate::check::{Checker, Seen};
use crate::clock::{DriftClock, DriverTime, MachineTime, Pause};
use crate::insider::{Forge, Insider, Setup};
use crate::machine::{SimFencer, SimWatchdog, WatchdogState};
use crate::net::{SimNet, mix, splitmix};
use crate::store::{Disk, SharedDisk, SimStore, lock};
use clustd_core::check::ServiceInput;
use clustd_core::fault::{DiskFault, Fault};

/// The port every node listens on.
pub const PORT: u16 = 7400;

/// How a simulated cluster is built.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Scenario name (for the replay command).
    pub name: String,
    /// The run's seed: everything random derives from it.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Indexes of witness nodes (vote, never lead).
    pub witnesses: Vec<usize>,
    /// Which transport.
    pub transport: TransportKind,
    /// turmoil's tick (timing resolution).
    pub tick: Duration,
    /// `election.heartbeat_ms`.
    pub heartbeat_ms: u64,
    /// `election.election_timeout_ms`.
    pub election_timeout_ms: [u64; 2],
    /// `election.max_clock_drift` (ρ); each node's clock rate is drawn within `1 ± ρ`.
    pub max_clock_drift: f64,
    /// Draw clock rates (else all run at exactly 1).
    pub drift: bool,
    /// Message latency range.
    pub latency: (Duration, Duration),
    /// Per-node priority (default 0).
    pub priorities: Vec<u8>,
    /// Explicit clock rates per node (overrides `drift` when not empty).
    pub clock_rates: Vec<f64>,
    /// `election.stop_budget_ms`.
    pub stop_budget_ms: u64,
    /// How long the simulated service takes to start (ms).
    pub service_start_ms: u64,
    /// How long the simulated service takes to stop (ms; within the stop budget).
    pub service_stop_ms: u64,
    /// The sweep's swarm of fault kinds, printed with the seed.
    pub swarm: Option<String>,
    /// Add the insider host (needed by [`Fault::ForgedTerm`]).
    pub insider: bool,
    /// `health.min_master_ms` (the daemon's default, 30 s, when `None`): how often health
    /// (and preemption) may move mastership.
    pub min_master_ms: Option<u64>,
    /// `health.alone` (`"stay"` or `"step-down"`; the daemon's default, stay, when `None`).
    pub alone: Option<&'static str>,
    /// `health.start_failure_ms` (the daemon's default, 60 s, when `None`).
    pub start_failure_ms: Option<u64>,
    /// `election.preempt` per node (default off): a node that preempts takes mastership
    /// back from a lower-priority master.
    pub preempt: Vec<bool>,
    /// The drivers' largest reconnect delay (ms). Short, a driver reports its service's
    /// health to a restarted daemon long before that daemon may campaign.
    pub driver_reconnect_max_ms: u64,
    /// Configure `[fence]` on every node: a fence run takes this long (ms) and kills the
    /// node's simulated service ([`crate::machine::SimFencer`]); `fence.timeout_ms` is half
    /// the stop budget.
    pub fence_ms: Option<u64>,
    /// Fence runs report failure (the service runs on).
    pub fence_fails: bool,
    /// Configure `[fence] watchdog` on every node, with the longest timeout the config
    /// allows (the strictest test of its load check): a watchdog not fed by then resets the
    /// machine ([`crate::machine::SimWatchdog`]).
    pub watchdog: bool,
}

impl SimConfig {
    /// Defaults: 5 ms tick, heartbeat 100 ms, election timeout 1000–2000 ms, ρ = 0.05 with
    /// drift on, 1–5 ms latency.
    pub fn new(name: &str, nodes: usize, transport: TransportKind, seed: u64) -> Self {
        Self {
            name: name.to_string(),
            seed,
            nodes,
            witnesses: Vec::new(),
            transport,
            tick: Duration::from_millis(5),
            heartbeat_ms: 100,
            election_timeout_ms: [1000, 2000],
            max_clock_drift: 0.05,
            drift: true,
            latency: (Duration::from_millis(1), Duration::from_millis(5)),
            priorities: Vec::new(),
            clock_rates: Vec::new(),
            stop_budget_ms: 200,
            service_start_ms: 20,
            service_stop_ms: 30,
            insider: false,
            swarm: None,
            min_master_ms: None,
            alone: None,
            start_failure_ms: None,
            preempt: Vec::new(),
            driver_reconnect_max_ms: 1000,
            fence_ms: None,
            fence_fails: false,
            watchdog: false,
        }
    }

    /// `ET_max`.
    pub fn et_max(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms[1])
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        if self.name.starts_with("sweep") {
            format!(
                "cargo run -p sim --release -- replay --seed {} --transport {}",
                self.seed,
                self.transport.as_str()
            )
        } else {
            format!(
                "SIM_SEED={} cargo test -p sim --test scenarios -- {} --exact",
                self.seed, self.name
            )
        }
    }
}

/// The `[health]` section of every node's config: only what the scenario set, so the
/// daemon's defaults hold otherwise.
fn health_section(config: &SimConfig) -> String {
    let mut out = String::new();
    if let Some(alone) = config.alone {
        let _ = writeln!(out, "alone = \"{alone}\"");
    }
    if let Some(ms) = config.min_master_ms {
        let _ = writeln!(out, "min_master_ms = {ms}");
    }
    if let Some(ms) = config.start_failure_ms {
        let _ = writeln!(out, "start_failure_ms = {ms}");
    }
    if out.is_empty() {
        out
    } else {
        format!("\n[health]\n{out}")
    }
}

/// The `[fence]` section of every node's config, if the scenario asks for one; the watchdog
/// timeout is the longest `lease` allows.
fn fence_section(config: &SimConfig, node: &str, lease: Duration) -> String {
    let mut out = String::new();
    if config.fence_ms.is_some() {
        let _ = writeln!(
            out,
            "command = \"(simulated: the harness's fencer)\"\ntimeout_ms = {}",
            (config.stop_budget_ms / 2).max(1)
        );
    }
    if config.watchdog {
        let hb = Duration::from_millis(config.heartbeat_ms);
        let slack = (hb * 2).max(lease / 4);
        let timeout = (lease + Duration::from_millis(config.stop_budget_ms)).saturating_sub(slack);
        let _ = writeln!(
            out,
            "watchdog = \"/sim/{node}/watchdog\"\nwatchdog_timeout_ms = {}",
            timeout.as_millis()
        );
    }
    if out.is_empty() {
        out
    } else {
        format!("\n[fence]\n{out}")
    }
}

/// How long a machine reset by its watchdog takes to boot its daemon and driver again.
pub const REBOOT: Duration = Duration::from_secs(2);

/// Every simulated cluster's secret.
const CLUSTER_SECRET: &str = "sim-cluster-secret-0123456789abcdef0123456789";
/// Every simulated cluster's drivers' credential.
const DRIVER_SECRET: &str = "sim-driver-credential-0123456789abcdef01234";

/// The checker's name for node `i`'s driver.
pub fn driver_id(i: usize) -> clustd_core::NodeId {
    clustd_core::NodeId::new(format!("d{i}"))
        .unwrap_or_else(|_| unreachable!("d<digits> is a valid id"))
}

/// The node key of node `i` in every simulated cluster.
pub fn node_key(i: usize) -> clustd_transport::NodeKey {
    let mut private = [0u8; 32];
    for (j, b) in private.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(j as u8) ^ 0xa5;
    }
    clustd_transport::NodeKey::from_private(private)
}

/// The seed for a named scenario: `SIM_SEED` if set, else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Installs a log subscriber once, at `SIM_LOG` (default `warn`: turmoil opens an INFO
/// span per host per tick, so more is slow).
pub fn init_logging() {
    // The simulation injects failing stops, cut-off drivers and paused daemons on purpose:
    // their (correct) ERRORs and WARNs would drown the output, so they are off by default.
    let filter = std::env::var("SIM_LOG").unwrap_or_else(|_| {
        "warn,clustd_drivers=off,clustd::service=off,clustd::runtime=error".into()
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// How a node's simulated driver behaves, and what it did (shared with its host, its
/// daemon's fencer and the harness).
#[derive(Debug)]
pub struct ServiceState {
    /// Start takes this long.
    pub start: Duration,
    /// Stop takes this long.
    pub stop: Duration,
    /// Stops report `Failed` (the service may still run: the daemon must wait for the lease).
    pub fail_stops: bool,
    /// What the driver did, with global time, for the trace.
    pub log: Vec<(Duration, String)>,
    /// Whether the simulated service runs now.
    pub running: bool,
    /// What the driver's health check of the service finds (reported as `d{i}/service`
    /// every [`HEALTH_EVERY`]).
    pub healthy: bool,
    /// Starts report `Failed` (after taking [`ServiceState::start`]); the service is
    /// counted as running until the stop that follows, as a half-started one might be.
    pub start_fails: bool,
}

impl Default for ServiceState {
    fn default() -> Self {
        Self {
            start: Duration::ZERO,
            stop: Duration::ZERO,
            fail_stops: false,
            log: Vec::new(),
            running: false,
            healthy: true,
            start_fails: false,
        }
    }
}

/// How often a simulated driver reports its service's health (each report is one run of
/// the check, `fall` = `rise` = 1).
pub const HEALTH_EVERY: Duration = Duration::from_millis(100);

/// The simulated service behind a node's real driver session.
struct SimService {
    node: usize,
    state: Arc<Mutex<ServiceState>>,
    /// The driver's pause switch: a paused driver finishes no start or stop before it ends.
    pause: Pause,
    /// The health-reporting task, ended with the driver.
    reporting: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SimService {
    fn drop(&mut self) {
        if let Some(task) = self.reporting.take() {
            task.abort();
        }
    }
}

pub(crate) fn lock_state(state: &Mutex<ServiceState>) -> std::sync::MutexGuard<'_, ServiceState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Driver for SimService {
    fn on_session_start(&mut self, health: HealthReporter) {
        // Periodic, whatever the role, from the first moment of the session: the daemon
        // hears the verdict on connect (the library re-sends the latest on every connection).
        let state = self.state.clone();
        self.reporting = Some(tokio::spawn(async move {
            loop {
                let healthy = lock_state(&state).healthy;
                let detail = if healthy {
                    "the simulated service answers"
                } else {
                    "the simulated service does not answer (simulated failure)"
                };
                if let Err(e) = health.report("service", healthy, detail) {
                    tracing::error!("simulated health report refused (a sim bug): {e}");
                }
                tokio::time::sleep(HEALTH_EVERY).await;
            }
        }));
    }

    async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
        let (took, fail) = {
            let s = lock_state(&self.state);
            match change.role {
                DriverRole::Master => (s.start, s.start_fails),
                DriverRole::Backup => (s.stop, s.fail_stops),
            }
        };
        let begin = turmoil::sim_elapsed().unwrap_or_default();
        // A start that the library cancels (demotion, lease end) is killed: dropped here.
        let mut cancelled = CancelGuard {
            state: self.state.clone(),
            node: self.node,
            armed: change.role == DriverRole::Master,
            pause: self.pause.clone(),
        };
        if change.role == DriverRole::Master {
            lock_state(&self.state).running = true;
        }
        // The action takes `took` of time in which the driver runs: SIGSTOPped meanwhile,
        // it makes no progress, and it completes only while running.
        let mut left = took;
        loop {
            self.pause.wait_until_running().await;
            if left.is_zero() {
                break;
            }
            let step = left.min(PAUSE_STEP);
            tokio::time::sleep(step).await;
            left -= step;
        }
        cancelled.armed = false;
        let end = turmoil::sim_elapsed().unwrap_or_default();
        let mut s = lock_state(&self.state);
        let what = match (change.role, fail) {
            (DriverRole::Master, false) => "started".to_string(),
            (DriverRole::Master, true) => "start FAILED (simulated)".to_string(),
            (DriverRole::Backup, false) => {
                s.running = false;
                "stopped".to_string()
            }
            // It reports failure, but the service is gone: ground truth stays one service
            // (a stop that really leaves the service running is the fencing issue's case).
            (DriverRole::Backup, true) => {
                s.running = false;
                "stop FAILED (simulated)".to_string()
            }
        };
        s.log.push((
            end,
            format!(
                "d{} {what} (term {}, {}, began {:.3}s)",
                self.node,
                change.term.0,
                change.reason,
                begin.as_secs_f64()
            ),
        ));
        if fail {
            let what = match change.role {
                DriverRole::Master => "simulated start failure",
                DriverRole::Backup => "simulated stop failure",
            };
            ActionResult::Failed(what.into())
        } else {
            ActionResult::Ok
        }
    }
}

/// Marks the simulated service stopped if a start is dropped (cancelled) before it ends.
struct CancelGuard {
    state: Arc<Mutex<ServiceState>>,
    node: usize,
    armed: bool,
    pause: Pause,
}

/// A paused driver's action makes progress in steps this long, each while it runs.
const PAUSE_STEP: Duration = Duration::from_millis(5);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (state, node, pause) = (self.state.clone(), self.node, self.pause.clone());
        let kill = move || {
            let at = turmoil::sim_elapsed().unwrap_or_default();
            let mut s = lock_state(&state);
            s.running = false;
            s.log
                .push((at, format!("d{node} start cancelled (killed)")));
        };
        // A frozen driver kills nothing: a cancellation (a lease timer armed before the
        // freeze) takes effect once it runs again.
        let now = turmoil::sim_elapsed().unwrap_or_default();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if pause.get() > now => {
                runtime.spawn(async move {
                    pause.wait_until_running().await;
                    kill();
                });
            }
            _ => kill(),
        }
    }
}

/// What is paused: a node's daemon or its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paused {
    Daemon(usize),
    Driver(usize),
}

/// What one incarnation of a node exposes to the harness.
struct Live {
    handle: Handle,
    notices: broadcast::Receiver<RoleNotice>,
    records: broadcast::Receiver<DriverRecord>,
    lease: watch::Receiver<Option<Instant>>,
    clock: DriftClock,
    stop: Option<oneshot::Sender<Shutdown>>,
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Default)]
struct Slot {
    live: Option<Live>,
    incarnation: u64,
    /// The daemon refused to start (a damaged state file), this many times.
    refused: u64,
}

/// A simulated cluster.
pub struct Cluster {
    /// How it was built.
    pub config: SimConfig,
    sim: Sim<'static>,
    names: Vec<String>,
    ids: BTreeMap<String, usize>,
    slots: Vec<Rc<RefCell<Slot>>>,
    disk: SharedDisk,
    journal_seen: usize,
    /// What the checkers saw.
    pub checker: Checker,
    /// Nodes crashed or stopped (not running).
    down: Vec<bool>,
    /// Nodes the harness partitioned off before a silent crash.
    cut_for_crash: Vec<bool>,
    /// Clock rate per node (fixed when the hosts are built).
    rates: Vec<f64>,
    /// Each daemon's pause switch.
    pauses: Vec<Pause>,
    /// Paused daemons and drivers, and when they resume (global time).
    paused: Vec<(Duration, Paused)>,
    /// Each driver's pause switch.
    driver_pauses: Vec<Pause>,
    /// Each machine's watchdog.
    watchdogs: Vec<Arc<Mutex<WatchdogState>>>,
    /// Machines reset by their watchdog, when they boot again, and whether their daemon
    /// ran at the reset (it is started again then).
    reboots: Vec<(Duration, usize, bool)>,
    /// Directions cut between daemons (`from`, `to`): a pause's hold and release share
    /// turmoil's link state with cuts, so cuts are put back after a release.
    cuts: std::collections::BTreeSet<(IpAddr, IpAddr)>,
    /// Daemon-driver links cut (a disconnected driver, a silent crash).
    driver_cut: Vec<bool>,
    /// Each node's simulated service.
    services: Vec<Arc<Mutex<ServiceState>>>,
    /// Driver host names (`d{i}`).
    driver_names: Vec<String>,
    /// When the latest partition-like fault began (for heals timed near a timeout).
    last_cut: Option<Duration>,
    /// Crashes so far (they alternate between silent and FIN).
    crashes: u64,
    /// Nodes whose simulated service ran at the end of the last tick.
    running_services: Vec<usize>,
    steps: u64,
    /// The insider host, when configured.
    insider: Option<Insider>,
}

impl Cluster {
    /// Builds the cluster and starts every node.
    pub fn new(config: SimConfig) -> Self {
        init_logging();
        let mut rng = config.seed;
        let mut sim = turmoil::Builder::new()
            .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200))
            .simulation_duration(Duration::from_secs(365 * 24 * 3600))
            .tick_duration(config.tick)
            .min_message_latency(config.latency.0)
            .max_message_latency(config.latency.1)
            .rng_seed(splitmix(&mut rng))
            .build();
        let names: Vec<String> = (0..config.nodes).map(|i| format!("n{i}")).collect();
        let addrs: Vec<IpAddr> = names.iter().map(|n| sim.lookup(n.as_str())).collect();
        let rates: Vec<f64> = (0..config.nodes)
            .map(|i| {
                if let Some(rate) = config.clock_rates.get(i) {
                    *rate
                } else if config.drift {
                    // Uniform in [1 - ρ, 1 + ρ].
                    let u = (splitmix(&mut rng) >> 11) as f64 / (1u64 << 53) as f64;
                    1.0 + config.max_clock_drift * (2.0 * u - 1.0)
                } else {
                    1.0
                }
            })
            .collect();
        let disk: SharedDisk = std::sync::Arc::new(std::sync::Mutex::new(Disk::default()));
        let pauses: Vec<Pause> = (0..config.nodes).map(|_| Pause::default()).collect();
        let (secret, driver_secret) = (CLUSTER_SECRET, DRIVER_SECRET);
        // Every node proves its own key; fixed per node index, so runs replay.
        let keys: Vec<clustd_transport::NodeKey> = (0..config.nodes).map(node_key).collect();
        // Each machine's simulated service, watchdog and driver pause switch.
        let services: Vec<Arc<Mutex<ServiceState>>> = (0..config.nodes)
            .map(|_| {
                Arc::new(Mutex::new(ServiceState {
                    start: Duration::from_millis(config.service_start_ms),
                    stop: Duration::from_millis(config.service_stop_ms),
                    ..ServiceState::default()
                }))
            })
            .collect();
        let watchdogs: Vec<Arc<Mutex<WatchdogState>>> =
            (0..config.nodes).map(|_| Arc::default()).collect();
        let driver_pauses: Vec<Pause> = (0..config.nodes).map(|_| Pause::default()).collect();
        let mut slots = Vec::new();
        for i in 0..config.nodes {
            let mut node =
                NodeToml::new(&names[i], config.transport, SocketAddr::new(addrs[i], PORT))
                    .data_dir(format!("/sim/{}", names[i]))
                    .witness(config.witnesses.contains(&i))
                    .key(&keys[i].private_hex())
                    .secret(secret)
                    .driver_secret(driver_secret)
                    .driver_socket("");
            for j in (0..config.nodes).filter(|j| *j != i) {
                node = node.peer(
                    &names[j],
                    SocketAddr::new(addrs[j], PORT),
                    &keys[j].public(),
                );
            }
            let toml = node
                .heartbeat_ms(config.heartbeat_ms)
                .election_timeout_ms(config.election_timeout_ms)
                .max_clock_drift(config.max_clock_drift)
                .priority(config.priorities.get(i).copied().unwrap_or(0))
                .preempt(config.preempt.get(i).copied().unwrap_or(false))
                .stop_budget_ms(config.stop_budget_ms)
                .then_toml(&health_section(&config))
                .to_toml();
            let parse = |toml: &str| {
                clustd::Settings::parse(toml, &format!("sim/{}.toml", names[i]), Path::new("/"))
                    .unwrap_or_else(|e| {
                        panic!("the simulation's generated config is invalid (a sim bug): {e}")
                    })
                    .0
            };
            let mut settings = parse(&toml);
            let fence = fence_section(&config, &names[i], settings.core.lease);
            if !fence.is_empty() {
                settings = parse(&format!("{toml}{fence}"));
            }
            let fencer: Option<Arc<dyn clustd::fence::Fencer>> = config.fence_ms.map(|ms| {
                Arc::new(SimFencer {
                    node: i,
                    service: services[i].clone(),
                    took: Duration::from_millis(ms),
                    fails: config.fence_fails,
                }) as _
            });
            let watchdog_device = settings.watchdog.as_ref().map(|w| SimWatchdog {
                state: watchdogs[i].clone(),
                timeout: w.timeout,
                rate: rates[i],
            });

            let slot = Rc::new(RefCell::new(Slot::default()));
            slots.push(slot.clone());
            let disk = disk.clone();
            let machine = MachineTime::new(rates[i]);
            let pause = pauses[i].clone();
            let seed = config.seed;
            sim.host(names[i].as_str(), move || {
                let slot = slot.clone();
                let mut settings = settings.clone();
                let disk = disk.clone();
                let pause = pause.clone();
                let fencer = fencer.clone();
                let watchdog_device = watchdog_device.clone();
                async move {
                    let incarnation = {
                        let mut s = slot.borrow_mut();
                        s.incarnation += 1;
                        s.incarnation
                    };
                    // The loader seeds from OS randomness: replace it with the run's seed.
                    settings.core.rng_seed = mix(&[seed, i as u64, incarnation, 1]);
                    let clock = DriftClock::start(machine, pause);
                    let (mut control, handle) = clustd::control();
                    if let Some(fencer) = &fencer {
                        control = control.with_fencer(fencer.clone());
                    }
                    if let Some(device) = watchdog_device {
                        control = control.with_watchdog_device(Box::new(device));
                    }
                    let (stop_tx, stop_rx) = oneshot::channel();
                    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
                    slot.borrow_mut().live = Some(Live {
                        notices: handle.subscribe(),
                        records: handle.driver_records(),
                        lease: handle.lease(),
                        handle: handle.clone(),
                        clock: clock.clone(),
                        stop: Some(stop_tx),
                        commands: cmd_tx,
                    });
                    tokio::spawn(async move {
                        while let Some(command) = cmd_rx.recv().await {
                            handle.command(command).await;
                        }
                    });
                    let shutdown = async move { stop_rx.await.unwrap_or(Shutdown::Immediate) };
                    let net = SimNet::new(mix(&[seed, i as u64, incarnation, 2]));
                    let result = clustd::run(
                        settings,
                        net,
                        clock,
                        SimStore::new(disk, i),
                        control,
                        shutdown,
                    )
                    .await;
                    match result {
                        // A damaged state file: refusing to start is the right outcome.
                        Err(RuntimeError::Store(StoreError::Corrupt { .. })) => {
                            slot.borrow_mut().refused += 1;
                            Ok(())
                        }
                        other => other.map_err(Into::into),
                    }
                }
            });
        }
        // One driver host per node, on the same machine clock, dialing its daemon.
        let mut driver_names = Vec::new();
        for i in 0..config.nodes {
            let state = services[i].clone();
            let pause = driver_pauses[i].clone();
            let name = format!("d{i}");
            driver_names.push(name.clone());
            let daemon = SocketAddr::new(addrs[i], PORT);
            let daemon_key = keys[i].public();
            let transport = config.transport;
            let machine = MachineTime::new(rates[i]);
            let seed = config.seed;
            let reconnect_max_ms = config.driver_reconnect_max_ms;
            sim.host(name.as_str(), move || {
                let state = state.clone();
                let pause = pause.clone();
                async move {
                    let mut driver =
                        DriverConfig::new(daemon, transport, driver_secret.as_bytes(), "sim")
                            .with_driver_id(format!("d{i}"))
                            .unwrap_or_else(|_| unreachable!("d<digits> is a valid id"));
                    driver.rng_seed = Some(mix(&[seed, i as u64, 3]));
                    driver.reconnect_max = Duration::from_millis(reconnect_max_ms);
                    driver.daemon_key = Some(daemon_key);
                    let net = SimNet::new(mix(&[seed, i as u64, 4]));
                    let service = SimService {
                        node: i,
                        state,
                        pause: pause.clone(),
                        reporting: None,
                    };
                    let time = DriverTime::new(machine, pause);
                    let mut session = clustd_drivers::connect_with(driver, service, net, time)
                        .map_err(|e| format!("driver d{i}: {e}"))?;
                    session
                        .wait()
                        .await
                        .map_err(|e| format!("driver d{i}: {e}"))?;
                    Ok(())
                }
            });
        }
        let insider = config.insider.then(|| {
            Insider::host(
                &mut sim,
                Setup {
                    names: names.clone(),
                    addrs: addrs.iter().map(|a| SocketAddr::new(*a, PORT)).collect(),
                    keys: keys.iter().map(clustd_transport::NodeKey::public).collect(),
                    transport: config.transport,
                    cluster_secret: CLUSTER_SECRET,
                    driver_secret: DRIVER_SECRET,
                    seed: config.seed,
                },
            )
        });
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let nodes = config.nodes;
        let stop_budget = Duration::from_millis(config.stop_budget_ms);
        let mut cluster = Self {
            config,
            sim,
            names,
            ids,
            slots,
            disk,
            journal_seen: 0,
            checker: Checker::new(stop_budget),
            down: vec![false; nodes],
            cut_for_crash: vec![false; nodes],
            rates,
            pauses,
            paused: Vec::new(),
            driver_pauses,
            watchdogs,
            reboots: Vec::new(),
            cuts: std::collections::BTreeSet::new(),
            driver_cut: vec![false; nodes],
            services,
            driver_names,
            last_cut: None,
            crashes: 0,
            running_services: Vec::new(),
            steps: 0,
            insider,
        };
        let rates = cluster
            .rates
            .iter()
            .map(|r| format!("{r:.4}"))
            .collect::<Vec<_>>()
            .join(" ");
        cluster.checker.event(
            Duration::ZERO,
            format!("start: {nodes} nodes, clock rates {rates}"),
        );
        cluster
    }

    // ----- time --------------------------------------------------------------------

    /// Global simulated time.
    pub fn now(&self) -> Duration {
        self.sim.elapsed()
    }

    /// Advances one tick and observes.
    pub fn step(&mut self) {
        let start = self.sim.elapsed();
        if let Err(e) = self.sim.step() {
            let now = self.sim.elapsed();
            self.checker
                .violation(now, format!("a node's runtime failed: {e}"));
        }
        let end = self.sim.elapsed();
        self.steps += 1;
        self.observe((start, end));
        self.resume_paused(end);
        self.boot_reset_machines(end);
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now() + d;
        while self.now() < until {
            self.step();
        }
    }

    /// Runs until `done` holds (checked after each tick) or `limit` passes; returns
    /// whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let until = self.now() + limit;
        while self.now() < until {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn observe(&mut self, tick: (Duration, Duration)) {
        let (_, now) = tick;
        // Driver records of every node, fed to the service checker in global time order.
        let mut fed: Vec<(Duration, usize, ServiceInput)> = Vec::new();
        let mut lost = Vec::new();
        for i in 0..self.slots.len() {
            let mut slot = self.slots[i].borrow_mut();
            let Some(live) = slot.live.as_mut() else {
                continue;
            };
            loop {
                let record = match live.records.try_recv() {
                    Ok(record) => record,
                    Err(broadcast::error::TryRecvError::Lagged(k)) => {
                        lost.push((i, k));
                        continue;
                    }
                    Err(_) => break,
                };
                let at = live.clock.to_global(record.at());
                let input = record.service_input(|t| live.clock.to_global(t));
                fed.push((at, i, input));
            }
        }
        for (i, k) in lost {
            self.checker.violation(
                now,
                format!("observer of n{i} lost {k} driver records (harness bug)"),
            );
        }
        // Fed at the end of the tick, not at the deadline: the machine is torn down only
        // now, and until then the harness has let it run.
        let resets = self.watchdog_resets(now);
        fed.extend(resets.iter().map(|(_, i, input)| (now, *i, input.clone())));
        fed.sort_by_key(|(at, i, _)| (*at, *i));
        for (at, i, item) in &fed {
            self.checker.on_record(*at, *i, item);
        }
        for (at, i, _) in resets {
            self.checker.watchdog_fired(at, i);
            self.reset_machine(at, i);
        }
        let mut running = Vec::new();
        for i in 0..self.services.len() {
            let (log, on) = {
                let mut s = lock_state(&self.services[i]);
                (std::mem::take(&mut s.log), s.running)
            };
            for (at, text) in log {
                self.checker.event(at, text);
            }
            if on {
                running.push(i);
            }
        }
        // Ground truth, beside the model: the simulated services themselves. Catches a
        // driver that runs longer than the model allows (a lease that grew, a stop that
        // waited behind a start).
        if running.len() > 1 && running != self.running_services {
            self.checker.violation(
                now,
                format!("two simulated services running at once: {running:?}"),
            );
        }
        self.running_services = running;
        for i in 0..self.slots.len() {
            let mut notices = Vec::new();
            let mut lease = None;
            let mut status = None;
            {
                let mut slot = self.slots[i].borrow_mut();
                if let Some(live) = slot.live.as_mut() {
                    loop {
                        match live.notices.try_recv() {
                            Ok(n) => notices.push(n),
                            Err(broadcast::error::TryRecvError::Lagged(k)) => {
                                self.checker.violation(
                                    now,
                                    format!("observer of n{i} lagged by {k} notices (harness bug)"),
                                );
                            }
                            Err(_) => break,
                        }
                    }
                    if live.lease.has_changed().unwrap_or(false) {
                        lease = live
                            .lease
                            .borrow_and_update()
                            .map(|at| live.clock.to_global(at));
                    }
                    let s = live.handle.status();
                    // Empty until the runtime has loaded its state (never, if it refused).
                    if !s.node_id.is_empty() {
                        status = Some((s.term, s.protocol_role == "leader"));
                    }
                    for n in &mut notices {
                        let lease_end = n.lease_until.map(|at| live.clock.to_global(at));
                        n.lease_until = None;
                        let leader = n
                            .leader
                            .as_ref()
                            .and_then(|l| self.ids.get(l.as_str()).copied());
                        {
                            let seen = Seen {
                                node: i,
                                role: n.role,
                                term: n.term.0,
                                leader,
                                reason: n.reason,
                                lease_end,
                            };
                            self.checker.on_notice(&seen, tick);
                        }
                    }
                }
            }
            if let Some(lease_end) = lease {
                self.checker.on_lease(i, lease_end);
            }
            if let Some((term, leader)) = status {
                self.checker.on_status(now, i, term, leader);
            }
            if !self.down[i] && !self.sim.is_host_running(self.names[i].as_str()) {
                // The node exited by itself (graceful shutdown, or a fatal error).
                self.down[i] = true;
                self.slots[i].borrow_mut().live = None;
                self.checker.on_down(i, now);
                self.checker.event(now, format!("n{i} exited"));
            }
        }
        let saves: Vec<_> = {
            let disk = lock(&self.disk);
            let new = disk.journal[self.journal_seen..].to_vec();
            self.journal_seen = disk.journal.len();
            new
        };
        for save in &saves {
            self.checker.on_save(save);
        }
        // Messages in flight are part of the trace, sampled every 100 ticks: endpoints,
        // kind, sequence number and length. Not the bytes: tungstenite masks client frames
        // and rustls draws TLS randoms from OS randomness, which changes bytes (never sizes
        // or timing) from run to run.
        if self.steps.is_multiple_of(100) {
            let mut hash = self.checker.hash;
            self.sim.links(|links| {
                for link in links {
                    for sent in link {
                        let (src, dst) = sent.pair();
                        hash.write(src.to_string().as_bytes());
                        hash.write(dst.to_string().as_bytes());
                        match sent.protocol() {
                            Protocol::Tcp(Segment::Data(seq, bytes)) => {
                                hash.write(b"tcp");
                                hash.write_u64(*seq);
                                hash.write_u64(bytes.len() as u64);
                            }
                            Protocol::Tcp(other) => hash.write(other.to_string().as_bytes()),
                            Protocol::Udp(datagram) => {
                                hash.write(b"udp");
                                hash.write_u64(datagram.0.len() as u64);
                            }
                        }
                    }
                }
            });
            self.checker.hash = hash;
        }
    }

    // ----- queries -----------------------------------------------------------------

    /// The node whose drivers are master now.
    pub fn master(&self) -> Option<usize> {
        self.checker.master_at(self.now())
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        !self.down[i]
    }

    /// Node `i`'s current term (from its status), if running.
    pub fn term_of(&self, i: usize) -> Option<u64> {
        self.slots[i]
            .borrow()
            .live
            .as_ref()
            .map(|l| l.handle.status().term)
    }

    /// All node indexes except those given.
    pub fn others(&self, except: &[usize]) -> Vec<usize> {
        (0..self.config.nodes)
            .filter(|i| !except.contains(i))
            .collect()
    }

    fn hosts(&self, nodes: &[usize]) -> Vec<IpAddr> {
        nodes
            .iter()
            .map(|i| self.sim.lookup(self.names[*i].as_str()))
            .collect()
    }

    // ----- faults ------------------------------------------------------------------

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        let now = self.now();
        self.last_cut = Some(now);
        self.checker
            .event(now, format!("fault: partition {a:?} | {b:?}"));
        for x in self.hosts(a) {
            for y in self.hosts(b) {
                self.sim.partition(x, y);
                self.cuts.insert((x, y));
                self.cuts.insert((y, x));
            }
        }
    }

    /// Cuts the links from `from` to `to` only (`to` still reaches `from`).
    pub fn partition_oneway(&mut self, from: &[usize], to: &[usize]) {
        let now = self.now();
        self.last_cut = Some(now);
        self.checker
            .event(now, format!("fault: one-way partition {from:?} -> {to:?}"));
        for x in self.hosts(from) {
            for y in self.hosts(to) {
                self.sim.partition_oneway(x, y);
                self.cuts.insert((x, y));
            }
        }
    }

    /// Isolates node `i` from all others.
    pub fn isolate(&mut self, i: usize) {
        let others = self.others(&[i]);
        self.partition(&[i], &others);
    }

    /// Repairs the links between the two groups (both ways).
    pub fn repair(&mut self, a: &[usize], b: &[usize]) {
        let now = self.now();
        self.checker.event(now, format!("heal: {a:?} | {b:?}"));
        for x in self.hosts(a) {
            for y in self.hosts(b) {
                self.sim.repair(x, y);
                self.sim.repair_oneway(x, y);
                self.sim.repair_oneway(y, x);
                self.cuts.remove(&(x, y));
                self.cuts.remove(&(y, x));
            }
        }
        self.rehold_paused();
    }

    /// Repairs every link between running nodes and removes loss and extra latency.
    pub fn heal_all(&mut self) {
        let now = self.now();
        self.checker.event(now, "heal: all links".into());
        let all: Vec<usize> = (0..self.config.nodes)
            .filter(|i| !self.cut_for_crash[*i])
            .collect();
        for (k, a) in self.hosts(&all).into_iter().enumerate() {
            for b in self.hosts(&all[k + 1..]) {
                self.sim.repair(a, b);
                self.sim.repair_oneway(a, b);
                self.sim.repair_oneway(b, a);
                self.cuts.remove(&(a, b));
                self.cuts.remove(&(b, a));
            }
        }
        // Drivers reconnected to their daemons, at the default latency.
        for i in 0..self.config.nodes {
            if !self.cut_for_crash[i] {
                let (n, d) = (self.names[i].clone(), self.driver_names[i].clone());
                self.sim.repair(n.as_str(), d.as_str());
                self.driver_cut[i] = false;
                self.sim
                    .set_link_latency(n.as_str(), d.as_str(), self.config.latency.0);
            }
        }
        self.set_loss(0.0);
        self.set_latency(self.config.latency.0, self.config.latency.1);
        self.rehold_paused();
    }

    /// Message loss on every link: each message has probability `rate` to fail the link,
    /// which drops it and everything in flight; the next message repairs it.
    pub fn set_loss(&mut self, rate: f64) {
        let now = self.now();
        self.checker.event(now, format!("fault: loss {rate}"));
        // Between daemons only: a driver talks to its daemon on the same machine.
        let all = self.hosts(&(0..self.config.nodes).collect::<Vec<_>>());
        for (k, a) in all.iter().enumerate() {
            for b in &all[k + 1..] {
                self.sim.set_link_fail_rate(*a, *b, rate);
            }
        }
    }

    /// Latency range on every link (jitter is the spread).
    pub fn set_latency(&mut self, min: Duration, max: Duration) {
        let now = self.now();
        self.checker
            .event(now, format!("fault: latency {min:?}..{max:?}"));
        let all = self.hosts(&(0..self.config.nodes).collect::<Vec<_>>());
        for (k, a) in all.iter().enumerate() {
            for b in &all[k + 1..] {
                self.sim.set_link_latency(*a, *b, min);
                self.sim.set_link_max_message_latency(*a, *b, max);
            }
        }
    }

    /// Silent crash (power cut, kernel panic): partition first so no FIN/RST leaves, then
    /// crash. Its links stay cut until [`Cluster::restart`].
    pub fn crash(&mut self, i: usize) {
        let others = self.others(&[i]);
        self.partition(&[i], &others);
        let (n, d) = (self.names[i].clone(), self.driver_names[i].clone());
        self.sim.partition(n.as_str(), d.as_str());
        self.driver_cut[i] = true;
        self.cut_for_crash[i] = true;
        self.crash_now(i, "crash (silent)");
    }

    /// Crash with FIN: the process dies and the OS closes its connections.
    pub fn crash_fin(&mut self, i: usize) {
        self.crash_now(i, "crash (FIN)");
    }

    fn crash_now(&mut self, i: usize, what: &str) {
        let now = self.now();
        // Drain anything the node did in its last tick first.
        self.observe((now, now));
        self.sim.crash(self.names[i].as_str());
        self.down[i] = true;
        self.slots[i].borrow_mut().live = None;
        self.checker.on_down(i, now);
        self.checker.event(now, format!("fault: {what} n{i}"));
    }

    fn note_master_loss(&mut self, i: usize) {
        if self.master() == Some(i) {
            let now = self.now();
            self.checker.failover_started(now, i);
        }
    }

    /// Starts a failover measurement if `i` is the master (call just before a fault
    /// that takes it away): the time to the next master lands in [`Outcome::failovers`].
    pub fn failover_started(&mut self, i: usize) {
        self.note_master_loss(i);
    }

    /// Abandons a pending failover measurement (another fault interfered).
    pub fn cancel_failover(&mut self) {
        self.checker.cancel_failover();
    }

    /// Restarts node `i` (its disk survived); reconnects it if a silent crash cut it off.
    pub fn restart(&mut self, i: usize) {
        let now = self.now();
        if !self.down[i] {
            self.crash_fin(i);
        }
        if self.cut_for_crash[i] {
            self.cut_for_crash[i] = false;
            let others = self.others(&[i]);
            for x in self.hosts(&[i]) {
                for y in self.hosts(&others) {
                    self.sim.repair(x, y);
                    self.cuts.remove(&(x, y));
                    self.cuts.remove(&(y, x));
                }
            }
            let (n, d) = (self.names[i].clone(), self.driver_names[i].clone());
            self.sim.repair(n.as_str(), d.as_str());
            self.driver_cut[i] = false;
            self.rehold_paused();
        }
        let damaged = lock(&self.disk).damaged.get(&i).copied();
        let refused_before = self.slots[i].borrow().refused;
        self.sim.bounce(self.names[i].as_str());
        self.down[i] = false;
        self.checker.event(now, format!("restart n{i}"));
        if let Some(how) = damaged {
            // It must refuse to start rather than forget its vote.
            self.step();
            let refused = self.slots[i].borrow().refused > refused_before;
            let running = self.sim.is_host_running(self.names[i].as_str());
            if refused && !running {
                let now = self.now();
                self.checker
                    .event(now, format!("n{i} refused to start: {how} state file"));
            } else {
                let now = self.now();
                self.checker.violation(
                    now,
                    format!("n{i} started with a {how} state file instead of refusing"),
                );
            }
        }
    }

    /// Whether node `i`'s state file is damaged (it cannot start until an operator acts).
    pub fn is_damaged(&self, i: usize) -> bool {
        lock(&self.disk).damaged.contains_key(&i)
    }

    /// Disk fault on node `i`: crash it, then tear or corrupt its state file. A crash loses
    /// no write `save` returned for (the store fsyncs first), so `LoseUnsynced` is a crash.
    pub fn damage_disk(&mut self, i: usize, fault: DiskFault) {
        if self.is_up(i) {
            self.crash(i);
        }
        let how = match fault {
            DiskFault::LoseUnsynced => return,
            DiskFault::Torn => "torn",
            _ => "corrupt",
        };
        // At most a minority damaged, so that the cluster can go on.
        let damaged = lock(&self.disk).damaged.len();
        if (damaged + 1) * 2 >= self.config.nodes {
            return;
        }
        let now = self.now();
        self.checker
            .event(now, format!("fault: {how} state file on n{i}"));
        lock(&self.disk).damage(i, how);
    }

    /// Node `i`'s driver loses (or regains) its connection to its daemon.
    pub fn disconnect_driver(&mut self, i: usize, cut: bool) {
        let now = self.now();
        let (n, d) = (self.names[i].clone(), self.driver_names[i].clone());
        if cut {
            self.checker
                .event(now, format!("fault: driver d{i} disconnected"));
            self.sim.partition(n.as_str(), d.as_str());
            self.driver_cut[i] = true;
        } else {
            self.checker
                .event(now, format!("heal: driver d{i} reconnects"));
            self.sim.repair(n.as_str(), d.as_str());
            self.driver_cut[i] = false;
            self.rehold_paused();
        }
    }

    /// How node `i`'s simulated service stops: taking `stop` (kept within the stop budget,
    /// as the contract asks of stop scripts), and whether the stop reports failure.
    pub fn set_service_stop(&mut self, i: usize, stop: Duration, fail: bool) {
        let now = self.now();
        let budget = Duration::from_millis(self.config.stop_budget_ms);
        let stop = stop.min(budget.saturating_sub(Duration::from_millis(10)));
        self.checker.event(
            now,
            format!(
                "fault: d{i} stops take {stop:?}{}",
                if fail { ", and fail" } else { "" }
            ),
        );
        let mut s = lock_state(&self.services[i]);
        s.stop = stop;
        s.fail_stops = fail;
    }

    /// Node `i`'s service turns healthy or unhealthy: its driver reports so from its next
    /// health check on (within [`HEALTH_EVERY`]).
    pub fn set_service_healthy(&mut self, i: usize, healthy: bool) {
        let now = self.now();
        let what = if healthy { "healthy" } else { "UNHEALTHY" };
        self.checker
            .event(now, format!("fault: d{i}'s service turns {what}"));
        lock_state(&self.services[i]).healthy = healthy;
    }

    /// Whether node `i`'s service is healthy (what its driver reports).
    pub fn service_healthy(&self, i: usize) -> bool {
        lock_state(&self.services[i]).healthy
    }

    /// Whether node `i`'s simulated starts fail (`ActionResult::Failed`) from now on.
    pub fn set_start_fails(&mut self, i: usize, fail: bool) {
        let now = self.now();
        let what = if fail { "fail" } else { "work" };
        self.checker
            .event(now, format!("fault: d{i}'s starts {what}"));
        lock_state(&self.services[i]).start_fails = fail;
    }

    /// Whether node `i`'s simulated service runs now (ground truth).
    pub fn service_running(&self, i: usize) -> bool {
        lock_state(&self.services[i]).running
    }

    /// How long node `i`'s simulated service takes to start from now on.
    pub fn set_service_start(&mut self, i: usize, start: Duration) {
        let now = self.now();
        self.checker
            .event(now, format!("d{i} starts take {start:?}"));
        lock_state(&self.services[i]).start = start;
    }

    /// Delivery delay on the link between node `i`'s daemon and its driver (a descheduled
    /// driver, a busy queue): renewals arrive late.
    pub fn delay_driver_link(&mut self, i: usize, delay: Duration) {
        let now = self.now();
        self.checker
            .event(now, format!("fault: driver link of n{i} delayed {delay:?}"));
        let (n, d) = (self.names[i].clone(), self.driver_names[i].clone());
        self.sim.set_link_latency(n.as_str(), d.as_str(), delay);
    }

    /// Pauses node `i`'s daemon for `d` (SIGSTOP, a VM pause): its links are held (what
    /// arrives waits in the socket buffers) and its timers do not fire, while its clock goes
    /// on. Its driver hears nothing meanwhile, so it demotes itself at lease end.
    pub fn pause(&mut self, i: usize, d: Duration) {
        if !self.is_up(i) {
            return;
        }
        let now = self.now();
        self.checker
            .event(now, format!("fault: n{i} paused for {d:?}"));
        self.pauses[i].until(now + d);
        self.paused.push((now + d, Paused::Daemon(i)));
        self.rehold_paused();
    }

    /// Pauses node `i`'s driver for `d` (SIGSTOP, swapped out, wedged): its link to its
    /// daemon is held and it finishes no start or stop and handles no lease timer before it
    /// resumes, while the service it runs goes on. The checker is told: a frozen driver's
    /// lease ends nothing until it resumes, is fenced, or its machine is reset.
    pub fn pause_driver(&mut self, i: usize, d: Duration) {
        let now = self.now();
        self.checker
            .event(now, format!("fault: driver d{i} paused for {d:?}"));
        self.checker.on_record(
            now,
            i,
            &ServiceInput::Frozen {
                driver: driver_id(i),
            },
        );
        self.driver_pauses[i].until(now + d);
        self.paused.push((now + d, Paused::Driver(i)));
        self.rehold_paused();
    }

    fn is_paused(&self, what: Paused) -> bool {
        self.paused.iter().any(|(_, p)| *p == what)
    }

    fn resume_paused(&mut self, now: Duration) {
        let due: Vec<Paused> = self
            .paused
            .iter()
            .filter(|(until, _)| *until <= now)
            .map(|(_, p)| *p)
            .collect();
        if due.is_empty() {
            return;
        }
        self.paused.retain(|(until, _)| *until > now);
        for what in due {
            if self.is_paused(what) {
                continue;
            }
            let i = match what {
                Paused::Daemon(i) => {
                    self.checker.event(now, format!("n{i} resumes"));
                    let n = self.names[i].clone();
                    for j in self.others(&[i]) {
                        let m = self.names[j].clone();
                        self.sim.release(n.as_str(), m.as_str());
                    }
                    i
                }
                Paused::Driver(i) => {
                    self.checker.event(now, format!("driver d{i} resumes"));
                    self.checker.on_record(
                        now,
                        i,
                        &ServiceInput::Thawed {
                            driver: driver_id(i),
                        },
                    );
                    i
                }
            };
            // The daemon-driver link flows again once neither end is paused.
            if !self.is_paused(Paused::Daemon(i)) && !self.is_paused(Paused::Driver(i)) {
                self.sim
                    .release(self.names[i].as_str(), self.driver_names[i].as_str());
            }
            self.restore_cuts();
        }
    }

    /// Puts back every cut a release healed (turmoil's release makes a link healthy).
    fn restore_cuts(&mut self) {
        for (x, y) in self.cuts.clone() {
            self.sim.partition_oneway(x, y);
        }
        for i in 0..self.config.nodes {
            if self.driver_cut[i] {
                self.sim
                    .partition(self.names[i].as_str(), self.driver_names[i].as_str());
            }
        }
    }

    /// Holds again the links of every paused daemon and driver that a repair made healthy
    /// (a cut stays a cut: a paused process behind one hears nothing either way).
    fn rehold_paused(&mut self) {
        let paused: Vec<Paused> = self.paused.iter().map(|(_, p)| *p).collect();
        for what in paused {
            match what {
                Paused::Daemon(i) => {
                    let x = self.sim.lookup(self.names[i].as_str());
                    for j in self.others(&[i]) {
                        let y = self.sim.lookup(self.names[j].as_str());
                        if !self.cuts.contains(&(x, y)) && !self.cuts.contains(&(y, x)) {
                            self.sim.hold(x, y);
                        }
                    }
                    if !self.driver_cut[i] {
                        self.sim
                            .hold(self.names[i].as_str(), self.driver_names[i].as_str());
                    }
                }
                Paused::Driver(i) => {
                    if !self.driver_cut[i] {
                        self.sim
                            .hold(self.names[i].as_str(), self.driver_names[i].as_str());
                    }
                }
            }
        }
    }

    /// Resets every machine whose watchdog deadline passed by `now`: the service dies with
    /// it, the daemon (if it ran) and the driver go down, and both boot again after
    /// [`REBOOT`]. Returns the resets as checker inputs, at their deadlines.
    fn watchdog_resets(&mut self, now: Duration) -> Vec<(Duration, usize, ServiceInput)> {
        let mut resets = Vec::new();
        for i in 0..self.watchdogs.len() {
            let fired = {
                let mut w = self.watchdogs[i]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match w.fires_at {
                    Some(at) if at <= now => {
                        w.fires_at = None;
                        Some(at)
                    }
                    _ => None,
                }
            };
            if let Some(at) = fired {
                resets.push((at, i, ServiceInput::MachineReset));
            }
        }
        resets
    }

    /// Takes machine `i` down for a watchdog reset at `at` (its checker input is fed by the
    /// caller).
    fn reset_machine(&mut self, at: Duration, i: usize) {
        let now = self.now();
        self.checker.event(
            at,
            format!("WATCHDOG fired: machine n{i} reset (service, daemon and driver gone)"),
        );
        {
            let mut s = lock_state(&self.services[i]);
            s.running = false;
        }
        let daemon_was_up = self.is_up(i);
        if daemon_was_up {
            self.sim.crash(self.names[i].as_str());
            self.down[i] = true;
            self.slots[i].borrow_mut().live = None;
            self.checker.on_down(i, now);
        }
        self.sim.crash(self.driver_names[i].as_str());
        self.pauses[i].clear();
        self.driver_pauses[i].clear();
        self.paused
            .retain(|(_, p)| *p != Paused::Daemon(i) && *p != Paused::Driver(i));
        // Links held for a pause are let go: the machine that held them is gone.
        let n = self.names[i].clone();
        for j in self.others(&[i]) {
            let m = self.names[j].clone();
            self.sim.release(n.as_str(), m.as_str());
        }
        self.sim.release(n.as_str(), self.driver_names[i].as_str());
        self.reboots.push((now + REBOOT, i, daemon_was_up));
    }

    fn boot_reset_machines(&mut self, now: Duration) {
        let due: Vec<(usize, bool)> = self
            .reboots
            .iter()
            .filter(|(at, _, _)| *at <= now)
            .map(|(_, i, up)| (*i, *up))
            .collect();
        self.reboots.retain(|(at, _, _)| *at > now);
        for (i, daemon) in due {
            self.checker
                .event(now, format!("machine n{i} booted after its watchdog reset"));
            self.sim.bounce(self.driver_names[i].as_str());
            if daemon && !self.is_up(i) {
                self.restart(i);
            }
        }
    }

    /// Node `i`'s watchdog: armed (and when it fires), feeds and magic closes so far.
    pub fn watchdog(&self, i: usize) -> WatchdogState {
        self.watchdogs[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs until one heartbeat before a follower's election timeout after the latest cut
    /// (`ET_min` after it), then heals every link.
    pub fn heal_near_timeout(&mut self, offset_ms: u64) {
        if let Some(cut) = self.last_cut {
            let hb = self.config.heartbeat_ms;
            let target = cut
                + Duration::from_millis(self.config.election_timeout_ms[0])
                + Duration::from_millis(offset_ms % (2 * hb + 1))
                - Duration::from_millis(hb);
            if target > self.now() {
                self.run_for(target - self.now());
            }
        }
        self.heal_all();
    }

    /// Applies one fault of the shared vocabulary (`clustd_core::fault`), as this
    /// simulation can: clock rates are fixed when the hosts are built (so `Drift` and
    /// `DriftAtBound` are build options, see [`crate::sweep`]); heartbeats cannot be told
    /// apart from other traffic inside encrypted frames, so `LoseHeartbeats` is a one-way cut.
    pub fn apply(&mut self, fault: &Fault) {
        let n = self.config.nodes;
        let node = |i: &usize| *i % n;
        match fault {
            Fault::Run(ms) => self.run_for(Duration::from_millis(*ms)),
            Fault::Crash(i) => {
                let i = node(i);
                if self.is_up(i) {
                    self.failover_started(i);
                    self.crashes += 1;
                    if self.crashes.is_multiple_of(2) {
                        self.crash_fin(i);
                    } else {
                        self.crash(i);
                    }
                }
            }
            Fault::Restart(i) => {
                let i = node(i);
                if !self.is_damaged(i) {
                    self.restart(i);
                }
            }
            Fault::Isolate(i) => {
                let i = node(i);
                self.failover_started(i);
                self.isolate(i);
            }
            Fault::Split(mask) => {
                let (left, right): (Vec<usize>, Vec<usize>) =
                    (0..n).partition(|i| *i < 8 && mask & (1 << i) != 0);
                if !left.is_empty() && !right.is_empty() {
                    self.partition(&left, &right);
                }
            }
            Fault::Recover => self.heal_all(),
            Fault::CutOneWay(a, b) | Fault::LoseHeartbeats(a, b) => {
                let (a, b) = (node(a), node(b));
                if a != b {
                    self.partition_oneway(&[a], &[b]);
                }
            }
            Fault::Loss(ppm) => self.set_loss((f64::from(*ppm) / 1e6).min(0.2)),
            Fault::Delay(ms) => {
                let max = Duration::from_millis((*ms).clamp(2, 120));
                self.set_latency(Duration::from_millis(1), max);
            }
            Fault::Drift(..) | Fault::DriftAtBound { .. } => {}
            Fault::HealNearTimeout => {
                let offset = self.steps;
                self.heal_near_timeout(offset);
            }
            Fault::StepDown(i) => {
                // Mostly the master: a step-down of a follower does nothing.
                let i = match self.master() {
                    Some(m) if *i % 3 != 0 => m,
                    _ => node(i),
                };
                self.step_down(i);
            }
            Fault::Maintenance(i, on) => self.maintenance(node(i), *on),
            Fault::Switchover(at, to) => self.switchover(node(at), node(to)),
            Fault::DriverStops(i, after) => {
                let i = node(i);
                match after {
                    Some(ms) => {
                        self.disconnect_driver(i, false);
                        self.set_service_stop(i, Duration::from_millis(*ms), false);
                    }
                    // Never confirms: alternately a driver cut off from its daemon, and a
                    // stop that fails.
                    None if self.steps.is_multiple_of(2) => self.disconnect_driver(i, true),
                    None => self.set_service_stop(i, Duration::from_millis(5), true),
                }
            }
            Fault::DriverLinkDelay(i, ms) => {
                self.delay_driver_link(node(i), Duration::from_millis(*ms));
            }
            Fault::Pause(i, ms) => {
                let i = node(i);
                self.failover_started(i);
                self.pause(i, Duration::from_millis(*ms));
            }
            Fault::DriverPause(i, ms) => {
                let i = node(i);
                self.pause_driver(i, Duration::from_millis(*ms));
            }
            Fault::Disk(i, how) => self.damage_disk(node(i), *how),
            Fault::Health(i, healthy) => self.set_service_healthy(node(i), *healthy),
            Fault::ForgedTerm { to, from, above } => {
                let (to, from) = (node(to), node(from));
                let insider = self.insider.as_ref().unwrap_or_else(|| {
                    panic!("a ForgedTerm fault needs the insider host: set SimConfig::insider")
                });
                if to != from {
                    // The harness adds `above` to the target's term; the insider cannot
                    // know it, and any term it gets through is a violation anyway.
                    insider.forge(Forge {
                        to,
                        from,
                        term: clustd_core::Term((*above).max(clustd_core::MAX_TERM_JUMP + 1)),
                    });
                    let now = self.now();
                    self.checker
                        .event(now, format!("insider: forging n{from} at n{to}"));
                    self.run_for(Duration::from_millis(1500));
                    self.take_insider_reports();
                }
            }
            // `Fault` grows (it is non-exhaustive): a fault this match does not know would
            // make every sweep that draws it silently lenient.
            other => panic!("the simulation cannot apply {other:?}: teach Cluster::apply"),
        }
    }

    /// Records every peer connection the insider got as a violation.
    fn take_insider_reports(&mut self) {
        let Some(insider) = &self.insider else { return };
        let now = self.now();
        for report in insider.take_reports() {
            self.checker.violation(now, report);
        }
    }

    /// Graceful shutdown (SIGTERM): a master steps down and hands over first. Runs until
    /// the node has exited (at most `limit`); returns whether it did.
    pub fn stop_graceful(&mut self, i: usize, limit: Duration) -> bool {
        let now = self.now();
        self.checker.event(now, format!("stop (graceful) n{i}"));
        if let Some(live) = self.slots[i].borrow_mut().live.as_mut()
            && let Some(stop) = live.stop.take()
        {
            let _ = stop.send(Shutdown::Graceful);
        }
        self.run_until(limit, |c| !c.is_up(i))
    }

    /// Admin command: graceful step-down on node `i`.
    pub fn step_down(&mut self, i: usize) {
        self.command(i, Command::StepDown);
    }

    /// Admin command on node `at`: switchover to node `to` (`clustd step-down --to`).
    pub fn switchover(&mut self, at: usize, to: usize) {
        let Ok(to) = clustd_core::NodeId::new(format!("n{to}")) else {
            return;
        };
        self.command(at, Command::Switchover(to));
    }

    /// Admin command: maintenance mode on node `i`.
    pub fn maintenance(&mut self, i: usize, on: bool) {
        self.command(i, Command::Maintenance(on));
    }

    fn command(&mut self, i: usize, command: Command) {
        let now = self.now();
        self.checker
            .event(now, format!("command n{i}: {command:?}"));
        if let Some(live) = self.slots[i].borrow().live.as_ref() {
            let _ = live.commands.send(command);
        }
    }

    // ----- liveness ----------------------------------------------------------------

    /// Liveness: a master must exist within `bound`; records a violation otherwise.
    /// Returns the master and how long it took.
    pub fn expect_master_within(&mut self, bound: Duration) -> Option<(usize, Duration)> {
        let since = self.now();
        if self.run_until(bound, |c| c.master().is_some()) || self.master().is_some() {
            let m = self.master()?;
            return Some((m, self.now() - since));
        }
        self.checker.violation(
            self.now(),
            format!("liveness: no master within {bound:?} after the faults stopped"),
        );
        None
    }

    /// Failover: a master other than `old` must exist within `bound` (measured from now).
    pub fn expect_failover_within(
        &mut self,
        old: usize,
        bound: Duration,
    ) -> Option<(usize, Duration)> {
        let since = self.now();
        if self.run_until(bound, |c| c.master().is_some_and(|m| m != old)) {
            let m = self.master()?;
            return Some((m, self.now() - since));
        }
        self.checker.violation(
            self.now(),
            format!("failover: no master other than n{old} within {bound:?}"),
        );
        None
    }

    /// Stability: for `d`, the master and term stay the same and no node starts an
    /// election (no term is written). Records a violation otherwise.
    pub fn expect_stable(&mut self, d: Duration) {
        let Some(master) = self.master() else {
            let now = self.now();
            self.checker
                .violation(now, "stability: no master to keep".into());
            return;
        };
        let term = self.checker.master_term(master);
        let journal_start = lock(&self.disk).journal.len();
        let intervals_start = self.checker.master_terms.len();
        self.run_for(d);
        let now = self.now();
        if self.master() != Some(master) || self.checker.master_term(master) != term {
            self.checker.violation(
                now,
                format!(
                    "stability: master n{master} (term {term:?}) was replaced while nothing failed"
                ),
            );
        }
        let bumped: Vec<String> = lock(&self.disk).journal[journal_start..]
            .iter()
            .filter(|s| Some(s.state.term.0) != term)
            .map(|s| format!("n{} term {} at {:?}", s.node, s.state.term.0, s.at))
            .collect();
        if !bumped.is_empty() {
            self.checker.violation(
                now,
                format!(
                    "stability: needless election while nothing failed: {}",
                    bumped.join(", ")
                ),
            );
        }
        if self.checker.master_terms.len() > intervals_start + 1 {
            self.checker.violation(
                now,
                "stability: mastership changed hands while nothing failed".into(),
            );
        }
    }

    // ----- the end -----------------------------------------------------------------

    /// Runs the final checks and returns the outcome.
    pub fn finish(mut self) -> Outcome {
        self.outcome()
    }

    fn outcome(&mut self) -> Outcome {
        let now = self.now();
        if !self.checker.master_terms.is_empty() && self.checker.told_master == 0 {
            // A checker that saw nothing proves nothing.
            self.checker.violation(
                now,
                "a node became master but no driver was ever told: the service checker saw nothing"
                    .into(),
            );
        }
        Outcome {
            replay: self.config.replay_command(),
            seed: self.config.seed,
            name: self.config.name.clone(),
            sim_time: now,
            violations: self.checker.violations.clone(),
            tail: self.checker.tail(40),
            hash: self.checker.hash.value(),
            failovers: self.checker.failovers.clone(),
            elections: self.checker.leaders.len() as u64,
            events: self.checker.events.len(),
            trace: self.checker.events.clone(),
            swarm: self.config.swarm.clone(),
            told_master: self.checker.told_master,
        }
    }

    /// A scenario's own assertion: on failure, records it and panics with the seed,
    /// the replay command and the trace tail.
    pub fn require(&mut self, ok: bool, what: &str) {
        if !ok {
            let now = self.now();
            self.checker.violation(now, format!("scenario: {what}"));
            let outcome = self.outcome();
            panic!("{}", outcome.report());
        }
    }

    /// Runs the final checks and panics with the seed, replay command and trace tail on
    /// any violation (what the named scenarios call last).
    pub fn assert_ok(self) -> Outcome {
        let outcome = self.finish();
        if std::env::var_os("SIM_TRACE").is_some() {
            // The whole trace, for reading a run that passed (SIM_TRACE=1).
            eprintln!("{}", outcome.trace.join("\n"));
        }
        outcome.assert_ok();
        outcome
    }
}

/// The result of one simulation.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Scenario name.
    pub name: String,
    /// Seed.
    pub seed: u64,
    /// The one-line command that replays it.
    pub replay: String,
    /// Simulated time covered.
    pub sim_time: Duration,
    /// Everything the checkers found.
    pub violations: Vec<String>,
    /// The last events before the end.
    pub tail: String,
    /// Trace hash (determinism).
    pub hash: u64,
    /// Failover times measured.
    pub failovers: Vec<Duration>,
    /// Terms that had a leader.
    pub elections: u64,
    /// Number of trace events.
    pub events: usize,
    /// The trace (events with simulated time).
    pub trace: Vec<String>,
    /// The sweep's swarm of fault kinds, if any.
    pub swarm: Option<String>,
    /// "master" notices that reached a driver (the service checker had work to do).
    pub told_master: u64,
}

impl Outcome {
    /// A report of the violations, with the seed and the replay command.
    pub fn report(&self) -> String {
        let mut out = format!("simulation `{}` failed, seed {}\n", self.name, self.seed);
        if let Some(swarm) = &self.swarm {
            let _ = writeln!(out, "  swarm (fault kinds enabled): {swarm}");
        }
        for v in &self.violations {
            let _ = writeln!(out, "  VIOLATION {v}");
        }
        let _ = writeln!(out, "last events:\n{}", self.tail);
        let _ = writeln!(out, "replay: {}", self.replay);
        let _ = writeln!(out, "(add SIM_LOG=info for the nodes' logs)");
        out
    }

    /// Panics with [`Outcome::report`] if any checker failed.
    pub fn assert_ok(&self) {
        assert!(self.violations.is_empty(), "{}", self.report());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Dropping the runtimes while a host's software still holds `Rc`s into the
        // harness is fine; nothing to do but make sure stop senders go first.
        for slot in &self.slots {
            if let Ok(mut s) = slot.try_borrow_mut() {
                s.live = None;
            }
        }
    }
}
