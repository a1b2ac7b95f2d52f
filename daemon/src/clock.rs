//! The runtime's clock: the only place time enters the daemon.
//!
//! Production uses tokio's monotonic clock; the simulation supplies turmoil's simulated
//! time, optionally running a little fast or slow to model clock drift.
//!
//! Drivers are told when their lease ends as a reading of the *machine's* monotonic clock
//! ([`Clock::monotonic_ns`], sent as `sent_at_ns`), never as "from when this arrives": on
//! Linux `CLOCK_MONOTONIC` is one system-wide clock, so a driver on the same machine reads
//! the very clock the daemon read, and a notice that arrives late cannot extend its lease.

use clustd_core::Instant;

/// Monotonic time for the core, and a way to sleep until one of its deadlines.
pub trait Clock: Send + Sync + 'static {
    /// Now, on this node's monotonic clock.
    fn now(&self) -> Instant;
    /// The tokio instant at which this clock reads `at` (what to sleep until).
    fn deadline(&self, at: Instant) -> tokio::time::Instant;
    /// Milliseconds since the Unix epoch, for human-readable timestamps in status only.
    fn wall_clock_ms(&self) -> u64;
    /// The machine's monotonic clock (Linux `CLOCK_MONOTONIC`, nanoseconds) at the moment
    /// this clock reads `at`: what drivers are sent as `sent_at_ns`, and what they compare
    /// their own reading of that clock against. Never later than the true reading, so a
    /// driver's lease computed from it never ends later than the daemon's own.
    fn monotonic_ns(&self, at: Instant) -> u64;
}

/// tokio's monotonic clock, counted from when the clock was made.
///
/// On Linux, `std::time::Instant` (and so tokio's, unless its test clock is paused) *is*
/// `CLOCK_MONOTONIC`, which is system-wide: every process on the machine reads the same
/// clock. [`Clock::monotonic_ns`] converts by one offset taken at construction, reading
/// `CLOCK_MONOTONIC` *before* the tokio origin, so the offset is at most the true one and
/// converted values are never later than the true readings (off by the nanoseconds between
/// the two reads, in the safe direction: a driver's lease ends that much earlier). With a
/// paused tokio clock (tests with `start_paused`) tokio time no longer follows the machine
/// clock and the conversion means nothing.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
    /// `CLOCK_MONOTONIC` in ns, read just before `origin` was taken.
    origin_monotonic_ns: u64,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        // Order matters: the machine clock first, then the origin (see the type's docs).
        let origin_monotonic_ns = machine_monotonic_ns();
        Self {
            origin: tokio::time::Instant::now(),
            origin_monotonic_ns,
        }
    }

    /// The tokio instant at which this clock reads [`Instant::ZERO`]: converts this node's
    /// instants to a process-wide time (the demo puts all its nodes on one time line so).
    pub fn origin(&self) -> tokio::time::Instant {
        self.origin
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::from_elapsed(self.origin.elapsed())
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.origin + at.elapsed_since_origin()
    }

    fn wall_clock_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn monotonic_ns(&self, at: Instant) -> u64 {
        let since = u64::try_from(at.elapsed_since_origin().as_nanos()).unwrap_or(u64::MAX);
        self.origin_monotonic_ns.saturating_add(since)
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds. Zero if the OS refuses (it does not on Linux):
/// too early a reading only makes drivers' leases end sooner, never later.
pub fn machine_monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
        let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The converted reading lies between a reading taken before the clock was made and one
    /// taken after: never later than the true machine clock.
    #[tokio::test]
    async fn monotonic_ns_is_the_machine_clock_and_never_ahead_of_it() {
        let before = machine_monotonic_ns();
        let clock = TokioClock::new();
        for _ in 0..100 {
            let now = clock.now();
            let converted = clock.monotonic_ns(now);
            let after = machine_monotonic_ns();
            assert!(before <= converted, "{before} > {converted}");
            assert!(converted <= after, "converted {converted} ahead of {after}");
            tokio::time::sleep(std::time::Duration::from_micros(50)).await;
        }
        // And it advances with the node's clock, nanosecond for nanosecond.
        let a = Instant::from_millis(5);
        let b = Instant::from_millis(1005);
        assert_eq!(clock.monotonic_ns(b) - clock.monotonic_ns(a), 1_000_000_000);
    }
}
