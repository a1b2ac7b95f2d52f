//! The one checker of "never two masters": service intervals in global time.
//!
//! The promise is about where the *service* runs, and the service runs where drivers run
//! it. So this checker is fed with what a node's daemon tells its drivers and what the
//! drivers answer, all in one global (real) time, and never with roles:
//! - a node's **service interval starts** when its daemon first sends one of its drivers a
//!   "master" notice ([`ServiceChecker::told_master`]);
//! - it **ends** when every driver that was told "master" has ended, each at the earliest of
//!   - its `Ok` acknowledgement of "backup" (the stop completed: [`ServiceChecker::stop_confirmed`]),
//!   - the end of the last lease it holds ([`ServiceChecker::lease`]) **plus the stop budget**
//!     (the time a stop may take once the driver decides to stop) — unless the driver is
//!     frozen ([`ServiceChecker::frozen`]: SIGSTOPped, wedged), when a lease ends nothing
//!     until the driver thaws ([`ServiceChecker::thawed`]: it acts on its lease from then on),
//!   - a successful fence run by its daemon for it ([`ServiceChecker::fenced`]: the daemon's
//!     `[fence]` killed the service), at the fence's completion,
//!   - a reset of its machine (a watchdog firing: [`ServiceChecker::machine_reset`]).
//!
//! A "backup" notice shortens nothing (it can be lost or late), a failed or timed-out stop
//! ends nothing ([`ServiceChecker::stop_failed`] only records it), and a crashed daemon's
//! drivers keep running until their lease plus the stop budget ([`ServiceChecker::crashed`]).
//! A violation is a service interval of one node starting before an interval of another
//! node has ended.
//!
//! Pure and deterministic: no clock, no I/O. Feed events in non-decreasing global time; a
//! lease end may lie in the future. Used by the core harness, the simulation, the failover
//! bench and the demo, so that they all prove the same thing.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::ids::{NodeId, Term};

/// A broken promise (or, from the harness and simulation, another invariant), as text that
/// names both nodes, their terms, and why each interval ends where it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why one driver's part of a service interval ends where it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The driver acknowledged "backup" with `Ok` at this time.
    StopConfirmed(Duration),
    /// The driver's lease ends at this time; the interval ends a stop budget later.
    LeaseEnd(Duration),
    /// The daemon's fence for the driver succeeded at this time.
    Fenced(Duration),
    /// The machine was reset (a watchdog fired) at this time.
    MachineReset(Duration),
    /// The driver is frozen since this time and nothing stopped it yet: no end in sight.
    Frozen(Duration),
    /// The driver thawed at this time, after its lease had ended: it stops from then on,
    /// within the stop budget.
    Thawed(Duration),
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StopConfirmed(at) => write!(f, "stop confirmed at {at:?}"),
            Self::LeaseEnd(at) => write!(f, "lease end {at:?} + stop budget"),
            Self::Fenced(at) => write!(f, "fenced at {at:?}"),
            Self::MachineReset(at) => write!(f, "machine reset at {at:?}"),
            Self::Frozen(at) => write!(f, "frozen since {at:?}, neither fenced nor reset"),
            Self::Thawed(at) => write!(f, "thawed at {at:?} after its lease end, + stop budget"),
        }
    }
}

/// How a driver's service was surely stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Its `Ok` to "backup".
    Confirmed,
    /// Its daemon's successful fence.
    Fenced,
    /// Its machine's reset.
    Reset,
}

/// One driver's view while its node's interval is open.
#[derive(Clone, Debug)]
struct DriverRun {
    lease_end: Duration,
    stopped: Option<(Duration, Stop)>,
    failed_stops: u32,
    /// Frozen since (the driver cannot act on its lease).
    frozen: Option<Duration>,
    /// The latest thaw: a driver thawed after its lease end stops from then on.
    thawed: Option<Duration>,
}

impl DriverRun {
    /// Where the driver's own handling of its lease ends the service, ignoring any stop.
    fn lease_based_end(&self, stop_budget: Duration) -> (Duration, EndReason) {
        if let Some(since) = self.frozen {
            return (Duration::MAX, EndReason::Frozen(since));
        }
        match self.thawed {
            Some(at) if at > self.lease_end => (at + stop_budget, EndReason::Thawed(at)),
            _ => (
                self.lease_end + stop_budget,
                EndReason::LeaseEnd(self.lease_end),
            ),
        }
    }

