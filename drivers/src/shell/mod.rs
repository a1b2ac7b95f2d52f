//! The shell driver: runs `start` on becoming master and `stop` on losing it.
//!
//! It tracks what it last did to the service: a script runs only when the service is not
//! already known to be in the target state. The service starts out unknown, so the first
//! change always runs its script (`stop` at start-up on a backup, for a known state); a
//! failed script makes the state unknown again, so the next change runs its script too,
//! and so does a script that is still running or was cancelled (a start cut short by a
//! demotion may have started part of the service: the stop after it always runs).
//!
//! It also checks its time limits against the daemon's `election.stop_budget_ms` when it
//! learns it: a stop that can run longer than that may leave the service running beside a
//! new master.
//!
//! With `script.check` set it also runs that check every `check_interval_ms`, in a task of
//! its own that ignores role changes (it runs on a master and a backup alike), through the
//! same [`ScriptRunner`] as the scripts (own process group, killed at `check_timeout_ms`),
//! and reports each result to the daemon as health check `check`, which the daemon counts
//! with `check_fall` / `check_rise` like one of its own `[[check]]`s.

mod script;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clustd_core::NodeId;
use clustd_core::driver::{ActionResult, DriverRole};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

pub use script::{CAPTURE_GRACE, ScriptOutcome, ScriptRun, ScriptRunner};

use crate::config::DriverConfig;
use crate::config::{ConfigError, DaemonKeys, load_toml, parse_toml, resolve};
use crate::driver::{Driver, RoleChange};
use crate::health::HealthReporter;

/// `clustd-shell-driver`'s config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellFile {
    daemon: String,
    #[serde(default = "crate::config::default_transport")]
    transport: crate::config::TransportKind,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    driver_id: Option<String>,
    #[serde(default)]
    startup_wait_ms: Option<u64>,
    daemon_key: Option<String>,
    script: ScriptSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptSection {
    #[serde(default = "default_shell")]
    shell: PathBuf,
    #[serde(default)]
    cwd: Option<PathBuf>,
    start: String,
    stop: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_kill_grace_ms")]
    kill_grace_ms: u64,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    check: Option<String>,
    #[serde(default)]
    check_interval_ms: Option<u64>,
    #[serde(default)]
    check_timeout_ms: Option<u64>,
    #[serde(default)]
    check_fall: Option<u32>,
    #[serde(default)]
    check_rise: Option<u32>,
}

fn default_shell() -> PathBuf {
    PathBuf::from("/bin/bash")
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_kill_grace_ms() -> u64 {
    5_000
}

/// The health check name the shell driver reports `script.check` under (the daemon shows
/// it as `<driver id>/check`).
pub const CHECK_NAME: &str = "check";

/// `script.check` and its settings: a command run periodically whose exit status is the
/// service's health.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShellCheck {
    /// The command (`shell -c COMMAND`); exit status 0 means healthy.
    pub command: String,
    /// From one run's start to the next (`script.check_interval_ms`, default 1000); a run
    /// that takes longer delays the next.
    pub interval: Duration,
    /// The time limit for one run (`script.check_timeout_ms`, default 2000); past it the
    /// run's process group is killed and the result is unhealthy (`timed out`).
    pub timeout: Duration,
    /// Failures in a row that make the node unhealthy (`script.check_fall`, default 3).
    pub fall: u32,
    /// Successes in a row that make it healthy again (`script.check_rise`, default 2).
    pub rise: u32,
}

impl ShellCheck {
    /// `command` with the default interval, timeout, fall and rise.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            interval: Duration::from_millis(1000),
            timeout: Duration::from_millis(2000),
            fall: 3,
            rise: 2,
        }
    }
}

/// A loaded and checked shell driver config.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShellConfig {
    /// How to reach the daemon.
    pub connection: DriverConfig,
    /// How scripts run.
    pub runner: ScriptRunner,
    /// Run on becoming master.
    pub start: String,
    /// Run on losing master (and once at start-up on a backup).
    pub stop: String,
    /// `script.check`, if set.
    pub check: Option<ShellCheck>,
}

