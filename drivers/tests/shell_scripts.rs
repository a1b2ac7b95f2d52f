//! The shell driver's script runner and driver, without a daemon: environment, failures,
//! timeouts that kill the whole process group, cancellation that kills it at once, output
//! to the log, start/stop decisions, the stop budget check.

mod support;

use std::time::Duration;

use clustd_drivers::shell::{ScriptOutcome, ScriptRunner, script_env};
use clustd_drivers::{ActionResult, Driver, DriverRole, NodeId, RoleChange, ShellDriver, Term};
use support::{group_alive, init_tracing, lines, wait_until};

fn runner(timeout_ms: u64) -> ScriptRunner {
    let mut r = ScriptRunner::new();
    r.timeout = Duration::from_millis(timeout_ms);
    r.kill_grace = Duration::from_millis(500);
    r
}

fn change(role: DriverRole, prev: Option<DriverRole>) -> RoleChange {
    RoleChange::new(role, Term(7), Some(NodeId::new("node-1").expect("valid")))
        .with_leader(Some(NodeId::new("node-2").expect("valid")))
        .with_previous_role(prev)
        .with_reason("elected")
}

#[tokio::test]
async fn scripts_get_the_clustd_environment_and_configured_env() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("env");
    let mut r = runner(10_000);
    r.env.insert("EXTRA".into(), "from-config".into());
    r.cwd = Some(dir.path().to_owned());
    let script = "echo \"$CLUSTD_ROLE|$CLUSTD_TERM|$CLUSTD_NODE_ID|$CLUSTD_LEADER_ID|$CLUSTD_PREV_ROLE|$CLUSTD_REASON|$EXTRA|$(pwd)\" > env";
    let vars = script_env(&change(DriverRole::Master, Some(DriverRole::Backup)));
    assert_eq!(r.run("start", script, &vars).await, ScriptOutcome::Success);
    let cwd = dir.path().canonicalize().expect("canonical");
    assert_eq!(
        lines(&out),
        vec![format!(
            "master|7|node-1|node-2|backup|elected|from-config|{}",
            cwd.display()
        )]
    );
}

#[tokio::test]
async fn a_failing_script_reports_its_status() {
    init_tracing();
    let outcome = runner(10_000)
        .run("stop", "echo oops >&2; exit 3", &[])
        .await;
    assert_eq!(
        outcome,
        ScriptOutcome::Failed {
            code: Some(3),
            signal: None
        }
    );
    assert_eq!(
        ActionResult::from(outcome),
        ActionResult::Failed("exit status 3".into())
    );
}

#[tokio::test]
async fn a_missing_shell_is_a_failure_not_a_panic() {
    let mut r = runner(1000);
    r.shell = "/nonexistent/shell".into();
    assert!(matches!(
        r.run("start", "true", &[]).await,
        ScriptOutcome::SpawnFailed(_)
    ));
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped by its new parent) is gone for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_hanging_script_is_killed_at_its_timeout_with_its_process_group() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("child.pid");
    // The child ignores SIGTERM, so only the group SIGKILL after the grace period ends it.
    let script = format!(
        "bash -c 'trap \"\" TERM; sleep 1000' & echo $! > {}; wait",
        pidfile.display()
    );
    let outcome = runner(1000).run("start", &script, &[]).await;
    assert_eq!(outcome, ScriptOutcome::TimedOut);
    assert_eq!(ActionResult::from(outcome), ActionResult::TimedOut);
    let pid: i32 = lines(&pidfile)[0].parse().expect("a pid");
    wait_until("the script's child is gone", || !alive(pid)).await;
}

#[tokio::test]
async fn a_script_that_obeys_sigterm_ends_with_its_children() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("child.pid");
    let script = format!("sleep 1000 & echo $! > {}; sleep 1000", pidfile.display());
    let outcome = runner(500).run("start", &script, &[]).await;
    assert_eq!(outcome, ScriptOutcome::TimedOut);
    let pid: i32 = lines(&pidfile)[0].parse().expect("a pid");
    wait_until("the script's child is gone", || !alive(pid)).await;
}

