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

mod script;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clustd_core::{ActionResult, DriverRole, NodeId};
use serde::Deserialize;

pub use script::{CAPTURE_GRACE, ScriptOutcome, ScriptRun, ScriptRunner};

use crate::config::{ConfigError, DaemonKeys, load_toml, parse_toml, resolve};
use crate::driver::{Driver, RoleChange};
use crate::session::DriverConfig;

/// `clustd-shell-driver`'s config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellFile {
    daemon: String,
    #[serde(default = "crate::session::default_transport")]
    transport: crate::session::TransportKind,
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
            },
            start: s.start,
            stop: s.stop,
        })
    }
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

/// Runs `start`/`stop` scripts on role changes.
#[derive(Debug)]
pub struct ShellDriver {
    runner: ScriptRunner,
    start: String,
    stop: String,
    /// What the last successful script made of the service; `None` when unknown.
    service: Option<DriverRole>,
    /// The stop budget last checked against the script limits (warned about once).
    budget_checked: Option<Duration>,
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
        }
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
        Self::new(
            config.runner.clone(),
            config.start.clone(),
            config.stop.clone(),
        )
    }
}

impl Driver for ShellDriver {
    async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
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
    crate::session::run(config.connection, driver, shutdown).await
}
