//! The machine's monotonic clock, as the driver's lease needs it.
//!
//! The daemon stamps every lease it hands out (`ToDriver::Role`, `ToDriver::LeaseRenewal`)
//! with `sent_at_ns`, its reading of the machine's monotonic clock when it computed the
//! remaining lease. The driver's lease ends when *that same clock* reads
//! `sent_at_ns + lease_remaining_ms`, so a notice that sits in a socket buffer or a busy
//! runtime's queue arrives with less lease left, never more. That only works if the daemon
//! and the driver read one clock: drivers must run on the daemon's machine.
//!
//! [`MachineClock`] is the seam: production reads Linux `CLOCK_MONOTONIC`
//! ([`MonotonicClock`]); tests, the fuzz harness and the simulation model it on tokio's
//! (paused or simulated) clock ([`TokioMachineClock`]), or bring their own.

use std::time::Duration;

use tokio::time::Instant;

/// The longest a mapped deadline may lie ahead: longer than any lease
/// (`lease_remaining_ms` is a `u32`, under 50 days), short enough that adding it to an
/// [`Instant`] never overflows.
const MAX_AHEAD: Duration = Duration::from_millis(u32::MAX as u64 + 1000);

/// The machine's monotonic clock, shared by the daemon and its drivers.
///
/// Both methods speak of the same clock: the daemon's `sent_at_ns` values are readings of
/// it. Implementations must be conservative for the lease: [`MachineClock::deadline`] may
/// return an instant *earlier* than the exact one (a lease a few nanoseconds short is
/// harmless), never later (a late deadline would keep a driver master past the daemon's
/// own lease).
pub trait MachineClock: Clone + Send + Sync + 'static {
    /// The machine's monotonic clock now, in nanoseconds.
    fn now_ns(&self) -> u64;

    /// The tokio instant (what the driver sleeps until) at which this clock reads `at_ns`:
    /// at or before the exact instant; an instant at or before now if `at_ns` has passed.
    fn deadline(&self, at_ns: u64) -> Instant;
}

/// Linux `CLOCK_MONOTONIC`: system-wide (every process on the machine reads the same
/// clock, unlike a per-process origin), never stepped by NTP or `date`, stopped while the
/// machine is suspended. The daemon stamps `sent_at_ns` with the same clock.
///
/// [`MachineClock::deadline`] maps a reading to a tokio [`Instant`] through "now" on
/// both clocks. tokio's `Instant` is `std::time::Instant`, which on Linux is itself
/// `CLOCK_MONOTONIC`; the mapping only relies on the two advancing at the same rate over
/// one lease. It reads tokio's clock *first* and `CLOCK_MONOTONIC` second, so the
/// monotonic reading is, if anything, later than the instant it is paired with, and the
/// computed deadline can only come early.
///
/// Not for a runtime with a paused clock (`tokio::time::pause`, the simulation): there
/// tokio's clock is virtual; use [`TokioMachineClock`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl MonotonicClock {
    /// `CLOCK_MONOTONIC` now, in nanoseconds; `None` only if the kernel refuses to read it.
    fn read() -> Option<u64> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
        let secs = u64::try_from(now.tv_sec()).ok()?;
        let nanos = u64::try_from(now.tv_nsec()).ok()?;
        secs.checked_mul(1_000_000_000)?.checked_add(nanos)
    }
}

impl MachineClock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        // CLOCK_MONOTONIC cannot fail on Linux. Were it to, "the end of time" makes every
        // lease look spent: the driver demotes itself, the fail-safe direction.
        Self::read().unwrap_or(u64::MAX)
    }

    fn deadline(&self, at_ns: u64) -> Instant {
        // Order matters (see the type's doc): tokio's clock first, then CLOCK_MONOTONIC.
        let instant = Instant::now();
        let Some(now_ns) = Self::read() else {
            return instant;
        };
        instant + Duration::from_nanos(at_ns.saturating_sub(now_ns)).min(MAX_AHEAD)
    }
}

/// A machine clock modelled on tokio's clock: it reads `origin_ns` at the instant it was
/// made and advances with tokio's time (real, paused or simulated). For tests, the fuzz
/// harness and simulations, where the daemon and its drivers share one such clock (clone
/// it, or make each from the same origin).
#[derive(Clone, Copy, Debug)]
pub struct TokioMachineClock {
    origin: Instant,
    origin_ns: u64,
}

impl TokioMachineClock {
    /// A clock that reads `origin_ns` now (on tokio's clock).
    pub fn new(origin_ns: u64) -> Self {
        Self::with_origin(Instant::now(), origin_ns)
    }

    /// A clock that reads `origin_ns` at `origin`.
    pub fn with_origin(origin: Instant, origin_ns: u64) -> Self {
        Self { origin, origin_ns }
    }
}

impl MachineClock for TokioMachineClock {
    fn now_ns(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.origin_ns.saturating_add(elapsed)
    }

    fn deadline(&self, at_ns: u64) -> Instant {
        // Exact: both sides are tokio's clock, nothing to round.
        self.origin + Duration::from_nanos(at_ns.saturating_sub(self.origin_ns)).min(MAX_AHEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_maps_readings_to_instants_never_late() {
        let clock = MonotonicClock;
        let before = Instant::now();
        let now_ns = clock.now_ns();
        let deadline = clock.deadline(now_ns + 1_000_000_000);
        let after = Instant::now();
        // `now_ns` was read after `before`, so its second-later deadline is at most one
        // second after `after`, and not much before `before` + 1 s either.
        assert!(deadline <= after + Duration::from_secs(1), "{deadline:?}");
        assert!(deadline + Duration::from_millis(100) >= before + Duration::from_secs(1));
        // A reading in the past maps to (at or before) now.
        assert!(clock.deadline(now_ns.saturating_sub(5_000_000_000)) <= Instant::now());
        assert!(clock.deadline(u64::MAX) > after);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_machine_clock_follows_tokio_time() {
        let origin = Instant::now();
        let clock = TokioMachineClock::new(5_000_000_000);
        assert_eq!(clock.now_ns(), 5_000_000_000);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(clock.now_ns(), 5_250_000_000);
        assert_eq!(
            clock.deadline(6_000_000_000),
            origin + Duration::from_secs(1)
        );
        assert!(clock.deadline(5_100_000_000) <= Instant::now());
        assert!(clock.deadline(0) <= Instant::now());
    }
}
