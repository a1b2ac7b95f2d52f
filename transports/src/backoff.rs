//! Exponential backoff with jitter: how the transports redial a peer, and how drivers
//! reconnect to their daemon and retry a notification sink. One implementation, so all of
//! them wait alike and a simulated run replays every delay from its seed.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore};

/// Delays that double from `initial` up to `max`; each delay is drawn uniformly from the
/// upper half of the current step ("equal jitter"), so many nodes or drivers restarted
/// together do not retry in lockstep, and no delay is ever near zero (no busy loop).
///
/// The jitter is drawn from `R`, which the caller seeds (from its config or its
/// [`Net`](crate::Net)), never from the OS, so a simulated run repeats exactly.
#[derive(Debug)]
pub struct Backoff<R = StdRng> {
    initial: Duration,
    max: Duration,
    step: Duration,
    rng: R,
}

impl<R: RngCore> Backoff<R> {
    /// A backoff from `initial` (at least 1 ms) up to `max` (at least `initial`), drawing its
    /// jitter from `rng`.
    pub fn with_rng(initial: Duration, max: Duration, rng: R) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Self {
            initial,
            max,
            step: initial,
            rng,
        }
    }

    /// The delay before the next attempt; the step doubles (up to `max`) for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        self.jittered(step)
    }

    /// A delay drawn from the first step, without moving on: a head start before the first
    /// attempt.
    pub fn initial_delay(&mut self) -> Duration {
        self.jittered(self.initial)
    }

    /// Back to `initial` after a success.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }

    /// Equal jitter: between half and all of `step`.
    fn jittered(&mut self, step: Duration) -> Duration {
        let half = step / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_nanos(self.rng.random_range(0..nanos))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn doubles_up_to_max_with_jitter_in_the_upper_half() {
        let ms = Duration::from_millis;
        let mut b = Backoff::with_rng(ms(100), ms(1000), StdRng::seed_from_u64(7));
        let steps = [100, 200, 400, 800, 1000, 1000];
        for step in steps {
            let d = b.next_delay();
            assert!(d >= ms(step / 2) && d <= ms(step), "{d:?} for step {step}");
        }
        b.reset();
        assert!(b.next_delay() <= ms(100));
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let ms = Duration::from_millis;
        let draws = |seed| {
            let mut b = Backoff::with_rng(ms(1000), ms(60_000), StdRng::seed_from_u64(seed));
            (0..5).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_ne!(draws(1), draws(2));
    }

    #[test]
    fn a_head_start_does_not_move_the_step_on() {
        let ms = Duration::from_millis;
        let mut b = Backoff::with_rng(ms(100), ms(1000), StdRng::seed_from_u64(3));
        let head_start = b.initial_delay();
        assert!(
            head_start >= ms(50) && head_start <= ms(100),
            "{head_start:?}"
        );
        let first = b.next_delay();
        assert!(first >= ms(50) && first <= ms(100), "{first:?}");
    }

    #[test]
    fn zero_durations_do_not_busy_loop() {
        let mut b = Backoff::with_rng(Duration::ZERO, Duration::ZERO, StdRng::seed_from_u64(1));
        assert!(b.next_delay() >= Duration::from_micros(500));
    }
}
