//! The transition machinery, free of sockets and clocks: the queue that orders (and, where
//! it is safe, collapses) role transitions, and the fail-safe lease a master driver holds.
//! The engine feeds both with the time; unit tests drive them by hand.

use std::collections::VecDeque;

use clustd_core::driver::DriverRole;
use clustd_core::{NodeId, Term};
use tokio::time::Instant;

use crate::driver::{ChangeSource, RoleChange};

/// Where to send the acknowledgement of a transition the daemon asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AckTo {
    /// The connection the `Role` came on; an ack is never sent on another one.
    pub(crate) conn: u64,
    /// The daemon's sequence number of the `Role`.
    pub(crate) seq: u64,
}

/// A role transition waiting to be handed to the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) role: DriverRole,
    pub(crate) term: Term,
    pub(crate) node: Option<NodeId>,
    pub(crate) leader: Option<NodeId>,
    pub(crate) reason: String,
    pub(crate) source: ChangeSource,
    /// `Some` when it came from the daemon and must be acknowledged.
    pub(crate) ack: Option<AckTo>,
    /// When the driver decided on it (the notice arrived, or the lease ran out): a stop's
    /// duration is counted from here, as `election.stop_budget_ms` is.
    pub(crate) decided_at: Instant,
}

impl Transition {
    /// The change handed to the driver, given what it was handed last.
    pub(crate) fn to_change(&self, previous: Option<&Transition>) -> RoleChange {
        RoleChange {
            role: self.role,
            term: self.term,
            node: self.node.clone(),
            leader: self.leader.clone(),
            previous_role: previous.map(|p| p.role),
            previous_leader: previous.and_then(|p| p.leader.clone()),
            reason: self.reason.clone(),
            source: self.source,
            stop_budget: None,
        }
    }

    /// Whether handing this to the driver after `other` would change nothing.
    pub(crate) fn same_state_as(&self, other: &Transition) -> bool {
        self.role == other.role && self.term == other.term && self.leader == other.leader
    }
}

/// Transitions waiting while the driver acts on an earlier one, oldest first.
///
/// Collapsing rules (applied against the newest waiting transition, repeatedly):
/// - a newer transition to the *same* role replaces the waiting one (latest term/leader wins);
/// - a `Backup` replaces a waiting `Master`: a start that would be stopped at once is skipped.
///
/// A waiting `Backup` followed by `Master` is never collapsed: the stop must run before the
/// next start, or the service could keep running through a window in which another node was
/// master. The newest transition is always kept, so the last one always runs.
#[derive(Debug, Default)]
pub(crate) struct TransitionQueue {
    pending: VecDeque<Transition>,
}

impl TransitionQueue {
    /// Queues `next`; returns the waiting transitions it superseded, oldest first, so the
    /// caller can acknowledge them.
    pub(crate) fn push(&mut self, next: Transition) -> Vec<Transition> {
        let mut superseded = Vec::new();
        while let Some(last) = self.pending.back() {
            let collapses = last.role == next.role
                || (last.role == DriverRole::Master && next.role == DriverRole::Backup);
            if !collapses {
                break;
            }
            superseded.extend(self.pending.pop_back());
        }
        superseded.reverse();
        self.pending.push_back(next);
        superseded
    }

    /// The oldest waiting transition.
    pub(crate) fn pop(&mut self) -> Option<Transition> {
        self.pending.pop_front()
    }

    /// Whether a `Backup` waits (it is then the oldest: a `Backup` supersedes a waiting
    /// `Master` behind it).
    pub(crate) fn has_backup(&self) -> bool {
        self.pending.iter().any(|t| t.role == DriverRole::Backup)
    }

    /// How many transitions wait.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

/// What a renewal did to the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// The deadline moved.
    Extended,
    /// No lease is held (not master, or it already ran out): nothing is restarted.
    NotHeld,
    /// The renewal names another term than the lease held; ignored.
    OtherTerm,
}

/// The lease a master driver holds: it is master until `deadline` unless renewed.
///
/// The engine computes each deadline from the daemon's send time (`Engine::lease_end`),
/// so it can only end earlier than the daemon's own lease. Pure: the caller passes the time.
#[derive(Debug, Default)]
pub(crate) struct FailSafeLease {
    held: Option<(Term, Instant)>,
}

impl FailSafeLease {
    /// Takes a lease for `term`, ending at `deadline`, on becoming master.
    pub(crate) fn grant(&mut self, term: Term, deadline: Instant) {
        self.held = Some((term, deadline));
    }

    /// Applies a renewal that arrived by `now`: moves the deadline to `deadline`. Only a
    /// *current* lease is renewed — held, for this term, and not run out by `now` — so a
    /// renewal that comes after the end never revives it, whatever it says. The newest
    /// renewal wins even if it shortens the lease: it is the daemon's latest word.
    pub(crate) fn renew(&mut self, term: Term, now: Instant, deadline: Instant) -> Renewal {
        match &mut self.held {
            None => Renewal::NotHeld,
            Some((held_term, _)) if *held_term != term => Renewal::OtherTerm,
            Some((_, held)) if now >= *held => Renewal::NotHeld,
            Some((_, held)) => {
                *held = deadline;
                Renewal::Extended
            }
        }
    }

