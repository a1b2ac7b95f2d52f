//! Messages exchanged between election cores. The daemon–driver protocol is in
//! [`crate::driver`].
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
    /// Any node → the leader: an operator asked for a switchover to `to`
    /// (`clustd step-down --to`). The leader hands over to `to` through the usual
    /// graceful hand-over if `to` is an eligible follower that acknowledged recently, and
    /// ignores the request otherwise (the asker watches for the outcome).
    TransferRequest {
        /// The asker's current term: a leader of another term ignores it.
        term: Term,
        /// The node to hand mastership to.
        to: NodeId,
        /// The last heartbeat round the asker heard from the leader: a request that waited
        /// longer than `ET_min` on the wire (a replaced connection's queue, a slow link) is
        /// stale, and the leader ignores it.
        round: u64,
    },
    /// Any node → each peer, about once a second and when it changes: what the node says
    /// about itself, for operators (`clustd status --all`). The election ignores it.
    Report {
        /// The sender's current term.
        term: Term,
        /// The sender's summary of itself (boxed, so that the small election messages are
        /// not as large as it).
        report: Box<Report>,
    },
}

/// The most drivers or checks a [`Report`] lists.
pub const MAX_REPORT_ITEMS: usize = 16;
/// The longest text field of a [`Report`], in bytes.
pub const MAX_REPORT_TEXT: usize = 200;

/// A node's summary of itself, for operators: never an input to the election.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Master now (drivers told to run the service).
    pub master: bool,
    /// `leader`, `follower`, `pre-candidate` or `candidate`.
    pub protocol_role: String,
    /// The leader the sender knows.
    pub leader: Option<NodeId>,
    /// While master: milliseconds of lease left when sent.
    pub lease_remaining_ms: u32,
    /// Whether maintenance mode is on: it stands for no election, and hands over if master.
    pub maintenance: bool,
    /// Whether every check passes.
    pub healthy: bool,
    /// Whether it may become master: healthy, not in maintenance, not a witness.
    pub eligible: bool,
    /// A witness (votes, never leads).
    pub witness: bool,
    /// Its election priority (higher is preferred as master).
    pub priority: u8,
    /// Whether it preempts a master of lower priority.
    pub preempt: bool,
    /// Why not eligible (empty when eligible).
    pub ineligible_reason: String,
    /// Drivers connected now, or that may still run the service.
    pub drivers: Vec<DriverReport>,
    /// Its health checks with their latest results, at most [`MAX_REPORT_ITEMS`].
    pub checks: Vec<CheckReport>,
    /// Random, per daemon process: two processes claiming one node id show as two
    /// incarnations (a restart shows as one replacing the other, never coming back).
    pub incarnation: u64,
    /// Its `cluster.listen`, to name it when two processes claim its id.
    pub listen: String,
    /// The incarnation it last heard from each peer: a process learns from its peers'
    /// reports that another process speaks with its id.
    pub seen: Vec<SeenPeer>,
}

/// One peer's incarnation as a [`Report`]'s sender last heard it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenPeer {
    /// The peer heard from, by the id it authenticated as.
    pub id: NodeId,
    /// Its incarnation, as last heard.
    pub incarnation: u64,
    /// Its `cluster.listen`, as it said.
    pub listen: String,
}

/// The most peers a [`Report`]'s `seen` lists.
pub const MAX_REPORT_PEERS: usize = 64;

/// One driver in a [`Report`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverReport {
    /// The driver's id.
    pub id: String,
    /// Whether it is connected to the daemon now (a disconnected one may still run the
    /// service until its lease ends: see `may_run`).
    pub connected: bool,
    /// `master`, `backup`, or empty before the first role.
    pub role: String,
    /// Its last result (`ok`, `failed: ...`), or empty.
    pub last_result: String,
    /// It may be running the service now.
    pub may_run: bool,
    /// Its latest stop failed.
    pub stop_failed: bool,
}

/// One check in a [`Report`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The check's name, as the status shows it (a driver's check is
    /// `<driver id>/<check>`).
    pub name: String,
    /// Whether it passes now, after its fall/rise hysteresis.
    pub healthy: bool,
    /// Its last result, or empty.
    pub last_result: String,
}

impl Report {
    /// Whether every list and text is within [`MAX_REPORT_ITEMS`] / [`MAX_REPORT_TEXT`]:
    /// a receiver drops a report that is not.
    pub fn is_bounded(&self) -> bool {
        let text = |s: &str| s.len() <= MAX_REPORT_TEXT;
        text(&self.protocol_role)
            && text(&self.ineligible_reason)
            && text(&self.listen)
            && self.seen.len() <= MAX_REPORT_PEERS
            && self.seen.iter().all(|p| text(&p.listen))
            && self.drivers.len() <= MAX_REPORT_ITEMS
            && self.checks.len() <= MAX_REPORT_ITEMS
            && self
                .drivers
                .iter()
                .all(|d| text(&d.id) && text(&d.role) && text(&d.last_result))
            && self
                .checks
                .iter()
                .all(|c| text(&c.name) && text(&c.last_result))
    }
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
            | Self::TimeoutNow { term, .. }
            | Self::TransferRequest { term, .. }
            | Self::Report { term, .. } => *term,
        }
    }
}
