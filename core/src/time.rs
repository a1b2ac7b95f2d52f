//! The core's notion of time: an opaque monotonic instant supplied by the caller.
//!
//! The core never reads a clock. The runtime passes `now` into every mutator, built from
//! whatever clock it trusts (tokio's, turmoil's simulated one, a test's virtual one).

use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point on the caller's monotonic clock: time elapsed since an arbitrary origin.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Instant(Duration);

impl Instant {
    /// The clock's origin.
    pub const ZERO: Self = Self(Duration::ZERO);

    /// The instant `elapsed` after the clock's origin.
    pub const fn from_elapsed(elapsed: Duration) -> Self {
        Self(elapsed)
    }

    /// The instant `ms` milliseconds after the origin (handy in tests).
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// Time since the clock's origin.
    pub const fn elapsed_since_origin(self) -> Duration {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::fmt::Display for Instant {
    /// Seconds since the clock's origin, to the microsecond: `12.345678s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06}s", self.0.as_secs(), self.0.subsec_micros())
    }
}

/// A clock for embedders: core [`Instant`]s counted from an origin on
/// `std::time::Instant` (monotonic), with conversions both ways. The core itself never
/// reads it (nor any clock): the runtime reads it and passes `now` in.
#[derive(Clone, Copy, Debug)]
pub struct StdClock {
    origin: std::time::Instant,
}

impl StdClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self::with_origin(std::time::Instant::now())
    }

    /// A clock whose origin is `origin`.
    pub fn with_origin(origin: std::time::Instant) -> Self {
        Self { origin }
    }

    /// Now, as a core instant.
    pub fn now(&self) -> Instant {
        self.from_std(std::time::Instant::now())
    }

    /// `at` as a core instant (the origin if `at` is before it).
    pub fn from_std(&self, at: std::time::Instant) -> Instant {
        Instant(at.saturating_duration_since(self.origin))
    }

    /// A core instant as a `std::time::Instant`, e.g. to sleep until [`crate::Node::poll_timeout`].
    pub fn to_std(&self, at: Instant) -> std::time::Instant {
        self.origin + at.0
    }
}

impl Default for StdClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Add<Duration> for Instant {
    type Output = Self;
    fn add(self, rhs: Duration) -> Self {
        Self(self.0.saturating_add(rhs))
    }
}

impl Sub<Duration> for Instant {
    type Output = Self;
    fn sub(self, rhs: Duration) -> Self {
        Self(self.0.saturating_sub(rhs))
    }
}
