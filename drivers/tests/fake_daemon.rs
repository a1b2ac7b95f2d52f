//! The shell driver end to end against a fake daemon: a real clustd-transport endpoint on
//! 127.0.0.1 speaking the real driver protocol (`ToDriver` / `FromDriver` frames through
//! `clustd_core::codec`). The driver runs in-process through `clustd_drivers::connect`.
//! Lease notices are stamped with the machine's `CLOCK_MONOTONIC`, as the daemon does.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clustd_core::driver::{ActionResult, DriverRole, FromDriver, ToDriver};
use clustd_core::{NodeId, Term};
use clustd_drivers::{
    DriverSession, MachineClock, MonotonicClock, ShellConfig, ShellDriver, TokioMachineClock,
    TransportKind,
};
use clustd_transport::TokioNet;
use support::{FakeDaemon, SECRET, group_alive, init_tracing, lines, wait_until};

struct Setup {
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("secret"), SECRET).expect("write");
        let log = dir.path().join("actions.log");
        Self { dir, log }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the shell driver in-process; `start`/`stop` append a line to the log first.
    fn driver(
        &self,
        daemon: SocketAddr,
        kind: TransportKind,
        start_extra: &str,
        extra: &str,
    ) -> DriverSession {
        self.driver_with(daemon, kind, start_extra, "", extra)
    }

    /// [`Setup::driver`], with `stop_extra` run after the stop's log line.
    fn driver_with(
        &self,
        daemon: SocketAddr,
        kind: TransportKind,
        start_extra: &str,
        stop_extra: &str,
        extra: &str,
    ) -> DriverSession {
        let transport = kind.as_str();
        let line = "$CLUSTD_ROLE|$CLUSTD_TERM|$CLUSTD_NODE_ID|$CLUSTD_LEADER_ID|$CLUSTD_PREV_ROLE|$CLUSTD_REASON|$(date +%s%N)";
        let text = format!(
            "daemon = \"{daemon}\"\ntransport = \"{transport}\"\nsecret_file = \"secret\"\ndriver_id = \"shell-test\"\n{extra}\n\
             [script]\ncwd = \".\"\ntimeout_ms = 20000\n\
             start = '''echo \"start|{line}\" >> actions.log; {start_extra}'''\n\
             stop = '''echo \"stop|{line}\" >> actions.log; {stop_extra}'''\n"
        );
        let config =
            ShellConfig::parse(&self.path("shell.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        let driver = ShellDriver::from_config(&config);
        clustd_drivers::connect(config.connection, driver).expect("session starts")
    }

    /// The action log as (action, role, term, node, leader, prev, reason, unix ns).
    fn actions(&self) -> Vec<Vec<String>> {
        lines(&self.log)
            .iter()
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect()
    }

    fn action_names(&self) -> Vec<String> {
        self.actions()
            .iter()
            .map(|a| format!("{}-{}", a[0], a[2]))
            .collect()
    }
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid")
}

/// The stop budget the fake daemon announces (`election.stop_budget_ms`).
const STOP_BUDGET_MS: u32 = 5000;

fn role(
    r: DriverRole,
    term: u64,
    seq: u64,
    lease_ms: u32,
    leader: Option<&str>,
    reason: &str,
) -> ToDriver {
    ToDriver::Role {
        role: r,
        term: Term(term),
        node: id("node-1"),
        leader: leader.map(id),
        lease_remaining_ms: lease_ms,
        sent_at_ns: MonotonicClock.now_ns(),
        stop_budget_ms: STOP_BUDGET_MS,
        reason: reason.into(),
        seq,
    }
}

/// A lease renewal stamped now, as the daemon sends it.
fn renewal(term: u64, lease_ms: u32) -> ToDriver {
    ToDriver::LeaseRenewal {
        term: Term(term),
        lease_remaining_ms: lease_ms,
        sent_at_ns: MonotonicClock.now_ns(),
    }
}

async fn expect_ack(daemon: &mut FakeDaemon, seq: u64, r: DriverRole, result: ActionResult) {
    assert_eq!(
        daemon.next_from_driver().await,
        FromDriver::Ack {
            seq,
            role: r,
            result
        }
    );
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

async fn start_and_stop_with_the_right_environment(kind: TransportKind) {
    init_tracing();
    let s = Setup::new();
    let mut daemon = FakeDaemon::start(kind, localhost()).await;
    let session = s.driver(daemon.addr, kind, "", "");
    assert_eq!(daemon.accept_driver().await, id("shell-test"));
    use DriverRole::{Backup, Master};
    daemon.send(
        &id("shell-test"),
        &role(Backup, 1, 1, 0, Some("node-2"), "follower"),
    );
    expect_ack(&mut daemon, 1, Backup, ActionResult::Ok).await;
    daemon.send(
        &id("shell-test"),
        &role(Master, 2, 2, 60_000, Some("node-1"), "elected"),
    );
    expect_ack(&mut daemon, 2, Master, ActionResult::Ok).await;
    daemon.send(&id("shell-test"), &role(Backup, 3, 3, 0, None, "step-down"));
    expect_ack(&mut daemon, 3, Backup, ActionResult::Ok).await;
    let a = s.actions();
    assert_eq!(a.len(), 3, "{a:?}");
    assert_eq!(
        a[0][..7],
        ["stop", "backup", "1", "node-1", "node-2", "", "follower"]
    );
    assert_eq!(
        a[1][..7],
        [
            "start", "master", "2", "node-1", "node-1", "backup", "elected"
        ]
    );
    assert_eq!(
        a[2][..7],
        ["stop", "backup", "3", "node-1", "", "master", "step-down"]
    );
    assert!(session.status().connected);
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

#[tokio::test]
async fn start_and_stop_with_the_right_environment_over_quic() {
    start_and_stop_with_the_right_environment(TransportKind::Quic).await;
}

#[tokio::test]
async fn start_and_stop_with_the_right_environment_over_websocket() {
    start_and_stop_with_the_right_environment(TransportKind::WebSocket).await;
}

#[tokio::test]
async fn reconnects_after_the_daemon_restarts_and_converges() {
    init_tracing();
    let kind = TransportKind::WebSocket;
    let s = Setup::new();
    let mut daemon = FakeDaemon::start(kind, localhost()).await;
    let addr = daemon.addr;
    let session = s.driver(addr, kind, "", "");
    let drv = daemon.accept_driver().await;
    daemon.send(
        &drv,
        &role(DriverRole::Master, 4, 1, 60_000, Some("node-1"), "elected"),
    );
    expect_ack(&mut daemon, 1, DriverRole::Master, ActionResult::Ok).await;
    daemon.vanish().await;
    wait_until("the driver notices the daemon is gone", || {
        !session.status().connected
    })
    .await;

    // A new daemon run on the same address: sequence numbers start over, and it is backup now.
    let mut daemon = FakeDaemon::start(kind, addr).await;
    let drv = daemon.accept_driver().await;
    daemon.send(
        &drv,
        &role(DriverRole::Backup, 5, 1, 0, Some("node-2"), "restarted"),
    );
    expect_ack(&mut daemon, 1, DriverRole::Backup, ActionResult::Ok).await;
    assert_eq!(s.action_names(), ["start-4", "stop-5"]);

    // Once more, with the same state: converged already, so nothing runs, but it is acknowledged.
    daemon.vanish().await;
    let mut daemon = FakeDaemon::start(kind, addr).await;
    let drv = daemon.accept_driver().await;
    daemon.send(
        &drv,
        &role(DriverRole::Backup, 5, 1, 0, Some("node-2"), "restarted"),
    );
    expect_ack(&mut daemon, 1, DriverRole::Backup, ActionResult::Ok).await;
    assert_eq!(s.action_names(), ["start-4", "stop-5"]);
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

fn unix_ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_nanos()
}

#[tokio::test]
async fn daemon_vanishing_while_master_makes_the_driver_stop_before_its_lease_runs_out() {
    init_tracing();
    let kind = TransportKind::Quic;
    let s = Setup::new();
    let mut daemon = FakeDaemon::start(kind, localhost()).await;
    let session = s.driver(daemon.addr, kind, "", "");
    let drv = daemon.accept_driver().await;
    // The daemon's own lease is 3.5 s; it hands the driver 2 s (its delivery margin is 1.5 s).
    let given_ms = 2000u32;
    let daemon_lease = Duration::from_millis(3500);
    daemon.send(
        &drv,
        &role(
            DriverRole::Master,
            7,
            1,
            given_ms,
            Some("node-1"),
            "elected",
        ),
    );
    expect_ack(&mut daemon, 1, DriverRole::Master, ActionResult::Ok).await;
    // Renewals keep the driver master well past the first lease.
    let mut last_renewal = SystemTime::now();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        last_renewal = SystemTime::now();
        daemon.send(&drv, &renewal(7, given_ms));
    }
    assert_eq!(s.action_names(), ["start-7"], "no stop while renewals flow");
    assert_eq!(session.status().lease_expiries, 0);
    daemon.vanish().await; // like SIGKILL: no goodbye, no more renewals

    wait_until("the driver runs stop by itself", || s.actions().len() == 2).await;
    let stop = &s.actions()[1];
    assert_eq!(
        stop[..7],
        [
            "stop",
            "backup",
            "7",
            "node-1",
            "",
            "master",
            "lease-expired"
        ]
    );
    let stopped_at: u128 = stop[7].parse().expect("date +%s%N");
    let lease_end = unix_ns(last_renewal + daemon_lease);
    assert!(
        stopped_at < lease_end,
        "stop ran {} ms after the daemon's lease ended",
        (stopped_at - lease_end) / 1_000_000
    );
    // (No lower bound here: the last renewal may die in the vanishing daemon's send queue.
    // That stop never comes early is shown above: none ran while renewals flowed.)
    assert_eq!(session.status().lease_expiries, 1);
    session.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_hung_daemon_that_stops_renewing_also_makes_the_driver_stop() {
    init_tracing();
    let kind = TransportKind::WebSocket;
    let s = Setup::new();
    let mut daemon = FakeDaemon::start(kind, localhost()).await;
    let session = s.driver(daemon.addr, kind, "", "");
    let drv = daemon.accept_driver().await;
    daemon.send(
        &drv,
        &role(DriverRole::Master, 3, 1, 1000, Some("node-1"), "elected"),
    );
    expect_ack(&mut daemon, 1, DriverRole::Master, ActionResult::Ok).await;
    // The connection stays up (the transport keeps it alive) but no renewal comes.
    wait_until("stop after the lease", || {
        s.action_names() == ["start-3", "stop-3"]
    })
    .await;
    assert!(session.status().connected);
    // When the daemon answers again it re-sends the role; the driver converges to it.
    daemon.send(
        &drv,
        &role(
            DriverRole::Master,
            3,
            2,
            60_000,
            Some("node-1"),
            "still-leader",
        ),
    );
    expect_ack(&mut daemon, 2, DriverRole::Master, ActionResult::Ok).await;
    assert_eq!(s.action_names(), ["start-3", "stop-3", "start-3"]);
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

#[tokio::test]
async fn transitions_queued_during_a_long_stop_run_in_order() {
    init_tracing();
    let kind = TransportKind::Quic;
    let s = Setup::new();
    let mut daemon = FakeDaemon::start(kind, localhost()).await;
    // The stop of term 3 blocks until the test opens the gate (a stop is never cancelled).
    let session = s.driver_with(
        daemon.addr,
        kind,
        "",
        "if [ \"$CLUSTD_TERM\" = 3 ]; then while [ ! -e gate ]; do sleep 0.02; done; fi",
        "",
    );
    let drv = daemon.accept_driver().await;
    use DriverRole::{Backup, Master};
    daemon.send(&drv, &role(Backup, 1, 1, 0, Some("node-2"), "follower"));
    expect_ack(&mut daemon, 1, Backup, ActionResult::Ok).await;
    daemon.send(&drv, &role(Master, 2, 2, 60_000, Some("node-1"), "elected"));
    expect_ack(&mut daemon, 2, Master, ActionResult::Ok).await;
    daemon.send(&drv, &role(Backup, 3, 3, 0, Some("node-2"), "stepped-down"));
    wait_until("stop is running", || {
        s.action_names() == ["stop-1", "start-2", "stop-3"]
    })
    .await;
    for (seq, r) in [
        (4, Master),
        (5, Backup),
        (6, Master),
        (7, Backup),
        (8, Master),
    ] {
        daemon.send(&drv, &role(r, seq, seq, 60_000, None, "flap"));
    }
    // 4..7 cancel out while waiting: they are acknowledged as superseded at once.
    let superseded = ActionResult::Failed("superseded by a newer transition before it ran".into());
    for (seq, r) in [(4, Master), (5, Backup), (6, Master)] {
        expect_ack(&mut daemon, seq, r, superseded.clone()).await;
    }
    std::fs::write(s.path("gate"), "").expect("open the gate");
    expect_ack(&mut daemon, 3, Backup, ActionResult::Ok).await;
    expect_ack(&mut daemon, 7, Backup, ActionResult::Ok).await;
    expect_ack(&mut daemon, 8, Master, ActionResult::Ok).await;
    // One at a time, in order, and the last one ran; stop-7 had nothing left to stop.
    assert_eq!(s.action_names(), ["stop-1", "start-2", "stop-3", "start-8"]);
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

/// F5: a demotion while `start` runs kills the start script's process group and runs
/// `stop` at once, instead of waiting for the start (here 30 s, its timeout 20 s).
#[tokio::test]
async fn a_demotion_during_a_running_start_kills_it_and_stops_at_once() {
    init_tracing();
    let kind = TransportKind::WebSocket;
    let s = Setup::new();
    let mut daemon = FakeDaemon::start(kind, localhost()).await;
    let session = s.driver(daemon.addr, kind, "echo $$ > start.pid; sleep 30", "");
    let drv = daemon.accept_driver().await;
    use DriverRole::{Backup, Master};
    daemon.send(&drv, &role(Master, 2, 1, 60_000, Some("node-1"), "elected"));
    wait_until("start is running", || {
        lines(&s.path("start.pid")).len() == 1
    })
    .await;
    let group: i32 = lines(&s.path("start.pid"))[0].parse().expect("a pid");
    assert!(group_alive(group), "the start script runs");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let demoted = std::time::Instant::now();
    daemon.send(&drv, &role(Backup, 3, 2, 0, Some("node-2"), "stepped-down"));
    match daemon.next_from_driver().await {
        FromDriver::Ack {
            seq: 1,
            role: Master,
            result: ActionResult::Failed(why),
        } => assert!(why.starts_with("cancelled: demoted in term 3"), "{why}"),
        other => panic!("expected the cancelled start's ack, got {other:?}"),
    }
    expect_ack(&mut daemon, 2, Backup, ActionResult::Ok).await;
    assert_eq!(s.action_names(), ["start-2", "stop-3"]);
    wait_until("the start script's process group is gone", || {
        !group_alive(group)
    })
    .await;
    let took = demoted.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "stop ran {} ms after the demotion",
        took.as_millis()
    );
    assert_eq!(session.status().starts_cancelled, 1);
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

/// F4 end to end, on the real `CLOCK_MONOTONIC`: a master role stamped 1.5 s before it is
/// sent, for a 2 s lease, leaves the driver 0.5 s — not 2 s from its arrival.
#[tokio::test]
async fn a_lease_runs_from_the_daemons_send_time_not_from_arrival() {
    init_tracing();
    let kind = TransportKind::Quic;
    let s = Setup::new();
    let mut daemon = FakeDaemon::start(kind, localhost()).await;
    let session = s.driver(daemon.addr, kind, "", "");
    let drv = daemon.accept_driver().await;
    let mut late = role(DriverRole::Master, 5, 1, 2000, Some("node-1"), "elected");
    let ToDriver::Role { sent_at_ns, .. } = &mut late else {
        unreachable!("a role")
    };
    *sent_at_ns -= 1_500_000_000;
    let lease_end = MonotonicClock.deadline(*sent_at_ns + 2_000_000_000);
    let sent = tokio::time::Instant::now();
    daemon.send(&drv, &late);
    expect_ack(&mut daemon, 1, DriverRole::Master, ActionResult::Ok).await;
    let status = session.watch_status();
    wait_until("the lease ran out", || status.borrow().lease_expiries == 1).await;
    let expired = tokio::time::Instant::now();
    assert!(
        expired < sent + Duration::from_millis(1500),
        "the lease ended {} ms after the role was sent (by send time: 500 ms)",
        (expired - sent).as_millis()
    );
    assert!(expired + Duration::from_millis(1) >= lease_end, "not early");
    wait_until("stop ran", || s.action_names() == ["start-5", "stop-5"]).await;
    // A renewal of that lease, sent now but arriving after its end, revives nothing.
    daemon.send(&drv, &renewal(5, 2000));
    wait_until("the driver resynchronizes", || !status.borrow().connected).await;
    assert_eq!(session.status().lease_expires_at, None);
    assert_eq!(s.action_names(), ["start-5", "stop-5"]);
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

#[tokio::test]
async fn without_a_daemon_at_startup_the_driver_stops_then_follows_the_daemon() {
    init_tracing();
    let kind = TransportKind::WebSocket;
    let s = Setup::new();
    // An address with nothing listening (yet).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let session = s.driver(addr, kind, "", "startup_wait_ms = 200");
    wait_until("stop at start-up", || s.actions().len() == 1).await;
    assert_eq!(s.actions()[0][6], "no-daemon-at-startup");
    assert!(!session.status().connected);
    let mut daemon = FakeDaemon::start(kind, addr).await;
    let drv = daemon.accept_driver().await;
    daemon.send(
        &drv,
        &role(DriverRole::Master, 2, 1, 60_000, Some("node-1"), "elected"),
    );
    expect_ack(&mut daemon, 1, DriverRole::Master, ActionResult::Ok).await;
    assert_eq!(s.action_names(), ["stop-0", "start-2"]);
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

#[tokio::test]
async fn a_wrong_secret_never_connects_and_never_panics() {
    init_tracing();
    let kind = TransportKind::WebSocket;
    let s = Setup::new();
    std::fs::write(
        s.path("secret"),
        "another-cluster-secret-entirely-different",
    )
    .expect("write");
    let mut daemon = FakeDaemon::start(kind, localhost()).await;
    let session = s.driver(daemon.addr, kind, "", "startup_wait_ms = 100");
    // Without a daemon it settles into backup, and keeps trying without connecting.
    wait_until("stop at start-up", || s.actions().len() == 1).await;
    assert!(!session.status().connected);
    let accepted = tokio::time::timeout(Duration::from_secs(2), daemon.accept_driver()).await;
    assert!(
        accepted.is_err(),
        "a driver with the wrong secret must not be accepted"
    );
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

/// A driver stopped while master (e.g. `systemctl stop` of the driver) stops the service
/// first: once it is gone nothing supervises the lease, and a later failover would leave
/// the service running beside the new master. A backup driver exits without acting.
#[tokio::test]
async fn shutting_down_while_master_runs_stop_first() {
    init_tracing();
    let kind = TransportKind::WebSocket;
    let s = Setup::new();
    let mut daemon = FakeDaemon::start(kind, localhost()).await;
    let session = s.driver(daemon.addr, kind, "", "");
    assert_eq!(daemon.accept_driver().await, id("shell-test"));
    daemon.send(
        &id("shell-test"),
        &role(DriverRole::Master, 4, 1, 60_000, Some("node-1"), "elected"),
    );
    expect_ack(&mut daemon, 1, DriverRole::Master, ActionResult::Ok).await;
    session.shutdown().await.expect("clean shutdown");
    assert_eq!(s.action_names(), ["start-4", "stop-4"]);
    let stop = &s.actions()[1];
    assert_eq!(
        stop[..7],
        [
            "stop",
            "backup",
            "4",
            "node-1",
            "",
            "master",
            "driver-shutdown"
        ]
    );

    // As backup, shutting down runs nothing.
    let s = Setup::new();
    let session = s.driver(daemon.addr, kind, "", "");
    assert_eq!(daemon.accept_driver().await, id("shell-test"));
    daemon.send(
        &id("shell-test"),
        &role(DriverRole::Backup, 5, 2, 0, Some("node-2"), "follower"),
    );
    expect_ack(&mut daemon, 2, DriverRole::Backup, ActionResult::Ok).await;
    session.shutdown().await.expect("clean shutdown");
    assert_eq!(s.action_names(), ["stop-5"]);
    daemon.vanish().await;
}

/// `connect_with`: the same session over a given `Net` and machine clock (here real
/// sockets and a clock of the test's own, as a simulation would pass its host's), with a
/// seeded jitter and a fixed driver id, so nothing is drawn from the OS.
#[tokio::test]
async fn connect_with_runs_a_session_over_a_given_net_and_clock() {
    init_tracing();
    let kind = TransportKind::WebSocket;
    let s = Setup::new();
    let mut daemon = FakeDaemon::start(kind, localhost()).await;
    let text = format!(
        "daemon = \"{}\"\ntransport = \"websocket\"\nsecret_file = \"secret\"\ndriver_id = \"shell-test\"\n\
         [script]\ncwd = \".\"\nstart = 'echo start >> actions.log'\nstop = 'echo stop >> actions.log'\n",
        daemon.addr
    );
    let config = ShellConfig::parse(&s.path("shell.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let mut connection = config.connection.clone();
    connection.rng_seed = Some(7);
    // The daemon and the driver share this clock: it reads 42 s now.
    let clock = TokioMachineClock::new(42_000_000_000);
    let session = clustd_drivers::connect_with(
        connection,
        ShellDriver::from_config(&config),
        TokioNet,
        clock,
    )
    .expect("session starts");
    let drv = daemon.accept_driver().await;
    assert_eq!(drv, id("shell-test"));
    let stamp = clock.now_ns();
    let mut msg = role(DriverRole::Master, 2, 1, 60_000, Some("node-1"), "elected");
    if let ToDriver::Role { sent_at_ns, .. } = &mut msg {
        *sent_at_ns = stamp;
    }
    daemon.send(&drv, &msg);
    expect_ack(&mut daemon, 1, DriverRole::Master, ActionResult::Ok).await;
    // The lease is read on the given clock: 60 s from its stamp, not already expired as it
    // would be on CLOCK_MONOTONIC (where 42 s is long past).
    let expires = session
        .status()
        .lease_expires_at
        .expect("master holds a lease");
    assert_eq!(expires, clock.deadline(stamp + 60_000_000_000));
    assert_eq!(session.status().lease_expiries, 0);
    session.shutdown().await.expect("clean shutdown");
    assert_eq!(lines(&s.log), ["start", "stop"]);
    daemon.vanish().await;
}
