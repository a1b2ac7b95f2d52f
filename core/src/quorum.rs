//! A leader's lease and quorum arithmetic, kept out of the role machine as raft-rs keeps
//! `quorum::majority` and `tracker`: which heartbeat round a majority has acknowledged,
//! the send times of recent rounds a lease may run from, and how many rounds fit in
//! `ET_min`. Pure: rounds, instants and durations in and out; [`crate::node`] calls it.
//!
//! The rule (DESIGN.md, "Why master intervals cannot overlap"): the lease runs from the
//! send time of the newest round a majority (the leader included) has acknowledged, for
//! `lease`, on the leader's clock.

use std::collections::VecDeque;
use std::time::Duration;

use crate::time::Instant;

/// The newest round a majority has acknowledged: the `quorum`-th highest of the followers'
/// `acked` rounds and the leader's own `latest` (a leader acknowledges each of its rounds
/// as it sends it); 0 (never sent) while fewer than `quorum` are known. `quorum` is at
/// least 1, as [`crate::Config::quorum`] always is.
pub(crate) fn majority_round(
    latest: u64,
    acked: impl IntoIterator<Item = u64>,
    quorum: usize,
) -> u64 {
    let mut acked: Vec<u64> = acked.into_iter().collect();
    acked.push(latest);
    acked.sort_unstable_by(|a, b| b.cmp(a));
    acked.get(quorum - 1).copied().unwrap_or(0)
}

/// How many sent rounds a leader keeps: those of one `ET_min` and two more. A round sent
/// longer ago cannot give a lease that has not already run out (the lease is shorter than
/// `ET_min`), so the window stays bounded even while nobody acknowledges.
pub(crate) fn sent_round_window(election_timeout_min: Duration, heartbeat: Duration) -> usize {
    usize::try_from(election_timeout_min.as_nanos() / heartbeat.as_nanos().max(1) + 2)
        .unwrap_or(usize::MAX)
}

