//! The one trait a driver implements, and the role change it is given.
//!
//! A driver is told about *changes*: the library keeps track of what it last handed the
//! driver, orders and (where safe) collapses transitions, enforces the fail-safe lease,
//! and reports each result back to the daemon. The driver only acts.

use std::future::Future;

use clustd_core::{ActionResult, DriverRole, NodeId, Term};

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
}

impl ChangeSource {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daemon => "daemon",
            Self::LeaseExpired => "lease-expired",
            Self::NoDaemonAtStartup => "no-daemon-at-startup",
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
}

/// What turns a role change into action on the machine.
///
/// The library calls [`Driver::on_role_change`] for one change at a time, in order; the
/// next call waits until the previous one returned. A change that repeats the previous one
/// exactly (same role, term and leader, previous result `Ok`; e.g. after a reconnect) is
/// acknowledged without calling the driver.
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
    /// Must not run forever: bound every action by a timeout.
    fn on_role_change(&mut self, change: RoleChange) -> impl Future<Output = ActionResult> + Send;
}
