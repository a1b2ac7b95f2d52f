//! The random sweep: one random fault schedule per seed, run on both transports, then the
//! faults stop and the cluster must elect a master within the liveness bound and stay
//! quiet. Used by the `sweep` test (`SIM_SEEDS=n`) and the `sim` command-line runner.
//!
//! Schedules come from the shared fault vocabulary (`clustd_core::fault`), with swarm
//! testing: each seed enables a random subset of fault kinds, printed with the seed in
//! every report, so rare combinations get dense coverage in some seeds.

use std::time::Duration;

use clustd_transport::TransportKind;

use clustd_core::fault::{Fault, FaultKind, FaultRng, Limits, Swarm};

use crate::cluster::{Cluster, Outcome, SimConfig};
use crate::net::splitmix;

/// Liveness bound once faults stop and a majority is connected: 4 × ET_max (8 s with the
/// default 1–2 s election timeout). It covers the transport noticing a stalled stream (its
/// idle timeout is `ET_min`: turmoil's TCP never retransmits, so a cut link stalls until
/// then), a reconnect (the backoff is at most `ET_min`), the `ET_min` of silence every node
/// keeps after hearing a leader (or after a restart), and a randomized election with a
/// possible split vote (up to 2 × ET_max): 3 × ET_min + 2 × ET_max = 3.5 × ET_max. It was
/// 6 × ET_max while the idle timeout was a fixed 5 s.
pub const LIVENESS_ET_MAX: u32 = 4;

/// How long the healed cluster must then stay quiet (no election, same master).
pub const STABLE: Duration = Duration::from_secs(10);

/// The schedule's randomness, as the shared fault vocabulary wants it.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5c4e_d01e_0000_0000)
    }

    /// Uniform duration in `[lo, hi]` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

impl FaultRng for Rng {
    fn below(&mut self, n: u64) -> u64 {
        splitmix(&mut self.0) % n.max(1)
    }
}

/// What one seed runs: drawn from the seed alone, so both transports face the same.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The fault kinds enabled (swarm testing).
    pub swarm: Swarm,
    /// Number of nodes.
    pub nodes: usize,
    /// The heartbeat interval (ms); most do not divide the lease.
    pub heartbeat_ms: u64,
    /// Clock rates per node.
    pub rates: Vec<f64>,
    /// The faults, in order (each followed by the time it lets pass).
    pub faults: Vec<Fault>,
}

/// Heartbeat intervals to draw from.
const HEARTBEATS_MS: [u64; 5] = [100, 100, 90, 70, 33];

/// Draws the plan of seed `seed`.
pub fn plan(seed: u64) -> Plan {
    let mut rng = Rng::new(seed);
    let swarm = Swarm::draw(&mut rng);
    let nodes = match rng.below(10) {
        0..=4 => 3,
        5..=8 => 5,
        _ => 7,
    };
    let heartbeat_ms = HEARTBEATS_MS[rng.below(HEARTBEATS_MS.len() as u64) as usize];
    let rho = 0.05;
    let rates: Vec<f64> = if swarm.has(FaultKind::DriftAtBound) {
        // Exactly at the bound, half each side: whoever leads has followers on the other.
        let fast = rng.below(2) == 0;
        (0..nodes)
            .map(|i| {
                if (i % 2 == 0) == fast {
                    1.0 + rho
                } else {
                    1.0 - rho
                }
            })
            .collect()
    } else if swarm.has(FaultKind::Drift) {
        (0..nodes)
            .map(|_| 1.0 + rho * ((rng.below(20_001) as f64 - 10_000.0) / 10_000.0))
            .collect()
    } else {
        vec![1.0; nodes]
    };
    let limits = Limits {
        nodes,
        max_drift_ppm: 50_000,
        et_max_ms: 2000,
        stop_budget_ms: 200,
    };
    let count = 3 + rng.below(8);
    let mut faults = Vec::new();
    for _ in 0..count {
        faults.push(Fault::draw(&mut rng, &swarm, &limits));
        // Time for the fault to matter.
        faults.push(Fault::Run(300 + rng.below(5700)));
    }
    Plan {
        swarm,
        nodes,
        heartbeat_ms,
        rates,
        faults,
    }
}

