//! The election state machine.
//!
//! A [`Node`] is driven like quinn-proto's `Connection`: the caller passes every input in
//! (`handle_message`, `handle_timeout`, commands) together with the current time, then
//! drains the outputs in this order: [`Node::poll_persist`] (write it durably), then
//! [`Node::poll_transmit`] (send), then [`Node::poll_event`] (tell drivers), and finally
//! asks [`Node::poll_timeout`] when to call `handle_timeout` next.
//! `poll_transmit` yields nothing while a persist is waiting to be taken, so a vote can
//! never leave the node before the caller has seen the state that records it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::ControlFlow;
use std::time::Duration;

use crate::rng::SplitMix;
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::ids::{MAX_TERM_JUMP, NodeId, Term};
use crate::message::Message;
use crate::quorum::{self, LeaseTracker};
use crate::successor;
use crate::time::Instant;
use crate::tracker::{AckWindow, Follower};

mod timer;

use timer::Timer;

/// What must survive a restart: the term and the vote cast in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Whom this node voted for in `term`, if anyone.
    pub voted_for: Option<NodeId>,
}

/// The protocol role of a node. Being *master* is more than being leader: see [`Node::is_master`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Follows a leader, or waits for one.
    Follower,
    /// Asking whether it could win an election (pre-vote).
    PreCandidate,
    /// Campaigning in its current term.
    Candidate,
    /// Won the election of its current term.
    Leader,
}

/// Why a node became master or stopped being master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Won an election and a majority acknowledged its first heartbeat.
    Elected,
    /// The lease was renewed again after it had run out.
    LeaseRegained,
    /// The lease ran out: a majority stopped acknowledging heartbeats.
    LeaseExpired,
    /// A majority was silent for a whole minimum election timeout.
    QuorumLost,
    /// Graceful step-down (command or preemption by a higher priority).
    SteppedDown,
    /// Entered maintenance mode.
    Maintenance,
    /// Its health checks failed (hand-over to a healthy peer, or `health.alone = "step-down"`).
    Unhealthy,
    /// Another node has a higher term.
    HigherTerm,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Role {
    /// A short kebab-case name: `follower`, `pre-candidate`, `candidate`, `leader`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Follower => "follower",
            Self::PreCandidate => "pre-candidate",
            Self::Candidate => "candidate",
            Self::Leader => "leader",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reason {
    /// A short kebab-case name, as given to drivers and scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Elected => "elected",
            Self::LeaseRegained => "lease-regained",
            Self::LeaseExpired => "lease-expired",
            Self::QuorumLost => "quorum-lost",
            Self::SteppedDown => "stepped-down",
            Self::Maintenance => "maintenance",
            Self::Unhealthy => "unhealthy",
            Self::HigherTerm => "higher-term",
        }
    }
}

/// Why a message from a peer was dropped unread (see [`Event::Rejected`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// Its term is more than [`MAX_TERM_JUMP`] above ours: no honest peer gets that far
    /// ahead, so it is forged (a compromised peer) or corrupt (a buggy one).
    TermJump,
    /// Its term is above [`Term::CEILING`], the highest term a node may hold.
    TermCeiling,
}

impl RejectReason {
    /// A short kebab-case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TermJump => "term-jump",
            Self::TermCeiling => "term-ceiling",
        }
    }
}

/// Why [`Node::new`] refuses to start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The saved vote names a node that is not a voter: the state belongs to another
    /// cluster (or the voter list lost a node that this one voted for in its last term).
    #[error(
        "the saved state votes for {0}, which is not among the voters: this state file belongs to another cluster, or the voter list changed; restore the right state file, or (only if this node has been down for longer than the maximum election timeout, so the term is over) move it away to start fresh"
    )]
    VoteForNonVoter(NodeId),
    /// The configuration is invalid.
    #[error("election config: {0}")]
    Config(#[from] ConfigError),
    /// The persisted term is above [`Term::CEILING`]: a forged or corrupt term was written
    /// (no honest cluster gets there), and no election could ever be won from it.
    #[error(
        "the persisted term {term} is above the highest usable term {ceiling}: it was \
         probably forged by a peer holding the cluster secret. Recovery: stop every daemon \
         of the cluster, wait until every driver's lease has ended (services stopped), remove \
         the persisted state (the daemon's <data_dir>/state) on every node, then start them \
         all again"
    )]
    TermAboveCeiling {
        /// The term found in the persisted state.
        term: Term,
        /// The highest usable term ([`Term::CEILING`]), for the message.
        ceiling: Term,
    },
}

/// Why a switchover ([`Node::transfer_to`], [`Node::request_transfer`]) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// Only the leader hands over; this node is not it.
    #[error("not the leader")]
    NotLeader,
    /// No leader is known to pass the request to.
    #[error("no master is known")]
    NoLeader,
    /// The target is this node, which already leads.
    #[error("{0} is already master")]
    AlreadyLeader(NodeId),
    /// The target is not a voter of this cluster.
    #[error("{0} is not a node of this cluster")]
    Unknown(NodeId),
    /// The target said it may not be master (unhealthy, in maintenance, a witness).
    #[error("{0} is not eligible to be master (unhealthy, in maintenance, or a witness)")]
    Ineligible(NodeId),
    /// The target has not acknowledged a heartbeat within `ET_min`.
    #[error("{0} has not answered the master within the minimum election timeout")]
    Unreachable(NodeId),
    /// A step-down, maintenance or switchover hand-over is already under way.
    #[error("a hand-over is already under way")]
    InProgress,
    /// A node of higher priority with `preempt` would take mastership back from the
    /// target at once: the switchover would move the service twice for nothing.
    #[error(
        "{by} (priority {by_priority}, preempt on) would take mastership back from {to} (priority {to_priority}) at once: lower its election.priority or turn its election.preempt off first (clustd reload)"
    )]
    WouldBePreempted {
        /// The node the switchover was asked for.
        to: NodeId,
        /// The target's election priority, below `by_priority`.
        to_priority: u8,
        /// The eligible node that would preempt it: the operator changes its
        /// `election.priority` or `election.preempt` first.
        by: NodeId,
        /// That node's election priority.
        by_priority: u8,
    },
}

