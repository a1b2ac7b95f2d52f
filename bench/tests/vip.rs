//! The VIP driver on real kernels: three daemons with a `clustd-vip-driver` each, a client
//! and an intruder, each in its own network namespace on one bridge (`clustd_bench::netns`).
//! The client's kernel decides what works: its neighbour table must follow the master,
//! and a TCP connection to the VIP must reach the master's listener.
//!
//! Skipped, with a message, when not root; CI runs as root.

mod common;

use std::io::Read as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clustd_bench::netns::Topology;
use clustd_bench::vip::{NODES, VIP4, VIP6, VipCluster, VipSetup, connect, listen, sole_holder};
use clustd_drivers::vip::frames::{self, MacAddr, Seen, SeenKind};
use clustd_transport::TransportKind;
use common::{built, clustd_bin};

const COUNT: usize = 3;
const INTERVAL_MS: u64 = 200;
const REFRESH_MS: u64 = 3000;
const RECONCILE_MS: u64 = 500;
const ELECTION: &str = "heartbeat_ms = 100\nelection_timeout_ms = [1000, 2000]";

fn skip() -> bool {
    match clustd_bench::netns::unavailable() {
        // CI runs as root: there a skip would hide the VIP tests, so it is a failure.
        Some(why) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but the VIP tests cannot run: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED: the VIP tests need network namespaces, and here: {why}");
            true
        }
        None => false,
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `limit` saying `what`.
async fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

fn vip_config(socket: &Path, id: &str) -> String {
    format!(
        "daemon = \"unix:{}\"\ndriver_id = \"vip-{id}\"\nstartup_wait_ms = 60000\n\n[[vip]]\naddress = \"{VIP4}/24\"\ninterface = \"eth0\"\n\n[[vip]]\naddress = \"{VIP6}/64\"\ninterface = \"eth0\"\n\n[announce]\ncount = {COUNT}\ninterval_ms = {INTERVAL_MS}\nrefresh_ms = {REFRESH_MS}\nreconcile_ms = {RECONCILE_MS}\n",
        socket.display()
    )
}

/// Every ARP frame and neighbour advertisement the client's `eth0` receives.
struct Capture {
    seen: Arc<Mutex<Vec<(Instant, Seen)>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Capture {
    fn start(topology: &Topology) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (seen.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        topology
            .run_in("client", move || {
                // ETH_P_ALL, in network byte order.
                let protocol = socket2::Protocol::from(i32::from(0x0003u16.to_be()));
                let socket = socket2::Socket::new(
                    socket2::Domain::PACKET,
                    socket2::Type::RAW,
                    Some(protocol),
                )
                .expect("a raw socket in the client namespace");
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("timeout");
                ready_tx.send(()).expect("ready");
                let mut buf = [0u8; 2048];
                while !stopped.load(Ordering::Relaxed) {
                    if let Ok(n) = (&socket).read(&mut buf)
                        && let Some(s) = frames::parse(&buf[..n])
                    {
                        into.lock().expect("lock").push((Instant::now(), s));
                    }
                }
            })
            .expect("capture thread");
        ready_rx.recv().expect("capture started");
        Self { seen, stop }
    }

    /// Announcements for `address` by `mac` (gratuitous ARP claiming the address for
    /// itself, unsolicited advertisements), by kind, with when they arrived.
    fn announcements(&self, mac: MacAddr, address: &str) -> Vec<(Instant, SeenKind)> {
        let address: std::net::IpAddr = address.parse().expect("ip");
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, s)| {
                // Not the kernel's answers to the client's own solicitations.
                let answer = matches!(
                    s.kind,
                    SeenKind::NeighborAdvert {
                        solicited: true,
                        ..
                    }
                );
                s.from == mac
                    && s.claims == mac
                    && s.address == address
                    && s.target == address
                    && !answer
            })
            .map(|(at, s)| (*at, s.kind))
            .collect()
    }
}

/// Records, every few milliseconds, how many nodes hold the IPv4 VIP at once.
struct Sampler {
    worst: Arc<Mutex<(usize, String)>>,
    samples: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(topology: Arc<Topology>) -> Self {
        let worst = Arc::new(Mutex::new((0, String::new())));
        let samples = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, n, s) = (worst.clone(), samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let holders: Vec<&str> = NODES
                    .iter()
                    .copied()
                    .filter(|h| topology.holds(h, VIP4).unwrap_or(false))
                    .collect();
                n.fetch_add(1, Ordering::Relaxed);
                let mut worst = w.lock().expect("lock");
                if holders.len() > worst.0 {
                    *worst = (holders.len(), holders.join(" and "));
                }
            }
        });
        Self {
            worst,
            samples,
            stop,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Prints every log when the test fails.
struct Logs(VipCluster);

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0.logs());
        }
    }
}

