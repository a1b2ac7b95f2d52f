//! Whole clusters inside one process, on loopback: used by `clustd demo`, the integration
//! tests and anyone who wants to try clustd without three machines. [`ServiceWatch`] judges
//! such a cluster with the one service-interval checker.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clustd_core::check::{ServiceChecker, ServiceInput};
use clustd_core::{Instant, NodeId};
use clustd_transport::{TokioNet, TransportKind};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use crate::clock::TokioClock;
use crate::config::write::NodeToml;
use crate::config::{ConfigError, Settings};
use crate::runtime::{self, DriverRecord, Handle, RuntimeError, Shutdown};
use crate::store::{FileStore, StateStore};

/// Finds a loopback port free for both TCP and UDP (both transports can use it).
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..64 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free loopback port found"))
}

/// A peer of a local node: its id, address and public key.
pub struct LocalPeer {
    /// Node id.
    pub id: String,
    /// Its cluster address (a loopback port, or an address in a test's network namespace).
    pub addr: std::net::SocketAddr,
    /// Its node key's public half.
    pub key: clustd_transport::PublicKey,
}

/// The credential files of a loopback cluster.
pub struct LocalFiles<'a> {
    /// The cluster secret.
    pub secret: &'a std::path::Path,
    /// The drivers' credential.
    pub driver_secret: &'a std::path::Path,
    /// This node's private key.
    pub node_key: &'a std::path::Path,
}

/// The TOML of a local node listening on `listen` (written by [`NodeToml`]); `election` is
/// the body of the `[election]` table (and may be followed by more tables).
pub fn node_config(
    id: &str,
    listen: std::net::SocketAddr,
    peers: &[LocalPeer],
    transport: TransportKind,
    files: &LocalFiles<'_>,
    data_dir: &std::path::Path,
    election: &str,
) -> String {
    let mut config = NodeToml::new(id, transport, listen)
        .data_dir(data_dir)
        .key_file(files.node_key)
        .secret_file(files.secret)
        .driver_secret_file(files.driver_secret);
    for peer in peers {
        config = config.peer(&peer.id, peer.addr, &peer.key);
    }
    config.then_toml(election).to_toml()
}

/// The cluster secret's file name inside a local cluster's directory.
pub const SECRET_FILE: &str = "secret";

/// The drivers' credential's file name inside a local cluster's directory.
pub const DRIVER_SECRET_FILE: &str = "driver-secret";

/// Writes a file readable by its owner only.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// One node running as a task in this process.
#[derive(Debug)]
pub struct LocalNode {
    /// Its settings.
    pub settings: Settings,
    /// Status, commands and role notices.
    pub handle: Handle,
    /// The node's clock: [`TokioClock::origin`] puts its instants (role notices, driver
    /// records) on the process's tokio time line, which all local nodes share.
    pub clock: TokioClock,
    stop: Option<oneshot::Sender<Shutdown>>,
    task: Option<JoinHandle<Result<(), RuntimeError>>>,
}

impl LocalNode {
    /// Starts the node with real loopback sockets, tokio's clock and a file store.
    pub fn start(settings: &Settings) -> Self {
        Self::start_with_store(settings, FileStore::new(&settings.data_dir))
    }