/// Runs seed `seed` on `transport`: its [`plan`], then the faults stop (heal, restart
/// every node whose disk is whole, maintenance off, every service healthy with working
/// starts) and a master must appear within the liveness bound and then stay.
pub fn run_seed(seed: u64, transport: TransportKind) -> Outcome {
    let plan = plan(seed);
    let name = format!("sweep-{}", transport.as_str());
    let mut config = SimConfig::new(&name, plan.nodes, transport, seed);
    config.heartbeat_ms = plan.heartbeat_ms;
    config.clock_rates = plan.rates.clone();
    config.latency = (Duration::from_millis(1), Rng::new(seed ^ 1).millis(2, 20));
    config.swarm = Some(plan.swarm.to_string());
    config.insider = plan.swarm.has(FaultKind::Insider);
    if plan.swarm.has(FaultKind::DriverPause) {
        // A frozen driver is safe only with the layers made for it: the daemon's fence, and
        // the watchdog for a driver frozen while its daemon is paused or crashed.
        config.fence_ms = Some(20);
        config.watchdog = true;
    }
    let liveness = config.et_max() * LIVENESS_ET_MAX;
    let mut c = Cluster::new(config);
    if c.expect_master_within(liveness).is_none() {
        return c.finish();
    }
    for fault in &plan.faults {
        if !matches!(fault, Fault::Run(_)) {
            // Failover times are measured only from one fault on a healthy cluster.
            c.cancel_failover();
        }
        c.apply(fault);
    }
    c.heal_all();
    for i in 0..plan.nodes {
        if !c.is_up(i) && !c.is_damaged(i) {
            c.restart(i);
        }
        c.maintenance(i, false);
        c.set_service_stop(i, Duration::from_millis(30), false);
        c.set_service_healthy(i, true);
        c.set_start_fails(i, false);
    }
    if c.expect_master_within(liveness).is_some() {
        // Let reconnections finish (a stalled stream lingers until the transport's idle
        // timeout, and redials back off) before demanding silence.
        c.run_for(Duration::from_secs(6));
        c.expect_stable(STABLE);
    }
    c.finish()
}

/// Aggregated results of many runs.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Runs (seed × transport).
    pub runs: u64,
    /// Simulated time covered.
    pub sim_time: Duration,
    /// Runs with at least one violation, with their report.
    pub failures: Vec<Outcome>,
    /// Every failover time measured.
    pub failovers: Vec<Duration>,
    /// Terms that had a leader, summed.
    pub elections: u64,
}

impl Summary {
    /// Adds one run.
    pub fn add(&mut self, outcome: Outcome) {
        self.runs += 1;
        self.sim_time += outcome.sim_time;
        self.elections += outcome.elections;
        self.failovers.extend(outcome.failovers.iter().copied());
        if !outcome.violations.is_empty() {
            self.failures.push(outcome);
        }
    }

    /// The `q` quantile (0..=1) of failover times.
    pub fn failover_quantile(&self, q: f64) -> Option<Duration> {
        let mut sorted = self.failovers.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return None;
        }
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        Some(sorted[index])
    }

    /// The final table.
    pub fn table(&self, seeds: u64, label: &str) -> String {
        let hours = self.sim_time.as_secs_f64() / 3600.0;
        let q = |q| {
            self.failover_quantile(q)
                .map_or("-".to_string(), |d| d.as_millis().to_string())
        };
        let violations: usize = self.failures.iter().map(|f| f.violations.len()).sum();
        format!(
            "| {label:<10} | {seeds:>6} | {:>6} | {hours:>9.2} | {violations:>10} | {:>9} | {:>9} | {:>9} | {:>13.1} |",
            self.runs,
            self.failovers.len(),
            q(0.5),
            q(0.99),
            if hours > 0.0 {
                self.elections as f64 / hours
            } else {
                0.0
            },
        )
    }

    /// The table's header.
    pub fn header() -> String {
        format!(
            "| {:<10} | {:>6} | {:>6} | {:>9} | {:>10} | {:>9} | {:>9} | {:>9} | {:>13} |\n|{}|",
            "transport",
            "seeds",
            "runs",
            "sim hours",
            "violations",
            "failovers",
            "p50 ms",
            "p99 ms",
            "elections/h",
            "-".repeat(107)
        )
    }
}
