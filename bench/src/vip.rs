//! `clustd-bench failover --vip`: three daemons with a `clustd-vip-driver` each, in network
//! namespaces on one bridge ([`crate::netns`]), and a client namespace that measures what
//! a client sees: from the SIGKILL of the master daemon to the client's neighbour entry for
//! the VIP naming the new master's MAC, and to a TCP connection to the VIP answered by the
//! new master. The same cluster ([`VipCluster`]) runs the VIP driver's tests.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clustd_transport::TransportKind;
use serde::Serialize;
use tokio::process::Child;

use clustd::local::{LocalFiles, LocalPeer, node_config};

use crate::BenchError;
use crate::netns::Topology;

/// The IPv4 VIP.
pub const VIP4: &str = "198.18.0.100";
/// The IPv6 VIP.
pub const VIP6: &str = "fd00::100";
/// The port every node listens on (all addresses), answering with its name.
pub const PORT: u16 = 8000;
/// The daemons' cluster port, on each node's own address.
pub const CLUSTER_PORT: u16 = 7400;
/// The node hosts.
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// How a [`VipCluster`] is set up.
#[derive(Clone, Debug)]
pub struct VipSetup {
    /// The daemons' transport (the drivers use it too).
    pub kind: TransportKind,
    /// The body of `[election]`.
    pub election: String,
    /// The body of the drivers' `[announce]` (empty: the defaults).
    pub announce: String,
    /// `clustd`.
    pub clustd_bin: PathBuf,
    /// `clustd-vip-driver`.
    pub driver_bin: PathBuf,
}

fn log_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Three daemons with a VIP driver each, one per node namespace (`n1`..`n3` of the
/// topology), holding [`VIP4`]/24 and [`VIP6`]/64 on `eth0`. The processes are killed on drop.
pub struct VipCluster {
    /// Configs, keys, data and logs (`n1.log`, `vip-n1.log`, ...).
    pub dir: tempfile::TempDir,
    daemons: Vec<Option<Child>>,
    drivers: Vec<Option<Child>>,
    configs: Vec<PathBuf>,
    setup: VipSetup,
}

impl VipCluster {
    /// Writes the configs and starts the six processes.
    pub fn start(topology: &Topology, setup: &VipSetup) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("clustd-vip-").tempdir()?;
        let path = dir.path().to_path_buf();
        let clustd::local::Credentials {
            secret,
            driver_secret,
            key_files,
            keys,
        } = clustd::local::write_credentials(&path, &NODES)?;
        let at = |i: usize| SocketAddr::new(topology.host(NODES[i]).v4.into(), CLUSTER_PORT);
        let transport = setup.kind.as_str();
        let mut cluster = Self {
            dir,
            daemons: Vec::new(),
            drivers: Vec::new(),
            configs: Vec::new(),
            setup: setup.clone(),
        };
        for (i, node) in NODES.iter().enumerate() {
            let peers: Vec<LocalPeer> = (0..NODES.len())
                .filter(|j| *j != i)
                .map(|j| LocalPeer {
                    id: NODES[j].to_owned(),
                    addr: at(j),
                    key: keys[j],
                })
                .collect();
            let files = LocalFiles {
                secret: &secret,
                driver_secret: &driver_secret,
                node_key: &key_files[i],
            };
            let rest = format!("{}\n", setup.election);
            let text = node_config(
                node,
                at(i),
                &peers,
                setup.kind,
                &files,
                &path.join(node),
                &rest,
            );
            let config = path.join(format!("{node}.toml"));
            std::fs::write(&config, text)?;
            cluster.configs.push(config);
            cluster.daemons.push(None);
            cluster.start_daemon(topology, i)?;
            // The driver reaches its daemon over the transport, as in the README's example.
            let vip = path.join(format!("vip-{node}.toml"));
            std::fs::write(
                &vip,
                format!(
                    "daemon = \"{}\"\ntransport = \"{transport}\"\nsecret_file = \"{}\"\ndaemon_key = \"{}\"\ndriver_id = \"vip-{node}\"\nstartup_wait_ms = 60000\n\n[[vip]]\naddress = \"{VIP4}/24\"\ninterface = \"eth0\"\n\n[[vip]]\naddress = \"{VIP6}/64\"\ninterface = \"eth0\"\n\n[announce]\n{}\n",
                    at(i),
                    driver_secret.display(),
                    keys[i],
                    setup.announce
                ),
            )?;
            let driver = topology
                .command(node, &setup.driver_bin)
                .arg("--config")
                .arg(&vip)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&path.join(format!("vip-{node}.log")))?)
                .kill_on_drop(true)
                .spawn()?;
            cluster.drivers.push(Some(driver));
        }
        Ok(cluster)
    }

    /// (Re)starts node `i`'s daemon.
    pub fn start_daemon(&mut self, topology: &Topology, i: usize) -> std::io::Result<()> {
        let node = NODES[i];
        let daemon = topology
            .command(node, &self.setup.clustd_bin)
            .args(["run", "--config"])
            .arg(&self.configs[i])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir.path().join(format!("{node}.log")))?)
            .kill_on_drop(true)
            .spawn()?;
        self.daemons[i] = Some(daemon);
        Ok(())
    }

    /// SIGKILLs node `i`'s daemon (its driver keeps running) and reaps it.
    pub async fn kill_daemon(&mut self, i: usize) -> std::io::Result<()> {
        if let Some(mut daemon) = self.daemons[i].take() {
            daemon.start_kill()?;
            daemon.wait().await?;
        }
        Ok(())
    }

    /// The log `name` (`n1`, `vip-n1`, ...) so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for node in NODES {
            for name in [node.to_owned(), format!("vip-{node}")] {
                all.push_str(&format!("\n===== {name}.log\n{}", self.log(&name)));
            }
        }
        all
    }
}

