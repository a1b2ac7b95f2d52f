//! Property tests: random schedules of faults and restarts on 3, 5 and 7 nodes, drawn from
//! the shared fault vocabulary (`clustd_core::fault`) with a random swarm of fault kinds and
//! a heartbeat interval that often does not divide the lease.
//!
//! Safety, checked after every step by the harness's checker: at most one leader per term,
//! master intervals never overlap (global time, clocks drifting within the configured bound),
//! terms never decrease and no node votes twice in a term — across restarts too.
//! Liveness: once faults stop (all nodes up, network healed, no loss, no maintenance), a
//! master exists within `LIVENESS_BOUND` and no further election happens while nothing fails.

use std::time::Duration;

use clustd_core::fault::{Fault, FaultRng, Limits, Swarm};
use clustd_core::harness::Cluster;
use proptest::prelude::*;

/// ET_min (1 s) to get past stickiness, plus up to four full election rounds at ET_max (2 s)
/// for split votes, plus slack for message delay. Measured worst case is far below.
const LIVENESS_BOUND: Duration = Duration::from_secs(10);

/// Proptest's input: a list of choices that the shared fault vocabulary draws from, so
/// that shrinking a failing case shrinks the schedule.
struct Choices<'a> {
    values: &'a [u64],
    next: usize,
}

impl FaultRng for Choices<'_> {
    fn below(&mut self, n: u64) -> u64 {
        let v = self.values.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        v % n.max(1)
    }
}

/// Heartbeat intervals, several of which do not divide the lease (714 ms).
const HEARTBEATS_MS: [u64; 6] = [100, 90, 80, 70, 50, 33];

/// Draws the swarm, the heartbeat and the schedule from `choices`, then checks it.
fn check_drawn(n: usize, seed: u64, choices: &[u64]) -> Result<(), TestCaseError> {
    let mut rng = Choices {
        values: choices,
        next: 0,
    };
    let swarm = Swarm::draw(&mut rng);
    let heartbeat = HEARTBEATS_MS[rng.below(HEARTBEATS_MS.len() as u64) as usize];
    let limits = Limits {
        nodes: n,
        max_drift_ppm: 50_000,
        et_max_ms: 2000,
        stop_budget_ms: 200,
    };
    let mut faults = Vec::new();
    while rng.next < choices.len() {
        faults.push(Fault::draw(&mut rng, &swarm, &limits));
    }
    check_with(n, seed, heartbeat, &faults)
        .map_err(|e| TestCaseError::fail(format!("swarm {swarm}, heartbeat {heartbeat} ms: {e}")))
}

fn check(n: usize, seed: u64, faults: &[Fault]) -> Result<(), TestCaseError> {
    check_with(n, seed, 100, faults)
}

