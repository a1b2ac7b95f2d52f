//! The node runtime: one task owns the election core and carries out its outputs.
//!
//! Inputs: transport frames (peers and drivers), the core's timer, admin commands and the
//! shutdown signal. Outputs, always in this order: persist (durably) → send → events
//! (drivers, status, metrics). The caller supplies the sockets ([`Net`]), the clock
//! ([`Clock`]) and the disk ([`StateStore`]), so the simulation runs this very code.
//!
//! The runtime also keeps, per driver, whether it may be running the service: from the
//! moment it is sent "master" until it acknowledges a later "backup" with `Ok`, or, failing
//! that, until its last lease end plus the stop budget (at the drift bound), when its own
//! fail-safe has surely stopped it. A failed or timed-out stop ends nothing: it is reported
//! loudly (log, status, metric, a `StopFailed` event to every driver). A step-down hands
//! over early only once no driver may still be running; what it sent and heard is published
//! as [`DriverRecord`]s for the service-interval checker.
//!
//! What others can make it hold is bounded: [`MAX_CONNECTED_DRIVERS`] served at once,
//! [`MAX_REMEMBERED_DRIVERS`] remembered (without forgetting how long a forgotten one may
//! still run), failure reasons cut to [`MAX_REASON_LEN`]. A state write that fails for a
//! transient reason (out of descriptors or space) does not stop it: it sends nothing until
//! a retry has made the state durable, so a term or vote is never sent before it is.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clustd_core::check::ServiceInput;
use clustd_core::codec;
use clustd_core::driver::{ActionResult, DriverRole, FromDriver, HealthChange, ToDriver};
use clustd_core::message::{CheckReport, DriverReport as DriverLine, Report as NodeReport};
use clustd_core::{Event, Instant, Message, Node, NodeId, Reason, Role, Term};
use clustd_transport::{Endpoint, EndpointConfig, Net, PeerKind, SendClass, TransportEvent};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::config::Settings;
use crate::fence;
use crate::fence::Fencer;
use crate::health::{self, CheckResult, CheckTasks, DriverReport, HealthTransition, Tracker};
use crate::metrics::{Metrics, PeerLabel, ReasonLabel, ResultLabel};
use crate::proctree::DriverProcess;
use crate::rejections::{FailureReason, Rejections, Report};
use crate::status::{
    ClusterView, DriverStatus, ElectionStep, ElectionStepKind, FenceStatus, NodeView, PeerStatus,
    RoleChange, Status, format_unix_ms,
};
use crate::store::{StateStore, StoreError};
use crate::watchdog::{self, Watchdog, WatchdogDevice};

/// At most one WARN per peer this often about its rejected messages (the rest are counted
/// in `clustd_rejected_messages_total` and summed into the next WARN).
const REJECTED_WARN_EVERY: Duration = Duration::from_secs(10);

/// Most drivers connected at once. A local machine runs a handful (shell, notify, VIP);
/// 64 leaves room for many services while keeping a flood of driver connections from
/// growing the table, the per-renewal fan-out and `/status`. A driver beyond the cap is
/// refused at this level: the transport has no way to close one connection, so its frames
/// are ignored and it is sent nothing — it never hears "master", so it never runs the
/// service — until a slot frees, when the longest-waiting connected one is admitted. Each
/// refusal is counted (`clustd_drivers_refused_total`); the first of a streak is a warning.
pub const MAX_CONNECTED_DRIVERS: usize = 64;

/// Most drivers remembered, connected or not. A disconnected driver is forgotten once it
/// can no longer run the service (its lease end plus the stop budget, or an `Ok` stop),
/// unless its last stop failed (kept for operators to see, while there is room). When the
/// table is full, the disconnected driver whose lease ends first is forgotten; if it may
/// still run, its lease end plus the stop budget is kept in one deadline that holds up a
/// hand-over exactly as its entry would have, so the bound costs no safety.
pub const MAX_REMEMBERED_DRIVERS: usize = 256;

/// The longest failure reason (from a driver's `Failed(reason)` or a stop failure) kept,
/// logged, shown in status or forwarded to other drivers, in bytes. Enough for an exit
/// status and the first line of an error; a 60 KB reason must not be copied per driver.
pub const MAX_REASON_LEN: usize = 256;

/// How stale the driver list in the status snapshot may get: acknowledgements and lease
/// renewals show within this; connects, disconnects, role changes and commands at once.
/// Rebuilding it on every frame would let a few chatty drivers cost a copy of the whole
/// table per frame.
const STATUS_DRIVERS_REFRESH: Duration = Duration::from_millis(100);

/// How often a state write that failed for a transient reason is retried.
const STATE_WRITE_RETRY: Duration = Duration::from_millis(100);

/// Capacity of the [`DriverRecord`] channel: a slow observer loses the oldest records
/// (and sees `Lagged`) rather than slowing the election loop.
const RECORDS_CAPACITY: usize = 4096;

/// The tracing target of the service records (`RUST_LOG=clustd::service=debug` shows every
/// lease given); an out-of-process checker rebuilds [`DriverRecord`]s from these lines.
pub const SERVICE_LOG_TARGET: &str = "clustd::service";

/// Why the runtime stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The state could not be read or written; running on would risk a double vote.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transport could not start.
    #[error("transport: {0}")]
    Transport(#[from] clustd_transport::TransportError),
    /// The cluster address could not be bound (said once, with the key and the address).
    #[error("cluster.listen {listen}: {why}")]
    Listen {
        /// The address.
        listen: std::net::SocketAddr,
        /// What went wrong, and what to check.
        why: String,
        /// The OS error's kind (`AddrInUse`: worth a retry while an old socket closes).
        kind: std::io::ErrorKind,
    },
    /// The election core refused to start: its settings were rejected, or the persisted
    /// term is unusable (the message names the recovery).
    #[error(transparent)]
    Start(#[from] clustd_core::StartError),
}

/// An admin command for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Graceful step-down (demote, then hand over), even with no eligible successor.
    StepDown,
    /// Switchover to the named node: on the leader a graceful hand-over to it, on another
    /// node a request passed to the leader it knows (see `Node::request_transfer`).
    /// Refused, with the reason, if it cannot be done.
    Switchover(NodeId),
    /// Maintenance mode on or off.
    Maintenance(bool),
    /// Refresh the status snapshot now; answering proves the runtime is running (the admin
    /// API's `/leader` and `/step-down` ask before they answer).
    Refresh,
    /// Re-read the config file the node was started from (`clustd reload`, `SIGHUP`) and
    /// apply what can change without a role change; answers with the changes, or refuses
    /// (naming the key) and keeps the old config.
    Reload,
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// If leader: demote, let drivers stop, hand over; then exit (SIGTERM, SIGINT).
    Graceful,
    /// Exit at once, like a crash (the demo's and tests' stand-in for SIGKILL). Connections
    /// are closed, as the OS would on process death.
    Immediate,
}

/// A role change as drivers see it, for observers in the same process (demo, tests, sim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleNotice {
    /// The node.
    pub node: NodeId,
    /// Master or backup.
    pub role: DriverRole,
    /// Term (fencing token).
    pub term: Term,
    /// The known leader.
    pub leader: Option<NodeId>,
    /// What made the role change, for logs and notify messages (`elected`,
    /// `lease-expired`, `stepped-down`, ...).
    pub reason: &'static str,
    /// While master: when the lease ends, on the node's clock.
    pub lease_until: Option<Instant>,
}

/// What the daemon sent to, or heard from, one of its drivers that bounds where the service
/// may run: the input of the service-interval checker
/// ([`clustd_core::check::ServiceChecker`]), published by [`Handle::driver_records`].
///
/// These are what the daemon *sent* (handed to the transport) and *heard*, stamped `at`
/// on the node's clock when it did; `lease_until` is on the node's clock too. They are not
/// what the driver received or did: a notice may arrive late or never, which is why the
/// checker relies only on leases and `Ok` acknowledgements. An observer converts both
/// instants to its global time with the node's clock (the demo: [`crate::TokioClock::origin`]).
/// Each record is also logged on target [`SERVICE_LOG_TARGET`] with the instants as
/// machine monotonic clock readings (`at_mono_ns`, `lease_until_mono_ns`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DriverRecord {
    /// A "master" notice went to `driver`; its lease ends at `lease_until` (the send time
    /// plus `lease_remaining_ms` as sent).
    ToldMaster {
        /// When it was sent.
        at: Instant,
        /// The driver.
        driver: NodeId,
        /// The term of the notice.
        term: Term,
        /// The end of the lease the driver was given.
        lease_until: Instant,
    },
    /// A lease renewal went to `driver`: its lease now ends at `lease_until`.
    LeaseGiven {
        /// When it was sent.
        at: Instant,
        /// The driver.
        driver: NodeId,
        /// The end of the lease the driver was given.
        lease_until: Instant,
    },
    /// `driver` acknowledged the latest "backup" with `Ok`: it stopped the service.
    StopConfirmed {
        /// When the acknowledgement was heard.
        at: Instant,
        /// The driver.
        driver: NodeId,
        /// The term of the "backup" notice acknowledged.
        term: Term,
    },
    /// `driver` acknowledged the latest "backup" with `Failed` or `TimedOut`: the service
    /// may still run there until its lease end plus the stop budget.
    StopFailed {
        /// When the acknowledgement was heard.
        at: Instant,
        /// The driver.
        driver: NodeId,
        /// The term of the "backup" notice acknowledged.
        term: Term,
        /// What the driver reported.
        result: ActionResult,
    },
    /// The `[fence]` run for `driver` succeeded: the service it may have run is dead. Heard
    /// when the run finished (no earlier than it did).
    Fenced {
        /// When the run's success was heard.
        at: Instant,
        /// The driver.
        driver: NodeId,
    },
}

impl DriverRecord {
    /// When the daemon sent or heard it, on the node's clock.
    pub fn at(&self) -> Instant {
        match self {
            Self::ToldMaster { at, .. }
            | Self::LeaseGiven { at, .. }
            | Self::StopConfirmed { at, .. }
            | Self::StopFailed { at, .. }
            | Self::Fenced { at, .. } => *at,
        }
    }

    /// What it tells the service-interval checker, with the node's instants mapped to the
    /// checker's global time by `to_global`.
    pub fn service_input(&self, to_global: impl Fn(Instant) -> Duration) -> ServiceInput {
        match self {
            Self::ToldMaster {
                driver,
                term,
                lease_until,
                ..
            } => ServiceInput::ToldMaster {
                driver: driver.clone(),
                term: *term,
                lease_end: to_global(*lease_until),
            },
            Self::LeaseGiven {
                driver,
                lease_until,
                ..
            } => ServiceInput::Lease {
                driver: driver.clone(),
                lease_end: to_global(*lease_until),
            },
            Self::StopConfirmed { driver, .. } => ServiceInput::StopConfirmed {
                driver: driver.clone(),
            },
            Self::StopFailed { driver, .. } => ServiceInput::StopFailed {
                driver: driver.clone(),
            },
            Self::Fenced { driver, .. } => ServiceInput::Fenced {
                driver: driver.clone(),
            },
        }
    }

    /// The driver it is about.
    pub fn driver(&self) -> &NodeId {
        match self {
            Self::ToldMaster { driver, .. }
            | Self::LeaseGiven { driver, .. }
            | Self::StopConfirmed { driver, .. }
            | Self::StopFailed { driver, .. }
            | Self::Fenced { driver, .. } => driver,
        }
    }
}