    fn end(&self, stop_budget: Duration) -> (Duration, EndReason) {
        let (lease_based, why) = self.lease_based_end(stop_budget);
        match self.stopped {
            // A stop after the lease-based end changes nothing: it had stopped by then.
            Some((at, how)) if at < lease_based => (
                at,
                match how {
                    Stop::Confirmed => EndReason::StopConfirmed(at),
                    Stop::Fenced => EndReason::Fenced(at),
                    Stop::Reset => EndReason::MachineReset(at),
                },
            ),
            _ => (lease_based, why),
        }
    }
}

/// A node's service interval, open or closed.
#[derive(Clone, Debug)]
struct Open {
    term: Term,
    start: Duration,
    stop_budget: Duration,
    drivers: BTreeMap<NodeId, DriverRun>,
    crashed: Option<Duration>,
}

impl Open {
    /// The end as known now, and the driver and reason that set it (the latest driver end).
    fn end(&self) -> (Duration, Option<(NodeId, EndReason)>) {
        self.drivers
            .iter()
            .map(|(d, run)| {
                let (end, why) = run.end(self.stop_budget);
                (end, Some((d.clone(), why)))
            })
            .max_by_key(|(end, _)| *end)
            .unwrap_or((self.start, None))
    }

    fn describe(&self, node: &NodeId) -> String {
        let (end, why) = self.end();
        let why = why.map_or_else(String::new, |(driver, why)| {
            format!(" (driver {driver}: {why})")
        });
        let crashed = self
            .crashed
            .map_or_else(String::new, |at| format!(", daemon crashed at {at:?}"));
        let failed: u32 = self.drivers.values().map(|r| r.failed_stops).sum();
        let failed = if failed > 0 {
            format!(", {failed} failed stop(s)")
        } else {
            String::new()
        };
        let end = if end == Duration::MAX {
            "(no end)".to_string()
        } else {
            format!("{end:?}")
        };
        format!(
            "{node} (term {}) {:?}..{end}{why}{crashed}{failed}",
            self.term, self.start
        )
    }
}

/// A finished service interval, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInterval {
    /// The node whose drivers ran the service.
    pub node: NodeId,
    /// The term of the first "master" notice of the interval.
    pub term: Term,
    /// When the first "master" notice was sent.
    pub start: Duration,
    /// When the last driver had surely stopped.
    pub end: Duration,
}

/// One input of the checker, for callers that gather inputs first (from logs, from several
/// nodes) and feed them in time order later with [`ServiceChecker::feed`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceInput {
    /// See [`ServiceChecker::told_master`].
    ToldMaster {
        /// The driver that was told "master".
        driver: NodeId,
        /// The term of the notice.
        term: Term,
        /// The end of the lease the driver holds, global time.
        lease_end: Duration,
    },
    /// See [`ServiceChecker::lease`].
    Lease {
        /// The driver whose lease was renewed.
        driver: NodeId,
        /// The end of the lease the driver now holds, global time.
        lease_end: Duration,
    },
    /// See [`ServiceChecker::stop_confirmed`].
    StopConfirmed {
        /// The driver that stopped.
        driver: NodeId,
    },
    /// See [`ServiceChecker::stop_failed`].
    StopFailed {
        /// The driver whose stop failed.
        driver: NodeId,
    },
    /// See [`ServiceChecker::crashed`].
    Crashed,
    /// See [`ServiceChecker::fenced`].
    Fenced {
        /// The driver whose service the fence killed.
        driver: NodeId,
    },
    /// See [`ServiceChecker::frozen`].
    Frozen {
        /// The driver that froze.
        driver: NodeId,
    },
    /// See [`ServiceChecker::thawed`].
    Thawed {
        /// The driver that thawed.
        driver: NodeId,
    },
    /// See [`ServiceChecker::machine_reset`].
    MachineReset,
}

/// Watches service intervals; see the module docs. Read [`ServiceChecker::violations`].
#[derive(Debug, Default)]
pub struct ServiceChecker {
    open: BTreeMap<NodeId, Open>,
    closed: Vec<ServiceInterval>,
    violations: Vec<Violation>,
    failed_stops: u64,
    last_at: Duration,
    /// Drivers frozen now (node, driver) and since when, whether or not they run.
    frozen: BTreeMap<(NodeId, NodeId), Duration>,
}