    /// Drops the lease (the daemon said backup).
    pub(crate) fn release(&mut self) {
        self.held = None;
    }

    /// When the lease runs out, if one is held.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.held.map(|(_, deadline)| deadline)
    }

    /// If the lease has run out at `now`, drops it and returns its term.
    pub(crate) fn expire_if_due(&mut self, now: Instant) -> Option<Term> {
        match self.held {
            Some((term, deadline)) if now >= deadline => {
                self.held = None;
                Some(term)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(role: DriverRole, seq: u64) -> Transition {
        Transition {
            role,
            term: Term(seq),
            node: None,
            leader: None,
            reason: format!("r{seq}"),
            source: ChangeSource::Daemon,
            ack: Some(AckTo { conn: 1, seq }),
            decided_at: Instant::now(),
        }
    }

    fn seqs(q: &mut TransitionQueue) -> Vec<(DriverRole, u64)> {
        std::iter::from_fn(|| q.pop())
            .map(|t| (t.role, t.ack.expect("from daemon").seq))
            .collect()
    }

    use DriverRole::{Backup, Master};

    #[test]
    fn order_is_kept_when_nothing_collapses() {
        let mut q = TransitionQueue::default();
        assert!(q.push(t(Backup, 1)).is_empty());
        assert!(q.push(t(Master, 2)).is_empty());
        assert_eq!(q.len(), 2);
        assert_eq!(seqs(&mut q), vec![(Backup, 1), (Master, 2)]);
    }

    #[test]
    fn backup_then_master_never_collapses() {
        let mut q = TransitionQueue::default();
        q.push(t(Master, 1));
        q.push(t(Backup, 2));
        q.push(t(Master, 3));
        // Master 1 is skipped (stopped at once), but the stop before Master 3 stays.
        assert_eq!(seqs(&mut q), vec![(Backup, 2), (Master, 3)]);
    }

    #[test]
    fn master_then_backup_collapses_and_reports_superseded() {
        let mut q = TransitionQueue::default();
        q.push(t(Backup, 1));
        q.push(t(Master, 2));
        let gone = q.push(t(Backup, 3));
        let gone: Vec<u64> = gone.iter().map(|t| t.ack.expect("daemon").seq).collect();
        assert_eq!(gone, vec![1, 2]);
        assert_eq!(seqs(&mut q), vec![(Backup, 3)]);
    }

    #[test]
    fn same_role_keeps_the_latest() {
        let mut q = TransitionQueue::default();
        q.push(t(Master, 1));
        q.push(t(Master, 2));
        assert_eq!(seqs(&mut q), vec![(Master, 2)]);
    }

    #[test]
    fn the_last_transition_always_survives() {
        // Every sequence of pushes ends with the last pushed transition at the back.
        for pattern in 0u32..256 {
            let mut q = TransitionQueue::default();
            let mut last = None;
            for i in 0..8u64 {
                let role = if pattern & (1 << i) != 0 {
                    Master
                } else {
                    Backup
                };
                q.push(t(role, i));
                last = Some((role, i));
            }
            let all = seqs(&mut q);
            assert_eq!(all.last().copied(), last);
            // Never two adjacent transitions to the same role, and never Master then Backup.
            for pair in all.windows(2) {
                assert_eq!(pair[0].0, Backup, "{all:?}");
                assert_eq!(pair[1].0, Master, "{all:?}");
            }
        }
    }

    #[test]
    fn renewals_extend_only_a_current_lease() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut lease = FailSafeLease::default();
        assert_eq!(lease.renew(Term(3), now, now + ms(1000)), Renewal::NotHeld);
        lease.grant(Term(3), now + ms(1000));
        assert_eq!(lease.deadline(), Some(now + ms(1000)));
        assert_eq!(lease.expire_if_due(now + ms(999)), None);
        let later = now + ms(800);
        assert_eq!(
            lease.renew(Term(3), later, later + ms(1000)),
            Renewal::Extended
        );
        assert_eq!(
            lease.renew(Term(4), later, later + ms(9000)),
            Renewal::OtherTerm
        );
        assert_eq!(lease.expire_if_due(now + ms(1500)), None);
        // Arriving at (or after) the end, a renewal revives nothing, even before the
        // expiry was noticed.
        let end = later + ms(1000);
        assert_eq!(lease.renew(Term(3), end, end + ms(1000)), Renewal::NotHeld);
        assert_eq!(lease.deadline(), Some(end));
        assert_eq!(lease.expire_if_due(end), Some(Term(3)));
        assert_eq!(lease.deadline(), None);
        assert_eq!(
            lease.renew(Term(3), later, later + ms(1000)),
            Renewal::NotHeld
        );
    }

    #[test]
    fn release_drops_the_lease() {
        let now = Instant::now();
        let mut lease = FailSafeLease::default();
        lease.grant(Term(1), now);
        lease.release();
        assert_eq!(lease.expire_if_due(now + Duration::from_secs(10)), None);
    }
}