/// Something the caller should know about (tell drivers, update status, count metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum Event {
    /// This node is now master until `lease_until` unless renewed.
    BecameMaster {
        /// The fencing token.
        term: Term,
        /// When mastership ends unless a [`Event::LeaseRenewed`] follows.
        lease_until: Instant,
        /// Why ([`Reason::Elected`] or [`Reason::LeaseRegained`]), for logs and for
        /// drivers, which pass it to scripts (`CLUSTD_REASON`).
        reason: Reason,
    },
    /// This node is no longer master. (A node starts as backup without this event.)
    BecameBackup {
        /// The term now, the fencing token drivers get with the notice: above the
        /// mastership's own when a higher term deposed it.
        term: Term,
        /// The known leader, if any.
        leader: Option<NodeId>,
        /// Why mastership ended, for logs and for drivers, which pass it to scripts
        /// (`CLUSTD_REASON`).
        reason: Reason,
    },
    /// While master: the lease now runs until `until`.
    LeaseRenewed {
        /// The term of the mastership renewed: the one of its [`Event::BecameMaster`].
        term: Term,
        /// New end of the lease.
        until: Instant,
    },
    /// The node learned of a (different) leader, or lost it.
    LeaderChanged {
        /// The term `leader` leads in (or in which no leader is known any more).
        term: Term,
        /// The new leader, if known.
        leader: Option<NodeId>,
    },
    /// This node started a real campaign (after winning pre-vote, or on transfer).
    ElectionStarted {
        /// The term campaigned in.
        term: Term,
    },
    /// This node won the election of `term`.
    ElectionWon {
        /// The term won.
        term: Term,
    },
    /// Leader only: a peer started or stopped acknowledging heartbeats within `ET_min`.
    PeerReachability {
        /// The follower whose acknowledgements started or stopped (for status and logs;
        /// the election itself does not act on this event).
        peer: NodeId,
        /// Whether it is acknowledging.
        reachable: bool,
    },
    /// Leader, unhealthy, with no healthy eligible peer reachable to hand over to: it
    /// stays master ([`crate::Alone::Stay`]) or steps down ([`crate::Alone::StepDown`]).
    /// Emitted once when this starts (again after it ended); operators must hear of it.
    UnhealthyAlone {
        /// The term this node leads in.
        term: Term,
        /// What the node does about it.
        alone: crate::Alone,
    },
    /// A message from a voter was dropped unread because its term cannot be honest (see
    /// [`MAX_TERM_JUMP`]): the sender is compromised or broken. Operators should see it.
    Rejected {
        /// The (authenticated) sender.
        from: NodeId,
        /// The term it carried.
        term: Term,
        /// This node's term, unchanged.
        ours: Term,
        /// Which bound the term broke, for logs and metrics.
        reason: RejectReason,
    },
}

/// A leader that has demoted itself and waits before handing over.
#[derive(Clone, Debug)]
struct Handoff {
    /// Hand over at this time at the latest (when the last lease given out has run out),
    /// or, with no successor acknowledging fresh enough then, a heartbeat later.
    at: Instant,
    /// Preferred successor (preemption), else the best reachable eligible follower.
    target: Option<NodeId>,
    reason: Reason,
}

#[derive(Clone, Debug)]
struct Leadership {
    round: u64,
    next_heartbeat: Instant,
    /// The rounds' send times, the newest a majority acknowledged and the lease from it.
    lease: LeaseTracker,
    followers: BTreeMap<NodeId, Follower>,
    handoff: Option<Handoff>,
    /// Whether this leadership has already made the node master once.
    was_master: bool,
}

#[derive(Clone, Debug)]
enum State {
    Follower,
    PreCandidate {
        granted: BTreeSet<NodeId>,
        retry_at: Option<Instant>,
    },
    Candidate {
        granted: BTreeSet<NodeId>,
    },
    Leader(Box<Leadership>),
}

/// One node's election state machine. See the module docs for the calling protocol.
#[derive(Debug)]
pub struct Node {
    config: Config,
    rng: SplitMix,
    term: Term,
    voted_for: Option<NodeId>,
    state: State,
    leader: Option<NodeId>,
    /// The last heartbeat round heard from `leader` (0: none in this term).
    heard_round: u64,
    /// Last time this node heard from a live leader (or started): it refuses votes and
    /// does not campaign for `ET_min` after it.
    leader_contact: Instant,
    /// Follower: start pre-vote at this time. (Pre)candidate: give up and retry.
    election_deadline: Instant,
    /// Successor ranking from the last heartbeat; used to stagger election timeouts.
    successors: Vec<NodeId>,
    maintenance: bool,
    /// The service's health as the caller last reported it ([`Node::set_healthy`]).
    healthy: bool,
    /// No health hand-over (nor preemption) before this time: `min_master` after the
    /// cluster's last health hand-over, as this node began it or heard of it in heartbeats.
    health_hold_until: Option<Instant>,
    /// An [`Event::UnhealthyAlone`] was emitted and the situation has not ended since.
    alone_reported: bool,
    /// `Some(term)` while drivers have been told "master" in that term.
    master_term: Option<Term>,
    master_lease_until: Instant,
    persist: Option<PersistentState>,
    transmit: VecDeque<(NodeId, Message)>,
    events: VecDeque<Event>,
}

impl Node {
    /// Starts a node from its persisted state.
    ///
    /// A (re)started node acts as if it had just heard from a leader: it grants no vote and
    /// starts no campaign for `ET_min`. It may have acknowledged a leader just before it
    /// went down, and that leader's lease may still be running.
    ///
    /// Refuses an invalid config, and a persisted term above [`Term::CEILING`] (the error
    /// names the recovery; a node never persists such a term itself).
    pub fn new(
        config: Config,
        persisted: PersistentState,
        now: Instant,
    ) -> Result<Self, StartError> {
        config.validate()?;
        if let Some(vote) = &persisted.voted_for
            && !config.voters.contains(vote)
        {
            return Err(StartError::VoteForNonVoter(vote.clone()));
        }
        if persisted.term > Term::CEILING {
            return Err(StartError::TermAboveCeiling {
                term: persisted.term,
                ceiling: Term::CEILING,
            });
        }
        let rng = SplitMix(config.rng_seed);
        let mut node = Self {
            rng,
            term: persisted.term,
            voted_for: persisted.voted_for,
            state: State::Follower,
            leader: None,
            heard_round: 0,
            leader_contact: now,
            election_deadline: now,
            successors: Vec::new(),
            maintenance: false,
            healthy: true,
            health_hold_until: None,
            alone_reported: false,
            master_term: None,
            master_lease_until: now,
            persist: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            config,
        };
        node.reset_election_deadline(now);
        Ok(node)
    }

    // ----- getters -------------------------------------------------------------------

    /// This node's id: the `from` its peers pass to their [`Node::handle_message`].
    pub fn id(&self) -> &NodeId {
        &self.config.id
    }

    /// The configuration it runs with: the last one given to [`Node::reconfigure`] (with
    /// the random seed it started with), or the one it started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current term: the fencing token drivers get, which never decreases (across
    /// restarts too, once [`Node::poll_persist`]'s state is written).
    pub fn term(&self) -> Term {
        self.term
    }

    /// Whom this node voted for in the current term.
    pub fn voted_for(&self) -> Option<&NodeId> {
        self.voted_for.as_ref()
    }

