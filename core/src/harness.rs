//! A deterministic in-memory cluster for tests, fuzzing and benchmarks.
//!
//! Virtual global time, a network of in-flight messages with per-link cuts, delay and
//! loss, per-node clock drift, crashes that keep the disk, restarts — and a [`ElectionChecker`]
//! that watches every output for the safety invariants. Modelled on quinn-proto's test
//! `Pair` (`step` jumps to the next deadline) and raft-rs's `Network` (`cut`, `isolate`,
//! `recover`). Enabled in tests and with the `harness` feature.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::fault::Fault;
use crate::ids::{NodeId, Term};
use crate::message::Message;
use crate::node::{Event, Node, PersistentState};
use crate::time::Instant;

use crate::check::ServiceChecker;
pub use crate::check::Violation;

/// The driver every harness node has: told "master" with each `BecameMaster`, renewed with
/// each `LeaseRenewed`, and confirming a stop only when a test says so
/// ([`Cluster::confirm_stop`]). Never confirming is the strict case: the service may run
/// until lease end plus the stop budget.
fn harness_driver(node: &NodeId) -> NodeId {
    NodeId::new(format!("{node}.driver")).unwrap_or_else(|_| node.clone())
}

/// Watches outputs and records violations: one leader per term, terms never decreasing
/// (across restarts), at most one vote per term (across restarts), and — through the one
/// [`ServiceChecker`] — no two service intervals at once.
#[derive(Debug, Default)]
pub struct ElectionChecker {
    leaders: BTreeMap<Term, NodeId>,
    votes: BTreeMap<(NodeId, Term), NodeId>,
    cast: BTreeMap<(NodeId, Term), NodeId>,
    max_term: BTreeMap<NodeId, Term>,
    /// The service-interval checker (and the list of every violation).
    pub service: ServiceChecker,
    /// Number of elections won.
    pub elections: u64,
    /// Messages nodes dropped as [`Event::Rejected`] (forged terms).
    pub rejected: u64,
}

impl ElectionChecker {
    /// Everything found so far.
    pub fn violations(&self) -> &[Violation] {
        self.service.violations()
    }

    fn violation(&mut self, text: String) {
        self.service.violation(text);
    }

    fn on_persist(&mut self, node: &NodeId, state: &PersistentState) {
        let previous = self.max_term.get(node).copied().unwrap_or_default();
        if state.term < previous {
            self.violation(format!(
                "{node}: term went back from {previous} to {}",
                state.term
            ));
        }
        self.max_term.insert(node.clone(), state.term.max(previous));
        if let Some(vote) = &state.voted_for {
            let key = (node.clone(), state.term);
            match self.votes.get(&key) {
                Some(earlier) if earlier != vote => self.violation(format!(
                    "{node}: voted twice in term {}: for {earlier} and for {vote}",
                    state.term
                )),
                _ => {
                    self.votes.insert(key, vote.clone());
                }
            }
        }
    }

    /// A vote as it leaves the node: what voters actually did, whatever they persisted.
    fn on_vote_cast(&mut self, node: &NodeId, term: Term, candidate: &NodeId) {
        let key = (node.clone(), term);
        match self.cast.get(&key) {
            Some(earlier) if earlier != candidate => self.violation(format!(
                "{node}: cast votes for {earlier} and for {candidate} in term {term}"
            )),
            _ => {
                self.cast.insert(key, candidate.clone());
            }
        }
    }

    fn on_term_observed(&mut self, node: &NodeId, term: Term) {
        let previous = self.max_term.get(node).copied().unwrap_or_default();
        if term < previous {
            self.violation(format!(
                "{node}: runs in term {term} after having seen {previous}"
            ));
        }
    }

    fn on_event(
        &mut self,
        node: &NodeId,
        event: &Event,
        global: Duration,
        stop_budget: Duration,
        lease_end: impl Fn(Instant) -> Duration,
    ) {
        match event {
            Event::ElectionWon { term } => {
                self.elections += 1;
                if let Some(other) = self.leaders.insert(*term, node.clone())
                    && &other != node
                {
                    self.violation(format!("two leaders in term {term}: {other} and {node}"));
                }
            }
            Event::BecameMaster {
                term, lease_until, ..
            } => {
                let driver = harness_driver(node);
                let end = lease_end(*lease_until);
                self.service
                    .told_master(global, node, &driver, *term, end, stop_budget);
            }
            Event::LeaseRenewed { until, .. } => {
                let driver = harness_driver(node);
                self.service.lease(global, node, &driver, lease_end(*until));
            }
            Event::Rejected { .. } => self.rejected += 1,
            _ => {}
        }
    }
}

