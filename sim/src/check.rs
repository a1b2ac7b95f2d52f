//! The checkers: what the simulation proves on every run.
//!
//! The [`Checker`] sees what each daemon told its drivers and heard back (the runtime's
//! `DriverRecord`s, converted to global simulated time), the role notices, every durable
//! write and the nodes' status, and records violations of:
//! - **never two services at once**, judged by the one strict checker of the project,
//!   [`clustd_core::check::ServiceChecker`]: a node's service interval starts with the first
//!   "master" notice to one of its (real, simulated) drivers and ends only at an `Ok` stop
//!   acknowledgement or at the end of the last lease a driver holds plus the stop budget —
//!   a "backup" notice, a failed stop or a crash shortens nothing;
//! - **one leader per term**: no two nodes lead, or are named leader, in the same term;
//! - **terms never decrease** on any node, across restarts (status and durable writes);
//! - **one vote per term**: a node's durable vote in a term never changes once cast;
//! - liveness and stability are checked by the harness ([`crate::Cluster::expect_master_within`],
//!   [`crate::Cluster::expect_stable`]), which records violations here too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use clustd_core::check::{ServiceChecker, ServiceInput};
use clustd_core::driver::DriverRole;
use clustd_core::{NodeId, PersistentState};

use crate::store::Save;

/// A role notice as the observer receives it (lease end already in global time).
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// Node index.
    pub node: usize,
    /// Master or backup.
    pub role: DriverRole,
    /// The term of the role, as the driver was told it.
    pub term: u64,
    /// The leader the node named, as a node index.
    pub leader: Option<usize>,
    /// What made the role change (`elected`, `lease-expired`, ...), for the trace.
    pub reason: &'a str,
    /// While master: the end of the lease, in global time.
    pub lease_end: Option<Duration>,
}

/// The checker's name for node `i`.
pub fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("n{i}")).unwrap_or_else(|_| unreachable!("n<digits> is a valid id"))
}

/// The trace hash: FNV-1a, 64 bits, the workspace's one stable hash (std's hasher may
/// change between releases).
pub use clustd_core::hash::Fnv1a as TraceHash;

/// What the daemon last announced for a node (role notices): for the harness's queries
/// ("who is master now?"), never for the safety verdict.
#[derive(Debug, Clone, Copy)]
struct Announced {
    term: u64,
    lease_end: Duration,
}

/// Records what drivers were told and checks the invariants as it goes.
#[derive(Debug, Default)]
pub struct Checker {
    /// The one strict checker of service intervals.
    pub service: ServiceChecker,
    /// Stop budget per node, real time (what `election.stop_budget_ms` promises).
    pub stop_budget: Duration,
    /// How many of the service checker's violations are already in `violations`.
    service_seen: usize,
    /// Nodes whose daemon announced "master" last (role notices).
    announced: BTreeMap<usize, Announced>,
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
    /// Driver records fed to the service checker.
    pub records: u64,
    /// "master" notices that reached the service checker (told to a connected driver).
    pub told_master: u64,
    /// Global time of the latest record fed.
    last_record: Duration,
    /// Successful fences: when each was heard, and the node.
    pub fences: Vec<(Duration, usize)>,
    /// Watchdog resets: when each machine's watchdog fired (its deadline; the checker
    /// counts the machine as reset at the end of that tick).
    pub resets: Vec<(Duration, usize)>,
}

fn ms(t: Duration) -> String {
    format!("{:.3}s", t.as_secs_f64())
}

impl Checker {
    /// An observer for nodes with this stop budget.
    pub fn new(stop_budget: Duration) -> Self {
        Self {
            stop_budget,
            ..Self::default()
        }
    }

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

