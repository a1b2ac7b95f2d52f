//! Named scenarios: each reads as a short story (build, fault, assert) and runs for both
//! transports (`<name>_websocket`, `<name>_quic`). Every run is also checked by the
//! observer's safety checkers; `SIM_SEED=n` replays a seed, and every failure prints its
//! replay command.

use std::time::Duration;

use clustd_transport::TransportKind;
use sim::{Cluster, SimConfig, seed_from_env};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// Liveness bound once faults stop and a majority is connected: `LIVENESS_ET_MAX` × ET_max
/// (8 s with the default 1–2 s election timeout; see `sim::sweep::LIVENESS_ET_MAX` for what
/// it covers: the transport's idle timeout and reconnect backoff now follow `ET_min`).
const LIVENESS: Duration = Duration::from_secs(8);

/// Failover bound after the master dies or is cut off while the rest is healthy:
/// the lease runs out, followers wait `ET_min` after the last heartbeat, then an
/// election (staggered timeouts up to ET_max, one retry): 2 × ET_max.
const FAILOVER: Duration = Duration::from_secs(4);

/// How long the cluster must stay quiet after it settled.
const STABLE: Duration = Duration::from_secs(15);

fn cluster(name: &str, nodes: usize, transport: TransportKind) -> Cluster {
    Cluster::new(SimConfig::new(name, nodes, transport, seed_from_env(1)))
}

/// Waits for a first master (cold start).
fn settle(c: &mut Cluster) -> usize {
    let m = c.expect_master_within(LIVENESS).map(|(m, _)| m);
    c.require(m.is_some(), "a first master");
    m.unwrap_or_default()
}

/// Runs `story` for both transports.
macro_rules! both {
    ($name:ident, $story:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn websocket() {
                let name = concat!(stringify!($name), "::websocket");
                $story(name, TransportKind::WebSocket);
            }
            #[test]
            fn quic() {
                let name = concat!(stringify!($name), "::quic");
                $story(name, TransportKind::Quic);
            }
        }
    };
}

