//! The node runtime: one task owns the election core and carries out its outputs.
//!
//! Inputs: transport frames (peers and drivers), the core's timer, admin commands and the
//! shutdown signal. Outputs, always in this order: persist (durably) → send → events
//! (drivers, status, metrics). The caller supplies the sockets ([`Net`]), the clock
//! ([`Clock`]) and the disk ([`StateStore`]), so the simulation runs this very code.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clustd_core::codec;
use clustd_core::{
    ActionResult, DriverRole, Event, FromDriver, Instant, Message, Node, NodeId, Reason, Role,
    Term, ToDriver,
};
use clustd_transport::{Endpoint, EndpointConfig, Net, PeerKind, SendClass, TransportEvent};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::config::Settings;
use crate::metrics::{Metrics, PeerLabel, ResultLabel};
use crate::status::{DriverStatus, PeerStatus, RoleChange, Status};
use crate::store::{StateStore, StoreError};

/// Most drivers remembered (connected or not) in status.
const MAX_DRIVERS: usize = 64;

/// Why the runtime stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The state could not be read or written; running on would risk a double vote.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transport could not start.
    #[error("transport: {0}")]
    Transport(#[from] clustd_transport::TransportError),
    /// The election settings were rejected.
    #[error("election config: {0}")]
    Config(#[from] clustd_core::ConfigError),
}

/// An admin command for the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Graceful step-down (demote, then hand over).
    StepDown,
    /// Maintenance mode on or off.
    Maintenance(bool),
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// If leader: demote, let drivers stop, hand over; then exit (SIGTERM, SIGINT).
    Graceful,
    /// Exit at once, like a crash (the demo's and tests' stand-in for SIGKILL). Connections
    /// are closed, as the OS would on process death.
    Immediate,
}

/// A role change as drivers see it, for observers in the same process (demo, tests, sim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleNotice {
    /// The node.
    pub node: NodeId,
    /// Master or backup.
    pub role: DriverRole,
    /// Term (fencing token).
    pub term: Term,
    /// The known leader.
    pub leader: Option<NodeId>,
    /// Why.
    pub reason: &'static str,
    /// While master: when the lease ends, on the node's clock.
    pub lease_until: Option<Instant>,
}

/// The runtime's side of the control channel.
#[derive(Debug)]
pub struct Control {
    commands: mpsc::Receiver<(Command, oneshot::Sender<()>)>,
    shared: Arc<Shared>,
}

/// A cheap handle to a running node: status, metrics, commands, role notices.
#[derive(Debug, Clone)]
pub struct Handle {
    commands: mpsc::Sender<(Command, oneshot::Sender<()>)>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    status: Mutex<Status>,
    metrics: Metrics,
    notices: broadcast::Sender<RoleNotice>,
    /// While master: the end of the lease drivers were last told (node's clock).
    lease: watch::Sender<Option<Instant>>,
    local_addr: Mutex<Option<SocketAddr>>,
}

/// Makes the control channel for one runtime.
pub fn control() -> (Control, Handle) {
    let (tx, rx) = mpsc::channel(16);
    let shared = Arc::new(Shared {
        status: Mutex::new(Status::default()),
        metrics: Metrics::new(),
        notices: broadcast::channel(256).0,
        lease: watch::channel(None).0,
        local_addr: Mutex::new(None),
    });
    (
        Control {
            commands: rx,
            shared: shared.clone(),
        },
        Handle {
            commands: tx,
            shared,
        },
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; it is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Handle {
    /// The latest status snapshot.
    pub fn status(&self) -> Status {
        lock(&self.shared.status).clone()
    }

    /// Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Role changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RoleNotice> {
        self.shared.notices.subscribe()
    }

    /// While master, the end of the lease as drivers were last told it (role change or
    /// renewal), on the node's clock; `None` while backup. An observer that must know how
    /// long a crashed master's drivers may keep running (the simulation) watches this.
    pub fn lease(&self) -> watch::Receiver<Option<Instant>> {
        self.shared.lease.subscribe()
    }

    /// The cluster address the transport is bound to, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *lock(&self.shared.local_addr)
    }

    /// Sends a command and waits until the runtime has applied it. False if it is gone.
    pub async fn command(&self, command: Command) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.commands.send((command, tx)).await.is_err() {
            return false;
        }
        rx.await.is_ok()
    }
}

#[derive(Debug, Default)]
struct DriverState {
    connected: bool,
    last_role: Option<DriverRole>,
    last_seq: u64,
    acked_seq: Option<u64>,
    last_result: Option<String>,
    /// Told "master" and not yet acknowledged a later "backup": may be running the service.
    may_run: bool,
}