impl std::ops::Deref for Logs {
    type Target = VipCluster;
    fn deref(&self) -> &VipCluster {
        &self.0
    }
}

impl std::ops::DerefMut for Logs {
    fn deref_mut(&mut self) -> &mut VipCluster {
        &mut self.0
    }
}

fn mac(text: &str) -> MacAddr {
    text.parse().expect("a MAC")
}

async fn a_vip_follows_the_master(kind: TransportKind) {
    if skip() {
        return;
    }
    let topology =
        Arc::new(Topology::create(&["n1", "n2", "n3", "client", "intruder"]).expect("namespaces"));
    let capture = Capture::start(&topology);
    let _listeners: Vec<_> = NODES
        .iter()
        .map(|n| listen(&topology, n).expect("listener"))
        .collect();
    let setup = VipSetup {
        kind,
        election: ELECTION.into(),
        announce: format!(
            "count = {COUNT}\ninterval_ms = {INTERVAL_MS}\nrefresh_ms = {REFRESH_MS}\nreconcile_ms = {RECONCILE_MS}"
        ),
        clustd_bin: clustd_bin(),
        driver_bin: built("clustd-vip-driver"),
    };
    let mut cluster = Logs(VipCluster::start(&topology, &setup).expect("cluster starts"));

    // The master holds both addresses; the client reaches it on both.
    let master = wait_for(Duration::from_secs(60), "one node holding the VIPs", || {
        sole_holder(&topology)
    })
    .await;
    let took = Instant::now();
    let master_mac = mac(&topology.host(master).mac);
    for vip in [VIP4, VIP6] {
        let name = wait_for(
            Duration::from_secs(10),
            "a TCP connection to the VIP",
            || connect(&topology, "client", vip),
        )
        .await;
        assert_eq!(name, master, "{vip} reaches the master");
        assert_eq!(
            topology
                .neighbour("client", vip)
                .expect("ip neigh")
                .as_deref(),
            Some(topology.host(master).mac.as_str()),
            "the client's neighbour entry for {vip} is the master's MAC"
        );
    }

    // Announcements: `count` of each form, `interval_ms` apart, then the refresh.
    let refreshed = wait_for(
        Duration::from_millis(REFRESH_MS + 10_000),
        "the refresh after the first burst",
        || {
            let a = capture.announcements(master_mac, VIP6);
            (a.len() > COUNT).then_some(a)
        },
    )
    .await;
    let burst_end = refreshed[0].0 + Duration::from_millis(REFRESH_MS / 2);
    let v4 = capture.announcements(master_mac, VIP4);
    for (kind, name) in [
        (SeenKind::ArpRequest, "gratuitous ARP request"),
        (SeenKind::ArpReply, "gratuitous ARP reply"),
    ] {
        let all: Vec<Instant> = v4
            .iter()
            .filter(|(_, k)| *k == kind)
            .map(|(at, _)| *at)
            .collect();
        let burst = all.iter().filter(|at| **at <= burst_end).count();
        assert_eq!(burst, COUNT, "{name}s in the first burst: {all:?}");
        assert!(all.len() > COUNT, "a refresh {name} follows");
        let gap = all[COUNT] - all[COUNT - 1];
        assert!(
            gap >= Duration::from_millis(REFRESH_MS / 2),
            "the refresh comes refresh_ms after the burst, not {gap:?}"
        );
    }
    let nas: Vec<Instant> = refreshed
        .iter()
        .filter(|(_, k)| {
            *k == SeenKind::NeighborAdvert {
                overrides: true,
                solicited: false,
            }
        })
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(
        nas.len(),
        refreshed.len(),
        "every NA overrides and is unsolicited: {refreshed:?}"
    );
    assert_eq!(
        nas.iter().filter(|at| **at <= burst_end).count(),
        COUNT,
        "NAs in the first burst"
    );
    let first_gap = nas[1] - nas[0];
    assert!(
        first_gap >= Duration::from_millis(INTERVAL_MS / 2),
        "the burst is interval_ms apart, not {first_gap:?}"
    );
    eprintln!(
        "master {master} announced {COUNT} + refresh {:?} after taking the VIPs",
        took.elapsed()
    );

    // SIGKILL the master's daemon; its driver stays and must let go at its lease end.
    let sampler = Sampler::start(topology.clone());
    let m = NODES.iter().position(|n| *n == master).expect("a node");
    let killed = Instant::now();
    cluster.kill_daemon(m).await.expect("SIGKILL");
    let (new_master, held_at) = wait_for(
        Duration::from_secs(30),
        "a new master holding the VIPs",
        || {
            sole_holder(&topology)
                .filter(|h| *h != master)
                .map(|h| (h, Instant::now()))
        },
    )
    .await;
    let new_mac = topology.host(new_master).mac.clone();
    let flipped_at = wait_for(
        Duration::from_secs(5),
        "the client's neighbour entry to follow",
        || (topology.neighbour("client", VIP4).ok()?? == new_mac).then(Instant::now),
    )
    .await;
    let name = wait_for(
        Duration::from_secs(5),
        "a TCP connection to the new master",
        || connect(&topology, "client", VIP4),
    )
    .await;
    let reached_at = Instant::now();
    assert_eq!(name, new_master, "the VIP reaches the new master");
    assert!(
        reached_at.duration_since(held_at) <= Duration::from_secs(1),
        "the client reached the new master {:?} after it took the VIP (kill to take-over {:?}, to neighbour flip {:?})",
        reached_at.duration_since(held_at),
        held_at.duration_since(killed),
        flipped_at.duration_since(killed)
    );
    eprintln!(
        "kill -> {new_master} holds the VIP {:?}, client neighbour flipped {:?}, TCP reached {:?}",
        held_at.duration_since(killed),
        flipped_at.duration_since(killed),
        reached_at.duration_since(killed)
    );
    assert!(
        !topology.holds(master, VIP4).expect("ip") && !topology.holds(master, VIP6).expect("ip"),
        "the old master let go"
    );
    let old_driver = cluster.log(&format!("vip-{master}"));
    assert!(
        old_driver.contains("lease-expired") && old_driver.contains("released"),
        "the old master's driver released the VIPs at its lease end:\n{old_driver}"
    );

    // Someone deletes the address on the master: re-added within reconcile_ms.
    let before = capture.announcements(mac(&new_mac), VIP4).len();
    topology
        .ip(
            new_master,
            &["addr", "del", &format!("{VIP4}/24"), "dev", "eth0"],
        )
        .expect("ip addr del");
    let deleted = Instant::now();
    wait_for(
        Duration::from_millis(RECONCILE_MS + 5_000),
        "the VIP to be re-added",
        || topology.holds(new_master, VIP4).ok()?.then_some(()),
    )
    .await;
    let readded = deleted.elapsed();
    wait_for(
        Duration::from_secs(5),
        "the re-added VIP to be announced",
        || (capture.announcements(mac(&new_mac), VIP4).len() > before).then_some(()),
    )
    .await;
    assert!(
        cluster
            .log(&format!("vip-{new_master}"))
            .contains("is missing on the master"),
        "the repair is logged"
    );
    eprintln!("re-added {readded:?} after it was deleted (reconcile_ms = {RECONCILE_MS})");
    sampler.stop.store(true, Ordering::Relaxed);
    let (most, who) = sampler.worst.lock().expect("lock").clone();
    let samples = sampler.samples.load(Ordering::Relaxed);
    assert!(samples > 10, "the sampler ran ({samples} samples)");
    assert!(
        most <= 1,
        "{who} held {VIP4} at the same time ({samples} samples)"
    );

    // An intruder answering for the VIP: detected and reported by the master.
    let intruder_mac = topology.host("intruder").mac.clone();
    topology
        .ip(
            "intruder",
            &["addr", "add", &format!("{VIP4}/24"), "dev", "eth0"],
        )
        .expect("ip addr add on the intruder");
    let driver_log = format!("vip-{new_master}");
    wait_for(
        Duration::from_secs(10),
        "the master's driver to see the intruder",
        || {
            let log = cluster.log(&driver_log);
            (log.contains("ERROR") && log.contains(&format!("another host ({intruder_mac})")))
                .then_some(())
        },
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the master's daemon to hear of it",
        || {
            let log = cluster.log(new_master);
            log.lines()
                .any(|l| l.contains("UNHEALTHY") && l.contains("conflict") && l.contains(VIP4))
                .then_some(())
        },
    )
    .await;
    // The health change goes to every driver (the notify driver's event); the other live
    // node, now asked to take over, refuses the claimed address in its acknowledgement.
    let other = NODES
        .iter()
        .copied()
        .find(|n| *n != master && *n != new_master)
        .expect("a third node");
    wait_for(
        Duration::from_secs(20),
        "the next master to refuse the claimed VIP",
        || {
            let log = cluster.log(other);
            log.lines()
                .any(|l| {
                    l.contains("start FAILED")
                        && l.contains(&format!("another host ({intruder_mac})"))
                })
                .then_some(())
        },
    )
    .await;
    assert!(
        !topology.holds(other, VIP4).expect("ip"),
        "a VIP another host answers for is not taken"
    );
    drop(cluster);
    drop(capture);
}