both!(first_election_and_stability, |name, t| {
    let mut c = cluster(name, 3, t);
    settle(&mut c);
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(leader_isolated, |name, t| {
    let mut c = cluster(name, 5, t);
    let old = settle(&mut c);
    c.failover_started(old);
    c.isolate(old);
    let new = c.expect_failover_within(old, FAILOVER).map(|(m, _)| m);
    c.require(
        new.is_some_and(|m| m != old),
        "the majority elects a new master",
    );
    c.run_for(secs(5));
    c.require(
        c.master() != Some(old),
        "the isolated old master is not master",
    );
    c.heal_all();
    c.run_for(secs(6));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(minority_partition_keeps_no_master, |name, t| {
    let mut c = cluster(name, 5, t);
    let old = settle(&mut c);
    let minority = vec![old, (old + 1) % 5];
    let majority = c.others(&minority);
    c.failover_started(old);
    c.partition(&minority, &majority);
    c.run_for(secs(1));
    // After the old lease has surely run out, the minority side has no master, for good.
    for _ in 0..200 {
        c.run_for(ms(50));
        let m = c.master();
        c.require(
            !m.is_some_and(|m| minority.contains(&m)),
            "no master on the minority side",
        );
    }
    c.heal_all();
    c.run_for(secs(6));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(majority_side_elects_within_bound, |name, t| {
    let mut c = cluster(name, 5, t);
    let old = settle(&mut c);
    let minority = vec![old, (old + 2) % 5];
    let majority = c.others(&minority);
    c.failover_started(old);
    c.partition(&minority, &majority);
    let new = c.expect_failover_within(old, FAILOVER);
    c.require(
        new.is_some_and(|(m, _)| majority.contains(&m)),
        "the majority side elects within the bound",
    );
    c.run_for(secs(5));
    c.assert_ok();
});

both!(healed_partition_does_not_disrupt, |name, t| {
    // Pre-vote: a follower cut off for a long time must not depose the master on return.
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    let f = (m + 1) % 3;
    c.isolate(f);
    c.run_for(secs(20));
    let term = c.term_of(m);
    c.heal_all();
    c.run_for(secs(8));
    c.require(
        c.master() == Some(m) && c.term_of(m) == term,
        "the master and term survive the healed partition",
    );
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(bridge, |name, t| {
    // n2 sees both halves {0,1} and {3,4}, which cannot see each other.
    let mut c = cluster(name, 5, t);
    settle(&mut c);
    c.partition(&[0, 1], &[3, 4]);
    c.run_for(secs(15));
    let m = c.expect_master_within(LIVENESS);
    c.require(m.is_some(), "a master exists with a bridge node");
    c.heal_all();
    c.run_for(secs(6));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(one_way_partition, |name, t| {
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    let others = c.others(&[m]);
    // The master's messages no longer arrive; it still hears the others.
    c.failover_started(m);
    c.partition_oneway(&[m], &others);
    let new = c.expect_failover_within(m, FAILOVER + secs(2));
    c.require(
        new.is_some_and(|(n, _)| n != m),
        "the others elect a new master",
    );
    c.run_for(secs(10));
    c.heal_all();
    c.run_for(secs(6));
    // And the other way round: the new master hears nobody.
    let n = c.master().unwrap_or(0);
    let others = c.others(&[n]);
    c.partition_oneway(&others, &[n]);
    c.run_for(secs(10));
    c.heal_all();
    c.run_for(secs(6));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(flapping_link, |name, t| {
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    let f = (m + 1) % 3;
    for _ in 0..40 {
        c.partition(&[m], &[f]);
        c.run_for(ms(300));
        c.repair(&[m], &[f]);
        c.run_for(ms(300));
    }
    c.heal_all();
    c.expect_master_within(LIVENESS);
    c.run_for(secs(6));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(crash_restart_master, |name, t| {
    let mut c = cluster(name, 3, t);
    let old = settle(&mut c);
    c.crash(old);
    let new = c.expect_failover_within(old, FAILOVER);
    c.require(
        new.is_some_and(|(m, _)| m != old),
        "a new master after a silent crash",
    );
    c.run_for(secs(2));
    c.restart(old);
    c.run_for(secs(8));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(crash_with_fin_master, |name, t| {
    let mut c = cluster(name, 3, t);
    let old = settle(&mut c);
    c.crash_fin(old);
    let new = c.expect_failover_within(old, FAILOVER);
    c.require(
        new.is_some_and(|(m, _)| m != old),
        "a new master after a crash with FIN",
    );
    c.restart(old);
    c.run_for(secs(8));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(restart_all_nodes, |name, t| {
    let mut c = cluster(name, 5, t);
    settle(&mut c);
    for i in 0..5 {
        c.crash(i);
    }
    c.run_for(secs(1));
    for i in 0..5 {
        c.restart(i);
    }
    c.expect_master_within(LIVENESS);
    c.run_for(secs(6));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(rolling_restart, |name, t| {
    let mut c = cluster(name, 3, t);
    settle(&mut c);
    for i in 0..3 {
        let exited = c.stop_graceful(i, secs(5));
        c.require(exited, "a graceful stop finishes");
        c.run_for(secs(1));
        c.restart(i);
        let m = c.expect_master_within(LIVENESS);
        c.require(m.is_some(), "a master after each restart");
        c.run_for(secs(3));
    }
    c.run_for(secs(6));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(maintenance_and_step_down_under_load, |name, t| {
    let mut c = cluster(name, 3, t);
    // Load: a jittery network (5–40 ms) with the steady heartbeat traffic.
    c.set_latency(ms(5), ms(40));
    let m = settle(&mut c);
    c.step_down(m);
    let n = c.run_until(FAILOVER, |c| c.master().is_some_and(|x| x != m));
    c.require(n, "a new master after step-down");
    let n = c.master().unwrap_or(0);
    c.maintenance(n, true);
    let moved = c.run_until(FAILOVER, |c| c.master().is_some_and(|x| x != n));
    c.require(moved, "maintenance hands mastership over");
    c.run_for(secs(10));
    c.require(c.master() != Some(n), "a node in maintenance is not master");
    c.maintenance(n, false);
    c.run_for(secs(3));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(witness_two_plus_one, |name, t| {
    let mut config = SimConfig::new(name, 3, t, seed_from_env(1));
    config.witnesses = vec![2];
    let mut c = Cluster::new(config);
    let m = settle(&mut c);
    c.require(m != 2, "the witness is never master");
    c.crash(m);
    let n = c.expect_failover_within(m, FAILOVER);
    c.require(
        n.is_some_and(|(n, _)| n != m && n != 2),
        "the other data node takes over with the witness's vote",
    );
    c.restart(m);
    c.run_for(secs(8));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(loss_20_percent, |name, t| {
    let mut c = cluster(name, 5, t);
    settle(&mut c);
    c.set_loss(0.2);
    c.run_for(secs(30));
    c.heal_all();
    c.expect_master_within(LIVENESS);
    c.run_for(secs(6));
    c.expect_stable(STABLE);
    c.assert_ok();
});

both!(high_latency_near_heartbeat, |name, t| {
    let mut c = cluster(name, 3, t);
    c.set_latency(ms(60), ms(100));
    settle(&mut c);
    c.run_for(secs(30));
    let m = c.master();
    c.require(
        m.is_some(),
        "a master despite latency near the heartbeat interval",
    );
    c.heal_all();
    c.run_for(secs(3));
    c.assert_ok();
});

both!(clock_drift_at_the_bound, |name, t| {
    // Fastest and slowest clocks allowed, failing the master over and over.
    let mut config = SimConfig::new(name, 3, t, seed_from_env(1));
    config.clock_rates = vec![1.05, 0.95, 1.0];
    let mut c = Cluster::new(config);
    for _ in 0..4 {
        let m = settle(&mut c);
        c.crash(m);
        c.expect_failover_within(m, FAILOVER);
        c.restart(m);
        c.run_for(secs(4));
    }
    c.assert_ok();
});

// Hand-over while the master's driver is cut off from its daemon: the daemon cannot
// hear the stop, so the successor must wait for the lease plus the stop budget.
both!(step_down_with_driver_disconnected, |name, t| {
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    c.run_for(secs(1));
    c.disconnect_driver(m, true);
    c.run_for(ms(50));
    c.step_down(m);
    let new = c.expect_failover_within(m, FAILOVER).map(|(n, _)| n);
    c.require(new.is_some_and(|n| n != m), "a successor takes over");
    c.disconnect_driver(m, false);
    c.run_for(secs(3));
    c.assert_ok();
});

// Hand-over and maintenance while the master's stop fails: a failed stop confirms
// nothing, so the successor waits for the lease plus the stop budget.
both!(step_down_with_failing_stop, |name, t| {
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    c.set_service_stop(m, ms(20), true);
    c.run_for(secs(1));
    c.step_down(m);
    let new = c.expect_failover_within(m, FAILOVER).map(|(n, _)| n);
    c.require(new.is_some_and(|n| n != m), "a successor takes over");
    let n = new.unwrap_or_default();
    c.set_service_stop(n, ms(150), true);
    c.run_for(secs(2));
    c.maintenance(n, true);
    c.expect_failover_within(n, FAILOVER);
    c.run_for(secs(3));
    c.assert_ok();
});

// Renewals delayed 550 ms on the master's driver link (lease 714 ms, heartbeat 100 ms: each
// renewal arrives with just over a heartbeat of lease left, so the driver stays master): a
// late renewal never extends the driver's lease past the daemon's, so cutting the master
// off is still safe. Counting leases from arrival would keep the old service 550 ms too long.
both!(slow_driver_link, |name, t| {
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    c.delay_driver_link(m, ms(550));
    c.run_for(secs(2));
    c.require(
        c.service_running(m),
        "the master's driver keeps its service despite the slow link",
    );
    c.run_for(secs(3));
    c.failover_started(m);
    c.isolate(m);
    c.expect_failover_within(m, FAILOVER);
    c.run_for(secs(2));
    c.assert_ok();
});

// The master's daemon is paused (SIGSTOP, a VM pause) for 2 × ET_max: its driver demotes
// itself at lease end, a new master is elected, and the old one rejoins as backup.
both!(paused_master, |name, t| {
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    c.run_for(secs(1));
    c.failover_started(m);
    c.pause(m, secs(4));
    c.expect_failover_within(m, FAILOVER);
    c.run_for(secs(8));
    c.require(
        c.master() != Some(m),
        "the paused master came back as backup",
    );
    c.assert_ok();
});

// ----- fencing: a frozen driver, a frozen daemon, a frozen machine -----------------------

/// A 3-node cluster with `[fence]` (a fence run takes 20 ms) and, if `watchdog`, a watchdog
/// at the longest timeout the config allows.
fn fenced_cluster(name: &str, t: TransportKind, watchdog: bool) -> Cluster {
    let mut config = SimConfig::new(name, 3, t, seed_from_env(1));
    config.fence_ms = Some(20);
    config.watchdog = watchdog;
    Cluster::new(config)
}

// The master's driver freezes (SIGSTOP) and the master is cut off: the driver cannot stop
// the service at its lease end, so its daemon fences it before a new master may start.
both!(frozen_driver_and_cut_master_is_fenced, |name, t| {
    let mut c = fenced_cluster(name, t, false);
    let m = settle(&mut c);
    c.run_for(secs(1));
    c.pause_driver(m, secs(8));
    c.failover_started(m);
    c.isolate(m);
    let new = c.expect_failover_within(m, FAILOVER).map(|(n, _)| n);
    c.require(
        new.is_some_and(|n| n != m),
        "a new master on the majority side",
    );
    c.require(
        c.checker.fences.iter().any(|(_, node)| *node == m),
        "the old master's daemon fenced its frozen driver",
    );
    c.require(!c.service_running(m), "the fenced service is dead");
    c.run_for(secs(8));
    c.heal_all();
    c.run_for(secs(6));
    c.expect_stable(STABLE);
    c.assert_ok();
});

// The checker is strict about frozen drivers: without a fence the frozen driver's service
// runs on past its lease, and the run must fail (this is what the fence closes).
both!(frozen_driver_without_a_fence_is_two_services, |name, t| {
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    c.run_for(secs(1));
    c.pause_driver(m, secs(8));
    c.isolate(m);
    c.run_for(secs(6));
    let outcome = c.finish();
    assert!(
        outcome
            .violations
            .iter()
            .any(|v| v.contains("two services at once") && v.contains("frozen since")),
        "the checker must see the frozen driver's service beside the new master's: {:?}",
        outcome.violations
    );
    assert!(
        outcome
            .violations
            .iter()
            .any(|v| v.contains("two simulated services running at once")),
        "and so must the ground truth: {:?}",
        outcome.violations
    );
});

// The master's driver freezes while the master stays connected: the daemon notices the
// silent driver, turns unhealthy, hands over, and fences the driver before the successor
// starts.
both!(
    frozen_driver_of_a_connected_master_hands_over_and_is_fenced,
    |name, t| {
        let mut c = fenced_cluster(name, t, false);
        let m = settle(&mut c);
        c.run_for(secs(1));
        c.failover_started(m);
        c.pause_driver(m, secs(10));
        let new = c.expect_failover_within(m, FAILOVER).map(|(n, _)| n);
        c.require(new.is_some_and(|n| n != m), "a healthy node takes over");
        c.require(
            c.checker.fences.iter().any(|(_, node)| *node == m),
            "the old master's daemon fenced its frozen driver",
        );
        c.run_for(secs(12));
        c.require(c.master().is_some(), "a master once the driver runs again");
        c.assert_ok();
    }
);

// The master's daemon freezes and the master is cut off: its driver, still running, stops
// the service at its lease end; nothing needs fencing. (With a watchdog the frozen daemon
// cannot disarm it either, and the machine is reset: the price of the last layer.)
both!(frozen_daemon_and_cut_master, |name, t| {
    for watchdog in [false, true] {
        let mut c = fenced_cluster(name, t, watchdog);
        let m = settle(&mut c);
        c.run_for(secs(1));
        c.failover_started(m);
        c.pause(m, secs(6));
        c.isolate(m);
        c.expect_failover_within(m, FAILOVER);
        c.require(
            !c.service_running(m),
            "the driver stopped the service itself",
        );
        c.require(c.checker.fences.is_empty(), "no fence was needed");
        c.require(
            c.checker.resets.is_empty() != watchdog,
            "a watchdog (and only a watchdog) reset the frozen daemon's machine",
        );
        c.run_for(secs(8));
        c.heal_all();
        c.run_for(secs(6));
        c.expect_stable(STABLE);
        c.assert_ok();
    }
});

// Daemon and driver freeze together (a VM pause) and the master is cut off: only the
// watchdog can stop the service, and it resets the machine by lease end plus the stop
// budget, before the new master starts. The machine boots and rejoins as backup.
both!(frozen_machine_is_reset_by_its_watchdog, |name, t| {
    let mut c = fenced_cluster(name, t, true);
    let m = settle(&mut c);
    c.run_for(secs(1));
    c.require(
        c.watchdog(m).fires_at.is_some(),
        "the master's watchdog is armed",
    );
    c.failover_started(m);
    c.pause(m, secs(6));
    c.pause_driver(m, secs(6));
    c.isolate(m);
    let lease_end = c.checker.announced_lease_end(m);
    let new = c.expect_failover_within(m, FAILOVER).map(|(n, _)| n);
    c.require(
        new.is_some_and(|n| n != m),
        "a new master on the majority side",
    );
    let reset = c
        .checker
        .resets
        .iter()
        .find(|(_, node)| *node == m)
        .map(|(at, _)| *at);
    let budget = ms(c.config.stop_budget_ms);
    c.require(
        reset
            .zip(lease_end)
            .is_some_and(|(at, end)| at <= end + budget),
        "the watchdog reset the machine by the lease end plus the stop budget",
    );
    c.heal_all();
    c.run_for(secs(8));
    c.require(c.is_up(m), "the reset machine booted again");
    c.require(c.master().is_some_and(|n| n != m), "it rejoined as backup");
    c.expect_stable(STABLE);
    c.assert_ok();
});

// Without a watchdog, the same frozen machine runs two services: said plainly in README,
// and checked here so that the checker stays strict about it.
both!(
    frozen_machine_without_a_watchdog_is_two_services,
    |name, t| {
        let mut c = fenced_cluster(name, t, false);
        let m = settle(&mut c);
        c.run_for(secs(1));
        c.pause(m, secs(6));
        c.pause_driver(m, secs(6));
        c.isolate(m);
        c.run_for(secs(5));
        let outcome = c.finish();
        assert!(
            outcome
                .violations
                .iter()
                .any(|v| v.contains("two services at once") && v.contains("frozen since")),
            "a frozen machine without a watchdog must be a violation: {:?}",
            outcome.violations
        );
    }
);

// A graceful stop of the master disarms its watchdog (the magic close) once the stop is
// confirmed; the machine is not reset.
both!(graceful_stop_disarms_the_watchdog, |name, t| {
    let mut c = fenced_cluster(name, t, true);
    let m = settle(&mut c);
    c.run_for(secs(1));
    let fed = c.watchdog(m).feeds;
    c.run_for(secs(1));
    c.require(c.watchdog(m).feeds > fed, "the master feeds its watchdog");
    c.failover_started(m);
    let stopped = c.stop_graceful(m, secs(10));
    c.require(stopped, "the master stops gracefully");
    let w = c.watchdog(m);
    c.require(
        w.fires_at.is_none() && w.disarms >= 1,
        "the watchdog was disarmed with the magic close",
    );
    c.expect_failover_within(m, FAILOVER);
    c.run_for(secs(5));
    c.require(c.checker.resets.is_empty(), "no machine was reset");
    c.assert_ok();
});

// A heartbeat interval that does not divide the lease, clocks at the drift bound, and
// heals timed within one heartbeat of the followers' election timeout.
both!(heals_near_the_election_timeout, |name, t| {
    let mut config = SimConfig::new(name, 3, t, seed_from_env(1));
    config.heartbeat_ms = 90;
    config.clock_rates = vec![0.95, 1.05, 1.05];
    let mut c = Cluster::new(config);
    for round in 0..6u64 {
        let m = settle(&mut c);
        let others = c.others(&[m]);
        c.partition_oneway(&[m], &others);
        c.heal_near_timeout(round * 37);
        c.run_for(secs(3));
    }
    c.assert_ok();
});

// A torn or corrupt state file: the daemon refuses to start (it would forget its vote),
// and the other two carry on.
both!(damaged_state_file_refuses_to_start, |name, t| {
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    c.damage_disk(m, clustd_core::fault::DiskFault::Corrupt);
    c.expect_failover_within(m, FAILOVER);
    c.restart(m);
    c.require(!c.is_up(m), "the damaged node stays down");
    c.run_for(secs(3));
    c.require(
        c.master().is_some_and(|n| n != m),
        "the others keep a master",
    );
    c.assert_ok();
});

// A start that takes far longer than the lease (here 3 s) while the master is cut off:
// the lease end must cancel the running start and stop the service at once, not after.
both!(slow_start_cancelled_by_lease_end, |name, t| {
    let mut config = SimConfig::new(name, 3, t, seed_from_env(1));
    config.service_start_ms = 3000;
    let mut c = Cluster::new(config);
    let m = settle(&mut c);
    c.run_for(ms(300));
    c.failover_started(m);
    c.isolate(m);
    c.expect_failover_within(m, FAILOVER);
    c.run_for(secs(5));
    c.assert_ok();
});

/// Same seed, same trace: the hash of everything observed (events with simulated time,
/// and the bytes of messages in flight) is equal across two runs.
fn eventful_run(name: &str, t: TransportKind) -> sim::Outcome {
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    c.crash(m);
    c.run_for(secs(4));
    c.partition(&[(m + 1) % 3], &[(m + 2) % 3]);
    c.run_for(secs(2));
    c.restart(m);
    c.heal_all();
    c.run_for(secs(8));
    c.assert_ok()
}

both!(determinism, |name, t| {
    let a = eventful_run(name, t);
    let b = eventful_run(name, t);
    assert!(a.events > 10, "the run did something");
    if let Some(i) = (0..a.trace.len().min(b.trace.len())).find(|i| a.trace[*i] != b.trace[*i]) {
        panic!(
            "traces diverge at event {i}:\n  {}\n  {}\n(before: {:?})",
            a.trace[i],
            b.trace[i],
            &a.trace[i.saturating_sub(5)..i]
        );
    }
    assert_eq!(
        a.hash, b.hash,
        "same seed, different traces: the simulation is not deterministic\n{}\n--- vs ---\n{}",
        a.tail, b.tail
    );
});

// A host with the cluster secret and the drivers' credential but no node's key dials every
// node as every other node (the secret alone, a key of its own, a driver link carrying
// election messages with an absurd term): it never becomes a peer, and the cluster keeps
// its master and its term.
both!(insider_cannot_pose_as_a_node, |name, t| {
    let mut config = SimConfig::new(name, 3, t, seed_from_env(1));
    config.insider = true;
    let mut c = Cluster::new(config);
    let master = settle(&mut c);
    let term = c.term_of(master);
    for to in 0..3 {
        for from in 0..3 {
            c.apply(&clustd_core::fault::Fault::ForgedTerm {
                to,
                from,
                above: u64::MAX,
            });
        }
    }
    c.require(c.master() == Some(master), "the master stays master");
    c.require(c.term_of(master) == term, "the term never moves");
    c.expect_stable(secs(5));
    c.assert_ok();
});

// ----- health (issue 12) ---------------------------------------------------------------

/// Runs for `d`, sampling the master after every tick; returns how many times mastership
/// moved to another node (a gap without a master between two different masters is one
/// move, the same master before and after a gap is none).
fn run_counting_moves(c: &mut Cluster, d: Duration, mut each: impl FnMut(&mut Cluster)) -> usize {
    let until = c.now() + d;
    let mut last = c.master();
    let mut moves = 0;
    while c.now() < until {
        c.step();
        each(c);
        if let Some(m) = c.master() {
            if last.is_some_and(|l| l != m) {
                moves += 1;
            }
            last = Some(m);
        }
    }
    moves
}

/// Runs for `d` and requires that node `i` is never master meanwhile.
fn never_master(c: &mut Cluster, i: usize, d: Duration, what: &str) {
    let until = c.now() + d;
    while c.now() < until {
        c.step();
        let m = c.master();
        c.require(m != Some(i), what);
    }
}

// The master's service dies: the master hands over (after its drivers confirmed the
// stop) to a follower whose service is healthy.
both!(unhealthy_master_hands_over, |name, t| {
    let mut c = cluster(name, 3, t);
    let old = settle(&mut c);
    c.set_service_healthy(old, false);
    let new = c.run_until(FAILOVER, |c| c.master().is_some_and(|m| m != old));
    c.require(new, "a healthy follower takes over");
    let new = c.master().unwrap_or(old);
    c.require(
        c.service_healthy(new),
        "the new master's service is healthy",
    );
    never_master(
        &mut c,
        old,
        secs(5),
        "the unhealthy old master stays backup",
    );
    c.expect_stable(secs(5));
    c.assert_ok();
});

// Every service dies (the followers' first, so that no hand-over can start to a node about
// to fail): with nobody healthy to hand over to, the master stays (`health.alone = stay`,
// the default) and nobody campaigns.
both!(every_service_unhealthy_master_stays, |name, t| {
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    for f in c.others(&[m]) {
        c.set_service_healthy(f, false);
    }
    c.run_for(secs(1));
    c.set_service_healthy(m, false);
    c.expect_stable(secs(10));
    c.require(
        c.service_running(m),
        "the unhealthy master keeps its service",
    );
    for i in 0..3 {
        c.set_service_healthy(i, true);
    }
    c.expect_stable(secs(3));
    c.assert_ok();
});

// The master's service dies as it is cut off: its lease runs out whatever its health, the
// majority elects a healthy node, and after the heal the unhealthy old master never comes
// back.
both!(unhealthy_master_isolated, |name, t| {
    let mut c = cluster(name, 5, t);
    let old = settle(&mut c);
    c.failover_started(old);
    c.isolate(old);
    c.set_service_healthy(old, false);
    let new = c.expect_failover_within(old, FAILOVER).map(|(m, _)| m);
    c.require(
        new.is_some_and(|m| m != old && c.service_healthy(m)),
        "the majority elects a healthy node",
    );
    never_master(
        &mut c,
        old,
        secs(3),
        "the isolated old master is not master",
    );
    c.heal_all();
    never_master(
        &mut c,
        old,
        secs(8),
        "the unhealthy old master never returns",
    );
    c.expect_stable(secs(5));
    c.assert_ok();
});

// The master keeps a majority with one peer, the third node cut off; its service dies:
// it hands over to that peer, the only healthy node it reaches.
both!(
    unhealthy_master_in_majority_hands_over_to_its_peer,
    |name, t| {
        let mut c = cluster(name, 3, t);
        let m = settle(&mut c);
        let (peer, far) = ((m + 1) % 3, (m + 2) % 3);
        c.partition(&[m, peer], &[far]);
        c.run_for(secs(2));
        c.require(c.master() == Some(m), "the master keeps its majority");
        c.set_service_healthy(m, false);
        let moved = c.run_until(FAILOVER, |c| c.master().is_some_and(|x| x != m));
        c.require(moved, "the unhealthy master hands over");
        c.require(
            c.master() == Some(peer),
            "to its healthy peer on the majority side",
        );
        c.run_for(secs(3));
        c.heal_all();
        c.run_for(secs(6));
        c.require(
            c.master() == Some(peer),
            "the peer stays master after the heal",
        );
        c.expect_stable(secs(5));
        c.assert_ok();
    }
);

// A flapping check, at its worst: every second the current master's service fails, the
// second after every service is healthy again, for 60 s. With `min_master_ms = 10000`
// mastership moves at most once per 10 s (60 / 10 + 1 times).
both!(flapping_health_paced_by_min_master, |name, t| {
    let mut config = SimConfig::new(name, 3, t, seed_from_env(1));
    config.min_master_ms = Some(10_000);
    let mut c = Cluster::new(config);
    settle(&mut c);
    let start = c.now();
    let mut flipped = 0u64;
    let moves = run_counting_moves(&mut c, secs(60), |c| {
        let second = (c.now() - start).as_secs();
        if second < flipped {
            return;
        }
        flipped = second + 1;
        if second.is_multiple_of(2) {
            if let Some(m) = c.master() {
                c.set_service_healthy(m, false);
            }
        } else {
            for i in 0..3 {
                c.set_service_healthy(i, true);
            }
        }
    });
    eprintln!("{name}: {moves} moves in 60 s");
    c.require(moves >= 2, "the flapping check moves mastership at all");
    c.require(moves <= 7, &format!("{moves} moves in 60 s: at most 7"));
    for i in 0..3 {
        c.set_service_healthy(i, true);
    }
    c.run_for(secs(3));
    c.assert_ok();
});

// Every node restarts, one of them (the preferred node, by priority) with a failing service:
// its driver reports that before the daemon could campaign, so it is never master. The
// daemon counts a node with no report yet as healthy, so this holds only because the
// drivers noticed the outage (a QUIC connection to a dead host lingers until the 5 s idle
// timeout: the outage lasts 6 s) and retry every 100 ms, while an election takes ET_min =
// 1 s at least. After a shorter outage the daemon may win an election before its driver
// is back (SIM_SEED=3, outage 1 s, on QUIC): a daemon-side gap, not closed here.
both!(
    booting_with_a_failing_check_never_becomes_master,
    |name, t| {
        let mut config = SimConfig::new(name, 3, t, seed_from_env(1));
        config.priorities = vec![10, 0, 0];
        config.driver_reconnect_max_ms = 100;
        let mut c = Cluster::new(config);
        settle(&mut c);
        for i in 0..3 {
            c.crash_fin(i);
        }
        c.run_for(secs(6));
        c.set_service_healthy(0, false);
        for i in 0..3 {
            c.restart(i);
        }
        never_master(
            &mut c,
            0,
            secs(10),
            "the node booting unhealthy is never master",
        );
        c.require(c.master().is_some(), "the healthy nodes elect a master");
        c.set_service_healthy(0, true);
        c.run_for(secs(2));
        c.expect_stable(secs(5));
        c.assert_ok();
    }
);

// Health comes back without preemption: mastership stays where it went.
both!(recovered_health_does_not_move_back, |name, t| {
    let mut c = cluster(name, 3, t);
    let old = settle(&mut c);
    c.set_service_healthy(old, false);
    let moved = c.run_until(FAILOVER, |c| c.master().is_some_and(|m| m != old));
    c.require(moved, "the unhealthy master hands over");
    c.set_service_healthy(old, true);
    c.run_for(secs(2));
    c.expect_stable(secs(10));
    c.assert_ok();
});

// Health comes back on a preempting node of higher priority: it takes mastership back, but
// only once `min_master` (5 s) has passed since the health hand-over.
both!(recovered_health_preempts_after_min_master, |name, t| {
    let mut config = SimConfig::new(name, 3, t, seed_from_env(1));
    config.priorities = vec![10, 0, 0];
    config.preempt = vec![true, false, false];
    config.min_master_ms = Some(5000);
    // Clocks at exactly global time, so that "after min_master" is exact.
    config.drift = false;
    let mut c = Cluster::new(config);
    settle(&mut c);
    let first = c.run_until(LIVENESS, |c| c.master() == Some(0));
    c.require(first, "the preferred node becomes master");
    c.run_for(secs(1));
    let failed = c.now();
    c.set_service_healthy(0, false);
    let moved = c.run_until(FAILOVER, |c| c.master().is_some_and(|m| m != 0));
    c.require(moved, "the unhealthy master hands over");
    c.set_service_healthy(0, true);
    let back = c.run_until(secs(10), |c| c.master() == Some(0));
    c.require(back, "the recovered preferred node preempts");
    let after = c.now() - failed;
    eprintln!("{name}: preempted {after:?} after the service failed");
    c.require(
        after >= secs(5),
        &format!("preempted {after:?} after the hand-over, before min_master"),
    );
    c.expect_stable(secs(5));
    c.assert_ok();
});

// The new master's start fails (the check `start`): it hands over to a node whose start
// works. The third node is in maintenance while the failing node takes over, so that it
// is the only successor.
both!(failing_start_hands_over, |name, t| {
    let mut c = cluster(name, 3, t);
    let m = settle(&mut c);
    let (bad, spare) = ((m + 1) % 3, (m + 2) % 3);
    c.set_start_fails(bad, true);
    c.maintenance(spare, true);
    c.run_for(secs(1));
    c.step_down(m);
    let took = c.run_until(FAILOVER, |c| c.master() == Some(bad));
    c.require(took, "the only eligible successor takes over");
    c.maintenance(spare, false);
    let moved = c.run_until(FAILOVER, |c| {
        c.master().is_some_and(|x| x != bad && c.service_running(x))
    });
    c.require(moved, "the failed start hands over to a working node");
    never_master(
        &mut c,
        bad,
        secs(5),
        "the node whose start failed stays backup",
    );
    c.expect_stable(secs(5));
    c.assert_ok();
});
