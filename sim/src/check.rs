//! The checkers: what the simulation proves on every run.
//!
//! The [`Observer`] sees what drivers see (role notices and lease ends, converted to global
//! simulated time) plus every durable write and the nodes' status, and records violations of:
//! - **one leader per term**: no two nodes lead, or are named leader, in the same term;
//! - **disjoint master intervals**: a node is master (as its drivers see it) from the
//!   "master" notice until the "backup" notice or the end of its last lease, whichever is
//!   first; after a crash, until that lease end (its drivers keep running until then). No two
//!   nodes' intervals may overlap in global time;
//! - **terms never decrease** on any node, across restarts (status and durable writes);
//! - **one vote per term**: a node's durable vote in a term never changes once cast;
//! - liveness and stability are checked by the harness ([`crate::Cluster::expect_master_within`],
//!   [`crate::Cluster::expect_stable`]), which records violations here too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use clustd_core::{DriverRole, PersistentState};

use crate::store::Save;

/// A master interval as drivers saw it, in global simulated time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterInterval {
    /// Node index.
    pub node: usize,
    /// Fencing token.
    pub term: u64,
    /// When drivers were told "master".
    pub start: Duration,
    /// When drivers stopped (told "backup", or the lease ran out); `None` while open.
    pub end: Option<Duration>,
    /// The end of the lease last given to drivers.
    pub lease_end: Duration,
}

impl MasterInterval {
    /// Where the interval ends, assuming it is still open at `now`.
    pub fn end_or(&self, now: Duration) -> Duration {
        self.end.unwrap_or(now.min(self.lease_end))
    }
}

/// A role notice as the observer receives it (lease end already in global time).
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// Node index.
    pub node: usize,
    /// Master or backup.
    pub role: DriverRole,
    /// Term.
    pub term: u64,
    /// The leader the node named, as a node index.
    pub leader: Option<usize>,
    /// Why.
    pub reason: &'a str,
    /// While master: the end of the lease, in global time.
    pub lease_end: Option<Duration>,
}

/// FNV-1a, 64 bits: a stable hash for traces (std's hasher may change between releases).
#[derive(Debug, Clone, Copy)]
pub struct TraceHash(u64);

impl Default for TraceHash {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl TraceHash {
    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Feeds a number.
    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }

    /// The hash so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Records what drivers saw and checks the invariants as it goes.
#[derive(Debug, Default)]
pub struct Observer {
    /// Master intervals, in the order they started.
    pub intervals: Vec<MasterInterval>,
    /// Index into `intervals` of each node's open interval.
    open: BTreeMap<usize, usize>,
    /// Who led each term (from "master" notices, status and the leader named in notices).
    pub leaders: BTreeMap<u64, usize>,
    /// Highest term seen per node (status and writes).
    terms: BTreeMap<usize, u64>,
    /// Latest durable state per node, for the one-vote check.
    votes: BTreeMap<usize, PersistentState>,
    /// What went wrong, with simulated time.
    pub violations: Vec<String>,
    /// Human-readable events (the tail is printed on failure).
    pub events: Vec<String>,
    /// Hash of everything observed (the determinism tests compare it).
    pub hash: TraceHash,
    /// Failover times: from a fault that took the master away to the next master.
    pub failovers: Vec<Duration>,
    /// Set when the master was taken away; cleared by the next master.
    failover_from: Option<(Duration, usize)>,
    /// Every term in which some node became master.
    pub master_terms: Vec<u64>,
    /// Intervals opened during the current tick, checked at its end (when every node's
    /// notices of the tick are in, so a hand-over within one tick is not misread).
    unchecked: Vec<usize>,
}

fn ms(t: Duration) -> String {
    format!("{:.3}s", t.as_secs_f64())
}

impl Observer {
    /// Records an event in the trace.
    pub fn event(&mut self, at: Duration, text: String) {
        self.hash
            .write_u64(u64::try_from(at.as_nanos()).unwrap_or(u64::MAX));
        self.hash.write(text.as_bytes());
        self.events.push(format!("{} {text}", ms(at)));
    }

    /// Records a violation.
    pub fn violation(&mut self, at: Duration, text: String) {
        let text = format!("at {}: {text}", ms(at));
        self.event(at, format!("VIOLATION {text}"));
        self.violations.push(text);
    }