struct Runtime<C: Clock, S: StateStore> {
    node: Node,
    endpoint: Endpoint,
    clock: C,
    store: S,
    settings: Settings,
    shared: Arc<Shared>,
    drivers: BTreeMap<NodeId, DriverState>,
    seq: u64,
    last_reason: &'static str,
    last_heard: BTreeMap<NodeId, Instant>,
    rtt_pending: BTreeMap<NodeId, (u64, Instant)>,
    /// Peers with a live connection, as last told to drivers: `ToDriver::Peer` goes out
    /// only when this changes, so a duplicate or replaced connection is no news.
    peers_up: BTreeSet<NodeId>,
    /// A step-down is waiting for drivers to confirm they stopped.
    awaiting_stop: bool,
}

/// Runs one node until `shutdown` completes (then steps down gracefully if leader) or a
/// fatal error. `control` comes from [`control`]; keep the [`Handle`] to observe and command.
pub async fn run<N: Net, C: Clock, S: StateStore>(
    settings: Settings,
    net: N,
    clock: C,
    mut store: S,
    control: Control,
    shutdown: impl Future<Output = Shutdown>,
) -> Result<(), RuntimeError> {
    let persisted = store.load()?;
    let node = Node::new(settings.core.clone(), persisted, clock.now())?;
    let mut config = EndpointConfig::new(
        settings.transport,
        settings.id.clone(),
        PeerKind::Peer,
        settings.secret.clone(),
    );
    config.listen = Some(settings.listen);
    config.peers = settings.peers.clone();
    config.accept_drivers = true;
    config.dial_tls = settings.tls.is_some();
    config.tls = settings.tls.clone();
    let (endpoint, mut events) = Endpoint::start(net, config).await?;
    *lock(&control.shared.local_addr) = endpoint.local_addr();
    tracing::info!(
        node = %settings.id,
        transport = ?settings.transport,
        listen = ?endpoint.local_addr(),
        term = node.term().0,
        "clustd node started"
    );
    let Control {
        mut commands,
        shared,
    } = control;
    let mut rt = Runtime {
        node,
        endpoint,
        clock,
        store,
        settings,
        shared,
        drivers: BTreeMap::new(),
        seq: 0,
        last_reason: "started",
        last_heard: BTreeMap::new(),
        rtt_pending: BTreeMap::new(),
        peers_up: BTreeSet::new(),
        awaiting_stop: false,
    };
    rt.init_status();
    tokio::pin!(shutdown);
    // Set at shutdown: give up waiting for a successor at this time.
    let mut leaving: Option<Instant> = None;
    loop {
        let deadline = rt.clock.deadline(rt.node.poll_timeout());
        tokio::select! {
            biased;
            how = &mut shutdown, if leaving.is_none() => {
                let now = rt.clock.now();
                if how == Shutdown::Immediate {
                    tracing::info!("immediate shutdown");
                    break;
                }
                if rt.node.role() != Role::Leader {
                    tracing::info!("shutdown requested; not leader, leaving at once");
                    break;
                }
                tracing::info!("shutdown requested; stepping down first");
                rt.node.step_down(now);
                leaving = Some(now + max_shutdown_time(&rt.settings));
            }
            Some((command, done)) = commands.recv() => {
                let now = rt.clock.now();
                match command {
                    Command::StepDown => rt.node.step_down(now),
                    Command::Maintenance(on) => rt.node.set_maintenance(now, on),
                }
                rt.flush()?;
                rt.update_status();
                let _ = done.send(());
                continue;
            }
            event = events.recv() => match event {
                Some(event) => rt.on_transport(event),
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => {
                let now = rt.clock.now();
                rt.node.handle_timeout(now);
            }
        }
        rt.flush()?;
        rt.update_status();
        if let Some(until) = leaving {
            // Stay until a successor leads (so the hand-over message got out), or give up.
            let successor = rt.node.leader().is_some_and(|l| *l != rt.settings.id);
            if successor || rt.clock.now() >= until {
                break;
            }
        }
    }
    tracing::info!(term = rt.node.term().0, "clustd node stopped");
    rt.endpoint.shutdown().await;
    Ok(())
}

impl<C: Clock, S: StateStore> Runtime<C, S> {
    fn on_transport(&mut self, event: TransportEvent) {
        let now = self.clock.now();
        match event {
            TransportEvent::Frame {
                from,
                kind: PeerKind::Peer,
                frame,
            } => match codec::decode::<Message>(&frame) {
                Ok(msg) => {
                    self.last_heard.insert(from.clone(), now);
                    if let Message::HeartbeatAck { round, .. } = &msg
                        && let Some((sent_round, sent_at)) = self.rtt_pending.get(&from)
                        && sent_round == round
                    {
                        let rtt = now.saturating_duration_since(*sent_at);
                        self.shared.metrics.heartbeat_rtt.observe(rtt.as_secs_f64());
                        self.rtt_pending.remove(&from);
                    }
                    self.node.handle_message(now, &from, msg);
                }
                Err(e) => tracing::warn!(peer = %from, error = %e, "undecodable frame from peer"),
            },
            TransportEvent::Frame {
                from,
                kind: PeerKind::Driver,
                frame,
            } => match codec::decode::<FromDriver>(&frame) {
                Ok(FromDriver::Ack { seq, role, result }) => {
                    self.on_driver_ack(&from, seq, role, result)
                }
                Ok(other) => tracing::debug!(driver = %from, ?other, "unexpected driver message"),
                Err(e) => {
                    tracing::warn!(driver = %from, error = %e, "undecodable frame from driver")
                }
            },
            TransportEvent::Connected { id, kind } => match kind {
                PeerKind::Peer => {
                    tracing::info!(peer = %id, "peer connected");
                    self.shared
                        .metrics
                        .peer_up
                        .get_or_create(&PeerLabel {
                            peer: id.to_string(),
                        })
                        .set(1);
                    if self.peers_up.insert(id.clone()) {
                        self.tell_drivers_peer(id, true);
                    }
                }
                PeerKind::Driver => {
                    tracing::info!(driver = %id, "driver connected");
                    self.evict_old_drivers();
                    self.drivers.entry(id.clone()).or_default().connected = true;
                    self.send_role_to(&id, now);
                }
            },
            TransportEvent::Disconnected { id, kind } => match kind {
                PeerKind::Peer => {
                    tracing::info!(peer = %id, "peer disconnected");
                    self.shared
                        .metrics
                        .peer_up
                        .get_or_create(&PeerLabel {
                            peer: id.to_string(),
                        })
                        .set(0);
                    // The endpoint registers a replacement connection before it announces
                    // the end of the old one: if the peer is still connected, nothing changed.
                    let replaced = self
                        .endpoint
                        .connected()
                        .iter()
                        .any(|(p, kind)| *p == id && *kind == PeerKind::Peer);
                    if !replaced && self.peers_up.remove(&id) {
                        self.tell_drivers_peer(id, false);
                    }
                }
                PeerKind::Driver => {
                    tracing::info!(driver = %id, "driver disconnected");
                    if let Some(d) = self.drivers.get_mut(&id) {
                        d.connected = false;
                    }
                }
            },
            TransportEvent::HandshakeFailed { addr, error } => {
                use clustd_transport::TransportError as E;
                // Security-relevant failures are warnings; reconnect churn while peers
                // restart is routine.
                match error {
                    E::AuthenticationFailed
                    | E::BadFrame
                    | E::Replay
                    | E::RefusedRemote { .. }
                    | E::Refused(_)
                    | E::UnexpectedNode { .. } => {
                        tracing::warn!(%addr, %error, "connection rejected");
                    }
                    _ => tracing::debug!(%addr, %error, "connection attempt failed"),
                }
            }
            _ => {}
        }
    }

    /// Peer up/down for drivers that report cluster events (the notify driver). Only
    /// transitions are sent: a driver that connects later is not told which peers are down
    /// already (it can ask `/status`). Reliable class: an event lost in a full queue would
    /// never be repeated, unlike a lease renewal.
    fn tell_drivers_peer(&self, peer: NodeId, up: bool) {
        let msg = ToDriver::Peer {
            peer,
            up,
            term: self.node.term(),
        };
        for id in self.connected_drivers() {
            self.send_frame(&id, &msg, SendClass::Reliable);
        }
    }

    fn on_driver_ack(&mut self, from: &NodeId, seq: u64, role: DriverRole, result: ActionResult) {
        let label = match &result {
            ActionResult::Ok => "ok",
            ActionResult::Failed(_) => "failed",
            ActionResult::TimedOut => "timed_out",
        };
        self.shared
            .metrics
            .driver_results
            .get_or_create(&ResultLabel {
                result: label.into(),
            })
            .inc();
        let text = match &result {
            ActionResult::Ok => "ok".to_string(),
            ActionResult::Failed(why) => format!("failed: {why}"),
            ActionResult::TimedOut => "timed-out".to_string(),
        };
        tracing::info!(driver = %from, seq, role = role.as_str(), result = %text, "driver acknowledged");
        let Some(d) = self.drivers.get_mut(from) else {
            return;
        };
        d.acked_seq = Some(seq);
        d.last_result = Some(text);
        // Only an ack of the latest transition counts: an older "backup" ack must not
        // clear a newer "master".
        if seq == d.last_seq && role == DriverRole::Backup {
            d.may_run = false;
        }
        self.confirm_stop_if_done();
    }

    /// Step-down hands over as soon as no driver may still be running the service.
    fn confirm_stop_if_done(&mut self) {
        if self.awaiting_stop && !self.drivers.values().any(|d| d.may_run) {
            self.awaiting_stop = false;
            let now = self.clock.now();
            self.node.confirm_demoted(now);
        }
    }

    fn evict_old_drivers(&mut self) {
        while self.drivers.len() >= MAX_DRIVERS {
            let Some(id) = self
                .drivers
                .iter()
                .find(|(_, d)| !d.connected && !d.may_run)
                .map(|(id, _)| id.clone())
            else {
                return;
            };
            self.drivers.remove(&id);
        }
    }

    fn remaining_lease_ms(&self, now: Instant) -> u32 {
        self.node.lease_until().map_or(0, |until| {
            let left = until
                .saturating_duration_since(now)
                .saturating_sub(self.settings.driver_lease_margin);
            u32::try_from(left.as_millis()).unwrap_or(u32::MAX)
        })
    }

    fn send_role_to(&mut self, driver: &NodeId, now: Instant) {
        let role = if self.node.is_master() {
            DriverRole::Master
        } else {
            DriverRole::Backup
        };
        self.seq += 1;
        let msg = ToDriver::Role {
            role,
            term: self.node.term(),
            node: self.settings.id.clone(),
            leader: self.node.leader().cloned(),
            lease_remaining_ms: self.remaining_lease_ms(now),
            reason: self.last_reason.to_string(),
            seq: self.seq,
        };
        let d = self.drivers.entry(driver.clone()).or_default();
        d.last_role = Some(role);
        d.last_seq = self.seq;
        if role == DriverRole::Master {
            d.may_run = true;
        }
        self.send_frame(driver, &msg, SendClass::Reliable);
    }

    /// Ids of the drivers connected now, in order.
    fn connected_drivers(&self) -> Vec<NodeId> {
        self.drivers
            .iter()
            .filter(|(_, d)| d.connected)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Tells every connected driver the current role.
    fn send_role_to_all(&mut self, now: Instant) {
        for id in self.connected_drivers() {
            self.send_role_to(&id, now);
        }
    }

    fn send_frame<T: serde::Serialize>(&self, to: &NodeId, msg: &T, class: SendClass) {
        match codec::encode(msg) {
            Ok(frame) => {
                if let Err(e) = self.endpoint.send(to, frame, class) {
                    tracing::debug!(to = %to, error = %e, "not sent");
                }
            }
            Err(e) => tracing::error!(to = %to, error = %e, "cannot encode"),
        }
    }

    /// Carries out the core's outputs: persist, then send, then events.
    fn flush(&mut self) -> Result<(), RuntimeError> {
        loop {
            if let Some(state) = self.node.poll_persist() {
                self.store.save(&state)?;
                continue;
            }
            if let Some((to, msg)) = self.node.poll_transmit() {
                let class = match &msg {
                    Message::Heartbeat { round, .. } => {
                        self.rtt_pending
                            .insert(to.clone(), (*round, self.clock.now()));
                        SendClass::Heartbeat
                    }
                    Message::HeartbeatAck { .. } => SendClass::Heartbeat,
                    _ => SendClass::Reliable,
                };
                self.send_frame(&to, &msg, class);
                continue;
            }
            if let Some(event) = self.node.poll_event() {
                self.on_event(event);
                continue;
            }
            return Ok(());
        }
    }

    fn on_event(&mut self, event: Event) {
        let now = self.clock.now();
        let shared = self.shared.clone();
        let metrics = &shared.metrics;
        match event {
            Event::BecameMaster { term, reason, .. } => {
                tracing::info!(term = term.0, reason = reason.as_str(), "became MASTER");
                metrics.master.set(1);
                self.role_changed(DriverRole::Master, term, reason, now);
            }
            Event::BecameBackup { term, reason, .. } => {
                tracing::info!(term = term.0, reason = reason.as_str(), "became backup");
                metrics.master.set(0);
                self.role_changed(DriverRole::Backup, term, reason, now);
                if matches!(reason, Reason::SteppedDown | Reason::Maintenance) {
                    self.awaiting_stop = true;
                    self.confirm_stop_if_done();
                }
            }
            Event::LeaseRenewed { term, until } => {
                self.shared.lease.send_replace(Some(until));
                let msg = ToDriver::LeaseRenewal {
                    term,
                    lease_remaining_ms: self.remaining_lease_ms(now),
                };
                for id in self.connected_drivers() {
                    self.send_frame(&id, &msg, SendClass::Heartbeat);
                }
            }
            Event::LeaderChanged { term, leader } => {
                tracing::info!(term = term.0, leader = ?leader, "leader changed");
                metrics.leader_changes.inc();
                // Backup drivers learn of the new (or lost) leader too: the notify driver
                // reports "new master elected" / "master lost" from this.
                if !self.node.is_master() {
                    self.send_role_to_all(now);
                }
            }
            Event::ElectionStarted { term } => {
                tracing::info!(term = term.0, "election started");
                metrics.elections_started.inc();
            }
            Event::ElectionWon { term } => {
                tracing::info!(term = term.0, "election won");
                metrics.elections_won.inc();
            }
            Event::PeerReachability { peer, reachable } => {
                tracing::info!(peer = %peer, reachable, "peer reachability (as leader)");
            }
            _ => {}
        }
        metrics
            .term
            .set(i64::try_from(self.node.term().0).unwrap_or(i64::MAX));
    }

    fn role_changed(&mut self, role: DriverRole, term: Term, reason: Reason, now: Instant) {
        self.last_reason = reason.as_str();
        self.send_role_to_all(now);
        let at_unix_ms = self.clock.wall_clock_ms();
        lock(&self.shared.status).record(RoleChange {
            at_unix_ms,
            role: role.as_str().into(),
            term: term.0,
            reason: reason.as_str().into(),
        });
        self.shared.lease.send_replace(self.node.lease_until());
        let _ = self.shared.notices.send(RoleNotice {
            node: self.settings.id.clone(),
            role,
            term,
            leader: self.node.leader().cloned(),
            reason: reason.as_str(),
            lease_until: self.node.lease_until(),
        });
    }

    fn init_status(&self) {
        // Export every series from the start, so dashboards see zeros rather than gaps.
        let m = &self.shared.metrics;
        for peer in self.settings.peers.keys() {
            let _ = m.peer_up.get_or_create(&PeerLabel {
                peer: peer.to_string(),
            });
        }
        for result in ["ok", "failed", "timed_out"] {
            let _ = m.driver_results.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        let mut status = lock(&self.shared.status);
        status.node_id = self.settings.id.to_string();
        status.witness = self.settings.core.witness;
        status.transport = match self.settings.transport {
            clustd_transport::TransportKind::Quic => "quic".into(),
            clustd_transport::TransportKind::WebSocket => "websocket".into(),
        };
        status.listen = self
            .endpoint
            .local_addr()
            .map_or_else(|| self.settings.listen.to_string(), |a| a.to_string());
        drop(status);
        self.update_status();
    }

    fn update_status(&self) {
        let now = self.clock.now();
        let connected: BTreeMap<NodeId, PeerKind> = self.endpoint.connected().into_iter().collect();
        let mut status = lock(&self.shared.status);
        status.role = if self.node.is_master() {
            "master"
        } else {
            "backup"
        }
        .into();
        status.protocol_role = match self.node.role() {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            _ => "follower",
        }
        .into();
        status.term = self.node.term().0;
        status.leader = self.node.leader().map(ToString::to_string);
        status.lease_remaining_ms = self.node.lease_until().map(|u| {
            u64::try_from(u.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        });
        status.maintenance = self.node.maintenance();
        status.peers = self
            .settings
            .peers
            .iter()
            .map(|(id, addr)| PeerStatus {
                id: id.to_string(),
                addr: addr.to_string(),
                connected: connected.get(id) == Some(&PeerKind::Peer),
                last_heard_ms_ago: self.last_heard.get(id).map(|t| {
                    u64::try_from(now.saturating_duration_since(*t).as_millis()).unwrap_or(u64::MAX)
                }),
            })
            .collect();
        status.drivers = self
            .drivers
            .iter()
            .map(|(id, d)| DriverStatus {
                id: id.to_string(),
                connected: d.connected,
                last_role: d.last_role.map(|r| r.as_str().to_string()),
                last_result: d.last_result.clone(),
                acknowledged: d.acked_seq == Some(d.last_seq),
            })
            .collect();
        let m = &self.shared.metrics;
        status.elections_started = m.elections_started.get();
        status.elections_won = m.elections_won.get();
        status.leader_changes = m.leader_changes.get();
    }
}

/// How long a graceful shutdown may take at most with these settings.
pub fn max_shutdown_time(settings: &Settings) -> Duration {
    let s = &settings.core;
    s.lease + s.stop_budget + s.election_timeout_min
}
