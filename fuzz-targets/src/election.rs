//! `election`: an `arbitrary`-derived schedule over the election core, in one of two shapes.
//!
//! - [`Schedule`]: a small cluster of real [`Node`]s on the core's deterministic harness
//!   ([`Cluster`]): faults from the shared vocabulary (`clustd_core::fault`, with a swarm of
//!   enabled kinds per schedule), single steps, priorities, and *stale* messages (any message
//!   with a term older than the receiver's, as a delayed duplicate would be). After every
//!   step the harness's checker must hold the simulation's invariants (one leader per term,
//!   master intervals never overlap, terms never go back, one vote per term); once healed, a
//!   master must appear within [`LIVENESS_BOUND`] and then stay without needless elections.
//! - [`Lone`]: one node fed hostile messages (any term up to `u64::MAX`, unknown senders)
//!   and commands. Nothing may panic; its term never goes back; it votes at most once per
//!   term and persists each vote before sending it; after a timeout its next deadline is in
//!   the future (no busy loop).

use std::collections::BTreeMap;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use clustd_core::fault::{Fault, FaultRng, Limits, SplitMix, Swarm};
use clustd_core::harness::Cluster;
use clustd_core::{Config, Event, Instant, Message, Node, NodeId, PersistentState, Term};

/// Once healed, a master must exist within this (as in `core/tests/properties.rs`).
pub const LIVENESS_BOUND: Duration = Duration::from_secs(10);

/// After a master appears: time for a preempting node to take over, then a quiet period
/// (several maximum election timeouts) in which nothing may change.
const SETTLE: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_secs(8);

/// Caps that keep one input fast (a few ms): steps and simulated time.
const MAX_STEPS: usize = 48;
const MAX_SIMULATED: Duration = Duration::from_secs(60);

/// The two shapes of input.
#[derive(Arbitrary, Debug)]
pub enum Input {
    /// A cluster schedule.
    Cluster(Schedule),
    /// One node under hostile input.
    Lone(Lone),
}

/// A schedule over a cluster of 3 to 5 nodes.
#[derive(Arbitrary, Debug)]
pub struct Schedule {
    /// 3 + this % 3 nodes.
    pub nodes: u8,
    /// Seeds the harness (delays, loss, jitter).
    pub seed: u64,
    /// Priority of each node (by index).
    pub priorities: [u8; 5],
    /// Whether each node preempts lower-priority leaders.
    pub preempt: [bool; 5],
    /// Seeds the swarm: which fault kinds this schedule draws from.
    pub swarm: u64,
    /// Heartbeat interval: one of 100, 90, 80, 70, 50, 33, 20 ms (most do not divide the lease).
    pub heartbeat: u8,
    /// The steps.
    pub steps: Vec<Step>,
}

/// A message with its fields but the sender's identity left out.
#[derive(Arbitrary, Debug, Clone)]
pub enum AnyMessage {
    /// [`Message::PreVote`].
    PreVote,
    /// [`Message::PreVoteResponse`].
    PreVoteResponse {
        /// Granted.
        granted: bool,
        /// Retry hint.
        retry_after_ms: Option<u32>,
    },
    /// [`Message::RequestVote`].
    RequestVote {
        /// Transfer flag.
        transfer: bool,
    },
    /// [`Message::Vote`].
    Vote {
        /// Granted.
        granted: bool,
    },
    /// [`Message::Heartbeat`].
    Heartbeat {
        /// Round.
        round: u64,
        /// Successors, as node indices.
        successors: Vec<u8>,
        /// Health hold.
        hold_ms: u32,
    },
    /// [`Message::HeartbeatAck`].
    HeartbeatAck {
        /// Round.
        round: u64,
        /// Priority.
        priority: u8,
        /// Eligible.
        eligible: bool,
        /// Preempt.
        preempt: bool,
    },
    /// [`Message::TimeoutNow`].
    TimeoutNow {
        /// Health hold.
        hold_ms: u32,
    },
    /// [`Message::TransferRequest`].
    TransferRequest {
        /// The target, as a node index.
        to: u8,
        /// The asker's last heard round.
        round: u64,
    },
}

