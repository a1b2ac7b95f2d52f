//! Fuzzing hook (feature `fuzzing`, doc-hidden): the real engine (`engine::run_engine`) on a
//! current-thread runtime with a paused clock, driven by hand one inbound event at a time,
//! with a scripted driver and a machine clock on the same virtual time
//! ([`TokioMachineClock`], reading [`EngineHarness::ORIGIN_NS`] at start), so the daemon's
//! `sent_at_ns` stamps can be made with [`EngineHarness::now_ns`]. The `driver_protocol`
//! fuzz target (fuzz-targets/) feeds it arbitrary daemon messages and checks what comes out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustd_core::driver::{ActionResult, FromDriver, ToDriver};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::{MachineClock, TokioMachineClock};
use crate::driver::{Driver, RoleChange};
use crate::engine::{EngineError, EngineOptions, Inbound, Outbound, SessionStatus, run_engine};
use crate::health::HealthReporter;

/// What the engine asked of the connection loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this message (an acknowledgement, a health result) on connection `conn`.
    Send {
        /// The connection.
        conn: u64,
        /// The message.
        msg: FromDriver,
    },
    /// Drop connection `conn` and reconnect.
    Resync {
        /// The connection.
        conn: u64,
    },
}

/// A driver whose `i`-th action takes `script[i % len].0` and returns `script[i % len].1`.
struct Scripted {
    script: Vec<(Duration, ActionResult)>,
    next: usize,
    seen: Arc<Mutex<Vec<RoleChange>>>,
}

impl Driver for Scripted {
    async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(change);
        }
        let (delay, result) = self
            .script
            .get(self.next % self.script.len().max(1))
            .cloned()
            .unwrap_or((Duration::ZERO, ActionResult::Ok));
        self.next += 1;
        tokio::time::sleep(delay).await;
        result
    }
}

/// The engine, a scripted driver and a paused clock.
pub struct EngineHarness {
    rt: Runtime,
    inbound: mpsc::Sender<Inbound>,
    outbound: mpsc::UnboundedReceiver<Outbound>,
    status: watch::Receiver<SessionStatus>,
    seen: Arc<Mutex<Vec<RoleChange>>>,
    clock: TokioMachineClock,
    task: Option<JoinHandle<Result<(), EngineError>>>,
    health: HealthReporter,
    _shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for EngineHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHarness").finish_non_exhaustive()
    }
}

impl EngineHarness {
    /// What the machine's monotonic clock reads when the harness starts (ns): far from
    /// zero, so stamps in the past are representable.
    pub const ORIGIN_NS: u64 = 1_000_000 * 1_000_000_000;

    /// Starts the engine; the driver follows `script` (cycled; empty means instant success).
    pub fn new(startup_wait: Duration, script: Vec<(Duration, ActionResult)>) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap_or_else(|e| panic!("a current-thread runtime always builds: {e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(SessionStatus::default());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let driver = Scripted {
            script,
            next: 0,
            seen: seen.clone(),
        };
        let clock = rt.block_on(async { TokioMachineClock::new(Self::ORIGIN_NS) });
        let health = HealthReporter::new();
        let task = rt.spawn(run_engine(
            driver,
            clock,
            EngineOptions { startup_wait },
            in_rx,
            out_tx,
            status_tx,
            shutdown_rx,
            health.clone(),
        ));
        let mut harness = Self {
            rt,
            inbound: in_tx,
            outbound: out_rx,
            status: status_rx,
            seen,
            clock,
            task: Some(task),
            health,
            _shutdown: shutdown_tx,
        };
        harness.settle();
        harness
    }

    fn send(&mut self, event: Inbound) {
        let inbound = self.inbound.clone();
        self.rt.block_on(async move {
            // Fails only when the engine stopped; `failure` reports that.
            let _ = inbound.send(event).await;
        });
        self.settle();
    }

    /// Lets the engine and the driver run everything that is ready, then 1 ms passes.
    fn settle(&mut self) {
        self.advance(Duration::from_millis(1));
    }

    /// A connection is up.
    pub fn connected(&mut self, conn: u64) {
        self.send(Inbound::Connected { conn });
    }

    /// Connection `conn` is gone.
    pub fn disconnected(&mut self, conn: u64) {
        self.send(Inbound::Disconnected { conn });
    }

    /// A message from the daemon on `conn`, received now.
    pub fn message(&mut self, conn: u64, msg: ToDriver) {
        let received_at = self.rt.block_on(async { Instant::now() });
        self.send(Inbound::Message {
            conn,
            msg,
            received_at,
        });
    }

    /// The driver reports one result of `check` (as a driver's own task would), then the
    /// engine runs. Refused reports (a 17th check name, ...) return the error.
    pub fn report_health(
        &mut self,
        check: &str,
        healthy: bool,
        fall: u32,
        rise: u32,
    ) -> Result<(), crate::HealthError> {
        let reported = self
            .health
            .report_with(check, healthy, "fuzzed", fall, rise);
        self.settle();
        reported
    }

    /// The machine's monotonic clock now (ns), as the daemon would stamp `sent_at_ns`.
    pub fn now_ns(&self) -> u64 {
        let clock = self.clock;
        self.rt.block_on(async move { clock.now_ns() })
    }

    /// Lets `by` of virtual time pass (timers fire in order on the way).
    pub fn advance(&mut self, by: Duration) {
        self.rt
            .block_on(async move { tokio::time::sleep(by).await });
    }

    /// The engine's status.
    pub fn status(&self) -> SessionStatus {
        self.status.borrow().clone()
    }

    /// Every change handed to the driver so far, in order.
    pub fn changes(&self) -> Vec<RoleChange> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// What the engine asked of the connection loop since the last call.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Ok(o) = self.outbound.try_recv() {
            out.push(match o {
                Outbound::Send { conn, msg } => Output::Send { conn, msg },
                Outbound::Resync { conn } => Output::Resync { conn },
            });
        }
        out
    }

    /// Why the engine stopped, if it did (it never should while the harness lives).
    pub fn failure(&mut self) -> Option<String> {
        let task = self.task.as_ref()?;
        if !task.is_finished() {
            return None;
        }
        let task = self.task.take()?;
        Some(match self.rt.block_on(task) {
            Ok(Ok(())) => "the engine returned".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the engine task failed: {e}"),
        })
    }
}
