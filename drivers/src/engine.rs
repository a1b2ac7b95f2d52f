//! The engine: between the connection (frames from the daemon) and the driver (actions).
//!
//! It owns the ordering of transitions and cluster events, the fail-safe lease timer, the
//! start-up wait and the acknowledgements. The driver runs in its own task so that the lease timer keeps
//! ticking while a long action runs. It knows nothing of sockets: the connection loop
//! feeds it [`Inbound`] events and carries its [`Outbound`] requests, so tests can drive
//! it through plain channels.

use std::collections::VecDeque;
use std::time::Duration;

use clustd_core::{ActionResult, DriverRole, FromDriver, NodeId, Term, ToDriver};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use crate::driver::{CLUSTER_EVENT_BUDGET, ChangeSource, ClusterEvent, Driver, RoleChange};
use crate::transition::{AckTo, FailSafeLease, Renewal, Transition, TransitionQueue};

/// What the connection loop tells the engine.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A connection to the daemon is up; `conn` numbers connections, increasing.
    Connected { conn: u64 },
    /// A message from the daemon, with its local receive time.
    Message {
        conn: u64,
        msg: ToDriver,
        received_at: Instant,
    },
    /// Connection `conn` is gone.
    Disconnected { conn: u64 },
}

/// What the engine asks of the connection loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outbound {
    /// Send this acknowledgement, but only on connection `conn`.
    Send { conn: u64, msg: FromDriver },
    /// Drop connection `conn` and reconnect: the daemon then re-sends the current role.
    Resync { conn: u64 },
}

/// What an in-process user (or a test) can see of a running session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStatus {
    /// Whether a connection to the daemon is up.
    pub connected: bool,
    /// The role the driver must converge to: the daemon's last word, or backup once the
    /// lease ran out.
    pub target_role: Option<DriverRole>,
    /// The last change handed to the driver and its result, once it returned.
    pub applied: Option<(DriverRole, Term, ActionResult)>,
    /// How many changes were handed to the driver so far.
    pub changes: u64,
    /// How many times the fail-safe lease ran out.
    pub lease_expiries: u64,
    /// How many cluster events (peer down/up) were handed to the driver so far.
    pub cluster_events: u64,
}

/// Engine settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EngineOptions {
    /// How long to wait for the first role from the daemon before settling into backup.
    pub(crate) startup_wait: Duration,
}

/// Most cluster events kept waiting while the driver is busy; older ones are dropped beyond
/// this (a flapping link during a 20 s start must not grow memory without bound).
const MAX_HELD_EVENTS: usize = 256;

/// One piece of work for the driver's task.
enum Work {
    Role(Transition, RoleChange),
    Cluster(ClusterEvent),
}

/// What the driver's task reports back when a piece of work is done.
enum Done {
    Role(Transition, ActionResult),
    Cluster,
}

/// Why the engine stopped on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The driver's task ended (it panicked); no further action is possible.
    #[error("the driver panicked; its last action was for role {0:?}")]
    DriverPanicked(Option<DriverRole>),
}

struct Engine {
    queue: TransitionQueue,
    lease: FailSafeLease,
    /// The current connection, if any.
    conn: Option<u64>,
    /// The daemon's last word (node, term, leader), for self-demotions.
    node: Option<NodeId>,
    /// The term whose lease ran out, until the daemon speaks again.
    expired_term: Option<Term>,
    /// Arrival numbers of the transitions waiting in `queue`, oldest first (kept in step
    /// with it), so that cluster events can be handed over in arrival order with them.
    queued_arrivals: VecDeque<u64>,
    /// Cluster events waiting for the driver, with their arrival numbers, oldest first.
    events: VecDeque<(u64, ClusterEvent)>,
    /// Counts transitions and cluster events as they arrive.
    arrivals: u64,
    /// The last transition handed to the driver, and whether it succeeded.
    last: Option<(Transition, bool)>,
    /// A transition or a cluster event is with the driver: one thing at a time, in order.
    busy: bool,
    /// Until the first role arrives (or the wait ends).
    startup_deadline: Option<Instant>,
    status: watch::Sender<SessionStatus>,
    outbound: mpsc::UnboundedSender<Outbound>,
}