impl ShellConfig {
    /// Loads `file`; errors name the file and the key.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::check(file, load_toml(file)?)
    }

    /// Parses `text` as if read from `file` (paths resolve against `file`'s folder).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::check(file, parse_toml(file, text)?)
    }

    fn check(file: &Path, raw: ShellFile) -> Result<Self, ConfigError> {
        let s = raw.script;
        for (key, value) in [("script.start", &s.start), ("script.stop", &s.stop)] {
            if value.trim().is_empty() {
                return Err(ConfigError::invalid(file, key, "must not be empty"));
            }
        }
        if s.timeout_ms == 0 {
            return Err(ConfigError::invalid(
                file,
                "script.timeout_ms",
                "must be at least 1",
            ));
        }
        if let Some(bad) = s
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(ConfigError::invalid(
                file,
                &format!("script.env.{bad}"),
                "not a valid environment variable name",
            ));
        }
        if let Some(reserved) = s.env.keys().find(|k| k.starts_with("CLUSTD_")) {
            return Err(ConfigError::invalid(
                file,
                &format!("script.env.{reserved}"),
                "CLUSTD_* variables are set by the driver",
            ));
        }
        let check = check_config(file, &s)?;
        let cwd = s.cwd.map(|cwd| resolve(file, &cwd));
        if let Some(cwd) = &cwd
            && !cwd.is_dir()
        {
            return Err(ConfigError::invalid(
                file,
                "script.cwd",
                format!("{} is not a directory", cwd.display()),
            ));
        }
        let keys = DaemonKeys {
            daemon: raw.daemon,
            transport: raw.transport,
            secret_file: raw.secret_file,
            driver_id: raw.driver_id,
            startup_wait_ms: raw.startup_wait_ms,
            daemon_key: raw.daemon_key,
        };
        Ok(Self {
            connection: keys.to_driver_config(file, "shell")?,
            runner: ScriptRunner {
                shell: s.shell,
                cwd,
                env: s.env,
                timeout: Duration::from_millis(s.timeout_ms),
                kill_grace: Duration::from_millis(s.kill_grace_ms),
                quiet: false,
            },
            start: s.start,
            stop: s.stop,
            check,
        })
    }
}

/// `script.check` and its keys, checked: the other `check_*` keys need `check`, and no
/// number may be 0.
fn check_config(file: &Path, s: &ScriptSection) -> Result<Option<ShellCheck>, ConfigError> {
    let Some(command) = &s.check else {
        let set = [
            ("script.check_interval_ms", s.check_interval_ms.is_some()),
            ("script.check_timeout_ms", s.check_timeout_ms.is_some()),
            ("script.check_fall", s.check_fall.is_some()),
            ("script.check_rise", s.check_rise.is_some()),
        ];
        if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
            return Err(ConfigError::invalid(
                file,
                key,
                "needs `script.check` (the check command); set it or remove this key",
            ));
        }
        return Ok(None);
    };
    if command.trim().is_empty() {
        return Err(ConfigError::invalid(
            file,
            "script.check",
            "must not be empty",
        ));
    }
    let mut check = ShellCheck::new(command.clone());
    for (key, value) in [
        ("script.check_interval_ms", s.check_interval_ms),
        ("script.check_timeout_ms", s.check_timeout_ms),
        ("script.check_fall", s.check_fall.map(u64::from)),
        ("script.check_rise", s.check_rise.map(u64::from)),
    ] {
        if value == Some(0) {
            return Err(ConfigError::invalid(file, key, "must be at least 1"));
        }
    }
    if let Some(ms) = s.check_interval_ms {
        check.interval = Duration::from_millis(ms);
    }
    if let Some(ms) = s.check_timeout_ms {
        check.timeout = Duration::from_millis(ms);
    }
    check.fall = s.check_fall.unwrap_or(check.fall);
    check.rise = s.check_rise.unwrap_or(check.rise);
    Ok(Some(check))
}

/// The environment a script gets for `change`.
pub fn script_env(change: &RoleChange) -> Vec<(String, String)> {
    let id = |n: &Option<NodeId>| n.as_ref().map(|n| n.to_string()).unwrap_or_default();
    vec![
        ("CLUSTD_ROLE".into(), change.role.as_str().into()),
        ("CLUSTD_TERM".into(), change.term.0.to_string()),
        ("CLUSTD_NODE_ID".into(), id(&change.node)),
        ("CLUSTD_LEADER_ID".into(), id(&change.leader)),
        (
            "CLUSTD_PREV_ROLE".into(),
            change
                .previous_role
                .map(DriverRole::as_str)
                .unwrap_or_default()
                .into(),
        ),
        ("CLUSTD_REASON".into(), change.reason.clone()),
    ]
}

/// The environment a check run gets: the `CLUSTD_*` variables of the last role change
/// that mean something outside one (node, role, term, leader); empty values before the first.
fn check_env(change: Option<&RoleChange>) -> Vec<(String, String)> {
    let Some(change) = change else {
        return [
            "CLUSTD_NODE_ID",
            "CLUSTD_ROLE",
            "CLUSTD_TERM",
            "CLUSTD_LEADER_ID",
        ]
        .into_iter()
        .map(|k| (k.to_owned(), String::new()))
        .collect();
    };
    script_env(change)
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "CLUSTD_NODE_ID" | "CLUSTD_ROLE" | "CLUSTD_TERM" | "CLUSTD_LEADER_ID"
            )
        })
        .collect()
}

