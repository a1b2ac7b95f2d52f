//! The engine: between the connection (frames from the daemon) and the driver (actions).
//!
//! It owns the ordering of transitions and cluster events, the fail-safe lease timer, the
//! start-up wait, the cancellation of a start that a stop must not wait for, and the
//! acknowledgements, and it carries the driver's health reports (sending each check's latest
//! result again on every new connection). The driver runs in its own task so that the lease timer keeps ticking
//! while a long action runs. It knows nothing of sockets: the connection loop feeds it
//! [`Inbound`] events and carries its [`Outbound`] requests, so tests can drive it through
//! plain channels. The machine's monotonic clock comes in as a [`MachineClock`], so tests
//! and the simulation run it on virtual time.

use std::collections::VecDeque;
use std::time::Duration;

use clustd_core::driver::{ActionResult, DriverRole, FromDriver, ToDriver};
use clustd_core::{NodeId, Term};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use crate::clock::MachineClock;
use crate::driver::{CLUSTER_EVENT_BUDGET, ChangeSource, ClusterEvent, Driver, RoleChange};
use crate::health::HealthReporter;
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
    /// Send this message (an acknowledgement, a health result), but only on connection `conn`.
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
    /// How many cluster events (peer down/up, failed stops, health changes) were handed to
    /// the driver so far.
    pub cluster_events: u64,
    /// How many health results were sent to the daemon so far (re-sends after a reconnect
    /// included).
    pub health_reports: u64,
    /// When the lease held now runs out (tokio's clock), while master: the earlier of
    /// "received + remaining" and "the daemon's send time + remaining".
    pub lease_expires_at: Option<Instant>,
    /// How many running starts were cancelled (by a demotion, the lease's end or shutdown).
    pub starts_cancelled: u64,
    /// `election.stop_budget_ms` from the daemon's latest role message.
    pub stop_budget: Option<Duration>,
    /// How long the last stop took, from the decision to stop (demotion received, lease
    /// ran out) to the driver's result; compare with `stop_budget`.
    pub last_stop: Option<Duration>,
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

/// A `sent_at_ns` this far ahead of the driver's own reading of the machine's monotonic
/// clock cannot be a delay: the daemon reads another clock (it runs on another machine).
const CLOCK_MISMATCH: Duration = Duration::from_secs(1);

/// One piece of work for the driver's task. A start comes with the receiving end of its
/// cancellation: the reason, when a stop must not wait for it.
enum Work {
    Role(Transition, RoleChange, Option<oneshot::Receiver<String>>),
    /// A cluster event, and how to cancel its handler (a stop is waiting).
    Cluster(ClusterEvent, oneshot::Receiver<()>),
}

/// What the driver's task reports back when a piece of work is done.
enum Done {
    Role(Transition, ActionResult),
    /// The driver's future was dropped before it finished, for this reason.
    Cancelled(Transition, String),
    Cluster,
}

/// The role change the driver is working on, while it does.
struct Running {
    role: DriverRole,
    /// For a start: how to cancel it (taken when used).
    cancel: Option<oneshot::Sender<String>>,
}

/// Why the engine stopped on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The driver's task ended (it panicked); no further action is possible.
    #[error("the driver panicked; its last action was for role {0:?}")]
    DriverPanicked(Option<DriverRole>),
}

struct Engine<C: MachineClock> {
    clock: C,
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
    /// The role change with the driver, if `busy` with one.
    running: Option<Running>,
    /// Cancels the cluster event handler with the driver, if `busy` with one.
    event_cancel: Option<oneshot::Sender<()>>,
    /// `election.stop_budget_ms` from the latest role message.
    stop_budget: Option<Duration>,
    /// The "drivers must run on the daemon's machine" error was logged.
    clock_mismatch_logged: bool,
    /// Until the first role arrives (or the wait ends).
    startup_deadline: Option<Instant>,
    status: watch::Sender<SessionStatus>,
    outbound: mpsc::UnboundedSender<Outbound>,
    /// The driver's health reports, sent on the current connection.
    health: HealthReporter,
}

/// Runs the driver's actions, one at a time; a start is dropped when its cancellation comes.
async fn work_loop<D: Driver>(
    mut driver: D,
    mut work_rx: mpsc::Receiver<Work>,
    done_tx: mpsc::Sender<Done>,
) {
    while let Some(work) = work_rx.recv().await {
        let done = match work {
            Work::Role(transition, change, None) => {
                Done::Role(transition, driver.on_role_change(change).await)
            }
            Work::Role(transition, change, Some(mut cancel)) => {
                // If the engine drops the sender without a reason, the start runs on.
                tokio::select! {
                    biased;
                    result = driver.on_role_change(change) => Done::Role(transition, result),
                    Ok(why) = &mut cancel => Done::Cancelled(transition, why),
                }
            }
            Work::Cluster(event, mut cancel) => {
                // A role change may be waiting behind this: a stuck event handler must
                // not delay a stop, and a stop cancels it at once.
                tokio::select! {
                    biased;
                    handled = tokio::time::timeout(CLUSTER_EVENT_BUDGET, driver.on_cluster_event(event)) => {
                        if handled.is_err() {
                            tracing::warn!(
                                "the driver's cluster event handler took longer than {} ms: cancelled",
                                CLUSTER_EVENT_BUDGET.as_millis()
                            );
                        }
                    }
                    Ok(()) = &mut cancel => {
                        tracing::debug!("cluster event handler cancelled: a stop is waiting");
                    }
                }
                Done::Cluster
            }
        };
        if done_tx.send(done).await.is_err() {
            break;
        }
    }
}

