//! Successor ranking: which of a leader's followers could take over, best first, and whom a
//! hand-over, a preemption or a switchover check picks. Pure functions over the leader's
//! [`Follower`]s, each given the [`AckWindow`](crate::tracker::AckWindow) length its caller
//! needs; the role machine calls them.
//!
//! "Best" is the same everywhere: the higher priority, then the smaller id. Ids order the
//! same on every node, so the leader and its followers agree on the ranking a heartbeat
//! carries (followers stagger their election timeouts by their rank in it).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ids::NodeId;
use crate::time::Instant;
use crate::tracker::Follower;

/// The eligible followers that acknowledged within `window`, best first.
pub(crate) fn ranked(
    followers: &BTreeMap<NodeId, Follower>,
    now: Instant,
    window: Duration,
) -> Vec<NodeId> {
    let mut ranked: Vec<(&NodeId, &Follower)> = followers
        .iter()
        .filter(|(_, f)| f.eligible && f.acked_within(now, window))
        .collect();
    ranked.sort_by(|(a_id, a), (b_id, b)| b.priority.cmp(&a.priority).then(a_id.cmp(b_id)));
    ranked.into_iter().map(|(id, _)| id.clone()).collect()
}

/// The first of [`ranked`], if any.
pub(crate) fn best(
    followers: &BTreeMap<NodeId, Follower>,
    now: Instant,
    window: Duration,
) -> Option<NodeId> {
    ranked(followers, now, window).into_iter().next()
}

/// Whom a hand-over that is due goes to: the `named` follower (a switchover's or a
/// preemption's) while it is eligible and acknowledged within `window`, else the best.
pub(crate) fn handoff_target(
    named: Option<&NodeId>,
    followers: &BTreeMap<NodeId, Follower>,
    now: Instant,
    window: Duration,
) -> Option<NodeId> {
    named
        .filter(|t| {
            followers
                .get(*t)
                .is_some_and(|f| f.eligible && f.acked_within(now, window))
        })
        .cloned()
        .or_else(|| best(followers, now, window))
}

/// Whether any eligible follower acknowledged within `window`.
pub(crate) fn any_eligible_within(
    followers: &BTreeMap<NodeId, Follower>,
    now: Instant,
    window: Duration,
) -> bool {
    followers
        .values()
        .any(|f| f.eligible && f.acked_within(now, window))
}

/// The follower that takes mastership from a leader of `leader_priority`: eligible, asking
/// to preempt, of higher priority and acknowledged within `window`; the best of those.
pub(crate) fn preempting(
    followers: &BTreeMap<NodeId, Follower>,
    now: Instant,
    window: Duration,
    leader_priority: u8,
) -> Option<NodeId> {
    followers
        .iter()
        .filter(|(_, f)| f.eligible && f.preempt && f.priority > leader_priority)
        .filter(|(_, f)| f.acked_within(now, window))
        .max_by(|(a_id, a), (b_id, b)| a.priority.cmp(&b.priority).then(b_id.cmp(a_id)))
        .map(|(id, _)| id.clone())
}

