//! Health reports end to end against a fake daemon (a real clustd-transport endpoint on
//! 127.0.0.1 speaking the real driver protocol): a driver's reports arrive as
//! `FromDriver::Health`, wait for a connection, and are sent again after the daemon comes
//! back; the shell driver's `script.check` runs through the script runner and reports what
//! it found, whatever the role.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clustd_core::driver::{ActionResult, DriverRole, FromDriver, ToDriver};
use clustd_core::{NodeId, Term};
use clustd_drivers::{
    Driver, HealthReporter, MonotonicClock, RoleChange, ShellConfig, ShellDriver, TransportKind,
};
use clustd_drivers::{DriverConfig, MachineClock};
use support::{FakeDaemon, SECRET, group_alive, init_tracing, lines, wait_until};

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid")
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// Does nothing on role changes; keeps the reporter it is given at the session's start.
struct Reporting {
    health: Arc<Mutex<Option<HealthReporter>>>,
}

impl Driver for Reporting {
    async fn on_role_change(&mut self, _change: RoleChange) -> ActionResult {
        ActionResult::Ok
    }

    fn on_session_start(&mut self, health: HealthReporter) {
        *self.health.lock().expect("not poisoned") = Some(health);
    }
}

fn health(check: &str, healthy: bool, detail: &str, fall: u32, rise: u32) -> FromDriver {
    FromDriver::Health {
        check: check.into(),
        healthy,
        detail: detail.into(),
        fall,
        rise,
    }
}

/// The next `FromDriver::Health` that `want` accepts (other messages and other health
/// results are skipped; at most 500 of them, each within the support's patience).
async fn health_where(
    daemon: &mut FakeDaemon,
    what: &str,
    want: impl Fn(&str, bool, &str) -> bool,
) -> FromDriver {
    for _ in 0..500 {
        let msg = daemon.next_from_driver().await;
        if let FromDriver::Health {
            check,
            healthy,
            detail,
            ..
        } = &msg
            && want(check, *healthy, detail)
        {
            return msg;
        }
    }
    panic!("no health result {what} among 500 messages");
}

