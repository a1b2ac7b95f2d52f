//! The protocol between a daemon and its drivers: what a daemon tells a driver
//! ([`ToDriver`]: the role, with a lease the driver counts down itself) and what a driver
//! answers ([`FromDriver`]: acknowledgements, action results, liveness, health).
//!
//! Embedders who run the service inside their own process do not need this module: the
//! lease gate (`Node::may_serve`) is the rule there. It is for a service in another
//! process, which clustd's drivers (`clustd-drivers`) speak on a daemon's behalf.

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, Term};

/// A node's role as drivers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriverRole {
    /// Run the service.
    Master,
    /// Do not run the service.
    Backup,
}

impl DriverRole {
    /// `"master"` or `"backup"`, as put in `CLUSTD_ROLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::Backup => "backup",
        }
    }
}

/// What a daemon tells its drivers: the role with a lease the driver counts down itself,
/// lease renewals, and cluster events for the drivers that tell people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ToDriver {
    /// The node's role, sent at once on connect and on every change.
    Role {
        /// Whether to run the service (`CLUSTD_ROLE` for scripts).
        role: DriverRole,
        /// Current term: the fencing token.
        term: Term,
        /// The daemon's node id.
        node: NodeId,
        /// The known leader, if any.
        leader: Option<NodeId>,
        /// When master: how long (ms) the driver may consider itself master without
        /// hearing a renewal, counted from `sent_at_ns` (never from when it arrives).
        lease_remaining_ms: u32,
        /// The daemon's reading of the machine's monotonic clock (Linux `CLOCK_MONOTONIC`,
        /// nanoseconds; system-wide, so the driver on the same machine reads the same clock)
        /// when it computed `lease_remaining_ms`. The driver's lease ends at
        /// `sent_at_ns + lease_remaining_ms` on that clock, so a notice that arrives late
        /// never extends the driver past the daemon's own lease.
        sent_at_ns: u64,
        /// `election.stop_budget_ms`: how long a `stop` may take after the driver decides to
        /// stop (on demotion or lease end) before a new master may start elsewhere.
        stop_budget_ms: u32,
        /// Why the role changed, for logs and scripts (`elected`, `lease-lost`, ...).
        reason: String,
        /// Sequence number of this transition, per daemon run; acknowledgements name it.
        seq: u64,
    },
    /// While master: the lease was renewed.
    LeaseRenewal {
        /// The term of the mastership renewed: a driver ignores a renewal for a term other
        /// than the one its lease was given in.
        term: Term,
        /// Remaining validity in ms, counted from `sent_at_ns`.
        lease_remaining_ms: u32,
        /// As in [`ToDriver::Role`]: the machine's monotonic clock when the daemon computed
        /// `lease_remaining_ms`.
        sent_at_ns: u64,
    },
    /// One of this node's drivers reported that its `stop` failed or timed out: the service
    /// may still run there until that driver's lease ends (plus the stop budget). A cluster
    /// event for drivers that tell people (the notify driver); never acknowledged.
    StopFailed {
        /// The driver whose stop failed.
        driver: NodeId,
        /// The daemon's current term.
        term: Term,
        /// What the driver reported (`Failed` or `TimedOut`).
        result: ActionResult,
    },
    /// The daemon's connection to a peer came up or went down: a cluster event for
    /// drivers that tell people (the notify driver). Sent on transitions only, never
    /// acknowledged, and never part of the role or lease: drivers must not act on it.
    Peer {
        /// The peer whose connection changed.
        peer: NodeId,
        /// True when the connection came up, false when it went down.
        up: bool,
        /// The daemon's current term when it saw the change.
        term: Term,
    },
    /// The daemon ran its `[fence]` command because drivers told "master" had not
    /// confirmed their stop by their lease end (frozen, wedged, a failed stop): a cluster
    /// event for drivers that tell people. Never acknowledged; drivers must not act on it.
    Fenced {
        /// The drivers it was run for.
        drivers: Vec<NodeId>,
        /// The daemon's current term.
        term: Term,
        /// `Ok`, or how it failed: then the service may still run on this node.
        result: ActionResult,
    },
    /// The node's health or eligibility changed (its checks, a driver's report, a failed
    /// start, maintenance): a cluster event for drivers that tell people (the notify
    /// driver). Sent on transitions only, never acknowledged; drivers must not act on it
    /// (the role tells them what to run).
    Health {
        /// The daemon's node id.
        node: NodeId,
        /// The daemon's current term.
        term: Term,
        /// Which transition (the notify driver's event name).
        change: HealthChange,
        /// Why, in one line (e.g. `check web failed 3 times in a row: exit status 1`).
        detail: String,
    },
}

/// A transition of a node's health or eligibility (see [`ToDriver::Health`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthChange {
    /// Every check passes again (each passed `rise` times in a row).
    Healthy,
    /// A check failed `fall` times in a row (or a start failed).
    Unhealthy,
    /// The node may not be master: unhealthy, in maintenance, or a witness.
    Ineligible,
    /// The node may be master again.
    Eligible,
}

impl HealthChange {
    /// `"healthy"`, `"unhealthy"`, `"ineligible"` or `"eligible"`: the notify driver's
    /// event names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Ineligible => "ineligible",
            Self::Eligible => "eligible",
        }
    }
}

/// The outcome of a driver's action for one transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionResult {
    /// The action succeeded.
    Ok,
    /// The action failed; a short reason.
    Failed(String),
    /// The action exceeded its time budget and was killed.
    TimedOut,
}

/// What a driver tells its daemon: acknowledgements of transitions, health results and
/// that it is still running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FromDriver {
    /// The driver finished acting on transition `seq`.
    Ack {
        /// The transition acknowledged.
        seq: u64,
        /// The role acted upon.
        role: DriverRole,
        /// How the action went. Only `Ok` to "backup" ends the node's service interval
        /// early; a failed or timed-out stop leaves it open until lease end plus the stop
        /// budget.
        result: ActionResult,
    },
    /// One result of a health check the driver runs (or its own verdict on the service),
    /// counted by the daemon exactly like one run of a `[[check]]`: `fall` failures in a
    /// row make the node unhealthy, `rise` successes in a row healthy again. The daemon
    /// names the check `<driver id>/<check>` and forgets it when the driver disconnects.
    Health {
        /// The check's name, as the driver calls it (`check` for the shell driver's
        /// `script.check`).
        check: String,
        /// Whether this run passed.
        healthy: bool,
        /// One line on what happened (the script's last output line, an error).
        detail: String,
        /// Consecutive failures that make the node unhealthy (at least 1).
        fall: u32,
        /// Consecutive successes that make it healthy again (at least 1).
        rise: u32,
    },
    /// "Still running": sent by the driver every [`DRIVER_ALIVE_INTERVAL`] on every
    /// connection, so the daemon notices a driver that stopped running (frozen, swapped
    /// out, wedged) before it matters (`health.driver_timeout_ms`).
    Alive,
}

/// How often a driver says [`FromDriver::Alive`].
pub const DRIVER_ALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