/// A node that would take mastership back at once from `to`, of `to_priority`, after a
/// switchover to it, with its priority: the first that preempts with a higher priority,
/// looking at the leader itself (`leader`: its id, priority, and whether it preempts and is
/// eligible) and then at the followers other than `to` that are eligible and acknowledged
/// within `window`, in id order.
pub(crate) fn preempter_of(
    to: &NodeId,
    to_priority: u8,
    leader: (NodeId, u8, bool),
    followers: &BTreeMap<NodeId, Follower>,
    now: Instant,
    window: Duration,
) -> Option<(NodeId, u8)> {
    std::iter::once(leader)
        .chain(
            followers
                .iter()
                .filter(|(id, f)| *id != to && f.eligible && f.acked_within(now, window))
                .map(|(id, f)| (id.clone(), f.priority, f.preempt)),
        )
        .find(|(_, priority, preempt)| *preempt && *priority > to_priority)
        .map(|(by, priority, _)| (by, priority))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|s| id(s)).collect()
    }

    /// A follower: `(id, priority, eligible, preempt, last ack at ms)`.
    type Row = (&'static str, u8, bool, bool, Option<u64>);

    /// Followers from rows; now is 1000 ms and the window 200 ms in every test below, so
    /// an ack at 800 ms or before is stale.
    fn followers(table: &[Row]) -> BTreeMap<NodeId, Follower> {
        table
            .iter()
            .map(|&(name, priority, eligible, preempt, ack)| {
                let f = Follower {
                    acked_round: 1,
                    last_ack: ack.map(Instant::from_millis),
                    priority,
                    eligible,
                    preempt,
                    reachable: None,
                };
                (id(name), f)
            })
            .collect()
    }

    const NOW: Instant = Instant::from_millis(1000);
    const WINDOW: Duration = Duration::from_millis(200);

    #[test]
    fn ranking_is_eligible_and_recent_by_priority_then_id() {
        // (followers, ranked)
        let cases: &[(&[Row], &[&str])] = &[
            (&[], &[]),
            (
                &[
                    ("b", 0, true, false, Some(900)),
                    ("a", 0, true, false, Some(950)),
                ],
                &["a", "b"],
            ),
            (
                &[
                    ("a", 0, true, false, Some(900)),
                    ("b", 2, true, false, Some(900)),
                ],
                &["b", "a"],
            ),
            (
                &[
                    ("a", 5, false, false, Some(999)),
                    ("b", 1, true, false, Some(999)),
                ],
                &["b"],
            ),
            (
                &[
                    ("a", 5, true, false, Some(800)),
                    ("b", 1, true, false, Some(801)),
                ],
                &["b"],
            ),
            (
                &[("a", 5, true, false, None), ("c", 1, true, true, Some(999))],
                &["c"],
            ),
            (
                &[
                    ("d", 1, true, false, Some(990)),
                    ("c", 3, true, false, Some(990)),
                    ("b", 1, true, false, Some(990)),
                    ("a", 0, true, false, Some(990)),
                ],
                &["c", "b", "d", "a"],
            ),
        ];
        for (table, want) in cases {
            let fs = followers(table);
            assert_eq!(ranked(&fs, NOW, WINDOW), ids(want), "{table:?}");
            assert_eq!(
                best(&fs, NOW, WINDOW),
                ids(want).first().cloned(),
                "{table:?}"
            );
        }
    }

    #[test]
    fn a_hand_over_goes_to_the_named_follower_while_it_qualifies_else_the_best() {
        let fs = followers(&[
            ("a", 1, true, false, Some(950)),
            ("b", 0, true, false, Some(950)),
            ("c", 9, false, false, Some(950)),
            ("d", 9, true, false, Some(700)),
        ]);
        // (named, target)
        let cases = [
            (None, Some("a")),
            (Some("b"), Some("b")),  // named beats better ranked
            (Some("c"), Some("a")),  // ineligible
            (Some("d"), Some("a")),  // stale
            (Some("zz"), Some("a")), // unknown
        ];
        for (named, want) in cases {
            let named = named.map(id);
            assert_eq!(
                handoff_target(named.as_ref(), &fs, NOW, WINDOW),
                want.map(id),
                "{named:?}"
            );
        }
        let none_fit = followers(&[
            ("c", 9, false, false, Some(950)),
            ("d", 9, true, false, None),
        ]);
        assert_eq!(handoff_target(Some(&id("c")), &none_fit, NOW, WINDOW), None);
        assert!(!any_eligible_within(&none_fit, NOW, WINDOW));
        assert!(any_eligible_within(&fs, NOW, WINDOW));
    }

    #[test]
    fn a_preemption_goes_to_the_best_recent_eligible_follower_above_the_leader() {
        // (followers, leader priority, preempting)
        let cases: &[(&[Row], u8, Option<&str>)] = &[
            (&[("a", 5, true, true, Some(900))], 4, Some("a")),
            (&[("a", 5, true, true, Some(900))], 5, None), // equal priority: no
            (&[("a", 5, true, false, Some(900))], 0, None), // does not ask
            (&[("a", 5, false, true, Some(900))], 0, None), // ineligible
            (&[("a", 5, true, true, Some(800))], 0, None), // stale
            (
                &[
                    ("a", 3, true, true, Some(900)),
                    ("b", 4, true, true, Some(900)),
                ],
                0,
                Some("b"),
            ),
            (
                &[
                    ("b", 4, true, true, Some(900)),
                    ("a", 4, true, true, Some(900)),
                ],
                0,
                Some("a"),
            ),
        ];
        for (table, leader_priority, want) in cases {
            let fs = followers(table);
            assert_eq!(
                preempting(&fs, NOW, WINDOW, *leader_priority),
                want.map(id),
                "{table:?} over {leader_priority}"
            );
        }
    }

    #[test]
    fn a_switchover_would_be_undone_by_the_first_higher_preempting_node() {
        let fs = followers(&[
            ("a", 2, true, true, Some(900)),
            ("b", 1, true, false, Some(900)),
            ("c", 9, true, true, Some(700)),  // stale
            ("d", 9, false, true, Some(900)), // ineligible
            ("e", 7, true, true, Some(900)),
        ]);
        // (target, its priority, leader's (priority, preempts), would undo it)
        let cases = [
            ("b", 1, (0, false), Some(("a", 2))), // the first in id order, not the highest
            ("b", 1, (5, true), Some(("me", 5))), // the leader is looked at first
            ("b", 1, (5, false), Some(("a", 2))),
            ("a", 2, (0, false), Some(("e", 7))), // the target itself does not count
            ("e", 7, (9, true), Some(("me", 9))),
            ("e", 7, (0, false), None),
            ("b", 9, (0, false), None),
        ];
        for (to, to_priority, (priority, preempts), want) in cases {
            let leader = (id("me"), priority, preempts);
            assert_eq!(
                preempter_of(&id(to), to_priority, leader, &fs, NOW, WINDOW),
                want.map(|(by, p)| (id(by), p)),
                "to {to}"
            );
        }
    }
}