    /// The current protocol role.
    pub fn role(&self) -> Role {
        match self.state {
            State::Follower => Role::Follower,
            State::PreCandidate { .. } => Role::PreCandidate,
            State::Candidate { .. } => Role::Candidate,
            State::Leader(_) => Role::Leader,
        }
    }

    /// The leader this node knows of in the current term.
    pub fn leader(&self) -> Option<&NodeId> {
        self.leader.as_ref()
    }

    /// Whether this node announced itself master and had not seen its lease run out **as of
    /// its last input**. A node that is no longer driven (its loop stalled, its thread
    /// starved, its process paused) keeps answering `true` while a new master serves
    /// elsewhere, so this is a role, not permission: gate the service with
    /// [`Node::may_serve`] at the moment of acting.
    pub fn is_master(&self) -> bool {
        self.master_term.is_some()
    }

    /// The gate for a service: whether this node may serve at `now` — it is master and `now`
    /// (read from the same clock that drives the node, at the moment of acting) is before
    /// its lease end. A master that was not driven past its lease end may find the gate
    /// open again after a late acknowledgement renews its lease ([`Event::LeaseRenewed`]);
    /// that is safe, the lease being as fresh as the round it comes from.
    ///
    /// The lease inequality keeps every new master from starting before this lease end plus
    /// [`Config::stop_budget`] (in real time, at the drift bound): an action that passed the
    /// gate must have finished, or be cut off, within the stop budget. For a service in the
    /// same process, check the gate before each externally visible action and keep each
    /// action shorter than the stop budget. For a service in another process (a driver),
    /// hand it the remaining lease ([`Node::lease_remaining`]) with the send time on a
    /// clock both share, minus a safety margin, so that it counts from the send time and not
    /// from delivery, and have it stop by itself at that lease end within the stop budget,
    /// whatever it hears (as `clustd`'s drivers do).
    pub fn may_serve(&self, now: Instant) -> bool {
        self.master_term.is_some() && now < self.master_lease_until
    }

    /// While the gate is open ([`Node::may_serve`]): how much of the lease is left at `now`;
    /// zero otherwise.
    pub fn lease_remaining(&self, now: Instant) -> Duration {
        if self.may_serve(now) {
            self.master_lease_until.saturating_duration_since(now)
        } else {
            Duration::ZERO
        }
    }

    /// While master: when the lease ends unless renewed.
    pub fn lease_until(&self) -> Option<Instant> {
        self.master_term.map(|_| self.master_lease_until)
    }

    /// Whether maintenance mode is on.
    pub fn maintenance(&self) -> bool {
        self.maintenance
    }

    /// The service's health, as last given to [`Node::set_healthy`] (true until then).
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Whether this node may become master: healthy, not in maintenance, not a witness.
    /// This is what its acknowledgements tell the leader.
    pub fn eligible(&self) -> bool {
        // (`clustd_mutant = "h1"` ignores health here, for README's mutation table.)
        (self.healthy || cfg!(clustd_mutant = "h1")) && !self.maintenance && !self.config.witness
    }

    /// While a health hand-over (or a preemption) is held back by `min_master`: until when.
    pub fn health_hold_until(&self, now: Instant) -> Option<Instant> {
        self.health_hold_until.filter(|until| now < *until)
    }

    /// The state that must be on disk.
    pub fn persistent_state(&self) -> PersistentState {
        PersistentState {
            term: self.term,
            voted_for: self.voted_for.clone(),
        }
    }

    /// Leader only: whether `peer`'s latest acknowledgement said it is eligible (healthy,
    /// not in maintenance, not a witness); `None` before its first, or unless leader.
    pub fn peer_eligible(&self, peer: &NodeId) -> Option<bool> {
        match &self.state {
            State::Leader(l) => l
                .followers
                .get(peer)
                .filter(|f| f.last_ack.is_some())
                .map(|f| f.eligible),
            _ => None,
        }
    }

    /// Applies a new configuration without a role change (`clustd reload`): priority,
    /// preemption, `alone`, `min_master` and timings. The id, the voters and the witness
    /// flag cannot change this way (an error), and the new configuration must validate.
    /// Timings take effect from the next timer, heartbeat or lease renewal; whether a
    /// change is safe while the other nodes still run the old one is the caller's rule
    /// (the daemon accepts only a lease no longer and an election timeout, stop budget and
    /// drift bound no smaller than before).
    pub fn reconfigure(&mut self, now: Instant, config: Config) -> Result<(), ConfigError> {
        config.validate()?;
        if config.id != self.config.id
            || config.voters != self.config.voters
            || config.witness != self.config.witness
        {
            return Err(ConfigError::Unchangeable);
        }
        let rng_seed = self.config.rng_seed;
        self.config = Config { rng_seed, ..config };
        self.refresh_master(now);
        Ok(())
    }

    /// Leader only: the eligible followers that acknowledged within `ET_min`, best first
    /// (priority, then id): whom a step-down would hand over to now. Empty otherwise.
    pub fn successors(&self, now: Instant) -> Vec<NodeId> {
        match &self.state {
            State::Leader(l) => {
                successor::ranked(&l.followers, now, AckWindow::Reachable.of(&self.config))
            }
            _ => Vec::new(),
        }
    }

    /// Switchover (leader only): like [`Node::step_down`], but hands over to `to`, which
    /// must be an eligible follower that acknowledged within `ET_min`. If `to` is gone by
    /// the time the hand-over completes (after the drivers' stop), the best reachable
    /// successor takes over instead, as for a step-down.
    pub fn transfer_to(&mut self, now: Instant, to: &NodeId) -> Result<(), TransferError> {
        if to == &self.config.id {
            return match self.state {
                State::Leader(_) => Err(TransferError::AlreadyLeader(to.clone())),
                _ => Err(TransferError::NotLeader),
            };
        }
        if !self.config.voters.contains(to) {
            return Err(TransferError::Unknown(to.clone()));
        }
        let State::Leader(l) = &self.state else {
            return Err(TransferError::NotLeader);
        };
        if l.handoff
            .as_ref()
            .is_some_and(|h| h.reason != Reason::Unhealthy)
        {
            return Err(TransferError::InProgress);
        }
        let reachable = AckWindow::Reachable.of(&self.config);
        let follower = l.followers.get(to);
        if follower.is_some_and(|f| f.last_ack.is_some() && !f.eligible) {
            return Err(TransferError::Ineligible(to.clone()));
        }
        if !follower.is_some_and(|f| f.acked_within(now, reachable)) {
            return Err(TransferError::Unreachable(to.clone()));
        }
        let to_priority = follower.map_or(0, |f| f.priority);
        // This node and every follower that could preempt the target right away.
        let me = (
            self.config.id.clone(),
            self.config.priority,
            self.config.preempt && self.eligible(),
        );
        let preempter = successor::preempter_of(to, to_priority, me, &l.followers, now, reachable);
        if let Some((by, by_priority)) = preempter {
            return Err(TransferError::WouldBePreempted {
                to: to.clone(),
                to_priority,
                by,
                by_priority,
            });
        }
        self.begin_handoff(now, Some(to.clone()), Reason::SteppedDown);
        self.refresh_master(now);
        Ok(())
    }

