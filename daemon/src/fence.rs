//! `[fence]`: the daemon's own stop, for drivers that cannot stop the service themselves.
//!
//! A driver told "master" stops the service when it is told "backup" or when its lease
//! runs out, and confirms with `Ok`. A driver that is frozen (SIGSTOP, swapped out, wedged)
//! does neither, and its service would run on while a new master starts elsewhere after
//! lease end plus the stop budget. So when such a driver's lease has ended and it has not
//! confirmed, the daemon runs the configured command itself, timed to end by then: it
//! starts at `lease end + stop_budget - fence.timeout_ms` (giving the driver's own stop that
//! long to confirm) and is killed, with its whole process group, at `fence.timeout_ms`.
//!
//! The fence is a layer under the driver's lease, not a shortcut: a hand-over still waits
//! for lease end plus the stop budget, whatever the fence reports. Every fence is reported
//! (ERROR, status, metrics, a `fenced` event to the drivers); one that fails or times out
//! means the service may still run there.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use clustd_core::driver::ActionResult;
use clustd_core::{Instant, NodeId};
use clustd_drivers::shell::ScriptRunner;
use tokio::sync::mpsc;

use crate::config::FenceSettings;
use crate::proctree::DriverProcess;

/// What one fence run is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceRequest {
    /// This node.
    pub node: NodeId,
    /// Its current term.
    pub term: u64,
    /// The drivers whose stop is unconfirmed, in id order.
    pub drivers: Vec<NodeId>,
    /// The processes each of those drivers connected from over the local driver socket
    /// (the kernel's peer credentials) while it may have run the service.
    pub processes: Vec<DriverProcesses>,
}

/// A driver's processes, for `fence.kill_driver`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverProcesses {
    /// The driver.
    pub driver: NodeId,
    /// The processes its local-socket connections came from.
    pub processes: Vec<DriverProcess>,
    /// Every connection that may have run the service is among them (none came over the
    /// network, none was forgotten).
    pub complete: bool,
}

/// How the daemon fences: by default the `[fence] command` ([`CommandFencer`]); a runtime
/// that models the machine itself (the simulation) or embeds the daemon supplies its own
/// ([`crate::runtime::Control::with_fencer`]). The runtime gives a run `fence.timeout_ms`
/// (then a short grace) and counts one that takes longer as timed out.
pub trait Fencer: Send + Sync + 'static {
    /// Kills the service the request's drivers may still run; `Ok` only if it is dead.
    fn fence(&self, request: FenceRequest) -> Pin<Box<dyn Future<Output = ActionResult> + Send>>;
}

/// The configured fence: with `fence.kill_driver`, first the process tree of each driver
/// that connected over the local socket ([`crate::proctree::kill_tree`]; a driver known
/// only over the network cannot be reached that way, which fails the run); then
/// `fence.command`, run with `/bin/sh -c` in its own process group (SIGKILL of the group at
/// the timeout), with `CLUSTD_NODE`, `CLUSTD_TERM` and `CLUSTD_FENCE_DRIVERS` (a
/// comma-separated list) in its environment. `Ok` only if every part succeeded.
#[derive(Debug, Clone)]
pub struct CommandFencer {
    command: Option<String>,
    kill_driver: bool,
    timeout: Duration,
}

impl CommandFencer {
    /// The fencer of `fence`.
    pub fn new(fence: &FenceSettings) -> Self {
        Self {
            command: fence.command.clone(),
            kill_driver: fence.kill_driver,
            timeout: fence.timeout,
        }
    }
}

/// Kills the process trees of the request's drivers; `Ok`, or every reason it did not.
async fn kill_drivers(request: &FenceRequest) -> ActionResult {
    let mut failures = Vec::new();
    for driver in &request.drivers {
        let known = request.processes.iter().find(|p| p.driver == *driver);
        let processes: Vec<DriverProcess> = known.map(|p| p.processes.clone()).unwrap_or_default();
        if processes.is_empty() || known.is_some_and(|p| !p.complete) {
            // Still kill what is known; the run fails either way.
            failures.push(format!(
                "driver {driver} (or an earlier connection under its id) did not connect over the local driver socket, so its process is unknown"
            ));
        }
        for process in processes {
            let killed =
                tokio::task::spawn_blocking(move || crate::proctree::kill_tree(process)).await;
            match killed {
                Ok(Ok(n)) => {
                    tracing::warn!(driver = %driver, pid = process.pid, processes = n, "fence: killed the driver's process tree")
                }
                Ok(Err(why)) => failures.push(format!("driver {driver}: {why}")),
                Err(e) => failures.push(format!("driver {driver}: the kill task failed: {e}")),
            }
        }
    }
    if failures.is_empty() {
        ActionResult::Ok
    } else {
        ActionResult::Failed(format!("kill_driver: {}", failures.join("; ")))
    }
}

