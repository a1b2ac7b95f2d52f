//! Running one script: `shell -c SCRIPT` in its own process group, output to the log line by
//! line, and on timeout the whole group is killed (SIGTERM, then SIGKILL after a grace period),
//! so a hanging script cannot leave children behind. A run that is cancelled (its future
//! dropped: the engine cancels a start when a demotion or the lease's end arrives) kills
//! the group at once with SIGKILL, without the grace period: a stop is waiting, and no
//! part of the start may keep running beside it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustd_core::driver::ActionResult;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// The longest line logged; longer lines are cut (a script cannot flood one log record).
const MAX_LOG_LINE: usize = 4096;

/// How long [`ScriptRunner::run_captured`] keeps reading a script's output after it exited.
pub const CAPTURE_GRACE: Duration = Duration::from_millis(100);

/// What [`ScriptRunner::run_captured`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptRun {
    /// How it ended.
    pub outcome: ScriptOutcome,
    /// The last non-empty line it printed on stdout or stderr (cut like a log line).
    pub last_line: Option<String>,
    /// From spawn to exit (or to the end of the kill after a timeout).
    pub elapsed: Duration,
}

/// How a script ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScriptOutcome {
    /// Exit status 0.
    Success,
    /// Non-zero exit status, or killed by a signal.
    Failed {
        /// The exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// It ran past its timeout; its process group was killed.
    TimedOut,
    /// It could not be started (shell missing, bad `cwd`, ...).
    SpawnFailed(String),
}

impl From<ScriptOutcome> for ActionResult {
    fn from(outcome: ScriptOutcome) -> Self {
        match outcome {
            ScriptOutcome::Success => ActionResult::Ok,
            ScriptOutcome::Failed {
                code: Some(code), ..
            } => ActionResult::Failed(format!("exit status {code}")),
            ScriptOutcome::Failed {
                signal: Some(signal),
                ..
            } => ActionResult::Failed(format!("killed by signal {signal}")),
            ScriptOutcome::Failed { .. } => ActionResult::Failed("failed".into()),
            ScriptOutcome::TimedOut => ActionResult::TimedOut,
            ScriptOutcome::SpawnFailed(why) => ActionResult::Failed(format!("cannot start: {why}")),
        }
    }
}

/// Runs scripts with a fixed shell, working directory, environment and time limits.
#[derive(Clone, Debug)]
pub struct ScriptRunner {
    /// The shell; scripts run as `shell -c SCRIPT`.
    pub shell: PathBuf,
    /// Working directory (default: the driver's).
    pub cwd: Option<PathBuf>,
    /// Extra environment, on top of the driver's own.
    pub env: BTreeMap<String, String>,
    /// Time limit for one script.
    pub timeout: Duration,
    /// After SIGTERM on timeout, how long before SIGKILL.
    pub kill_grace: Duration,
    /// Routine runs (health checks, every interval): the start, the result and the output
    /// lines go to the log at DEBUG instead of INFO/ERROR (the caller reports failures
    /// itself); a timeout and its kills are still logged at ERROR.
    pub quiet: bool,
}

impl ScriptRunner {
    /// A runner with `/bin/bash`, no cwd, no extra env, 30 s timeout and 5 s grace.
    pub fn new() -> Self {
        Self {
            shell: PathBuf::from("/bin/bash"),
            cwd: None,
            env: BTreeMap::new(),
            timeout: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
            quiet: false,
        }
    }

    /// Runs `script` (named `name` in the log) with `vars` added to the environment.
    ///
    /// Dropping the future before it completes (cancellation) kills the script's whole
    /// process group at once with SIGKILL.
    pub async fn run(&self, name: &str, script: &str, vars: &[(String, String)]) -> ScriptOutcome {
        self.run_inner(name, script, vars, false).await.outcome
    }

    /// Like [`ScriptRunner::run`] (same process group, timeout, kill and logging
    /// discipline), and also returns the last line the script printed (stdout or stderr)
    /// and how long it ran: for health checks, whose status shows both. After the script
    /// exits, its output is read for at most [`CAPTURE_GRACE`] more (a process it left in
    /// the background may hold the pipes open).
    pub async fn run_captured(
        &self,
        name: &str,
        script: &str,
        vars: &[(String, String)],
    ) -> ScriptRun {
        self.run_inner(name, script, vars, true).await
    }

    async fn run_inner(
        &self,
        name: &str,
        script: &str,
        vars: &[(String, String)],
        capture: bool,
    ) -> ScriptRun {
        let began = Instant::now();
        let last_line = Arc::new(Mutex::new(None));
        let outcome = self
            .run_script(name, script, vars, capture, &last_line)
            .await;
        let last_line = last_line.lock().map(|l| l.clone()).unwrap_or(None);
        ScriptRun {
            outcome,
            last_line,
            elapsed: began.elapsed(),
        }
    }