#[tokio::test]
async fn background_services_survive_a_successful_start() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("svc.pid");
    // A start script that launches a service must not have it killed when it returns.
    let script = format!(
        "sleep 1000 >/dev/null 2>&1 & echo $! > {}",
        pidfile.display()
    );
    assert_eq!(
        runner(5000).run("start", &script, &[]).await,
        ScriptOutcome::Success
    );
    let pid: i32 = lines(&pidfile)[0].parse().expect("a pid");
    assert!(
        alive(pid),
        "the service started by the script must keep running"
    );
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
}

#[tokio::test]
async fn shell_driver_stops_first_then_runs_only_what_changes_the_service() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let start = format!("echo start-$CLUSTD_TERM >> {}", log.display());
    let stop = format!("echo stop-$CLUSTD_PREV_ROLE >> {}", log.display());
    let mut d = ShellDriver::new(runner(5000), start, stop);
    use DriverRole::{Backup, Master};
    // First change: backup with no history -> stop, so the service is in a known state.
    assert_eq!(
        d.on_role_change(change(Backup, None)).await,
        ActionResult::Ok
    );
    // Another backup change (new leader): the service is already stopped.
    assert_eq!(
        d.on_role_change(change(Backup, Some(Backup))).await,
        ActionResult::Ok
    );
    assert_eq!(
        d.on_role_change(change(Master, Some(Backup))).await,
        ActionResult::Ok
    );
    assert_eq!(
        d.on_role_change(change(Backup, Some(Master))).await,
        ActionResult::Ok
    );
    assert_eq!(lines(&log), vec!["stop-", "start-7", "stop-master"]);
}

#[tokio::test]
async fn a_failed_script_leaves_the_state_unknown_so_the_next_change_runs_again() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let flag = dir.path().join("fail-once");
    std::fs::write(&flag, "").expect("write");
    let stop = format!(
        "echo stop >> {log}; if [ -e {flag} ]; then rm {flag}; exit 1; fi",
        log = log.display(),
        flag = flag.display()
    );
    let mut d = ShellDriver::new(runner(5000), "true", stop);
    let first = d.on_role_change(change(DriverRole::Backup, None)).await;
    assert_eq!(first, ActionResult::Failed("exit status 1".into()));
    let again = d
        .on_role_change(change(DriverRole::Backup, Some(DriverRole::Backup)))
        .await;
    assert_eq!(again, ActionResult::Ok);
    assert_eq!(lines(&log), vec!["stop", "stop"]);
}

/// Collects log output in memory.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn stdout_and_stderr_go_to_the_log_line_by_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("clustd_drivers=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // current_thread runtime: every task of this test is polled on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let script = "echo first line; echo 'to stderr' >&2; printf 'no newline at end'";
    assert_eq!(
        runner(5000).run("start", script, &[]).await,
        ScriptOutcome::Success
    );
    let text = || String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
    wait_until("all three lines logged", || {
        text().contains("no newline at end")
    })
    .await;
    let log = text();
    let line_with = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{log}"))
            .to_owned()
    };
    assert!(line_with("first line").contains("stdout"));
    assert!(line_with("to stderr").contains("stderr"));
    assert!(line_with("to stderr").contains("WARN"));
    assert!(line_with("no newline at end").contains("script=start"));
}

/// F5 at the script level: the engine cancels a start by dropping its future; the script's
/// whole process group dies with it, at once (no grace period: a stop is waiting).
#[tokio::test]
async fn a_cancelled_script_has_its_process_group_killed_at_once() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("group.pid");
    let script = format!("echo $$ > {}; sleep 30", pidfile.display());
    let r = runner(20_000);
    let mut run = Box::pin(r.run("start", &script, &[]));
    tokio::select! {
        outcome = &mut run => panic!("the script ended early: {outcome:?}"),
        () = wait_until("the script runs", || lines(&pidfile).len() == 1) => {}
    }
    let group: i32 = lines(&pidfile)[0].parse().expect("a pid");
    assert!(group_alive(group));
    let cancelled = std::time::Instant::now();
    drop(run);
    wait_until("the script's process group is gone", || !group_alive(group)).await;
    assert!(cancelled.elapsed() < Duration::from_secs(5));
}