impl Fencer for CommandFencer {
    fn fence(&self, request: FenceRequest) -> Pin<Box<dyn Future<Output = ActionResult> + Send>> {
        let mut runner = ScriptRunner::new();
        runner.shell = "/bin/sh".into();
        runner.timeout = self.timeout;
        // At the timeout there is no time left for a grace period: the budget is spent.
        runner.kill_grace = Duration::ZERO;
        let command = self.command.clone();
        let kill_driver = self.kill_driver;
        let list = request
            .drivers
            .iter()
            .map(NodeId::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let vars = vec![
            ("CLUSTD_NODE".to_string(), request.node.as_str().to_string()),
            ("CLUSTD_TERM".to_string(), request.term.to_string()),
            ("CLUSTD_FENCE_DRIVERS".to_string(), list),
        ];
        Box::pin(async move {
            let killed = if kill_driver {
                kill_drivers(&request).await
            } else {
                ActionResult::Ok
            };
            let Some(command) = command else {
                return killed;
            };
            // The command runs even if a kill failed: it may reach what the kill could not.
            let run = runner.run_captured("fence", &command, &vars).await;
            let mut result = ActionResult::from(run.outcome);
            if let (ActionResult::Failed(why), Some(line)) = (&mut result, &run.last_line) {
                *why = format!("{why}: {line}");
            }
            match (killed, result) {
                (ActionResult::Ok, result) => result,
                (ActionResult::Failed(why), ActionResult::Ok) => ActionResult::Failed(format!(
                    "{why} (fence.command succeeded, but the driver's own processes may run on)"
                )),
                (ActionResult::Failed(why), other) => ActionResult::Failed(format!(
                    "{why}; fence.command: {}",
                    match other {
                        ActionResult::Failed(w) => w,
                        _ => "timed out".to_owned(),
                    }
                )),
                (killed, _) => killed,
            }
        })
    }
}

/// One finished fence run.
#[derive(Debug)]
pub(crate) struct FenceDone {
    /// The drivers it was run for, each with the unconfirmed lease end it covers.
    pub(crate) drivers: Vec<(NodeId, Instant)>,
    /// When it started (node's clock).
    pub(crate) started: Instant,
    /// `Ok`, or why not.
    pub(crate) result: ActionResult,
    /// How long it ran.
    pub(crate) elapsed: Duration,
}

/// When the fence for a driver whose unconfirmed lease ends at `lease_end` starts.
pub(crate) fn start_at(
    lease_end: Instant,
    stop_budget: Duration,
    fence: &FenceSettings,
) -> Instant {
    lease_end + stop_budget.saturating_sub(fence.timeout)
}

/// A run that outlives its timeout by this much more is abandoned as timed out (the
/// command fencer kills its process group at the timeout itself).
const GRACE: Duration = Duration::from_millis(100);

/// Runs `fencer` for `drivers` in a task; the result goes to `done`.
pub(crate) fn spawn(
    fencer: Arc<dyn Fencer>,
    timeout: Duration,
    request: FenceRequest,
    drivers: Vec<(NodeId, Instant)>,
    started: Instant,
    done: mpsc::Sender<FenceDone>,
) {
    tokio::spawn(async move {
        let begin = tokio::time::Instant::now();
        let result = tokio::time::timeout(timeout + GRACE, fencer.fence(request))
            .await
            .unwrap_or(ActionResult::TimedOut);
        let _ = done
            .send(FenceDone {
                drivers,
                started,
                result,
                elapsed: begin.elapsed(),
            })
            .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_starts_so_that_its_timeout_ends_with_the_stop_budget() {
        let fence = FenceSettings {
            command: Some("true".into()),
            kill_driver: false,
            timeout: Duration::from_millis(150),
        };
        let end = Instant::from_millis(1000);
        assert_eq!(
            start_at(end, Duration::from_millis(200), &fence),
            Instant::from_millis(1050)
        );
        // A timeout equal to the budget starts at the lease end itself.
        assert_eq!(start_at(end, Duration::from_millis(150), &fence), end);
    }
}