/// The runtime's side of the control channel.
pub struct Control {
    commands: mpsc::Receiver<(Command, oneshot::Sender<Result<String, String>>)>,
    shared: Arc<Shared>,
    fencer: Option<Arc<dyn Fencer>>,
    watchdog_device: Option<Box<dyn WatchdogDevice>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("custom_fencer", &self.fencer.is_some())
            .field("custom_watchdog_device", &self.watchdog_device.is_some())
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Fences with `fencer` instead of the `[fence] command` (a runtime that models the
    /// machine itself, like the simulation, or that embeds the daemon). Only when `[fence]`
    /// is configured: its timing rules and reports stay the same.
    #[must_use]
    pub fn with_fencer(mut self, fencer: Arc<dyn Fencer>) -> Self {
        self.fencer = Some(fencer);
        self
    }

    /// Arms, feeds and disarms `device` instead of the `[fence] watchdog` file. Only when
    /// `[fence] watchdog` is configured: its timeout and feeding rules stay the same.
    #[must_use]
    pub fn with_watchdog_device(mut self, device: Box<dyn WatchdogDevice>) -> Self {
        self.watchdog_device = Some(device);
        self
    }
}

/// A cheap handle to a running node: status, metrics, commands, role notices.
#[derive(Debug, Clone)]
pub struct Handle {
    commands: mpsc::Sender<(Command, oneshot::Sender<Result<String, String>>)>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    status: Mutex<Status>,
    cluster: Mutex<ClusterView>,
    metrics: Metrics,
    notices: broadcast::Sender<RoleNotice>,
    records: broadcast::Sender<DriverRecord>,
    /// While master: the end of the lease drivers were last told (node's clock).
    lease: watch::Sender<Option<Instant>>,
    local_addr: Mutex<Option<SocketAddr>>,
}

/// Makes the control channel for one runtime.
pub fn control() -> (Control, Handle) {
    let (tx, rx) = mpsc::channel(16);
    let shared = Arc::new(Shared {
        status: Mutex::new(Status::default()),
        cluster: Mutex::new(ClusterView::default()),
        metrics: Metrics::new(),
        notices: broadcast::channel(256).0,
        records: broadcast::channel(RECORDS_CAPACITY).0,
        lease: watch::channel(None).0,
        local_addr: Mutex::new(None),
    });
    (
        Control {
            commands: rx,
            shared: shared.clone(),
            fencer: None,
            watchdog_device: None,
        },
        Handle {
            commands: tx,
            shared,
        },
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; it is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Handle {
    /// The latest status snapshot.
    pub fn status(&self) -> Status {
        lock(&self.shared.status).clone()
    }

    /// Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Role changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RoleNotice> {
        self.shared.notices.subscribe()
    }

    /// What this node sends to and hears from its drivers that bounds where the service may
    /// run, from now on: see [`DriverRecord`]. Feed them, converted to one global time, to
    /// [`clustd_core::check::ServiceChecker`]. A receiver that falls more than 4096 records
    /// behind loses the oldest (`RecvError::Lagged`).
    pub fn driver_records(&self) -> broadcast::Receiver<DriverRecord> {
        self.shared.records.subscribe()
    }

    /// While master, the end of the lease as drivers were last told it (role change or
    /// renewal), on the node's clock; `None` while backup. An observer that must know how
    /// long a crashed master's drivers may keep running (the simulation) watches this.
    pub fn lease(&self) -> watch::Receiver<Option<Instant>> {
        self.shared.lease.subscribe()
    }

    /// The cluster address the transport is bound to, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *lock(&self.shared.local_addr)
    }

    /// Sends a command and waits until the runtime has applied (or refused) it. False if
    /// the runtime is gone.
    pub async fn command(&self, command: Command) -> bool {
        self.call(command).await.is_some()
    }

    /// Sends a command and waits for the runtime's answer: `Some(Err(why))` when it
    /// refused it, `None` when the runtime is gone.
    pub async fn call(&self, command: Command) -> Option<Result<String, String>> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send((command, tx)).await.is_err() {
            return None;
        }
        rx.await.ok()
    }

    /// The cluster as this node knows it, as of the last [`Command::Refresh`].
    pub fn cluster(&self) -> ClusterView {
        lock(&self.shared.cluster).clone()
    }
}

#[derive(Debug, Default)]
struct DriverState {
    connected: bool,
    last_role: Option<DriverRole>,
    /// The term of the last role sent.
    last_term: Term,
    last_seq: u64,
    acked_seq: Option<u64>,
    last_result: Option<String>,
    /// Told "master" and no `Ok` acknowledgement of a later "backup" since. A failed or
    /// timed-out stop leaves it set: only the lease bounds the service then.
    may_run: bool,
    /// The end of the last lease it was given (node's clock): its fail-safe demotes it then.
    lease_until: Instant,
    /// Its last stop (the latest "backup", acknowledged) failed or timed out.
    stop_failed: bool,
    /// The last failed or timed-out stop, with its term, for status.
    last_stop_failure: Option<String>,
    /// An earlier connection of this id was told "master" and never confirmed a stop: it
    /// may run until this lease end (plus the stop budget), whatever a later connection of
    /// the same id acknowledges. Anyone holding the drivers' credential can connect under
    /// this id, replacing the real driver's connection, and confirm a stop the real driver
    /// never made; and a driver that reconnected is no better known than that.
    held_until: Option<Instant>,
    /// When any frame of its current connection last arrived (its `Alive` every
    /// [`clustd_core::driver::DRIVER_ALIVE_INTERVAL`], acknowledgements, reports).
    last_heard: Option<Instant>,
    /// Silent past `health.driver_timeout_ms` (and told so): its check `responding` fails.
    unresponsive: bool,
    /// A successful `[fence]` covered its unconfirmed leases up to this end.
    fenced_ok_until: Option<Instant>,
    /// The processes its connections over the local driver socket came from since it last
    /// surely did not run the service (kernel peer credentials; the first
    /// [`MAX_DRIVER_PROCESSES`], any more mark `process_unknown`): what `fence.kill_driver`
    /// kills.
    processes: Vec<DriverProcess>,
    /// Some connection since then came from a process not in `processes` (over the
    /// network, or one too many): `kill_driver` cannot be sure to reach the service.
    process_unknown: bool,
}

/// How many of a driver's processes are remembered for `fence.kill_driver`.
const MAX_DRIVER_PROCESSES: usize = 4;

impl DriverState {
    /// Whether the driver may be running the service at `now`. `settle` is the stop budget
    /// at the drift bound: after its lease end plus that, the driver's own fail-safe has
    /// stopped it (whether or not it is connected or its stop worked), so it no longer holds
    /// up a hand-over and its entry may be evicted.
    fn may_run_at(&self, now: Instant, settle: Duration) -> bool {
        (self.may_run && now < self.lease_until + settle)
            || self.held_until.is_some_and(|until| now < until + settle)
    }
    /// The latest lease end this driver (or an earlier connection of its id) was given
    /// and never confirmed a stop for, while it may still run (`now` before that end plus
    /// `settle`): what a `[fence]` covers. A spent `held_until` is no reason to fence.
    fn unconfirmed_until(&self, now: Instant, settle: Duration) -> Option<Instant> {
        self.may_run
            .then_some(self.lease_until)
            .into_iter()
            .chain(self.held_until)
            .filter(|end| now < *end + settle)
            .max()
    }
}

/// A driver's or the fence's result as a metric label (`ok`, `failed`, `timed_out`) and as
/// text for logs and status (`ok`, `failed: ...` cut to length, `timed-out`).
fn describe_result(result: &ActionResult) -> (&'static str, String) {
    match result {
        ActionResult::Ok => ("ok", "ok".to_string()),
        ActionResult::Failed(why) => ("failed", truncate_reason(&format!("failed: {why}"))),
        ActionResult::TimedOut => ("timed_out", "timed-out".to_string()),
    }
}

/// The check an unresponsive driver fails (`<driver>/responding`).
const RESPONDING_CHECK: &str = "responding";

/// The drivers a runtime remembers, and how long the forgotten ones may still run: the
/// bounded table's rules, apart from any I/O so they are tested on their own.
#[derive(Debug, Default)]
struct DriverTable {
    drivers: BTreeMap<NodeId, DriverState>,
    /// The latest `lease end + settle` of drivers forgotten (table full) while they could
    /// still run: a hand-over waits for it as it would have for their entries.
    forgotten_may_run_until: Option<Instant>,
}

impl DriverTable {
    /// Until when some driver, remembered or forgotten, may still be running the service
    /// (its lease end plus `settle`); `None` when none may: a hand-over need not wait.
    fn may_run_until(&self, now: Instant, settle: Duration) -> Option<Instant> {
        self.drivers
            .values()
            .filter(|d| d.may_run_at(now, settle))
            .map(|d| d.lease_until + settle)
            .chain(self.forgotten_may_run_until.filter(|until| now < *until))
            .max()
    }

    /// Forgets disconnected drivers that can no longer run the service (an `Ok` stop, or
    /// past their lease end plus the stop budget), except those whose last stop failed:
    /// operators must see those, and [`DriverTable::make_room_for`] bounds them. True if
    /// any was forgotten.
    fn forget_settled(&mut self, now: Instant, settle: Duration) -> bool {
        let before = self.drivers.len();
        self.drivers
            .retain(|_, d| d.connected || d.stop_failed || d.may_run_at(now, settle));
        if self
            .forgotten_may_run_until
            .is_some_and(|until| now >= until)
        {
            self.forgotten_may_run_until = None;
        }
        self.drivers.len() != before
    }

    /// Keeps the table below [`MAX_REMEMBERED_DRIVERS`] before `id` is added: forgets the
    /// disconnected drivers that cannot run first, then those whose lease ends first,
    /// keeping their `lease end + settle` in `forgotten_may_run_until`. Connected drivers
    /// are never forgotten (there are at most [`MAX_CONNECTED_DRIVERS`], fewer).
    fn make_room_for(&mut self, id: &NodeId, now: Instant, settle: Duration) {
        if self.drivers.contains_key(id) {
            return;
        }
        while self.drivers.len() >= MAX_REMEMBERED_DRIVERS {
            let victim = self
                .drivers
                .iter()
                .filter(|(_, d)| !d.connected)
                .min_by_key(|(_, d)| (d.may_run_at(now, settle), d.lease_until))
                .map(|(id, _)| id.clone());
            let Some(victim) = victim else {
                return;
            };
            if let Some(d) = self.drivers.remove(&victim)
                && d.may_run_at(now, settle)
            {
                let until = d.lease_until + settle;
                self.forgotten_may_run_until =
                    Some(self.forgotten_may_run_until.map_or(until, |u| u.max(until)));
            }
        }
    }
}

/// A peer process's incarnation and its listen address.
type Incarnation = (u64, String);

struct Runtime<C: Clock, S: StateStore> {
    node: Node,
    endpoint: Endpoint,
    clock: C,
    store: S,
    settings: Settings,
    shared: Arc<Shared>,
    table: DriverTable,
    seq: u64,
    last_reason: &'static str,
    last_heard: BTreeMap<NodeId, Instant>,
    /// What each peer last said about itself (`Message::Report`), with its term and when
    /// it arrived.
    reports: BTreeMap<NodeId, (Instant, Term, NodeReport)>,
    /// What this node last sent as its report, and when (`None`: send now).
    report_sent: Option<(Instant, NodeReport)>,
    /// The report changed since it was sent, and goes out at the end of the minimum gap.
    report_pending: bool,
    /// This process's incarnation (random at start), in its reports.
    incarnation: u64,
    /// Per peer: the incarnation (and listen address) of its latest report, and the one
    /// before it. An older one coming back means two processes claim that id.
    incarnations: BTreeMap<NodeId, (Incarnation, Option<Incarnation>)>,
    /// When this process first heard a report from each peer (a peer's reports may still
    /// name this node's previous incarnation shortly after a restart, until it hears ours).
    first_report: BTreeMap<NodeId, Instant>,
    /// Per peer: when two processes with one id were last logged about (once a minute).
    duplicate_warned: BTreeMap<NodeId, Instant>,
    rtt_pending: BTreeMap<NodeId, (u64, Instant)>,
    /// Peers with a live connection, as last told to drivers: `ToDriver::Peer` goes out
    /// only when this changes, so a duplicate or replaced connection is no news.
    peers_up: BTreeSet<NodeId>,
    /// Peers without a live connection: since when, and when last warned about (a WARN
    /// past `ET_max`, then at most once a minute; INFO when back).
    peers_down: BTreeMap<NodeId, (Instant, Option<Instant>)>,
    /// A step-down is waiting for drivers to confirm they stopped.
    awaiting_stop: bool,
    /// The stop budget at the drift bound, on this node's clock.
    settle: Duration,
    /// Per peer: when its rejected messages were last logged, and how many since.
    rejected_warned: BTreeMap<NodeId, (Option<Instant>, u64)>,
    /// Failed handshakes, logged as a periodic summary.
    rejections: Rejections,
    /// A driver was refused (connected cap) and none admitted since: log once per streak.
    refusing: bool,
    /// The core's latest state, not yet durable because a write failed transiently. While
    /// set, nothing the core transmits is sent (it may carry that term or vote).
    unwritten: Option<clustd_core::PersistentState>,
    /// The last transient write error of the current streak, and how many in a row.
    write_failing: Option<(String, u64)>,
    /// When to retry the write of `unwritten`.
    write_retry_at: Instant,
    /// When the status snapshot's driver list was last built.
    status_drivers_built: Option<Instant>,
    /// The driver list must be rebuilt at the next status update.
    status_drivers_stale: bool,
    /// The service's health: every check's counting (see [`health`]).
    health: Tracker,
    /// The `[[check]]` runners; dropped (aborted) with the runtime.
    _check_tasks: CheckTasks,
    /// Where the check tasks send their results (new tasks after a reload, too).
    check_tx: mpsc::Sender<CheckResult>,
    /// Their results. Replaced with the tasks on a reload, so no result of an old task
    /// (still queued) counts against a new check of the same name.
    check_rx: mpsc::Receiver<CheckResult>,
    /// Whether the node was eligible when drivers and the log last heard of it.
    told_eligible: bool,
    /// Drivers whose refused health report was logged (once per connection).
    health_refusal_logged: BTreeSet<NodeId>,
    /// Unconfirmed lease ends up to this one are fenced (or being fenced).
    fenced_through: Option<Instant>,
    /// A fence command is running.
    fence_running: bool,
    /// Where fence runs report.
    fence_tx: mpsc::Sender<fence::FenceDone>,
    /// The last fence run, for status.
    last_fence: Option<FenceStatus>,
    /// Fence runs since start.
    fences: u64,
    /// What runs a fence, if `[fence]` is configured.
    fencer: Option<Arc<dyn Fencer>>,
    /// `[fence] watchdog`, if configured.
    watchdog: Option<Watchdog>,
    /// What [`Status::elections`] has recorded so far.
    election_seen: ElectionSeen,
}

