//! Health moves mastership between real processes: three `clustd run` daemons and three
//! `clustd-shell-driver`s on loopback, for both transports. Each node's `[[check]]` is
//! `test -f nodeN.ok` (every 200 ms, fall 3, rise 2; `health.min_master_ms = 2000`), and its
//! scripts append `start`/`stop` with `date +%s%N` to its own log, so the order of two
//! nodes' scripts is read off one machine clock.
//!
//! One story per transport: a node unhealthy at boot never leads; the master's check fails
//! and the other healthy node starts only after the old master's stop; the old master
//! recovers and does not take mastership back (no preemption); a new master whose `start`
//! exits 1 hands over to a healthy node whose `start` works.
//!
//! Every wait is for a condition with a generous deadline, except the one bounded wait that
//! is the assertion "nothing moves".

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clustd_transport::TransportKind;
use common::procs::{NodeSpec, ProcCluster};

const WAIT: Duration = Duration::from_secs(60);
const ELECTION: &str = "heartbeat_ms = 100\nelection_timeout_ms = [1000, 2000]";
const INTERVAL_MS: u64 = 200;
const FALL: u64 = 3;

clustd_transport::both_transports!(health_moves_mastership_between_real_processes);

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

/// `(action, unix ns)` per line of a node's script log: `start`, `stop`, `failed-start`.
fn script_lines(log: &Path) -> Vec<(String, u128)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (action, at) = l.split_once(' ')?;
            Some((action.to_owned(), at.trim().parse().ok()?))
        })
        .collect()
}

/// The first `action` line after `after` (unix ns).
fn first_after(log: &Path, action: &str, after: u128) -> Option<u128> {
    script_lines(log)
        .into_iter()
        .find(|(a, at)| a == action && *at > after)
        .map(|(_, at)| at)
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn ok(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.ok"))
    }
    fn script_log(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.scripts"))
    }
    fn fail_start(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.fail-start"))
    }
    fn spec(&self, id: &str) -> NodeSpec {
        let log = self.script_log(id).display().to_string();
        NodeSpec {
            daemon_toml: format!(
                "[[check]]\nname = \"file\"\nexec = \"test -f {}\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 1000\nfall = {FALL}\nrise = 2\n\n[health]\nmin_master_ms = 2000\n",
                self.ok(id).display()
            ),
            start: format!(
                "if [ -e '{}' ]; then echo \"failed-start $(date +%s%N)\" >> '{log}'; exit 1; fi; echo \"start $(date +%s%N)\" >> '{log}'",
                self.fail_start(id).display()
            ),
            stop: format!("echo \"stop $(date +%s%N)\" >> '{log}'"),
            socket: false,
        }
    }
}

