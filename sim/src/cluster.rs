//! The harness: a cluster of real clustd nodes as turmoil hosts, faults, and observation.
//!
//! Each node runs `clustd::run` with [`SimNet`] sockets, a [`DriftClock`] and a
//! [`SimStore`]. The harness steps the simulation by hand (one tick at a time), and after
//! every tick drains each node's role notices, lease updates, status and durable writes
//! into the [`Observer`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use clustd::runtime::{Command, Handle, RoleNotice, Shutdown};
use clustd_core::{DriverRole, Instant};
use clustd_transport::TransportKind;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use turmoil::{Protocol, Segment, Sim};

use crate::check::{Observer, Seen};
use crate::clock::DriftClock;
use crate::net::{SimNet, mix, splitmix};
use crate::store::{Disk, SharedDisk, SimStore, lock};

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
                transport_name(self.transport)
            )
        } else {
            format!(
                "SIM_SEED={} cargo test -p sim --test scenarios -- {} --exact",
                self.seed, self.name
            )
        }
    }
}

/// "websocket" or "quic".
pub fn transport_name(t: TransportKind) -> &'static str {
    match t {
        TransportKind::Quic => "quic",
        TransportKind::WebSocket => "websocket",
    }
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
    let filter = std::env::var("SIM_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// What one incarnation of a node exposes to the harness.
struct Live {
    handle: Handle,
    notices: broadcast::Receiver<RoleNotice>,
    lease: watch::Receiver<Option<Instant>>,
    clock: DriftClock,
    stop: Option<oneshot::Sender<Shutdown>>,
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Default)]
struct Slot {
    live: Option<Live>,
    incarnation: u64,
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
    pub observer: Observer,
    /// Nodes crashed or stopped (not running).
    down: Vec<bool>,
    /// Nodes the harness partitioned off before a silent crash.
    cut_for_crash: Vec<bool>,
    /// Clock rate per node (fixed when the hosts are built).
    rates: Vec<f64>,
    steps: u64,
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
        let secret = "sim-cluster-secret-0123456789abcdef0123456789";
        let mut slots = Vec::new();
        for i in 0..config.nodes {
            let peers: Vec<String> = (0..config.nodes)
                .filter(|j| *j != i)
                .map(|j| {
                    format!(
                        "{{ id = \"{}\", addr = \"{}\" }}",
                        names[j],
                        SocketAddr::new(addrs[j], PORT)
                    )
                })
                .collect();
            let toml = format!(
                "[node]\nid = \"{}\"\ndata_dir = \"/sim/{}\"\nwitness = {}\n\n[cluster]\ntransport = \"{}\"\nlisten = \"{}\"\nsecret = \"{secret}\"\npeers = [{}]\n\n[election]\nheartbeat_ms = {}\nelection_timeout_ms = [{}, {}]\nmax_clock_drift = {}\npriority = {}\n",
                names[i],
                names[i],
                config.witnesses.contains(&i),
                transport_name(config.transport),
                SocketAddr::new(addrs[i], PORT),
                peers.join(", "),
                config.heartbeat_ms,
                config.election_timeout_ms[0],
                config.election_timeout_ms[1],
                config.max_clock_drift,
                config.priorities.get(i).copied().unwrap_or(0),
            );
            let (settings, _warnings) =
                clustd::Settings::parse(&toml, &format!("sim/{}.toml", names[i]), Path::new("/"))
                    .unwrap_or_else(|e| {
                        panic!("the simulation's generated config is invalid (a sim bug): {e}")
                    });
            let slot = Rc::new(RefCell::new(Slot::default()));
            slots.push(slot.clone());
            let disk = disk.clone();
            let rate = rates[i];
            let seed = config.seed;
            sim.host(names[i].as_str(), move || {
                let slot = slot.clone();
                let mut settings = settings.clone();
                let disk = disk.clone();
                async move {
                    let incarnation = {
                        let mut s = slot.borrow_mut();
                        s.incarnation += 1;
                        s.incarnation
                    };
                    // The loader seeds from OS randomness: replace it with the run's seed.
                    settings.core.rng_seed = mix(&[seed, i as u64, incarnation, 1]);
                    let clock = DriftClock::start(rate);
                    let (control, handle) = clustd::control();
                    let (stop_tx, stop_rx) = oneshot::channel();
                    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
                    slot.borrow_mut().live = Some(Live {
                        notices: handle.subscribe(),
                        lease: handle.lease(),
                        handle: handle.clone(),
                        clock,
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
                    clustd::run(
                        settings,
                        net,
                        clock,
                        SimStore::new(disk, i),
                        control,
                        shutdown,
                    )
                    .await?;
                    Ok(())
                }
            });
        }
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let nodes = config.nodes;
        let mut cluster = Self {
            config,
            sim,
            names,
            ids,
            slots,
            disk,
            journal_seen: 0,
            observer: Observer::default(),
            down: vec![false; nodes],
            cut_for_crash: vec![false; nodes],
            rates,
            steps: 0,
        };
        let rates = cluster
            .rates
            .iter()
            .map(|r| format!("{r:.4}"))
            .collect::<Vec<_>>()
            .join(" ");
        cluster.observer.event(
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
            self.observer
                .violation(now, format!("a node's runtime failed: {e}"));
        }
        let end = self.sim.elapsed();
        self.steps += 1;
        self.observe((start, end));
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
                                self.observer.violation(
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
                    status = Some((s.term, s.protocol_role == "leader"));
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
                            self.observer.on_notice(&seen, tick);
                        }
                    }
                }
            }
            if let Some(lease_end) = lease {
                self.observer.on_lease(i, lease_end, tick);
            }
            if let Some((term, leader)) = status {
                self.observer.on_status(now, i, term, leader);
            }
            if !self.down[i] && !self.sim.is_host_running(self.names[i].as_str()) {
                // The node exited by itself (graceful shutdown, or a fatal error).
                self.down[i] = true;
                self.slots[i].borrow_mut().live = None;
                self.observer.on_down(i, now);
                self.observer.event(now, format!("n{i} exited"));
            }
        }
        let saves: Vec<_> = {
            let disk = lock(&self.disk);
            let new = disk.journal[self.journal_seen..].to_vec();
            self.journal_seen = disk.journal.len();
            new
        };
        for save in &saves {
            self.observer.on_save(save);
        }
        self.observer.end_tick(now);
        // Messages in flight are part of the trace, sampled every 100 ticks: endpoints,
        // kind, sequence number and length. Not the bytes: tungstenite masks client frames
        // and rustls draws TLS randoms from OS randomness, which changes bytes (never sizes
        // or timing) from run to run.
        if self.steps.is_multiple_of(100) {
            let mut hash = self.observer.hash;
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
            self.observer.hash = hash;
        }
    }

    // ----- queries -----------------------------------------------------------------

    /// The node whose drivers are master now.
    pub fn master(&self) -> Option<usize> {
        self.observer.master_at(self.now())
    }

    /// Each node's clock rate (1.0 = global simulated time).
    pub fn clock_rates(&self) -> &[f64] {
        &self.rates
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
        self.observer
            .event(now, format!("fault: partition {a:?} | {b:?}"));
        for x in self.hosts(a) {
            for y in self.hosts(b) {
                self.sim.partition(x, y);
            }
        }
    }

    /// Cuts the links from `from` to `to` only (`to` still reaches `from`).
    pub fn partition_oneway(&mut self, from: &[usize], to: &[usize]) {
        let now = self.now();
        self.observer
            .event(now, format!("fault: one-way partition {from:?} -> {to:?}"));
        for x in self.hosts(from) {
            for y in self.hosts(to) {
                self.sim.partition_oneway(x, y);
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
        self.observer.event(now, format!("heal: {a:?} | {b:?}"));
        for x in self.hosts(a) {
            for y in self.hosts(b) {
                self.sim.repair(x, y);
                self.sim.repair_oneway(x, y);
                self.sim.repair_oneway(y, x);
            }
        }
    }

    /// Repairs every link between running nodes and removes loss and extra latency.
    pub fn heal_all(&mut self) {
        let now = self.now();
        self.observer.event(now, "heal: all links".into());
        let all: Vec<usize> = (0..self.config.nodes)
            .filter(|i| !self.cut_for_crash[*i])
            .collect();
        for (k, a) in self.hosts(&all).into_iter().enumerate() {
            for b in self.hosts(&all[k + 1..]) {
                self.sim.repair(a, b);
                self.sim.repair_oneway(a, b);
                self.sim.repair_oneway(b, a);
            }
        }
        self.set_loss(0.0);
        self.set_latency(self.config.latency.0, self.config.latency.1);
    }

    /// Message loss on every link: each message has probability `rate` to fail the link,
    /// which drops it and everything in flight; the next message repairs it.
    pub fn set_loss(&mut self, rate: f64) {
        let now = self.now();
        self.observer.event(now, format!("fault: loss {rate}"));
        self.sim.set_fail_rate(rate);
    }

    /// Latency range on every link (jitter is the spread).
    pub fn set_latency(&mut self, min: Duration, max: Duration) {
        let now = self.now();
        self.observer
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
        self.observer.on_down(i, now);
        self.observer.event(now, format!("fault: {what} n{i}"));
    }

    fn note_master_loss(&mut self, i: usize) {
        if self.master() == Some(i) {
            let now = self.now();
            self.observer.failover_started(now, i);
        }
    }

    /// Starts a failover measurement if `i` is the master (call just before a fault
    /// that takes it away): the time to the next master lands in [`Outcome::failovers`].
    pub fn failover_started(&mut self, i: usize) {
        self.note_master_loss(i);
    }

    /// Abandons a pending failover measurement (another fault interfered).
    pub fn cancel_failover(&mut self) {
        self.observer.cancel_failover();
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
                }
            }
        }
        self.sim.bounce(self.names[i].as_str());
        self.down[i] = false;
        self.observer.event(now, format!("restart n{i}"));
    }

    /// Graceful shutdown (SIGTERM): a master steps down and hands over first. Runs until
    /// the node has exited (at most `limit`); returns whether it did.
    pub fn stop_graceful(&mut self, i: usize, limit: Duration) -> bool {
        let now = self.now();
        self.observer.event(now, format!("stop (graceful) n{i}"));
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

    /// Admin command: maintenance mode on node `i`.
    pub fn maintenance(&mut self, i: usize, on: bool) {
        self.command(i, Command::Maintenance(on));
    }

    fn command(&mut self, i: usize, command: Command) {
        let now = self.now();
        self.observer
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
        self.observer.violation(
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
        self.observer.violation(
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
            self.observer
                .violation(now, "stability: no master to keep".into());
            return;
        };
        let term = self.observer.master_term(master);
        let journal_start = lock(&self.disk).journal.len();
        let intervals_start = self.observer.intervals.len();
        self.run_for(d);
        let now = self.now();
        if self.master() != Some(master) || self.observer.master_term(master) != term {
            self.observer.violation(
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
            self.observer.violation(
                now,
                format!(
                    "stability: needless election while nothing failed: {}",
                    bumped.join(", ")
                ),
            );
        }
        if self.observer.intervals.len() > intervals_start + 1 {
            self.observer.violation(
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
        self.observer.final_check(now);
        Outcome {
            replay: self.config.replay_command(),
            seed: self.config.seed,
            name: self.config.name.clone(),
            sim_time: now,
            violations: self.observer.violations.clone(),
            tail: self.observer.tail(40),
            hash: self.observer.hash.value(),
            failovers: self.observer.failovers.clone(),
            elections: self.observer.leaders.len() as u64,
            events: self.observer.events.len(),
            trace: self.observer.events.clone(),
        }
    }

    /// A scenario's own assertion: on failure, records it and panics with the seed,
    /// the replay command and the trace tail.
    pub fn require(&mut self, ok: bool, what: &str) {
        if !ok {
            let now = self.now();
            self.observer.violation(now, format!("scenario: {what}"));
            let outcome = self.outcome();
            panic!("{}", outcome.report());
        }
    }

    /// Runs the final checks and panics with the seed, replay command and trace tail on
    /// any violation (what the named scenarios call last).
    pub fn assert_ok(self) -> Outcome {
        let outcome = self.finish();
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
}

impl Outcome {
    /// A report of the violations, with the seed and the replay command.
    pub fn report(&self) -> String {
        let mut out = format!("simulation `{}` failed, seed {}\n", self.name, self.seed);
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

/// The role a notice announced, as text.
pub fn role_name(role: DriverRole) -> &'static str {
    role.as_str()
}
