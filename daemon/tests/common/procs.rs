//! Real processes on loopback: `clustd run` daemons, each with a `clustd-shell-driver`, in
//! one temporary directory; their state read over the admin API.
//!
//! The in-process [`clustd::local::LocalCluster`] cannot show what only separate processes
//! do (a driver's scripts racing another machine's, exit codes, real `[[check]]` commands),
//! so these tests pay for child processes. The configs come from the same
//! [`clustd::local::node_config`] the in-process clusters use.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use clustd::admin::Client;
use clustd::local::{LocalFiles, LocalPeer, free_port, node_config};
use clustd_bench::proxy::Network;
use clustd_transport::TransportKind;
use tokio::process::{Child, Command};

/// The shell driver binary beside `clustd` in the target dir.
pub(crate) fn driver_bin() -> PathBuf {
    built_driver("clustd-shell-driver")
}

/// The driver binary `name` beside `clustd` in the target dir: every driver binary is built
/// (or brought up to date: a stale driver may not speak the current wire format) once per
/// test run.
pub(crate) fn built_driver(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let clustd = clustd_bin();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "clustd-drivers", "--bins"]);
        if clustd
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "release")
        {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building the driver binaries failed");
    });
    clustd.with_file_name(name)
}

/// The `clustd` binary under test.
pub(crate) fn clustd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clustd"))
}

/// What one node runs: extra daemon TOML after `[election]` (e.g. `[[check]]`
/// and `[health]`), and its driver's `start` and `stop` scripts.
pub(crate) struct NodeSpec {
    /// Appended to the daemon's config.
    pub(crate) daemon_toml: String,
    /// `script.start` (run by `/bin/sh`).
    pub(crate) start: String,
    /// `script.stop`.
    pub(crate) stop: String,
    /// The driver connects on the daemon's local driver socket (`<data_dir>/driver.sock`)
    /// instead of over the transport.
    pub(crate) socket: bool,
}

/// One daemon and its shell driver, both child processes (killed on drop).
pub(crate) struct ProcNode {
    /// `node-1`, `node-2`, …
    pub(crate) id: String,
    /// Its admin API (on its admin socket).
    pub(crate) admin: Client,
    /// The daemon's stderr (its log).
    pub(crate) daemon_log: PathBuf,
    /// The driver's stderr.
    pub(crate) driver_log: PathBuf,
    _daemon: Child,
    _driver: Child,
}

