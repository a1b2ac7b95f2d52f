//! The core's swarm sweep: many seeds, each with a random subset of fault kinds (printed
//! with the seed), a random cluster size and heartbeat, checked by the strict checker.
//!
//! `cargo test -p clustd-core --test sweep` runs `CLUSTD_CORE_SEEDS` seeds (default 300)
//! from `CLUSTD_CORE_SEED_BASE` (default 0). A failure prints the seed, its swarm and the
//! command that replays it alone.

use std::time::Duration;

use clustd_core::fault::{Fault, FaultRng, Limits, SplitMix, Swarm};
use clustd_core::harness::Cluster;

const HEARTBEATS_MS: [u64; 7] = [100, 90, 80, 70, 50, 33, 20];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one seed; `Err` names what broke.
fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = SplitMix(seed);
    let swarm = Swarm::draw(&mut rng);
    let nodes = [3, 3, 5, 5, 7][rng.below(5) as usize];
    let heartbeat = HEARTBEATS_MS[rng.below(HEARTBEATS_MS.len() as u64) as usize];
    let limits = Limits {
        nodes,
        max_drift_ppm: 50_000,
        et_max_ms: 2000,
        stop_budget_ms: 200,
    };
    let mut cluster = Cluster::new(nodes, rng.next_u64(), |c| {
        c.set_timings(
            Duration::from_millis(heartbeat),
            Duration::from_millis(1000),
            Duration::from_millis(2000),
        );
    });
    let context = |what: String| {
        format!("seed {seed} (swarm {swarm}, {nodes} nodes, heartbeat {heartbeat} ms): {what}")
    };
    for _ in 0..60 {
        let fault = Fault::draw(&mut rng, &swarm, &limits);
        cluster.apply(&fault);
        if let Some(v) = cluster.checker.violations().first() {
            return Err(context(format!(
                "after {fault:?} at {:?}: {v}",
                cluster.now()
            )));
        }
    }
    cluster.heal();
    if cluster
        .run_until(Duration::from_secs(10), |c| c.masters().len() == 1)
        .is_none()
    {
        return Err(context("no master within 10 s after healing".into()));
    }
    cluster.run_for(Duration::from_secs(5));
    match cluster.checker.violations().first() {
        Some(v) => Err(context(v.to_string())),
        None => Ok(()),
    }
}

#[test]
fn swarm_sweep() {
    let base = env_u64("CLUSTD_CORE_SEED_BASE", 0);
    let seeds = env_u64("CLUSTD_CORE_SEEDS", 300);
    let mut failures = Vec::new();
    for seed in base..base + seeds {
        if let Err(e) = run_seed(seed) {
            failures.push(format!(
                "{e}\n  replay: CLUSTD_CORE_SEED_BASE={seed} CLUSTD_CORE_SEEDS=1 cargo test -p clustd-core --test sweep"
            ));
            if failures.len() >= 3 {
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
