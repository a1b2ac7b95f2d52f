//! The daemon-side fence between real processes: three `clustd run` daemons and three
//! `clustd-shell-driver`s on loopback, every peer link through a fault proxy, for both
//! transports.
//!
//! The master's driver is frozen (SIGSTOP), then the master is cut off from its peers. Its
//! daemon's lease ends and it tells the driver "backup", which cannot act: without a fence
//! the old service would run on while the new master starts (the overlap the second test
//! shows). With `[fence]`, the old master's daemon runs the fence command itself, timed to
//! end by lease end plus the stop budget, before any new master may start.
//!
//! Every script appends `<node> <action> <date +%s%N>` to one shared log, so the order of
//! the nodes' actions is read off one machine clock; the service of a node runs from its
//! `start` until its `stop` or a completed `fence`.

mod common;

use std::path::Path;
use std::time::Duration;

use clustd_transport::TransportKind;
use common::procs::{NodeSpec, ProcCluster, script_lines};

const WAIT: Duration = Duration::from_secs(60);
const ELECTION: &str = "heartbeat_ms = 100\nelection_timeout_ms = [1000, 2000]";

clustd_transport::both_transports!(
    a_frozen_driver_on_a_cut_off_master_is_fenced_before_the_new_master_starts,
    a_failed_fence_is_reported_and_two_services_may_run,
    a_frozen_driver_makes_its_master_hand_over_after_the_fence,
    a_driver_that_leaves_a_master_is_fenced_only_once_the_node_is_no_longer_master,
    the_built_in_fence_kills_a_frozen_drivers_process_tree_before_the_new_master_starts,
);

/// Every `start` while another node's service runs (started, not stopped or fenced since):
/// `(starting node, running node, at)`. A failed fence (`fence-failed`) ends nothing.
fn overlaps(log: &Path) -> Vec<(String, String, u128)> {
    let mut running: Vec<String> = Vec::new();
    let mut found = Vec::new();
    for (node, action, at) in script_lines(log) {
        match action.as_str() {
            "start" => {
                for other in running.iter().filter(|r| **r != node) {
                    found.push((node.clone(), other.clone(), at));
                }
                if !running.contains(&node) {
                    running.push(node);
                }
            }
            "stop" | "fence" => running.retain(|r| *r != node),
            _ => {}
        }
    }
    found
}

fn first(log: &Path, node: &str, action: &str) -> Option<u128> {
    script_lines(log)
        .into_iter()
        .find(|(n, a, _)| n == node && a == action)
        .map(|(_, _, at)| at)
}

/// How the nodes fence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fence {
    /// A command that logs `fence` (exit 0).
    Works,
    /// A command that logs `fence-failed` (exit 3).
    Fails,
    /// `kill_driver = true` and no command, drivers on the local socket.
    KillDriver,
}

/// Node specs that fence as `how` says.
fn specs(log: &Path, how: Fence) -> Vec<NodeSpec> {
    let log = log.display();
    (1..=3)
        .map(|i| {
            let id = format!("node-{i}");
            let fence = match how {
                Fence::Works => format!(
                    "command = '''echo \"{id} fence $(date +%s%N)\" >> '{log}''''"
                ),
                Fence::Fails => format!(
                    "command = '''echo \"{id} fence-failed $(date +%s%N)\" >> '{log}'; echo 'permission denied' >&2; exit 3'''"
                ),
                Fence::KillDriver => "kill_driver = true".to_string(),
            };
            NodeSpec {
                daemon_toml: format!("[fence]\n{fence}\ntimeout_ms = 150\n"),
                start: format!("echo \"{id} start $(date +%s%N)\" >> '{log}'"),
                stop: format!("echo \"{id} stop $(date +%s%N)\" >> '{log}'"),
                socket: how == Fence::KillDriver,
            }
        })
        .collect()
}

/// Starts the cluster, waits for a master that ran `start`, freezes its driver and cuts it
/// off; returns the cluster, the old master's index and the new master's id once it ran
/// `start`.
async fn freeze_and_cut(kind: TransportKind, how: Fence) -> (ProcCluster, usize, String) {
    freeze(kind, how, true).await
}