impl Drop for VipCluster {
    fn drop(&mut self) {
        for child in self
            .daemons
            .iter_mut()
            .chain(self.drivers.iter_mut())
            .flatten()
        {
            let _ = child.start_kill();
        }
    }
}

/// A TCP listener on every address of a host's namespace that answers with the host's
/// name; stops on drop.
pub struct Listener {
    stop: Arc<AtomicBool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts a [`Listener`] on [`PORT`] in `host`'s namespace.
pub fn listen(topology: &Topology, host: &str) -> std::io::Result<Listener> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let name = host.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    topology.run_in(host, move || {
        // Dual-stack: the VIP's IPv4 and IPv6 addresses, whichever this node holds.
        let listener = match TcpListener::bind(("::", PORT)).and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(l)
        }) {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        while !stopped.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.write_all(name.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    })?;
    ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("listener thread died"))??;
    Ok(Listener { stop })
}

/// Connects from `from`'s namespace to `address`:[`PORT`]: the name the listener sent.
pub fn connect(topology: &Topology, from: &str, address: &str) -> Option<String> {
    let addr = SocketAddr::new(address.parse().ok()?, PORT);
    topology
        .run_in(from, move || {
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
            conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            let mut name = String::new();
            conn.read_to_string(&mut name).ok()?;
            Some(name)
        })
        .ok()?
        .join()
        .ok()?
}

/// The node that holds both VIPs, when exactly one node holds any.
pub fn sole_holder(topology: &Topology) -> Option<&'static str> {
    let holds = |h: &str, a: &str| topology.holds(h, a).unwrap_or(false);
    let any: Vec<&'static str> = NODES
        .iter()
        .copied()
        .filter(|h| holds(h, VIP4) || holds(h, VIP6))
        .collect();
    match any[..] {
        [one] if holds(one, VIP4) && holds(one, VIP6) => Some(one),
        _ => None,
    }
}