/// Runs the engine until `inbound` closes or `shutdown` flips to true.
pub(crate) async fn run_engine<D: Driver>(
    driver: D,
    options: EngineOptions,
    mut inbound: mpsc::Receiver<Inbound>,
    outbound: mpsc::UnboundedSender<Outbound>,
    status: watch::Sender<SessionStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let (work_tx, mut work_rx) = mpsc::channel::<Work>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(1);
    let worker = tokio::spawn(async move {
        let mut driver = driver;
        while let Some(work) = work_rx.recv().await {
            let done = match work {
                Work::Role(transition, change) => {
                    Done::Role(transition, driver.on_role_change(change).await)
                }
                Work::Cluster(event) => {
                    // A role change may be waiting behind this: a stuck event handler must
                    // not delay a stop.
                    let handled =
                        tokio::time::timeout(CLUSTER_EVENT_BUDGET, driver.on_cluster_event(event))
                            .await;
                    if handled.is_err() {
                        tracing::warn!(
                            "the driver's cluster event handler took longer than {} ms: cancelled",
                            CLUSTER_EVENT_BUDGET.as_millis()
                        );
                    }
                    Done::Cluster
                }
            };
            if done_tx.send(done).await.is_err() {
                break;
            }
        }
    });
    let mut engine = Engine {
        queue: TransitionQueue::default(),
        lease: FailSafeLease::default(),
        conn: None,
        node: None,
        expired_term: None,
        queued_arrivals: VecDeque::new(),
        events: VecDeque::new(),
        arrivals: 0,
        last: None,
        busy: false,
        startup_deadline: Some(Instant::now() + options.startup_wait),
        status,
        outbound,
    };
    let result = loop {
        while !engine.busy {
            let Some(work) = engine.next_work() else {
                break;
            };
            // The worker only ends when work_rx is dropped or it panicked.
            if work_tx.send(work).await.is_err() {
                break;
            }
        }
        if *shutdown.borrow() {
            break Ok(());
        }
        let lease_deadline = engine.lease.deadline();
        let startup_deadline = engine.startup_deadline;
        tokio::select! {
            biased;
            _ = shutdown.changed() => {}
            done = done_rx.recv(), if engine.busy => match done {
                Some(Done::Role(transition, result)) => engine.finished(transition, result),
                Some(Done::Cluster) => engine.busy = false,
                None => break Err(EngineError::DriverPanicked(engine.last.as_ref().map(|(t, _)| t.role))),
            },
            () = sleep_until(lease_deadline.unwrap_or_else(Instant::now)), if lease_deadline.is_some() => {
                engine.check_lease(Instant::now());
            }
            () = sleep_until(startup_deadline.unwrap_or_else(Instant::now)), if startup_deadline.is_some() => {
                engine.startup_wait_over();
            }
            event = inbound.recv() => match event {
                Some(event) => engine.handle(event),
                None => break Ok(()),
            },
        }
    };
    if result.is_ok() && *shutdown.borrow() {
        engine.stop_before_exit(&work_tx, &mut done_rx).await;
    }
    worker.abort();
    result
}

impl Engine {
    /// At shutdown: lets the action in flight finish, then, if the service may be running
    /// (the last action was a start, even a failed one), runs the stop. Bounded by the
    /// driver's own action timeout (the shell driver's `timeout_ms`).
    async fn stop_before_exit(
        &mut self,
        work: &mpsc::Sender<Work>,
        done: &mut mpsc::Receiver<Done>,
    ) {
        while self.busy {
            match done.recv().await {
                Some(Done::Role(transition, result)) => self.finished(transition, result),
                Some(Done::Cluster) => self.busy = false,
                None => return,
            }
        }
        let Some((last, _)) = &self.last else {
            return;
        };
        if last.role != DriverRole::Master {
            return;
        }
        tracing::warn!(
            "shutting down while master: running stop first (nothing would supervise the lease after exit)"
        );
        let transition = Transition {
            role: DriverRole::Backup,
            term: last.term,
            node: self.node.clone(),
            leader: None,
            reason: ChangeSource::DriverShutdown.as_str().into(),
            source: ChangeSource::DriverShutdown,
            ack: None,
        };
        self.status
            .send_modify(|s| s.target_role = Some(DriverRole::Backup));
        let Some((transition, change)) = self.dispatch(transition) else {
            return;
        };
        if work.send(Work::Role(transition, change)).await.is_err() {
            return;
        }
        while let Some(finished) = done.recv().await {
            if let Done::Role(transition, result) = finished {
                self.finished(transition, result);
                return;
            }
        }
    }