    /// A role notice from node `node`: `start` is the beginning of the tick it happened
    /// in, `end` the end (masters start early, backups end late: the check errs on the
    /// side of reporting).
    pub fn on_notice(&mut self, notice: &Seen<'_>, (start, end): (Duration, Duration)) {
        let Seen {
            node,
            role,
            term,
            leader,
            reason,
            lease_end,
        } = *notice;
        self.event(
            end,
            format!(
                "n{node} {} term {term} leader {leader:?} ({reason})",
                role.as_str()
            ),
        );
        self.note_term(end, node, term);
        if let Some(l) = leader {
            self.note_leader(end, term, l, "named leader in a notice");
        }
        match role {
            DriverRole::Master => {
                self.note_leader(end, term, node, "became master");
                self.close(node, end);
                let lease_end = lease_end.unwrap_or(end);
                self.open.insert(node, self.intervals.len());
                self.intervals.push(MasterInterval {
                    node,
                    term,
                    start,
                    end: None,
                    lease_end,
                });
                self.master_terms.push(term);
                self.unchecked.push(self.intervals.len() - 1);
                if let Some((since, old)) = self.failover_from
                    && old != node
                {
                    self.failovers.push(start.saturating_sub(since));
                    self.failover_from = None;
                }
            }
            DriverRole::Backup => self.close(node, end),
        }
    }

    /// The lease drivers of `node` were last told ends at `lease_end` (global time);
    /// seen during the tick `[start, end]`.
    pub fn on_lease(
        &mut self,
        node: usize,
        lease_end: Duration,
        (start, end): (Duration, Duration),
    ) {
        let Some(&i) = self.open.get(&node) else {
            return;
        };
        let interval = &mut self.intervals[i];
        if lease_end <= interval.lease_end {
            return;
        }
        if interval.lease_end < start {
            // The drivers' lease had run out (they stopped) before this renewal reached
            // them without a new "master" notice: count a new interval from here.
            let term = interval.term;
            interval.end = Some(interval.lease_end.max(interval.start));
            self.event(end, format!("n{node} lease renewed after it had expired"));
            self.open.insert(node, self.intervals.len());
            self.intervals.push(MasterInterval {
                node,
                term,
                start,
                end: None,
                lease_end,
            });
            self.unchecked.push(self.intervals.len() - 1);
        } else {
            interval.lease_end = lease_end;
        }
    }

    /// Node `node` is gone (crash or exit): its drivers run until its lease ends.
    pub fn on_down(&mut self, node: usize, at: Duration) {
        if let Some(i) = self.open.remove(&node) {
            let interval = &mut self.intervals[i];
            interval.end = Some(interval.lease_end.max(interval.start));
            let stop = ms(interval.lease_end);
            self.event(
                at,
                format!("n{node} down while master; its drivers stop at {stop}"),
            );
        }
    }

    /// A fault took (or may have taken) the master `node` away at `at`: time the failover.
    pub fn failover_started(&mut self, at: Duration, node: usize) {
        if self.failover_from.is_none() {
            self.failover_from = Some((at, node));
        }
    }

    /// Abandons a failover measurement (another fault interfered).
    pub fn cancel_failover(&mut self) {
        self.failover_from = None;
    }

    fn close(&mut self, node: usize, at: Duration) {
        if let Some(i) = self.open.remove(&node) {
            let interval = &mut self.intervals[i];
            // Drivers stop at the lease end at the latest, even if told later.
            interval.end = Some(at.min(interval.lease_end).max(interval.start));
        }
    }

    /// Status of a node, sampled every tick: its protocol role and term.
    pub fn on_status(&mut self, at: Duration, node: usize, term: u64, is_leader: bool) {
        self.note_term(at, node, term);
        if is_leader {
            self.note_leader(at, term, node, "leader in status");
        }
    }

    /// A durable write.
    pub fn on_save(&mut self, save: &Save) {
        let Save { at, node, state } = save;
        self.event(
            *at,
            format!(
                "n{node} saved term {} vote {:?}",
                state.term.0,
                state.voted_for.as_ref().map(ToString::to_string)
            ),
        );
        if let Some(prev) = self.votes.get(node) {
            if state.term < prev.term {
                self.violation(
                    *at,
                    format!(
                        "n{node} wrote term {} after term {}: terms must never decrease",
                        state.term.0, prev.term.0
                    ),
                );
            } else if state.term == prev.term
                && prev.voted_for.is_some()
                && state.voted_for != prev.voted_for
            {
                self.violation(
                    *at,
                    format!(
                        "n{node} voted twice in term {}: first for {:?}, then {:?}",
                        state.term.0,
                        prev.voted_for.as_ref().map(ToString::to_string),
                        state.voted_for.as_ref().map(ToString::to_string)
                    ),
                );
            }
        }
        // Not compared with the status terms: a tick's writes are drained after its
        // status, which already shows the last of them.
        self.votes.insert(*node, state.clone());
    }

    fn note_term(&mut self, at: Duration, node: usize, term: u64) {
        let prev = self.terms.entry(node).or_insert(term);
        if term < *prev {
            let prev = *prev;
            self.violation(at, format!("n{node} is in term {term} after term {prev}: terms must never decrease (across restarts too)"));
        } else {
            *prev = term;
        }
    }

    fn note_leader(&mut self, at: Duration, term: u64, node: usize, how: &str) {
        match self.leaders.get(&term) {
            Some(&other) if other != node => {
                self.violation(
                    at,
                    format!("two leaders in term {term}: n{other} and n{node} ({how})"),
                );
            }
            Some(_) => {}
            None => {
                self.leaders.insert(term, node);
            }
        }
    }