/// The runtime's memory for [`Status::elections`]: the core's events say when a vote
/// quorum and mastership came, but not when the election timer fired or when the new
/// term and vote became durable, so those are read off the role and the persisted state.
struct ElectionSeen {
    /// The protocol role as of the last [`Runtime::flush`].
    role: Role,
    /// The last term whose campaign was recorded.
    campaign: Option<Term>,
    /// The last term whose own vote was recorded as durable.
    persisted: Option<Term>,
    /// The last term in which a driver was recorded as told "master".
    told: Option<Term>,
}

fn log_rejections(report: &Report) {
    if report.warning {
        tracing::warn!("{}", report.text);
    } else {
        tracing::debug!("{}", report.text);
    }
}

/// Runs one node until `shutdown` completes (then steps down gracefully if leader) or a
/// fatal error. `control` comes from [`control`]; keep the [`Handle`] to observe and command.
pub async fn run<N: Net, C: Clock, S: StateStore>(
    settings: Settings,
    net: N,
    clock: C,
    mut store: S,
    control: Control,
    shutdown: impl Future<Output = Shutdown>,
) -> Result<(), RuntimeError> {
    let persisted = store.load()?;
    let mut node = Node::new(settings.core.clone(), persisted, clock.now())?;
    if settings.maintenance {
        tracing::info!("in maintenance (node.maintenance): never standing for election");
        node.set_maintenance(clock.now(), true);
    }
    // A node with checks starts unhealthy: it never becomes master before its service
    // has passed every check `rise` times.
    let health = Tracker::new(&settings.checks, settings.health.start_failure);
    node.set_healthy(clock.now(), health.is_healthy());
    let (check_tx, check_results) = mpsc::channel::<CheckResult>(64);
    let check_sender = check_tx.clone();
    let (fence_tx, mut fence_results) = mpsc::channel::<fence::FenceDone>(4);
    let check_tasks = health::spawn_checks(&settings.checks, check_tx);
    let node_eligible_at_start = node.eligible();
    if !settings.checks.is_empty() {
        tracing::info!(
            checks = settings.checks.len(),
            "unhealthy (not eligible to be master) until every check has passed `rise` times in a row"
        );
    }
    let mut config = EndpointConfig::new(
        settings.transport,
        settings.id.clone(),
        PeerKind::Peer,
        settings.secret.clone(),
    );
    config.listen = Some(settings.listen);
    config.peers = settings.peers.clone();
    config.node_key = settings.node_key.clone();
    config.peer_keys = settings.peer_keys.clone();
    config.accept_drivers = true;
    config.driver_secret = settings.driver_secret.clone();
    config.driver_socket = settings.driver_socket.clone();
    config.dial_tls = settings.tls.is_some();
    config.tls = settings.tls.clone();
    config.limits = settings.transport_limits.clone();
    let settle = settings.core.stop_budget_at_drift_bound();
    // This process's incarnation: a seed of its own (OS randomness; in the simulation,
    // derived from the run's seed), never the endpoint's.
    let net_seed = net.random_seed();
    let (endpoint, mut events) = Endpoint::start(net, config).await.map_err(|e| match e {
        clustd_transport::TransportError::Io(io) => RuntimeError::Listen {
            listen: settings.listen,
            kind: io.kind(),
            why: match io.kind() {
                std::io::ErrorKind::AddrInUse => format!(
                    "cannot bind: the address is in use (another clustd, or another program on port {}?)",
                    settings.listen.port()
                ),
                std::io::ErrorKind::AddrNotAvailable => {
                    "cannot bind: no interface of this machine has that address".to_owned()
                }
                _ => format!("cannot bind: {io}"),
            },
        },
        other => RuntimeError::Transport(other),
    })?;
    *lock(&control.shared.local_addr) = endpoint.local_addr();
    tracing::info!(
        node = %settings.id,
        transport = ?settings.transport,
        listen = %endpoint.local_addr().map_or_else(|| "none".to_owned(), |a| a.to_string()),
        term = node.term().0,
        "clustd node started"
    );
    let Control {
        mut commands,
        shared,
        fencer,
        watchdog_device,
    } = control;
    let fencer = settings.fence.as_ref().map(|fence| {
        fencer.unwrap_or_else(|| Arc::new(fence::CommandFencer::new(fence)) as Arc<dyn Fencer>)
    });
    let watchdog = settings
        .watchdog
        .clone()
        .map(|w| Watchdog::new(w, watchdog_device));
    let mut rt = Runtime {
        node,
        endpoint,
        clock,
        store,
        settings,
        shared,
        table: DriverTable::default(),
        seq: 0,
        last_reason: "started",
        last_heard: BTreeMap::new(),
        reports: BTreeMap::new(),
        report_sent: None,
        report_pending: false,
        incarnation: {
            let seed = net_seed;
            u64::from_le_bytes([
                seed[0], seed[1], seed[2], seed[3], seed[4], seed[5], seed[6], seed[7],
            ])
        },
        incarnations: BTreeMap::new(),
        first_report: BTreeMap::new(),
        duplicate_warned: BTreeMap::new(),
        rtt_pending: BTreeMap::new(),
        peers_up: BTreeSet::new(),
        peers_down: BTreeMap::new(),
        awaiting_stop: false,
        settle,
        rejected_warned: BTreeMap::new(),
        rejections: Rejections::new(),
        refusing: false,
        unwritten: None,
        write_failing: None,
        write_retry_at: Instant::from_millis(0),
        status_drivers_built: None,
        status_drivers_stale: true,
        // Told at boot by the INFO line above, not as a fault.
        told_eligible: node_eligible_at_start,
        health,
        _check_tasks: check_tasks,
        check_tx: check_sender,
        check_rx: check_results,
        health_refusal_logged: BTreeSet::new(),
        fenced_through: None,
        fence_running: false,
        fence_tx,
        last_fence: None,
        fences: 0,
        fencer,
        watchdog,
        election_seen: ElectionSeen {
            role: Role::Follower,
            campaign: None,
            persisted: None,
            told: None,
        },
    };
    // Every peer starts out unreachable until it connects (warned about past ET_max).
    let started = rt.clock.now();
    let peer_ids: Vec<NodeId> = rt.settings.peers.keys().cloned().collect();
    for peer in peer_ids {
        rt.peers_down.insert(peer, (started, None));
    }
    rt.sync_eligibility();
    rt.init_status();
    tokio::pin!(shutdown);
    // Set at shutdown: give up waiting for a successor at this time.
    let mut leaving: Option<Instant> = None;
    loop {
        let deadline = rt.clock.deadline(rt.node.poll_timeout());
        let rejections_due = rt.rejections.poll_timeout();
        let summary_at = rejections_due.map_or(deadline, |at| rt.clock.deadline(at));
        let retry_at = rt.clock.deadline(rt.write_retry_at);
        let health_due = rt.health.poll_timeout();
        let health_at = health_due.map_or(deadline, |at| rt.clock.deadline(at));
        let unreachable_due = rt.unreachable_due();
        let unreachable_at = unreachable_due.map_or(deadline, |at| rt.clock.deadline(at));
        let silence_due = rt.driver_silence_due();
        let silence_at = silence_due.map_or(deadline, |at| rt.clock.deadline(at));
        let fence_due = rt.fence_due();
        let fence_at = fence_due.map_or(deadline, |at| rt.clock.deadline(at));
        let report_at = rt.clock.deadline(rt.report_due());
        tokio::select! {
            biased;
            how = &mut shutdown, if leaving.is_none() => {
                let now = rt.clock.now();
                if how == Shutdown::Immediate {
                    tracing::info!("immediate shutdown");
                    break;
                }
                if rt.node.role() != Role::Leader {
                    tracing::info!("shutdown requested; not leader, leaving at once");
                    break;
                }
                tracing::info!("shutdown requested; stepping down first");
                rt.node.step_down(now);
                leaving = Some(now + max_shutdown_time(&rt.settings));
            }
            Some((command, done)) = commands.recv() => {
                let now = rt.clock.now();
                let mut answer = Ok(String::new());
                match command {
                    Command::StepDown => rt.node.step_down(now),
                    Command::Switchover(to) => match rt.node.request_transfer(now, &to) {
                        Ok(leader) if leader == rt.settings.id => {
                            tracing::info!(to = %to, "switchover: handing over to {to}");
                        }
                        Ok(leader) => {
                            tracing::info!(to = %to, leader = %leader, "switchover: asked the master {leader} to hand over to {to}");
                        }
                        Err(e) => answer = Err(e.to_string()),
                    },
                    Command::Maintenance(on) => rt.node.set_maintenance(now, on),
                    Command::Refresh => {
                        rt.update_status();
                        rt.update_cluster_view();
                        let _ = done.send(Ok(String::new()));
                        continue;
                    }
                    Command::Reload => {
                        answer = rt.reload();
                        match &answer {
                            Ok(changes) => tracing::info!("config reloaded: {changes}"),
                            Err(why) => tracing::error!("config not reloaded: {why}"),
                        }
                    }
                }
                rt.sync_eligibility();
                rt.confirm_stop_if_done();
                rt.flush()?;
                rt.status_drivers_stale = true;
                rt.update_status();
                let _ = done.send(answer);
                continue;
            }
            event = events.recv() => match event {
                Some(event) => rt.on_transport(event),
                None => break,
            },
            () = tokio::time::sleep_until(retry_at), if rt.unwritten.is_some() => {
                rt.write_state()?;
            }
            () = tokio::time::sleep_until(deadline) => {
                let now = rt.clock.now();
                rt.node.handle_timeout(now);
            }
            () = tokio::time::sleep_until(summary_at), if rejections_due.is_some() => {
                rt.summarize_rejections();
            }
            Some(result) = rt.check_rx.recv() => rt.on_check_result(result),
            () = tokio::time::sleep_until(fence_at), if fence_due.is_some() => {}
            () = tokio::time::sleep_until(report_at) => {}
            () = tokio::time::sleep_until(silence_at), if silence_due.is_some() => {}
            () = tokio::time::sleep_until(unreachable_at), if unreachable_due.is_some() => {
                rt.warn_unreachable_peers();
            }
            Some(done) = fence_results.recv() => rt.on_fence_done(done),
            () = tokio::time::sleep_until(health_at), if health_due.is_some() => {
                let now = rt.clock.now();
                let transition = rt.health.handle_timeout(now);
                rt.apply_health(transition);
            }
        }
        // Judged only with the transport's queue drained: after a stall of this loop (a
        // slow write, SIGSTOP of the daemon) the drivers' keepalives wait unread there, and
        // the select takes events before timers.
        if events.is_empty() {
            rt.check_driver_liveness();
        }
        // Before anything is forgotten: a driver whose lease ended unconfirmed is fenced.
        rt.fence_if_due();
        rt.tend_watchdog();
        // Drivers whose lease plus stop budget ran out no longer hold up a hand-over.
        rt.forget_settled_drivers();
        rt.confirm_stop_if_done();
        rt.flush()?;
        rt.update_status();
        rt.send_report_if_due();
        if let Some(until) = leaving {
            // Stay until a successor leads (so the hand-over message got out), or give up.
            let successor = rt.node.leader().is_some_and(|l| *l != rt.settings.id);
            if successor || rt.clock.now() >= until {
                break;
            }
        }
    }
    let stopped = rt.service_stopped(rt.clock.now());
    if let Some(w) = &mut rt.watchdog {
        w.close(stopped);
    }
    tracing::info!(term = rt.node.term().0, "clustd node stopped");
    rt.endpoint.shutdown().await;
    Ok(())
}

