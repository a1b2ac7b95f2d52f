//! `[fence] watchdog` between real processes, with a fake device: each node's "watchdog" is a
//! FIFO whose every byte the test records with the machine's wall clock (`1` = a feed, `V` =
//! the magic close, then the writer's close).
//!
//! The master is fed while it leads; the backups never arm theirs. Then the master's daemon
//! and driver are both frozen (SIGSTOP): nothing there can stop the service or fence it, and
//! only the watchdog would reset the machine. The new master's `start` must come after the
//! old master's last feed plus the watchdog timeout, so a real watchdog would have reset the
//! old machine first. Thawed, the old master learns it lost, its driver stops, and it
//! disarms (magic close); the new master disarms at a graceful stop (SIGTERM).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clustd_transport::TransportKind;
use common::procs::{NodeSpec, ProcCluster, script_lines};

const WAIT: Duration = Duration::from_secs(60);
/// ET_min 3000 ms gives a lease of 2524 ms: a 2000 ms watchdog can be fed (2000 + 100 ≤ 2524 + 200).
const ELECTION: &str = "heartbeat_ms = 100\nelection_timeout_ms = [3000, 6000]";
const WATCHDOG_MS: u128 = 2000;

clustd_transport::both_transports!(
    the_watchdog_is_fed_only_while_master_and_fires_before_a_new_master_starts
);

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

/// What a fake device saw: `(unix ns, byte)`, with `b'E'` for the writer's close.
type Seen = Arc<Mutex<Vec<(u128, u8)>>>;

/// Makes a FIFO at `path` and reads it forever in a thread (reopening after each close).
fn fake_device(path: &Path) -> Seen {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
    let seen: Seen = Arc::default();
    let (path, out) = (path.to_path_buf(), seen.clone());
    std::thread::spawn(move || {
        loop {
            let Ok(mut fifo) = std::fs::File::open(&path) else {
                return;
            };
            let mut byte = [0u8; 1];
            while let Ok(1) = fifo.read(&mut byte) {
                out.lock().expect("lock").push((unix_ns(), byte[0]));
            }
            out.lock().expect("lock").push((unix_ns(), b'E'));
        }
    });
    seen
}

fn feeds(seen: &Seen) -> Vec<u128> {
    let s = seen.lock().expect("lock");
    s.iter()
        .filter(|(_, b)| *b == b'1')
        .map(|(t, _)| *t)
        .collect()
}

/// Whether the device saw the magic close followed by the close.
fn disarmed(seen: &Seen) -> bool {
    let s = seen.lock().expect("lock");
    s.windows(2).any(|w| w[0].1 == b'V' && w[1].1 == b'E')
}

fn first_start(log: &Path, node: &str, after: u128) -> Option<u128> {
    script_lines(log)
        .into_iter()
        .find(|(n, a, at)| n == node && a == "start" && *at > after)
        .map(|(_, _, at)| at)
}

async fn the_watchdog_is_fed_only_while_master_and_fires_before_a_new_master_starts(
    kind: TransportKind,
) {
    let dir = tempfile::Builder::new()
        .prefix("clustd-watchdog-")
        .tempdir()
        .expect("tempdir");
    let log = dir.path().join("scripts.log");
    let devices: Vec<PathBuf> = (1..=3)
        .map(|i| dir.path().join(format!("node-{i}.watchdog")))
        .collect();
    let seen: Vec<Seen> = devices.iter().map(|d| fake_device(d)).collect();
    let specs: Vec<NodeSpec> = (1..=3)
        .map(|i| {
            let id = format!("node-{i}");
            NodeSpec {
                daemon_toml: format!(
                    "[fence]\nwatchdog = \"{}\"\nwatchdog_timeout_ms = {WATCHDOG_MS}\n",
                    devices[i - 1].display()
                ),
                start: format!("echo \"{id} start $(date +%s%N)\" >> '{}'", log.display()),
                stop: format!("echo \"{id} stop $(date +%s%N)\" >> '{}'", log.display()),
                socket: false,
            }
        })
        .collect();
    let cluster = ProcCluster::start(dir, kind, ELECTION, &specs)
        .await
        .expect("processes start");
    eprintln!("work dir {}", cluster.dir.path().display());
    let old = cluster
        .wait_for("a master runs start", WAIT, || async {
            match &cluster.masters().await[..] {
                [one] if first_start(&log, one, 0).is_some() => Some(one.clone()),
                _ => None,
            }
        })
        .await;
    let o = cluster.index(&old);
    cluster
        .wait_for("the master feeds its watchdog", WAIT, || async {
            (feeds(&seen[o]).len() >= 5).then_some(())
        })
        .await;
    for (i, s) in seen.iter().enumerate().filter(|(i, _)| *i != o) {
        assert!(
            s.lock().expect("lock").is_empty(),
            "backup node-{} armed its watchdog",
            i + 1
        );
    }

    // The whole machine freezes: daemon and driver.
    cluster.signal_daemon(o, "STOP");
    cluster.signal_driver(o, "STOP");
    let frozen_at = unix_ns();
    let (new, started) = cluster
        .wait_for("a new master runs start", WAIT, || async {
            cluster.masters().await.into_iter().find_map(|m| {
                (m != old)
                    .then(|| first_start(&log, &m, frozen_at).map(|at| (m.clone(), at)))
                    .flatten()
            })
        })
        .await;
    let last_feed = *feeds(&seen[o]).last().expect("fed");
    let margin_ms = (started as i128 - (last_feed + WATCHDOG_MS * 1_000_000) as i128) / 1_000_000;
    eprintln!(
        "new master {new} started {margin_ms} ms after the old one's watchdog would have fired"
    );
    assert!(
        last_feed + WATCHDOG_MS * 1_000_000 <= started,
        "the watchdog (last fed at {last_feed}) would fire {} ms after {new} started at {started}",
        -margin_ms
    );
    assert!(!disarmed(&seen[o]), "a frozen daemon cannot disarm");

    // Thawed: it learns it lost, its driver stops the service, then it disarms.
    cluster.signal_daemon(o, "CONT");
    cluster.signal_driver(o, "CONT");
    cluster
        .wait_for("the old master disarms its watchdog", WAIT, || async {
            disarmed(&seen[o]).then_some(())
        })
        .await;

    // The new master feeds, and disarms at a graceful stop.
    let n = cluster.index(&new);
    cluster
        .wait_for("the new master feeds its watchdog", WAIT, || async {
            (feeds(&seen[n]).len() >= 3).then_some(())
        })
        .await;
    cluster.signal_daemon(n, "TERM");
    cluster
        .wait_for(
            "the new master disarms at its graceful stop",
            WAIT,
            || async { disarmed(&seen[n]).then_some(()) },
        )
        .await;
}
