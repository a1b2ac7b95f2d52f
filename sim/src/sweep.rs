//! The random sweep: one random fault schedule per seed, run on both transports, then the
//! faults stop and the cluster must elect a master within the liveness bound and stay
//! quiet. Used by the `sweep` test (`SIM_SEEDS=n`) and the `sim` command-line runner.

use std::time::Duration;

use clustd_transport::TransportKind;

use crate::cluster::{Cluster, Outcome, SimConfig};
use crate::net::splitmix;

/// Liveness bound once faults stop and a majority is connected: 6 × ET_max (12 s with the
/// default 1–2 s election timeout). It covers the transport noticing a stalled stream (its
/// 5 s idle timeout: turmoil's TCP never retransmits, so a cut link stalls until then), a
/// reconnect, the `ET_min` of silence every node keeps after hearing a leader (or after a
/// restart), and a randomized election with a possible split vote.
pub const LIVENESS_ET_MAX: u32 = 6;

/// How long the healed cluster must then stay quiet (no election, same master).
pub const STABLE: Duration = Duration::from_secs(10);

/// A small deterministic generator for schedules.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5c4e_d01e_0000_0000)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        splitmix(&mut self.0) % n.max(1)
    }

    /// Uniform duration in `[lo, hi]` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    /// True with probability `p` percent.
    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// `k` distinct nodes out of `n`.
    pub fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..all.len() {
            let j = i + self.below((all.len() - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all.sort_unstable();
        all
    }
}

/// Runs seed `seed` on `transport`: cluster size, clock rates and fault schedule all
/// derive from the seed, so both transports face the same schedule.
pub fn run_seed(seed: u64, transport: TransportKind) -> Outcome {
    let mut rng = Rng::new(seed);
    let nodes = match rng.below(10) {
        0..=4 => 3,
        5..=8 => 5,
        _ => 7,
    };
    let name = format!("sweep-{}", crate::transport_name(transport));
    let mut config = SimConfig::new(&name, nodes, transport, seed);
    config.latency = (Duration::from_millis(1), rng.millis(2, 20));
    let liveness = config.et_max() * LIVENESS_ET_MAX;
    let mut c = Cluster::new(config);
    if c.expect_master_within(liveness).is_none() {
        return c.finish();
    }
    let faults = 2 + rng.below(6);
    // Failover times are measured only from a healthy cluster (one fault at a time).
    let mut healthy = true;
    for _ in 0..faults {
        c.cancel_failover();
        healthy = fault(&mut c, &mut rng, nodes, healthy);
        c.run_for(rng.millis(300, 6000));
    }
    // The faults stop: heal, restart everything, maintenance off.
    c.heal_all();
    for i in 0..nodes {
        if !c.is_up(i) {
            c.restart(i);
        }
        c.maintenance(i, false);
    }
    if c.expect_master_within(liveness).is_some() {
        // Let reconnections finish (a stalled stream lingers until the transport's idle
        // timeout) before demanding silence.
        c.run_for(Duration::from_secs(6));
        c.expect_stable(STABLE);
    }
    c.finish()
}

/// One random fault; `healthy` says whether the cluster had no fault before it. Returns
/// whether it is healthy after.
fn fault(c: &mut Cluster, rng: &mut Rng, nodes: usize, healthy: bool) -> bool {
    let majority = nodes / 2 + 1;
    let master = c.master();
    let measure = |c: &mut Cluster, i: usize| {
        if healthy && master == Some(i) {
            c.failover_started(i);
        }
    };
    match rng.below(14) {
        0 => {
            let i = master.unwrap_or_else(|| rng.below(nodes as u64) as usize);
            measure(c, i);
            c.isolate(i);
        }
        1 => {
            if let Some(m) = master {
                measure(c, m);
                c.crash(m);
            }
        }
        2 => {
            let i = rng.below(nodes as u64) as usize;
            if c.is_up(i) {
                measure(c, i);
                c.crash_fin(i);
            }
        }
        3 => {
            // Restart a node that is down (or bounce one that is up).
            let i = rng.below(nodes as u64) as usize;
            c.restart(i);
        }
        4 => {
            // Minority/majority split.
            let side = rng.pick(nodes, majority - 1);
            let other = c.others(&side);
            if let Some(m) = master
                && side.contains(&m)
            {
                measure(c, m);
            }
            c.partition(&side, &other);
        }
        5 => {
            let k = 1 + rng.below((nodes - 1) as u64) as usize;
            let from = rng.pick(nodes, k);
            let to = c.others(&from);
            c.partition_oneway(&from, &to);
        }
        6 => {
            // Bridge: one node sees both halves.
            let order = rng.pick(nodes, nodes);
            let bridge = order[0];
            let rest: Vec<usize> = c.others(&[bridge]);
            let half = rest.len() / 2;
            let (a, b) = rest.split_at(half);
            c.partition(a, b);
        }
        7 => {
            let pair = rng.pick(nodes, 2);
            let flips = 2 + rng.below(10);
            for _ in 0..flips {
                c.partition(&[pair[0]], &[pair[1]]);
                c.run_for(rng.millis(50, 600));
                c.repair(&[pair[0]], &[pair[1]]);
                c.run_for(rng.millis(50, 600));
            }
        }
        8 => {
            let loss = [0.01, 0.05, 0.2][rng.below(3) as usize];
            c.set_loss(loss);
        }
        9 => {
            let max = rng.millis(10, 120);
            c.set_latency(Duration::from_millis(1), max);
        }
        10 => {
            if let Some(m) = c.master() {
                c.step_down(m);
            }
        }
        11 => {
            let i = rng.below(nodes as u64) as usize;
            let on = rng.percent(70);
            c.maintenance(i, on);
        }
        12 => {
            let i = rng.below(nodes as u64) as usize;
            if c.is_up(i) {
                c.stop_graceful(i, Duration::from_secs(5));
            }
        }
        _ => {
            c.heal_all();
            return (0..nodes).all(|i| c.is_up(i));
        }
    }
    false
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