/// Runs the engine until `inbound` closes or `shutdown` flips to true; `health` is the
/// session's reporter, handed to the driver first.
#[allow(clippy::too_many_arguments)] // each is one channel end; a struct would only rename them
pub(crate) async fn run_engine<D: Driver, C: MachineClock>(
    mut driver: D,
    clock: C,
    options: EngineOptions,
    mut inbound: mpsc::Receiver<Inbound>,
    outbound: mpsc::UnboundedSender<Outbound>,
    status: watch::Sender<SessionStatus>,
    mut shutdown: watch::Receiver<bool>,
    health: HealthReporter,
) -> Result<(), EngineError> {
    driver.on_session_start(health.clone());
    let (work_tx, work_rx) = mpsc::channel::<Work>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(1);
    let worker = tokio::spawn(work_loop(driver, work_rx, done_tx));
    let mut engine = Engine {
        clock,
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
        event_cancel: None,
        running: None,
        stop_budget: None,
        clock_mismatch_logged: false,
        startup_deadline: Some(Instant::now() + options.startup_wait),
        status,
        outbound,
        health: health.clone(),
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
                Some(done) => engine.done(done),
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
            // Last: a report never goes before a role, a lease or a result.
            () = health.reported() => engine.send_health(),
        }
    };
    if result.is_ok() && *shutdown.borrow() {
        engine.stop_before_exit(&work_tx, &mut done_rx).await;
    }
    worker.abort();
    result
}