impl AnyMessage {
    fn with_term(&self, term: Term, ids: &[NodeId]) -> Message {
        match self.clone() {
            Self::PreVote => Message::PreVote { term },
            Self::PreVoteResponse {
                granted,
                retry_after_ms,
            } => Message::PreVoteResponse {
                term,
                granted,
                retry_after_ms,
            },
            Self::RequestVote { transfer } => Message::RequestVote { term, transfer },
            Self::Vote { granted } => Message::Vote { term, granted },
            Self::Heartbeat {
                round,
                successors,
                hold_ms,
            } => Message::Heartbeat {
                term,
                round,
                hold_ms,
                successors: successors
                    .iter()
                    .take(8)
                    .map(|i| ids[usize::from(*i) % ids.len()].clone())
                    .collect(),
            },
            Self::HeartbeatAck {
                round,
                priority,
                eligible,
                preempt,
            } => Message::HeartbeatAck {
                term,
                round,
                priority,
                eligible,
                preempt,
            },
            Self::TimeoutNow { hold_ms } => Message::TimeoutNow { term, hold_ms },
            Self::TransferRequest { to, round } => Message::TransferRequest {
                term,
                to: ids[usize::from(to) % ids.len()].clone(),
                round,
            },
        }
    }
}

/// One step of a cluster schedule. Faults come from the shared vocabulary
/// (`clustd_core::fault`, as in the core's property tests and the simulation sweep); the
/// fuzzer adds what only it does: single events and stale messages.
#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// One fault of the shared vocabulary, drawn (among the schedule's swarm) from these choices.
    Fault([u64; 3]),
    /// Process this many single events (deliveries or timers).
    Events(u8),
    /// A stale message: `back` terms older than the receiver's current term.
    Stale {
        /// Receiver.
        to: u8,
        /// Claimed sender (another node).
        from: u8,
        /// How many terms older than the receiver's (at least one).
        back: u8,
        /// The message kind, built around that older term.
        msg: AnyMessage,
    },
}

/// Fuzz bytes as the vocabulary's randomness.
struct Choices<'a>(&'a [u64], usize);

impl FaultRng for Choices<'_> {
    fn below(&mut self, n: u64) -> u64 {
        let v = self.0.get(self.1).copied().unwrap_or(0);
        self.1 += 1;
        v % n.max(1)
    }
}

fn apply(cluster: &mut Cluster, swarm: &Swarm, step: &Step) {
    let ids = cluster.ids();
    let pick = |i: &u8| ids[usize::from(*i) % ids.len()].clone();
    match step {
        Step::Fault(choices) => {
            let limits = Limits {
                nodes: ids.len(),
                max_drift_ppm: 50_000,
                et_max_ms: 2000,
                stop_budget_ms: 200,
            };
            let fault = Fault::draw(&mut Choices(choices, 0), swarm, &limits);
            cluster.apply(&fault);
        }
        Step::Events(n) => {
            let limit = cluster.now() + Duration::from_secs(5);
            for _ in 0..*n % 64 {
                if !cluster.step(limit) {
                    break;
                }
            }
        }
        Step::Stale {
            to,
            from,
            back,
            msg,
        } => {
            let (to, from) = (pick(to), pick(from));
            if to == from {
                return;
            }
            let Some(current) = cluster.node(&to).map(Node::term) else {
                return;
            };
            if current.0 == 0 {
                return;
            }
            let term = Term(current.0.saturating_sub(1 + u64::from(*back)));
            let msg = msg.with_term(term, &ids);
            cluster.with_node(&to, |node, now| node.handle_message(now, &from, msg));
        }
    }
}