    async fn run_script(
        &self,
        name: &str,
        script: &str,
        vars: &[(String, String)],
        capture: bool,
        last_line: &Arc<Mutex<Option<String>>>,
    ) -> ScriptOutcome {
        let mut command = Command::new(&self.shell);
        command
            .arg("-c")
            .arg(script)
            .envs(&self.env)
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a timeout kills whatever it started too.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(script = name, shell = %self.shell.display(), "cannot start script: {e}");
                return ScriptOutcome::SpawnFailed(e.to_string());
            }
        };
        let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
            return ScriptOutcome::SpawnFailed(
                "the script exited before it could be watched".into(),
            );
        };
        let group = Pid::from_raw(pid);
        // Declared after `child`, so dropped before it: the group is killed while its
        // leader is not yet reaped (unless a timeout's kill was under way), so the group id
        // cannot have been reused.
        let mut guard = KillOnDrop {
            script: name.to_owned(),
            group: Some(group),
        };
        if self.quiet {
            tracing::debug!(script = name, pid, "running script");
        } else {
            tracing::info!(script = name, pid, "running script");
        }
        // Readers are not awaited after exit: a service the script left running in the
        // background may keep the pipes open, and its output keeps going to the log.
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(log_lines(
                out,
                name.to_owned(),
                false,
                self.quiet,
                last_line.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(log_lines(
                err,
                name.to_owned(),
                true,
                self.quiet,
                last_line.clone(),
            )));
        }
        let started = Instant::now();
        let outcome = match timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) => {
                use std::os::unix::process::ExitStatusExt;
                let elapsed_ms = started.elapsed().as_millis();
                if status.success() {
                    if self.quiet {
                        tracing::debug!(script = name, elapsed_ms, "script succeeded");
                    } else {
                        tracing::info!(script = name, elapsed_ms, "script succeeded");
                    }
                    ScriptOutcome::Success
                } else {
                    if self.quiet {
                        tracing::debug!(script = name, elapsed_ms, "script failed: {status}");
                    } else {
                        tracing::error!(script = name, elapsed_ms, "script failed: {status}");
                    }
                    ScriptOutcome::Failed {
                        code: status.code(),
                        signal: status.signal(),
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::error!(script = name, "cannot wait for script: {e}");
                ScriptOutcome::Failed {
                    code: None,
                    signal: None,
                }
            }
            Err(_) => {
                self.kill_group(name, group, &mut child).await;
                ScriptOutcome::TimedOut
            }
        };
        // Ran to the end: whatever the script left running in the group (a service
        // started in the background) stays.
        guard.group = None;
        if capture {
            let _ = timeout(CAPTURE_GRACE, async {
                for reader in readers {
                    let _ = reader.await;
                }
            })
            .await;
        }
        outcome
    }

    /// SIGTERM to the group; SIGKILL to whatever is left after the grace period.
    async fn kill_group(&self, name: &str, group: Pid, child: &mut Child) {
        tracing::error!(
            script = name,
            timeout_ms = self.timeout.as_millis(),
            "script exceeded its timeout: sending SIGTERM to its process group {group}"
        );
        if killpg(group, Signal::SIGTERM) == Err(Errno::ESRCH) {
            let _ = child.wait().await;
            return;
        }
        let deadline = Instant::now() + self.kill_grace;
        let mut leader_done = false;
        while Instant::now() < deadline {
            if !leader_done {
                leader_done = matches!(child.try_wait(), Ok(Some(_)));
            }
            // Signal 0 checks whether any member is left (the reaped leader no longer counts).
            if leader_done && killpg(group, None) == Err(Errno::ESRCH) {
                tracing::info!(script = name, "process group ended after SIGTERM");
                return;
            }
            sleep(Duration::from_millis(20)).await;
        }
        tracing::error!(
            script = name,
            "process group {group} still alive after the grace period: sending SIGKILL"
        );
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

/// Kills a script's process group if the run is dropped before it ended (cancelled).
struct KillOnDrop {
    script: String,
    /// `None` once the run ended normally.
    group: Option<Pid>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Some(group) = self.group else {
            return;
        };
        // SIGKILL at once, no grace: the stop runs next and nothing of the start may run
        // beside it. The leader is reaped by tokio once the `Child` is dropped.
        match killpg(group, Signal::SIGKILL) {
            Ok(()) => tracing::warn!(
                script = %self.script,
                "script cancelled: killed its process group {group} (SIGKILL)"
            ),
            Err(Errno::ESRCH) => {}
            Err(e) => tracing::error!(
                script = %self.script,
                "script cancelled, but its process group {group} could not be killed: {e}"
            ),
        }
    }
}

impl Default for ScriptRunner {
    fn default() -> Self {
        Self::new()
    }
}

async fn log_lines(
    stream: impl AsyncRead + Unpin,
    script: String,
    stderr: bool,
    quiet: bool,
    last_line: Arc<Mutex<Option<String>>>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let mut line = text.trim_end_matches(['\n', '\r']).to_owned();
                if line.len() > MAX_LOG_LINE {
                    let mut cut = MAX_LOG_LINE;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                    line.push_str(" [...]");
                }
                if quiet {
                    tracing::debug!(script = %script, stderr, "{line}");
                } else if stderr {
                    tracing::warn!(script = %script, stream = "stderr", "{line}");
                } else {
                    tracing::info!(script = %script, stream = "stdout", "{line}");
                }
                if !line.trim().is_empty()
                    && let Ok(mut last) = last_line.lock()
                {
                    *last = Some(line);
                }
            }
        }
    }
}
