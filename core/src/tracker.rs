//! What a leader knows of each follower, from its acknowledgements ([`Follower`]), and the
//! one check of whether a follower acknowledged recently enough to count on
//! ([`Follower::acked_within`]), with the three windows the role machine uses and why each
//! is what it is ([`AckWindow`]).

use std::time::Duration;

use crate::config::Config;
use crate::time::Instant;

/// A leader's knowledge of one follower, as its latest acknowledgement told it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Follower {
    /// The newest heartbeat round it acknowledged (0: none): what the lease counts.
    pub(crate) acked_round: u64,
    /// When its latest acknowledgement arrived, on the leader's clock.
    pub(crate) last_ack: Option<Instant>,
    /// Its election priority (higher is preferred as a successor).
    pub(crate) priority: u8,
    /// Whether it may be master (healthy, not in maintenance, not a witness).
    pub(crate) eligible: bool,
    /// Whether it takes mastership from a leader of lower priority.
    pub(crate) preempt: bool,
    /// What the leader last told the caller about it ([`crate::Event::PeerReachability`]):
    /// `None` before its first acknowledgement or heartbeat round.
    pub(crate) reachable: Option<bool>,
}

impl Follower {
    /// Whether its latest acknowledgement arrived less than `window` before `now` (see
    /// [`AckWindow`] for the windows and why each).
    pub(crate) fn acked_within(&self, now: Instant, window: Duration) -> bool {
        self.last_ack
            .is_some_and(|t| now.saturating_duration_since(t) < window)
    }
}

/// How recently a follower must have acknowledged for the leader to count on it, by what
/// the leader is about to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AckWindow {
    /// `ET_min`: *reachable*. For the reachability the leader reports, the successors its
    /// heartbeats rank, whom a completing hand-over sends `TimeoutNow` to, and a
    /// switchover's target (and who would preempt it). A follower that acknowledged
    /// within `ET_min` heard this leader about that recently, so its election timer (at
    /// least `ET_min`) has not fired: it still follows this leader and obeys its
    /// `TimeoutNow`. It is also the window check-quorum judges a majority by.
    Reachable,
    /// Two heartbeat intervals: *answering now*, one lost acknowledgement forgiven. For the
    /// hand-overs a leader starts on its own, which demote a working master first: a
    /// preemption, and the start of a health hand-over (with no follower answering now,
    /// an unhealthy master is alone). Mastership moves only toward a follower that is
    /// answering now, not toward one that may be going away.
    Answering,
    /// `ET_max`: *may still be waiting*: no follower's election timeout is longer, so one
    /// that acknowledged within it may not have given up on this leader. Only for a health
    /// hand-over about to be cancelled for want of a reachable successor: acknowledgements
    /// late under load are not a successor gone, so it waits a heartbeat for a fresh one.
    StillWaiting,
}

impl AckWindow {
    /// The window's length under `config`.
    pub(crate) fn of(self, config: &Config) -> Duration {
        match self {
            Self::Reachable => config.election_timeout_min,
            Self::Answering => config.heartbeat_interval * 2,
            Self::StillWaiting => config.election_timeout_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    #[test]
    fn an_ack_is_recent_strictly_within_its_window() {
        let ms = Duration::from_millis;
        let at = |t| Instant::from_millis(t);
        // (last ack, now, window, recent)
        let cases = [
            (None, 1000, ms(1000), false),
            (Some(0), 999, ms(1000), true),
            (Some(0), 1000, ms(1000), false), // exactly the window: no longer
            (Some(500), 500, ms(1), true),
            (Some(900), 100, ms(1), true), // an ack "after" now (clock went back) is recent
            (Some(0), 0, Duration::ZERO, false),
        ];
        for (last, now, window, want) in cases {
            let f = Follower {
                last_ack: last.map(at),
                ..Follower::default()
            };
            assert_eq!(
                f.acked_within(at(now), window),
                want,
                "{last:?} {now} {window:?}"
            );
        }
    }

    #[test]
    fn the_windows_come_from_the_config() {
        let id = NodeId::new("n1").expect("valid id");
        let mut config = Config::new(id.clone(), vec![id]);
        config.set_timings(
            Duration::from_millis(50),
            Duration::from_millis(700),
            Duration::from_millis(1300),
        );
        let windows = [
            (AckWindow::Reachable, 700),
            (AckWindow::Answering, 100),
            (AckWindow::StillWaiting, 1300),
        ];
        for (window, ms) in windows {
            assert_eq!(window.of(&config), Duration::from_millis(ms), "{window:?}");
        }
    }
}
