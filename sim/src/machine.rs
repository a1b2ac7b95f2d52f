//! What a simulated machine has beside its daemon and driver: the daemon's `[fence]` action
//! ([`SimFencer`], which kills the machine's simulated service) and a watchdog device
//! ([`SimWatchdog`], whose deadline the harness watches and which resets the whole machine
//! when it passes).
//!
//! Both live in global simulated time, like the services: the harness, not the daemon,
//! decides what really happened.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustd::fence::{FenceRequest, Fencer};
use clustd::watchdog::WatchdogDevice;
use clustd_core::driver::ActionResult;

use crate::cluster::{ServiceState, lock_state};

/// Node `node`'s `[fence]`: after `took`, the simulated service is dead (or, when `fails`,
/// the fence reports a failure and the service runs on).
#[derive(Debug)]
pub struct SimFencer {
    /// Node index (for the trace).
    pub node: usize,
    /// The machine's simulated service.
    pub service: Arc<Mutex<ServiceState>>,
    /// How long a fence run takes.
    pub took: Duration,
    /// Whether fence runs fail.
    pub fails: bool,
}

impl Fencer for SimFencer {
    fn fence(&self, request: FenceRequest) -> Pin<Box<dyn Future<Output = ActionResult> + Send>> {
        let (node, service, took, fails) = (self.node, self.service.clone(), self.took, self.fails);
        Box::pin(async move {
            tokio::time::sleep(took).await;
            let at = turmoil::sim_elapsed().unwrap_or_default();
            let drivers = request
                .drivers
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(",");
            let mut s = lock_state(&service);
            if fails {
                s.log.push((
                    at,
                    format!("n{node} fence FAILED (simulated) for {drivers}"),
                ));
                return ActionResult::Failed("simulated fence failure".into());
            }
            s.running = false;
            s.log
                .push((at, format!("n{node} fence killed the service of {drivers}")));
            ActionResult::Ok
        })
    }
}

/// One machine's watchdog, shared by every incarnation of its daemon (a crashed daemon's
/// device stays armed, as `/dev/watchdog` does when closed without the magic character).
#[derive(Debug, Clone, Default)]
pub struct WatchdogState {
    /// Armed, and when it fires (global time) unless fed again.
    pub fires_at: Option<Duration>,
    /// How many times it was fed (for scenarios' checks).
    pub feeds: u64,
    /// How many times it was disarmed with the magic close.
    pub disarms: u64,
}

/// The daemon's view of its machine's watchdog. Its timeout runs on the machine's clock
/// (`rate` times as fast as global time).
#[derive(Debug, Clone)]
pub struct SimWatchdog {
    /// The machine's watchdog.
    pub state: Arc<Mutex<WatchdogState>>,
    /// `fence.watchdog_timeout_ms`.
    pub timeout: Duration,
    /// The machine's clock rate.
    pub rate: f64,
}

impl SimWatchdog {
    fn lock(&self) -> std::sync::MutexGuard<'_, WatchdogState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn restart_timer(&self) {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        let fires = now + self.timeout.div_f64(self.rate);
        let mut s = self.lock();
        // Fired already (the harness resets the machine at the end of this tick): a feed
        // now comes too late to save it.
        if s.fires_at.is_some_and(|at| at <= now) {
            return;
        }
        s.fires_at = Some(fires);
        s.feeds += 1;
    }
}

impl WatchdogDevice for SimWatchdog {
    fn open(&mut self) -> std::io::Result<()> {
        self.restart_timer();
        Ok(())
    }

    fn feed(&mut self) -> std::io::Result<()> {
        self.restart_timer();
        Ok(())
    }

    fn disarm(&mut self) -> std::io::Result<()> {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        let mut s = self.lock();
        if s.fires_at.is_some_and(|at| at <= now) {
            // Too late: it fired.
            return Ok(());
        }
        s.fires_at = None;
        s.disarms += 1;
        Ok(())
    }

    fn abandon(&mut self) {}
}
