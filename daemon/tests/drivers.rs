//! Drivers against real daemons (three, in this process, on loopback), for both transports.
//!
//! The shell driver runs `start`/`stop` with the right environment, runs `stop` by itself
//! when its daemon dies while master — within the lease it was given plus the stop budget,
//! before the new master starts — and reconnects and converges when the daemon comes back.
//!
//! What bounds the service on a step-down, judged by the one service-interval checker from
//! the daemons' driver records: a failed stop holds the hand-over until the driver's lease
//! end plus the stop budget (and is reported loudly); a driver that disconnected while
//! master holds it only until then too. And the wire: leases are stamped with the machine's
//! monotonic clock at the send time.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clustd::local::{DRIVER_SECRET_FILE, LocalCluster, ServiceWatch};
use clustd::runtime::{Command, Shutdown};
use clustd::{Clock, DriverRecord};
use clustd_core::NodeId;
use clustd_core::codec;
use clustd_core::driver::ToDriver;
use clustd_drivers::{
    ActionResult, ClusterEvent, Driver, DriverConfig, DriverRole, DriverSession, RoleChange,
    ShellConfig, ShellDriver,
};
use clustd_transport::{
    Endpoint, EndpointConfig, PeerKind, Secret, TokioNet, TransportEvent, TransportKind,
};

const WAIT: Duration = Duration::from_secs(30);

clustd_transport::both_transports!(
    shell_driver_follows_real_daemons,
    a_failed_stop_holds_the_hand_over_until_lease_end_plus_stop_budget,
    a_disconnected_driver_holds_a_hand_over_only_until_its_lease_end_plus_stop_budget,
    leases_are_stamped_with_the_machine_clock_at_send_time,
);