/// Polls `f` every 5 ms until it returns `Some`, or fails after `limit` saying `what`.
async fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, BenchError> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            return Err(BenchError::Stuck(format!(
                "{what} (after {})",
                clustd::status::human_duration(limit)
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What `clustd-bench failover --vip` measures.
#[derive(Clone, Debug)]
pub struct VipOptions {
    /// Rounds per transport.
    pub rounds: usize,
    /// Transports to measure.
    pub transports: Vec<TransportKind>,
    /// `[election]` body.
    pub election: String,
    /// `clustd`.
    pub clustd_bin: PathBuf,
    /// `clustd-vip-driver`.
    pub driver_bin: PathBuf,
    /// Print a line per round to stderr.
    pub progress: bool,
}

/// One transport's results, in milliseconds from the SIGKILL.
#[derive(Clone, Debug, Serialize)]
pub struct VipReport {
    /// `quic` or `websocket`.
    pub transport: &'static str,
    /// The `[election]` settings.
    pub election: String,
    /// Kill → the new master holds both VIPs.
    pub held_ms: Vec<f64>,
    /// Kill → the client's neighbour entry names the new master's MAC.
    pub neighbour_ms: Vec<f64>,
    /// Kill → a TCP connection to the VIP is answered by the new master.
    pub tcp_ms: Vec<f64>,
    /// Samples in which two nodes held the IPv4 VIP at once (must be 0).
    pub overlaps: usize,
    /// Samples taken.
    pub samples: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the rounds for every transport.
pub async fn run(opts: &VipOptions) -> Result<Vec<VipReport>, BenchError> {
    if let Some(why) = crate::netns::unavailable() {
        return Err(BenchError::Stuck(format!(
            "--vip needs network namespaces: {why}"
        )));
    }
    let mut reports = Vec::new();
    for kind in &opts.transports {
        reports.push(run_one(opts, *kind).await?);
    }
    Ok(reports)
}

async fn run_one(opts: &VipOptions, kind: TransportKind) -> Result<VipReport, BenchError> {
    let topology = Arc::new(Topology::create(&["n1", "n2", "n3", "client"])?);
    let _listeners = NODES
        .iter()
        .map(|n| listen(&topology, n))
        .collect::<std::io::Result<Vec<_>>>()?;
    let setup = VipSetup {
        kind,
        election: opts.election.clone(),
        announce: String::new(),
        clustd_bin: opts.clustd_bin.clone(),
        driver_bin: opts.driver_bin.clone(),
    };
    let mut cluster = VipCluster::start(&topology, &setup)?;
    let transport = kind.as_str();
    let mut report = VipReport {
        transport,
        election: opts.election.replace('\n', ", "),
        held_ms: Vec::new(),
        neighbour_ms: Vec::new(),
        tcp_ms: Vec::new(),
        overlaps: 0,
        samples: 0,
    };
    // Samples who holds the IPv4 VIP, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (topology, stop) = (topology.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut overlaps, mut samples) = (0usize, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let holders = NODES
                    .iter()
                    .filter(|h| topology.holds(h, VIP4).unwrap_or(false))
                    .count();
                samples += 1;
                if holders > 1 {
                    overlaps += 1;
                }
            }
            (overlaps, samples)
        })
    };
    let result = async {
        for round in 1..=opts.rounds {
            let master = wait_for(Duration::from_secs(60), "one node holding the VIPs", || {
                sole_holder(&topology)
            })
            .await?;
            // The client talks to the master first, so its neighbour entry names it.
            let name = wait_for(Duration::from_secs(10), "the client reaching the master", || {
                connect(&topology, "client", VIP4)
            })
            .await?;
            if name != master {
                return Err(BenchError::Stuck(format!(
                    "the VIP reached {name}, not the master {master}"
                )));
            }
            let old_mac = topology.host(master).mac.clone();
            let m = NODES.iter().position(|n| *n == master).expect("a node");
            let killed = Instant::now();
            cluster.kill_daemon(m).await?;
            let (new_master, held) = wait_for(Duration::from_secs(30), "a new master holding the VIPs", || {
                sole_holder(&topology)
                    .filter(|h| *h != master)
                    .map(|h| (h, killed.elapsed()))
            })
            .await?;
            let new_mac = topology.host(new_master).mac.clone();
            let neighbour = wait_for(Duration::from_secs(10), "the client's neighbour entry to follow", || {
                let now = topology.neighbour("client", VIP4).ok()??;
                (now != old_mac && now == new_mac).then(|| killed.elapsed())
            })
            .await?;
            let tcp = wait_for(Duration::from_secs(10), "a TCP connection to the new master", || {
                (connect(&topology, "client", VIP4)? == new_master).then(|| killed.elapsed())
            })
            .await?;
            if opts.progress {
                eprintln!(
                    "{transport} round {round}/{}: {master} killed; {new_master} held the VIPs after {:.0} ms, client's neighbour entry {:.0} ms, TCP {:.0} ms",
                    opts.rounds,
                    ms(held),
                    ms(neighbour),
                    ms(tcp)
                );
            }
            report.held_ms.push(ms(held));
            report.neighbour_ms.push(ms(neighbour));
            report.tcp_ms.push(ms(tcp));
            // The old node comes back as a backup: wait until it follows the leader and its
            // driver acknowledged (the next round needs all three for a quorum of two).
            let from = cluster.log(master).len();
            cluster.start_daemon(&topology, m)?;
            wait_for(Duration::from_secs(30), "the restarted daemon to follow the leader with its driver", || {
                let log = cluster.log(master);
                let tail = log.get(from..).unwrap_or_default();
                (tail.contains("leader changed") && tail.contains(&format!("driver acknowledged driver=vip-{master}")))
                    .then_some(())
            })
            .await?;
        }
        Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let (overlaps, samples) = sampler.join().unwrap_or((usize::MAX, 0));
    report.overlaps = overlaps;
    report.samples = samples;
    if let Err(e) = result {
        return Err(BenchError::Stuck(format!("{e}\n{}", cluster.logs())));
    }
    Ok(report)
}

/// The results as a table.
pub fn render(reports: &[VipReport]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>6} {:>22} {:>22} {:>22} {:>9}",
        "transport",
        "rounds",
        "VIP held p50/p99/max",
        "neighbour p50/p99/max",
        "TCP p50/p99/max",
        "overlaps"
    );
    for r in reports {
        let stats = |v: &[f64]| {
            let mut s = v.to_vec();
            s.sort_by(f64::total_cmp);
            if s.is_empty() {
                return "-".to_owned();
            }
            format!(
                "{:.0}/{:.0}/{:.0} ms",
                crate::percentile(&s, 50.0),
                crate::percentile(&s, 99.0),
                s[s.len() - 1]
            )
        };
        let _ = writeln!(
            out,
            "{:<10} {:>6} {:>22} {:>22} {:>22} {:>9}",
            r.transport,
            r.tcp_ms.len(),
            stats(&r.held_ms),
            stats(&r.neighbour_ms),
            stats(&r.tcp_ms),
            format!("{}/{}", r.overlaps, r.samples)
        );
    }
    if let Some(r) = reports.first() {
        let _ = writeln!(
            out,
            "election: {}; from the SIGKILL of the master daemon; overlaps: samples with two holders of the IPv4 VIP / samples",
            r.election
        );
    }
    out
}