/// One message on the wire.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    deliver_at: Duration,
    seq: u64,
    from: NodeId,
    to: NodeId,
    msg: MessageOrd,
}

/// `Message` wrapped so that `InFlight` can be ordered (ordering by `seq` decides first).
#[derive(Clone, Debug, PartialEq, Eq)]
struct MessageOrd(Message);

impl PartialOrd for MessageOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MessageOrd {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

struct Slot {
    config: Config,
    node: Option<Node>,
    disk: PersistentState,
    clock: Clock,
    /// The end of the last lease the node's driver was given (node clock).
    driver_lease: Option<Instant>,
    /// How the node's driver answers "backup": confirms the stop this long after, or never.
    driver_stops: Option<Duration>,
    /// The service's health (what the node's checks say), kept across restarts.
    healthy: bool,
    /// Counts "backup" notices, so a late confirmation of an older one is not taken.
    demotions: u64,
    /// The daemon does not run before this global time (paused, its clock going on).
    paused_until: Duration,
}

/// A node's clock: continuous, piecewise linear in global time, `rate_ppm` parts per
/// million of real time since the last rate change at global `base_global`.
#[derive(Clone, Copy, Debug)]
struct Clock {
    base_global: Duration,
    base_local: Duration,
    rate_ppm: u64,
}

impl Clock {
    fn local(&self, global: Duration) -> Instant {
        let since = global.saturating_sub(self.base_global).as_nanos() * u128::from(self.rate_ppm)
            / 1_000_000;
        Instant::from_elapsed(
            self.base_local + Duration::from_nanos(u64::try_from(since).unwrap_or(u64::MAX)),
        )
    }

