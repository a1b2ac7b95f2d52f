//! The one trait a driver implements, the role change it is given, and the cluster events
//! it may listen to.
//!
//! A driver is told about *changes*: the library keeps track of what it last handed the
//! driver, orders and (where safe) collapses transitions, enforces the fail-safe lease,
//! cancels a start that a stop must not wait for, and reports each result back to the
//! daemon. The driver only acts. Cluster events (a peer going down or coming back, a stop
//! that failed, the node's health or eligibility changing) are news, not orders: they never
//! touch the role or the lease, and most drivers ignore them.

use std::future::Future;

use std::time::Duration;

use clustd_core::driver::{ActionResult, DriverRole, HealthChange};
use clustd_core::{NodeId, Term};

use crate::health::HealthReporter;

/// Where a role change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeSource {
    /// The daemon said so (`ToDriver::Role`); the result is acknowledged to it.
    Daemon,
    /// The driver was master and its lease ran out without a renewal (daemon killed,
    /// hung or unreachable): it demotes itself so no service keeps running beside a new master.
    LeaseExpired,
    /// No daemon could be reached within the start-up wait: without a lease the node is not
    /// master, so the driver settles into backup (a running service is stopped).
    NoDaemonAtStartup,
    /// The driver is shutting down while it may be running the service: it stops it first,
    /// because once it exits nothing supervises the lease, and a later failover would leave
    /// the service running beside the new master.
    DriverShutdown,
}

impl ChangeSource {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daemon => "daemon",
            Self::LeaseExpired => "lease-expired",
            Self::NoDaemonAtStartup => "no-daemon-at-startup",
            Self::DriverShutdown => "driver-shutdown",
        }
    }
}

/// One role change handed to [`Driver::on_role_change`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoleChange {
    /// The role to converge to.
    pub role: DriverRole,
    /// The term (fencing token). For a self-demotion, the term of the lease that ran out.
    pub term: Term,
    /// The daemon's node id; `None` only when no daemon was ever reached.
    pub node: Option<NodeId>,
    /// The known leader, if any.
    pub leader: Option<NodeId>,
    /// The role of the previous change handed to this driver (whatever its result);
    /// `None` for the first one.
    pub previous_role: Option<DriverRole>,
    /// The leader named by the previous change.
    pub previous_leader: Option<NodeId>,
    /// Why: the daemon's reason (`elected`, `lease-lost`, ...) or the library's
    /// (`lease-expired`, `no-daemon-at-startup`).
    pub reason: String,
    /// Who decided.
    pub source: ChangeSource,
    /// `election.stop_budget_ms` from the daemon's latest role message (`None` before
    /// the first): how long a stop may take once the driver decided to stop (on demotion,
    /// or when the lease ran out) before a new master may start elsewhere. A driver whose
    /// stop can take longer should say so (the shell driver warns).
    pub stop_budget: Option<Duration>,
}

impl RoleChange {
    /// A change from the daemon with no history; for tests and for drivers that wrap drivers.
    pub fn new(role: DriverRole, term: Term, node: Option<NodeId>) -> Self {
        Self {
            role,
            term,
            node,
            leader: None,
            previous_role: None,
            previous_leader: None,
            reason: String::new(),
            source: ChangeSource::Daemon,
            stop_budget: None,
        }
    }

    /// Sets the leader (builder style).
    #[must_use]
    pub fn with_leader(mut self, leader: Option<NodeId>) -> Self {
        self.leader = leader;
        self
    }

    /// Sets the previous role (builder style).
    #[must_use]
    pub fn with_previous_role(mut self, previous: Option<DriverRole>) -> Self {
        self.previous_role = previous;
        self
    }

    /// Sets the reason (builder style).
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Sets the stop budget (builder style).
    #[must_use]
    pub fn with_stop_budget(mut self, budget: Option<Duration>) -> Self {
        self.stop_budget = budget;
        self
    }
}

/// Something that happened in the cluster, as the local daemon saw it; handed to
/// [`Driver::on_cluster_event`]. Informational only: the role and the lease do not change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// The daemon lost its connection to a peer (crashed, stopped or cut off).
    PeerDown {
        /// The peer.
        peer: NodeId,
        /// The daemon's term when it noticed.
        term: Term,
        /// The daemon's node id, as of its last role message (`None` if none came yet).
        node: Option<NodeId>,
    },
    /// The daemon's connection to a peer came (back) up.
    PeerUp {
        /// The peer.
        peer: NodeId,
        /// The daemon's term when it noticed.
        term: Term,
        /// The daemon's node id, as of its last role message (`None` if none came yet).
        node: Option<NodeId>,
    },
    /// A driver of this node (maybe this one) reported that its stop failed or timed out:
    /// the service may still run here until that driver's lease ends, plus the stop
    /// budget. Operators must hear of it; the role and the lease do not change.
    StopFailed {
        /// The driver whose stop failed.
        driver: NodeId,
        /// The daemon's term when it was reported.
        term: Term,
        /// What the driver reported (`Failed(..)` or `TimedOut`).
        result: ActionResult,
        /// The daemon's node id, as of its last role message (`None` if none came yet).
        node: Option<NodeId>,
    },
    /// The daemon ran its `[fence]` command for drivers that had not confirmed their
    /// stop by their lease end. `Ok`: the command succeeded; otherwise the service may
    /// still run here beside a new master.
    Fenced {
        /// The drivers it was run for.
        drivers: Vec<NodeId>,
        /// The daemon's term when it ran.
        term: Term,
        /// How the command ended.
        result: ActionResult,
        /// The daemon's node id, as of its last role message (`None` if none came yet).
        node: Option<NodeId>,
    },
    /// This node's health or eligibility changed: its checks (the daemon's own, or a
    /// driver's reports) failed or recovered, or it may no longer (or again) be master —
    /// unhealthy, in maintenance, a witness. The role that follows, if any, comes as a
    /// role change; this only tells.
    Health {
        /// What changed.
        change: HealthChange,
        /// Why, in one line, as the daemon put it (e.g. `check web failed 3 times in a
        /// row: exit status 1`).
        detail: String,
        /// The daemon's term when it changed.
        term: Term,
        /// The daemon's node id (the node whose health changed).
        node: NodeId,
    },
}