/// Whether a check run passed, and one line on it: the last line it printed, or how it
/// failed and then that line.
fn check_verdict(run: &ScriptRun, timeout: Duration) -> (bool, String) {
    let printed = run.last_line.as_deref().map(str::trim).unwrap_or_default();
    let failure = match &run.outcome {
        ScriptOutcome::Success => {
            let detail = if printed.is_empty() {
                "exit status 0"
            } else {
                printed
            };
            return (true, detail.to_owned());
        }
        ScriptOutcome::TimedOut => format!("timed out after {} ms", timeout.as_millis()),
        other => match ActionResult::from(other.clone()) {
            ActionResult::Failed(why) => why,
            ActionResult::TimedOut => "timed out".to_owned(),
            ActionResult::Ok => "failed".to_owned(),
        },
    };
    if printed.is_empty() {
        (false, failure)
    } else {
        (false, format!("{failure}: {printed}"))
    }
}

/// Runs `check` every interval for as long as the driver lives, reporting each result.
async fn run_checks(
    runner: ScriptRunner,
    check: ShellCheck,
    health: HealthReporter,
    last_change: watch::Receiver<Option<RoleChange>>,
) {
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut was_healthy: Option<bool> = None;
    loop {
        ticks.tick().await;
        let vars = check_env(last_change.borrow().as_ref());
        let run = runner.run_captured(CHECK_NAME, &check.command, &vars).await;
        let (healthy, detail) = check_verdict(&run, check.timeout);
        // Logged on changes only (the runner logs every run at DEBUG; the daemon logs
        // every failed result of a check at WARN).
        if was_healthy != Some(healthy) {
            if healthy {
                tracing::info!(%detail, "script.check passes");
            } else {
                tracing::warn!(%detail, "script.check fails");
            }
            was_healthy = Some(healthy);
        }
        if let Err(e) = health.report_with(CHECK_NAME, healthy, &detail, check.fall, check.rise) {
            // Cannot happen with a fixed name and checked thresholds; never worth a panic.
            tracing::error!("script.check result not reported: {e}");
        }
    }
}

/// Aborts the check task when the driver is dropped (the session ended): the run in
/// flight is dropped with it, which kills its process group.
#[derive(Debug)]
struct CheckTask(JoinHandle<()>);

impl Drop for CheckTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `start`/`stop` scripts on role changes, and `script.check` periodically.
#[derive(Debug)]
pub struct ShellDriver {
    runner: ScriptRunner,
    start: String,
    stop: String,
    /// What the last successful script made of the service; `None` when unknown.
    service: Option<DriverRole>,
    /// The stop budget last checked against the script limits (warned about once).
    budget_checked: Option<Duration>,
    check: Option<ShellCheck>,
    /// The last role change, for the check's environment.
    last_change: watch::Sender<Option<RoleChange>>,
    check_task: Option<CheckTask>,
}

impl ShellDriver {
    /// A driver with these scripts.
    pub fn new(runner: ScriptRunner, start: impl Into<String>, stop: impl Into<String>) -> Self {
        Self {
            runner,
            start: start.into(),
            stop: stop.into(),
            service: None,
            budget_checked: None,
            check: None,
            last_change: watch::Sender::new(None),
            check_task: None,
        }
    }