impl ServiceChecker {
    /// An empty checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// `node`'s daemon sent `driver` a "master" notice in `term` at `at`, with a lease the
    /// driver holds until `lease_end` (global time, as the driver computes it from the
    /// notice). `stop_budget` is the node's `election.stop_budget`, in real time.
    pub fn told_master(
        &mut self,
        at: Duration,
        node: &NodeId,
        driver: &NodeId,
        term: Term,
        lease_end: Duration,
        stop_budget: Duration,
    ) {
        self.advance(at);
        self.close_ended(node, at);
        if !self.open.contains_key(node) {
            let others: Vec<String> = self
                .open
                .iter()
                .filter(|(other, open)| *other != node && open.end().0 > at)
                .map(|(other, open)| open.describe(other))
                .collect();
            for other in others {
                self.violations.push(Violation(format!(
                    "two services at once: {node} (term {term}) was told master at {at:?} while \
                     {other} may still run"
                )));
            }
            self.open.insert(
                node.clone(),
                Open {
                    term,
                    start: at,
                    stop_budget,
                    drivers: BTreeMap::new(),
                    crashed: None,
                },
            );
        }
        if let Some(open) = self.open.get_mut(node) {
            open.stop_budget = open.stop_budget.max(stop_budget);
            let run = open.drivers.entry(driver.clone()).or_insert(DriverRun {
                lease_end,
                stopped: None,
                failed_stops: 0,
                frozen: None,
                thawed: None,
            });
            // Told "master" while frozen: it cannot act on this lease either.
            if let Some(since) = self.frozen.get(&(node.clone(), driver.clone())) {
                run.frozen = run.frozen.or(Some(*since));
            }
            // A new "master" notice restarts a driver that had stopped: its lease is the new one.
            if run.stopped.is_some() {
                run.lease_end = lease_end;
                run.thawed = None;
            } else {
                run.lease_end = run.lease_end.max(lease_end);
            }
            run.stopped = None;
        }
    }

    /// Feeds one input about `node` at `at`; `stop_budget` is the node's stop budget (used
    /// by [`ServiceInput::ToldMaster`]).
    pub fn feed(
        &mut self,
        at: Duration,
        node: &NodeId,
        input: &ServiceInput,
        stop_budget: Duration,
    ) {
        match input {
            ServiceInput::ToldMaster {
                driver,
                term,
                lease_end,
            } => self.told_master(at, node, driver, *term, *lease_end, stop_budget),
            ServiceInput::Lease { driver, lease_end } => self.lease(at, node, driver, *lease_end),
            ServiceInput::StopConfirmed { driver } => self.stop_confirmed(at, node, driver),
            ServiceInput::StopFailed { driver } => self.stop_failed(at, node, driver),
            ServiceInput::Crashed => self.crashed(at, node),
            ServiceInput::Fenced { driver } => self.fenced(at, node, driver),
            ServiceInput::Frozen { driver } => self.frozen(at, node, driver),
            ServiceInput::Thawed { driver } => self.thawed(at, node, driver),
            ServiceInput::MachineReset => self.machine_reset(at, node),
        }
    }

    /// `node`'s daemon sent `driver` a lease renewal: the driver now holds the lease until
    /// `lease_end`. Extends only a driver that is still running; a renewal for a driver
    /// that stopped or whose lease ran out restarts nothing (the driver ignores it).
    pub fn lease(&mut self, at: Duration, node: &NodeId, driver: &NodeId, lease_end: Duration) {
        self.advance(at);
        if let Some(run) = self.run_of(node, driver)
            && run.stopped.is_none()
            && run.lease_end > at
        {
            run.lease_end = run.lease_end.max(lease_end);
        }
    }

    /// The clock of `node`'s machine changed its rate at `at`: the lease `driver` holds ends
    /// at the same clock reading, which is now `lease_end` in global time (earlier or later).
    /// For harnesses that model clock drift; a running driver only.
    pub fn clock_changed(
        &mut self,
        at: Duration,
        node: &NodeId,
        driver: &NodeId,
        lease_end: Duration,
    ) {
        self.advance(at);
        if let Some(run) = self.run_of(node, driver)
            && run.stopped.is_none()
            && run.lease_end > at
        {
            run.lease_end = lease_end.max(at);
        }
    }

    /// `driver` of `node` acknowledged "backup" with `Ok` at `at`: it has stopped.
    pub fn stop_confirmed(&mut self, at: Duration, node: &NodeId, driver: &NodeId) {
        self.advance(at);
        self.stop(at, node, driver, Stop::Confirmed);
    }