    /// Switchover asked on any node: the leader does it ([`Node::transfer_to`]); another
    /// node passes the request to the leader it knows ([`Message::TransferRequest`]) and
    /// returns that leader. The leader checks again and ignores a request it must refuse.
    pub fn request_transfer(&mut self, now: Instant, to: &NodeId) -> Result<NodeId, TransferError> {
        if let State::Leader(_) = self.state {
            self.transfer_to(now, to)?;
            return Ok(self.config.id.clone());
        }
        if !self.config.voters.contains(to) && to != &self.config.id {
            return Err(TransferError::Unknown(to.clone()));
        }
        let Some(leader) = self.leader.clone() else {
            return Err(TransferError::NoLeader);
        };
        if &leader == to {
            return Err(TransferError::AlreadyLeader(leader));
        }
        let term = self.term;
        let round = self.heard_round;
        self.send(
            &leader,
            Message::TransferRequest {
                term,
                to: to.clone(),
                round,
            },
        );
        Ok(leader)
    }

    // ----- handle_* --------------------------------------------------------------------

    /// Feeds one message from an authenticated peer. Messages from ids that are not
    /// voters (or from the node itself) are ignored. A message whose term no honest peer
    /// can have (more than [`MAX_TERM_JUMP`] above ours, or above [`Term::CEILING`]) is
    /// dropped with an [`Event::Rejected`]: adopting it could exhaust the terms for good.
    pub fn handle_message(&mut self, now: Instant, from: &NodeId, msg: Message) {
        if from == &self.config.id || !self.config.voters.contains(from) {
            return;
        }
        if let Message::Report { .. } = msg {
            return; // for operators only: never an input to the election
        }
        let term = msg.term();
        if let Some(reason) = self.reject_reason(term) {
            self.events.push_back(Event::Rejected {
                from: from.clone(),
                term,
                ours: self.term,
                reason,
            });
            self.refresh_master(now);
            return;
        }
        match msg {
            Message::PreVote { term } => self.on_pre_vote(now, from, term),
            Message::PreVoteResponse {
                term,
                granted,
                retry_after_ms,
            } => self.on_pre_vote_response(now, from, term, granted, retry_after_ms),
            Message::RequestVote { term, transfer } => {
                self.on_request_vote(now, from, term, transfer)
            }
            Message::Vote { term, granted } => self.on_vote(now, from, term, granted),
            Message::Heartbeat {
                term,
                round,
                successors,
                hold_ms,
            } => self.on_heartbeat(now, from, term, round, successors, hold_ms),
            Message::HeartbeatAck {
                term,
                round,
                priority,
                eligible,
                preempt,
            } => {
                let info = Follower {
                    acked_round: round,
                    last_ack: Some(now),
                    priority,
                    eligible,
                    preempt,
                    reachable: None,
                };
                self.on_heartbeat_ack(now, from, term, info);
            }
            Message::TimeoutNow { term, hold_ms } => self.on_timeout_now(now, from, term, hold_ms),
            Message::TransferRequest { term, to, round } => {
                // Only for this leadership: a request from another term is stale (or from a
                // node that has not caught up); never adopt its term. Nor one whose asker
                // last heard a round more than ET_min ago: it waited on the wire, and the
                // operator has been told it did not happen.
                let window = quorum::rounds_in(
                    self.config.election_timeout_min,
                    self.config.heartbeat_interval,
                );
                if term == self.term
                    && let State::Leader(l) = &self.state
                    && quorum::heard_within(l.round, round, window)
                {
                    let _ = self.transfer_to(now, &to);
                }
            }
            Message::Report { .. } => {}
        }
        self.refresh_master(now);
    }