/// `action|role|term|node|leader|prev|reason|unix-ns`, one line per script run.
fn actions(log: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

fn attach(cluster: &LocalCluster, i: usize, kind: TransportKind) -> (DriverSession, PathBuf) {
    let dir = cluster.dir.path();
    let name = cluster.settings[i].id.as_str();
    let log = dir.join(format!("actions-{name}.log"));
    let transport = kind.as_str();
    let line = "$CLUSTD_ROLE|$CLUSTD_TERM|$CLUSTD_NODE_ID|$CLUSTD_LEADER_ID|$CLUSTD_PREV_ROLE|$CLUSTD_REASON|$(date +%s%N)";
    let text = format!(
        "daemon = \"{}\"\ntransport = \"{transport}\"\nsecret_file = \"{DRIVER_SECRET_FILE}\"\ndriver_id = \"shell-{name}\"\n\n[script]\ntimeout_ms = 20000\nstart = '''echo \"start|{line}\" >> {log}'''\nstop = '''echo \"stop|{line}\" >> {log}'''\n",
        cluster.settings[i].listen,
        log = log.display()
    );
    let config = ShellConfig::parse(&dir.join(format!("shell-{name}.toml")), &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let session =
        clustd_drivers::connect(config.connection.clone(), ShellDriver::from_config(&config))
            .expect("driver starts");
    (session, log)
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

async fn shell_driver_follows_real_daemons(kind: TransportKind) {
    let mut cluster = LocalCluster::start(3, kind, "").expect("cluster");
    let drivers: Vec<(DriverSession, PathBuf)> =
        (0..3).map(|i| attach(&cluster, i, kind)).collect();
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let m = cluster.index(&master).expect("known");
    let term = cluster.nodes[m].handle.status().term.to_string();

    // The master's driver ran start with the full environment; the others ran stop once.
    let log = &drivers[m].1;
    wait_until("the master's driver runs start", || {
        actions(log).iter().any(|a| a[0] == "start")
    })
    .await;
    let start = actions(log)
        .into_iter()
        .find(|a| a[0] == "start")
        .expect("start");
    assert_eq!(
        start[1..7],
        [
            "master",
            &term,
            master.as_str(),
            master.as_str(),
            "backup",
            "elected"
        ]
    );
    for (i, (_, log)) in drivers.iter().enumerate() {
        if i != m {
            wait_until("backups run stop once", || !actions(log).is_empty()).await;
            let first = &actions(log)[0];
            assert_eq!(first[0..2], ["stop", "backup"], "{first:?}");
        }
    }
    // The daemon shows its driver's acknowledgement.
    wait_until("the daemon sees the driver's ack", || {
        let s = cluster.nodes[m].handle.status();
        s.drivers
            .iter()
            .any(|d| d.connected && d.acknowledged && d.last_result.as_deref() == Some("ok"))
    })
    .await;

    // The master's daemon dies: its driver stops by itself when the lease runs out.
    let killed_at = unix_ns();
    cluster.stop(m, Shutdown::Immediate).await.expect("stop");
    let after_start = |log: &Path| {
        actions(log)
            .into_iter()
            .skip_while(|a| a[0] != "start")
            .skip(1)
            .collect::<Vec<_>>()
    };
    wait_until("the orphaned driver runs stop", || {
        after_start(log).iter().any(|a| a[0] == "stop")
    })
    .await;
    let stop = after_start(log)
        .into_iter()
        .find(|a| a[0] == "stop")
        .expect("stop");
    assert_eq!(stop[0..3], ["stop", "backup", &term]);
    assert_eq!(stop[5..7], ["master", "lease-expired"]);
    let stopped_at: u128 = stop[7].parse().expect("ns");
    let core = &cluster.settings[m].core;
    let budget = (core.lease + core.stop_budget).as_nanos();
    assert!(
        stopped_at - killed_at < budget,
        "stop came {} ms after the kill",
        (stopped_at - killed_at) / 1_000_000
    );

    // The new master's start comes after that stop: never two services at once.
    let next = cluster
        .wait_for_master(Some(&master), WAIT)
        .await
        .expect("failover");
    let n = cluster.index(&next).expect("known");
    let next_log = &drivers[n].1;
    wait_until("the new master's driver runs start", || {
        actions(next_log).iter().any(|a| a[0] == "start")
    })
    .await;
    let started: u128 = actions(next_log)
        .into_iter()
        .find(|a| a[0] == "start")
        .expect("start")[7]
        .parse()
        .expect("ns");
    assert!(
        started > stopped_at,
        "new master started before the old one stopped"
    );

    // The old daemon comes back: its driver reconnects and converges (backup, acknowledged).
    cluster.restart(m).await.expect("restart");
    wait_until("the driver reconnects and acknowledges", || {
        let s = cluster.nodes[m].handle.status();
        s.drivers
            .iter()
            .any(|d| d.connected && d.acknowledged && d.last_role.as_deref() == Some("backup"))
    })
    .await;
    assert_eq!(
        actions(log).iter().filter(|a| a[0] == "start").count(),
        1,
        "no second start on the old master"
    );
    for (session, _) in drivers {
        session.shutdown().await.expect("driver shuts down");
    }
    cluster.shutdown().await;
}

/// A driver that starts fine and, if told so, fails every stop of a running service; it
/// keeps the cluster events it hears.
struct Scripted {
    fail_stops: bool,
    events: Arc<Mutex<Vec<ClusterEvent>>>,
}

impl Driver for Scripted {
    async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
        if self.fail_stops
            && change.role == DriverRole::Backup
            && change.previous_role == Some(DriverRole::Master)
        {
            ActionResult::Failed("stop script exited 1".into())
        } else {
            ActionResult::Ok
        }
    }

    async fn on_cluster_event(&mut self, event: ClusterEvent) {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
    }
}

fn secret(cluster: &LocalCluster) -> Vec<u8> {
    std::fs::read(cluster.dir.path().join(DRIVER_SECRET_FILE))
        .expect("secret")
        .trim_ascii()
        .to_vec()
}

/// Connects a [`Scripted`] driver named `id` to node `i`.
fn attach_scripted(
    cluster: &LocalCluster,
    i: usize,
    kind: TransportKind,
    id: &str,
    fail_stops: bool,
) -> (DriverSession, Arc<Mutex<Vec<ClusterEvent>>>) {
    let config = DriverConfig::new(cluster.settings[i].listen, kind, secret(cluster), "test")
        .with_driver_id(id)
        .expect("valid id");
    let events = Arc::new(Mutex::new(Vec::new()));
    let driver = Scripted {
        fail_stops,
        events: events.clone(),
    };
    let session = clustd_drivers::connect(config, driver).expect("driver starts");
    (session, events)
}

/// The first "told master" record of a node other than `except`, with its global time.
fn told_master_elsewhere(watch: &mut ServiceWatch, except: &NodeId) -> Option<Duration> {
    watch
        .records()
        .into_iter()
        .find(|r| &r.node != except && matches!(r.record, DriverRecord::ToldMaster { .. }))
        .map(|r| r.at)
}

/// The latest lease end (global) given to any driver of `node` before global time `before`.
fn last_lease_end(watch: &mut ServiceWatch, node: &NodeId, before: Duration) -> Duration {
    watch
        .records()
        .into_iter()
        .filter(|r| &r.node == node && r.at < before)
        .filter_map(|r| r.lease_until())
        .max()
        .expect("the old master gave its drivers a lease")
}

async fn a_failed_stop_holds_the_hand_over_until_lease_end_plus_stop_budget(kind: TransportKind) {
    let mut cluster = LocalCluster::start(3, kind, "").expect("cluster");
    let mut watch = ServiceWatch::new(tokio::time::Instant::now());
    for node in &cluster.nodes {
        watch.follow(node);
    }
    let drivers: Vec<_> = (0..3)
        .map(|i| attach_scripted(&cluster, i, kind, &format!("failing-{i}"), true))
        .collect();
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let m = cluster.index(&master).expect("known");
    wait_until("the master's driver has started", || {
        cluster.nodes[m]
            .handle
            .status()
            .drivers
            .iter()
            .any(|d| d.acknowledged && d.last_role.as_deref() == Some("master") && d.may_run)
    })
    .await;

    // Step down: the driver answers the stop with Failed. That must not end the service,
    // and operators must see it: in status (until a later stop succeeds) and in metrics.
    assert!(cluster.nodes[m].handle.command(Command::StepDown).await);
    wait_until("status shows the failed stop", || {
        let status = cluster.nodes[m].handle.status();
        status.drivers.iter().any(|d| d.stop_failed && d.may_run)
            && status.render().contains("STOP FAILED")
    })
    .await;
    let mut handed_over = None;
    wait_until("another node tells its driver master", || {
        handed_over = told_master_elsewhere(&mut watch, &master);
        handed_over.is_some()
    })
    .await;
    let handed_over = handed_over.expect("just seen");
    let lease_end = last_lease_end(&mut watch, &master, handed_over);
    let budget = cluster.settings[m].core.stop_budget;
    assert!(
        handed_over >= lease_end + budget,
        "handed over at {handed_over:?}, before the failed driver's lease end {lease_end:?} + stop budget {budget:?}"
    );
    let checker = watch.check();
    assert!(
        checker.violations().is_empty(),
        "{:#?}",
        checker.violations()
    );
    assert_eq!(checker.failed_stops(), 1);

    let status = cluster.nodes[m].handle.status();
    let driver = &status.drivers[0];
    assert!(
        driver
            .last_stop_failure
            .as_deref()
            .is_some_and(|f| f.contains("stop script exited 1")),
        "{driver:?}"
    );
    let metrics = cluster.nodes[m].handle.metrics_text();
    assert!(
        metrics.contains("clustd_driver_stop_failures_total 1"),
        "{metrics}"
    );
    let events = drivers[m].1.clone();
    wait_until("the node's driver hears of the failed stop", || {
        events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|e| matches!(e, ClusterEvent::StopFailed { driver, .. } if driver.as_str() == format!("failing-{m}")))
    })
    .await;

    for (session, _) in drivers {
        session.shutdown().await.expect("driver shuts down");
    }
    cluster.shutdown().await;
}

async fn a_disconnected_driver_holds_a_hand_over_only_until_its_lease_end_plus_stop_budget(
    kind: TransportKind,
) {
    let mut cluster = LocalCluster::start(3, kind, "").expect("cluster");
    let mut watch = ServiceWatch::new(tokio::time::Instant::now());
    for node in &cluster.nodes {
        watch.follow(node);
    }
    let mut drivers: Vec<_> = (0..3)
        .map(|i| attach_scripted(&cluster, i, kind, &format!("ok-{i}"), false))
        .collect();
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let m = cluster.index(&master).expect("known");
    let (gone, _) = attach_scripted(&cluster, m, kind, "gone", false);
    wait_until("both of the master's drivers have started", || {
        let s = cluster.nodes[m].handle.status();
        s.drivers.len() == 2 && s.drivers.iter().all(|d| d.acknowledged && d.may_run)
    })
    .await;

    // "gone" disconnects while master, without a stop the daemon hears of: it may still
    // run — until its lease end plus the stop budget, when its own fail-safe has acted.
    gone.shutdown().await.expect("driver shuts down");
    let gone_status = || {
        cluster.nodes[m]
            .handle
            .status()
            .drivers
            .into_iter()
            .find(|d| d.id == "gone")
    };
    wait_until("the daemon sees it gone", || {
        !gone_status().expect("listed while it may run").connected
    })
    .await;
    assert!(
        gone_status().is_some_and(|d| d.may_run),
        "counted as running after it left"
    );
    // Then it is forgotten: a departed driver that can no longer run is kept by nobody.
    wait_until("its lease end plus stop budget has passed", || {
        gone_status().is_none()
    })
    .await;

    // So it no longer holds up a step-down: the connected driver's Ok is enough, and the
    // hand-over comes before the lease the old master was still giving out has ended.
    assert!(cluster.nodes[m].handle.command(Command::StepDown).await);
    let mut handed_over = None;
    wait_until("another node tells its driver master", || {
        handed_over = told_master_elsewhere(&mut watch, &master);
        handed_over.is_some()
    })
    .await;
    let handed_over = handed_over.expect("just seen");
    let lease_end = last_lease_end(&mut watch, &master, handed_over);
    assert!(
        handed_over < lease_end,
        "hand-over at {handed_over:?} waited for the lease end {lease_end:?}: the departed driver held it up"
    );
    let checker = watch.check();
    assert!(
        checker.violations().is_empty(),
        "{:#?}",
        checker.violations()
    );

    for (session, _) in drivers.drain(..) {
        session.shutdown().await.expect("driver shuts down");
    }
    cluster.shutdown().await;
}

/// A bare driver endpoint: what the daemon puts on the wire.
async fn raw_driver(
    cluster: &LocalCluster,
    i: usize,
    kind: TransportKind,
) -> (Endpoint, tokio::sync::mpsc::Receiver<TransportEvent>) {
    let secret = Secret::from_bytes(secret(cluster)).expect("secret");
    let id = NodeId::new("raw").expect("valid id");
    let config = EndpointConfig::new(kind, id, PeerKind::Driver, secret);
    let (endpoint, events) = Endpoint::start(TokioNet, config).await.expect("endpoint");
    endpoint.dial(cluster.settings[i].listen);
    (endpoint, events)
}

async fn leases_are_stamped_with_the_machine_clock_at_send_time(kind: TransportKind) {
    let mut cluster = LocalCluster::start(3, kind, "").expect("cluster");
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let m = cluster.index(&master).expect("known");
    let before = clustd::clock::machine_monotonic_ns();
    let (endpoint, mut events) = raw_driver(&cluster, m, kind).await;
    let mut seen_role = false;
    let mut renewals = 0;
    let mut last_sent = 0;
    let node_lease = cluster.nodes[m].handle.lease();
    let clock = cluster.nodes[m].clock;
    tokio::time::timeout(WAIT, async {
        while renewals < 3 {
            let event = events.recv().await.expect("the endpoint runs");
            let TransportEvent::Frame { frame, .. } = event else {
                continue;
            };
            let received = clustd::clock::machine_monotonic_ns();
            let (sent_at_ns, lease_ms) = match codec::decode::<ToDriver>(&frame).expect("decodes") {
                ToDriver::Role {
                    role,
                    lease_remaining_ms,
                    sent_at_ns,
                    stop_budget_ms,
                    ..
                } => {
                    assert_eq!(role, DriverRole::Master);
                    assert_eq!(stop_budget_ms, 200, "election.stop_budget_ms");
                    seen_role = true;
                    (sent_at_ns, lease_remaining_ms)
                }
                ToDriver::LeaseRenewal {
                    lease_remaining_ms,
                    sent_at_ns,
                    ..
                } => {
                    renewals += 1;
                    (sent_at_ns, lease_remaining_ms)
                }
                _ => continue,
            };
            // The machine's CLOCK_MONOTONIC at the send: after the dial, before the receipt.
            assert!(
                before <= sent_at_ns && sent_at_ns <= received,
                "{before} <= {sent_at_ns} <= {received}"
            );
            assert!(sent_at_ns >= last_sent, "send times never go back");
            last_sent = sent_at_ns;
            // The driver's lease ends no later than the daemon's own (already renewed since).
            let driver_end = sent_at_ns + u64::from(lease_ms) * 1_000_000;
            if let Some(until) = *node_lease.borrow() {
                let daemon_end = clock.monotonic_ns(until);
                assert!(driver_end <= daemon_end, "{driver_end} > {daemon_end}");
            }
        }
    })
    .await
    .expect("a role and renewals");
    assert!(seen_role);
    endpoint.shutdown().await;
    cluster.shutdown().await;
}
