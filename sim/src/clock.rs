//! A node's clock in the simulation: tokio's simulated time (driven by turmoil), running
//! `rate` times as fast as global simulated time, to model clock drift. The runtime's
//! [`clustd::Clock`] is the only way time enters a node, so this is the only place drift
//! has to be injected.

use std::time::Duration;

use clustd_core::Instant;

/// A drifting monotonic clock that starts at zero when the node (re)starts.
#[derive(Debug, Clone, Copy)]
pub struct DriftClock {
    origin: tokio::time::Instant,
    /// Global simulated time at `origin`.
    origin_global: Duration,
    rate: f64,
}

impl DriftClock {
    /// A clock starting now; must be made inside a turmoil host.
    pub fn start(rate: f64) -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            origin_global: turmoil::sim_elapsed().unwrap_or_default(),
            rate,
        }
    }

    /// Global simulated time at which this clock reads `at`.
    pub fn to_global(&self, at: Instant) -> Duration {
        self.origin_global + at.elapsed_since_origin().div_f64(self.rate)
    }
}

impl clustd::Clock for DriftClock {
    fn now(&self) -> Instant {
        Instant::from_elapsed(self.origin.elapsed().mul_f64(self.rate))
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        // Round up so that at the deadline `now() >= at` holds despite float rounding.
        self.origin + at.elapsed_since_origin().div_f64(self.rate) + Duration::from_micros(1)
    }

    fn wall_clock_ms(&self) -> u64 {
        // A fixed epoch (2024-01-01) plus simulated time: never the host's real clock.
        1_704_067_200_000
            + u64::try_from(self.origin_global.as_millis()).unwrap_or(0)
            + u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(0)
    }
}
