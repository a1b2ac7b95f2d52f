//! Connecting to the daemon: the driver's config, the reconnect loop, and the handle an
//! in-process user holds ([`DriverSession`]).
//!
//! The loop dials forever with exponential backoff and jitter; it logs once per *kind* of
//! failure (not once per attempt) so a daemon that is down for an hour does not flood the
//! log. The engine behind it keeps the fail-safe lease running while disconnected.
//!
//! [`connect`] is production: real sockets ([`TokioNet`]) and the machine's
//! `CLOCK_MONOTONIC` ([`MonotonicClock`]). [`connect_with`] takes both as parameters, so a
//! simulation can run this very library over simulated sockets and a simulated clock.
//! Nothing in a session draws randomness but the driver id (only when generated) and the
//! reconnect jitter, which comes from [`DriverConfig::rng_seed`] or else from the
//! [`Net`]'s `random_seed()` (OS randomness for [`TokioNet`], the run's seed in a simulation).

use std::future::Future;

use clustd_core::NodeId;
use clustd_core::codec::{decode, encode};
use clustd_core::driver::{FromDriver, ToDriver};
use clustd_transport::{Backoff, Net, TokioNet};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::{MachineClock, MonotonicClock};
use crate::config::DriverConfig;
use crate::dial::{Dialer, Link, TransportDialer};
use crate::driver::Driver;
use crate::engine::{EngineError, EngineOptions, Inbound, Outbound, SessionStatus, run_engine};
use crate::health::HealthReporter;

/// Why a session could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The transport refused the configuration (e.g. a secret that is too short).
    #[error("transport: {0}")]
    Transport(String),
    /// The engine stopped by itself.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A task of the session died unexpectedly.
    #[error("session task failed: {0}")]
    Task(String),
}

/// A running driver: connected (or reconnecting) to its daemon, acting on role changes.
/// Dropping it does not stop it; call [`DriverSession::shutdown`].
#[derive(Debug)]
pub struct DriverSession {
    driver_id: NodeId,
    status: watch::Receiver<SessionStatus>,
    shutdown: watch::Sender<bool>,
    engine: JoinHandle<Result<(), EngineError>>,
    connection: JoinHandle<()>,
    health: HealthReporter,
}

impl DriverSession {
    /// This driver's id (configured or generated).
    pub fn driver_id(&self) -> &NodeId {
        &self.driver_id
    }

    /// The current status.
    pub fn status(&self) -> SessionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change (`wait_for` on it to wait for a condition).
    pub fn watch_status(&self) -> watch::Receiver<SessionStatus> {
        self.status.clone()
    }

    /// The session's health reporter (the one its driver got in
    /// [`Driver::on_session_start`]): reports go to the daemon on the current connection,
    /// and again on every new one.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Waits until the session stops by itself (the driver panicked); it never does otherwise.
    pub async fn wait(&mut self) -> Result<(), SessionError> {
        let result = (&mut self.engine)
            .await
            .map_err(|e| SessionError::Task(e.to_string()))?;
        result.map_err(SessionError::from)
    }

    /// Stops the session: lets the action in flight finish and, if the service may be
    /// running (last action a start), runs the stop first — once the driver is gone nothing
    /// supervises the lease — then closes the connection.
    pub async fn shutdown(self) -> Result<(), SessionError> {
        let _ = self.shutdown.send(true);
        let _ = self.connection.await;
        let result = self
            .engine
            .await
            .map_err(|e| SessionError::Task(e.to_string()))?;
        result.map_err(SessionError::from)
    }
}

/// Starts a driver session in the background (on the current tokio runtime): connects to
/// the daemon in `config`, reconnects forever, and hands role changes to `driver`. Real
/// sockets and the machine's `CLOCK_MONOTONIC`: [`connect_with`] with [`TokioNet`] and
/// [`MonotonicClock`].
pub fn connect<D: Driver>(config: DriverConfig, driver: D) -> Result<DriverSession, SessionError> {
    connect_with(config, driver, TokioNet, MonotonicClock)
}

/// [`connect`], with the sockets made by `net` and the machine's monotonic clock read from
/// `clock` — the clock the daemon stamps `sent_at_ns` with, so a simulation passes the
/// simulated host's clock, shared with that host's daemon. For deterministic runs set
/// [`DriverConfig::driver_id`] (or it is drawn from OS randomness) and either
/// [`DriverConfig::rng_seed`] or a `net` whose `random_seed()` is seeded.
pub fn connect_with<D: Driver, N: Net, C: MachineClock>(
    config: DriverConfig,
    driver: D,
    net: N,
    clock: C,
) -> Result<DriverSession, SessionError> {
    let rng = match config.rng_seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_seed(net.random_seed()),
    };
    let dialer =
        TransportDialer::new(&config, net).map_err(|e| SessionError::Transport(e.to_string()))?;
    Ok(spawn_session(&config, dialer, driver, clock, rng))
}