/// `n` real daemons with one shell driver each, in `dir`.
pub(crate) struct ProcCluster {
    /// Configs, keys, data and logs (deleted on drop, after the processes are killed).
    pub(crate) dir: tempfile::TempDir,
    /// By index: node `i` is `node-{i+1}`.
    pub(crate) nodes: Vec<ProcNode>,
    /// The peer links through a fault proxy, when started with [`ProcCluster::start_cuttable`].
    network: Option<Network>,
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn log_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl ProcCluster {
    /// Configures and starts one daemon and one driver per spec (`node-1`… in order);
    /// `election` is the body of `[election]`.
    pub(crate) async fn start(
        dir: tempfile::TempDir,
        kind: TransportKind,
        election: &str,
        specs: &[NodeSpec],
    ) -> std::io::Result<Self> {
        Self::start_with(dir, kind, election, specs, false, &[]).await
    }

    /// Like [`ProcCluster::start`], with every peer link through a fault proxy, so that
    /// [`ProcCluster::isolate`] can cut a node off while its driver stays connected.
    pub(crate) async fn start_cuttable(
        dir: tempfile::TempDir,
        kind: TransportKind,
        election: &str,
        specs: &[NodeSpec],
    ) -> std::io::Result<Self> {
        Self::start_with(dir, kind, election, specs, true, &[]).await
    }

    async fn start_with(
        dir: tempfile::TempDir,
        kind: TransportKind,
        election: &str,
        specs: &[NodeSpec],
        cuttable: bool,
        daemon_env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let path = dir.path();
        let ids: Vec<String> = (1..=specs.len()).map(|i| format!("node-{i}")).collect();
        let clustd::local::Credentials {
            secret,
            driver_secret,
            key_files,
            keys,
        } = clustd::local::write_credentials(path, &ids)?;
        let ports = ids
            .iter()
            .map(|_| free_port())
            .collect::<std::io::Result<Vec<_>>>()?;
        let network = if cuttable {
            Some(Network::new(kind, &ports).await?)
        } else {
            None
        };
        let transport = kind.as_str();
        let mut nodes = Vec::new();
        for (i, (id, spec)) in ids.iter().zip(specs).enumerate() {
            let peers: Vec<LocalPeer> = (0..ids.len())
                .filter(|j| *j != i)
                .map(|j| LocalPeer {
                    id: ids[j].clone(),
                    addr: SocketAddr::from((
                        [127, 0, 0, 1],
                        network
                            .as_ref()
                            .and_then(|n| n.addr(i, j))
                            .map_or(ports[j], |a| a.port()),
                    )),
                    key: keys[j],
                })
                .collect();
            let files = LocalFiles {
                secret: &secret,
                driver_secret: &driver_secret,
                node_key: &key_files[i],
            };
            let admin = Client::socket(path.join(id).join(clustd::config::ADMIN_SOCKET_FILE));
            // node_config ends in `[election]`: the tables after it are this node's.
            let rest = format!("{election}\n\n{}\n", spec.daemon_toml);
            let listen = SocketAddr::from(([127, 0, 0, 1], ports[i]));
            let text = node_config(id, listen, &peers, kind, &files, &path.join(id), &rest);
            let config = path.join(format!("{id}.toml"));
            std::fs::write(&config, text)?;
            let driver_config = path.join(format!("driver-{id}.toml"));
            std::fs::write(
                &driver_config,
                if spec.socket {
                    format!(
                        "daemon = {}\ndriver_id = \"shell-{id}\"\nstartup_wait_ms = 60000\n\n[script]\nshell = \"/bin/sh\"\nstart = {}\nstop = {}\ntimeout_ms = 10000\n",
                        toml_string(&format!(
                            "unix:{}",
                            path.join(id).join("driver.sock").display()
                        )),
                        toml_string(&spec.start),
                        toml_string(&spec.stop),
                    )
                } else {
                    format!(
                        "daemon = \"127.0.0.1:{}\"\ndaemon_key = \"{}\"\ntransport = \"{transport}\"\nsecret_file = {}\ndriver_id = \"shell-{id}\"\nstartup_wait_ms = 60000\n\n[script]\nshell = \"/bin/sh\"\nstart = {}\nstop = {}\ntimeout_ms = 10000\n",
                        ports[i],
                        keys[i],
                        toml_string(&driver_secret.display().to_string()),
                        toml_string(&spec.start),
                        toml_string(&spec.stop),
                    )
                },
            )?;
            let daemon_log = path.join(format!("{id}.log"));
            let daemon = Command::new(clustd_bin())
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "info")
                .envs(daemon_env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&daemon_log)?)
                .kill_on_drop(true)
                .spawn()?;
            let driver_log = path.join(format!("driver-{id}.log"));
            let driver = Command::new(driver_bin())
                .arg("--config")
                .arg(&driver_config)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&driver_log)?)
                .kill_on_drop(true)
                .spawn()?;
            nodes.push(ProcNode {
                id: id.clone(),
                admin,
                daemon_log,
                driver_log,
                _daemon: daemon,
                _driver: driver,
            });
        }
        Ok(Self {
            dir,
            nodes,
            network,
        })
    }

    /// Three nodes whose drivers run no-op scripts (`true`) on the local socket, at
    /// heartbeat 100 ms and election timeout [1000, 2000]: for tests about the daemons
    /// themselves (their CLI, their logs), not the service.
    pub(crate) async fn start_plain(kind: TransportKind) -> std::io::Result<Self> {
        Self::start_plain_env(kind, &[]).await
    }

    /// [`ProcCluster::start_plain`] with these environment variables for the daemons.
    pub(crate) async fn start_plain_env(
        kind: TransportKind,
        daemon_env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let specs: Vec<NodeSpec> = (0..3)
            .map(|_| NodeSpec {
                daemon_toml: String::new(),
                start: "true".into(),
                stop: "true".into(),
                socket: true,
            })
            .collect();
        Self::start_with(
            tempfile::tempdir()?,
            kind,
            "heartbeat_ms = 100\nelection_timeout_ms = [1000, 2000]",
            &specs,
            false,
            daemon_env,
        )
        .await
    }

    /// Waits until exactly one node says it is master (panics after `timeout`): its id.
    pub(crate) async fn one_master(&self, timeout: Duration) -> String {
        self.wait_for("one master", timeout, || async {
            let m = self.masters().await;
            (m.len() == 1).then(|| m[0].clone())
        })
        .await
    }

    /// Cuts every peer link to and from node `i` (its driver stays connected).
    pub(crate) fn isolate(&self, i: usize) {
        self.network
            .as_ref()
            .expect("started with start_cuttable")
            .isolate(i);
    }

    /// Node `i`'s driver process id.
    pub(crate) fn driver_pid(&self, i: usize) -> u32 {
        self.nodes[i]._driver.id().expect("driver running")
    }

    /// Sends `signal` (e.g. `SIGSTOP`, `SIGCONT`) to node `i`'s driver process.
    pub(crate) fn signal_driver(&self, i: usize, signal: &str) {
        let pid = self.nodes[i]._driver.id().expect("driver running");
        signal_pid(pid, signal);
    }

    /// Sends `signal` to node `i`'s daemon process.
    pub(crate) fn signal_daemon(&self, i: usize, signal: &str) {
        let pid = self.nodes[i]._daemon.id().expect("daemon running");
        signal_pid(pid, signal);
    }

    /// Index of the node with this id.
    pub(crate) fn index(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// `GET /status` of node `i` as JSON (None while it does not answer).
    pub(crate) async fn status(&self, i: usize) -> Option<serde_json::Value> {
        let body = self.nodes[i].admin.clone().status_json().await.ok()?;
        serde_json::from_str(&body).ok()
    }

    /// The nodes whose status says `role: master` (those that answer).
    pub(crate) async fn masters(&self) -> Vec<String> {
        let mut masters = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(s) = self.status(i).await
                && s["role"] == "master"
            {
                masters.push(node.id.clone());
            }
        }
        masters
    }

    /// Whether node `i`'s metrics say `clustd_eligible 1` (healthy, not in maintenance).
    pub(crate) async fn eligible(&self, i: usize) -> bool {
        self.nodes[i]
            .admin
            .clone()
            .metrics()
            .await
            .is_ok_and(|m| m.lines().any(|l| l.trim() == "clustd_eligible 1"))
    }

    /// The last `lines` lines of every daemon's and driver's log, for a failure message.
    pub(crate) fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            for path in [&n.daemon_log, &n.driver_log] {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                out.push_str(&format!("--- {}\n", path.display()));
                out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
                out.push('\n');
            }
        }
        out
    }

    /// Polls `condition` every 50 ms until it gives a value; panics after `timeout` with
    /// `what` and the ends of the logs.
    pub(crate) async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: F,
    ) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(value) = condition().await {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting until {what}\n{}",
                self.logs(25)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn signal_pid(pid: u32, signal: &str) {
    // nix, not the `kill` binary: a fresh machine need not have procps.
    let signal: nix::sys::signal::Signal = format!("SIG{signal}").parse().expect("a signal name");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
    nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
}

/// `(node, action, unix ns)` per line of a script log shared by the nodes (each script
/// appends `<node> <action> $(date +%s%N)`), in time order.
pub(crate) fn script_lines(log: &Path) -> Vec<(String, String, u128)> {
    let mut lines: Vec<(String, String, u128)> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let node = parts.next()?.to_owned();
            let action = parts.next()?.to_owned();
            let at = parts.next()?.parse().ok()?;
            Some((node, action, at))
        })
        .collect();
    lines.sort_by_key(|(_, _, at)| *at);
    lines
}