    /// Advances timers. Call at (or after) [`Node::poll_timeout`]; calling early is harmless.
    ///
    /// Handles the timers that are due in one fixed order, each as the node stands after
    /// the ones before it (the order and why: `Timer::ORDER` in `core/src/node/timer.rs`).
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in Timer::ORDER {
            if self.deadline(timer).is_some_and(|at| now >= at)
                && self.on_timer(now, timer).is_break()
            {
                break;
            }
        }
        self.refresh_master(now);
    }

    // ----- commands --------------------------------------------------------------------

    /// Graceful step-down: if master, stop being master *now* (the caller tells drivers),
    /// keep followers quiet with heartbeats, and hand leadership to the best reachable
    /// follower once the drivers confirmed ([`Node::confirm_demoted`]) or the last lease
    /// given out has run out plus the stop budget (at the drift bound, on this node's
    /// clock). Does nothing unless leader.
    pub fn step_down(&mut self, now: Instant) {
        self.begin_handoff(now, None, Reason::SteppedDown);
        self.refresh_master(now);
    }

    /// Maintenance on: never stand for election, and hand over if leader. Off: stand again.
    pub fn set_maintenance(&mut self, now: Instant, on: bool) {
        if self.maintenance == on {
            return;
        }
        self.maintenance = on;
        if on {
            match self.state {
                State::Leader(_) => self.begin_handoff(now, None, Reason::Maintenance),
                State::PreCandidate { .. } | State::Candidate { .. } => {
                    self.become_follower(None);
                    self.reset_election_deadline(now);
                }
                State::Follower => {}
            }
        } else if !matches!(self.state, State::Leader(_)) {
            self.reset_election_deadline(now);
        }
        self.refresh_master(now);
    }

    /// Reports the service's health (the caller's checks, with their own hysteresis).
    ///
    /// Unhealthy: the node is ineligible. It never starts a pre-vote, ignores hand-overs
    /// to it, and its acknowledgements tell the leader, which then never ranks it as a
    /// successor. If it is master, it demotes and hands over to the best reachable healthy,
    /// eligible follower, through the usual hand-over (after the drivers confirmed their
    /// stop, or the last lease plus the stop budget). With no such follower it stays
    /// master and says so ([`Event::UnhealthyAlone`]), or with [`crate::Alone::StepDown`]
    /// steps down anyway. A hand-over for health happens no sooner than
    /// [`Config::min_master`] after the previous one (the leader's heartbeats carry what
    /// is left of that hold, and whoever leads next keeps it), so a flapping check moves
    /// mastership at most once per interval; preemption waits for the hold too.
    ///
    /// Healthy again: it may stand again; it takes mastership back only by preemption
    /// ([`Config::preempt`]).
    pub fn set_healthy(&mut self, now: Instant, healthy: bool) {
        if self.healthy == healthy {
            return;
        }
        self.healthy = healthy;
        self.alone_reported = false;
        match self.state {
            State::Leader(_) => self.health_handoff(now),
            State::PreCandidate { .. } | State::Candidate { .. } if !healthy => {
                self.become_follower(None);
                self.reset_election_deadline(now);
            }
            State::Follower if healthy => self.reset_election_deadline(now),
            _ => {}
        }
        self.refresh_master(now);
    }

    /// Every driver that may have run the service confirmed (`Ok`) that it stopped after
    /// the demotion a step-down, maintenance or preemption started: hand leadership over
    /// now instead of waiting for lease end plus stop budget. Call it only then: a failed
    /// or timed-out stop, or a driver that did not answer, is no confirmation.
    pub fn confirm_demoted(&mut self, now: Instant) {
        if let State::Leader(l) = &mut self.state
            && let Some(handoff) = &mut l.handoff
        {
            handoff.at = handoff.at.min(now);
        }
        self.handle_timeout(now);
    }

    // ----- poll_* ----------------------------------------------------------------------

    /// State to write durably before anything from [`Node::poll_transmit`] is sent.
    #[must_use]
    pub fn poll_persist(&mut self) -> Option<PersistentState> {
        self.persist.take()
    }

    /// The next message to send. `None` while a persist is waiting to be taken.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Message)> {
        if self.persist.is_some() {
            return None;
        }
        self.transmit.pop_front()
    }

    /// The next event for drivers and status.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] must be called next: the earliest of the timers the
    /// node's role arms.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        let earliest = Timer::ORDER
            .into_iter()
            .filter_map(|timer| self.deadline(timer))
            .min();
        // A leader always has a heartbeat due, and every other role an election deadline.
        earliest.unwrap_or_else(|| unreachable!("no timer armed in {:?}", self.role()))
    }

    // ----- internals: message handlers -------------------------------------------------

    fn on_pre_vote(&mut self, now: Instant, from: &NodeId, term: Term) {
        let (granted, retry_after_ms) = if term <= self.term {
            (false, None)
        } else if let State::Leader(_) = self.state {
            (false, None)
        } else if let Some(wait) = self.stickiness_left(now) {
            let ms = u32::try_from(wait.as_millis().saturating_add(1)).unwrap_or(u32::MAX);
            (false, Some(ms))
        } else {
            (true, None)
        };
        // A grant echoes the term asked about; a refusal carries our own term, so an asker
        // that is behind can catch up (never ahead: that would let a pre-vote bump terms).
        let reply_term = if granted { term } else { self.term };
        self.send(
            from,
            Message::PreVoteResponse {
                term: reply_term,
                granted,
                retry_after_ms,
            },
        );
    }

    fn on_pre_vote_response(
        &mut self,
        now: Instant,
        from: &NodeId,
        term: Term,
        granted: bool,
        retry_after_ms: Option<u32>,
    ) {
        // A pre-candidate exists only below the ceiling (see `can_campaign`).
        let Some(proposed) = self.term.next() else {
            return;
        };
        let State::PreCandidate {
            granted: votes,
            retry_at,
        } = &mut self.state
        else {
            return;
        };
        if granted && term == proposed {
            votes.insert(from.clone());
            if votes.len() >= self.config.quorum() {
                self.start_campaign(now, false);
            }
        } else if !granted && term >= proposed {
            // Someone is ahead of us: adopt its term (no vote), then try again later.
            self.observe_term(term);
            self.become_follower(None);
            self.reset_election_deadline(now);
        } else if let Some(ms) = retry_after_ms {
            // Refused only because it heard from a leader recently: ask again right after.
            let at = now + Duration::from_millis(u64::from(ms));
            if at < self.election_deadline {
                *retry_at = Some(retry_at.map_or(at, |r| r.min(at)));
            }
        }
    }

    fn on_request_vote(&mut self, now: Instant, from: &NodeId, term: Term, transfer: bool) {
        if term < self.term {
            self.send(
                from,
                Message::Vote {
                    term: self.term,
                    granted: false,
                },
            );
            return;
        }
        if !transfer && self.stickiness_left(now).is_some() {
            // A live leader exists as far as we know: neither adopt the term nor vote, so a
            // node that was cut off cannot disrupt the cluster.
            self.send(
                from,
                Message::Vote {
                    term: self.term,
                    granted: false,
                },
            );
            return;
        }
        if term > self.term {
            self.observe_term(term);
            self.become_follower(None);
        }
        let granted = match &self.voted_for {
            None => true,
            Some(v) => v == from,
        };
        if granted {
            if self.voted_for.is_none() {
                self.voted_for = Some(from.clone());
                self.persist_state();
            }
            self.reset_election_deadline(now);
        }
        self.send(
            from,
            Message::Vote {
                term: self.term,
                granted,
            },
        );
    }

    fn on_vote(&mut self, now: Instant, from: &NodeId, term: Term, granted: bool) {
        if term > self.term {
            self.observe_term(term);
            self.become_follower(None);
            self.reset_election_deadline(now);
            return;
        }
        let State::Candidate { granted: votes } = &mut self.state else {
            return;
        };
        if granted && term == self.term {
            votes.insert(from.clone());
            if votes.len() >= self.config.quorum() {
                self.become_leader(now);
            }
        }
    }

    fn on_heartbeat(
        &mut self,
        now: Instant,
        from: &NodeId,
        term: Term,
        round: u64,
        successors: Vec<NodeId>,
        hold_ms: u32,
    ) {
        if term < self.term {
            // A deposed leader: our reply carries the higher term and makes it step down. It
            // names round 0 (never sent) so that it cannot count as an acknowledgement if
            // `from` has meanwhile become leader in our term: a stale round number there would
            // stall its lease, or vouch for a round this node never heard.
            let reply = self.ack(0);
            self.send(from, reply);
            return;
        }
        if term > self.term {
            self.observe_term(term);
        }
        if !matches!(self.state, State::Follower) {
            self.become_follower(None);
        }
        if self.leader.as_ref() != Some(from) {
            self.leader = Some(from.clone());
            self.events.push_back(Event::LeaderChanged {
                term: self.term,
                leader: self.leader.clone(),
            });
        }
        self.leader_contact = now;
        self.heard_round = round;
        self.successors = successors;
        // Inherit the leader's `min_master` hold, so whoever leads next (by hand-over or by
        // election) does not move mastership for health again before it ends.
        self.inherit_hold(now, hold_ms);
        self.reset_election_deadline(now);
        let ack = self.ack(round);
        self.send(from, ack);
    }

    fn on_heartbeat_ack(&mut self, now: Instant, from: &NodeId, term: Term, info: Follower) {
        if term > self.term {
            self.observe_term(term);
            self.become_follower(None);
            self.reset_election_deadline(now);
            return;
        }
        // Round 0 is a reply to a stale heartbeat, not an acknowledgement (see `on_heartbeat`).
        if term < self.term || info.acked_round == 0 {
            return;
        }
        let quorum = self.config.quorum();
        let lease = self.config.lease;
        let State::Leader(l) = &mut self.state else {
            return;
        };
        let entry = l.followers.entry(from.clone()).or_default();
        entry.acked_round = entry.acked_round.max(info.acked_round);
        entry.last_ack = info.last_ack;
        entry.priority = info.priority;
        entry.eligible = info.eligible;
        entry.preempt = info.preempt;
        if !matches!(entry.reachable, Some(true)) {
            entry.reachable = Some(true);
            self.events.push_back(Event::PeerReachability {
                peer: from.clone(),
                reachable: true,
            });
        }

        // The lease runs from the send time of the newest round a majority has acked.
        let acked = l.followers.values().map(|f| f.acked_round);
        let majority_round = quorum::majority_round(l.round, acked, quorum);
        l.lease.majority_acknowledged(majority_round, lease);

        // Preemption: a reachable, eligible follower of higher priority that asks for it
        // (not while `min_master` holds this master in place after a hand-over).
        let held = self.health_hold_until.is_some_and(|until| now < until);
        if l.handoff.is_none() && !held {
            let answering = AckWindow::Answering.of(&self.config);
            let preferred =
                successor::preempting(&l.followers, now, answering, self.config.priority);
            if let Some(target) = preferred {
                self.begin_handoff(now, Some(target), Reason::SteppedDown);
            }
        }
    }

    fn on_timeout_now(&mut self, now: Instant, from: &NodeId, term: Term, hold_ms: u32) {
        if term == self.term
            && self.leader.as_ref() == Some(from)
            && matches!(self.state, State::Follower)
        {
            self.inherit_hold(now, hold_ms);
        }
        if term == self.term
            && self.leader.as_ref() == Some(from)
            && matches!(self.state, State::Follower)
            && self.eligible()
        {
            self.start_campaign(now, true);
        }
    }

    // ----- internals: timers -------------------------------------------------------------

    /// When `timer` is due, if the node's role arms it (see [`Timer`]).
    fn deadline(&self, timer: Timer) -> Option<Instant> {
        let leadership = match &self.state {
            State::Leader(l) => Some(l),
            _ => None,
        };
        match timer {
            Timer::Handoff => leadership?.handoff.as_ref().map(|h| h.at),
            Timer::CheckQuorum => {
                Some(leadership?.lease.majority_at() + self.config.election_timeout_min)
            }
            Timer::Heartbeat => Some(leadership?.next_heartbeat),
            Timer::PreVoteRetry => match self.state {
                State::PreCandidate { retry_at, .. } => retry_at,
                _ => None,
            },
            Timer::Election => leadership.is_none().then_some(self.election_deadline),
            Timer::LeaseExpiry => {
                leadership?;
                self.master_term.map(|_| self.master_lease_until)
            }
        }
    }

    /// Handles one timer that is due; `Break` when the timers after it must wait for the
    /// next call (see [`Timer::ORDER`]).
    fn on_timer(&mut self, now: Instant, timer: Timer) -> ControlFlow<()> {
        match timer {
            Timer::Handoff => {
                self.complete_handoff(now);
                ControlFlow::Break(())
            }
            Timer::CheckQuorum => {
                // A majority has been silent for a whole election timeout.
                self.become_follower(Some(Reason::QuorumLost));
                self.reset_election_deadline(now);
                ControlFlow::Break(())
            }
            Timer::Heartbeat => {
                self.heartbeat_tick(now);
                ControlFlow::Continue(())
            }
            Timer::PreVoteRetry => {
                self.start_pre_vote(now);
                ControlFlow::Continue(())
            }
            Timer::Election => {
                if self.can_campaign(now) {
                    self.start_pre_vote(now);
                } else {
                    self.become_follower(None);
                    self.reset_election_deadline(now);
                }
                ControlFlow::Continue(())
            }
            // Demoted by the `refresh_master` that ends `handle_timeout`.
            Timer::LeaseExpiry => ControlFlow::Continue(()),
        }
    }

    /// Leader, at each heartbeat: tell which followers started or stopped acknowledging
    /// within `ET_min`, send the next round, and begin a health hand-over if one is due.
    fn heartbeat_tick(&mut self, now: Instant) {
        let window = AckWindow::Reachable.of(&self.config);
        let State::Leader(l) = &mut self.state else {
            return;
        };
        let mut changes = Vec::new();
        for (id, f) in &mut l.followers {
            let reachable = f.acked_within(now, window);
            if f.reachable != Some(reachable) && (f.reachable.is_some() || !reachable) {
                changes.push((id.clone(), reachable));
            }
            f.reachable = Some(reachable);
        }
        for (peer, reachable) in changes {
            self.events
                .push_back(Event::PeerReachability { peer, reachable });
        }
        self.broadcast_heartbeat(now);
        self.health_handoff(now);
    }

    /// Leader, unhealthy: hand over to the best reachable healthy follower, unless held
    /// by `min_master`; with none, stay (or step down, per [`Config::alone`]) and say so.
    fn health_handoff(&mut self, now: Instant) {
        // (`clustd_mutant = "h2"` ignores the `min_master` hold, for README's mutation table.)
        let held = self.health_hold_until(now).is_some() && !cfg!(clustd_mutant = "h2");
        if self.healthy || held {
            return;
        }
        let answering = AckWindow::Answering.of(&self.config);
        let State::Leader(l) = &self.state else {
            return;
        };
        if l.handoff.is_some() {
            return;
        }
        let target = successor::best(&l.followers, now, answering);
        if target.is_none() {
            if !self.alone_reported {
                self.alone_reported = true;
                self.events.push_back(Event::UnhealthyAlone {
                    term: self.term,
                    alone: self.config.alone,
                });
            }
            if self.config.alone == crate::Alone::Stay {
                return;
            }
        }
        self.alone_reported = false;
        self.health_hold_until = Some(now + self.config.min_master);
        self.begin_handoff(now, target, Reason::Unhealthy);
        // Tell every follower of the hold now, not at the next heartbeat: a confirmed stop
        // may complete the hand-over sooner, and if the successor then fails to take over,
        // whoever is elected instead must hold too.
        self.broadcast_heartbeat(now);
    }

    // ----- internals: transitions ---------------------------------------------------------

    fn start_pre_vote(&mut self, now: Instant) {
        if !self.can_campaign(now) {
            return;
        }
        if self.leader.take().is_some() {
            self.events.push_back(Event::LeaderChanged {
                term: self.term,
                leader: None,
            });
        }
        let mut granted = BTreeSet::new();
        granted.insert(self.config.id.clone());
        self.state = State::PreCandidate {
            granted,
            retry_at: None,
        };
        self.reset_election_deadline(now);
        if self.config.quorum() == 1 {
            self.start_campaign(now, false);
            return;
        }
        let Some(proposed) = self.term.next() else {
            return; // unreachable: `can_campaign` checked it
        };
        for peer in self.peers() {
            self.send(&peer, Message::PreVote { term: proposed });
        }
    }

    fn start_campaign(&mut self, now: Instant, transfer: bool) {
        // At the ceiling there is no next term: stay a follower (the callers checked
        // `can_campaign`, except a transfer, which then simply does not happen).
        let Some(term) = self.term.next() else {
            return;
        };
        self.term = term;
        self.voted_for = Some(self.config.id.clone());
        self.leader = None;
        self.persist_state();
        let mut granted = BTreeSet::new();
        granted.insert(self.config.id.clone());
        self.state = State::Candidate { granted };
        self.events
            .push_back(Event::ElectionStarted { term: self.term });
        self.reset_election_deadline(now);
        if self.config.quorum() == 1 {
            self.become_leader(now);
            return;
        }
        let term = self.term;
        for peer in self.peers() {
            self.send(&peer, Message::RequestVote { term, transfer });
        }
    }

    fn become_leader(&mut self, now: Instant) {
        self.state = State::Leader(Box::new(Leadership {
            round: 0,
            next_heartbeat: now,
            lease: LeaseTracker::new(now),
            followers: self
                .peers()
                .into_iter()
                .map(|p| (p, Follower::default()))
                .collect(),
            handoff: None,
            was_master: false,
        }));
        self.leader = Some(self.config.id.clone());
        self.events
            .push_back(Event::ElectionWon { term: self.term });
        self.events.push_back(Event::LeaderChanged {
            term: self.term,
            leader: self.leader.clone(),
        });
        // (A single voter's lease is set by this first round: see `broadcast_heartbeat`.)
        self.broadcast_heartbeat(now);
        if self.maintenance || self.config.witness {
            self.begin_handoff(now, None, Reason::Maintenance);
        }
    }

    /// Leaves candidacy or leadership; `reason` is used if this ends mastership.
    fn become_follower(&mut self, reason: Option<Reason>) {
        let was_leader = matches!(self.state, State::Leader(_));
        if let State::Leader(l) = &self.state {
            // A leader counts itself in every majority that acknowledged a round, so it must
            // stay sticky exactly like the followers of that round: no (pre)vote until `ET_min`
            // after the round's send time. Otherwise a deposed leader hands a challenger the
            // majority while its own drivers' lease still runs.
            // (`clustd_mutant = "f1"` reintroduces the bug, for README's mutation table.)
            if !cfg!(clustd_mutant = "f1") {
                self.leader_contact = self.leader_contact.max(l.lease.majority_at());
            }
        }
        self.state = State::Follower;
        if was_leader {
            self.leader = None;
            self.events.push_back(Event::LeaderChanged {
                term: self.term,
                leader: None,
            });
        }
        if self.master_term.is_some() {
            self.demote(reason.unwrap_or(Reason::HigherTerm));
        }
    }

    fn begin_handoff(&mut self, now: Instant, target: Option<NodeId>, reason: Reason) {
        let State::Leader(l) = &mut self.state else {
            return;
        };
        if let Some(pending) = &mut l.handoff {
            // A health hand-over may be cancelled if nobody healthy is left to take over;
            // a step-down or maintenance asked for meanwhile must not be: it takes over the
            // pending hand-over (same time), with its own target if it names one.
            if pending.reason == Reason::Unhealthy && reason != Reason::Unhealthy {
                pending.reason = reason;
                if target.is_some() {
                    pending.target = target;
                }
            }
            return;
        }
        // Drivers holding a lease may run until it ends, and their stop may take the stop
        // budget after that (in real time: on a clock running fast by ρ the budget is
        // longer). Hand over no earlier unless the caller confirms they all stopped.
        let budget = if cfg!(clustd_mutant = "f2") {
            Duration::ZERO // the bug, for README's mutation table
        } else {
            self.config.stop_budget_at_drift_bound()
        };
        let at = l.lease.lease_until().map_or(now, |u| (u + budget).max(now));
        l.handoff = Some(Handoff { at, target, reason });
        if self.master_term.is_some() {
            self.demote(reason);
        }
    }

    fn complete_handoff(&mut self, now: Instant) {
        let reachable = AckWindow::Reachable.of(&self.config);
        let still_waiting = AckWindow::StillWaiting.of(&self.config);
        let hb = self.config.heartbeat_interval;
        let State::Leader(l) = &mut self.state else {
            return;
        };
        let Some(handoff) = l.handoff.take() else {
            return;
        };
        // A `TimeoutNow` only helps a follower that hears it: pick one that acknowledged
        // within an election timeout (the same freshness for the named target and the rest).
        let target =
            successor::handoff_target(handoff.target.as_ref(), &l.followers, now, reachable);
        let cancellable = handoff.reason == Reason::Unhealthy
            && self.config.alone == crate::Alone::Stay
            && !self.maintenance;
        if target.is_none() && cancellable {
            // Acknowledgements late under load are not a successor gone: while an eligible
            // follower acknowledged within the longest election timeout, wait a heartbeat
            // for a fresh one instead of giving the master back to an unhealthy node (its
            // service already stopped; the lease given out stays run out).
            let late = successor::any_eligible_within(&l.followers, now, still_waiting);
            if late {
                l.handoff = Some(Handoff {
                    at: now + hb,
                    ..handoff
                });
                return;
            }
        }
        if target.is_none() && cancellable {
            // The healthy successor went away (or turned unhealthy) meanwhile: no node is
            // better placed, so stay leader; still in its term with a majority's
            // acknowledgements, it is master again as soon as its lease is current. (The
            // `min_master` hold set when the hand-over began stays: it keeps a flapping
            // successor from stopping and restarting the service here at its rate.)
            if !self.alone_reported {
                self.alone_reported = true;
                self.events.push_back(Event::UnhealthyAlone {
                    term: self.term,
                    alone: crate::Alone::Stay,
                });
            }
            return;
        }
        let term = self.term;
        let hold_ms = self.hold_ms(now);
        self.become_follower(Some(handoff.reason));
        if let Some(target) = target {
            self.send(&target, Message::TimeoutNow { term, hold_ms });
        }
        // Do not compete with the successor: stand again only after a full maximum timeout.
        self.leader_contact = now;
        self.election_deadline =
            now + self.config.election_timeout_max + self.config.election_timeout_min;
    }

    fn demote(&mut self, reason: Reason) {
        self.master_term = None;
        self.events.push_back(Event::BecameBackup {
            term: self.term,
            leader: self.leader.clone(),
            reason,
        });
    }

    /// Brings `master_term` in line with the leadership and lease, emitting events.
    fn refresh_master(&mut self, now: Instant) {
        let (lease, was_master) = match &mut self.state {
            State::Leader(l) if l.handoff.is_none() => {
                let lease = if cfg!(clustd_mutant = "no-lease") {
                    // Lease check off: renew from now instead of from an acknowledged round.
                    l.lease.lease_until().map(|_| now + self.config.lease)
                } else {
                    l.lease.lease_until().filter(|u| *u > now)
                };
                let was_master = l.was_master;
                l.was_master |= lease.is_some();
                (lease, was_master)
            }
            _ => (None, false),
        };
        match (self.master_term, lease) {
            (None, Some(until)) => {
                let reason = if was_master {
                    Reason::LeaseRegained
                } else {
                    Reason::Elected
                };
                self.master_term = Some(self.term);
                self.master_lease_until = until;
                self.events.push_back(Event::BecameMaster {
                    term: self.term,
                    lease_until: until,
                    reason,
                });
            }
            (Some(_), Some(until)) => {
                if until > self.master_lease_until {
                    self.master_lease_until = until;
                    self.events.push_back(Event::LeaseRenewed {
                        term: self.term,
                        until,
                    });
                }
            }
            (Some(_), None) => self.demote(Reason::LeaseExpired),
            (None, None) => {}
        }
    }

    // ----- internals: helpers -------------------------------------------------------------

    fn broadcast_heartbeat(&mut self, now: Instant) {
        let hb = self.config.heartbeat_interval;
        let hold_ms = self.hold_ms(now);
        let term = self.term;
        let State::Leader(l) = &mut self.state else {
            return;
        };
        l.round += 1;
        let window = quorum::sent_round_window(self.config.election_timeout_min, hb);
        l.lease.sent(l.round, now, window);
        l.next_heartbeat = now + hb;
        let round = l.round;
        let reachable = AckWindow::Reachable.of(&self.config);
        let successors = successor::ranked(&l.followers, now, reachable);
        let peers: Vec<NodeId> = l.followers.keys().cloned().collect();
        for peer in peers {
            self.send(
                &peer,
                Message::Heartbeat {
                    term,
                    round,
                    successors: successors.clone(),
                    hold_ms,
                },
            );
        }
        // A single voter: its own acknowledgement is the majority, so each round (the first
        // one sent on election included) runs the lease from its send time.
        if self.config.quorum() == 1
            && let State::Leader(l) = &mut self.state
        {
            l.lease.sole_voter_sent(now, self.config.lease);
        }
    }

    fn ack(&self, round: u64) -> Message {
        Message::HeartbeatAck {
            term: self.term,
            round,
            priority: self.config.priority,
            eligible: self.eligible(),
            preempt: self.config.preempt,
        }
    }

    /// What is left of the `min_master` hold, in ms, as heartbeats and hand-overs carry it.
    fn hold_ms(&self, now: Instant) -> u32 {
        self.health_hold_until.map_or(0, |until| {
            u32::try_from(until.saturating_duration_since(now).as_millis()).unwrap_or(u32::MAX)
        })
    }

    /// Takes the leader's hold. Capped at our own `min_master`: a broken peer cannot
    /// freeze health hand-overs for longer.
    fn inherit_hold(&mut self, now: Instant, hold_ms: u32) {
        self.health_hold_until = (hold_ms > 0)
            .then(|| now + Duration::from_millis(u64::from(hold_ms)).min(self.config.min_master));
    }

    fn observe_term(&mut self, term: Term) {
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            if self.leader.take().is_some() {
                self.events
                    .push_back(Event::LeaderChanged { term, leader: None });
            }
            self.persist_state();
            if self.master_term.is_some() {
                self.demote(Reason::HigherTerm);
            }
        }
    }

    fn persist_state(&mut self) {
        self.persist = Some(self.persistent_state());
    }

    fn send(&mut self, to: &NodeId, msg: Message) {
        self.transmit.push_back((to.clone(), msg));
    }

    fn peers(&self) -> Vec<NodeId> {
        self.config
            .voters
            .iter()
            .filter(|v| **v != self.config.id)
            .cloned()
            .collect()
    }

    fn can_campaign(&self, now: Instant) -> bool {
        self.eligible() && self.stickiness_left(now).is_none() && self.term.next().is_some()
    }

    /// Why a message carrying `term` must be dropped unread, if it must.
    fn reject_reason(&self, term: Term) -> Option<RejectReason> {
        let jump = self.term.distance_to(term)?;
        if jump > MAX_TERM_JUMP {
            Some(RejectReason::TermJump)
        } else if term > Term::CEILING {
            Some(RejectReason::TermCeiling)
        } else {
            None
        }
    }

    /// `Some(time left)` while this node must refuse votes: it is the leader, or it heard
    /// from a live leader (or started) less than `ET_min` ago.
    fn stickiness_left(&self, now: Instant) -> Option<Duration> {
        if let State::Leader(_) = self.state {
            return Some(self.config.election_timeout_min);
        }
        let until = self.leader_contact + self.config.election_timeout_min;
        (now < until).then(|| until.saturating_duration_since(now))
    }

    /// Sets the next election deadline: `ET_min` plus a slot by rank among the successors
    /// the leader advertised (so the best candidate times out first and alone), plus jitter.
    ///
    /// The jitter only separates nodes that believe they hold the same rank (lists from two
    /// leaders, one not yet updated): a sixteenth of a slot (31 ms at the defaults, 3 ms at
    /// ET 25..50 ms) is still many round trips on a LAN, and everything it adds is failover
    /// time on every failure (a quarter slot put the p99 at 1.12 x ET_min). Safety does not
    /// rest on it: votes are refused within `ET_min` of a live leader, whatever the jitter.
    fn reset_election_deadline(&mut self, now: Instant) {
        let min = self.config.election_timeout_min;
        let span = self.config.election_timeout_max.saturating_sub(min);
        let rank = self.successors.iter().position(|s| *s == self.config.id);
        let offset = match rank {
            Some(rank) => {
                let slot = span
                    / u32::try_from(self.successors.len())
                        .unwrap_or(u32::MAX)
                        .max(1);
                let jitter = slot / 16;
                slot * u32::try_from(rank).unwrap_or(u32::MAX) + self.random_up_to(jitter)
            }
            None => self.random_up_to(span),
        };
        self.election_deadline = now + min + offset;
    }

    fn random_up_to(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.up_to(nanos))
    }
}

#[cfg(test)]
mod tests;