    /// Also runs `check` periodically once the session starts, reporting its results as
    /// health check [`CHECK_NAME`] (builder style).
    #[must_use]
    pub fn with_check(mut self, check: ShellCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// The longest a `stop` can take: its timeout, then the grace between SIGTERM and
    /// SIGKILL of its process group.
    pub fn longest_stop(&self) -> Duration {
        self.runner.timeout + self.runner.kill_grace
    }

    /// Warns, once per budget value, when a stop may outlast `election.stop_budget_ms`.
    fn check_stop_budget(&mut self, budget: Option<Duration>) {
        let Some(budget) = budget else {
            return;
        };
        if self.budget_checked == Some(budget) {
            return;
        }
        self.budget_checked = Some(budget);
        let longest = self.longest_stop();
        if longest > budget {
            tracing::warn!(
                timeout_ms = self.runner.timeout.as_millis(),
                kill_grace_ms = self.runner.kill_grace.as_millis(),
                stop_budget_ms = budget.as_millis(),
                "a stop may take up to {} ms (script.timeout_ms = {} + script.kill_grace_ms = {}), longer than \
                 election.stop_budget_ms = {} ms: a stop that hangs may leave the service running beside a new \
                 master; make `stop` finish well within the budget, then lower script.timeout_ms and \
                 script.kill_grace_ms or raise election.stop_budget_ms",
                longest.as_millis(),
                self.runner.timeout.as_millis(),
                self.runner.kill_grace.as_millis(),
                budget.as_millis()
            );
        }
    }

    /// The driver for a loaded config.
    pub fn from_config(config: &ShellConfig) -> Self {
        let driver = Self::new(
            config.runner.clone(),
            config.start.clone(),
            config.stop.clone(),
        );
        match &config.check {
            Some(check) => driver.with_check(check.clone()),
            None => driver,
        }
    }
}

impl Driver for ShellDriver {
    fn on_session_start(&mut self, health: HealthReporter) {
        let Some(check) = &self.check else {
            return;
        };
        tracing::info!(
            interval_ms = check.interval.as_millis(),
            timeout_ms = check.timeout.as_millis(),
            fall = check.fall,
            rise = check.rise,
            "running script.check periodically; results go to the daemon as health check `{CHECK_NAME}`"
        );
        // The same runner as start and stop (shell, cwd, env, kill discipline), with the
        // check's own time limit.
        let runner = ScriptRunner {
            timeout: check.timeout,
            // Every interval: the driver logs failed checks itself, the daemon counts them.
            quiet: true,
            ..self.runner.clone()
        };
        let task = tokio::spawn(run_checks(
            runner,
            check.clone(),
            health,
            self.last_change.subscribe(),
        ));
        self.check_task = Some(CheckTask(task));
    }

    async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
        self.last_change.send_replace(Some(change.clone()));
        self.check_stop_budget(change.stop_budget);
        if self.service == Some(change.role) {
            tracing::info!(
                role = change.role.as_str(),
                term = %change.term,
                "service already in this state: no script to run"
            );
            return ActionResult::Ok;
        }
        let (name, script) = match change.role {
            DriverRole::Master => ("start", &self.start),
            DriverRole::Backup => ("stop", &self.stop),
        };
        // Unknown while the script runs: if this future is dropped (a start cancelled), the
        // script was cut short and the next change must run its script.
        self.service = None;
        let outcome = self.runner.run(name, script, &script_env(&change)).await;
        self.service = (outcome == ScriptOutcome::Success).then_some(change.role);
        outcome.into()
    }
}

/// Runs the shell driver for `config` until `shutdown` completes.
pub async fn run_shell_driver(
    config: ShellConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), crate::SessionError> {
    let driver = ShellDriver::from_config(&config);
    crate::reconnect::run(config.connection, driver, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcome: ScriptOutcome, last_line: Option<&str>) -> ScriptRun {
        ScriptRun {
            outcome,
            last_line: last_line.map(str::to_owned),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn a_check_run_becomes_a_verdict_with_its_last_line() {
        let timeout = Duration::from_millis(2000);
        let failed = |code| ScriptOutcome::Failed {
            code: Some(code),
            signal: None,
        };
        for (outcome, line, want) in [
            (ScriptOutcome::Success, Some("200 OK "), (true, "200 OK")),
            (ScriptOutcome::Success, None, (true, "exit status 0")),
            (
                failed(7),
                Some("refused"),
                (false, "exit status 7: refused"),
            ),
            (failed(1), None, (false, "exit status 1")),
            (
                ScriptOutcome::TimedOut,
                Some("waiting"),
                (false, "timed out after 2000 ms: waiting"),
            ),
            (
                ScriptOutcome::SpawnFailed("no such file".into()),
                None,
                (false, "cannot start: no such file"),
            ),
        ] {
            let (healthy, detail) = check_verdict(&run(outcome, line), timeout);
            assert_eq!((healthy, detail.as_str()), want);
        }
    }

    #[test]
    fn a_check_sees_the_node_and_role_of_the_last_change() {
        let names = |env: Vec<(String, String)>| env.into_iter().collect::<BTreeMap<_, _>>();
        let before = names(check_env(None));
        assert_eq!(before.len(), 4);
        assert!(before.values().all(String::is_empty));
        let change = RoleChange::new(
            DriverRole::Master,
            clustd_core::Term(3),
            Some(NodeId::new("n1").expect("valid")),
        );
        let after = names(check_env(Some(&change)));
        assert_eq!(after["CLUSTD_NODE_ID"], "n1");
        assert_eq!(after["CLUSTD_ROLE"], "master");
        assert_eq!(after["CLUSTD_TERM"], "3");
        assert_eq!(after["CLUSTD_LEADER_ID"], "");
        assert_eq!(after.len(), 4);
    }
}