fn check_with(
    n: usize,
    seed: u64,
    heartbeat_ms: u64,
    faults: &[Fault],
) -> Result<(), TestCaseError> {
    let mut cluster = Cluster::new(n, seed, |c| {
        c.set_timings(
            Duration::from_millis(heartbeat_ms),
            Duration::from_millis(1000),
            Duration::from_millis(2000),
        );
    });
    for fault in faults {
        cluster.apply(fault);
        prop_assert!(
            cluster.checker.violations().is_empty(),
            "after {fault:?}: {:?}",
            cluster.checker.violations()
        );
    }
    cluster.heal();
    // (A switchover asked for before the heal and still on the wire is no failure.)
    let took = cluster.run_until(LIVENESS_BOUND, |c| {
        c.masters().len() == 1 && !c.transfer_in_flight()
    });
    prop_assert!(
        took.is_some(),
        "no master within {LIVENESS_BOUND:?} after healing"
    );
    let elections = cluster.checker.elections;
    let master = cluster.masters();
    cluster.run_for(Duration::from_secs(20));
    prop_assert_eq!(
        cluster.checker.elections,
        elections,
        "needless election while nothing failed"
    );
    prop_assert_eq!(cluster.masters(), master);
    prop_assert!(
        cluster.checker.violations().is_empty(),
        "{:?}",
        cluster.checker.violations()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn three_nodes(seed in any::<u64>(), choices in proptest::collection::vec(any::<u64>(), 0..120)) {
        check_drawn(3, seed, &choices)?;
    }

    #[test]
    fn five_nodes(seed in any::<u64>(), choices in proptest::collection::vec(any::<u64>(), 0..120)) {
        check_drawn(5, seed, &choices)?;
    }

    #[test]
    fn seven_nodes(seed in any::<u64>(), choices in proptest::collection::vec(any::<u64>(), 0..120)) {
        check_drawn(7, seed, &choices)?;
    }
}

/// A healthy cluster with a master gets forged terms (a hostile insider with the cluster
/// secret) into random nodes from random real peers: every one is dropped, and nothing
/// changes — same master, same term everywhere, no election.
fn check_forged_terms(
    n: usize,
    seed: u64,
    forgeries: &[(usize, usize, u64, u64)],
) -> Result<(), TestCaseError> {
    use clustd_core::MAX_TERM_JUMP;
    let mut cluster = Cluster::new(n, seed, |_| {});
    let took = cluster.run_until(LIVENESS_BOUND, |c| c.masters().len() == 1);
    prop_assert!(took.is_some(), "no master to begin with");
    cluster.run_for(Duration::from_secs(1));
    let master = cluster.masters();
    let terms: Vec<_> = cluster.ids().iter().map(|i| cluster.disk(i).term).collect();
    let elections = cluster.checker.elections;
    for &(to, from, above, pause_ms) in forgeries {
        let above = if above == u64::MAX {
            above
        } else {
            MAX_TERM_JUMP + 1 + above % (u64::MAX - MAX_TERM_JUMP - 1)
        };
        cluster.apply(&Fault::ForgedTerm { to, from, above });
        cluster.apply(&Fault::Run(pause_ms % 200));
    }
    cluster.run_for(Duration::from_secs(5));
    prop_assert_eq!(cluster.checker.rejected, forgeries.len() as u64);
    prop_assert_eq!(cluster.masters(), master);
    let after: Vec<_> = cluster.ids().iter().map(|i| cluster.disk(i).term).collect();
    prop_assert_eq!(after, terms);
    prop_assert_eq!(cluster.checker.elections, elections, "an election");
    prop_assert!(
        cluster.checker.violations().is_empty(),
        "{:?}",
        cluster.checker.violations()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn forged_terms_change_nothing(
        n in prop_oneof![Just(3usize), Just(5usize)],
        seed in any::<u64>(),
        forgeries in proptest::collection::vec(
            (0..7usize, 0..7usize, prop_oneof![Just(u64::MAX), Just(0u64), any::<u64>()], any::<u64>()),
            1..40,
        ),
    ) {
        check_forged_terms(n, seed, &forgeries)?;
    }
}

/// Random health flips on a stable network: whatever the schedule, no ineligible node wins,
/// services never overlap, and mastership moves at most once per `min_master` (plus the
/// first move). Ends healthy: a master exists.
fn check_health_flips(seed: u64, flips: &[(usize, bool, u64)]) -> Result<(), TestCaseError> {
    const MIN_MASTER: Duration = Duration::from_secs(5);
    let mut cluster = Cluster::new(3, seed, |c| c.min_master = MIN_MASTER);
    for id in cluster.ids() {
        cluster.set_driver_stops(&id, Some(Duration::from_millis(3)));
    }
    let took = cluster.run_until(LIVENESS_BOUND, |c| c.masters().len() == 1);
    prop_assert!(took.is_some(), "no master to begin with");
    let start = cluster.now();
    let mut last = cluster.masters().first().cloned();
    let mut moves = 0usize;
    for &(node, healthy, wait_ms) in flips {
        cluster.apply(&Fault::Health(node, healthy));
        // Sample often enough to see every master between flips.
        let until = cluster.now() + Duration::from_millis(wait_ms % 1500);
        while cluster.now() < until {
            cluster.run_for(Duration::from_millis(10));
            if let Some(m) = cluster.masters().first().cloned() {
                if last.as_ref().is_some_and(|l| *l != m) {
                    moves += 1;
                }
                last = Some(m);
            }
        }
        prop_assert!(
            cluster.checker.violations().is_empty(),
            "{:?}",
            cluster.checker.violations()
        );
    }
    let elapsed = cluster.now() - start;
    let bound = (elapsed.as_millis() / MIN_MASTER.as_millis()) as usize + 1;
    prop_assert!(
        moves <= bound,
        "{moves} moves in {elapsed:?}, at most {bound} with min_master {MIN_MASTER:?}"
    );
    cluster.heal();
    // (A switchover asked for before the heal and still on the wire is no failure.)
    let took = cluster.run_until(LIVENESS_BOUND, |c| {
        c.masters().len() == 1 && !c.transfer_in_flight()
    });
    prop_assert!(
        took.is_some(),
        "no master after every node is healthy again"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn health_flips_move_mastership_at_most_once_per_min_master(
        seed in any::<u64>(),
        flips in proptest::collection::vec((0..3usize, any::<bool>(), any::<u64>()), 1..80),
    ) {
        check_health_flips(seed, &flips)?;
    }
}

/// Found by `three_nodes`: a clock-rate change used to make the harness clock jump, which
/// expired a lease early and looked like a needless election.
#[test]
fn regression_clock_rate_change_is_continuous() {
    use Fault::*;
    let faults = [
        Run(1487),
        Crash(0),
        Run(884),
        Loss(54192),
        Run(443),
        Isolate(4),
        Run(2537),
        Run(2099),
        Run(1228),
        Drift(3, -16295),
        Crash(4),
        Run(1194),
        Run(1579),
        Recover,
        Run(349),
        Restart(3),
        Run(1639),
        Run(441),
        Drift(3, 44406),
    ];
    check(3, 8893007662856057742, &faults).expect("holds");
}

/// Found by `three_nodes`: a restarted leader wins a new term while its old heartbeats are still
/// in flight; followers used to answer them with the stale round number in the new term, which the
/// new leader took as an acknowledgement of a round it had not sent yet, stalling its lease.
#[test]
fn regression_stale_heartbeat_reply_is_not_an_ack() {
    use Fault::*;
    let faults = [
        Split(219),
        Run(2543),
        Drift(0, 46668),
        Run(985),
        Run(902),
        Delay(1795),
        Run(345),
        Recover,
        Run(95),
        Crash(3),
    ];
    check(3, 7773173004200848150, &faults).expect("holds");
}