#[tokio::test]
async fn a_health_report_reaches_the_daemon_and_is_sent_again_after_a_reconnect() {
    init_tracing();
    let kind = TransportKind::WebSocket;
    let mut daemon = FakeDaemon::start(kind, localhost()).await;
    let addr = daemon.addr;
    let kept = Arc::new(Mutex::new(None));
    let config = DriverConfig::new(addr, kind, SECRET, "custom")
        .with_driver_id("custom-1")
        .expect("valid id");
    let session = clustd_drivers::connect(
        config,
        Reporting {
            health: kept.clone(),
        },
    )
    .expect("session starts");
    assert_eq!(daemon.accept_driver().await, id("custom-1"));
    wait_until("the driver got its reporter", || {
        kept.lock().expect("not poisoned").is_some()
    })
    .await;
    let reporter = kept.lock().expect("not poisoned").clone().expect("set");

    reporter
        .report_with("web", false, "port 80 refused", 3, 2)
        .expect("reported");
    assert_eq!(
        daemon.next_from_driver().await,
        health("web", false, "port 80 refused", 3, 2)
    );
    // The session's own handle is the same reporter.
    session
        .health_reporter()
        .report("disk", true, "80% free")
        .expect("reported");
    assert_eq!(
        daemon.next_from_driver().await,
        health("disk", true, "80% free", 1, 1)
    );

    // The daemon goes away; reports made meanwhile are kept (the latest per check)...
    daemon.vanish().await;
    wait_until("the driver notices the daemon is gone", || {
        !session.status().connected
    })
    .await;
    reporter
        .report_with("web", false, "port 80 still refused", 3, 2)
        .expect("reported");
    reporter
        .report_with("web", true, "port 80 answers", 3, 2)
        .expect("reported");

    // ...and a daemon run on the same address, which knows none of the driver's checks,
    // gets every check's latest result as soon as the driver connects.
    let mut daemon = FakeDaemon::start(kind, addr).await;
    assert_eq!(daemon.accept_driver().await, id("custom-1"));
    let mut resent = vec![
        daemon.next_from_driver().await,
        daemon.next_from_driver().await,
    ];
    resent.sort_by_key(|m| format!("{m:?}"));
    assert_eq!(
        resent,
        [
            health("disk", true, "80% free", 1, 1),
            health("web", true, "port 80 answers", 3, 2)
        ]
    );
    // Roles go on as before, the reports beside them.
    daemon.send(
        &id("custom-1"),
        &ToDriver::Role {
            role: DriverRole::Backup,
            term: Term(3),
            node: id("node-1"),
            leader: Some(id("node-2")),
            lease_remaining_ms: 0,
            sent_at_ns: MonotonicClock.now_ns(),
            stop_budget_ms: 5000,
            reason: "follower".into(),
            seq: 1,
        },
    );
    assert_eq!(
        daemon.next_from_driver().await,
        FromDriver::Ack {
            seq: 1,
            role: DriverRole::Backup,
            result: ActionResult::Ok
        }
    );
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

struct Shell {
    dir: tempfile::TempDir,
}

impl Shell {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("secret"), SECRET).expect("write");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The shell driver with `check_keys` in its `[script]` section, connected to `daemon`.
    fn driver(&self, daemon: SocketAddr, check_keys: &str) -> clustd_drivers::DriverSession {
        let text = format!(
            "daemon = \"{daemon}\"\ntransport = \"websocket\"\nsecret_file = \"secret\"\ndriver_id = \"shell-test\"\n\
             startup_wait_ms = 60000\n\
             [script]\ncwd = \".\"\nkill_grace_ms = 2000\nstart = 'echo start >> actions.log'\nstop = 'echo stop >> actions.log'\n\
             {check_keys}\n"
        );
        let config =
            ShellConfig::parse(&self.path("shell.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        let driver = ShellDriver::from_config(&config);
        clustd_drivers::connect(config.connection, driver).expect("session starts")
    }
}

#[tokio::test]
async fn script_check_reports_healthy_while_its_file_exists_and_unhealthy_once_it_is_gone() {
    init_tracing();
    let s = Shell::new();
    std::fs::write(s.path("ready"), "").expect("write");
    let mut daemon = FakeDaemon::start(TransportKind::WebSocket, localhost()).await;
    let session = s.driver(
        daemon.addr,
        r#"check = '''if [ -f ready ]; then echo "ready as $CLUSTD_ROLE on $CLUSTD_NODE_ID"; else echo "ready is missing"; exit 1; fi'''
check_interval_ms = 50
check_fall = 4
check_rise = 3"#,
    );
    let drv = daemon.accept_driver().await;
    // Before any role: the check runs all the same, with empty role and node.
    assert_eq!(
        health_where(&mut daemon, "healthy before a role", |_, ok, _| ok).await,
        health("check", true, "ready as  on", 4, 3)
    );

    // Master now: the check goes on, and sees the role in its environment.
    daemon.send(
        &drv,
        &ToDriver::Role {
            role: DriverRole::Master,
            term: Term(2),
            node: id("node-1"),
            leader: Some(id("node-1")),
            lease_remaining_ms: 60_000,
            sent_at_ns: MonotonicClock.now_ns(),
            stop_budget_ms: 5000,
            reason: "elected".into(),
            seq: 1,
        },
    );
    health_where(&mut daemon, "healthy as master", |check, ok, detail| {
        check == "check" && ok && detail == "ready as master on node-1"
    })
    .await;
    assert_eq!(lines(&s.path("actions.log")), ["start"]);

    std::fs::remove_file(s.path("ready")).expect("remove");
    assert_eq!(
        health_where(&mut daemon, "unhealthy", |_, ok, _| !ok).await,
        health("check", false, "exit status 1: ready is missing", 4, 3)
    );
    // Failing checks are reported, never acted upon: the driver is still master.
    assert_eq!(session.status().target_role, Some(DriverRole::Master));
    assert_eq!(lines(&s.path("actions.log")), ["start"]);

    std::fs::write(s.path("ready"), "").expect("write");
    health_where(&mut daemon, "healthy again", |_, ok, _| ok).await;
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

#[tokio::test]
async fn a_hanging_check_is_killed_at_its_timeout_and_reported_unhealthy() {
    init_tracing();
    let s = Shell::new();
    let mut daemon = FakeDaemon::start(TransportKind::WebSocket, localhost()).await;
    let session = s.driver(
        daemon.addr,
        "check = 'echo $$ >> check.pids; echo still thinking; sleep 600'\n\
         check_interval_ms = 100\ncheck_timeout_ms = 300",
    );
    daemon.accept_driver().await;
    assert_eq!(
        health_where(&mut daemon, "timed out", |_, ok, _| !ok).await,
        health(
            "check",
            false,
            "timed out after 300 ms: still thinking",
            3,
            2
        )
    );
    // The run's whole process group (the shell and its `sleep`) was killed.
    let first: i32 = lines(&s.path("check.pids"))
        .first()
        .expect("the check ran")
        .parse()
        .expect("a pid");
    wait_until("the timed-out check's process group is gone", || {
        !group_alive(first)
    })
    .await;
    session.shutdown().await.expect("clean shutdown");
    // The session's end stops the checks, and kills the run in flight.
    let pids = lines(&s.path("check.pids"));
    let last: i32 = pids.last().expect("ran").parse().expect("a pid");
    wait_until("the last check's process group is gone", || {
        !group_alive(last)
    })
    .await;
    daemon.vanish().await;
}