fn run_schedule(schedule: &Schedule) {
    let n = 3 + usize::from(schedule.nodes % 3);
    let (priorities, preempt) = (schedule.priorities, schedule.preempt);
    let swarm = Swarm::draw(&mut SplitMix(schedule.swarm));
    let heartbeat = [100, 90, 80, 70, 50, 33, 20][usize::from(schedule.heartbeat % 7)];
    let mut cluster = Cluster::new(n, schedule.seed, |config| {
        // Ids are n1..nN.
        let i = config.id.as_str()[1..].parse::<usize>().unwrap_or(1) - 1;
        config.priority = priorities[i % 5];
        config.preempt = preempt[i % 5];
        config.set_timings(
            Duration::from_millis(heartbeat),
            Duration::from_millis(1000),
            Duration::from_millis(2000),
        );
    });
    for step in schedule.steps.iter().take(MAX_STEPS) {
        if cluster.now() > MAX_SIMULATED {
            break;
        }
        apply(&mut cluster, &swarm, step);
        assert!(
            cluster.checker.violations().is_empty(),
            "swarm {swarm}, heartbeat {heartbeat} ms, after {step:?} at {:?}: {:?}",
            cluster.now(),
            cluster.checker.violations()
        );
    }
    cluster.heal();
    // (A switchover asked for before the heal and still on the wire is no failure.)
    let took = cluster.run_until(LIVENESS_BOUND, |c| {
        c.masters().len() == 1 && !c.transfer_in_flight()
    });
    assert!(
        took.is_some(),
        "no master within {LIVENESS_BOUND:?} after healing"
    );
    // Let preemption by a higher-priority node settle, then nothing may change.
    cluster.run_for(SETTLE);
    let elections = cluster.checker.elections;
    let masters = cluster.masters();
    assert_eq!(masters.len(), 1, "no stable master after healing");
    cluster.run_for(QUIET);
    assert_eq!(
        cluster.checker.elections, elections,
        "needless election while nothing failed"
    );
    assert_eq!(
        cluster.masters(),
        masters,
        "the master changed while nothing failed"
    );
    assert!(
        cluster.checker.violations().is_empty(),
        "{:?}",
        cluster.checker.violations()
    );
}

/// One node, hostile peers.
#[derive(Arbitrary, Debug)]
pub struct Lone {
    /// 1 + this % 5 voters, this node included.
    pub voters: u8,
    /// Priority.
    pub priority: u8,
    /// Preempt.
    pub preempt: bool,
    /// Witness.
    pub witness: bool,
    /// Jitter seed.
    pub seed: u64,
    /// The starting persisted state: term and whether it voted for itself.
    pub start: (u64, bool),
    /// The steps.
    pub steps: Vec<LoneStep>,
}

/// One step for [`Lone`].
#[derive(Arbitrary, Debug, Clone)]
pub enum LoneStep {
    /// A message with any term from any sender (index past the voters: a stranger).
    Message {
        /// Sender index.
        from: u8,
        /// The term the message carries: any, stale or far ahead.
        term: u64,
        /// The message kind, built around that term.
        msg: AnyMessage,
    },
    /// Time passes by this many ms, then the timeout handler runs.
    Advance(u16),
    /// Jump to the node's next deadline and handle it.
    Timeout,
    /// Step down.
    StepDown,
    /// Maintenance.
    Maintenance(bool),
    /// Drivers confirmed the demotion.
    ConfirmDemoted,
    /// Crash and restart from the persisted state.
    Restart,
}

struct LoneCheck {
    disk: PersistentState,
    max_term: Term,
    votes: BTreeMap<Term, NodeId>,
}

