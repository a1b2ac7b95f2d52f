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