    /// The first global time at which the local clock reads at least `local`.
    fn global(&self, local: Instant) -> Duration {
        let since = local
            .elapsed_since_origin()
            .saturating_sub(self.base_local)
            .as_nanos()
            * 1_000_000;
        let since = since.div_ceil(u128::from(self.rate_ppm));
        self.base_global + Duration::from_nanos(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

impl Slot {
    fn local(&self, global: Duration) -> Instant {
        self.clock.local(global)
    }

    fn global(&self, local: Instant) -> Duration {
        self.clock.global(local)
    }
}

/// A cluster of [`Node`]s on a simulated network with a virtual clock.
pub struct Cluster {
    slots: BTreeMap<NodeId, Slot>,
    now: Duration,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Links `from → to` that lose heartbeats (only).
    heartbeat_loss: BTreeSet<(NodeId, NodeId)>,
    /// Stop confirmations due: `(when, node, demotion generation)`.
    confirms: BTreeSet<(Duration, NodeId, u64)>,
    delay: (Duration, Duration),
    loss_per_million: u32,
    rng: StdRng,
    /// The invariant checker; read its `violations`.
    pub checker: ElectionChecker,
    /// Messages delivered so far.
    pub delivered: u64,
    /// Forged messages sent so far ([`Fault::ForgedTerm`]); picks the next one's kind.
    forged: u64,
    /// When true, every event is appended to `log` as `time node event`.
    pub trace: bool,
    /// The event log (see `trace`).
    pub log: Vec<String>,
}

impl Cluster {
    /// `n` nodes named `n1..nN` with `configure` applied to each default config; network
    /// delay 1–5 ms, no loss, exact clocks. `seed` decides everything random.
    pub fn new(n: usize, seed: u64, configure: impl Fn(&mut Config)) -> Self {
        let ids: Vec<NodeId> = (1..=n)
            .map(|i| {
                NodeId::new(format!("n{i}"))
                    .unwrap_or_else(|_| unreachable!("n<digits> is a valid id"))
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut slots = BTreeMap::new();
        for id in &ids {
            let mut config = Config::new(id.clone(), ids.clone());
            config.rng_seed = rng.random();
            configure(&mut config);
            let node = Node::new(config.clone(), PersistentState::default(), Instant::ZERO)
                .unwrap_or_else(|e| panic!("test config must be valid: {e}"));
            slots.insert(
                id.clone(),
                Slot {
                    config,
                    node: Some(node),
                    disk: PersistentState::default(),
                    driver_lease: None,
                    driver_stops: None,
                    healthy: true,
                    demotions: 0,
                    paused_until: Duration::ZERO,
                    clock: Clock {
                        base_global: Duration::ZERO,
                        base_local: Duration::ZERO,
                        rate_ppm: 1_000_000,
                    },
                },
            );
        }
        Self {
            slots,
            now: Duration::ZERO,
            in_flight: BinaryHeap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            heartbeat_loss: BTreeSet::new(),
            confirms: BTreeSet::new(),
            delay: (Duration::from_millis(1), Duration::from_millis(5)),
            loss_per_million: 0,
            rng,
            checker: ElectionChecker::default(),
            delivered: 0,
            forged: 0,
            trace: false,
            log: Vec::new(),
        }
    }

    /// Node ids, in order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.slots.keys().cloned().collect()
    }

    /// The id of the `i`-th node (0-based).
    pub fn id(&self, i: usize) -> NodeId {
        self.ids()[i].clone()
    }

    /// Global virtual time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The node, if running.
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.slots.get(id).and_then(|s| s.node.as_ref())
    }

    /// The node's durable state.
    pub fn disk(&self, id: &NodeId) -> &PersistentState {
        &self.slots[id].disk
    }

    /// An operator's switchover request ([`Fault::Switchover`]) is still on the wire: the
    /// hand-over it may start is not a failure, so "nothing failed" begins after it.
    pub fn transfer_in_flight(&self) -> bool {
        self.in_flight
            .iter()
            .any(|Reverse(f)| matches!(f.msg.0, Message::TransferRequest { .. }))
    }

    /// Nodes that currently consider themselves master.
    pub fn masters(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, s)| s.node.as_ref().is_some_and(Node::is_master))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Sets the one-way message delay range.
    pub fn set_delay(&mut self, min: Duration, max: Duration) {
        self.delay = (min, max.max(min));
    }

    /// Sets message loss, in parts per million.
    pub fn set_loss(&mut self, per_million: u32) {
        self.loss_per_million = per_million.min(1_000_000);
    }

    /// Sets a node's clock rate from now on, in parts per million of real time. The clock
    /// stays continuous: it only runs faster or slower.
    pub fn set_clock_rate(&mut self, id: &NodeId, rate_ppm: u64) {
        let now = self.now;
        if let Some(slot) = self.slots.get_mut(id) {
            slot.clock = Clock {
                base_global: now,
                base_local: slot.clock.local(now).elapsed_since_origin(),
                rate_ppm: rate_ppm.max(1),
            };
            // The driver's lease ends at a fixed reading of this clock: in global time that
            // moves with the rate.
            if let Some(until) = slot.driver_lease {
                let end = slot.clock.global(until);
                let driver = harness_driver(id);
                self.checker.service.clock_changed(now, id, &driver, end);
            }
        }
    }

    /// Cuts the link `from → to` (one way).
    pub fn cut_one_way(&mut self, from: &NodeId, to: &NodeId) {
        self.cut.insert((from.clone(), to.clone()));
    }

    /// Heals the link `from → to` (one way).
    pub fn heal_one_way(&mut self, from: &NodeId, to: &NodeId) {
        self.cut.remove(&(from.clone(), to.clone()));
    }

    /// The node's clock reading now, if it is running.
    pub fn local_now(&self, id: &NodeId) -> Option<Instant> {
        let slot = self.slots.get(id)?;
        slot.node.as_ref().map(|_| slot.local(self.now))
    }

    /// The global time at which the node's clock reads `local`.
    pub fn global_of(&self, id: &NodeId, local: Instant) -> Duration {
        self.slots.get(id).map_or(self.now, |s| s.global(local))
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&mut self, a: &NodeId, b: &NodeId) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Cuts `id` off from everyone.
    pub fn isolate(&mut self, id: &NodeId) {
        for other in self.ids() {
            if &other != id {
                self.cut(id, &other);
            }
        }
    }

    /// Splits the cluster into two groups that cannot talk to each other.
    pub fn partition(&mut self, left: &[NodeId], right: &[NodeId]) {
        for a in left {
            for b in right {
                self.cut(a, b);
            }
        }
    }

    /// Splits the cluster in two by a bit mask over the node order: node `i` is on the left
    /// when bit `i` is set (nodes past bit 7 are on the right).
    pub fn split(&mut self, mask: u8) {
        let mut left = Vec::new();
        let mut right = Vec::new();
        for (i, id) in self.ids().into_iter().enumerate() {
            if i < 8 && mask & (1 << i) != 0 {
                left.push(id);
            } else {
                right.push(id);
            }
        }
        self.partition(&left, &right);
    }

    /// Heals every cut.
    pub fn recover(&mut self) {
        self.cut.clear();
        self.heartbeat_loss.clear();
    }

    /// Heals everything and restarts every node: no cuts, no loss, short delays, no
    /// maintenance, every daemon running. What a schedule ends with before liveness checks.
    pub fn heal(&mut self) {
        self.recover();
        self.set_loss(0);
        self.set_delay(Duration::from_millis(1), Duration::from_millis(5));
        let now = self.now;
        for slot in self.slots.values_mut() {
            slot.paused_until = slot.paused_until.min(now);
        }
        for id in self.ids() {
            self.restart(&id);
            self.set_maintenance(&id, false);
            self.set_healthy(&id, true);
        }
        // A daemon that was paused has timers long overdue (its lease may have run out):
        // let them fire, so that nobody reads its stale "master" as the healed cluster's.
        self.run_for(Duration::ZERO);
    }

    /// Loses heartbeats `from → to` (acknowledgements and votes still pass).
    pub fn lose_heartbeats(&mut self, from: &NodeId, to: &NodeId) {
        self.heartbeat_loss.insert((from.clone(), to.clone()));
    }

    /// From now on `id`'s driver confirms each stop `after` being told "backup", or never.
    pub fn set_driver_stops(&mut self, id: &NodeId, after: Option<Duration>) {
        if let Some(slot) = self.slots.get_mut(id) {
            slot.driver_stops = after;
        }
    }

    /// `id`'s daemon stops running for `d` (timers and deliveries wait; its clock goes on).
    pub fn pause(&mut self, id: &NodeId, d: Duration) {
        let now = self.now;
        if let Some(slot) = self.slots.get_mut(id) {
            slot.paused_until = slot.paused_until.max(now + d);
        }
    }

    /// A hostile insider: `from` (a real peer, authenticated) sends `to` at once one message
    /// with `term`, of each kind in turn, bypassing the network. If `to` acts on a term
    /// more than [`MAX_TERM_JUMP`](crate::MAX_TERM_JUMP) above its own, that is a violation.
    /// Nothing happens when `to` is down or paused, or is `from`.
    pub fn forge_term(&mut self, to: &NodeId, from: &NodeId, term: Term) {
        let Some(before) = self.node(to).map(Node::term) else {
            return;
        };
        if to == from
            || self
                .slots
                .get(to)
                .is_some_and(|s| s.paused_until > self.now)
        {
            return;
        }
        let msg = forged_message(self.forged, term);
        self.forged += 1;
        self.with_node(to, |node, now| node.handle_message(now, from, msg));
        let after = self.node(to).map(Node::term);
        if after != Some(before) && before.distance_to(term) > Some(crate::MAX_TERM_JUMP) {
            self.checker.violation(format!(
                "{to}: went from term {before} to {after:?} on a forged term {term} from {from}"
            ));
        }
    }

    /// Applies one fault of the shared vocabulary. The core harness has no disk to tear:
    /// every [`Fault::Disk`] is a crash here (writes are synchronous); its drivers read each
    /// lease as sent, so [`Fault::DriverLinkDelay`] changes nothing; it has no fence and no
    /// watchdog, so a [`Fault::DriverPause`] (which only those can make safe) lets its time
    /// pass instead — the simulation plays it. A
    /// [`Fault::ForgedTerm`] is [`Cluster::forge_term`].
    pub fn apply(&mut self, fault: &Fault) {
        let ids = self.ids();
        let pick = |i: &usize| ids[*i % ids.len()].clone();
        match fault {
            Fault::Run(ms) => self.run_for(Duration::from_millis(*ms)),
            Fault::Crash(i) | Fault::Disk(i, _) => self.crash(&pick(i)),
            Fault::Restart(i) => self.restart(&pick(i)),
            Fault::Isolate(i) => self.isolate(&pick(i)),
            Fault::Split(mask) => self.split(*mask),
            Fault::Recover => self.recover(),
            Fault::CutOneWay(a, b) => self.cut_one_way(&pick(a), &pick(b)),
            Fault::LoseHeartbeats(a, b) => self.lose_heartbeats(&pick(a), &pick(b)),
            Fault::Loss(ppm) => self.set_loss(*ppm),
            Fault::Delay(max) => {
                self.set_delay(
                    Duration::from_millis(1),
                    Duration::from_millis((*max).max(1)),
                );
            }
            Fault::Drift(i, d) => {
                let ppm = (1_000_000 + i64::from(*d)).max(1);
                self.set_clock_rate(&pick(i), u64::try_from(ppm).unwrap_or(1_000_000));
            }
            Fault::DriftAtBound { leader_fast } => {
                let leader = ids
                    .iter()
                    .find(|id| {
                        self.node(id)
                            .is_some_and(|n| n.role() == crate::Role::Leader)
                    })
                    .cloned()
                    .unwrap_or_else(|| ids[0].clone());
                for id in &ids {
                    let rho = self.slots[id].config.max_clock_drift;
                    let fast = (*id == leader) == *leader_fast;
                    let rate = if fast { 1.0 + rho } else { 1.0 - rho };
                    self.set_clock_rate(id, (rate * 1e6).round() as u64);
                }
            }
            Fault::HealNearTimeout => {
                let next = self
                    .slots
                    .values()
                    .filter_map(|s| {
                        let n = s.node.as_ref()?;
                        (n.role() != crate::Role::Leader)
                            .then(|| (s.global(n.poll_timeout()), s.config.heartbeat_interval))
                    })
                    .min();
                if let Some((at, hb)) = next {
                    let target = at.saturating_sub(hb / 2);
                    if target > self.now && target - self.now < Duration::from_secs(10) {
                        self.run_for(target - self.now);
                    }
                }
                self.recover();
            }
            Fault::StepDown(i) => self.step_down(&pick(i)),
            Fault::Maintenance(i, on) => self.set_maintenance(&pick(i), *on),
            Fault::Switchover(at, to) => {
                let to = pick(to);
                self.with_node(&pick(at), |node, now| {
                    let _ = node.request_transfer(now, &to);
                });
            }
            Fault::Health(i, healthy) => self.set_healthy(&pick(i), *healthy),
            Fault::DriverStops(i, after) => {
                self.set_driver_stops(&pick(i), after.map(Duration::from_millis));
            }
            Fault::Pause(i, ms) => self.pause(&pick(i), Duration::from_millis(*ms)),
            // The harness's driver reads each lease as sent: delivery delay cannot matter.
            Fault::DriverLinkDelay(..) => {}
            Fault::DriverPause(_, ms) => self.run_for(Duration::from_millis(*ms)),
            Fault::ForgedTerm { to, from, above } => {
                let (to_i, from_i) = (*to % ids.len(), *from % ids.len());
                let from_i = if from_i == to_i {
                    (from_i + 1) % ids.len()
                } else {
                    from_i
                };
                let (to, from) = (ids[to_i].clone(), ids[from_i].clone());
                if let Some(ours) = self.node(&to).map(Node::term) {
                    // A hostile value, capped at the largest term there is.
                    let term = Term(ours.0.saturating_add(*above));
                    self.forge_term(&to, &from, term);
                }
            }
        }
    }

    /// Stops a node; its disk survives; messages to it are lost.
    pub fn crash(&mut self, id: &NodeId) {
        if let Some(slot) = self.slots.get_mut(id)
            && slot.node.take().is_some()
        {
            let now = self.now;
            self.checker.service.crashed(now, id);
        }
    }

    /// Starts a crashed node again from its disk.
    pub fn restart(&mut self, id: &NodeId) {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if slot.node.is_some() {
            return;
        }
        let local = slot.local(now);
        let mut config = slot.config.clone();
        config.rng_seed = self.rng.random();
        let mut node = Node::new(config, slot.disk.clone(), local)
            .unwrap_or_else(|e| panic!("valid config: {e}"));
        // The service's health belongs to the machine: a restarted daemon learns it at once.
        node.set_healthy(local, slot.healthy);
        self.checker.on_term_observed(id, node.term());
        slot.node = Some(node);
    }

    /// Runs a command on a running node, then processes its outputs.
    pub fn with_node(&mut self, id: &NodeId, command: impl FnOnce(&mut Node, Instant)) {
        let now = self.now;
        if let Some(slot) = self.slots.get_mut(id)
            && slot.paused_until <= now
        {
            let local = slot.local(now);
            if let Some(node) = slot.node.as_mut() {
                command(node, local);
            }
        }
        self.flush(id);
    }

    /// The driver of `id` confirms (`Ok`) that it stopped, if it was told "backup": the
    /// checker ends the node's service interval now, and the node may hand over at once.
    pub fn confirm_stop(&mut self, id: &NodeId) {
        let now = self.now;
        let backup = self.node(id).is_some_and(|n| !n.is_master());
        if !backup || self.slots.get(id).is_some_and(|s| s.paused_until > now) {
            return;
        }
        self.checker
            .service
            .stop_confirmed(now, id, &harness_driver(id));
        self.with_node(id, |node, local| node.confirm_demoted(local));
    }

    /// Graceful step-down of `id`.
    pub fn step_down(&mut self, id: &NodeId) {
        self.with_node(id, |node, now| node.step_down(now));
    }

    /// Maintenance mode on/off for `id`.
    pub fn set_maintenance(&mut self, id: &NodeId, on: bool) {
        self.with_node(id, |node, now| node.set_maintenance(now, on));
    }

    /// `id`'s service turns healthy or unhealthy (kept across restarts; a paused daemon
    /// learns it when it resumes).
    pub fn set_healthy(&mut self, id: &NodeId, healthy: bool) {
        if let Some(slot) = self.slots.get_mut(id) {
            slot.healthy = healthy;
        }
        self.with_node(id, |node, now| node.set_healthy(now, healthy));
    }

    /// Processes the next timer or delivery, whichever comes first, up to `limit`.
    /// Returns false when nothing is due before `limit` (time is then advanced to it).
    pub fn step(&mut self, limit: Duration) -> bool {
        // A paused daemon handles nothing before it resumes.
        let next_timer = self
            .slots
            .iter()
            .filter_map(|(id, s)| {
                s.node
                    .as_ref()
                    .map(|n| (s.global(n.poll_timeout()).max(s.paused_until), id.clone()))
            })
            .min();
        let next_confirm = self.confirms.first().cloned();
        let next_delivery = self.in_flight.peek().map(|Reverse(m)| m.deliver_at);
        if let Some((at, id, generation)) = next_confirm
            && at <= limit
            && next_delivery.is_none_or(|d| at <= d)
            && next_timer.as_ref().is_none_or(|(t, _)| at <= *t)
        {
            self.confirms.pop_first();
            self.now = self.now.max(at);
            if self
                .slots
                .get(&id)
                .is_some_and(|s| s.demotions == generation)
            {
                self.confirm_stop(&id);
            }
            return true;
        }
        let deliver_first = match (&next_timer, next_delivery) {
            (Some((t, _)), Some(d)) => d <= *t,
            (None, Some(_)) => true,
            _ => false,
        };
        if deliver_first {
            let Some(Reverse(mut m)) = self.in_flight.peek().cloned() else {
                return false;
            };
            if m.deliver_at > limit {
                self.now = self.now.max(limit);
                return false;
            }
            self.in_flight.pop();
            self.now = self.now.max(m.deliver_at);
            let resume = self
                .slots
                .get(&m.to)
                .map_or(Duration::ZERO, |s| s.paused_until);
            if resume > self.now {
                // Waits in the socket buffer of the stopped process.
                m.deliver_at = resume;
                self.in_flight.push(Reverse(m));
                return true;
            }
            self.deliver(m);
            return true;
        }
        match next_timer {
            Some((t, id)) if t <= limit => {
                self.now = self.now.max(t);
                let now = self.now;
                if let Some(slot) = self.slots.get_mut(&id) {
                    let local = slot.local(now);
                    if let Some(node) = slot.node.as_mut() {
                        // A daemon that was paused learns its service's health as it resumes.
                        if node.healthy() != slot.healthy {
                            node.set_healthy(local, slot.healthy);
                        }
                        node.handle_timeout(local);
                    }
                }
                self.flush(&id);
                true
            }
            _ => {
                self.now = self.now.max(limit);
                false
            }
        }
    }

    /// Runs for `duration` of global time.
    pub fn run_for(&mut self, duration: Duration) {
        let limit = self.now + duration;
        while self.step(limit) {}
    }

    /// Runs until `condition` holds or `timeout` passes; returns the time it took, if it held.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut condition: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let limit = start + timeout;
        loop {
            if condition(self) {
                return Some(self.now - start);
            }
            if !self.step(limit) {
                return condition(self).then(|| self.now - start);
            }
        }
    }

    fn deliver(&mut self, m: InFlight) {
        // A cut made while the message was in flight drops it too (as turmoil does).
        if self.cut.contains(&(m.from.clone(), m.to.clone())) {
            return;
        }
        let now = self.now;
        let Some(slot) = self.slots.get_mut(&m.to) else {
            return;
        };
        let local = slot.local(now);
        let Some(node) = slot.node.as_mut() else {
            return;
        };
        // A daemon that was paused learns its service's health as it resumes.
        if node.healthy() != slot.healthy {
            node.set_healthy(local, slot.healthy);
        }
        node.handle_message(local, &m.from, m.msg.0);
        self.delivered += 1;
        self.flush(&m.to);
    }

    /// Carries out a node's outputs in order: persist, send, events.
    fn flush(&mut self, id: &NodeId) {
        self.flush_outputs(id);
        self.check_gates();
    }

    /// The lease gate as an embedder uses it ([`Node::may_serve`], asked of every running
    /// node at the global now, on its own clock, whether it was driven lately or not): at
    /// most one node's gate is open at any instant the harness stops at.
    fn check_gates(&mut self) {
        let now = self.now;
        let open: Vec<String> = self
            .slots
            .iter()
            .filter_map(|(id, s)| {
                let node = s.node.as_ref()?;
                node.may_serve(s.clock.local(now)).then(|| {
                    let until = node.lease_until().map_or(now, |at| s.clock.global(at));
                    format!("{id} (lease until {until:?})")
                })
            })
            .collect();
        if open.len() > 1 {
            self.checker.violation(format!(
                "two lease gates open at {now:?}: {}",
                open.join(", ")
            ));
        }
    }

    fn flush_outputs(&mut self, id: &NodeId) {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let Some(node) = slot.node.as_mut() else {
            return;
        };
        let mut outgoing = Vec::new();
        let mut events = Vec::new();
        loop {
            if let Some(state) = node.poll_persist() {
                self.checker.on_persist(id, &state);
                slot.disk = state;
                continue;
            }
            if let Some(out) = node.poll_transmit() {
                outgoing.push(out);
                continue;
            }
            if let Some(event) = node.poll_event() {
                events.push(event);
                continue;
            }
            break;
        }
        let term = node.term();
        // Eligibility changes only through its own inputs, each flushed on its own: a node
        // ineligible now was ineligible when it won an election of this batch. Judged from
        // the harness's own record of the service's health, not from the node's word.
        let node_in_maintenance = node.maintenance();
        let witness = node.config().witness;
        let eligible = slot.healthy && !node_in_maintenance && !witness;
        self.checker.on_term_observed(id, term);
        let clock = slot.clock;
        let to_global = |local: Instant| clock.global(local);
        for (to, msg) in &outgoing {
            if let Message::Vote {
                term,
                granted: true,
            } = msg
            {
                self.checker.on_vote_cast(id, *term, to);
            }
        }
        for event in &events {
            if let Event::ElectionStarted { term } = event {
                self.checker.on_vote_cast(id, *term, id);
            }
            if let Event::BecameMaster { term, reason, .. } = event
                && (node_in_maintenance || witness)
            {
                self.checker.violation(format!(
                    "{id} became master ({}) in term {term} while in maintenance or a witness",
                    reason.as_str()
                ));
            }
            if let Event::ElectionWon { term } = event
                && !eligible
            {
                self.checker.violation(format!(
                    "{id} won the election of term {term} while ineligible \
                     (unhealthy, in maintenance or a witness)"
                ));
            }
            match event {
                Event::BecameMaster { lease_until, .. } => slot.driver_lease = Some(*lease_until),
                Event::LeaseRenewed { until, .. } => slot.driver_lease = Some(*until),
                Event::BecameBackup { .. } => {
                    slot.demotions += 1;
                    if let Some(after) = slot.driver_stops {
                        self.confirms
                            .insert((now + after, id.clone(), slot.demotions));
                    }
                }
                _ => {}
            }
            self.checker
                .on_event(id, event, now, slot.config.stop_budget, to_global);
            if self.trace {
                self.log.push(format!("{now:?} {id} {event:?}"));
            }
        }
        for (to, msg) in outgoing {
            if self.cut.contains(&(id.clone(), to.clone())) {
                continue;
            }
            if matches!(msg, Message::Heartbeat { .. })
                && self.heartbeat_loss.contains(&(id.clone(), to.clone()))
            {
                continue;
            }
            if self.loss_per_million > 0
                && self.rng.random_range(0..1_000_000) < self.loss_per_million
            {
                continue;
            }
            let (min, max) = self.delay;
            let delay = min
                + Duration::from_nanos(
                    self.rng
                        .random_range(0..=u64::try_from((max - min).as_nanos()).unwrap_or(0)),
                );
            self.seq += 1;
            self.in_flight.push(Reverse(InFlight {
                deliver_at: now + delay,
                seq: self.seq,
                from: id.clone(),
                to,
                msg: MessageOrd(msg),
            }));
        }
    }
}

/// The `n`-th forged message (modulo the seven kinds), carrying `term`.
pub fn forged_message(n: u64, term: Term) -> Message {
    match n % 7 {
        0 => Message::HeartbeatAck {
            term,
            round: 1,
            priority: 0,
            eligible: true,
            preempt: false,
        },
        1 => Message::Heartbeat {
            term,
            round: 1,
            successors: Vec::new(),
            hold_ms: u32::MAX,
        },
        2 => Message::RequestVote {
            term,
            transfer: true,
        },
        3 => Message::PreVote { term },
        4 => Message::Vote {
            term,
            granted: true,
        },
        5 => Message::PreVoteResponse {
            term,
            granted: true,
            retry_after_ms: None,
        },
        _ => Message::TimeoutNow {
            term,
            hold_ms: u32::MAX,
        },
    }
}

/// Asserts that an error message or log line reads as prose for people: no `Some(`, `None`
/// or a `Duration`'s Debug (`714ms`, `1.2s`, `3µs`; people read `714 ms`). The config errors
/// of the core and of the daemon are held to it.
pub fn assert_plain(text: &str) {
    for debug in ["Some(", "None", "0ns"] {
        assert!(!text.contains(debug), "{debug:?} in {text:?}");
    }
    let bytes = text.as_bytes();
    for (i, pair) in bytes.windows(2).enumerate() {
        let unit_follows = matches!(pair[1], b'm' | b'n' | b's' | 0xc2);
        let word_ends = bytes.get(i + 2).is_none_or(|b| !b.is_ascii_alphabetic());
        assert!(
            !(pair[0].is_ascii_digit() && unit_follows && word_ends),
            "a Debug duration in {text:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    fn master(term: u64, until_ms: u64) -> Event {
        Event::BecameMaster {
            term: Term(term),
            lease_until: Instant::from_millis(until_ms),
            reason: crate::node::Reason::Elected,
        }
    }

    fn exact(local: Instant) -> Duration {
        local.elapsed_since_origin()
    }

    #[test]
    fn checker_feeds_master_events_to_the_service_checker() {
        let budget = Duration::from_millis(200);
        let mut checker = ElectionChecker::default();
        let ms = Duration::from_millis;
        checker.on_event(&id("a"), &master(1, 700), ms(0), budget, exact);
        checker.service.crashed(ms(100), &id("a"));
        // b is told master after a crashed, before a's driver's lease + budget ran out.
        checker.on_event(&id("b"), &master(2, 1500), ms(850), budget, exact);
        assert_eq!(checker.violations().len(), 1, "{:?}", checker.violations());
        // After lease + stop budget it is fine.
        let mut checker = ElectionChecker::default();
        checker.on_event(&id("a"), &master(1, 700), ms(0), budget, exact);
        checker.service.crashed(ms(100), &id("a"));
        checker.on_event(&id("b"), &master(2, 1600), ms(900), budget, exact);
        assert!(checker.violations().is_empty());
    }

    #[test]
    fn checker_catches_double_votes_terms_going_back_and_two_leaders() {
        let mut checker = ElectionChecker::default();
        let vote = |term, who: &str| PersistentState {
            term: Term(term),
            voted_for: Some(id(who)),
        };
        checker.on_persist(&id("a"), &vote(3, "b"));
        checker.on_persist(&id("a"), &vote(3, "b"));
        assert!(
            checker.violations().is_empty(),
            "the same vote twice is fine"
        );
        checker.on_persist(&id("a"), &vote(3, "c"));
        assert!(checker.violations()[0].0.contains("voted twice"));
        checker.on_persist(&id("a"), &vote(2, "c"));
        assert!(checker.violations()[1].0.contains("term went back"));
        checker.on_event(
            &id("a"),
            &Event::ElectionWon { term: Term(5) },
            Duration::ZERO,
            Duration::ZERO,
            exact,
        );
        checker.on_event(
            &id("b"),
            &Event::ElectionWon { term: Term(5) },
            Duration::ZERO,
            Duration::ZERO,
            exact,
        );
        assert!(checker.violations()[2].0.contains("two leaders in term 5"));
    }

    #[test]
    fn same_seed_same_run() {
        let run = |seed| {
            let mut cluster = Cluster::new(5, seed, |_| {});
            cluster.trace = true;
            cluster.set_loss(100_000);
            cluster.run_for(Duration::from_secs(5));
            let first = cluster.masters();
            for id in first {
                cluster.crash(&id);
            }
            cluster.run_for(Duration::from_secs(5));
            cluster.log
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