/// [`freeze_and_cut`], or with `cut` false only the freeze.
async fn freeze(kind: TransportKind, how: Fence, cut: bool) -> (ProcCluster, usize, String) {
    let dir = tempfile::Builder::new()
        .prefix("clustd-fence-")
        .tempdir()
        .expect("tempdir");
    let log = dir.path().join("scripts.log");
    let cluster = ProcCluster::start_cuttable(dir, kind, ELECTION, &specs(&log, how))
        .await
        .expect("processes start");
    eprintln!("work dir {}", cluster.dir.path().display());
    let old = cluster
        .wait_for("a master runs start", WAIT, || async {
            match &cluster.masters().await[..] {
                [one] if first(&log, one, "start").is_some() => Some(one.clone()),
                _ => None,
            }
        })
        .await;
    let o = cluster.index(&old);
    cluster.signal_driver(o, "STOP");
    if cut {
        cluster.isolate(o);
    }
    let new = cluster
        .wait_for("another node is master and ran start", WAIT, || async {
            let masters = cluster.masters().await;
            masters
                .iter()
                .find(|m| **m != old && first(&log, m, "start").is_some())
                .cloned()
        })
        .await;
    (cluster, o, new)
}

async fn a_frozen_driver_on_a_cut_off_master_is_fenced_before_the_new_master_starts(
    kind: TransportKind,
) {
    let (cluster, o, new) = freeze_and_cut(kind, Fence::Works).await;
    let log = cluster.dir.path().join("scripts.log");
    let old = cluster.nodes[o].id.clone();
    let fenced = first(&log, &old, "fence").unwrap_or_else(|| {
        panic!(
            "{old} was never fenced\n{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            cluster.logs(30)
        )
    });
    let started = first(&log, &new, "start").expect("new master started");
    assert!(
        fenced < started,
        "{old} fenced at {fenced}, after {new} started at {started}"
    );
    assert_eq!(
        overlaps(&log),
        vec![],
        "two services at once\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // What an operator reads on the old master (its admin API is not cut off).
    let status = cluster.status(o).await.expect("status");
    assert_eq!(status["fences"], 1, "{status}");
    assert_eq!(status["last_fence"]["result"], "ok", "{status}");
    assert_eq!(
        status["last_fence"]["drivers"][0],
        format!("shell-{old}"),
        "{status}"
    );
    let metrics = cluster.nodes[o]
        .admin
        .clone()
        .metrics()
        .await
        .expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.trim() == "clustd_fences_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    let daemon_log = std::fs::read_to_string(&cluster.nodes[o].daemon_log).expect("log");
    assert!(
        daemon_log.contains("FENCING: driver(s) shell-"),
        "{daemon_log}"
    );
    cluster.signal_driver(o, "CONT");
}

async fn a_failed_fence_is_reported_and_two_services_may_run(kind: TransportKind) {
    let (cluster, o, new) = freeze_and_cut(kind, Fence::Fails).await;
    let log = cluster.dir.path().join("scripts.log");
    let old = cluster.nodes[o].id.clone();
    let status = cluster
        .wait_for("the old master reports its fence", WAIT, || async {
            let s = cluster.status(o).await?;
            (s["fences"] == 1).then_some(s)
        })
        .await;
    let result = status["last_fence"]["result"].as_str().unwrap_or_default();
    assert!(
        result.starts_with("failed: exit status 3") && result.contains("permission denied"),
        "{status}"
    );
    let daemon_log = std::fs::read_to_string(&cluster.nodes[o].daemon_log).expect("log");
    assert!(
        daemon_log.contains("fence FAILED") && daemon_log.contains("STILL RUN"),
        "{daemon_log}"
    );
    // Nothing stopped the frozen driver's service: the checker sees both running. (This is
    // also what happens without a fence, and what the watchdog layer is for.)
    assert!(
        overlaps(&log)
            .iter()
            .any(|(starting, running, _)| *starting == new && *running == old),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    cluster.signal_driver(o, "CONT");
}

/// No cut: the master's driver freezes, the daemon notices (no `Alive` for
/// `health.driver_timeout_ms`), turns unhealthy and hands over; the driver cannot stop the
/// service, so the fence does, before the successor starts.
async fn a_frozen_driver_makes_its_master_hand_over_after_the_fence(kind: TransportKind) {
    let (cluster, o, new) = freeze(kind, Fence::Works, false).await;
    let log = cluster.dir.path().join("scripts.log");
    let old = cluster.nodes[o].id.clone();
    let fenced = first(&log, &old, "fence").expect("fenced");
    let started = first(&log, &new, "start").expect("new master started");
    assert!(
        fenced < started,
        "fenced at {fenced}, new start at {started}"
    );
    assert_eq!(
        overlaps(&log),
        vec![],
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The operator sees why: the driver is not responding, so the node is not eligible.
    let status = cluster.status(o).await.expect("status");
    let reason = status["ineligible_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not responding"), "{status}");
    let driver = &status["drivers"][0];
    assert!(
        driver["not_responding"]
            .as_str()
            .is_some_and(|s| s.starts_with("not responding for ")),
        "{status}"
    );
    // Heard again: healthy again.
    cluster.signal_driver(o, "CONT");
    cluster
        .wait_for("the old master is eligible again", WAIT, || async {
            cluster.eligible(o).await.then_some(())
        })
        .await;
}

/// A driver killed on a master: its lease ends unconfirmed, but while the node is master it
/// may run the service, so nothing is fenced then. (Over WebSocket the daemon sees the
/// connection close and the node stays master; over QUIC the dead driver is first silent,
/// "not responding", so the node hands over, and only then may the fence run.)
async fn a_driver_that_leaves_a_master_is_fenced_only_once_the_node_is_no_longer_master(
    kind: TransportKind,
) {
    let dir = tempfile::Builder::new()
        .prefix("clustd-fence-")
        .tempdir()
        .expect("tempdir");
    let log = dir.path().join("scripts.log");
    let cluster = ProcCluster::start_cuttable(dir, kind, ELECTION, &specs(&log, Fence::Works))
        .await
        .expect("processes start");
    let master = cluster
        .wait_for("a master runs start", WAIT, || async {
            match &cluster.masters().await[..] {
                [one] if first(&log, one, "start").is_some() => Some(one.clone()),
                _ => None,
            }
        })
        .await;
    let m = cluster.index(&master);
    cluster.signal_driver(m, "KILL");
    cluster
        .wait_for("the master sees its driver gone", WAIT, || async {
            let s = cluster.status(m).await?;
            (s["drivers_connected"] == 0).then_some(())
        })
        .await;
    // Past the driver's lease end plus the stop budget (lease 714 ms, budget 200 ms).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let status = cluster.status(m).await.expect("status");
    let demoted_at = status["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["role"] == "backup")
        .filter_map(|h| h["at_unix_ms"].as_u64())
        .max();
    match (status["role"].as_str(), demoted_at) {
        (Some("master"), _) => {
            assert_eq!(
                status["fences"], 0,
                "nothing to fence on a master: {status}"
            );
            assert_eq!(first(&log, &master, "fence"), None);
        }
        (_, Some(demoted)) => {
            if let Some(at) = status["last_fence"]["at_unix_ms"].as_u64() {
                assert!(
                    at >= demoted,
                    "fenced at {at}, while master (demoted at {demoted}): {status}"
                );
            }
        }
        _ => panic!("backup without a demotion in its history: {status}"),
    }
}

/// Whether process `pid` is dead (gone, or a zombie not reaped yet).
fn dead(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

/// `[fence] kill_driver = true`, drivers on the local socket: the daemon knows each
/// driver's process from the kernel, and the fence SIGKILLs the frozen driver's process
/// tree, before the new master starts.
async fn the_built_in_fence_kills_a_frozen_drivers_process_tree_before_the_new_master_starts(
    kind: TransportKind,
) {
    let (cluster, o, new) = freeze_and_cut(kind, Fence::KillDriver).await;
    let log = cluster.dir.path().join("scripts.log");
    let pid = cluster.driver_pid(o);
    let status = cluster
        .wait_for("the old master reports its fence", WAIT, || async {
            let s = cluster.status(o).await?;
            (s["fences"] == 1).then_some(s)
        })
        .await;
    assert_eq!(
        status["last_fence"]["result"],
        "ok",
        "{status}\n{}",
        cluster.logs(30)
    );
    assert!(dead(pid), "the frozen driver (pid {pid}) was killed");
    // Fenced (start + elapsed, wall clock ms) before the new master's start (ns).
    let fenced_ms = status["last_fence"]["at_unix_ms"].as_u64().expect("at")
        + status["last_fence"]["elapsed_ms"]
            .as_u64()
            .expect("elapsed");
    let started = first(&log, &new, "start").expect("new master started");
    assert!(
        u128::from(fenced_ms) * 1_000_000 < started,
        "fenced at {fenced_ms} ms, {new} started at {started} ns"
    );
    let daemon_log = std::fs::read_to_string(&cluster.nodes[o].daemon_log).expect("log");
    assert!(
        daemon_log.contains("killed the driver's process tree"),
        "{daemon_log}"
    );
}