impl<C: MachineClock> Engine<C> {
    /// At shutdown: cancels a start in flight (lets any other action finish), then, if the
    /// service may be running (the last action was a start, even a failed or cancelled
    /// one), runs the stop. Bounded by the driver's own action timeout (the shell driver's
    /// `timeout_ms`).
    async fn stop_before_exit(
        &mut self,
        work: &mpsc::Sender<Work>,
        done: &mut mpsc::Receiver<Done>,
    ) {
        self.cancel_running_start("the driver is shutting down");
        while self.busy {
            match done.recv().await {
                Some(finished) => self.done(finished),
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
            decided_at: Instant::now(),
        };
        self.status
            .send_modify(|s| s.target_role = Some(DriverRole::Backup));
        let Some((transition, change)) = self.dispatch(transition) else {
            return;
        };
        self.running = Some(Running {
            role: DriverRole::Backup,
            cancel: None,
        });
        if work
            .send(Work::Role(transition, change, None))
            .await
            .is_err()
        {
            return;
        }
        while let Some(finished) = done.recv().await {
            if matches!(finished, Done::Role(..) | Done::Cancelled(..)) {
                self.done(finished);
                return;
            }
        }
    }

    fn handle(&mut self, event: Inbound) {
        match event {
            Inbound::Connected { conn } => {
                self.conn = Some(conn);
                self.status.send_modify(|s| s.connected = true);
                // The daemon knows none of this driver's checks on a new connection.
                let all = self.health.take_all();
                self.send_on(conn, all);
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
                sent_at_ns,
                stop_budget_ms,
                reason,
                seq,
            } => {
                tracing::debug!(seq, role = role.as_str(), %term, lease_remaining_ms, sent_at_ns, "role from the daemon");
                self.startup_deadline = None;
                self.expired_term = None;
                self.node = Some(node.clone());
                let budget = Duration::from_millis(stop_budget_ms.into());
                self.stop_budget = Some(budget);
                match role {
                    DriverRole::Master => {
                        let deadline = self.lease_end(received_at, sent_at_ns, lease_remaining_ms);
                        self.warn_if_spent(deadline, sent_at_ns, lease_remaining_ms);
                        self.lease.grant(term, deadline);
                    }
                    DriverRole::Backup => self.lease.release(),
                }
                self.status.send_modify(|s| {
                    s.target_role = Some(role);
                    s.stop_budget = Some(budget);
                });
                self.publish_lease();
                self.push(Transition {
                    role,
                    term,
                    node: Some(node),
                    leader,
                    reason,
                    source: ChangeSource::Daemon,
                    ack: Some(AckTo { conn, seq }),
                    decided_at: received_at,
                });
                // A lease given already spent must act now, not at the next timer turn.
                self.check_lease(Instant::now());
            }
            ToDriver::LeaseRenewal {
                term,
                lease_remaining_ms,
                sent_at_ns,
            } => {
                let now = Instant::now();
                // A lease that ran out before this renewal is handled has ended, whatever
                // the renewal says: expire it first, so it is never revived.
                self.check_lease(now);
                let deadline = self.lease_end(received_at, sent_at_ns, lease_remaining_ms);
                match self.lease.renew(term, now, deadline) {
                    Renewal::Extended => {
                        tracing::trace!(%term, lease_remaining_ms, sent_at_ns, "lease renewed");
                        self.warn_if_spent(deadline, sent_at_ns, lease_remaining_ms);
                        self.publish_lease();
                        // A renewal that arrived spent ends the lease now.
                        self.check_lease(now);
                    }
                    Renewal::NotHeld if self.expired_term == Some(term) => {
                        // The daemon was slow, not dead: it still thinks we are master. We
                        // already stopped; reconnecting makes it send the current role, and
                        // we converge.
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
                }
            }
            ToDriver::Peer { peer, up, term } => {
                tracing::debug!(%peer, up, %term, "peer event from the daemon");
                let node = self.node.clone();
                self.hold_event(if up {
                    ClusterEvent::PeerUp { peer, term, node }
                } else {
                    ClusterEvent::PeerDown { peer, term, node }
                });
            }
            ToDriver::StopFailed {
                driver,
                term,
                result,
            } => {
                tracing::warn!(%driver, %term, ?result, "the daemon reports that a driver's stop failed");
                let node = self.node.clone();
                self.hold_event(ClusterEvent::StopFailed {
                    driver,
                    term,
                    result,
                    node,
                });
            }
            ToDriver::Fenced {
                drivers,
                term,
                result,
            } => {
                tracing::warn!(?drivers, %term, ?result, "the daemon reports that it fenced drivers");
                let node = self.node.clone();
                self.hold_event(ClusterEvent::Fenced {
                    drivers,
                    term,
                    result,
                    node,
                });
            }
            ToDriver::Health {
                node,
                term,
                change,
                detail,
            } => {
                tracing::info!(%node, %term, change = change.as_str(), %detail, "health event from the daemon");
                self.hold_event(ClusterEvent::Health {
                    change,
                    detail,
                    term,
                    node,
                });
            }
            other => tracing::debug!(?other, "unknown message from the daemon ignored"),
        }
    }

    /// Sends the health results reported since the last send, if a daemon is connected;
    /// otherwise they wait in the reporter's book and go out (latest per check) on connect.
    fn send_health(&mut self) {
        let Some(conn) = self.conn else {
            return;
        };
        let pending = self.health.take_pending();
        self.send_on(conn, pending);
    }

    fn send_on(&self, conn: u64, messages: Vec<FromDriver>) {
        if messages.is_empty() {
            return;
        }
        let count = messages.len() as u64;
        for msg in messages {
            tracing::debug!(?msg, "health result to the daemon");
            // The connection loop may be gone at shutdown; nothing to report then.
            let _ = self.outbound.send(Outbound::Send { conn, msg });
        }
        self.status.send_modify(|s| s.health_reports += count);
    }

    /// When a lease of `remaining_ms` ends: at the earlier of "received + remaining" and
    /// the instant the machine's monotonic clock reads `sent_at_ns + remaining` — the
    /// daemon's send time, so a notice delivered late gives less, never more. A `sent_at_ns`
    /// from the future (another machine's clock) leaves "received + remaining", the
    /// fail-safe bound, and is reported once.
    fn lease_end(&mut self, received_at: Instant, sent_at_ns: u64, remaining_ms: u32) -> Instant {
        let remaining = Duration::from_millis(remaining_ms.into());
        let now_ns = self.clock.now_ns();
        let ahead = Duration::from_nanos(sent_at_ns.saturating_sub(now_ns));
        if ahead > CLOCK_MISMATCH && !self.clock_mismatch_logged {
            self.clock_mismatch_logged = true;
            tracing::error!(
                sent_at_ns,
                now_ns,
                "the daemon's lease notice is stamped {} ms in the future of this machine's monotonic clock: \
                 drivers must run on the daemon's machine (the lease is anchored at the daemon's send time \
                 on the shared CLOCK_MONOTONIC); counting leases from their arrival instead, which is never longer",
                ahead.as_millis()
            );
        }
        let by_receipt = received_at + remaining;
        let remaining_ns = u64::from(remaining_ms) * 1_000_000;
        let by_send = self.clock.deadline(sent_at_ns.saturating_add(remaining_ns));
        if cfg!(clustd_mutant = "f4") {
            return by_receipt; // the bug, for README's mutation table
        }
        by_receipt.min(by_send)
    }

    /// Says so when a lease just taken (granted or renewed) had run out on arrival: the
    /// notice spent longer on its way than the lease it gives (a stalled daemon or
    /// machine), so the driver demotes itself at once.
    fn warn_if_spent(&self, deadline: Instant, sent_at_ns: u64, remaining_ms: u32) {
        if remaining_ms > 0 && deadline <= Instant::now() {
            let age = Duration::from_nanos(self.clock.now_ns().saturating_sub(sent_at_ns));
            tracing::warn!(
                lease_remaining_ms = remaining_ms,
                "a lease notice arrived {} ms after the daemon sent it, later than the lease it gives: already expired",
                age.as_millis()
            );
        }
    }

    /// Shows the lease's end in the status.
    fn publish_lease(&self) {
        let deadline = self.lease.deadline();
        self.status.send_if_modified(|s| {
            let changed = s.lease_expires_at != deadline;
            s.lease_expires_at = deadline;
            changed
        });
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
        self.publish_lease();
        self.push(Transition {
            role: DriverRole::Backup,
            term,
            node: self.node.clone(),
            leader: None,
            reason: ChangeSource::LeaseExpired.as_str().into(),
            source: ChangeSource::LeaseExpired,
            ack: None,
            decided_at: now,
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
            decided_at: Instant::now(),
        });
    }

    fn push(&mut self, transition: Transition) {
        self.arrivals += 1;
        if transition.role == DriverRole::Backup {
            // A stop never waits behind a start.
            let why = match transition.source {
                ChangeSource::LeaseExpired => "the lease ran out".to_owned(),
                ChangeSource::DriverShutdown => "the driver is shutting down".to_owned(),
                _ => format!(
                    "demoted in term {} ({}) while start ran",
                    transition.term, transition.reason
                ),
            };
            self.cancel_running_start(&why);
            // Nor behind a cluster event: the one running is cancelled, held ones wait.
            if let Some(cancel) = self.event_cancel.take() {
                let _ = cancel.send(());
            }
        }
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

    /// Cancels the start the driver is running, if it is running one: its future is
    /// dropped (the shell driver kills the script's process group) and the stop waiting
    /// behind it runs at once.
    fn cancel_running_start(&mut self, why: &str) {
        if cfg!(clustd_mutant = "f5") {
            return; // the bug, for README's mutation table
        }
        let Some(Running {
            role: DriverRole::Master,
            cancel,
        }) = &mut self.running
        else {
            return;
        };
        let Some(cancel) = cancel.take() else {
            return;
        };
        tracing::warn!("cancelling the running start: {why}");
        // Err: the start ended meanwhile; its own result is on its way.
        let _ = cancel.send(why.to_owned());
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
            // Arrival order, except that a waiting stop goes before every held event: events
            // only tell (the notify driver), and a stop must finish within the stop budget.
            let event_first = !self.queue.has_backup()
                && match (self.events.front(), self.queued_arrivals.front()) {
                    (Some((event_at, _)), Some(transition_at)) => event_at < transition_at,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
            if event_first {
                let (_, event) = self.events.pop_front()?;
                tracing::info!(?event, "cluster event");
                self.busy = true;
                self.status.send_modify(|s| s.cluster_events += 1);
                let (cancel, cancelled) = oneshot::channel();
                self.event_cancel = Some(cancel);
                return Some(Work::Cluster(event, cancelled));
            }
            let next = self.queue.pop()?;
            self.queued_arrivals.pop_front();
            if let Some((transition, change)) = self.dispatch(next) {
                let (cancel, cancelled) = match transition.role {
                    DriverRole::Master => {
                        let (tx, rx) = oneshot::channel();
                        (Some(tx), Some(rx))
                    }
                    DriverRole::Backup => (None, None),
                };
                self.running = Some(Running {
                    role: transition.role,
                    cancel,
                });
                return Some(Work::Role(transition, change, cancelled));
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
        let mut change = next.to_change(self.last.as_ref().map(|(t, _)| t));
        change.stop_budget = self.stop_budget;
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

    /// The driver's task finished a piece of work.
    fn done(&mut self, done: Done) {
        match done {
            Done::Role(transition, result) => self.finished(transition, result),
            Done::Cancelled(transition, why) => {
                tracing::warn!(
                    term = %transition.term,
                    "start cancelled ({why}): reported to the daemon as failed; the stop runs next"
                );
                self.status.send_modify(|s| s.starts_cancelled += 1);
                self.finished(
                    transition,
                    ActionResult::Failed(format!("cancelled: {why}")),
                );
            }
            Done::Cluster => {
                self.busy = false;
                self.event_cancel = None;
            }
        }
    }

    fn finished(&mut self, transition: Transition, result: ActionResult) {
        self.busy = false;
        self.running = None;
        match &result {
            ActionResult::Ok => tracing::info!(role = transition.role.as_str(), "action done"),
            ActionResult::Failed(why) if why.starts_with("cancelled: ") => {}
            ActionResult::Failed(why) => {
                tracing::error!(role = transition.role.as_str(), "action failed: {why}");
            }
            ActionResult::TimedOut => {
                tracing::error!(role = transition.role.as_str(), "action timed out")
            }
        }
        if transition.role == DriverRole::Backup {
            self.stop_took(transition.decided_at.elapsed());
        }
        self.acknowledge(&transition, result.clone());
        let ok = result == ActionResult::Ok;
        self.status
            .send_modify(|s| s.applied = Some((transition.role, transition.term, result)));
        self.last = Some((transition, ok));
    }

    /// A stop ended `took` after the decision to stop: past the stop budget, a new master
    /// may already have started elsewhere while the service still ran here.
    fn stop_took(&mut self, took: Duration) {
        self.status.send_modify(|s| s.last_stop = Some(took));
        if let Some(budget) = self.stop_budget
            && took > budget
        {
            tracing::error!(
                took_ms = took.as_millis(),
                stop_budget_ms = budget.as_millis(),
                "stop took {} ms, longer than election.stop_budget_ms = {} ms: a new master may have started while the service still ran",
                took.as_millis(),
                budget.as_millis()
            );
        }
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

    use clustd_core::driver::HealthChange;

    use super::*;
    use crate::clock::TokioMachineClock;

    /// Records changes; actions take `delay` (virtual time) each, starts `start_delay`
    /// if set. Also logs, in the order the driver was called, `role-<role>-<term>`,
    /// `peer-<down|up>-<peer>` and `stop-failed-<driver>` (cluster events take
    /// `event_delay`).
    #[derive(Clone)]
    struct Recorder {
        seen: Arc<Mutex<Vec<RoleChange>>>,
        log: Arc<Mutex<Vec<String>>>,
        delay: Duration,
        start_delay: Option<Duration>,
        event_delay: Duration,
    }

    impl Driver for Recorder {
        async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
            let entry = format!("role-{}-{}", change.role.as_str(), change.term.0);
            let delay = match change.role {
                DriverRole::Master => self.start_delay.unwrap_or(self.delay),
                DriverRole::Backup => self.delay,
            };
            self.log.lock().expect("not poisoned").push(entry);
            self.seen.lock().expect("not poisoned").push(change);
            tokio::time::sleep(delay).await;
            ActionResult::Ok
        }

        async fn on_cluster_event(&mut self, event: ClusterEvent) {
            let entry = match &event {
                ClusterEvent::PeerDown { peer, .. } => format!("peer-down-{peer}"),
                ClusterEvent::PeerUp { peer, .. } => format!("peer-up-{peer}"),
                ClusterEvent::StopFailed { driver, .. } => format!("stop-failed-{driver}"),
                ClusterEvent::Fenced { .. } => "fenced".to_string(),
                ClusterEvent::Health { change, .. } => format!("health-{}", change.as_str()),
            };
            self.log.lock().expect("not poisoned").push(entry);
            tokio::time::sleep(self.event_delay).await;
        }
    }

    struct Harness {
        clock: TokioMachineClock,
        inbound: mpsc::Sender<Inbound>,
        outbound: mpsc::UnboundedReceiver<Outbound>,
        status: watch::Receiver<SessionStatus>,
        seen: Arc<Mutex<Vec<RoleChange>>>,
        log: Arc<Mutex<Vec<String>>>,
        shutdown: watch::Sender<bool>,
        health: HealthReporter,
    }

    fn start(delay: Duration) -> Harness {
        start_with(delay, Duration::ZERO)
    }

    fn start_with(delay: Duration, event_delay: Duration) -> Harness {
        start_full(delay, None, event_delay)
    }

    /// Stops take `delay`, starts `start_delay`.
    fn start_slow(delay: Duration, start_delay: Duration) -> Harness {
        start_full(delay, Some(start_delay), Duration::ZERO)
    }

    fn start_full(
        delay: Duration,
        start_delay: Option<Duration>,
        event_delay: Duration,
    ) -> Harness {
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
            start_delay,
            event_delay,
        };
        let options = EngineOptions {
            startup_wait: Duration::from_secs(5),
        };
        let clock = TokioMachineClock::new(ORIGIN_NS);
        let health = HealthReporter::new();
        tokio::spawn(run_engine(
            driver,
            clock,
            options,
            in_rx,
            out_tx,
            status_tx,
            shutdown_rx,
            health.clone(),
        ));
        Harness {
            clock,
            inbound: in_tx,
            outbound: out_rx,
            status: status_rx,
            seen,
            log,
            shutdown: shutdown_tx,
            health,
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

    /// What the machine's monotonic clock reads when a harness starts.
    const ORIGIN_NS: u64 = 1_000_000 * 1_000_000_000;

    /// The stop budget every test role carries.
    const STOP_BUDGET_MS: u32 = 500;

    impl Harness {
        /// A role message stamped now.
        fn role(&self, role: DriverRole, term: u64, seq: u64, lease_ms: u32) -> ToDriver {
            self.role_sent(role, term, seq, lease_ms, Duration::ZERO)
        }

        /// A role message stamped `ago` before now (delayed in delivery by that much).
        fn role_sent(
            &self,
            role: DriverRole,
            term: u64,
            seq: u64,
            lease_ms: u32,
            ago: Duration,
        ) -> ToDriver {
            ToDriver::Role {
                role,
                term: Term(term),
                node: node(),
                leader: (role == DriverRole::Master).then(node),
                lease_remaining_ms: lease_ms,
                sent_at_ns: self.ns_ago(ago),
                stop_budget_ms: STOP_BUDGET_MS,
                reason: format!("test-{seq}"),
                seq,
            }
        }

        /// A renewal stamped `ago` before now.
        fn renewal(&self, term: u64, lease_ms: u32, ago: Duration) -> ToDriver {
            ToDriver::LeaseRenewal {
                term: Term(term),
                lease_remaining_ms: lease_ms,
                sent_at_ns: self.ns_ago(ago),
            }
        }

        fn ns_ago(&self, ago: Duration) -> u64 {
            let ago = u64::try_from(ago.as_nanos()).expect("short");
            self.clock.now_ns() - ago
        }

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
        h.send(1, h.role(Backup, 1, 1, 0)).await;
        assert_eq!(h.next_ack().await, (1, 1, Backup, ActionResult::Ok));
        h.send(1, h.role(Master, 2, 2, 5000)).await;
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
        h.send(1, h.role(Master, 3, 1, 1000)).await;
        assert_eq!(h.next_ack().await.1, 1);
        // Renewals every 500 ms keep the lease alive for a long time.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            h.send(1, h.renewal(3, 1000, Duration::ZERO)).await;
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
        h.send(1, h.renewal(3, 1000, Duration::ZERO)).await;
        assert_eq!(h.outbound.recv().await, Some(Outbound::Resync { conn: 1 }));
    }

    #[tokio::test(start_paused = true)]
    async fn lease_running_out_during_a_long_start_cancels_it_and_stops_at_once() {
        let mut h = start_slow(Duration::from_millis(10), Duration::from_secs(3));
        h.connect(1).await;
        let granted = Instant::now();
        h.send(1, h.role(Master, 3, 1, 1000)).await;
        h.wait_for(|s| s.lease_expiries == 1).await;
        let (_, seq, role, result) = h.next_ack().await;
        assert_eq!((seq, role), (1, Master));
        assert_eq!(
            result,
            ActionResult::Failed("cancelled: the lease ran out".into())
        );
        h.wait_for(|s| s.applied.as_ref().is_some_and(|a| a.0 == Backup))
            .await;
        // The stop began when the lease ran out, not when the 3 s start would have ended.
        assert_eq!(Instant::now(), granted + Duration::from_millis(1010));
        assert_eq!(
            h.roles_seen(),
            vec![
                (Master, ChangeSource::Daemon),
                (Backup, ChangeSource::LeaseExpired)
            ]
        );
        assert_eq!(h.status.borrow().starts_cancelled, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_demotion_cancels_a_running_start_and_the_stop_runs_at_once() {
        let mut h = start_slow(Duration::from_millis(10), Duration::from_secs(3600));
        h.connect(1).await;
        h.send(1, h.role(Master, 2, 1, 60_000)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let demoted = Instant::now();
        h.send(1, h.role(Backup, 3, 2, 0)).await;
        let (_, seq, role, result) = h.next_ack().await;
        assert_eq!((seq, role), (1, Master));
        assert!(
            matches!(&result, ActionResult::Failed(why) if why.starts_with("cancelled: demoted in term 3")),
            "{result:?}"
        );
        assert_eq!(h.next_ack().await, (1, 2, Backup, ActionResult::Ok));
        assert_eq!(Instant::now(), demoted + Duration::from_millis(10));
        assert_eq!(h.log(), ["role-master-2", "role-backup-3"]);
        assert_eq!(h.status.borrow().starts_cancelled, 1);
    }

    /// A stop never waits behind cluster events: the handler running is cancelled and the
    /// held ones wait (4 peer-down events of 50 ms each would eat the whole stop budget).
    #[tokio::test(start_paused = true)]
    async fn a_demotion_goes_before_held_cluster_events_and_cancels_the_running_one() {
        let mut h = start_with(Duration::from_millis(10), Duration::from_secs(10));
        h.connect(1).await;
        h.send(1, h.role(Master, 2, 1, 60_000)).await;
        assert_eq!(h.next_ack().await, (1, 1, Master, ActionResult::Ok));
        for peer_name in ["n2", "n3", "n4", "n5"] {
            h.send(1, peer(peer_name, false, 2)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let demoted = Instant::now();
        h.send(1, h.role(Backup, 3, 2, 0)).await;
        assert_eq!(h.next_ack().await, (1, 2, Backup, ActionResult::Ok));
        assert_eq!(Instant::now(), demoted + Duration::from_millis(10));
        // The held events still reach the driver, after the stop.
        h.wait_for(|s| s.cluster_events == 4).await;
        assert_eq!(
            h.log(),
            [
                "role-master-2",
                "peer-down-n2",
                "role-backup-3",
                "peer-down-n3",
                "peer-down-n4",
                "peer-down-n5"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutting_down_cancels_a_running_start_then_stops() {
        let mut h = start_slow(Duration::from_millis(10), Duration::from_secs(3600));
        h.connect(1).await;
        h.send(1, h.role(Master, 2, 1, 60_000)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let asked = Instant::now();
        h.shutdown.send(true).expect("engine runs");
        let (_, seq, _, result) = h.next_ack().await;
        assert_eq!(seq, 1);
        assert_eq!(
            result,
            ActionResult::Failed("cancelled: the driver is shutting down".into())
        );
        h.wait_for(|s| s.applied.as_ref().is_some_and(|a| a.0 == Backup))
            .await;
        assert_eq!(Instant::now(), asked + Duration::from_millis(10));
        assert_eq!(
            h.roles_seen(),
            vec![
                (Master, ChangeSource::Daemon),
                (Backup, ChangeSource::DriverShutdown)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_is_never_cancelled() {
        let mut h = start(Duration::from_secs(2));
        h.connect(1).await;
        h.send(1, h.role(Backup, 1, 1, 0)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.send(1, h.role(Backup, 2, 2, 0)).await;
        assert_eq!(h.next_ack().await, (1, 1, Backup, ActionResult::Ok));
        assert_eq!(h.next_ack().await, (1, 2, Backup, ActionResult::Ok));
        assert_eq!(h.status.borrow().starts_cancelled, 0);
    }

    /// F4: a renewal computed when 1000 ms were left, 200 ms after the grant, and
    /// delivered 300 ms late, leaves the lease ending 1000 ms after it was *sent*.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_delivered_late_does_not_extend_the_lease_past_its_send_time() {
        let mut h = start(Duration::ZERO);
        h.connect(1).await;
        let granted = Instant::now();
        h.send(1, h.role(Master, 3, 1, 1000)).await;
        assert_eq!(h.next_ack().await.1, 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
        h.send(1, h.renewal(3, 1000, Duration::from_millis(300)))
            .await;
        let sent = granted + Duration::from_millis(200);
        h.wait_for(|s| s.lease_expires_at != Some(granted + Duration::from_millis(1000)))
            .await;
        assert_eq!(
            h.status.borrow().lease_expires_at,
            Some(sent + Duration::from_millis(1000))
        );
        h.wait_for(|s| s.lease_expiries == 1).await;
        assert_eq!(Instant::now(), sent + Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_role_delivered_late_gives_only_what_is_left_of_its_lease() {
        let mut h = start(Duration::ZERO);
        h.connect(1).await;
        let delivered = Instant::now();
        h.send(
            1,
            h.role_sent(Master, 3, 1, 1000, Duration::from_millis(300)),
        )
        .await;
        assert_eq!(h.next_ack().await, (1, 1, Master, ActionResult::Ok));
        h.wait_for(|s| s.lease_expiries == 1).await;
        assert_eq!(Instant::now(), delivered + Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_sent_longer_ago_than_it_lasts_is_expired_on_arrival() {
        let mut h = start(Duration::ZERO);
        h.connect(1).await;
        h.send(1, h.role(Master, 2, 1, 60_000)).await;
        assert_eq!(h.next_ack().await, (1, 1, Master, ActionResult::Ok));
        // A renewal that spent 1.5 s on its way for a 1 s lease: the lease is over.
        let delivered = Instant::now();
        h.send(1, h.renewal(2, 1000, Duration::from_millis(1500)))
            .await;
        h.wait_for(|s| s.lease_expiries == 1).await;
        assert_eq!(Instant::now(), delivered);
        // A master role that old starts nothing: it is superseded by the expiry at once.
        h.send(1, h.role_sent(Master, 4, 2, 1000, Duration::from_secs(2)))
            .await;
        let (_, seq, role, result) = h.next_ack().await;
        assert_eq!((seq, role), (2, Master));
        assert!(matches!(result, ActionResult::Failed(_)), "{result:?}");
        h.wait_for(|s| s.lease_expiries == 2).await;
        h.wait_for(|s| s.applied.as_ref().is_some_and(|a| a.1 == Term(4)))
            .await;
        assert_eq!(
            h.roles_seen().iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![Master, Backup, Backup],
            "the stale master role must start nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_time_from_another_clock_falls_back_to_the_receive_time() {
        let mut h = start(Duration::ZERO);
        h.connect(1).await;
        let delivered = Instant::now();
        let mut msg = h.role(Master, 3, 1, 1000);
        if let ToDriver::Role { sent_at_ns, .. } = &mut msg {
            *sent_at_ns += 3_600 * 1_000_000_000;
        }
        h.send(1, msg).await;
        assert_eq!(h.next_ack().await.1, 1);
        h.wait_for(|s| s.lease_expiries == 1).await;
        assert_eq!(Instant::now(), delivered + Duration::from_millis(1000));
    }

    /// Collects log output in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stops_are_timed_against_the_stop_budget() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("clustd_drivers=error")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // A current-thread runtime: the engine's tasks log on this thread.
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut h = start(Duration::from_millis(800));
        h.connect(1).await;
        h.send(1, h.role(Master, 2, 1, 60_000)).await;
        assert_eq!(h.next_ack().await.1, 1);
        h.send(1, h.role(Backup, 3, 2, 0)).await;
        assert_eq!(h.next_ack().await.1, 2);
        h.wait_for(|s| s.last_stop.is_some()).await;
        let status = h.status.borrow().clone();
        assert_eq!(
            status.stop_budget,
            Some(Duration::from_millis(STOP_BUDGET_MS.into()))
        );
        assert_eq!(status.last_stop, Some(Duration::from_millis(800)));
        let seen = h.seen.lock().expect("not poisoned").clone();
        assert!(
            seen.iter()
                .all(|c| c.stop_budget == Some(Duration::from_millis(500)))
        );
        let log = String::from_utf8_lossy(&captured.0.lock().expect("not poisoned")).into_owned();
        assert!(
            log.contains(
                "stop took 800 ms, longer than election.stop_budget_ms = 500 ms: \
                 a new master may have started while the service still ran"
            ),
            "{log}"
        );
        assert!(log.contains("ERROR"), "{log}");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_failed_reports_reach_the_driver_as_cluster_events() {
        let mut h = start(Duration::ZERO);
        h.connect(1).await;
        h.send(1, h.role(Backup, 1, 1, 0)).await;
        assert_eq!(h.next_ack().await.1, 1);
        h.send(
            1,
            ToDriver::StopFailed {
                driver: NodeId::new("vip").expect("valid"),
                term: Term(1),
                result: ActionResult::TimedOut,
            },
        )
        .await;
        h.wait_for(|s| s.cluster_events == 1).await;
        assert_eq!(h.log(), ["role-backup-1", "stop-failed-vip"]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(h.outbound.try_recv().is_err(), "nothing is acknowledged");
    }

    #[tokio::test(start_paused = true)]
    async fn queued_start_is_skipped_when_stop_follows_but_the_last_runs() {
        let mut h = start(Duration::from_secs(1));
        h.connect(1).await;
        h.send(1, h.role(Backup, 1, 1, 0)).await;
        h.send(1, h.role(Master, 2, 2, 60_000)).await;
        h.send(1, h.role(Backup, 3, 3, 0)).await;
        h.send(1, h.role(Master, 4, 4, 60_000)).await;
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
        h.send(1, h.role(Master, 5, 1, 60_000)).await;
        assert_eq!(h.next_ack().await, (1, 1, Master, ActionResult::Ok));
        h.inbound
            .send(Inbound::Disconnected { conn: 1 })
            .await
            .expect("runs");
        h.connect(2).await;
        // Stale messages from connection 1 are ignored.
        h.send(1, h.role(Backup, 6, 9, 0)).await;
        h.send(2, h.role(Master, 5, 1, 60_000)).await;
        assert_eq!(h.next_ack().await, (2, 1, Master, ActionResult::Ok));
        assert_eq!(h.roles_seen().len(), 1);
        h.send(2, h.role(Backup, 6, 2, 0)).await;
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
        h.send(1, h.role(Master, 2, 1, 60_000)).await;
        assert_eq!(h.next_ack().await.2, Master);
    }

    #[tokio::test(start_paused = true)]
    async fn peer_events_reach_the_driver_in_order_with_roles_and_are_not_acknowledged() {
        let mut h = start(Duration::from_secs(1));
        h.connect(1).await;
        h.send(1, h.role(Backup, 1, 1, 0)).await;
        // While the first action runs: a peer event, then a role, then another peer event.
        h.send(1, peer("n2", false, 1)).await;
        h.send(1, h.role(Master, 2, 2, 60_000)).await;
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
        h.send(1, h.role(Master, 3, 1, 1000)).await;
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

    /// The health results the engine sent, as (conn, check, healthy, detail), until `n` came.
    async fn next_health(h: &mut Harness, n: usize) -> Vec<(u64, String, bool, String)> {
        let mut got = Vec::new();
        while got.len() < n {
            match h.outbound.recv().await.expect("engine runs") {
                Outbound::Send {
                    conn,
                    msg:
                        FromDriver::Health {
                            check,
                            healthy,
                            detail,
                            ..
                        },
                } => got.push((conn, check, healthy, detail)),
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn health_reports_wait_for_a_connection_and_are_resent_on_every_new_one() {
        let mut h = start(Duration::ZERO);
        // Disconnected: kept, latest per check.
        h.health
            .report_with("web", false, "refused", 3, 2)
            .expect("ok");
        h.health
            .report_with("web", true, "answers", 3, 2)
            .expect("ok");
        h.health.report("disk", true, "80% free").expect("ok");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            h.outbound.try_recv().is_err(),
            "nothing without a connection"
        );
        h.connect(1).await;
        assert_eq!(
            next_health(&mut h, 2).await,
            [
                (1, "disk".into(), true, "80% free".into()),
                (1, "web".into(), true, "answers".into())
            ]
        );
        // Connected: each report goes out once, with its thresholds.
        h.health
            .report_with("web", false, "refused", 3, 2)
            .expect("ok");
        assert_eq!(
            h.outbound.recv().await,
            Some(Outbound::Send {
                conn: 1,
                msg: FromDriver::Health {
                    check: "web".into(),
                    healthy: false,
                    detail: "refused".into(),
                    fall: 3,
                    rise: 2
                }
            })
        );
        // A new connection: the daemon forgot the checks, so every latest result again.
        h.inbound
            .send(Inbound::Disconnected { conn: 1 })
            .await
            .expect("runs");
        h.connect(2).await;
        assert_eq!(
            next_health(&mut h, 2).await,
            [
                (2, "disk".into(), true, "80% free".into()),
                (2, "web".into(), false, "refused".into())
            ]
        );
        h.wait_for(|s| s.health_reports == 5).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            h.outbound.try_recv().is_err(),
            "each result once per connection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn health_reports_never_hold_up_a_role() {
        let mut h = start(Duration::from_secs(1));
        h.connect(1).await;
        h.send(1, h.role(Master, 2, 1, 60_000)).await;
        // While the start runs, the driver's checks report; they go out at once.
        h.health.report("web", false, "down").expect("ok");
        assert_eq!(next_health(&mut h, 1).await[0].1, "web");
        assert_eq!(h.next_ack().await, (1, 1, Master, ActionResult::Ok));
    }

    #[tokio::test(start_paused = true)]
    async fn health_events_reach_the_driver_in_order_and_are_not_acknowledged() {
        let mut h = start(Duration::from_millis(100));
        h.connect(1).await;
        h.send(1, h.role(Backup, 1, 1, 0)).await;
        for change in [HealthChange::Unhealthy, HealthChange::Ineligible] {
            h.send(
                1,
                ToDriver::Health {
                    node: node(),
                    term: Term(1),
                    change,
                    detail: "check n1/web failed 3 times in a row".into(),
                },
            )
            .await;
        }
        // A start waits behind them (a stop would not: see the demotion test above).
        h.send(1, h.role(Master, 2, 2, 60_000)).await;
        assert_eq!(h.next_ack().await, (1, 1, Backup, ActionResult::Ok));
        assert_eq!(h.next_ack().await, (1, 2, Master, ActionResult::Ok));
        h.wait_for(|s| s.cluster_events == 2).await;
        assert_eq!(
            h.log(),
            [
                "role-backup-1",
                "health-unhealthy",
                "health-ineligible",
                "role-master-2"
            ]
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(h.outbound.try_recv().is_err(), "nothing is acknowledged");
        // Only told: the role is the daemon's.
        assert_eq!(h.status.borrow().target_role, Some(Master));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_event_handler_is_cancelled_so_the_next_role_runs() {
        let mut h = start_with(Duration::ZERO, Duration::from_secs(3600));
        h.connect(1).await;
        h.send(1, h.role(Backup, 1, 1, 0)).await;
        assert_eq!(h.next_ack().await.1, 1);
        h.send(1, peer("n2", false, 1)).await;
        let sent = Instant::now();
        h.send(1, h.role(Master, 2, 2, 60_000)).await;
        assert_eq!(h.next_ack().await, (1, 2, Master, ActionResult::Ok));
        assert!(Instant::now() <= sent + CLUSTER_EVENT_BUDGET + Duration::from_millis(1));
        assert_eq!(h.log(), ["role-backup-1", "peer-down-n2", "role-master-2"]);
    }
}