impl LoneCheck {
    fn drain(&mut self, node: &mut Node, context: &LoneStep) {
        loop {
            if let Some(state) = node.poll_persist() {
                assert!(
                    state.term >= self.disk.term,
                    "{context:?}: persisted term went back from {} to {}",
                    self.disk.term,
                    state.term
                );
                if let Some(vote) = &state.voted_for {
                    let earlier = self.votes.entry(state.term).or_insert_with(|| vote.clone());
                    assert_eq!(
                        earlier, vote,
                        "{context:?}: two votes in term {}",
                        state.term
                    );
                }
                self.disk = state;
                continue;
            }
            if let Some((to, msg)) = node.poll_transmit() {
                if let Message::Vote {
                    term,
                    granted: true,
                } = msg
                {
                    // A later term on disk covers it too: the node can never vote in `term` again.
                    assert!(
                        self.disk.term > term
                            || (self.disk.term == term
                                && self.disk.voted_for.as_ref() == Some(&to)),
                        "{context:?}: vote for {to} in term {term} sent before it was persisted ({:?})",
                        self.disk
                    );
                }
                continue;
            }
            if let Some(event) = node.poll_event() {
                if let Event::ElectionStarted { term } = event {
                    assert!(
                        self.disk.term > term
                            || (self.disk.term == term
                                && self.disk.voted_for.as_ref() == Some(node.id())),
                        "{context:?}: campaign in term {term} before its self-vote was persisted"
                    );
                }
                continue;
            }
            break;
        }
        assert!(
            node.term() >= self.max_term,
            "{context:?}: term went back from {} to {}",
            self.max_term,
            node.term()
        );
        self.max_term = node.term();
    }
}

fn run_lone(lone: &Lone) {
    let n = 1 + usize::from(lone.voters % 5);
    let ids: Vec<NodeId> = (1..=n + 2)
        .map(|i| NodeId::new(format!("n{i}")).unwrap_or_else(|_| unreachable!("valid id")))
        .collect();
    let voters = ids[..n].to_vec();
    let me = ids[0].clone();
    let mut config = Config::new(me.clone(), voters);
    config.priority = lone.priority;
    config.preempt = lone.preempt;
    config.witness = lone.witness;
    config.rng_seed = lone.seed;
    let start = PersistentState {
        term: Term(lone.start.0),
        voted_for: lone.start.1.then(|| me.clone()),
    };
    let mut now = Instant::ZERO;
    let Ok(mut node) = Node::new(config.clone(), start.clone(), now) else {
        return;
    };
    let mut check = LoneCheck {
        max_term: start.term,
        votes: start
            .voted_for
            .iter()
            .map(|v| (start.term, v.clone()))
            .collect(),
        disk: start,
    };
    for step in lone.steps.iter().take(256) {
        match step {
            LoneStep::Message { from, term, msg } => {
                let from = ids[usize::from(*from) % ids.len()].clone();
                node.handle_message(now, &from, msg.with_term(Term(*term), &ids));
            }
            LoneStep::Advance(ms) => {
                now = Instant::from_elapsed(
                    now.elapsed_since_origin() + Duration::from_millis(u64::from(*ms)),
                );
                node.handle_timeout(now);
            }
            LoneStep::Timeout => {
                let next = node.poll_timeout();
                if next.saturating_duration_since(now) > Duration::from_secs(3600) {
                    continue;
                }
                now = now.max(next);
                node.handle_timeout(now);
                check.drain(&mut node, step);
                assert!(
                    node.poll_timeout() > now,
                    "busy loop: after handling the timeout at {now:?} the next one is {:?}",
                    node.poll_timeout()
                );
            }
            LoneStep::StepDown => node.step_down(now),
            LoneStep::Maintenance(on) => node.set_maintenance(now, *on),
            LoneStep::ConfirmDemoted => node.confirm_demoted(now),
            LoneStep::Restart => {
                check.drain(&mut node, step);
                node = Node::new(config.clone(), check.disk.clone(), now)
                    .unwrap_or_else(|e| panic!("restart from a persisted state failed: {e}"));
            }
        }
        check.drain(&mut node, step);
    }
}

/// The target body.
pub fn election(data: &[u8]) {
    let u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary_take_rest(u) else {
        return;
    };
    match &input {
        Input::Cluster(schedule) => run_schedule(schedule),
        Input::Lone(lone) => run_lone(lone),
    }
}