async fn health_moves_mastership_between_real_processes(kind: TransportKind) {
    let dir = tempfile::Builder::new()
        .prefix("clustd-health-")
        .tempdir()
        .expect("tempdir");
    let files = Files {
        dir: dir.path().to_path_buf(),
    };
    let ids = ["node-1", "node-2", "node-3"];
    // node-3's check fails from the start.
    for id in &ids[..2] {
        std::fs::write(files.ok(id), "").expect("ok file");
    }
    let specs: Vec<NodeSpec> = ids.iter().map(|id| files.spec(id)).collect();
    let cluster = ProcCluster::start(dir, kind, ELECTION, &specs)
        .await
        .expect("processes start");
    eprintln!("work dir {}", cluster.dir.path().display());

    // (a) A master among the healthy two; node-3 is never it while its file is absent (checked
    // at every poll until the file appears in (d)).
    let masters_without_node3 = || async {
        let masters = cluster.masters().await;
        assert!(
            !masters.iter().any(|m| m == "node-3"),
            "node-3 became master while unhealthy: {masters:?}\n{}",
            cluster.logs(25)
        );
        masters
    };
    let first = cluster
        .wait_for("a master runs start", WAIT, || async {
            match &masters_without_node3().await[..] {
                [one] if first_after(&files.script_log(one), "start", 0).is_some() => {
                    Some(one.clone())
                }
                _ => None,
            }
        })
        .await;
    let other = if first == "node-1" {
        "node-2"
    } else {
        "node-1"
    };
    let (f, o) = (cluster.index(&first), cluster.index(other));
    cluster
        .wait_for("the other healthy node is eligible", WAIT, || async {
            cluster.eligible(o).await.then_some(())
        })
        .await;
    assert!(!cluster.eligible(2).await, "node-3 has no file");
    // What an operator reads: node-3 says it is not eligible and why; the master shows its
    // passing check; the leader shows node-3 as ineligible among its peers.
    let sick = cluster
        .wait_for(
            "node-3's status shows its check's last result",
            WAIT,
            || async {
                cluster
                    .status(2)
                    .await
                    .filter(|s| s["checks"][0]["last_result"].is_string())
            },
        )
        .await;
    assert_eq!(sick["eligible"], false, "{sick}");
    assert_eq!(sick["healthy"], false, "{sick}");
    let why = sick["ineligible_reason"].as_str().unwrap_or_default();
    assert!(why.contains("unhealthy") && why.contains("file"), "{why:?}");
    assert_eq!(sick["checks"][0]["name"], "file", "{sick}");
    assert_eq!(sick["checks"][0]["healthy"], false, "{sick}");
    assert!(
        sick["checks"][0]["last_result"]
            .as_str()
            .is_some_and(|r| r.contains("exit status 1")),
        "{sick}"
    );
    let master = cluster.status(f).await.expect("the master answers /status");
    assert_eq!(master["eligible"], true, "{master}");
    assert_eq!(master["checks"][0]["healthy"], true, "{master}");
    let peers = master["peers"].as_array().cloned().unwrap_or_default();
    let node3 = peers
        .iter()
        .find(|p| p["id"] == "node-3")
        .expect("node-3 is a peer");
    assert_eq!(
        node3["eligible"], false,
        "the leader sees node-3 ineligible: {master}"
    );

    // (b) The master's check fails: the other healthy node starts, after the old one stopped.
    let first_started = first_after(&files.script_log(&first), "start", 0).expect("seen");
    let removed_at = unix_ns();
    let clock = Instant::now();
    std::fs::remove_file(files.ok(&first)).expect("rm");
    let second_started = cluster
        .wait_for("the other node runs start", WAIT, || async {
            masters_without_node3().await;
            first_after(&files.script_log(other), "start", removed_at)
        })
        .await;
    let failover = Duration::from_nanos((second_started - removed_at) as u64);
    eprintln!(
        "{kind:?}: check failure to the new master's start: {} ms (fall {FALL} x {INTERVAL_MS} ms + hand-over; seen after {} ms)",
        failover.as_millis(),
        clock.elapsed().as_millis()
    );
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let first_stopped = first_after(&files.script_log(&first), "stop", first_started)
        .unwrap_or_else(|| {
            panic!(
                "{first} never ran stop after its start\n{}",
                cluster.logs(25)
            )
        });
    assert!(
        first_stopped < second_started,
        "{other} started at {second_started}, before {first} stopped at {first_stopped}"
    );
    cluster
        .wait_for("the other node is the one master", WAIT, || async {
            (masters_without_node3().await == [other]).then_some(())
        })
        .await;

    // (c) The old master is healthy again: without preemption nothing moves. The one bounded
    // wait: 3 s, which covers its rise (2 x 200 ms) and the 2 s hold.
    std::fs::write(files.ok(&first), "").expect("ok file");
    cluster
        .wait_for("the old master is eligible again", WAIT, || async {
            cluster.eligible(f).await.then_some(())
        })
        .await;
    let back_at = unix_ns();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(masters_without_node3().await, [other], "mastership moved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        first_after(&files.script_log(&first), "start", back_at),
        None,
        "the recovered node ran start"
    );

    // (d) node-3 becomes healthy; the best-ranked successor (the old master: a lower id than
    // node-3) gets a start that exits 1, so it must hand over to node-3.
    std::fs::write(files.ok("node-3"), "").expect("ok file");
    cluster
        .wait_for("node-3 is eligible", WAIT, || async {
            cluster.eligible(2).await.then_some(())
        })
        .await;
    std::fs::write(files.fail_start(&first), "").expect("marker");
    let removed_at = unix_ns();
    std::fs::remove_file(files.ok(other)).expect("rm");
    let third_started = cluster
        .wait_for("node-3 runs start", WAIT, || async {
            first_after(&files.script_log("node-3"), "start", removed_at)
        })
        .await;
    let failed = first_after(&files.script_log(&first), "failed-start", removed_at);
    eprintln!(
        "{kind:?}: check failure to node-3's start: {} ms ({first}'s start failed: {})",
        (third_started - removed_at) / 1_000_000,
        failed.is_some()
    );
    let failed = failed.unwrap_or_else(|| {
        panic!(
            "{first} was not handed mastership first (its start never ran)\n{}",
            cluster.logs(25)
        )
    });
    assert!(
        failed < third_started,
        "node-3 started before {first}'s try"
    );
    let other_stopped = first_after(&files.script_log(other), "stop", second_started)
        .expect("the unhealthy master stopped");
    assert!(
        other_stopped < third_started,
        "{other} stopped after node-3 started"
    );
    cluster
        .wait_for("node-3 is the one master", WAIT, || async {
            (cluster.masters().await == ["node-3"]).then_some(())
        })
        .await;
    eprintln!("{:?}", script_lines(&files.script_log(&first)));
}