    /// [`LocalNode::start`] with another [`StateStore`] (tests: one that fails on demand).
    pub fn start_with_store(settings: &Settings, store: impl StateStore) -> Self {
        let (control, handle) = runtime::control();
        let (stop_tx, stop_rx) = oneshot::channel();
        let shutdown = async move { stop_rx.await.unwrap_or(Shutdown::Graceful) };
        let clock = TokioClock::new();
        let task = tokio::spawn(runtime::run(
            settings.clone(),
            TokioNet,
            clock,
            store,
            control,
            shutdown,
        ));
        Self {
            settings: settings.clone(),
            handle,
            clock,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Whether the runtime task is still running.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the node and returns how its runtime ended.
    pub async fn stop(&mut self, how: Shutdown) -> Result<(), RuntimeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(how);
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    /// Waits until the runtime has started (status filled in), or returns how it failed.
    pub async fn started(&mut self) -> Result<(), RuntimeError> {
        loop {
            if !self.handle.status().node_id.is_empty() {
                return Ok(());
            }
            if !self.is_running() {
                return self.join().await.unwrap_or(Ok(()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for the runtime to end by itself (e.g. after a fatal error).
    pub async fn join(&mut self) -> Option<Result<(), RuntimeError>> {
        let task = self.task.take()?;
        task.await.ok()
    }
}

/// Why a local cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Ports or directories.
    #[error("setup: {0}")]
    Io(#[from] std::io::Error),
    /// The generated config was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// `n` nodes named `node-1..node-n` on loopback, with temporary data directories.
#[derive(Debug)]
pub struct LocalCluster {
    /// Holds the data directories (deleted on drop).
    pub dir: tempfile::TempDir,
    /// Each node's settings, by index.
    pub settings: Vec<Settings>,
    /// Each node, by index (stopped ones keep their slot).
    pub nodes: Vec<LocalNode>,
}

/// The credentials of a cluster on one machine, as [`write_credentials`] wrote them.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The cluster secret ([`SECRET_FILE`]).
    pub secret: PathBuf,
    /// The drivers' credential ([`DRIVER_SECRET_FILE`]).
    pub driver_secret: PathBuf,
    /// Each node's key file, `ID.key`, in the order of the ids.
    pub key_files: Vec<PathBuf>,
    /// Each node's public key, in the order of the ids.
    pub keys: Vec<clustd_transport::PublicKey>,
}

/// Writes into `dir` a new cluster secret, a new drivers' credential and a new node key for
/// each of `ids` (all mode 0600, never overwriting): what a local cluster, the benches and
/// the process tests give their nodes.
pub fn write_credentials(dir: &Path, ids: &[impl AsRef<str>]) -> std::io::Result<Credentials> {
    let keygen = || crate::config::keygen().map_err(|e| std::io::Error::other(e.to_string()));
    let secret = dir.join(SECRET_FILE);
    write_private(&secret, &keygen()?)?;
    let driver_secret = dir.join(DRIVER_SECRET_FILE);
    write_private(&driver_secret, &keygen()?)?;
    let key_files: Vec<PathBuf> = ids
        .iter()
        .map(|id| dir.join(format!("{}.key", id.as_ref())))
        .collect();
    let keys = key_files
        .iter()
        .map(|path| crate::config::write_node_key(path))
        .collect::<std::io::Result<_>>()?;
    Ok(Credentials {
        secret,
        driver_secret,
        key_files,
        keys,
    })
}

impl LocalCluster {
    /// Configures `n` nodes; `election` is TOML for the `[election]` table (may be empty).
    pub fn configure(
        n: usize,
        transport: TransportKind,
        election: &str,
    ) -> Result<(tempfile::TempDir, Vec<Settings>), LocalError> {
        let dir = tempfile::Builder::new().prefix("clustd-local-").tempdir()?;
        let names: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
        let Credentials {
            secret: secret_file,
            driver_secret: driver_secret_file,
            key_files,
            keys: public_keys,
        } = write_credentials(dir.path(), &names)?;
        let ports: Vec<u16> = names
            .iter()
            .map(|_| free_port())
            .collect::<Result<_, _>>()?;
        let mut settings = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let peers: Vec<LocalPeer> = names
                .iter()
                .zip(&ports)
                .zip(&public_keys)
                .filter(|((other, _), _)| *other != name)
                .map(|((other, port), key)| LocalPeer {
                    id: other.clone(),
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
                    key: *key,
                })
                .collect();
            let files = LocalFiles {
                secret: &secret_file,
                driver_secret: &driver_secret_file,
                node_key: &key_files[i],
            };
            let text = node_config(
                name,
                std::net::SocketAddr::from(([127, 0, 0, 1], ports[i])),
                &peers,
                transport,
                &files,
                &dir.path().join(name),
                election,
            );
            let (s, _warnings) = Settings::parse(&text, &format!("{name}.toml"), dir.path())?;
            settings.push(s);
        }
        Ok((dir, settings))
    }

    /// Configures and starts `n` nodes.
    pub fn start(n: usize, transport: TransportKind, election: &str) -> Result<Self, LocalError> {
        let (dir, settings) = Self::configure(n, transport, election)?;
        let nodes = settings.iter().map(LocalNode::start).collect();
        Ok(Self {
            dir,
            settings,
            nodes,
        })
    }

    /// Index of the node with this id.
    pub fn index(&self, id: &NodeId) -> Option<usize> {
        self.settings.iter().position(|s| &s.id == id)
    }

    /// Running nodes that report themselves master.
    pub fn masters(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.handle.status().role == "master")
            .map(|n| n.settings.id.clone())
            .collect()
    }

    /// Polls until exactly one running node is master and it is not `except`.
    pub async fn wait_for_master(
        &self,
        except: Option<&NodeId>,
        timeout: Duration,
    ) -> Option<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let masters = self.masters();
            if let [one] = &masters[..]
                && Some(one) != except
            {
                return Some(one.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops node `i` (crash-like with [`Shutdown::Immediate`]).
    pub async fn stop(&mut self, i: usize, how: Shutdown) -> Result<(), RuntimeError> {
        self.nodes[i].stop(how).await
    }

    /// Starts node `i` again with the same settings and data directory, and waits until it
    /// runs. An in-process QUIC endpoint releases its UDP port a moment after shutdown (its
    /// driver task ends asynchronously), so "address in use" is retried for a few seconds.
    pub async fn restart(&mut self, i: usize) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.nodes[i] = LocalNode::start(&self.settings[i]);
            match self.nodes[i].started().await {
                Err(RuntimeError::Listen {
                    kind: std::io::ErrorKind::AddrInUse,
                    ..
                }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Stops every node gracefully.
    pub async fn shutdown(&mut self) {
        for node in &mut self.nodes {
            let _ = node.stop(Shutdown::Graceful).await;
        }
    }
}

/// One node's record stream, with what converts its instants to global time.
#[derive(Debug)]
struct Followed {
    node: NodeId,
    clock: TokioClock,
    stop_budget: Duration,
    records: broadcast::Receiver<DriverRecord>,
}

/// A [`DriverRecord`] of one local node, its instants converted to global time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalRecord {
    /// [`DriverRecord::at`], in global time.
    pub at: Duration,
    /// The node whose daemon sent or heard it.
    pub node: NodeId,
    /// The record as published (instants on the node's clock).
    pub record: DriverRecord,
    /// What it tells the checker (instants in global time).
    pub input: ServiceInput,
}

impl GlobalRecord {
    /// The lease end of a `ToldMaster` or `LeaseGiven`, in global time.
    pub fn lease_until(&self) -> Option<Duration> {
        match &self.input {
            ServiceInput::ToldMaster { lease_end, .. } | ServiceInput::Lease { lease_end, .. } => {
                Some(*lease_end)
            }
            _ => None,
        }
    }
}

/// Something the checker must hear.
#[derive(Debug)]
enum Seen {
    Record {
        stop_budget: Duration,
        record: GlobalRecord,
    },
    Crashed {
        at: Duration,
        node: NodeId,
    },
}

impl Seen {
    fn at(&self) -> Duration {
        match self {
            Self::Record { record, .. } => record.at,
            Self::Crashed { at, .. } => *at,
        }
    }
}

/// Puts the [`DriverRecord`]s of local nodes on one global time line and judges them with
/// the one service-interval checker ([`ServiceChecker`]): the demo's and the integration
/// tests' verdict on "never two masters".
///
/// All local nodes run on the process's tokio clock, each counted from its own origin
/// ([`LocalNode::clock`]), so global time is exact: the tokio instant since `origin`.
#[derive(Debug)]
pub struct ServiceWatch {
    origin: tokio::time::Instant,
    followed: Vec<Followed>,
    seen: Vec<Seen>,
    lost: u64,
}

impl ServiceWatch {
    /// A watch whose global time 0 is `origin`.
    pub fn new(origin: tokio::time::Instant) -> Self {
        Self {
            origin,
            followed: Vec::new(),
            seen: Vec::new(),
            lost: 0,
        }
    }

    /// Follows `node`'s records from now on. Call it again after a restart: the new run has
    /// a new clock.
    pub fn follow(&mut self, node: &LocalNode) {
        self.followed.push(Followed {
            node: node.settings.id.clone(),
            clock: node.clock,
            stop_budget: node.settings.core.stop_budget,
            records: node.handle.driver_records(),
        });
    }

    /// Global time now.
    pub fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.origin)
    }

    /// `node`'s daemon crashed now (its drivers run on until lease end plus stop budget).
    pub fn crashed(&mut self, node: &NodeId) {
        self.collect();
        let at = self.now();
        self.seen.push(Seen::Crashed {
            at,
            node: node.clone(),
        });
    }

    /// Takes in what arrived so far; call it now and then so no stream falls 4096 behind.
    pub fn collect(&mut self) {
        let origin = self.origin;
        for f in &mut self.followed {
            let global = |at: Instant| {
                (f.clock.origin() + at.elapsed_since_origin()).saturating_duration_since(origin)
            };
            loop {
                match f.records.try_recv() {
                    Ok(record) => {
                        self.seen.push(Seen::Record {
                            stop_budget: f.stop_budget,
                            record: GlobalRecord {
                                at: global(record.at()),
                                node: f.node.clone(),
                                input: record.service_input(global),
                                record,
                            },
                        });
                    }
                    Err(broadcast::error::TryRecvError::Lagged(n)) => self.lost += n,
                    Err(_) => break,
                }
            }
        }
        // Stable: one node's records keep their order when they share an instant.
        self.seen.sort_by_key(Seen::at);
    }

    /// Every record seen so far, in global time order.
    pub fn records(&mut self) -> Vec<GlobalRecord> {
        self.collect();
        self.seen
            .iter()
            .filter_map(|seen| match seen {
                Seen::Record { record, .. } => Some(record.clone()),
                Seen::Crashed { .. } => None,
            })
            .collect()
    }

    /// Feeds everything seen so far, in global time order, to a fresh checker and returns
    /// it: read [`ServiceChecker::violations`] and [`ServiceChecker::intervals`].
    pub fn check(&mut self) -> ServiceChecker {
        self.collect();
        let mut checker = ServiceChecker::new();
        if self.lost > 0 {
            checker.violation(format!(
                "{} driver records lost (observer too slow): the verdict is incomplete",
                self.lost
            ));
        }
        for seen in &self.seen {
            match seen {
                Seen::Crashed { at, node } => checker.crashed(*at, node),
                Seen::Record {
                    stop_budget,
                    record: r,
                } => checker.feed(r.at, &r.node, &r.input, *stop_budget),
            }
        }
        checker
    }
}
