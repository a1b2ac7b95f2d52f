//! The CI-sized failover benchmark with real processes: 3 `clustd` daemons and 3
//! `clustd-shell-driver`s per transport, the master SIGKILLed 5 times. Asserts what users
//! rely on — every round fails over and the strict service checker, fed with the daemons'
//! service records, never finds two masters — not speed. Also step-down, and network
//! partitions through the bench's fault proxy.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use clustd::bench::{Mode, Options, run};
use clustd_transport::TransportKind;

/// The shell driver binary beside `clustd` in the target dir, built (or brought up to date: a
/// stale driver may not speak the current wire format) once per test run.
fn driver_bin() -> PathBuf {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            let clustd = PathBuf::from(env!("CARGO_BIN_EXE_clustd"));
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args([
                "build",
                "-p",
                "clustd-drivers",
                "--bin",
                "clustd-shell-driver",
            ]);
            if clustd
                .parent()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n == "release")
            {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cargo runs");
            assert!(status.success(), "building clustd-shell-driver failed");
            clustd.with_file_name("clustd-shell-driver")
        })
        .clone()
}

async fn bench(mode: Mode, rounds: usize) {
    let opts = Options {
        nodes: 3,
        rounds,
        transports: vec![TransportKind::Quic, TransportKind::WebSocket],
        heartbeat_ms: 100,
        election_timeout_ms: [1000, 2000],
        stop_budget_ms: None,
        mode,
        clustd_bin: PathBuf::from(env!("CARGO_BIN_EXE_clustd")),
        driver_bin: driver_bin(),
        idle_secs: 1,
        progress: false,
        keep: false,
    };
    let reports = tokio::time::timeout(Duration::from_secs(600), run(&opts))
        .await
        .expect("the benchmark finishes")
        .expect("the benchmark runs");
    print!("{}", clustd::bench::render(&reports));
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