impl<C: Clock, S: StateStore> Runtime<C, S> {
    fn on_transport(&mut self, event: TransportEvent) {
        let now = self.clock.now();
        match event {
            TransportEvent::Frame {
                from,
                kind: PeerKind::Peer,
                frame,
            } => match codec::decode::<Message>(&frame) {
                Ok(Message::Report { term, report }) => {
                    self.last_heard.insert(from.clone(), now);
                    if report.is_bounded() {
                        self.check_incarnations(&from, &report);
                        self.reports.insert(from, (now, term, *report));
                    } else {
                        tracing::debug!(peer = %from, "report over the size limits: dropped");
                    }
                }
                Ok(msg) => {
                    self.last_heard.insert(from.clone(), now);
                    if let Message::TransferRequest { to, term, .. } = &msg {
                        tracing::info!(peer = %from, to = %to, term = term.0, "switchover to {to} requested by {from}");
                    }
                    if let Message::HeartbeatAck { round, .. } = &msg
                        && let Some((sent_round, sent_at)) = self.rtt_pending.get(&from)
                        && sent_round == round
                    {
                        let rtt = now.saturating_duration_since(*sent_at);
                        self.shared.metrics.heartbeat_rtt.observe(rtt.as_secs_f64());
                        self.rtt_pending.remove(&from);
                    }
                    if let Message::TimeoutNow { term, .. } = &msg {
                        tracing::debug!(
                            peer = %from,
                            term = term.0,
                            our_term = self.node.term().0,
                            role = ?self.node.role(),
                            leader = ?self.node.leader(),
                            eligible = self.node.eligible(),
                            "hand-over: asked to campaign now"
                        );
                    }
                    self.node.handle_message(now, &from, msg);
                }
                Err(e) => tracing::warn!(peer = %from, error = %e, "undecodable frame from peer"),
            },
            TransportEvent::Frame {
                from,
                kind: PeerKind::Driver,
                ..
            } if !self.table.drivers.get(&from).is_some_and(|d| d.connected) => {
                // Refused (connected-driver cap): told nothing, so nothing it says counts,
                // and a chatty one must not flood the log.
                tracing::trace!(driver = %from, "frame from a driver that was not admitted: ignored");
            }
            TransportEvent::Frame {
                from,
                kind: PeerKind::Driver,
                frame,
            } => {
                self.driver_heard(&from, now);
                match codec::decode::<FromDriver>(&frame) {
                    Ok(FromDriver::Alive) => {}
                    Ok(FromDriver::Ack { seq, role, result }) => {
                        self.on_driver_ack(&from, seq, role, result)
                    }
                    Ok(FromDriver::Health {
                        check,
                        healthy,
                        detail,
                        fall,
                        rise,
                    }) => self.on_driver_health(&from, &check, healthy, &detail, fall, rise),
                    Ok(other) => {
                        tracing::debug!(driver = %from, ?other, "unexpected driver message")
                    }
                    Err(e) => {
                        tracing::warn!(driver = %from, error = %e, "undecodable frame from driver")
                    }
                }
            }
            TransportEvent::Connected { id, kind, process } => match kind {
                PeerKind::Peer => {
                    // A new connection to a peer already connected (the duplicate of a
                    // crossed dial) is churn, not news.
                    if self.peers_up.contains(&id) {
                        tracing::debug!(peer = %id, "peer connected again (duplicate connection)");
                    } else {
                        tracing::info!(peer = %id, "peer connected");
                    }
                    self.peer_reachable(&id, now);
                    // It hears what this node says about itself at once.
                    self.report_sent = None;
                    self.shared
                        .metrics
                        .peer_up
                        .get_or_create(&PeerLabel {
                            peer: id.to_string(),
                        })
                        .set(1);
                    if self.peers_up.insert(id.clone()) {
                        self.tell_drivers_peer(id, true);
                    }
                }
                PeerKind::Driver => self.driver_connected(&id, now, process),
            },
            TransportEvent::Disconnected { id, kind } => match kind {
                PeerKind::Peer => {
                    self.shared
                        .metrics
                        .peer_up
                        .get_or_create(&PeerLabel {
                            peer: id.to_string(),
                        })
                        .set(0);
                    // The endpoint registers a replacement connection before it announces
                    // the end of the old one: if the peer is still connected, nothing changed.
                    let replaced = self
                        .endpoint
                        .connected()
                        .iter()
                        .any(|(p, kind)| *p == id && *kind == PeerKind::Peer);
                    if replaced {
                        tracing::debug!(peer = %id, "a duplicate connection to the peer closed");
                    } else {
                        tracing::info!(peer = %id, "peer disconnected");
                        self.peers_down.entry(id.clone()).or_insert((now, None));
                    }
                    if !replaced && self.peers_up.remove(&id) {
                        self.tell_drivers_peer(id, false);
                    }
                }
                PeerKind::Driver => {
                    let Some(d) = self.table.drivers.get_mut(&id) else {
                        tracing::info!(driver = %id, "driver disconnected");
                        return;
                    };
                    d.connected = false;
                    d.unresponsive = false;
                    self.health_refusal_logged.remove(&id);
                    let forgotten = self.health.forget_driver(id.as_str(), now);
                    for name in &forgotten.removed {
                        self.shared.metrics.forget_check(name);
                    }
                    if !forgotten.removed.is_empty() {
                        tracing::info!(driver = %id, checks = ?forgotten.removed, "driver disconnected: the checks it reported no longer count");
                    }
                    self.apply_health(forgotten.transition);
                    let Some(d) = self.table.drivers.get_mut(&id) else {
                        return;
                    };
                    if d.may_run_at(now, self.settle) {
                        // Correct and expected after a crash of the driver's link; it keeps
                        // holding up a hand-over until its fail-safe has surely stopped it.
                        let left = (d.lease_until + self.settle).saturating_duration_since(now);
                        tracing::warn!(
                            driver = %id,
                            "driver disconnected while it may run the service: counted as running for {} ms more (lease end + stop budget)",
                            left.as_millis()
                        );
                    } else {
                        tracing::info!(driver = %id, "driver disconnected");
                    }
                    self.status_drivers_stale = true;
                    self.admit_waiting_drivers(&id, now);
                }
            },
            TransportEvent::HandshakeFailed { addr, error } => {
                let reason = FailureReason::of(&error);
                self.shared
                    .metrics
                    .handshake_failures
                    .get_or_create(&ReasonLabel {
                        reason: reason.label().into(),
                    })
                    .inc();
                // Never a line per attempt (the transport logs those at debug): a flood of
                // garbage would be a flood of logs.
                if let Some(report) = self.rejections.record(now, addr, &error) {
                    log_rejections(&report);
                }
            }
            _ => {}
        }
    }

    /// Logs the rejection summary when its interval is over.
    fn summarize_rejections(&mut self) {
        let now = self.clock.now();
        if let Some(report) = self.rejections.handle_timeout(now) {
            log_rejections(&report);
        }
    }

    /// A driver connected: admitted (told its role at once) unless
    /// [`MAX_CONNECTED_DRIVERS`] are connected already.
    fn driver_connected(&mut self, id: &NodeId, now: Instant, process: Option<DriverProcess>) {
        let connected = self.table.drivers.values().filter(|d| d.connected).count();
        if connected >= MAX_CONNECTED_DRIVERS {
            self.shared.metrics.drivers_refused.inc();
            if self.refusing {
                tracing::debug!(driver = %id, "driver refused: connected-driver cap reached");
            } else {
                self.refusing = true;
                tracing::warn!(
                    driver = %id,
                    cap = MAX_CONNECTED_DRIVERS,
                    "driver refused: {MAX_CONNECTED_DRIVERS} drivers are connected already; it is sent nothing (so it stays backup) and its frames are ignored until a slot frees (further refusals are logged at debug)"
                );
            }
            return;
        }
        self.refusing = false;
        self.status_drivers_stale = true;
        tracing::info!(driver = %id, "driver connected");
        self.table.make_room_for(id, now, self.settle);
        let d = self.table.drivers.entry(id.clone()).or_default();
        d.connected = true;
        d.last_heard = Some(now);
        if !d.may_run_at(now, self.settle) {
            d.processes.clear();
            d.process_unknown = false;
        }
        match process {
            Some(process) if d.processes.contains(&process) => {}
            Some(process) if d.processes.len() < MAX_DRIVER_PROCESSES => {
                d.processes.push(process);
            }
            // Over the network, or more connections than remembered: some connection that
            // may run the service is of an unknown process, and `kill_driver` says so.
            _ => d.process_unknown = true,
        }
        if d.may_run_at(now, self.settle) {
            // Whatever this connection says, the one before may still run until its lease
            // end plus the stop budget.
            d.held_until = Some(d.held_until.map_or(d.lease_until, |h| h.max(d.lease_until)));
        }
        // Bring the role up to date first: after a stall (SIGSTOP, a blocked loop) the
        // lease may have run out without a timer having fired yet, and a spent lease must
        // not go out as "master". (Calling early is harmless.)
        self.node.handle_timeout(now);
        self.send_role_to(id, now);
        // Then the peers connected now, so a driver that tells people knows who is up (the
        // notify driver picks one node to announce a lost master by it).
        let term = self.node.term();
        for peer in &self.peers_up {
            let msg = ToDriver::Peer {
                peer: peer.clone(),
                up: true,
                term,
            };
            self.send_frame(id, &msg, SendClass::Reliable);
        }
    }

    /// After a driver left: admits drivers that were refused and are still connected to
    /// the transport, while there is room.
    /// `left` is the one that just left: if the transport lists it, a replacement
    /// connection is registered and its own `Connected` follows.
    fn admit_waiting_drivers(&mut self, left: &NodeId, now: Instant) {
        let waiting: Vec<NodeId> = self
            .endpoint
            .connected()
            .into_iter()
            .filter(|(id, kind)| {
                *kind == PeerKind::Driver
                    && id != left
                    && !self.table.drivers.get(id).is_some_and(|d| d.connected)
            })
            .map(|(id, _)| id)
            .collect();
        for id in waiting {
            if self.table.drivers.values().filter(|d| d.connected).count() >= MAX_CONNECTED_DRIVERS
            {
                return;
            }
            // Its process id came with its refused `Connected`: unknown now (`kill_driver` fails for it).
            self.driver_connected(&id, now, None);
        }
    }

    /// Peer up/down for drivers that report cluster events (the notify driver). Only
    /// transitions are sent: a driver that connects later is not told which peers are down
    /// already (it can ask `/status`). Reliable class: an event lost in a full queue would
    /// never be repeated, unlike a lease renewal.
    fn tell_drivers_peer(&self, peer: NodeId, up: bool) {
        let msg = ToDriver::Peer {
            peer,
            up,
            term: self.node.term(),
        };
        for id in self.connected_drivers() {
            self.send_frame(&id, &msg, SendClass::Reliable);
        }
    }

    fn on_driver_ack(&mut self, from: &NodeId, seq: u64, role: DriverRole, result: ActionResult) {
        if !self.table.drivers.get(from).is_some_and(|d| d.connected) {
            // A refused driver (connected cap): it was told nothing, so it has nothing to say.
            tracing::debug!(driver = %from, "ack from a driver that was not admitted: ignored");
            return;
        }
        // Bounded before it is stored, logged, shown or forwarded to every driver.
        let result = match result {
            ActionResult::Failed(why) => ActionResult::Failed(truncate_reason(&why)),
            other => other,
        };
        let (label, text) = describe_result(&result);
        self.shared
            .metrics
            .driver_results
            .get_or_create(&ResultLabel {
                result: label.into(),
            })
            .inc();
        if result == ActionResult::Ok {
            tracing::info!(driver = %from, seq, role = role.as_str(), result = %text, "driver acknowledged");
        } else {
            let action = match role {
                DriverRole::Master => "start",
                DriverRole::Backup => "stop",
            };
            tracing::warn!(driver = %from, seq, role = role.as_str(), result = %text, "driver {from}'s {action} did not succeed: {text}");
        }
        let now = self.clock.now();
        let settle = self.settle;
        let Some(d) = self.table.drivers.get_mut(from) else {
            return;
        };
        d.acked_seq = Some(seq);
        d.last_result = Some(text.clone());
        let latest = seq == d.last_seq;
        if latest && role == DriverRole::Master {
            self.on_start_result(from, &result, &text, now);
            return;
        }
        // Only an ack of the latest transition counts: an older "backup" ack must not
        // clear a newer "master".
        if !latest || role != DriverRole::Backup {
            return;
        }
        let term = d.last_term;
        // An earlier connection of this id may still run: this ack speaks only for the
        // current one, so it is no stop of the service (nor recorded as one).
        let held = d.held_until.is_some_and(|until| now < until + settle);
        if held && result == ActionResult::Ok && d.may_run {
            // Nothing tells this id's connections apart, so nothing this one says ends the
            // id's service interval: it runs to the latest lease the id holds.
            d.held_until = d.held_until.map(|until| until.max(d.lease_until));
            tracing::warn!(
                driver = %from,
                "driver confirmed a stop, but an earlier connection of this id was told master and never confirmed: the id counts as running until its latest lease end plus the stop budget"
            );
        }
        // The record states what the driver said, before (and apart from) what this daemon
        // makes of it: a checker must not take the daemon's word for a stop.
        if result == ActionResult::Ok && d.may_run && !held {
            self.record(DriverRecord::StopConfirmed {
                at: now,
                driver: from.clone(),
                term,
            });
        }
        let Some(d) = self.table.drivers.get_mut(from) else {
            return;
        };
        // (`clustd_mutant = "f3"` reintroduces the bug, for README's mutation table.)
        if result == ActionResult::Ok || cfg!(clustd_mutant = "f3") {
            d.stop_failed = false;
            d.may_run = false;
            self.confirm_stop_if_done();
        } else {
            // Nothing ends: the driver may still run the service until its lease end plus
            // the stop budget, and the hand-over waits for that.
            d.stop_failed = true;
            d.last_stop_failure = Some(truncate_reason(&format!("term {term}: {text}")));
            let lease_until = d.may_run_at(now, settle).then_some(d.lease_until);
            self.report_stop_failure(from, term, result, &text, lease_until, now);
        }
    }

