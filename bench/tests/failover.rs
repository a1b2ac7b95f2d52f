//! The CI-sized failover benchmark with real processes: 3 `clustd` daemons and 3
//! `clustd-shell-driver`s per transport, the master SIGKILLed 5 times. Asserts what users
//! rely on — every round fails over and the strict service checker, fed with the daemons'
//! service records, never finds two masters — not speed. Also step-down, network
//! partitions through the bench's fault proxy, and a master whose health check fails.

mod common;

use std::time::Duration;

use clustd_bench::failover::{HealthProfile, Mode, Options, run};
use clustd_transport::TransportKind;
use common::{clustd_bin, driver_bin};

async fn bench(mode: Mode, rounds: usize) {
    bench_with(mode, rounds, 100, [1000, 2000], None).await;
}

async fn bench_with(
    mode: Mode,
    rounds: usize,
    heartbeat_ms: u64,
    election_timeout_ms: [u64; 2],
    stop_budget_ms: Option<u64>,
) {
    let opts = Options {
        nodes: 3,
        rounds,
        transports: vec![TransportKind::Quic, TransportKind::WebSocket],
        heartbeat_ms,
        election_timeout_ms,
        stop_budget_ms,
        driver_lease_margin_ms: None,
        mode,
        health: HealthProfile::for_heartbeat(heartbeat_ms),
        clustd_bin: clustd_bin(),
        driver_bin: driver_bin(),
        idle_secs: 1,
        progress: false,
        keep: false,
    };
    let reports = tokio::time::timeout(Duration::from_secs(600), run(&opts))
        .await
        .expect("the benchmark finishes")
        .expect("the benchmark runs");
    print!("{}", clustd_bench::failover::render(&reports));
    for r in &reports {
        assert_eq!(
            r.failed_rounds, 0,
            "{}: every round fails over",
            r.transport
        );
        assert_eq!(r.rounds.len(), rounds, "{}", r.transport);
        assert!(
            r.overlaps.is_empty(),
            "{}: two masters at once: {:?}",
            r.transport,
            r.overlaps
        );
        // Each round's new master is another node than the old one, so without an overlap
        // each starts a new interval: fewer means the checker missed a master.
        assert!(
            r.service_intervals > rounds,
            "{}: the checker saw {} service intervals in {rounds} rounds",
            r.transport,
            r.service_intervals
        );
        for round in &r.rounds {
            assert_ne!(
                round.old_master, round.new_master,
                "{}: {round:?}",
                r.transport
            );
        }
        assert!(r.idle_rss_mib.is_some(), "memory was sampled");
        let (leader, follower) = (
            r.idle_leader.expect("the leader sampled"),
            r.idle_follower.expect("a follower sampled"),
        );
        assert!(
            leader.wakeups_per_sec > 0.0 && follower.wakeups_per_sec > 0.0,
            "a running daemon wakes up: {leader:?} {follower:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_master_five_times() {
    bench(Mode::Kill, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_down_three_times() {
    bench(Mode::StepDown, 3).await;
}

/// The master cut off from its peers (its drivers stay connected) must lose its lease and
/// stop its service before the majority's new master starts; after the heal it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_the_master_three_times() {
    bench(Mode::Partition, 3).await;
}

/// The master's health check fails (its file removed) at the fast profile (heartbeat 20 ms,
/// ET_min 100 ms, check every 200 ms, fall 3): a healthy node takes over after the stop,
/// and the old master is eligible again before the next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_the_master_unhealthy_three_times() {
    bench_with(Mode::Unhealthy, 3, 20, [100, 200], Some(20)).await;
}
