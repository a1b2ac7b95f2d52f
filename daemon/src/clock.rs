//! The runtime's clock: the only place time enters the daemon.
//!
//! Production uses tokio's monotonic clock; the simulation supplies turmoil's simulated
//! time, optionally running a little fast or slow to model clock drift.

use clustd_core::Instant;

/// Monotonic time for the core, and a way to sleep until one of its deadlines.
pub trait Clock: Send + Sync + 'static {
    /// Now, on this node's monotonic clock.
    fn now(&self) -> Instant;
    /// The tokio instant at which this clock reads `at` (what to sleep until).
    fn deadline(&self, at: Instant) -> tokio::time::Instant;
    /// Milliseconds since the Unix epoch, for human-readable timestamps in status only.
    fn wall_clock_ms(&self) -> u64;
}

/// tokio's monotonic clock, counted from when the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
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
}