/// A start cut short leaves the service state unknown: the stop after it runs its script,
/// even though the service was known stopped before the start.
#[tokio::test]
async fn a_cancelled_start_makes_the_next_stop_run_its_script() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let start = format!("echo start >> {}; sleep 30", log.display());
    let stop = format!("echo stop >> {}", log.display());
    let mut d = ShellDriver::new(runner(20_000), start, stop);
    use DriverRole::{Backup, Master};
    assert_eq!(
        d.on_role_change(change(Backup, None)).await,
        ActionResult::Ok
    );
    {
        let start = d.on_role_change(change(Master, Some(Backup)));
        tokio::pin!(start);
        tokio::select! {
            result = &mut start => panic!("the start ended early: {result:?}"),
            () = wait_until("start runs", || lines(&log).len() == 2) => {}
        }
    }
    assert_eq!(
        d.on_role_change(change(Backup, Some(Master))).await,
        ActionResult::Ok
    );
    assert_eq!(lines(&log), vec!["stop", "start", "stop"]);
}

#[tokio::test]
async fn a_stop_that_may_outlast_the_stop_budget_is_warned_about_once() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("clustd_drivers=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // 2 s timeout + 500 ms grace > the 1 s budget.
    let mut d = ShellDriver::new(runner(2000), "true", "true");
    let budget = Some(Duration::from_millis(1000));
    for (role, prev) in [
        (DriverRole::Backup, None),
        (DriverRole::Master, Some(DriverRole::Backup)),
        (DriverRole::Backup, Some(DriverRole::Master)),
    ] {
        let c = change(role, prev).with_stop_budget(budget);
        assert_eq!(d.on_role_change(c).await, ActionResult::Ok);
    }
    let text = String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("longer than election.stop_budget_ms = 1000 ms"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(warnings[0].contains("up to 2500 ms"), "{}", warnings[0]);
    // A budget that covers the longest stop is no news.
    let mut d = ShellDriver::new(runner(2000), "true", "true");
    let roomy = change(DriverRole::Backup, None).with_stop_budget(Some(Duration::from_secs(3)));
    assert_eq!(d.on_role_change(roomy).await, ActionResult::Ok);
    let text = String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
    assert_eq!(
        text.matches("longer than election.stop_budget_ms").count(),
        1,
        "{text}"
    );
}

#[tokio::test]
async fn a_captured_run_returns_the_last_line_printed_and_the_duration() {
    init_tracing();
    let run = runner(10_000)
        .run_captured(
            "check",
            "echo starting; sleep 0.2; echo 'connection refused' >&2; echo; exit 7",
            &[],
        )
        .await;
    assert_eq!(
        run.outcome,
        ScriptOutcome::Failed {
            code: Some(7),
            signal: None
        }
    );
    assert_eq!(run.last_line.as_deref(), Some("connection refused"));
    let quiet = runner(10_000).run_captured("check", "sleep 0.2", &[]).await;
    assert_eq!(quiet.outcome, ScriptOutcome::Success);
    assert_eq!(quiet.last_line, None);
    assert!(
        quiet.elapsed >= Duration::from_millis(200),
        "{:?}",
        quiet.elapsed
    );
}

#[tokio::test]
async fn a_captured_run_does_not_wait_for_a_background_process_holding_the_pipes() {
    init_tracing();
    let began = std::time::Instant::now();
    let run = runner(10_000)
        .run_captured("check", "echo ok; (sleep 30 &); exit 0", &[])
        .await;
    assert_eq!(run.outcome, ScriptOutcome::Success);
    assert_eq!(run.last_line.as_deref(), Some("ok"));
    // Generous: the grace after exit is 100 ms; the background sleep lasts 30 s.
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );
}