    /// `node`'s daemon ran its `[fence]` for `driver` and it succeeded, finishing at `at`:
    /// the driver's service is dead from then on, frozen or not.
    pub fn fenced(&mut self, at: Duration, node: &NodeId, driver: &NodeId) {
        self.advance(at);
        // A fence covers leases that ended before it finished; a lease that ends later was
        // given after (the node was master again), and the fence says nothing of it.
        if self
            .run_of(node, driver)
            .is_some_and(|run| run.lease_end <= at)
        {
            self.stop(at, node, driver, Stop::Fenced);
        }
    }

    /// `node`'s machine was reset at `at` (its watchdog fired): every driver there, and the
    /// service with them, is gone.
    pub fn machine_reset(&mut self, at: Duration, node: &NodeId) {
        self.advance(at);
        // Its drivers start afresh after the reboot.
        self.frozen.retain(|(n, _), _| n != node);
        let drivers: Vec<NodeId> = self
            .open
            .get(node)
            .map(|open| open.drivers.keys().cloned().collect())
            .unwrap_or_default();
        for driver in &drivers {
            self.stop(at, node, driver, Stop::Reset);
        }
        self.close_ended(node, at);
    }

    /// `driver` of `node` froze at `at` (SIGSTOP, a wedged process): from now on its lease
    /// ends nothing, because it cannot act on it. A driver that had surely stopped by `at`
    /// (its lease plus the stop budget behind it) stays stopped.
    pub fn frozen(&mut self, at: Duration, node: &NodeId, driver: &NodeId) {
        self.advance(at);
        self.frozen
            .entry((node.clone(), driver.clone()))
            .or_insert(at);
        let Some(stop_budget) = self.open.get(node).map(|open| open.stop_budget) else {
            return;
        };
        if let Some(run) = self.run_of(node, driver)
            && run.frozen.is_none()
            && run.end(stop_budget).0 > at
        {
            run.frozen = Some(at);
        }
    }

    /// `driver` of `node` runs again from `at`: if its lease has ended, it stops now, within
    /// the stop budget.
    pub fn thawed(&mut self, at: Duration, node: &NodeId, driver: &NodeId) {
        self.advance(at);
        self.frozen.remove(&(node.clone(), driver.clone()));
        if let Some(run) = self.run_of(node, driver)
            && run.frozen.take().is_some()
        {
            run.thawed = Some(at);
        }
    }

    fn stop(&mut self, at: Duration, node: &NodeId, driver: &NodeId, how: Stop) {
        if let Some(run) = self.run_of(node, driver)
            && run.stopped.is_none()
        {
            run.stopped = Some((at, how));
        }
        self.close_ended(node, at);
    }

    /// `driver` of `node` reported a failed or timed-out stop: nothing ends; counted.
    pub fn stop_failed(&mut self, at: Duration, node: &NodeId, driver: &NodeId) {
        self.advance(at);
        self.failed_stops += 1;
        if let Some(run) = self.run_of(node, driver) {
            run.failed_stops += 1;
        }
    }

    /// `node`'s daemon crashed at `at`: its drivers keep running until lease plus stop
    /// budget, so nothing ends; recorded for the violation text.
    pub fn crashed(&mut self, at: Duration, node: &NodeId) {
        self.advance(at);
        if let Some(open) = self.open.get_mut(node) {
            open.crashed = Some(at);
        }
    }

    /// Records a violation of another invariant (the harness and simulation check more
    /// than service intervals), so that one list holds everything a run found.
    pub fn violation(&mut self, text: String) {
        self.violations.push(Violation(text));
    }

    /// Every violation found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Failed or timed-out stops reported so far.
    pub fn failed_stops(&self) -> u64 {
        self.failed_stops
    }

    /// Whether `node`'s service may be running at `at` (an interval is open and not ended).
    pub fn may_run(&self, node: &NodeId, at: Duration) -> bool {
        self.open.get(node).is_some_and(|open| open.end().0 > at)
    }