    /// A failed or timed-out stop: the one driver event operators must not miss. Logged at
    /// ERROR, counted, shown in status, recorded, and sent to every connected driver (the
    /// notify driver tells people).
    fn report_stop_failure(
        &self,
        driver: &NodeId,
        term: Term,
        result: ActionResult,
        text: &str,
        lease_until: Option<Instant>,
        now: Instant,
    ) {
        self.shared.metrics.driver_stop_failures.inc();
        let wall = |at: Instant| {
            let ahead =
                u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX);
            format_unix_ms(self.clock.wall_clock_ms().saturating_add(ahead))
        };
        let consequence = match lease_until {
            Some(until) => format!(
                "the service may still run until {} (its lease end; surely stopped by {}, \
                 lease end + stop budget, when its fail-safe has acted)",
                wall(until),
                wall(until + self.settle)
            ),
            None => "it holds no lease from this daemon now; check whether the service \
                     still runs there"
                .to_string(),
        };
        tracing::error!(
            target: SERVICE_LOG_TARGET,
            record = "stop_failed",
            node = %self.settings.id,
            driver = %driver,
            term = term.0,
            result = %text,
            at_mono_ns = self.clock.monotonic_ns(now),
            lease_until_mono_ns = lease_until.map(|u| self.clock.monotonic_ns(u)),
            "driver {driver}: stop FAILED in term {term} ({text}); {consequence}"
        );
        let msg = ToDriver::StopFailed {
            driver: driver.clone(),
            term: self.node.term(),
            result: result.clone(),
        };
        for id in self.connected_drivers() {
            self.send_frame(&id, &msg, SendClass::Reliable);
        }
        let _ = self.shared.records.send(DriverRecord::StopFailed {
            at: now,
            driver: driver.clone(),
            term,
            result,
        });
    }

    /// Publishes a record and logs it for out-of-process checkers (instants as machine
    /// monotonic clock readings, which every process on the machine shares).
    /// [`DriverRecord::StopFailed`] is logged by [`Runtime::report_stop_failure`].
    fn record(&self, record: DriverRecord) {
        let node = &self.settings.id;
        let mono = |at: Instant| self.clock.monotonic_ns(at);
        match &record {
            DriverRecord::ToldMaster {
                at,
                driver,
                term,
                lease_until,
            } => tracing::info!(
                target: SERVICE_LOG_TARGET,
                record = "told_master",
                node = %node,
                driver = %driver,
                term = term.0,
                at_mono_ns = mono(*at),
                lease_until_mono_ns = mono(*lease_until),
                "driver {driver} told master in term {term}, lease for {} ms",
                lease_until.saturating_duration_since(*at).as_millis()
            ),
            DriverRecord::LeaseGiven {
                at,
                driver,
                lease_until,
            } => tracing::debug!(
                target: SERVICE_LOG_TARGET,
                record = "lease_given",
                node = %node,
                driver = %driver,
                at_mono_ns = mono(*at),
                lease_until_mono_ns = mono(*lease_until),
                "driver {driver} lease renewed"
            ),
            DriverRecord::StopConfirmed { at, driver, term } => tracing::info!(
                target: SERVICE_LOG_TARGET,
                record = "stop_confirmed",
                node = %node,
                driver = %driver,
                term = term.0,
                at_mono_ns = mono(*at),
                "driver {driver} confirmed its stop (term {term})"
            ),
            DriverRecord::Fenced { at, driver } => tracing::info!(
                target: SERVICE_LOG_TARGET,
                record = "fenced",
                node = %node,
                driver = %driver,
                at_mono_ns = mono(*at),
                "driver {driver}'s service fenced"
            ),
            DriverRecord::StopFailed { .. } => {}
        }
        // No receiver is fine: nobody is checking.
        let _ = self.shared.records.send(record);
    }

    /// Step-down hands over as soon as no driver may still be running the service: each
    /// one told "master" has confirmed its stop with `Ok`, or is past its lease end plus
    /// the stop budget. Otherwise the core hands over at its own lease end plus the budget.
    fn confirm_stop_if_done(&mut self) {
        if !self.awaiting_stop {
            return;
        }
        if self.node.role() != Role::Leader {
            // The hand-over happened (or leadership was lost): nothing left to confirm.
            self.awaiting_stop = false;
            return;
        }
        let now = self.clock.now();
        if self.table.may_run_until(now, self.settle).is_some() {
            return;
        }
        self.awaiting_stop = false;
        self.node.confirm_demoted(now);
    }

    /// A frame from connected driver `from`: it runs. If it had been silent past the
    /// timeout, its `responding` check passes again.
    fn driver_heard(&mut self, from: &NodeId, now: Instant) {
        let Some(d) = self.table.drivers.get_mut(from) else {
            return;
        };
        let silent = d.last_heard.map(|t| now.saturating_duration_since(t));
        d.last_heard = Some(now);
        if !d.unresponsive {
            return;
        }
        d.unresponsive = false;
        self.status_drivers_stale = true;
        let silent_ms = silent.unwrap_or_default().as_millis();
        tracing::warn!(driver = %from, silent_ms, "driver {from} responding again after {silent_ms} ms of silence");
        self.on_driver_health(
            from,
            RESPONDING_CHECK,
            true,
            &format!("responding again after {silent_ms} ms"),
            1,
            1,
        );
    }

    /// When the next WARN about an unreachable peer is due.
    fn unreachable_due(&self) -> Option<Instant> {
        let first = self.settings.core.election_timeout_max;
        self.peers_down
            .values()
            .map(|(since, warned)| match warned {
                None => *since + first,
                Some(at) => *at + Duration::from_secs(60),
            })
            .min()
    }

    /// WARNs about each peer unreachable for longer than `ET_max`, then once a minute.
    fn warn_unreachable_peers(&mut self) {
        let now = self.clock.now();
        let voters = self.settings.peers.len() + 1;
        let needed = voters / 2 + 1;
        // What the transport has right now (the drivers' view, `peers_up`, lags a
        // replaced connection by an event).
        let connected: BTreeSet<NodeId> = self
            .endpoint
            .connected()
            .into_iter()
            .filter(|(_, kind)| *kind == PeerKind::Peer)
            .map(|(id, _)| id)
            .collect();
        let reachable = connected.len() + 1;
        let quorum = if reachable >= needed {
            "quorum holds"
        } else {
            "NO QUORUM: no node can be master until enough peers are back"
        };
        let first = self.settings.core.election_timeout_max;
        let mut due = Vec::new();
        for (peer, (since, warned)) in &mut self.peers_down {
            if connected.contains(peer) {
                continue;
            }
            let at = match warned {
                None => *since + first,
                Some(at) => *at + Duration::from_secs(60),
            };
            if at <= now {
                *warned = Some(now);
                due.push((peer.clone(), now.saturating_duration_since(*since)));
            }
        }
        for (peer, down) in due {
            let addr = self
                .settings
                .peers
                .get(&peer)
                .map(ToString::to_string)
                .unwrap_or_default();
            tracing::warn!(
                peer = %peer,
                addr = %addr,
                reachable,
                voters,
                needed,
                "peer {peer} ({addr}) unreachable for {}: {reachable} of {voters} voters reachable, {needed} needed for a quorum; {quorum}",
                crate::status::human_duration(down)
            );
        }
    }

    /// A peer connected: forgotten as down, and an INFO if it was warned about.
    fn peer_reachable(&mut self, peer: &NodeId, now: Instant) {
        if let Some((since, Some(_))) = self.peers_down.remove(peer) {
            let addr = self
                .settings
                .peers
                .get(peer)
                .map(ToString::to_string)
                .unwrap_or_default();
            tracing::info!(
                peer = %peer,
                addr = %addr,
                "peer {peer} ({addr}) is reachable again after {}",
                crate::status::human_duration(now.saturating_duration_since(since))
            );
        }
    }

    /// When the next connected driver that is heard from would count as not responding.
    fn driver_silence_due(&self) -> Option<Instant> {
        let timeout = self.settings.health.driver_timeout;
        self.table
            .drivers
            .values()
            .filter(|d| d.connected && !d.unresponsive)
            .filter_map(|d| d.last_heard)
            .min()
            .map(|t| t + timeout)
    }

    /// Connected drivers silent past `health.driver_timeout_ms` make the node unhealthy
    /// (check `<driver>/responding`): an unresponsive driver cannot start the service, nor
    /// stop it, so this node must not campaign, and a master hands over (its `[fence]` then
    /// stops what the driver cannot).
    fn check_driver_liveness(&mut self) {
        let now = self.clock.now();
        let timeout = self.settings.health.driver_timeout;
        let silent: Vec<(NodeId, Duration)> = self
            .table
            .drivers
            .iter_mut()
            .filter(|(_, d)| d.connected && !d.unresponsive)
            .filter_map(|(id, d)| {
                let for_ = now.saturating_duration_since(d.last_heard?);
                (for_ >= timeout).then(|| {
                    d.unresponsive = true;
                    (id.clone(), for_)
                })
            })
            .collect();
        for (id, for_) in silent {
            self.status_drivers_stale = true;
            let detail = format!(
                "driver {id} not responding for {:.1} s (health.driver_timeout_ms = {})",
                for_.as_secs_f64(),
                timeout.as_millis()
            );
            tracing::error!(driver = %id, "{detail}: this node is unhealthy until it is heard again");
            self.on_driver_health(&id, RESPONDING_CHECK, false, &detail, 1, 1);
        }
    }

    /// Whether the service surely does not run here: not master, and every driver told
    /// "master" confirmed its stop, or a successful fence covered its lease.
    fn service_stopped(&self, now: Instant) -> bool {
        if self.node.is_master() || self.fence_running {
            return false;
        }
        if self.table.forgotten_may_run_until.is_some_and(|u| now < u) {
            return false;
        }
        let settle = self.settle;
        self.table
            .drivers
            .values()
            .filter(|d| d.may_run_at(now, settle))
            .all(|d| {
                d.unconfirmed_until(now, settle)
                    .is_some_and(|end| d.fenced_ok_until.is_some_and(|t| end <= t))
            })
    }

    /// Feeds the watchdog while master with enough lease left and every driver responsive;
    /// disarms it once the service stopped here.
    fn tend_watchdog(&mut self) {
        let now = self.clock.now();
        let Some(timeout) = self.watchdog.as_ref().map(Watchdog::timeout) else {
            return;
        };
        let responsive = !self
            .table
            .drivers
            .values()
            .any(|d| d.connected && d.unresponsive);
        // Fed while the service may run here under a lease: as master, and after a demotion
        // until its stop is confirmed, but never so late that, unfed, it would fire after
        // the latest lease given out plus the stop budget.
        let stopped = self.service_stopped(now);
        let lease = if self.node.is_master() {
            self.node.lease_until()
        } else {
            self.table
                .drivers
                .values()
                .filter(|d| d.may_run_at(now, self.settle))
                .map(|d| d.lease_until)
                .max()
        };
        let feed = !stopped
            && responsive
            && watchdog::may_feed(now, lease, timeout, self.settings.core.stop_budget);
        if let Some(w) = &mut self.watchdog {
            w.update(now, feed, stopped);
        }
    }

    /// When the next `[fence]` run is due: the earliest unconfirmed lease end not fenced
    /// yet, plus the stop budget, minus the fence's timeout.
    fn fence_due(&self) -> Option<Instant> {
        let fence = self.settings.fence.as_ref()?;
        // A master may run the service (a driver that left while master included): the
        // fence is for a node that must no longer run it.
        if self.fence_running || self.node.is_master() {
            return None;
        }
        let (now, settle) = (self.clock.now(), self.settle);
        self.table
            .drivers
            .values()
            .filter_map(|d| d.unconfirmed_until(now, settle))
            .filter(|end| self.fenced_through.is_none_or(|t| *end > t))
            .min()
            .map(|end| fence::start_at(end, self.settings.core.stop_budget, fence))
    }

    /// Runs the `[fence]` command if a driver's lease ended without a confirmed stop and
    /// the driver's own stop has had all the time the fence leaves it.
    fn fence_if_due(&mut self) {
        let now = self.clock.now();
        if self.fence_due().is_none_or(|at| now < at) {
            return;
        }
        let (Some(fence), Some(fencer)) = (self.settings.fence.clone(), self.fencer.clone()) else {
            return;
        };
        let budget = self.settings.core.stop_budget;
        let mut drivers = Vec::new();
        let mut through = self.fenced_through;
        for (id, d) in &self.table.drivers {
            if let Some(end) = d.unconfirmed_until(now, self.settle)
                && self.fenced_through.is_none_or(|t| end > t)
                && fence::start_at(end, budget, &fence) <= now
            {
                drivers.push((id.clone(), end));
                through = Some(through.map_or(end, |t| t.max(end)));
            }
        }
        self.fenced_through = through;
        self.fence_running = true;
        let names = drivers
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        tracing::error!(
            node = %self.settings.id,
            drivers = %names,
            timeout_ms = fence.timeout.as_millis() as u64,
            "FENCING: driver(s) {names} did not confirm a stop by the end of their lease (frozen, wedged or a failed stop); running [fence] so the service is dead by lease end plus the stop budget"
        );
        let request = fence::FenceRequest {
            node: self.settings.id.clone(),
            term: self.node.term().0,
            drivers: drivers.iter().map(|(id, _)| id.clone()).collect(),
            processes: drivers
                .iter()
                .filter_map(|(id, _)| {
                    let d = self.table.drivers.get(id)?;
                    Some(fence::DriverProcesses {
                        driver: id.clone(),
                        processes: d.processes.clone(),
                        complete: !d.process_unknown,
                    })
                })
                .collect(),
        };
        fence::spawn(
            fencer,
            fence.timeout,
            request,
            drivers,
            now,
            self.fence_tx.clone(),
        );
    }

    fn on_fence_done(&mut self, done: fence::FenceDone) {
        self.fence_running = false;
        self.fences += 1;
        let now = self.clock.now();
        let (label, text) = describe_result(&done.result);
        self.shared
            .metrics
            .fences
            .get_or_create(&ResultLabel {
                result: label.into(),
            })
            .inc();
        if done.result == ActionResult::Ok {
            let mut fenced = Vec::new();
            for (id, end) in &done.drivers {
                if let Some(d) = self.table.drivers.get_mut(id) {
                    d.fenced_ok_until = Some(d.fenced_ok_until.map_or(*end, |t| t.max(*end)));
                    // Told "master" again while the fence ran: the new run is not covered.
                    if d.lease_until <= *end && d.held_until.is_none_or(|h| h <= *end) {
                        fenced.push(id.clone());
                    }
                }
            }
            for driver in fenced {
                self.record(DriverRecord::Fenced { at: now, driver });
            }
        }
        let names: Vec<String> = done.drivers.iter().map(|(d, _)| d.to_string()).collect();
        let elapsed_ms = done.elapsed.as_millis() as u64;
        if done.result == ActionResult::Ok {
            tracing::error!(
                node = %self.settings.id,
                drivers = %names.join(", "),
                elapsed_ms,
                "fence done: the [fence] command succeeded for driver(s) {}; find out why they did not stop the service themselves",
                names.join(", ")
            );
        } else {
            tracing::error!(
                node = %self.settings.id,
                drivers = %names.join(", "),
                elapsed_ms,
                result = %text,
                "fence FAILED ({text}) for driver(s) {}: the service may STILL RUN on this node while another node becomes master; stop it by hand now",
                names.join(", ")
            );
        }
        let msg = ToDriver::Fenced {
            drivers: done.drivers.iter().map(|(id, _)| id.clone()).collect(),
            term: self.node.term(),
            result: done.result.clone(),
        };
        for id in self.connected_drivers() {
            self.send_frame(&id, &msg, SendClass::Reliable);
        }
        let ago = u64::try_from(now.saturating_duration_since(done.started).as_millis())
            .unwrap_or(u64::MAX);
        self.last_fence = Some(FenceStatus {
            at_unix_ms: self.clock.wall_clock_ms().saturating_sub(ago),
            drivers: names,
            result: text,
            elapsed_ms,
        });
    }

    /// Forgets disconnected drivers that can no longer run (see [`DriverTable::forget_settled`]).
    fn forget_settled_drivers(&mut self) {
        let now = self.clock.now();
        if self.table.forget_settled(now, self.settle) {
            self.status_drivers_stale = true;
        }
    }

    fn remaining_lease_ms(&self, now: Instant) -> u32 {
        self.node.lease_until().map_or(0, |until| {
            // The margin is a safety margin below the daemon's own lease, not a delivery
            // estimate: drivers count from `sent_at_ns`, the send time.
            let left = until
                .saturating_duration_since(now)
                .saturating_sub(self.settings.driver_lease_margin);
            u32::try_from(left.as_millis()).unwrap_or(u32::MAX)
        })
    }

    fn stop_budget_ms(&self) -> u32 {
        u32::try_from(self.settings.core.stop_budget.as_millis()).unwrap_or(u32::MAX)
    }

    fn send_role_to(&mut self, driver: &NodeId, now: Instant) {
        let role = if self.node.is_master() {
            DriverRole::Master
        } else {
            DriverRole::Backup
        };
        self.seq += 1;
        let term = self.node.term();
        let lease_remaining_ms = self.remaining_lease_ms(now);
        let msg = ToDriver::Role {
            role,
            term,
            node: self.settings.id.clone(),
            leader: self.node.leader().cloned(),
            lease_remaining_ms,
            sent_at_ns: self.clock.monotonic_ns(now),
            stop_budget_ms: self.stop_budget_ms(),
            reason: self.last_reason.to_string(),
            seq: self.seq,
        };
        let lease_until = now + Duration::from_millis(u64::from(lease_remaining_ms));
        let d = self.table.drivers.entry(driver.clone()).or_default();
        d.last_role = Some(role);
        d.last_term = term;
        d.last_seq = self.seq;
        if role == DriverRole::Master {
            // Marked before sending: a notice that fails to go out is still assumed to run.
            d.may_run = true;
            d.lease_until = d.lease_until.max(lease_until);
        }
        let sent = self.send_frame(driver, &msg, SendClass::Reliable);
        if sent && role == DriverRole::Master {
            if self.election_seen.told != Some(term) {
                self.election_seen.told = Some(term);
                self.election_step(ElectionStepKind::DriversTold, term, now);
            }
            self.record(DriverRecord::ToldMaster {
                at: now,
                driver: driver.clone(),
                term,
                lease_until,
            });
        }
    }

    /// One run of a `[[check]]` finished.
    fn on_check_result(&mut self, result: CheckResult) {
        let now = self.clock.now();
        let transition = self.health.record(&result, now);
        self.count_check(&result.name, result.healthy);
        if !result.healthy {
            let state = self.health.status(&result.name, now);
            let (failures, fall) = state.map_or((0, 0), |c| (c.consecutive_failures, c.fall));
            tracing::warn!(
                check = %result.name,
                failures,
                fall,
                duration_ms = u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
                "check {} failed ({failures} in a row, unhealthy at {fall}): {}",
                result.name,
                result.detail
            );
        }
        self.apply_health(transition);
    }

    /// Sets a check's metrics from its result and the tracker's view of it.
    fn count_check(&self, name: &str, passed: bool) {
        let now = self.clock.now();
        let healthy = self.health.status(name, now).is_some_and(|c| c.healthy);
        self.shared.metrics.check_result(name, passed, healthy);
    }

    /// A driver reported one result of a check it runs (`FromDriver::Health`).
    fn on_driver_health(
        &mut self,
        from: &NodeId,
        check: &str,
        healthy: bool,
        detail: &str,
        fall: u32,
        rise: u32,
    ) {
        let now = self.clock.now();
        let report = DriverReport {
            check,
            healthy,
            detail,
            fall,
            rise,
        };
        match self.health.record_driver(from.as_str(), &report, now) {
            Ok(transition) => {
                let name = health::driver_check_name(from.as_str(), check);
                self.count_check(&name, healthy);
                if !healthy {
                    tracing::warn!(driver = %from, check = %name, "driver-reported check {name} failed: {}", health::truncate(detail, health::MAX_RESULT_LEN));
                }
                self.apply_health(transition);
            }
            Err(refused) => {
                // Bounded input from a local, authenticated driver: say it once per
                // connection, not once per report.
                if self.health_refusal_logged.insert(from.clone()) {
                    tracing::warn!(driver = %from, "driver health report not counted: {refused} (further refusals from this connection are logged at debug)");
                } else {
                    tracing::debug!(driver = %from, "driver health report not counted: {refused}");
                }
            }
        }
    }

    /// A driver acknowledged its latest `master` transition: a failed start makes the node
    /// unhealthy (the check `start`), so that it hands over to a healthy peer.
    fn on_start_result(&mut self, from: &NodeId, result: &ActionResult, text: &str, now: Instant) {
        // A start cancelled by a demotion or the lease's end is not the service failing.
        // (The driver library's words for it: `Failed("cancelled: ...")`.)
        let cancelled =
            matches!(result, ActionResult::Failed(why) if why.starts_with("cancelled: "));
        let transition = match result {
            ActionResult::Ok => self.health.start_succeeded(from.as_str(), now),
            _ if cancelled || !self.node.is_master() => None,
            _ => {
                tracing::error!(driver = %from, result = %text, "driver {from}: start FAILED ({text}): the node is unhealthy (check `start`) and hands over to a healthy peer if one is reachable");
                let transition = self.health.start_failed(from.as_str(), text, now);
                // Counted once, after the tracker holds the failure: the gauge then shows
                // the check unhealthy.
                self.count_check(crate::config::START_CHECK_NAME, false);
                transition
            }
        };
        if matches!(result, ActionResult::Ok) && transition.is_some() {
            self.count_check(crate::config::START_CHECK_NAME, true);
        }
        self.apply_health(transition);
    }

    /// Passes a change of the node's health to the core, the log and the drivers.
    fn apply_health(&mut self, transition: Option<HealthTransition>) {
        let Some(t) = transition else {
            return;
        };
        let now = self.clock.now();
        if t.healthy {
            tracing::info!("node HEALTHY again: {}", t.detail);
        } else {
            tracing::warn!("node UNHEALTHY: {}", t.detail);
        }
        self.node.set_healthy(now, t.healthy);
        let change = if t.healthy {
            HealthChange::Healthy
        } else {
            HealthChange::Unhealthy
        };
        self.tell_drivers_health(change, &t.detail);
        self.sync_eligibility();
        self.status_drivers_stale = true;
    }

    /// Why this node may not be master now, if it may not.
    fn ineligible_reason(&self) -> Option<String> {
        if self.settings.core.witness {
            Some("a witness (votes, never leads)".into())
        } else if self.node.maintenance() {
            Some("in maintenance".into())
        } else if !self.node.healthy() {
            Some(format!(
                "unhealthy: {}",
                self.health.why_unhealthy().unwrap_or_default()
            ))
        } else {
            None
        }
    }

    /// Tells the log, the metrics and the drivers when eligibility changed.
    fn sync_eligibility(&mut self) {
        let eligible = self.node.eligible();
        self.shared.metrics.set_eligible(eligible);
        if eligible == self.told_eligible {
            return;
        }
        self.told_eligible = eligible;
        if eligible {
            tracing::info!("node ELIGIBLE to be master again");
            self.tell_drivers_health(HealthChange::Eligible, "eligible to be master");
        } else {
            let why = self.ineligible_reason().unwrap_or_default();
            if self.settings.core.witness {
                // A witness is ineligible by configuration: nothing went wrong.
                tracing::info!("node is not eligible to be master: {why}");
            } else if self.node.healthy() {
                // Maintenance: an operator's choice, not a fault.
                tracing::warn!("node not eligible to be master: {why}");
            } else {
                tracing::error!("node INELIGIBLE to be master: {why}");
            }
            self.tell_drivers_health(HealthChange::Ineligible, &why);
        }
    }

    /// A health or eligibility change for drivers that tell people (the notify driver).
    /// Reliable class, like the other cluster events.
    fn tell_drivers_health(&self, change: HealthChange, detail: &str) {
        let msg = ToDriver::Health {
            node: self.settings.id.clone(),
            term: self.node.term(),
            change,
            detail: truncate_reason(detail),
        };
        for id in self.connected_drivers() {
            self.send_frame(&id, &msg, SendClass::Reliable);
        }
    }

    /// Sends every connected driver a lease renewal computed at `now`.
    fn renew_driver_leases(&mut self, term: Term, now: Instant) {
        let lease_remaining_ms = self.remaining_lease_ms(now);
        let msg = ToDriver::LeaseRenewal {
            term,
            lease_remaining_ms,
            sent_at_ns: self.clock.monotonic_ns(now),
        };
        let lease_until = now + Duration::from_millis(u64::from(lease_remaining_ms));
        for id in self.connected_drivers() {
            if let Some(d) = self.table.drivers.get_mut(&id)
                && d.may_run
            {
                d.lease_until = d.lease_until.max(lease_until);
            }
            if self.send_frame(&id, &msg, SendClass::Heartbeat) {
                self.record(DriverRecord::LeaseGiven {
                    at: now,
                    driver: id,
                    lease_until,
                });
            }
        }
    }

    /// Ids of the drivers connected now, in order.
    fn connected_drivers(&self) -> Vec<NodeId> {
        self.table
            .drivers
            .iter()
            .filter(|(_, d)| d.connected)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Tells every connected driver the current role.
    fn send_role_to_all(&mut self, now: Instant) {
        for id in self.connected_drivers() {
            self.send_role_to(&id, now);
        }
    }

    /// Hands a frame to the transport; false if it was refused (not connected, queue full).
    fn send_frame<T: serde::Serialize>(&self, to: &NodeId, msg: &T, class: SendClass) -> bool {
        match codec::encode(msg) {
            Ok(frame) => match self.endpoint.send(to, frame, class) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(to = %to, error = %e, "not sent");
                    false
                }
            },
            Err(e) => {
                tracing::error!(to = %to, error = %e, "cannot encode");
                false
            }
        }
    }

    /// Carries out the core's outputs: persist, then send, then events.
    fn flush(&mut self) -> Result<(), RuntimeError> {
        let role = self.node.role();
        if role != self.election_seen.role {
            self.election_seen.role = role;
            if role == Role::PreCandidate {
                let proposed = Term(self.node.term().0.saturating_add(1));
                self.election_step(ElectionStepKind::TimerFired, proposed, self.clock.now());
            }
        }
        loop {
            if let Some(state) = self.node.poll_persist() {
                // Only a campaign votes for this node: its new term and own vote.
                if self.is_own_vote(&state) && self.election_seen.campaign != Some(state.term) {
                    self.election_seen.campaign = Some(state.term);
                    let now = self.clock.now();
                    self.election_step(ElectionStepKind::Campaign, state.term, now);
                }
                // A newer state supersedes one still unwritten.
                self.unwritten = Some(state);
                self.write_state()?;
                continue;
            }
            if let Some((to, msg)) = self.node.poll_transmit() {
                if self.unwritten.is_some() {
                    // Withheld: it may carry a term or a vote that is not durable yet. Lost
                    // messages are what the election protocol tolerates anyway (a vote not
                    // sent is a vote withheld); the core repeats what matters on its timers.
                    tracing::trace!(to = %to, "message withheld: the state is not durable");
                    continue;
                }
                let class = match &msg {
                    Message::Heartbeat { round, .. } => {
                        self.rtt_pending
                            .insert(to.clone(), (*round, self.clock.now()));
                        SendClass::Heartbeat
                    }
                    Message::HeartbeatAck { .. } => SendClass::Heartbeat,
                    _ => SendClass::Reliable,
                };
                if let Message::TimeoutNow { term, .. } = &msg {
                    tracing::info!(to = %to, term = term.0, "hand-over: asking {to} to campaign now");
                }
                self.send_frame(&to, &msg, class);
                continue;
            }
            if let Some(event) = self.node.poll_event() {
                self.on_event(event);
                continue;
            }
            return Ok(());
        }
    }

    /// Writes [`Runtime::unwritten`] durably. A transient failure (see
    /// [`StoreError::is_transient`]) keeps it for a retry in [`STATE_WRITE_RETRY`] and
    /// returns `Ok`: until it is written nothing is sent, so no peer ever sees a term or a
    /// vote this node could forget in a crash — and forgetting one nobody saw is harmless.
    /// Any other failure is fatal, as before.
    fn write_state(&mut self) -> Result<(), RuntimeError> {
        let Some(state) = &self.unwritten else {
            return Ok(());
        };
        match self.store.save(state) {
            Ok(()) => {
                if self.is_own_vote(state) && self.election_seen.persisted != Some(state.term) {
                    self.election_seen.persisted = Some(state.term);
                    self.election_step(ElectionStepKind::Persisted, state.term, self.clock.now());
                }
                if let Some((error, failures)) = self.write_failing.take() {
                    tracing::warn!(
                        failures,
                        last_error = %error,
                        term = state.term.0,
                        "state written again; sending resumes"
                    );
                }
                self.unwritten = None;
                Ok(())
            }
            Err(e) if e.is_transient() => {
                self.shared.metrics.state_write_failures.inc();
                let error = e.to_string();
                match &mut self.write_failing {
                    Some((last, failures)) => {
                        *failures += 1;
                        *last = error;
                    }
                    None => {
                        tracing::error!(
                            error = %error,
                            term = state.term.0,
                            "cannot write the state (transient); sending nothing (votes withheld) and retrying every {} ms",
                            STATE_WRITE_RETRY.as_millis()
                        );
                        self.write_failing = Some((error, 1));
                    }
                }
                self.write_retry_at = self.clock.now() + STATE_WRITE_RETRY;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `state` is this node's vote for itself: a campaign's.
    fn is_own_vote(&self, state: &clustd_core::PersistentState) -> bool {
        state.voted_for.as_ref() == Some(&self.settings.id)
    }

    /// Records one step of an election in [`Status::elections`].
    fn election_step(&self, step: ElectionStepKind, term: Term, at: Instant) {
        lock(&self.shared.status).record_step(ElectionStep {
            step,
            term: term.0,
            at_mono_ns: self.clock.monotonic_ns(at),
            at_unix_ms: self.clock.wall_clock_ms(),
        });
    }

    fn on_event(&mut self, event: Event) {
        let now = self.clock.now();
        let shared = self.shared.clone();
        let metrics = &shared.metrics;
        match event {
            Event::BecameMaster { term, reason, .. } => {
                tracing::info!(term = term.0, reason = reason.as_str(), "became MASTER");
                self.election_step(ElectionStepKind::Master, term, now);
                metrics.master.set(1);
                self.role_changed(DriverRole::Master, term, reason, now);
            }
            Event::BecameBackup { term, reason, .. } => {
                tracing::info!(term = term.0, reason = reason.as_str(), "became backup");
                metrics.master.set(0);
                self.role_changed(DriverRole::Backup, term, reason, now);
                if matches!(
                    reason,
                    Reason::SteppedDown | Reason::Maintenance | Reason::Unhealthy
                ) {
                    self.awaiting_stop = true;
                    self.confirm_stop_if_done();
                }
            }
            Event::LeaseRenewed { term, until } => {
                self.shared.lease.send_replace(Some(until));
                self.renew_driver_leases(term, now);
            }
            Event::LeaderChanged { term, leader } => {
                tracing::info!(
                    term = term.0,
                    leader = leader.as_ref().map_or("none", NodeId::as_str),
                    "leader changed"
                );
                metrics.leader_changes.inc();
                // Backup drivers learn of the new (or lost) leader too: the notify driver
                // reports "new master elected" / "master lost" from this.
                if !self.node.is_master() {
                    self.send_role_to_all(now);
                }
            }
            Event::ElectionStarted { term } => {
                tracing::info!(term = term.0, "election started");
                metrics.elections_started.inc();
            }
            Event::ElectionWon { term } => {
                tracing::info!(term = term.0, "election won");
                self.election_step(ElectionStepKind::VoteQuorum, term, now);
                metrics.elections_won.inc();
            }
            Event::UnhealthyAlone { term, alone } => match alone {
                clustd_core::Alone::StepDown => tracing::error!(
                    term = term.0,
                    "this master is UNHEALTHY ({}) and no healthy peer is reachable to take over: stepping down anyway (health.alone = \"step-down\"); no node is master until one is healthy",
                    self.health.why_unhealthy().unwrap_or_default()
                ),
                _ => tracing::error!(
                    term = term.0,
                    "this master is UNHEALTHY ({}) and no healthy peer is reachable to take over: STAYING MASTER (health.alone = \"stay\") until a healthy peer appears",
                    self.health.why_unhealthy().unwrap_or_default()
                ),
            },
            Event::PeerReachability { peer, reachable } => {
                tracing::info!(peer = %peer, reachable, "peer reachability (as leader)");
            }
            Event::Rejected {
                from,
                term,
                ours,
                reason,
            } => {
                metrics
                    .rejected_messages
                    .get_or_create(&PeerLabel {
                        peer: from.to_string(),
                    })
                    .inc();
                // A hostile peer may send these as fast as it likes: warn once per interval.
                let entry = self.rejected_warned.entry(from.clone()).or_default();
                entry.1 += 1;
                if entry.0.is_none_or(|at| now >= at + REJECTED_WARN_EVERY) {
                    tracing::warn!(
                        peer = %from,
                        term = term.0,
                        ours = ours.0,
                        reason = reason.as_str(),
                        since_last_warning = entry.1,
                        "rejected a message whose term no honest peer can have: \
                         that peer is compromised or broken"
                    );
                    *entry = (Some(now), 0);
                }
            }
            _ => {}
        }
        metrics
            .term
            .set(i64::try_from(self.node.term().0).unwrap_or(i64::MAX));
    }

    fn role_changed(&mut self, role: DriverRole, term: Term, reason: Reason, now: Instant) {
        self.last_reason = reason.as_str();
        self.status_drivers_stale = true;
        self.send_role_to_all(now);
        let at_unix_ms = self.clock.wall_clock_ms();
        lock(&self.shared.status).record(RoleChange {
            at_unix_ms,
            role: role.as_str().into(),
            term: term.0,
            reason: reason.as_str().into(),
        });
        self.shared.lease.send_replace(self.node.lease_until());
        let _ = self.shared.notices.send(RoleNotice {
            node: self.settings.id.clone(),
            role,
            term,
            leader: self.node.leader().cloned(),
            reason: reason.as_str(),
            lease_until: self.node.lease_until(),
        });
    }

    fn init_status(&mut self) {
        // Export every series from the start, so dashboards see zeros rather than gaps.
        let m = &self.shared.metrics;
        for peer in self.settings.peers.keys() {
            let _ = m.peer_up.get_or_create(&PeerLabel {
                peer: peer.to_string(),
            });
            let _ = m.rejected_messages.get_or_create(&PeerLabel {
                peer: peer.to_string(),
            });
        }
        for result in ["ok", "failed", "timed_out"] {
            let _ = m.driver_results.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        let mut status = lock(&self.shared.status);
        status.node_id = self.settings.id.to_string();
        status.handover_max_ms = u64::try_from(
            (max_shutdown_time(&self.settings) + self.settings.core.election_timeout_max)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        status.witness = self.settings.core.witness;
        status.priority = self.settings.core.priority;
        status.preempt = self.settings.core.preempt;
        status.transport = self.settings.transport.as_str().into();
        status.listen = self
            .endpoint
            .local_addr()
            .map_or_else(|| self.settings.listen.to_string(), |a| a.to_string());
        drop(status);
        self.update_status();
    }

    fn update_status(&mut self) {
        let now = self.clock.now();
        let rebuild_drivers = self.status_drivers_stale
            || self
                .status_drivers_built
                .is_none_or(|at| now >= at + STATUS_DRIVERS_REFRESH);
        let connected: BTreeMap<NodeId, PeerKind> = self.endpoint.connected().into_iter().collect();
        let mut status = lock(&self.shared.status);
        status.role = if self.node.is_master() {
            "master"
        } else {
            "backup"
        }
        .into();
        status.protocol_role = match self.node.role() {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            _ => "follower",
        }
        .into();
        status.term = self.node.term().0;
        status.leader = self.node.leader().map(ToString::to_string);
        status.lease_remaining_ms = self.node.lease_until().map(|u| {
            u64::try_from(u.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        });
        status.maintenance = self.node.maintenance();
        status.peers = self
            .settings
            .peers
            .iter()
            .map(|(id, addr)| PeerStatus {
                id: id.to_string(),
                addr: addr.to_string(),
                connected: connected.get(id) == Some(&PeerKind::Peer),
                last_heard_ms_ago: self.last_heard.get(id).map(|t| {
                    u64::try_from(now.saturating_duration_since(*t).as_millis()).unwrap_or(u64::MAX)
                }),
                eligible: self.node.peer_eligible(id),
            })
            .collect();
        status.healthy = self.node.healthy();
        status.eligible = self.node.eligible();
        status.ineligible_reason = self.ineligible_reason();
        status.health_hold_ms = self.node.health_hold_until(now).map(|until| {
            u64::try_from(until.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        });
        // (While held, it stays for the hold, not for want of a peer: the hold line says so.)
        status.unhealthy_alone =
            self.node.is_master() && !self.node.healthy() && status.health_hold_ms.is_none();
        status.checks = self.health.statuses(now);
        if rebuild_drivers {
            // At most MAX_REMEMBERED_DRIVERS entries, each with reasons cut to MAX_REASON_LEN.
            status.drivers = self
                .table
                .drivers
                .iter()
                .map(|(id, d)| DriverStatus {
                    id: id.to_string(),
                    connected: d.connected,
                    last_role: d.last_role.map(|r| r.as_str().to_string()),
                    last_result: d.last_result.clone(),
                    acknowledged: d.acked_seq == Some(d.last_seq),
                    may_run: d.may_run_at(now, self.settle),
                    stop_failed: d.stop_failed,
                    last_stop_failure: d.last_stop_failure.clone(),
                    not_responding: d.unresponsive.then(|| {
                        let silent = d
                            .last_heard
                            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                        format!("not responding for {:.1} s", silent.as_secs_f64())
                    }),
                })
                .collect();
            self.status_drivers_built = Some(now);
            self.status_drivers_stale = false;
        }
        status.drivers_connected = self.table.drivers.values().filter(|d| d.connected).count();
        let may_run_until = self.table.may_run_until(now, self.settle);
        status.drivers_may_run_for_ms = may_run_until.map_or(0, |until| {
            u64::try_from(until.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        });
        status.state_write_error = self.write_failing.as_ref().map(|(e, _)| e.clone());
        let m = &self.shared.metrics;
        status.state_write_failures = m.state_write_failures.get();
        status.last_fence = self.last_fence.clone();
        status.fences = self.fences;
        status.watchdog_armed = self.watchdog.as_ref().is_some_and(Watchdog::armed);
        status.drivers_refused = m.drivers_refused.get();
        status.elections_started = m.elections_started.get();
        status.elections_won = m.elections_won.get();
        status.leader_changes = m.leader_changes.get();
        status.successors = self
            .node
            .successors(now)
            .iter()
            .map(ToString::to_string)
            .collect();
    }
}

impl<C: Clock, S: StateStore> Runtime<C, S> {
    /// [`Command::Reload`]: re-reads the config file, checks what changed
    /// ([`Settings::reload_changes`]) and applies it, all or nothing.
    fn reload(&mut self) -> Result<String, String> {
        let Some(path) = self.settings.source.clone() else {
            return Err("this node was not started from a config file: nothing to re-read".into());
        };
        let (new, warnings) = Settings::load(&path).map_err(|e| e.to_string())?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let changes = self.settings.reload_changes(&new)?;
        if changes.is_empty() {
            return Ok(format!("{}: nothing changed", path.display()));
        }
        let now = self.clock.now();
        // The guard `clustd maintenance on` has without --force.
        if new.maintenance && !self.node.maintenance() && self.node.eligible() {
            self.update_cluster_view();
            let others = lock(&self.shared.cluster)
                .nodes
                .iter()
                .any(|n| !n.this_node && n.heard && n.eligible == Some(true));
            if !others {
                return Err(format!(
                    "node.maintenance = true would leave no node eligible to be master (no other node heard from is eligible); the old config keeps running. `clustd maintenance on --force` does it anyway (then reload again), path {}",
                    path.display()
                ));
            }
        }
        self.node
            .reconfigure(now, new.core.clone())
            .map_err(|e| format!("[election]: {e}"))?;
        if self.settings.checks != new.checks || self.settings.health != new.health {
            let transition = self.health.reconfigure(
                &new.checks,
                &self.settings.checks,
                new.health.start_failure,
            );
            // The old tasks stop (dropped); the new ones start at once.
            let (tx, rx) = mpsc::channel::<CheckResult>(64);
            self._check_tasks = health::spawn_checks(&new.checks, tx.clone());
            self.check_tx = tx;
            self.check_rx = rx;
            self.apply_health(transition);
        }
        if self.settings.maintenance != new.maintenance {
            self.node.set_maintenance(now, new.maintenance);
        }
        let mut changes = changes;
        let mut new = new;
        if self.settings.log_level != new.log_level
            && let Some(level) = &new.log_level
        {
            match crate::logging::apply(level) {
                Ok(true) => {}
                Ok(false) => changes
                    .push("(RUST_LOG is set: it decides the log filter, not log.level)".into()),
                Err(e) => {
                    changes.push(format!("(log.level not applied: {e})"));
                    // Keep the running one, so the same file reloaded says so again.
                    new.log_level = self.settings.log_level.clone();
                }
            }
        }
        let limits = self.settings.transport_limits.clone();
        self.settings = Settings {
            transport_limits: limits,
            ..new
        };
        self.settle = self.settings.core.stop_budget_at_drift_bound();
        self.sync_eligibility();
        self.init_status();
        Ok(changes.join("; "))
    }
}

/// How often a node tells its peers about itself when nothing changed (`Message::Report`).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The soonest a changed report goes out after the previous one.
const REPORT_MIN_GAP: Duration = Duration::from_millis(100);

/// `text` cut to at most `max` bytes at a char boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl<C: Clock, S: StateStore> Runtime<C, S> {
    /// What this node says about itself to its peers, from the status snapshot.
    fn build_report(&self) -> NodeReport {
        use clustd_core::message::{MAX_REPORT_ITEMS, MAX_REPORT_TEXT};
        let status = lock(&self.shared.status);
        let text = |s: &str| cut(s, MAX_REPORT_TEXT);
        NodeReport {
            master: status.role == "master",
            protocol_role: text(&status.protocol_role),
            leader: self.node.leader().cloned(),
            lease_remaining_ms: status
                .lease_remaining_ms
                .map_or(0, |ms| u32::try_from(ms).unwrap_or(u32::MAX)),
            maintenance: status.maintenance,
            healthy: status.healthy,
            eligible: status.eligible,
            witness: status.witness,
            priority: status.priority,
            preempt: status.preempt,
            ineligible_reason: text(status.ineligible_reason.as_deref().unwrap_or("")),
            drivers: status
                .driver_lines()
                .take(MAX_REPORT_ITEMS)
                .map(|d| DriverLine {
                    id: text(&d.id),
                    role: text(&d.role),
                    last_result: text(&d.last_result),
                    ..d
                })
                .collect(),
            checks: status
                .check_lines()
                .take(MAX_REPORT_ITEMS)
                .map(|c| CheckReport {
                    name: text(&c.name),
                    last_result: text(&c.last_result),
                    ..c
                })
                .collect(),
            incarnation: self.incarnation,
            listen: text(&status.listen),
            seen: self
                .incarnations
                .iter()
                .take(clustd_core::message::MAX_REPORT_PEERS)
                .map(
                    |(id, ((incarnation, listen), _))| clustd_core::message::SeenPeer {
                        id: id.clone(),
                        incarnation: *incarnation,
                        listen: listen.clone(),
                    },
                )
                .collect(),
        }
    }

    /// Two processes with one node id: a peer's reports alternate between two
    /// incarnations, or a peer hears this node's id from another process. An ERROR naming
    /// both, at most once a minute per peer.
    fn check_incarnations(&mut self, from: &NodeId, report: &NodeReport) {
        let now = self.clock.now();
        let mut problem = None;
        let current = (report.incarnation, report.listen.clone());
        match self.incarnations.get_mut(from) {
            None => {
                self.incarnations.insert(from.clone(), (current, None));
            }
            Some((latest, previous)) if latest.0 != current.0 => {
                if previous.as_ref().is_some_and(|p| p.0 == current.0) {
                    problem = Some(format!(
                        "two daemons run with node id {from}: its reports alternate between two processes, one listening on {}, the other on {}; stop one of them (or give it its own id and key)",
                        latest.1, current.1
                    ));
                }
                *previous = Some(std::mem::replace(latest, current));
            }
            Some(_) => {}
        }
        let first = *self.first_report.entry(from.clone()).or_insert(now);
        let settled = now >= first + REPORT_INTERVAL * 3;
        if problem.is_none()
            && settled
            && let Some(other) = report
                .seen
                .iter()
                .find(|p| p.id == self.settings.id && p.incarnation != self.incarnation)
        {
            problem = Some(format!(
                "another daemon runs with this node's id {}: {from} hears {} from another process (listening on {}); stop one of them (or give it its own id and key)",
                self.settings.id, self.settings.id, other.listen
            ));
        }
        if let Some(problem) = problem {
            let due = self
                .duplicate_warned
                .get(from)
                .is_none_or(|at| now >= *at + Duration::from_secs(60));
            if due {
                tracing::error!(peer = %from, "{problem}");
                self.duplicate_warned.insert(from.clone(), now);
                lock(&self.shared.status).duplicate_id = Some(problem);
            }
        }
    }

    /// When the next report is due: [`REPORT_INTERVAL`] after the last, or sooner
    /// ([`REPORT_MIN_GAP`]) when it is to go out because something changed.
    fn report_due(&self) -> Instant {
        match &self.report_sent {
            None => self.clock.now(),
            Some((at, _)) if self.report_pending => *at + REPORT_MIN_GAP,
            Some((at, _)) => *at + self.report_every(),
        }
    }

    /// How often an unchanged report goes out. (Not faster for a master: a peer that
    /// follows it knows from its heartbeats that it still leads, see
    /// [`NodeView::of_peer`]; a report four times a second cost a third more frames.)
    fn report_every(&self) -> Duration {
        REPORT_INTERVAL
    }

    /// Sends this node's report to every connected peer when it changed (at most every
    /// [`REPORT_MIN_GAP`]) or [`REPORT_INTERVAL`] passed. The lease left changes all the
    /// time and is no change by itself.
    fn send_report_if_due(&mut self) {
        let now = self.clock.now();
        let report = self.build_report();
        let (due, changed) = match &self.report_sent {
            None => (true, true),
            Some((at, last)) => {
                let changed = NodeReport {
                    lease_remaining_ms: report.lease_remaining_ms,
                    ..last.clone()
                } != report;
                let due =
                    now >= *at + self.report_every() || (changed && now >= *at + REPORT_MIN_GAP);
                (due, changed)
            }
        };
        if !due {
            self.report_pending = changed;
            return;
        }
        self.report_pending = false;
        let msg = Message::Report {
            term: self.node.term(),
            report: Box::new(report.clone()),
        };
        match codec::encode(&msg) {
            Ok(frame) => {
                for peer in self.peers_up.iter() {
                    let _ = self.endpoint.send(peer, frame.clone(), SendClass::Reliable);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode this node's report"),
        }
        self.report_sent = Some((now, report));
    }

    /// Rebuilds the cluster view from this node's status and its peers' reports.
    fn update_cluster_view(&mut self) {
        let now = self.clock.now();
        let stale_after = (self.settings.core.election_timeout_max * 2).max(REPORT_INTERVAL * 3);
        let mut nodes = vec![NodeView::of_self(&lock(&self.shared.status))];
        let connected: BTreeSet<NodeId> = self.peers_up.clone();
        for (id, addr) in &self.settings.peers {
            let heard = self
                .last_heard
                .get(id)
                .map(|t| now.saturating_duration_since(*t));
            let report = self
                .reports
                .get(id)
                .map(|(at, term, r)| (now.saturating_duration_since(*at), *term, r));
            nodes.push(NodeView::of_peer(
                id.as_str(),
                &addr.to_string(),
                connected.contains(id),
                heard,
                report,
                stale_after,
                self.node.leader() == Some(id),
            ));
        }
        let view = ClusterView::new(self.settings.id.as_str(), nodes);
        *lock(&self.shared.cluster) = view;
    }
}

/// `reason` cut to at most [`MAX_REASON_LEN`] bytes at a char boundary, marked with `…`.
pub fn truncate_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_LEN {
        return reason.to_string();
    }
    let mut end = MAX_REASON_LEN - '…'.len_utf8();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

/// How long a graceful shutdown may take at most with these settings.
pub fn max_shutdown_time(settings: &Settings) -> Duration {
    // The hand-over may wait for lease end plus the stop budget at the drift bound (the
    // same wait the core uses), then the successor has an election timeout to take over.
    let s = &settings.core;
    s.lease + s.stop_budget_at_drift_bound() + s.election_timeout_min
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> NodeId {
        NodeId::new(name).expect("valid id")
    }

    fn told_master(lease_until_ms: u64) -> DriverState {
        DriverState {
            may_run: true,
            lease_until: Instant::from_millis(lease_until_ms),
            ..DriverState::default()
        }
    }

    /// A full table forgets what cannot run first, then the earliest lease, never a
    /// connected driver; what it forgets while it may still run keeps holding up a
    /// hand-over until its lease end + settle.
    #[test]
    fn a_full_driver_table_forgets_without_forgetting_who_may_run() {
        let settle = Duration::from_millis(210);
        let now = Instant::from_millis(10_000);
        let mut table = DriverTable::default();
        // Disconnected drivers told master, leases ending at 10.5 s, 10.501 s, ...
        for i in 0..MAX_REMEMBERED_DRIVERS - 2 {
            table
                .drivers
                .insert(id(&format!("gone-{i:04}")), told_master(10_500 + i as u64));
        }
        // One that stopped (Ok): the first to go. One connected with the oldest lease: never.
        table.drivers.insert(id("stopped"), DriverState::default());
        let mut connected = told_master(10_001);
        connected.connected = true;
        table.drivers.insert(id("connected"), connected);
        let latest = Instant::from_millis(10_500 + MAX_REMEMBERED_DRIVERS as u64 - 3) + settle;
        assert_eq!(table.may_run_until(now, settle), Some(latest));

        let admitted = || DriverState {
            connected: true,
            ..DriverState::default()
        };
        table.make_room_for(&id("new-0"), now, settle);
        assert!(
            !table.drivers.contains_key(&id("stopped")),
            "a stopped one goes first"
        );
        assert_eq!(
            table.forgotten_may_run_until, None,
            "nothing that may run forgotten"
        );
        table.drivers.insert(id("new-0"), admitted());
        // Then the earliest leases, one per newcomer, until every one that may run is gone.
        for i in 1..=MAX_REMEMBERED_DRIVERS - 2 {
            let new = id(&format!("new-{i}"));
            table.make_room_for(&new, now, settle);
            if i == 1 {
                assert!(!table.drivers.contains_key(&id("gone-0000")));
                assert_eq!(
                    table.forgotten_may_run_until,
                    Some(Instant::from_millis(10_500) + settle)
                );
            }
            table.drivers.insert(new, admitted());
        }
        assert!(table.drivers.len() <= MAX_REMEMBERED_DRIVERS);
        assert!(table.drivers.contains_key(&id("connected")));
        assert!(
            table
                .drivers
                .keys()
                .all(|k| !k.as_str().starts_with("gone-"))
        );
        assert_eq!(table.forgotten_may_run_until, Some(latest));
        assert_eq!(table.may_run_until(now, settle), Some(latest));
        // Settled drivers are forgotten; the deadline stays until it has passed.
        table.forget_settled(now, settle);
        assert_eq!(table.may_run_until(now, settle), Some(latest));
        let later = latest + Duration::from_millis(1);
        table.forget_settled(later, settle);
        assert_eq!(table.forgotten_may_run_until, None);
        // Only the connected driver (its own lease long over) is left that ever could run.
        assert_eq!(table.may_run_until(later, settle), None);
        assert!(table.drivers.contains_key(&id("connected")));
    }

    #[test]
    fn reasons_are_cut_at_a_char_boundary_within_the_limit() {
        assert_eq!(truncate_reason("exit status 1"), "exit status 1");
        let exact = "x".repeat(MAX_REASON_LEN);
        assert_eq!(truncate_reason(&exact), exact);
        for long in ["y".repeat(60_000), "é".repeat(30_000), "€".repeat(20_001)] {
            let cut = truncate_reason(&long);
            assert!(cut.len() <= MAX_REASON_LEN, "{}", cut.len());
            assert!(cut.len() >= MAX_REASON_LEN - 6, "{}", cut.len());
            assert!(cut.ends_with('…'));
        }
    }

    /// Whether a driver may run: told master and no Ok stop since, and not past its last
    /// lease end plus the settle time (the stop budget at the drift bound) — connected or
    /// not, whether its stop failed or was never heard.
    #[test]
    fn a_driver_may_run_until_an_ok_stop_or_its_lease_end_plus_settle() {
        let settle = Duration::from_millis(210);
        let lease_until = Instant::from_millis(1000);
        // (told master and no Ok stop since, now in ms, may run?)
        let cases = [
            (false, 500, false),
            (true, 500, true),
            (true, 1000, true),
            (true, 1209, true),
            (true, 1210, false),
            (true, 5000, false),
        ];
        for (may_run, now, expected) in cases {
            let d = DriverState {
                may_run,
                lease_until,
                ..DriverState::default()
            };
            assert_eq!(
                d.may_run_at(Instant::from_millis(now), settle),
                expected,
                "may_run {may_run}, now {now} ms"
            );
        }
    }
}