    fn handle(&mut self, event: Inbound) {
        match event {
            Inbound::Connected { conn } => {
                self.conn = Some(conn);
                self.status.send_modify(|s| s.connected = true);
            }
            Inbound::Disconnected { conn } => {
                if self.conn == Some(conn) {
                    self.conn = None;
                    self.status.send_modify(|s| s.connected = false);
                    if let Some(deadline) = self.lease.deadline() {
                        let left = deadline.saturating_duration_since(Instant::now());
                        tracing::warn!(
                            "lost the daemon while master: demoting in {} ms unless it comes back and renews the lease",
                            left.as_millis()
                        );
                    }
                }
            }
            Inbound::Message {
                conn,
                msg,
                received_at,
            } => {
                if self.conn != Some(conn) {
                    tracing::debug!(conn, "message from an old connection ignored");
                    return;
                }
                self.message(conn, msg, received_at);
            }
        }
    }

    fn message(&mut self, conn: u64, msg: ToDriver, received_at: Instant) {
        match msg {
            ToDriver::Role {
                role,
                term,
                node,
                leader,
                lease_remaining_ms,
                reason,
                seq,
            } => {
                tracing::debug!(seq, role = role.as_str(), %term, lease_remaining_ms, "role from the daemon");
                self.startup_deadline = None;
                self.expired_term = None;
                self.node = Some(node.clone());
                match role {
                    DriverRole::Master => self.lease.grant(term, received_at, lease_remaining_ms),
                    DriverRole::Backup => self.lease.release(),
                }
                self.status.send_modify(|s| s.target_role = Some(role));
                self.push(Transition {
                    role,
                    term,
                    node: Some(node),
                    leader,
                    reason,
                    source: ChangeSource::Daemon,
                    ack: Some(AckTo { conn, seq }),
                });
                // A lease given already spent must act now, not at the next timer turn.
                self.check_lease(Instant::now());
            }
            ToDriver::LeaseRenewal {
                term,
                lease_remaining_ms,
            } => match self.lease.renew(term, received_at, lease_remaining_ms) {
                Renewal::Extended => {
                    tracing::trace!(%term, lease_remaining_ms, "lease renewed");
                }
                Renewal::NotHeld if self.expired_term == Some(term) => {
                    // The daemon was slow, not dead: it still thinks we are master. We already
                    // stopped; reconnecting makes it send the current role, and we converge.
                    tracing::warn!(
                        %term,
                        "lease renewal arrived after the lease ran out; reconnecting to resynchronize"
                    );
                    self.expired_term = None;
                    let _ = self.outbound.send(Outbound::Resync { conn });
                }
                Renewal::NotHeld | Renewal::OtherTerm => {
                    tracing::debug!(%term, "lease renewal for a lease not held: ignored");
                }
            },
            ToDriver::Peer { peer, up, term } => {
                tracing::debug!(%peer, up, %term, "peer event from the daemon");
                let node = self.node.clone();
                self.hold_event(if up {
                    ClusterEvent::PeerUp { peer, term, node }
                } else {
                    ClusterEvent::PeerDown { peer, term, node }
                });
            }
            other => tracing::debug!(?other, "unknown message from the daemon ignored"),
        }
    }

    /// The fail-safe: a master whose lease ran out demotes itself.
    fn check_lease(&mut self, now: Instant) {
        let Some(term) = self.lease.expire_if_due(now) else {
            return;
        };
        tracing::warn!(
            %term,
            "fail-safe: no lease renewal from the daemon and the lease ran out; demoting to backup (running stop)"
        );
        self.expired_term = Some(term);
        self.status.send_modify(|s| {
            s.target_role = Some(DriverRole::Backup);
            s.lease_expiries += 1;
        });
        self.push(Transition {
            role: DriverRole::Backup,
            term,
            node: self.node.clone(),
            leader: None,
            reason: ChangeSource::LeaseExpired.as_str().into(),
            source: ChangeSource::LeaseExpired,
            ack: None,
        });
    }