    /// A role notice from node `node` during the tick `[start, end]`: the trace, terms,
    /// leaders, failover timing and who is master now. Not the safety verdict: that comes
    /// from the driver records ([`Checker::on_record`]).
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
                self.announced.insert(
                    node,
                    Announced {
                        term,
                        lease_end: lease_end.unwrap_or(end),
                    },
                );
                self.master_terms.push(term);
                if let Some((since, old)) = self.failover_from
                    && old != node
                {
                    self.failovers.push(start.saturating_sub(since));
                    self.failover_from = None;
                }
            }
            DriverRole::Backup => {
                self.announced.remove(&node);
            }
        }
    }

    /// The lease the daemon of `node` holds now ends at `lease_end` (global time).
    pub fn on_lease(&mut self, node: usize, lease_end: Duration) {
        if let Some(a) = self.announced.get_mut(&node) {
            a.lease_end = a.lease_end.max(lease_end);
        }
    }

    /// One driver record of `node` at global time `at`, fed to the service checker (in
    /// global time order across nodes: the harness sorts each tick's records).
    pub fn on_record(&mut self, at: Duration, node: usize, input: &ServiceInput) {
        self.records += 1;
        // Converting node clocks to global time rounds by a nanosecond or so; records of one
        // tick are sorted, but a tick boundary may still step back by that much.
        if at + Duration::from_micros(1) < self.last_record {
            let last = self.last_record;
            self.violation(
                at,
                format!("driver records out of order: {at:?} after {last:?} (a harness bug)"),
            );
        }
        let at = at.max(self.last_record);
        self.last_record = at;
        match input {
            ServiceInput::ToldMaster {
                driver,
                term,
                lease_end,
            } => {
                self.told_master += 1;
                self.event(
                    at,
                    format!(
                        "n{node} told driver {driver} master (term {term}), lease to {}",
                        ms(*lease_end)
                    ),
                );
            }
            ServiceInput::StopConfirmed { driver } => {
                self.event(at, format!("n{node} driver {driver} confirmed its stop"));
            }
            ServiceInput::StopFailed { driver } => {
                self.event(
                    at,
                    format!("n{node} driver {driver} reported a FAILED stop"),
                );
            }
            ServiceInput::Fenced { driver } => {
                self.fences.push((at, node));
                self.event(at, format!("n{node} fenced driver {driver}'s service"));
            }
            ServiceInput::MachineReset => {
                self.event(at, format!("n{node}'s machine reset (watchdog)"));
            }
            _ => {}
        }
        self.service
            .feed(at, &node_id(node), input, self.stop_budget);
        self.take_service_violations(at);
    }

    fn take_service_violations(&mut self, at: Duration) {
        let new: Vec<String> = self.service.violations()[self.service_seen..]
            .iter()
            .map(ToString::to_string)
            .collect();
        self.service_seen += new.len();
        for v in new {
            self.violation(at, v);
        }
    }

    /// Node `node`'s daemon is gone (crash or exit): its drivers run on until their lease
    /// plus the stop budget.
    pub fn on_down(&mut self, node: usize, at: Duration) {
        self.announced.remove(&node);
        self.service.crashed(at, &node_id(node));
        self.event(at, format!("n{node} down"));
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

    /// A node's state was wiped while it was down (a scenario that models an operator
    /// moving a corrupt state file away): its next writes start over.
    pub fn forget_disk(&mut self, node: usize) {
        self.votes.remove(&node);
        self.terms.remove(&node);
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

    /// The node whose daemon says it is master now (its last notice was "master" and its
    /// lease has not run out), the highest term first.
    pub fn master_at(&self, now: Duration) -> Option<usize> {
        self.announced
            .iter()
            .filter(|(_, a)| a.lease_end >= now)
            .max_by_key(|(_, a)| a.term)
            .map(|(node, _)| *node)
    }

    /// Node `node`'s watchdog fired at `at` (its deadline).
    pub fn watchdog_fired(&mut self, at: Duration, node: usize) {
        self.resets.push((at, node));
    }

    /// The end (global time) of the last lease node's daemon announced to its drivers.
    pub fn announced_lease_end(&self, node: usize) -> Option<Duration> {
        self.announced.get(&node).map(|a| a.lease_end)
    }

    /// The term of node's current "master" announcement.
    pub fn master_term(&self, node: usize) -> Option<u64> {
        self.announced.get(&node).map(|a| a.term)
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

    fn driver(s: &str) -> NodeId {
        NodeId::new(s).expect("valid")
    }

    #[test]
    fn driver_records_reach_the_strict_checker() {
        let mut o = Checker::new(T(200));
        let told = |d: &str, term, lease| ServiceInput::ToldMaster {
            driver: driver(d),
            term: clustd_core::Term(term),
            lease_end: T(lease),
        };
        o.on_record(T(1000), 0, &told("d0", 1, 1700));
        // A failed stop ends nothing: a master elsewhere before 1700 + 200 overlaps.
        o.on_record(
            T(1100),
            0,
            &ServiceInput::StopFailed {
                driver: driver("d0"),
            },
        );
        o.on_record(T(1850), 1, &told("d1", 2, 2550));
        assert_eq!(o.violations.len(), 1, "{:?}", o.violations);
        assert!(
            o.violations[0].contains("two services at once"),
            "{:?}",
            o.violations
        );
        // An Ok stop does end it.
        let mut o = Checker::new(T(200));
        o.on_record(T(1000), 0, &told("d0", 1, 1700));
        o.on_record(
            T(1100),
            0,
            &ServiceInput::StopConfirmed {
                driver: driver("d0"),
            },
        );
        o.on_record(T(1150), 1, &told("d1", 2, 1850));
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        // A crash ends nothing either.
        o.on_down(1, T(1200));
        o.on_record(T(1900), 2, &told("d2", 3, 2600));
        assert_eq!(o.violations.len(), 1, "{:?}", o.violations);
    }

    #[test]
    fn double_votes_decreasing_terms_and_two_leaders_are_reported() {
        let mut o = Checker::default();
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
