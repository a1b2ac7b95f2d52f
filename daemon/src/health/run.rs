//! Running the configured checks: one tokio task per check, forever, each sending a
//! [`CheckResult`] after every run. Runs of one check never overlap: the next starts
//! `interval` after the previous ended (the first at once). All timing is `tokio::time`, so
//! the tasks follow a paused or simulated clock too.
//!
//! - `exec` runs through the shell driver's [`ScriptRunner::run_captured`] (`/bin/bash -c`,
//!   its own process group, the whole group killed at the timeout): one implementation of
//!   that discipline, not a copy.
//! - `http` is a GET with reqwest: healthy on 2xx. Redirects are not followed (a 3xx is a
//!   failure, "HTTP 302 (redirects are not followed)"): a health URL that redirects is
//!   usually a login page or another server, and following it would check the wrong
//!   thing. Proxies from the environment are not used: the check is about this machine.
//! - `tcp` connects to `host:port` (a name is resolved at every run) and closes at once.

use std::time::Duration;

use clustd_drivers::shell::{ScriptOutcome, ScriptRunner};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{CheckConfig, CheckKind};

/// After SIGTERM at an `exec` check's timeout, how long its process group has before
/// SIGKILL. Short: a check is not a service that needs time to shut down cleanly.
pub const EXEC_KILL_GRACE: Duration = Duration::from_millis(500);

/// One run of a configured check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's `name`.
    pub name: String,
    /// Whether this run passed.
    pub healthy: bool,
    /// One line: the command's last output line or why it failed (`exit status 1`,
    /// `timed out after 2000 ms`), `HTTP 503`, `connected to 127.0.0.1:5432`...
    pub detail: String,
    /// How long the run took.
    pub duration: Duration,
}

/// The running checks; dropping it stops them all (a running `exec` check's process group
/// is killed).
#[derive(Debug)]
#[must_use = "dropping it stops the checks"]
pub struct CheckTasks {
    tasks: Vec<JoinHandle<()>>,
}

impl CheckTasks {
    /// The number of checks running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no check runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for CheckTasks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts one task per check, sending every result to `tx`. A task ends when `tx`'s
/// receiver is gone. Must be called within a tokio runtime.
pub fn spawn_checks(checks: &[CheckConfig], tx: mpsc::Sender<CheckResult>) -> CheckTasks {
    let tasks = checks
        .iter()
        .map(|check| {
            let check = check.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let probe = Probe::new(&check);
                loop {
                    // `interval` after the previous run ended, the first at once.
                    let result = probe.run(&check).await;
                    if tx.send(result).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(check.interval).await;
                }
            })
        })
        .collect();
    CheckTasks { tasks }
}

/// Runs `check` once (what each task does every interval; also for a one-off run).
pub async fn run_check(check: &CheckConfig) -> CheckResult {
    Probe::new(check).run(check).await
}

/// What a check's task keeps between runs.
enum Probe {
    Exec {
        runner: ScriptRunner,
        command: String,
    },
    Http {
        /// Made once per check; an error (no TLS backend...) fails every run.
        client: Result<reqwest::Client, String>,
        url: reqwest::Url,
    },
    Tcp {
        addr: String,
    },
}

impl Probe {
    fn new(check: &CheckConfig) -> Self {
        match &check.kind {
            CheckKind::Exec { command } => {
                let mut runner = ScriptRunner::new();
                runner.timeout = check.timeout;
                runner.kill_grace = EXEC_KILL_GRACE;
                // Every interval: the runtime logs failures (WARN) and transitions itself.
                runner.quiet = true;
                Self::Exec {
                    runner,
                    command: command.clone(),
                }
            }
            CheckKind::Http { url } => Self::Http {
                client: reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .timeout(check.timeout)
                    .build()
                    .map_err(|e| format!("cannot make an HTTP client: {}", error_chain(&e))),
                url: url.clone(),
            },
            CheckKind::Tcp { addr } => Self::Tcp { addr: addr.clone() },
        }
    }

    async fn run(&self, check: &CheckConfig) -> CheckResult {
        let began = tokio::time::Instant::now();
        let timed_out = || format!("timed out after {} ms", check.timeout.as_millis());
        let (healthy, detail) = match self {
            Self::Exec { runner, command } => {
                let run = runner
                    .run_captured(&format!("check {}", check.name), command, &[])
                    .await;
                let reason = match run.outcome {
                    ScriptOutcome::Success => None,
                    ScriptOutcome::TimedOut => Some(timed_out()),
                    outcome => Some(match clustd_core::driver::ActionResult::from(outcome) {
                        clustd_core::driver::ActionResult::Failed(why) => why,
                        _ => "failed".to_string(),
                    }),
                };
                match (reason, run.last_line) {
                    (None, Some(line)) => (true, line),
                    (None, None) => (true, "exit status 0".to_string()),
                    (Some(reason), Some(line)) => (false, format!("{reason}: {line}")),
                    (Some(reason), None) => (false, reason),
                }
            }
            Self::Http { client, url } => match client {
                Err(why) => (false, why.clone()),
                Ok(client) => {
                    // reqwest's own timeout covers the whole exchange; this one also stops
                    // a run on a clock reqwest does not follow.
                    match tokio::time::timeout(check.timeout, client.get(url.clone()).send()).await
                    {
                        Err(_) => (false, timed_out()),
                        Ok(Err(e)) if e.is_timeout() => (false, timed_out()),
                        // Without the URL: it may hold a password.
                        Ok(Err(e)) => (false, error_chain(&e.without_url())),
                        Ok(Ok(response)) => {
                            let status = response.status();
                            let detail = if status.is_redirection() {
                                format!("HTTP {} (redirects are not followed)", status.as_u16())
                            } else {
                                format!("HTTP {}", status.as_u16())
                            };
                            (status.is_success(), detail)
                        }
                    }
                }
            },
            Self::Tcp { addr } => {
                match tokio::time::timeout(check.timeout, tokio::net::TcpStream::connect(addr))
                    .await
                {
                    Err(_) => (false, timed_out()),
                    Ok(Err(e)) => (false, format!("cannot connect to {addr}: {e}")),
                    Ok(Ok(stream)) => {
                        let peer = stream
                            .peer_addr()
                            .map_or_else(|_| addr.clone(), |a| a.to_string());
                        (true, format!("connected to {peer}"))
                    }
                }
            }
        };
        CheckResult {
            name: check.name.clone(),
            healthy,
            detail,
            duration: began.elapsed(),
        }
    }
}

/// An error and its sources, joined with `: ` (reqwest's own message alone is often just
/// "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