/// How many heartbeat rounds a leader sends in `span` (at least one).
pub(crate) fn rounds_in(span: Duration, heartbeat: Duration) -> u64 {
    u64::try_from(span.as_nanos() / heartbeat.as_nanos().max(1))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Whether `heard`, a round a node says it last heard, is one of the leader's rounds up to
/// `latest` and at most `rounds` behind it (a later round than the leader sent is no round
/// of this leadership).
pub(crate) fn heard_within(latest: u64, heard: u64, rounds: u64) -> bool {
    heard <= latest && latest - heard <= rounds
}

/// A leader's lease as its rounds are sent and acknowledged: the send time of each recent
/// round, the send time of the newest round a majority acknowledged, and the lease end
/// earned from it.
#[derive(Clone, Debug)]
pub(crate) struct LeaseTracker {
    /// Send time of each recent round, oldest first.
    sent_at: VecDeque<(u64, Instant)>,
    /// Send time of the latest round a majority acknowledged (or the election time).
    majority_at: Instant,
    /// End of the lease earned so far (may be in the past).
    lease_until: Option<Instant>,
}

impl LeaseTracker {
    /// A leadership won at `elected_at`: no round sent, no lease; check-quorum counts
    /// from the election.
    pub(crate) fn new(elected_at: Instant) -> Self {
        Self {
            sent_at: VecDeque::new(),
            majority_at: elected_at,
            lease_until: None,
        }
    }

    /// Send time of the latest round a majority acknowledged (or the election time):
    /// check-quorum ends the leadership `ET_min` after it, and a deposed leader stays
    /// sticky until then, as the followers of that round do.
    pub(crate) fn majority_at(&self) -> Instant {
        self.majority_at
    }

    /// End of the lease earned so far (may be in the past); `None` before any majority.
    pub(crate) fn lease_until(&self) -> Option<Instant> {
        self.lease_until
    }

    /// `round` was sent at `at`; keeps the last `window` rounds ([`sent_round_window`]).
    pub(crate) fn sent(&mut self, round: u64, at: Instant, window: usize) {
        self.sent_at.push_back((round, at));
        while self.sent_at.len() > window {
            self.sent_at.pop_front();
        }
    }

    /// A majority has acknowledged `round` ([`majority_round`]): if its send time is still
    /// kept, the lease runs to that time plus `lease` unless an earlier round earned a
    /// later end (a lease never shrinks), and the rounds before it are forgotten (no
    /// majority will be older). A round no longer kept (or never sent, 0) changes nothing.
    pub(crate) fn majority_acknowledged(&mut self, round: u64, lease: Duration) {
        let Some(&(_, sent)) = self.sent_at.iter().find(|(r, _)| *r == round) else {
            return;
        };
        self.majority_at = self.majority_at.max(sent);
        let until = sent + lease;
        if self.lease_until.is_none_or(|u| until > u) {
            self.lease_until = Some(until);
        }
        while self.sent_at.front().is_some_and(|(r, _)| *r < round) {
            self.sent_at.pop_front();
        }
    }

    /// A single voter's round sent at `now`: its own acknowledgement is the majority, so
    /// the lease runs from `now` (set, not extended: it follows a reconfigured `lease`).
    pub(crate) fn sole_voter_sent(&mut self, now: Instant, lease: Duration) {
        self.lease_until = Some(now + lease);
        self.majority_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn majority_round_is_the_quorum_th_highest_with_the_leader_counted() {
        // (leader's latest round, followers' acked rounds, quorum, majority round)
        let cases: &[(u64, &[u64], usize, u64)] = &[
            (5, &[], 1, 5),                 // a single voter's own round
            (5, &[0, 0], 2, 0),             // nobody acknowledged yet
            (5, &[3, 0], 2, 3),             // the leader and one follower
            (5, &[3, 4], 2, 4),             // the best follower is enough
            (5, &[5, 5], 2, 5),             // everyone current
            (7, &[6, 2, 1, 0], 3, 2),       // five voters: the third highest
            (7, &[6, 6, 0, 0], 3, 6),       // a minority lagging changes nothing
            (7, &[0, 0, 0, 0], 3, 0),       // only the leader
            (9, &[9, 8, 7, 6, 5, 4], 4, 7), // seven voters
        ];
        for &(latest, acked, quorum, want) in cases {
            assert_eq!(
                majority_round(latest, acked.iter().copied(), quorum),
                want,
                "latest {latest}, acked {acked:?}, quorum {quorum}"
            );
        }
    }

    #[test]
    fn the_sent_window_covers_one_election_timeout_and_two_rounds() {
        let d = Duration::from_millis;
        // (ET_min, heartbeat, rounds kept)
        let cases = [
            (d(1000), d(100), 12),
            (d(1000), d(33), 32),
            (d(100), d(10), 12),
            (d(1000), d(1000), 3),
            (d(1000), Duration::ZERO, 1_000_000_002), // no division by zero
        ];
        for (et_min, hb, want) in cases {
            assert_eq!(sent_round_window(et_min, hb), want, "{et_min:?} / {hb:?}");
        }
    }

    #[test]
    fn rounds_in_a_span_and_how_old_a_heard_round_may_be() {
        let d = Duration::from_millis;
        // (span, heartbeat, rounds)
        let cases = [
            (d(1000), d(100), 10),
            (d(1000), d(33), 30),
            (d(50), d(100), 1), // at least one
            (d(1000), Duration::ZERO, 1_000_000_000),
        ];
        for (span, hb, want) in cases {
            assert_eq!(rounds_in(span, hb), want, "{span:?} / {hb:?}");
        }
        // (latest, heard, rounds, within)
        let cases = [
            (20, 20, 10, true),
            (20, 10, 10, true),
            (20, 9, 10, false),
            (20, 21, 10, false), // a round this leadership never sent
            (0, 0, 1, true),
            (u64::MAX, 0, 10, false),
        ];
        for (latest, heard, rounds, want) in cases {
            assert_eq!(
                heard_within(latest, heard, rounds),
                want,
                "latest {latest}, heard {heard}, rounds {rounds}"
            );
        }
    }

    #[test]
    fn the_lease_runs_from_the_send_time_of_the_majority_round() {
        let lease = Duration::from_millis(800);
        let mut t = LeaseTracker::new(ms(1000));
        assert_eq!((t.majority_at(), t.lease_until()), (ms(1000), None));
        for round in 1..=4 {
            t.sent(round, ms(1000 + 100 * round), 12);
        }
        // (majority round acknowledged, majority_at, lease_until) after each step, in order.
        let steps = [
            (0, ms(1000), None),           // round 0 was never sent
            (2, ms(1200), Some(ms(2000))), // from round 2's send time
            (1, ms(1200), Some(ms(2000))), // forgotten once round 2 counted
            (4, ms(1400), Some(ms(2200))),
            (4, ms(1400), Some(ms(2200))), // again: nothing new
            (9, ms(1400), Some(ms(2200))), // never sent
        ];
        for (round, majority_at, until) in steps {
            t.majority_acknowledged(round, lease);
            assert_eq!(
                (t.majority_at(), t.lease_until()),
                (majority_at, until),
                "round {round}"
            );
        }
    }

    #[test]
    fn a_lease_never_shrinks_and_old_rounds_fall_out_of_the_window() {
        let mut t = LeaseTracker::new(ms(0));
        for round in 1..=5 {
            t.sent(round, ms(100 * round), 3);
        }
        // Only rounds 3..=5 are kept.
        t.majority_acknowledged(2, Duration::from_millis(800));
        assert_eq!(t.lease_until(), None, "round 2 fell out of the window");
        t.majority_acknowledged(4, Duration::from_millis(800));
        assert_eq!(t.lease_until(), Some(ms(1200)));
        // A shorter lease (reconfigured) from a later round does not cut the lease short.
        t.majority_acknowledged(5, Duration::from_millis(100));
        assert_eq!(
            (t.majority_at(), t.lease_until()),
            (ms(500), Some(ms(1200)))
        );
        // A single voter's round sets the lease from its own send time, shorter or not.
        t.sole_voter_sent(ms(600), Duration::from_millis(100));
        assert_eq!((t.majority_at(), t.lease_until()), (ms(600), Some(ms(700))));
    }
}