impl ClusterEvent {
    /// The peer the event is about; `None` for events about this node.
    pub fn peer(&self) -> Option<&NodeId> {
        match self {
            Self::PeerDown { peer, .. } | Self::PeerUp { peer, .. } => Some(peer),
            Self::StopFailed { .. } | Self::Fenced { .. } | Self::Health { .. } => None,
        }
    }

    /// The daemon's term when it noticed.
    pub fn term(&self) -> Term {
        match self {
            Self::PeerDown { term, .. }
            | Self::PeerUp { term, .. }
            | Self::StopFailed { term, .. }
            | Self::Fenced { term, .. }
            | Self::Health { term, .. } => *term,
        }
    }

    /// The daemon's node id, as of its last role message.
    pub fn node(&self) -> Option<&NodeId> {
        match self {
            Self::PeerDown { node, .. }
            | Self::PeerUp { node, .. }
            | Self::StopFailed { node, .. }
            | Self::Fenced { node, .. } => node.as_ref(),
            Self::Health { node, .. } => Some(node),
        }
    }
}

/// What turns a role change into action on the machine.
///
/// The library calls [`Driver::on_role_change`] for one change at a time, in order; the
/// next call waits until the previous one returned. A change that repeats the previous one
/// exactly (same role, term and leader, previous result `Ok`; e.g. after a reconnect) is
/// acknowledged without calling the driver.
///
/// **Cancellation.** A stop never waits behind a start: when a demotion arrives, or the
/// lease runs out, or the driver shuts down while a `Master` change is still running, the
/// library *drops* that future (it is reported to the daemon as
/// `Failed("cancelled: ...")`) and hands the driver the `Backup` change at once. So a start
/// must leave nothing behind when dropped that the following stop cannot clean up — kill
/// child processes on drop, as the shell driver does with the start script's process
/// group — and must not assume that it ran to the end. `Backup` changes (stops) are never
/// cancelled; they should finish within [`RoleChange::stop_budget`].
///
/// [`Driver::on_session_start`] is called once, before anything else, with the session's
/// [`HealthReporter`]: a driver that checks its service reports through it (from a task of
/// its own, so checks run whatever the role), and the daemon counts those results like its
/// own `[[check]]`s. Its default does nothing.
///
/// [`Driver::on_cluster_event`] is called in the same sequence, in the order the daemon sent
/// things: never while a role change runs, and a role change that arrives after an event
/// waits for it. Its default does nothing.
///
/// Implement it with a plain `async fn`:
/// ```
/// use clustd_drivers::{ActionResult, Driver, DriverRole, RoleChange};
/// struct Print;
/// impl Driver for Print {
///     async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
///         println!("now {} in term {}", change.role.as_str(), change.term.0);
///         ActionResult::Ok
///     }
/// }
/// ```
pub trait Driver: Send + 'static {
    /// Acts on `change` and says how it went; the result is reported to the daemon.
    /// Must not run forever: bound every action by a timeout. The future of a `Master`
    /// change may be dropped before it completes (see "Cancellation" above).
    fn on_role_change(&mut self, change: RoleChange) -> impl Future<Output = ActionResult> + Send;

    /// Called once when the session starts, before the first role change, with the
    /// session's health reporter (see [`HealthReporter`]). Must return at once: start a
    /// task for periodic checks (and stop it when the driver is dropped, as the session
    /// drops the driver when it ends). The default ignores the reporter.
    fn on_session_start(&mut self, health: HealthReporter) {
        let _ = health;
    }

    /// Hears about a cluster event (a peer down or up, a failed stop, a health or
    /// eligibility change). Nothing is reported to the daemon.
    ///
    /// Must return quickly (queue slow work elsewhere, as the notify driver does): a role
    /// change waits for it, so the library cancels it after [`CLUSTER_EVENT_BUDGET`] rather
    /// than let it delay a stop. The default ignores the event.
    fn on_cluster_event(&mut self, event: ClusterEvent) -> impl Future<Output = ()> + Send {
        let _ = event;
        async {}
    }
}

/// How long [`Driver::on_cluster_event`] may run before the library cancels it.
pub const CLUSTER_EVENT_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);