/// Runs a driver until `shutdown` completes (or the driver panics).
pub async fn run<D: Driver>(
    config: DriverConfig,
    driver: D,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SessionError> {
    let mut session = connect(config, driver)?;
    tracing::info!(driver_id = %session.driver_id(), "driver started");
    tokio::select! {
        result = session.wait() => result,
        () = shutdown => {
            tracing::info!("shutting down");
            session.shutdown().await
        }
    }
}

pub(crate) fn spawn_session<D: Driver, L: Dialer, C: MachineClock>(
    config: &DriverConfig,
    dialer: L,
    driver: D,
    clock: C,
    rng: StdRng,
) -> DriverSession {
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (status_tx, status_rx) = watch::channel(SessionStatus::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let options = EngineOptions {
        startup_wait: config.startup_wait,
    };
    let health = HealthReporter::new();
    let engine = tokio::spawn(run_engine(
        driver,
        clock,
        options,
        in_rx,
        out_tx,
        status_tx,
        shutdown_rx.clone(),
        health.clone(),
    ));
    let backoff = Backoff::with_rng(config.reconnect_initial, config.reconnect_max, rng);
    let connection = tokio::spawn(connection_loop(
        dialer,
        format!("{} ({:?})", config.daemon, config.transport),
        in_tx,
        out_rx,
        backoff,
        shutdown_rx,
    ));
    DriverSession {
        driver_id: config.driver_id.clone(),
        status: status_rx,
        shutdown: shutdown_tx,
        engine,
        connection,
        health,
    }
}

async fn connection_loop<L: Dialer>(
    mut dialer: L,
    daemon: String,
    inbound: mpsc::Sender<Inbound>,
    mut outbound: mpsc::UnboundedReceiver<Outbound>,
    mut backoff: Backoff,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = 0u64;
    let mut failures = 0u64;
    let mut last_class: Option<&'static str> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let dialed = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            dialed = dialer.dial() => dialed,
        };
        match dialed {
            Ok(mut link) => {
                conn += 1;
                if failures > 0 {
                    tracing::info!(
                        "connected to the daemon at {daemon} after {failures} failed attempts"
                    );
                } else {
                    tracing::info!("connected to the daemon at {daemon}");
                }
                failures = 0;
                last_class = None;
                if inbound.send(Inbound::Connected { conn }).await.is_err() {
                    return;
                }
                let (reason, heard_role) =
                    serve(&mut link, conn, &inbound, &mut outbound, &mut shutdown).await;
                link.close().await;
                if inbound.send(Inbound::Disconnected { conn }).await.is_err() {
                    return;
                }
                if *shutdown.borrow() {
                    return;
                }
                tracing::warn!(
                    "lost the connection to the daemon at {daemon}: {reason}; reconnecting"
                );
                // A daemon that accepts and drops at once must not make us spin: the backoff
                // only starts over after a connection that carried a role.
                if heard_role {
                    backoff.reset();
                }
            }
            Err(e) => {
                failures += 1;
                if last_class == Some(e.class) {
                    tracing::debug!(
                        attempt = failures,
                        "still cannot reach the daemon at {daemon}: {e}"
                    );
                } else {
                    tracing::warn!(
                        "cannot reach the daemon at {daemon}: {e}; retrying forever with backoff (further failures of this kind are logged at debug level)"
                    );
                    last_class = Some(e.class);
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Carries frames on one connection until it ends; returns why, and whether a role came.
async fn serve<K: Link>(
    link: &mut K,
    conn: u64,
    inbound: &mpsc::Sender<Inbound>,
    outbound: &mut mpsc::UnboundedReceiver<Outbound>,
    shutdown: &mut watch::Receiver<bool>,
) -> (String, bool) {
    let mut heard_role = false;
    // Proof of life for the daemon (`health.driver_timeout_ms`): a frozen process sends none.
    let mut alive = tokio::time::interval(clustd_core::driver::DRIVER_ALIVE_INTERVAL);
    alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return ("shutting down".into(), heard_role),
            _ = alive.tick() => {
                let frame = match encode(&FromDriver::Alive) {
                    Ok(frame) => frame,
                    Err(e) => return (format!("cannot encode a keepalive: {e}"), heard_role),
                };
                if let Err(e) = link.send(frame) {
                    return (format!("send failed: {e}"), heard_role);
                }
            }
            out = outbound.recv() => match out {
                None => return ("the engine stopped".into(), heard_role),
                Some(Outbound::Send { conn: c, msg }) if c == conn => {
                    let frame = match encode(&msg) {
                        Ok(frame) => frame,
                        Err(e) => {
                            tracing::error!("cannot encode {msg:?}: {e}");
                            continue;
                        }
                    };
                    if let Err(e) = link.send(frame) {
                        return (format!("send failed: {e}"), heard_role);
                    }
                }
                Some(Outbound::Resync { conn: c }) if c == conn => {
                    return ("resynchronizing".into(), heard_role);
                }
                // Acknowledgements meant for an earlier connection: the daemon that sent those
                // roles is not listening for them any more.
                Some(_) => {}
            },
            frame = link.recv() => {
                let Some(frame) = frame else {
                    return ("connection closed".into(), heard_role);
                };
                let received_at = Instant::now();
                match decode::<ToDriver>(&frame) {
                    Ok(msg) => {
                        heard_role |= matches!(msg, ToDriver::Role { .. });
                        if inbound.send(Inbound::Message { conn, msg, received_at }).await.is_err() {
                            return ("the engine stopped".into(), heard_role);
                        }
                    }
                    Err(e) => return (format!("undecodable frame from the daemon: {e}"), heard_role),
                }
            }
        }
    }
}