    /// Ends a tick: checks the intervals opened during it against all others.
    pub fn end_tick(&mut self, now: Duration) {
        for index in std::mem::take(&mut self.unchecked) {
            self.check_overlap_of(index, now);
        }
    }

    fn check_overlap_of(&mut self, index: usize, now: Duration) {
        let new = self.intervals[index].clone();
        let found: Vec<MasterInterval> = self
            .intervals
            .iter()
            .filter(|other| {
                other.node != new.node && other.end_or(now) > new.start && new.start >= other.start
            })
            .cloned()
            .collect();
        for other in found {
            self.violation(
                now,
                format!(
                    "two masters: n{} (term {}) became master at {} while n{} (term {}, master since {}) was master until {}",
                    new.node,
                    new.term,
                    ms(new.start),
                    other.node,
                    other.term,
                    ms(other.start),
                    ms(other.end_or(now))
                ),
            );
        }
    }

    /// Final pass over all intervals (catches overlaps that lease extensions created later).
    pub fn final_check(&mut self, now: Duration) {
        let mut found = Vec::new();
        for (i, a) in self.intervals.iter().enumerate() {
            for b in &self.intervals[i + 1..] {
                if a.node != b.node && a.start < b.end_or(now) && b.start < a.end_or(now) {
                    found.push((a.clone(), b.clone()));
                }
            }
        }
        for (a, b) in found {
            let text = format!(
                "master intervals overlap: n{} term {} [{}, {}] and n{} term {} [{}, {}]",
                a.node,
                a.term,
                ms(a.start),
                ms(a.end_or(now)),
                b.node,
                b.term,
                ms(b.start),
                ms(b.end_or(now))
            );
            if !self
                .violations
                .iter()
                .any(|v| v.contains(&format!("n{} (term {})", b.node, b.term)))
            {
                self.violation(now, text);
            }
        }
    }

    /// The node whose drivers run the service now, if any.
    pub fn master_at(&self, now: Duration) -> Option<usize> {
        self.open
            .iter()
            .map(|(node, i)| (*node, &self.intervals[*i]))
            .find(|(_, interval)| interval.lease_end >= now)
            .map(|(node, _)| node)
    }

    /// The term of node's open master interval.
    pub fn master_term(&self, node: usize) -> Option<u64> {
        self.open.get(&node).map(|i| self.intervals[*i].term)
    }

    /// The last `n` events, one per line.
    pub fn tail(&self, n: usize) -> String {
        let mut out = String::new();
        for e in &self.events[self.events.len().saturating_sub(n)..] {
            let _ = writeln!(out, "  {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn overlapping_masters_are_reported_and_disjoint_ones_are_not() {
        let mut o = Observer::default();
        o.on_notice(
            &Seen {
                node: 0,
                role: DriverRole::Master,
                term: 1,
                leader: Some(0),
                reason: "elected",
                lease_end: Some(T(1700)),
            },
            (T(1000), T(1005)),
        );
        o.on_notice(
            &Seen {
                node: 0,
                role: DriverRole::Backup,
                term: 1,
                leader: None,
                reason: "lease-expired",
                lease_end: None,
            },
            (T(1700), T(1705)),
        );
        o.on_notice(
            &Seen {
                node: 1,
                role: DriverRole::Master,
                term: 2,
                leader: Some(1),
                reason: "elected",
                lease_end: Some(T(2800)),
            },
            (T(2100), T(2105)),
        );
        o.end_tick(T(2105));
        o.final_check(T(3000));
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        // A crashed master's drivers run until its lease ends.
        o.on_down(1, T(2200));
        o.on_notice(
            &Seen {
                node: 2,
                role: DriverRole::Master,
                term: 3,
                leader: Some(2),
                reason: "elected",
                lease_end: Some(T(3000)),
            },
            (T(2500), T(2505)),
        );
        o.end_tick(T(2505));
        assert!(
            o.violations.iter().any(|v| v.contains("two masters")),
            "{:?}",
            o.violations
        );
    }

    #[test]
    fn double_votes_decreasing_terms_and_two_leaders_are_reported() {
        let mut o = Observer::default();
        let id = |s: &str| clustd_core::NodeId::new(s).ok();
        let save = |at, term, vote: Option<clustd_core::NodeId>| Save {
            at: T(at),
            node: 0,
            state: PersistentState {
                term: clustd_core::Term(term),
                voted_for: vote,
            },
        };
        o.on_save(&save(1, 3, id("a")));
        o.on_save(&save(2, 3, id("b")));
        assert!(o.violations.iter().any(|v| v.contains("voted twice")));
        o.on_save(&save(3, 2, None));
        assert!(o.violations.iter().any(|v| v.contains("never decrease")));
        o.on_status(T(4), 1, 5, true);
        o.on_status(T(4), 2, 5, true);
        assert!(
            o.violations
                .iter()
                .any(|v| v.contains("two leaders in term 5"))
        );
    }
}