    fn startup_wait_over(&mut self) {
        self.startup_deadline = None;
        // A cluster event keeping the driver busy is no reason not to settle: only roles count.
        let had_role = {
            let status = self.status.borrow();
            status.changes > 0 || status.target_role.is_some()
        };
        if self.last.is_some() || had_role {
            return;
        }
        tracing::warn!(
            "no role from the daemon yet: settling into backup (running stop) until it answers"
        );
        self.status
            .send_modify(|s| s.target_role = Some(DriverRole::Backup));
        self.push(Transition {
            role: DriverRole::Backup,
            term: Term(0),
            node: None,
            leader: None,
            reason: ChangeSource::NoDaemonAtStartup.as_str().into(),
            source: ChangeSource::NoDaemonAtStartup,
            ack: None,
        });
    }

    fn push(&mut self, transition: Transition) {
        self.arrivals += 1;
        let superseded = self.queue.push(transition);
        // The queue drops superseded transitions from its back; mirror that.
        for _ in &superseded {
            self.queued_arrivals.pop_back();
        }
        self.queued_arrivals.push_back(self.arrivals);
        for gone in superseded {
            self.acknowledge(
                &gone,
                ActionResult::Failed("superseded by a newer transition before it ran".into()),
            );
        }
    }

    /// Queues a cluster event behind everything that arrived before it.
    fn hold_event(&mut self, event: ClusterEvent) {
        self.arrivals += 1;
        if self.events.len() >= MAX_HELD_EVENTS {
            tracing::warn!(
                "the driver is busy and {MAX_HELD_EVENTS} cluster events wait: the oldest is dropped"
            );
            self.events.pop_front();
        }
        self.events.push_back((self.arrivals, event));
    }

