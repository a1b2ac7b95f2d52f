//! Property tests: random schedules of faults and restarts on 3, 5 and 7 nodes.
//!
//! Safety, checked after every step by the harness's checker: at most one leader per term,
//! master intervals never overlap (global time, clocks drifting within the configured bound),
//! terms never decrease and no node votes twice in a term — across restarts too.
//! Liveness: once faults stop (all nodes up, network healed, no loss, no maintenance), a
//! master exists within `LIVENESS_BOUND` and no further election happens while nothing fails.

use std::time::Duration;

use clustd_core::harness::Cluster;
use proptest::prelude::*;

/// ET_min (1 s) to get past stickiness, plus up to four full election rounds at ET_max (2 s)
/// for split votes, plus slack for message delay. Measured worst case is far below.
const LIVENESS_BOUND: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
enum Fault {
    Crash(usize),
    Restart(usize),
    Isolate(usize),
    CutOneWay(usize, usize),
    Split(u8),
    Recover,
    StepDown(usize),
    Maintenance(usize, bool),
    Loss(u32),
    Delay(u64),
    Drift(usize, i32),
    Run(u64),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        2 => (0..7usize).prop_map(Fault::Crash),
        2 => (0..7usize).prop_map(Fault::Restart),
        1 => (0..7usize).prop_map(Fault::Isolate),
        1 => (0..7usize, 0..7usize).prop_map(|(a, b)| Fault::CutOneWay(a, b)),
        1 => any::<u8>().prop_map(Fault::Split),
        2 => Just(Fault::Recover),
        1 => (0..7usize).prop_map(Fault::StepDown),
        1 => (0..7usize, any::<bool>()).prop_map(|(i, on)| Fault::Maintenance(i, on)),
        1 => (0..300_000u32).prop_map(Fault::Loss),
        1 => (1..150u64).prop_map(Fault::Delay),
        1 => (150..2500u64).prop_map(Fault::Delay),
        1 => (0..7usize, -50_000..=50_000i32).prop_map(|(i, d)| Fault::Drift(i, d)),
        6 => (1..3000u64).prop_map(Fault::Run),
    ]
}

fn apply(cluster: &mut Cluster, fault: &Fault) {
    let ids = cluster.ids();
    let pick = |i: &usize| ids[*i % ids.len()].clone();
    match fault {
        Fault::Crash(i) => cluster.crash(&pick(i)),
        Fault::Restart(i) => cluster.restart(&pick(i)),
        Fault::Isolate(i) => cluster.isolate(&pick(i)),
        Fault::CutOneWay(a, b) => cluster.cut_one_way(&pick(a), &pick(b)),
        Fault::Split(mask) => cluster.split(*mask),
        Fault::Recover => cluster.recover(),
        Fault::StepDown(i) => cluster.step_down(&pick(i)),
        Fault::Maintenance(i, on) => cluster.set_maintenance(&pick(i), *on),
        Fault::Loss(ppm) => cluster.set_loss(*ppm),
        Fault::Delay(max) => {
            cluster.set_delay(Duration::from_millis(1), Duration::from_millis(*max))
        }
        Fault::Drift(i, d) => cluster.set_clock_rate(&pick(i), (1_000_000 + i64::from(*d)) as u64),
        Fault::Run(ms) => cluster.run_for(Duration::from_millis(*ms)),
    }
}

fn heal(cluster: &mut Cluster) {
    cluster.recover();
    cluster.set_loss(0);
    cluster.set_delay(Duration::from_millis(1), Duration::from_millis(5));
    for id in cluster.ids() {
        cluster.restart(&id);
        cluster.set_maintenance(&id, false);
    }
}

fn check(n: usize, seed: u64, faults: &[Fault]) -> Result<(), TestCaseError> {
    let mut cluster = Cluster::new(n, seed, |_| {});
    for fault in faults {
        apply(&mut cluster, fault);
        prop_assert!(
            cluster.checker.violations().is_empty(),
            "after {fault:?}: {:?}",
            cluster.checker.violations()
        );
    }
    heal(&mut cluster);
    let took = cluster.run_until(LIVENESS_BOUND, |c| c.masters().len() == 1);
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
    fn three_nodes(seed in any::<u64>(), faults in proptest::collection::vec(fault(), 0..40)) {
        check(3, seed, &faults)?;
    }

    #[test]
    fn five_nodes(seed in any::<u64>(), faults in proptest::collection::vec(fault(), 0..40)) {
        check(5, seed, &faults)?;
    }

    #[test]
    fn seven_nodes(seed in any::<u64>(), faults in proptest::collection::vec(fault(), 0..40)) {
        check(7, seed, &faults)?;
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
