//! Flap protection: at most `max` messages per sliding `window`; what is held back in the
//! meantime goes out as one summary when the window allows another message.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// What to do with an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send it now.
    Send,
    /// Held back; a summary is due at the given time.
    Held { summary_at: Instant },
}

/// The sliding-window limiter. Pure: the caller passes the time.
#[derive(Debug)]
pub(crate) struct FlapLimiter {
    window: Duration,
    max: usize,
    sent: VecDeque<Instant>,
    held: usize,
}

impl FlapLimiter {
    pub(crate) fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max: max.max(1),
            sent: VecDeque::new(),
            held: 0,
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.window)
        {
            self.sent.pop_front();
        }
    }

    /// Decides about one event at `now`.
    pub(crate) fn offer(&mut self, now: Instant) -> Verdict {
        self.forget_old(now);
        if self.held == 0 && self.sent.len() < self.max {
            self.sent.push_back(now);
            Verdict::Send
        } else {
            self.held += 1;
            Verdict::Held {
                summary_at: self.summary_due(),
            }
        }
    }

    /// When the held events may go out as a summary.
    pub(crate) fn summary_due(&self) -> Instant {
        // `held > 0` implies the window was full; the oldest entry leaving frees a slot.
        let oldest = self.sent.front().copied().unwrap_or_else(Instant::now);
        oldest + self.window
    }

    /// At `now`, if a summary is due: takes the held count and records the summary as sent.
    pub(crate) fn take_summary(&mut self, now: Instant) -> Option<usize> {
        self.forget_old(now);
        if self.held == 0 || self.sent.len() >= self.max {
            return None;
        }
        self.sent.push_back(now);
        Some(std::mem::take(&mut self.held))
    }

    /// Whether events are held back.
    pub(crate) fn holding(&self) -> bool {
        self.held > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_after_max_and_summarizes_once_the_window_frees_a_slot() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = FlapLimiter::new(ms(1000), 2);
        assert_eq!(l.offer(t0), Verdict::Send);
        assert_eq!(l.offer(t0 + ms(10)), Verdict::Send);
        assert_eq!(
            l.offer(t0 + ms(20)),
            Verdict::Held {
                summary_at: t0 + ms(1000)
            }
        );
        assert_eq!(
            l.offer(t0 + ms(30)),
            Verdict::Held {
                summary_at: t0 + ms(1000)
            }
        );
        assert_eq!(l.take_summary(t0 + ms(500)), None);
        assert_eq!(l.take_summary(t0 + ms(1000)), Some(2));
        assert!(!l.holding());
        // The summary used a slot: the next event within the window is held again.
        assert!(matches!(l.offer(t0 + ms(1001)), Verdict::Held { .. }));
        assert_eq!(l.take_summary(t0 + ms(2000)), Some(1));
        assert_eq!(l.offer(t0 + ms(5000)), Verdict::Send);
    }
}