    /// The next piece of work for the driver, in arrival order: a waiting cluster event or
    /// transition, whichever came first. Transitions that change nothing are acknowledged on
    /// the way and skipped.
    fn next_work(&mut self) -> Option<Work> {
        loop {
            let event_first = match (self.events.front(), self.queued_arrivals.front()) {
                (Some((event_at, _)), Some(transition_at)) => event_at < transition_at,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if event_first {
                let (_, event) = self.events.pop_front()?;
                tracing::info!(?event, "cluster event");
                self.busy = true;
                self.status.send_modify(|s| s.cluster_events += 1);
                return Some(Work::Cluster(event));
            }
            let next = self.queue.pop()?;
            self.queued_arrivals.pop_front();
            if let Some((transition, change)) = self.dispatch(next) {
                return Some(Work::Role(transition, change));
            }
        }
    }

    /// Hands `next` to the driver, or acknowledges it at once when it changes nothing.
    fn dispatch(&mut self, next: Transition) -> Option<(Transition, RoleChange)> {
        if let Some((last, true)) = &self.last
            && next.same_state_as(last)
        {
            tracing::debug!(role = next.role.as_str(), term = %next.term, "already converged");
            self.acknowledge(&next, ActionResult::Ok);
            return None;
        }
        let change = next.to_change(self.last.as_ref().map(|(t, _)| t));
        tracing::info!(
            role = change.role.as_str(),
            previous = change.previous_role.map_or("none", DriverRole::as_str),
            term = %change.term,
            leader = change.leader.as_ref().map_or("none", NodeId::as_str),
            reason = %change.reason,
            source = change.source.as_str(),
            "role change"
        );
        self.busy = true;
        self.status.send_modify(|s| s.changes += 1);
        Some((next, change))
    }

    fn finished(&mut self, transition: Transition, result: ActionResult) {
        self.busy = false;
        match &result {
            ActionResult::Ok => tracing::info!(role = transition.role.as_str(), "action done"),
            ActionResult::Failed(why) => {
                tracing::error!(role = transition.role.as_str(), "action failed: {why}");
            }
            ActionResult::TimedOut => {
                tracing::error!(role = transition.role.as_str(), "action timed out")
            }
        }
        self.acknowledge(&transition, result.clone());
        let ok = result == ActionResult::Ok;
        self.status
            .send_modify(|s| s.applied = Some((transition.role, transition.term, result)));
        self.last = Some((transition, ok));
    }

    fn acknowledge(&self, transition: &Transition, result: ActionResult) {
        if let Some(AckTo { conn, seq }) = transition.ack {
            let msg = FromDriver::Ack {
                seq,
                role: transition.role,
                result,
            };
            // The connection loop may be gone at shutdown; nothing to report then.
            let _ = self.outbound.send(Outbound::Send { conn, msg });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records changes; actions take `delay` (virtual time) each. Also logs, in the order
    /// the driver was called, `role-<role>-<term>` and `peer-<down|up>-<peer>` (cluster
    /// events take `event_delay`).
    #[derive(Clone)]
    struct Recorder {
        seen: Arc<Mutex<Vec<RoleChange>>>,
        log: Arc<Mutex<Vec<String>>>,
        delay: Duration,
        event_delay: Duration,
    }

    impl Driver for Recorder {
        async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
            let entry = format!("role-{}-{}", change.role.as_str(), change.term.0);
            self.log.lock().expect("not poisoned").push(entry);
            self.seen.lock().expect("not poisoned").push(change);
            tokio::time::sleep(self.delay).await;
            ActionResult::Ok
        }

        async fn on_cluster_event(&mut self, event: ClusterEvent) {
            let entry = match &event {
                ClusterEvent::PeerDown { peer, .. } => format!("peer-down-{peer}"),
                ClusterEvent::PeerUp { peer, .. } => format!("peer-up-{peer}"),
            };
            self.log.lock().expect("not poisoned").push(entry);
            tokio::time::sleep(self.event_delay).await;
        }
    }

    struct Harness {
        inbound: mpsc::Sender<Inbound>,
        outbound: mpsc::UnboundedReceiver<Outbound>,
        status: watch::Receiver<SessionStatus>,
        seen: Arc<Mutex<Vec<RoleChange>>>,
        log: Arc<Mutex<Vec<String>>>,
        _shutdown: watch::Sender<bool>,
    }

    fn start(delay: Duration) -> Harness {
        start_with(delay, Duration::ZERO)
    }

    fn start_with(delay: Duration, event_delay: Duration) -> Harness {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(SessionStatus::default());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let driver = Recorder {
            seen: seen.clone(),
            log: log.clone(),
            delay,
            event_delay,
        };
        let options = EngineOptions {
            startup_wait: Duration::from_secs(5),
        };
        tokio::spawn(run_engine(
            driver,
            options,
            in_rx,
            out_tx,
            status_tx,
            shutdown_rx,
        ));
        Harness {
            inbound: in_tx,
            outbound: out_rx,
            status: status_rx,
            seen,
            log,
            _shutdown: shutdown_tx,
        }
    }

    fn peer(name: &str, up: bool, term: u64) -> ToDriver {
        ToDriver::Peer {
            peer: NodeId::new(name).expect("valid"),
            up,
            term: Term(term),
        }
    }

    fn node() -> NodeId {
        NodeId::new("n1").expect("valid")
    }

    fn role(role: DriverRole, term: u64, seq: u64, lease_ms: u32) -> ToDriver {
        ToDriver::Role {
            role,
            term: Term(term),
            node: node(),
            leader: (role == DriverRole::Master).then(node),
            lease_remaining_ms: lease_ms,
            reason: format!("test-{seq}"),
            seq,
        }
    }

    impl Harness {
        async fn send(&self, conn: u64, msg: ToDriver) {
            let event = Inbound::Message {
                conn,
                msg,
                received_at: Instant::now(),
            };
            self.inbound.send(event).await.expect("engine runs");
        }

        async fn connect(&self, conn: u64) {
            self.inbound
                .send(Inbound::Connected { conn })
                .await
                .expect("engine runs");
        }

        async fn next_ack(&mut self) -> (u64, u64, DriverRole, ActionResult) {
            loop {
                match self.outbound.recv().await.expect("engine runs") {
                    Outbound::Send {
                        conn,
                        msg: FromDriver::Ack { seq, role, result },
                    } => return (conn, seq, role, result),
                    Outbound::Resync { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().expect("not poisoned").clone()
        }

        fn roles_seen(&self) -> Vec<(DriverRole, ChangeSource)> {
            let seen = self.seen.lock().expect("not poisoned");
            seen.iter().map(|c| (c.role, c.source)).collect()
        }

        async fn wait_for(&mut self, what: impl Fn(&SessionStatus) -> bool) {
            self.status
                .wait_for(|s| what(s))
                .await
                .expect("engine runs");
        }
    }

    use DriverRole::{Backup, Master};

    #[tokio::test(start_paused = true)]
    async fn acts_in_order_and_acknowledges_each_role() {
        let mut h = start(Duration::from_millis(10));
        h.connect(1).await;
        h.send(1, role(Backup, 1, 1, 0)).await;
        assert_eq!(h.next_ack().await, (1, 1, Backup, ActionResult::Ok));
        h.send(1, role(Master, 2, 2, 5000)).await;
        assert_eq!(h.next_ack().await, (1, 2, Master, ActionResult::Ok));
        let seen = h.seen.lock().expect("not poisoned").clone();
        assert_eq!(seen[1].previous_role, Some(Backup));
        assert_eq!(seen[1].term, Term(2));
        assert_eq!(seen[1].reason, "test-2");
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_demotes_without_ack_and_renewals_postpone_it() {
        let mut h = start(Duration::ZERO);
        h.connect(1).await;
        h.send(1, role(Master, 3, 1, 1000)).await;
        assert_eq!(h.next_ack().await.1, 1);
        // Renewals every 500 ms keep the lease alive for a long time.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            h.send(
                1,
                ToDriver::LeaseRenewal {
                    term: Term(3),
                    lease_remaining_ms: 1000,
                },
            )
            .await;
        }
        assert_eq!(h.status.borrow().lease_expiries, 0);
        let last_renewal = Instant::now();
        h.wait_for(|s| s.lease_expiries == 1).await;
        assert!(Instant::now() >= last_renewal + Duration::from_millis(1000));
        h.wait_for(|s| s.applied.as_ref().is_some_and(|a| a.0 == Backup))
            .await;
        assert_eq!(
            h.roles_seen(),
            vec![
                (Master, ChangeSource::Daemon),
                (Backup, ChangeSource::LeaseExpired)
            ]
        );
        // A late renewal asks for a resync rather than reviving the lease.
        h.send(
            1,
            ToDriver::LeaseRenewal {
                term: Term(3),
                lease_remaining_ms: 1000,
            },
        )
        .await;
        assert_eq!(h.outbound.recv().await, Some(Outbound::Resync { conn: 1 }));
    }

    #[tokio::test(start_paused = true)]
    async fn lease_runs_out_during_a_long_start_then_stop_follows() {
        let mut h = start(Duration::from_secs(3));
        h.connect(1).await;
        h.send(1, role(Master, 3, 1, 1000)).await;
        h.wait_for(|s| s.lease_expiries == 1).await;
        assert_eq!(h.next_ack().await.1, 1);
        h.wait_for(|s| s.applied.as_ref().is_some_and(|a| a.0 == Backup))
            .await;
        assert_eq!(h.roles_seen().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn queued_start_is_skipped_when_stop_follows_but_the_last_runs() {
        let mut h = start(Duration::from_secs(1));
        h.connect(1).await;
        h.send(1, role(Backup, 1, 1, 0)).await;
        h.send(1, role(Master, 2, 2, 60_000)).await;
        h.send(1, role(Backup, 3, 3, 0)).await;
        h.send(1, role(Master, 4, 4, 60_000)).await;
        let mut acks = Vec::new();
        for _ in 0..4 {
            let (_, seq, role, result) = h.next_ack().await;
            acks.push((seq, role, result == ActionResult::Ok));
        }
        acks.sort_by_key(|a| a.0);
        assert_eq!(
            acks,
            vec![
                (1, Backup, true),
                (2, Master, false),
                (3, Backup, true),
                (4, Master, true)
            ]
        );
        assert_eq!(
            h.roles_seen().iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![Backup, Backup, Master]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_with_same_role_converges_without_acting_again() {
        let mut h = start(Duration::ZERO);
        h.connect(1).await;
        h.send(1, role(Master, 5, 1, 60_000)).await;
        assert_eq!(h.next_ack().await, (1, 1, Master, ActionResult::Ok));
        h.inbound
            .send(Inbound::Disconnected { conn: 1 })
            .await
            .expect("runs");
        h.connect(2).await;
        // Stale messages from connection 1 are ignored.
        h.send(1, role(Backup, 6, 9, 0)).await;
        h.send(2, role(Master, 5, 1, 60_000)).await;
        assert_eq!(h.next_ack().await, (2, 1, Master, ActionResult::Ok));
        assert_eq!(h.roles_seen().len(), 1);
        h.send(2, role(Backup, 6, 2, 0)).await;
        assert_eq!(h.next_ack().await, (2, 2, Backup, ActionResult::Ok));
        assert_eq!(h.roles_seen().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn no_daemon_at_startup_settles_into_backup() {
        let mut h = start(Duration::ZERO);
        h.wait_for(|s| s.applied.is_some()).await;
        assert_eq!(
            h.roles_seen(),
            vec![(Backup, ChangeSource::NoDaemonAtStartup)]
        );
        // When the daemon then says backup, nothing runs again only if the state matches;
        // here the term differs, so the driver is told (and decides what to do).
        h.connect(1).await;
        h.send(1, role(Master, 2, 1, 60_000)).await;
        assert_eq!(h.next_ack().await.2, Master);
    }

    #[tokio::test(start_paused = true)]
    async fn peer_events_reach_the_driver_in_order_with_roles_and_are_not_acknowledged() {
        let mut h = start(Duration::from_secs(1));
        h.connect(1).await;
        h.send(1, role(Backup, 1, 1, 0)).await;
        // While the first action runs: a peer event, then a role, then another peer event.
        h.send(1, peer("n2", false, 1)).await;
        h.send(1, role(Master, 2, 2, 60_000)).await;
        h.send(1, peer("n2", true, 2)).await;
        assert_eq!(h.next_ack().await, (1, 1, Backup, ActionResult::Ok));
        assert_eq!(h.next_ack().await, (1, 2, Master, ActionResult::Ok));
        h.wait_for(|s| s.cluster_events == 2).await;
        assert_eq!(
            h.log(),
            [
                "role-backup-1",
                "peer-down-n2",
                "role-master-2",
                "peer-up-n2"
            ]
        );
        // Nothing but the two role acks went out.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(h.outbound.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn peer_events_leave_the_role_and_the_lease_alone() {
        let mut h = start(Duration::ZERO);
        h.connect(1).await;
        h.send(1, role(Master, 3, 1, 1000)).await;
        assert_eq!(h.next_ack().await.1, 1);
        for i in 0..10 {
            h.send(1, peer("n2", i % 2 == 1, 3)).await;
        }
        h.wait_for(|s| s.cluster_events == 10).await;
        assert_eq!(h.status.borrow().target_role, Some(Master));
        // No renewal came: the lease runs out on time, peer events or not.
        let granted = Instant::now();
        h.wait_for(|s| s.lease_expiries == 1).await;
        assert!(Instant::now() <= granted + Duration::from_millis(1000));
        assert_eq!(h.roles_seen().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_event_handler_is_cancelled_so_the_next_role_runs() {
        let mut h = start_with(Duration::ZERO, Duration::from_secs(3600));
        h.connect(1).await;
        h.send(1, role(Backup, 1, 1, 0)).await;
        assert_eq!(h.next_ack().await.1, 1);
        h.send(1, peer("n2", false, 1)).await;
        let sent = Instant::now();
        h.send(1, role(Master, 2, 2, 60_000)).await;
        assert_eq!(h.next_ack().await, (1, 2, Master, ActionResult::Ok));
        assert!(Instant::now() <= sent + CLUSTER_EVENT_BUDGET + Duration::from_millis(1));
        assert_eq!(h.log(), ["role-backup-1", "peer-down-n2", "role-master-2"]);
    }
}
