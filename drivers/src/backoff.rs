//! Exponential backoff with jitter, for reconnecting to the daemon and retrying sinks.

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

/// Delays that double from `initial` up to `max`; each delay is drawn uniformly from the
/// upper half of the current step ("equal jitter"), so many drivers restarted together do
/// not reconnect in lockstep, and no delay is ever near zero (no busy loop).
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
    rng: StdRng,
}

impl Backoff {
    /// A backoff drawing its jitter from `rng`: seeded from the config or the `Net` (see
    /// `DriverConfig::rng_seed`), so a simulated run repeats exactly.
    pub(crate) fn with_rng(initial: Duration, max: Duration, rng: StdRng) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Self {
            initial,
            max,
            step: initial,
            rng,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + self.rng.random_range(Duration::ZERO..=step - half)
    }

    /// Back to `initial` after a success.
    pub(crate) fn reset(&mut self) {
        self.step = self.initial;
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
    fn zero_durations_do_not_busy_loop() {
        let mut b = Backoff::with_rng(Duration::ZERO, Duration::ZERO, StdRng::seed_from_u64(1));
        assert!(b.next_delay() >= Duration::from_micros(500));
    }
}
