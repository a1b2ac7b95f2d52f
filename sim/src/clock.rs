//! Time on a simulated machine: one monotonic clock per machine, running `rate` times as
//! fast as global simulated time (clock drift), read by the machine's daemon
//! ([`DriftClock`], the runtime's [`clustd::Clock`]) and by its driver ([`MachineTime`], the
//! driver library's [`clustd_drivers::MachineClock`]). Both read the same clock, as a daemon
//! and its drivers read `CLOCK_MONOTONIC` on a real machine, and it does not restart when
//! the daemon does.
//!
//! A daemon can also be *paused* (SIGSTOP, a VM pause): its timers do not fire before the
//! pause ends, while its clock goes on ([`Pause`]). The harness holds its links meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clustd_core::Instant;

/// Machine monotonic readings start here (a machine that booted a while ago).
const BASE_NS: u64 = 1_000_000_000_000;

/// A machine's clock: `BASE_NS + global × rate`, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct MachineTime {
    rate: f64,
}

impl MachineTime {
    /// The clock of a machine running `rate` times as fast as real (global) time.
    pub fn new(rate: f64) -> Self {
        Self { rate }
    }

    /// The reading at global time `global`.
    pub fn at_global(&self, global: Duration) -> u64 {
        BASE_NS.saturating_add((global.as_nanos() as f64 * self.rate) as u64)
    }

    /// The global time at which the clock reads `ns` (rounded down: never late).
    pub fn global_of(&self, ns: u64) -> Duration {
        Duration::from_nanos((ns.saturating_sub(BASE_NS) as f64 / self.rate) as u64)
    }
}

impl clustd_drivers::MachineClock for MachineTime {
    fn now_ns(&self) -> u64 {
        self.at_global(turmoil::sim_elapsed().unwrap_or_default())
    }

    fn deadline(&self, at_ns: u64) -> tokio::time::Instant {
        // A host's tokio clock runs with global simulated time.
        let now = turmoil::sim_elapsed().unwrap_or_default();
        let at = self.global_of(at_ns);
        tokio::time::Instant::now() + at.saturating_sub(now)
    }
}

/// The clock a machine's driver reads: the machine's clock, with the driver's own pause
/// switch (a SIGSTOPped driver handles no lease timer before it resumes).
#[derive(Debug, Clone)]
pub struct DriverTime {
    machine: MachineTime,
    pause: Pause,
}

impl DriverTime {
    /// The driver's view of `machine`, paused by `pause`.
    pub fn new(machine: MachineTime, pause: Pause) -> Self {
        Self { machine, pause }
    }
}

impl clustd_drivers::MachineClock for DriverTime {
    fn now_ns(&self) -> u64 {
        self.machine.now_ns()
    }

    fn deadline(&self, at_ns: u64) -> tokio::time::Instant {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        let resume = tokio::time::Instant::now() + self.pause.get().saturating_sub(now);
        self.machine.deadline(at_ns).max(resume)
    }
}

/// Shared between the harness and a daemon (or a driver): the global time (ns) until which
/// it is paused (0: not paused).
#[derive(Debug, Clone, Default)]
pub struct Pause(Arc<AtomicU64>);

impl Pause {
    /// Pauses until global time `until`.
    pub fn until(&self, until: Duration) {
        let ns = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_max(ns, Ordering::Relaxed);
    }

    /// Paused until this global time (zero or past: running).
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    /// Waits (in simulated time) until the pause is over.
    pub async fn wait_until_running(&self) {
        loop {
            let now = turmoil::sim_elapsed().unwrap_or_default();
            let until = self.get();
            if until <= now {
                return;
            }
            tokio::time::sleep(until - now).await;
        }
    }

    /// Ends the pause now (the machine rebooted).
    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// A daemon's drifting clock; its core `Instant`s start at zero when the daemon (re)starts.
#[derive(Debug, Clone)]
pub struct DriftClock {
    origin: tokio::time::Instant,
    /// Global simulated time at `origin`.
    origin_global: Duration,
    machine: MachineTime,
    pause: Pause,
}

impl DriftClock {
    /// A clock starting now on a machine with this clock; must be made inside a turmoil host.
    pub fn start(machine: MachineTime, pause: Pause) -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            origin_global: turmoil::sim_elapsed().unwrap_or_default(),
            machine,
            pause,
        }
    }

    /// Global simulated time at which this clock reads `at`.
    pub fn to_global(&self, at: Instant) -> Duration {
        self.origin_global + at.elapsed_since_origin().div_f64(self.machine.rate)
    }
}

impl clustd::Clock for DriftClock {
    fn now(&self) -> Instant {
        Instant::from_elapsed(self.origin.elapsed().mul_f64(self.machine.rate))
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        // Round up so that at the deadline `now() >= at` holds despite float rounding.
        let deadline = self.origin
            + at.elapsed_since_origin().div_f64(self.machine.rate)
            + Duration::from_micros(1);
        // A paused daemon handles no timer before it resumes.
        let resume = self.origin + self.pause.get().saturating_sub(self.origin_global);
        deadline.max(resume)
    }

    fn wall_clock_ms(&self) -> u64 {
        // A fixed epoch (2024-01-01) plus simulated time: never the host's real clock.
        1_704_067_200_000
            + u64::try_from(self.origin_global.as_millis()).unwrap_or(0)
            + u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(0)
    }

    fn monotonic_ns(&self, at: Instant) -> u64 {
        // The machine's clock at the daemon's start, plus the daemon's own elapsed time
        // (which runs at the machine's rate): what its driver reads at that moment.
        self.machine
            .at_global(self.origin_global)
            .saturating_add(u64::try_from(at.elapsed_since_origin().as_nanos()).unwrap_or(u64::MAX))
    }
}