    /// Nodes whose service may be running at `at`, in order.
    pub fn running(&self, at: Duration) -> Vec<NodeId> {
        self.open
            .iter()
            .filter(|(_, open)| open.end().0 > at)
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// All intervals, finished ones first; open ones end where they would as of now.
    pub fn intervals(&self) -> Vec<ServiceInterval> {
        let mut all = self.closed.clone();
        all.extend(self.open.iter().map(|(node, open)| ServiceInterval {
            node: node.clone(),
            term: open.term,
            start: open.start,
            end: open.end().0,
        }));
        all
    }

    /// `driver`'s part of `node`'s open interval, if it has one.
    fn run_of(&mut self, node: &NodeId, driver: &NodeId) -> Option<&mut DriverRun> {
        self.open
            .get_mut(node)
            .and_then(|open| open.drivers.get_mut(driver))
    }

    fn advance(&mut self, at: Duration) {
        if at < self.last_at {
            // The caller broke the contract; say so rather than check the wrong thing.
            self.violations.push(Violation(format!(
                "checker fed out of order: {at:?} after {:?} (a harness bug)",
                self.last_at
            )));
        }
        self.last_at = self.last_at.max(at);
    }

    /// Moves `node`'s interval to the closed list if every driver has ended by `at`.
    fn close_ended(&mut self, node: &NodeId, at: Duration) {
        if let Some(open) = self.open.get(node)
            && open.end().0 <= at
            && let Some(open) = self.open.remove(node)
        {
            let end = open.end().0;
            self.closed.push(ServiceInterval {
                node: node.clone(),
                term: open.term,
                start: open.start,
                end,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    const BUDGET: Duration = Duration::from_millis(200);

    /// Node `a`'s driver `da` holds a lease to 700 ms; when may `b` start, and what ends `a`?
    #[test]
    fn an_interval_ends_at_lease_plus_budget_unless_a_stop_is_confirmed() {
        // (what a's driver does, when b is told master, overlap?)
        let cases: &[(&str, u64, bool)] = &[
            ("nothing", 850, true),  // lease 700 + budget 200 = 900 > 850
            ("nothing", 900, false), // exactly at lease + budget
            ("backup notice only", 850, true),
            ("failed stop at 300", 850, true),
            ("ok stop at 300", 350, false),
            ("ok stop at 300", 250, true),
            ("crash at 100", 850, true),
            ("crash at 100", 950, false),
            ("renewed to 1000 at 600", 1150, true),
            ("renewed to 1000 at 600", 1200, false),
            ("late renewal at 950", 1000, false),
        ];
        for (what, b_at, overlap) in cases {
            let mut c = ServiceChecker::new();
            let (a, b, da, db) = (id("a"), id("b"), id("da"), id("db"));
            c.told_master(ms(0), &a, &da, Term(1), ms(700), BUDGET);
            match *what {
                "failed stop at 300" => c.stop_failed(ms(300), &a, &da),
                "ok stop at 300" => c.stop_confirmed(ms(300), &a, &da),
                "crash at 100" => c.crashed(ms(100), &a),
                "renewed to 1000 at 600" => c.lease(ms(600), &a, &da, ms(1000)),
                // After lease + budget the driver has stopped; a renewal restarts nothing.
                "late renewal at 950" => c.lease(ms(950), &a, &da, ms(1900)),
                _ => {}
            }
            c.told_master(ms(*b_at), &b, &db, Term(2), ms(*b_at + 700), BUDGET);
            assert_eq!(
                !c.violations().is_empty(),
                *overlap,
                "{what}, b at {b_at}: {:?}",
                c.violations()
            );
        }
    }

    #[test]
    fn every_driver_told_master_must_end() {
        let mut c = ServiceChecker::new();
        let (a, b) = (id("a"), id("b"));
        c.told_master(ms(0), &a, &id("d1"), Term(1), ms(700), BUDGET);
        c.told_master(ms(10), &a, &id("d2"), Term(1), ms(700), BUDGET);
        c.stop_confirmed(ms(100), &a, &id("d1"));
        c.told_master(ms(200), &b, &id("d3"), Term(2), ms(900), BUDGET);
        assert_eq!(c.violations().len(), 1);
        let text = &c.violations()[0].0;
        assert!(
            text.contains("b (term 2)") && text.contains("a (term 1)"),
            "{text}"
        );
        assert!(text.contains("driver d2: lease end"), "{text}");
        c.stop_confirmed(ms(250), &a, &id("d2"));
        assert!(!c.may_run(&a, ms(250)));
        assert_eq!(c.running(ms(250)), vec![b.clone()]);
    }

    #[test]
    fn the_same_node_may_be_told_master_again() {
        let mut c = ServiceChecker::new();
        let a = id("a");
        c.told_master(ms(0), &a, &id("d"), Term(1), ms(700), BUDGET);
        c.told_master(ms(500), &a, &id("d"), Term(1), ms(1200), BUDGET);
        c.told_master(ms(2000), &a, &id("d"), Term(3), ms(2700), BUDGET);
        assert!(c.violations().is_empty());
        assert_eq!(c.intervals().len(), 2, "{:?}", c.intervals());
    }

    /// Node `a`'s driver `da` holds a lease to 700 ms and freezes at 500; when may `b` start?
    #[test]
    fn a_frozen_driver_ends_only_when_fenced_reset_or_thawed() {
        // (what happens after the freeze, when b is told master, overlap?)
        let cases: &[(&str, u64, bool)] = &[
            // The lease ends nothing while the driver cannot act on it.
            ("nothing", 950, true),
            ("nothing", 100_000, true),
            ("fenced at 880", 890, false),
            ("fenced at 880", 870, true),
            ("reset at 850", 860, false),
            ("reset at 850", 840, true),
            // Thawed after its lease end: it stops within the budget from then on.
            ("thawed at 2000", 2150, true),
            ("thawed at 2000", 2200, false),
            // Thawed before its lease end: the lease rules again.
            ("thawed at 600", 900, false),
            ("thawed at 600", 850, true),
            // A failed fence ends nothing.
            ("fence failed", 100_000, true),
        ];
        for (what, b_at, overlap) in cases {
            let mut c = ServiceChecker::new();
            let (a, b, da, db) = (id("a"), id("b"), id("da"), id("db"));
            c.told_master(ms(0), &a, &da, Term(1), ms(700), BUDGET);
            c.frozen(ms(500), &a, &da);
            match *what {
                "fenced at 880" => c.fenced(ms(880), &a, &da),
                "reset at 850" => c.machine_reset(ms(850), &a),
                "thawed at 2000" => c.thawed(ms(2000), &a, &da),
                "thawed at 600" => c.thawed(ms(600), &a, &da),
                _ => {}
            }
            c.told_master(ms(*b_at), &b, &db, Term(2), ms(*b_at + 700), BUDGET);
            assert_eq!(
                !c.violations().is_empty(),
                *overlap,
                "{what}, b at {b_at}: {:?}",
                c.violations()
            );
            if *what == "nothing" {
                let text = &c.violations()[0].0;
                assert!(text.contains("frozen since 500ms"), "{text}");
            }
        }
    }

    #[test]
    fn a_freeze_after_the_service_surely_stopped_reopens_nothing() {
        let mut c = ServiceChecker::new();
        let (a, b, da, db) = (id("a"), id("b"), id("da"), id("db"));
        c.told_master(ms(0), &a, &da, Term(1), ms(700), BUDGET);
        // Past lease plus budget (900): the driver had stopped by then.
        c.frozen(ms(950), &a, &da);
        c.told_master(ms(960), &b, &db, Term(2), ms(1600), BUDGET);
        // A confirmed stop before the freeze, too.
        c.stop_confirmed(ms(1000), &b, &db);
        c.frozen(ms(1010), &b, &db);
        c.told_master(ms(1020), &a, &da, Term(3), ms(1700), BUDGET);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        // A reset ends every driver of the machine, frozen or not.
        c.told_master(ms(1030), &a, &id("da2"), Term(3), ms(1700), BUDGET);
        c.frozen(ms(1040), &a, &da);
        c.machine_reset(ms(1050), &a);
        assert!(!c.may_run(&a, ms(1050)));
    }

    #[test]
    fn a_fence_covers_no_lease_given_after_it_and_a_freeze_before_master_counts() {
        let mut c = ServiceChecker::new();
        let (a, b, da, db) = (id("a"), id("b"), id("da"), id("db"));
        c.told_master(ms(0), &a, &da, Term(1), ms(700), BUDGET);
        c.frozen(ms(100), &a, &da);
        // Master again (a new lease to 1500) while the fence for the old one ran.
        c.lease(ms(600), &a, &da, ms(1500));
        c.fenced(ms(880), &a, &da);
        c.told_master(ms(1000), &b, &db, Term(2), ms(1700), BUDGET);
        assert_eq!(c.violations().len(), 1, "{:?}", c.violations());
        // Frozen before it was ever told "master": the lease it is given ends nothing.
        let mut c = ServiceChecker::new();
        c.frozen(ms(0), &a, &da);
        c.told_master(ms(10), &a, &da, Term(1), ms(700), BUDGET);
        c.told_master(ms(2000), &b, &db, Term(2), ms(2700), BUDGET);
        assert_eq!(c.violations().len(), 1, "{:?}", c.violations());
    }

    #[test]
    fn out_of_order_input_is_reported() {
        let mut c = ServiceChecker::new();
        c.told_master(ms(10), &id("a"), &id("d"), Term(1), ms(700), BUDGET);
        c.stop_confirmed(ms(5), &id("a"), &id("d"));
        assert!(c.violations()[0].0.contains("out of order"));
    }
}
