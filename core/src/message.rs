//! Messages exchanged between election cores, and between a daemon and its drivers.
//!
//! The sender's identity is not inside a message: the transport authenticates the
//! connection and tells the core who sent it.

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, Term};

/// One election message between two daemons.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// "Could I win an election for `term`?" Sent before a real campaign so that a node
    /// which was cut off cannot bump the term and depose a healthy leader.
    PreVote {
        /// The term the sender would campaign for (its current term + 1).
        term: Term,
    },
    /// Answer to [`Message::PreVote`].
    PreVoteResponse {
        /// The term asked about (echoed).
        term: Term,
        /// Whether the sender would vote.
        granted: bool,
        /// When refused because the sender heard from a live leader recently: how long
        /// (ms, on the sender's clock) until it would grant. Lets the asker retry exactly then.
        retry_after_ms: Option<u32>,
    },
    /// A real vote request for `term`.
    RequestVote {
        /// The term the candidate campaigns in.
        term: Term,
        /// Set when the current leader asked this candidate to take over (leadership
        /// transfer): voters then ignore the fact that they heard from a live leader.
        transfer: bool,
    },
    /// Answer to [`Message::RequestVote`].
    Vote {
        /// The voter's current term.
        term: Term,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// Leader → followers, every heartbeat interval.
    Heartbeat {
        /// The leader's term.
        term: Term,
        /// Round number, increasing within a term; acknowledgements name it.
        round: u64,
        /// The nodes that could take over, best first (priority, then id). Followers
        /// use their rank here to stagger their election timeouts.
        successors: Vec<NodeId>,
        /// What is left (ms) of the hold after the cluster's last health hand-over: no
        /// master is moved for health (nor preempted) before it ends, whoever leads then.
        /// Receivers cap it at their own `min_master`.
        hold_ms: u32,
    },
    /// Follower → leader: acknowledgement of heartbeat `round`.
    HeartbeatAck {
        /// The follower's current term.
        term: Term,
        /// The round acknowledged.
        round: u64,
        /// The follower's election priority (higher is preferred).
        priority: u8,
        /// False while the follower is unhealthy, in maintenance or a witness: it will
        /// not lead, and the leader neither ranks it as a successor nor hands over to it.
        eligible: bool,
        /// Whether the follower wants to preempt a lower-priority leader.
        preempt: bool,
    },
    /// Leader → chosen successor: "campaign now" (leadership transfer). Sent only after
    /// the leader has demoted itself.
    TimeoutNow {
        /// The leader's term.
        term: Term,
        /// As in [`Message::Heartbeat`]: the `min_master` hold the successor inherits.
        hold_ms: u32,
    },
}

impl Message {
    /// The term carried by the message.
    pub fn term(&self) -> Term {
        match self {
            Self::PreVote { term }
            | Self::PreVoteResponse { term, .. }
            | Self::RequestVote { term, .. }
            | Self::Vote { term, .. }
            | Self::Heartbeat { term, .. }
            | Self::HeartbeatAck { term, .. }
            | Self::TimeoutNow { term, .. } => *term,
        }
    }
}

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

/// Daemon → driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ToDriver {
    /// The node's role, sent at once on connect and on every change.
    Role {
        /// Master or backup.
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
        /// Current term.
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
        /// What changed.
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

/// Driver → daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FromDriver {
    /// The driver finished acting on transition `seq`.
    Ack {
        /// The transition acknowledged.
        seq: u64,
        /// The role acted upon.
        role: DriverRole,
        /// What happened.
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