// One test per transport, named `quic::…` and `websocket::…` as in the daemon's tests.
clustd_transport::both_transports!(a_vip_follows_the_master);

/// Runs the VIP driver alone in `host`'s namespace with `config`; waits for it to exit
/// or for `until` to hold, then kills it. Its exit status (None: still running) and log.
async fn driver_alone(
    topology: &Topology,
    host: &str,
    dir: &Path,
    config: &str,
    until: impl Fn(&str) -> bool,
) -> (Option<std::process::ExitStatus>, String) {
    let file = dir.join("vip.toml");
    std::fs::write(&file, config).expect("config");
    let log = dir.join("vip.log");
    let _ = std::fs::remove_file(&log);
    let mut child = topology
        .command(host, built("clustd-vip-driver"))
        .arg("--config")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(&log))
        .kill_on_drop(true)
        .spawn()
        .expect("driver starts");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if until(&std::fs::read_to_string(&log).unwrap_or_default()) {
            break None;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the driver neither exited nor got there:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill().await;
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_removes_a_vip_it_left_and_refuses_one_it_did_not_add() {
    if skip() {
        return;
    }
    let topology = Topology::create(&["n1"]).expect("namespaces");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = vip_config(&dir.path().join("no-daemon.sock"), "n1");

    // A VIP left behind by an earlier run (added with the driver's mark, as it does).
    topology
        .run_in("n1", || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let netlink = clustd_drivers::vip::netlink::Netlink::connect().expect("netlink");
                let links = netlink.links().await.expect("links");
                let eth0 = links.iter().find(|l| l.name == "eth0").expect("eth0");
                for (vip, prefix) in [(VIP4, 24), (VIP6, 64)] {
                    netlink
                        .add(eth0.index, vip.parse().expect("ip"), prefix)
                        .await
                        .expect("add a marked address");
                }
            });
        })
        .expect("thread")
        .join()
        .expect("added");
    assert!(topology.holds("n1", VIP4).expect("ip") && topology.holds("n1", VIP6).expect("ip"));
    // The driver removes them before it even looks for its daemon (there is none here),
    // logging each, and keeps running.
    let gone =
        |t: &Topology| !t.holds("n1", VIP4).unwrap_or(true) && !t.holds("n1", VIP6).unwrap_or(true);
    let (status, log) = driver_alone(&topology, "n1", dir.path(), &config, |log| {
        log.matches("left on eth0 by an earlier run").count() == 2
            && log.contains("driver started")
            && gone(&topology)
    })
    .await;
    assert_eq!(status, None, "the driver keeps running:\n{log}");
    assert!(gone(&topology), "the stale VIPs stay gone");

    // One configured by hand: an error that says what to do, and the address stays.
    topology
        .ip("n1", &["addr", "add", &format!("{VIP4}/24"), "dev", "eth0"])
        .expect("ip addr add");
    let (status, log) = driver_alone(&topology, "n1", dir.path(), &config, |_| false).await;
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(
        log.contains("already configured on eth0, and not by clustd-vip-driver")
            && log.contains(&format!("ip addr del {VIP4}/24 dev eth0")),
        "{log}"
    );
    assert!(
        topology.holds("n1", VIP4).expect("ip"),
        "someone else's address is left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_teach() {
    if skip() {
        return;
    }
    let topology = Topology::create(&["n1"]).expect("namespaces");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = vip_config(&dir.path().join("no-daemon.sock"), "n1");

    let (status, log) = driver_alone(
        &topology,
        "n1",
        dir.path(),
        &config.replace("interface = \"eth0\"", "interface = \"eth9\""),
        |_| false,
    )
    .await;
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(
        log.contains("there is no interface `eth9`; this machine has: lo, eth0"),
        "{log}"
    );

    // Without the capabilities (as nobody): the fix, not an EPERM.
    use std::os::unix::fs::PermissionsExt as _;
    let file = dir.path().join("vip.toml");
    std::fs::write(&file, &config).expect("config");
    for (path, mode) in [(dir.path(), 0o755), (file.as_path(), 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let out = topology
        .command("n1", "setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(built("clustd-vip-driver"))
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .expect("setpriv runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("lacks CAP_NET_ADMIN and CAP_NET_RAW")
            && text.contains("packaging/clustd-vip-driver.service"),
        "{text}"
    );
}
