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
