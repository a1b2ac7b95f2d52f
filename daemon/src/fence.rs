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

use std::time::Duration;

use clustd_core::{ActionResult, Instant, NodeId};
use clustd_drivers::shell::ScriptRunner;
use tokio::sync::mpsc;

use crate::config::FenceSettings;

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

/// Runs `fence.command` with `/bin/sh -c` in its own process group (SIGKILL of the group
/// at the timeout), in a task; the result goes to `done`.
pub(crate) fn spawn(
    fence: &FenceSettings,
    node: &NodeId,
    term: u64,
    drivers: Vec<(NodeId, Instant)>,
    started: Instant,
    done: mpsc::Sender<FenceDone>,
) {
    let mut runner = ScriptRunner::new();
    runner.shell = "/bin/sh".into();
    runner.timeout = fence.timeout;
    // At the timeout there is no time left for a grace period: the budget is spent.
    runner.kill_grace = Duration::ZERO;
    let command = fence.command.clone();
    let list = drivers
        .iter()
        .map(|(id, _)| id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let vars = vec![
        ("CLUSTD_NODE".to_string(), node.as_str().to_string()),
        ("CLUSTD_TERM".to_string(), term.to_string()),
        ("CLUSTD_FENCE_DRIVERS".to_string(), list),
    ];
    tokio::spawn(async move {
        let run = runner.run_captured("fence", &command, &vars).await;
        let mut result = ActionResult::from(run.outcome);
        if let (ActionResult::Failed(why), Some(line)) = (&mut result, &run.last_line) {
            *why = format!("{why}: {line}");
        }
        let _ = done
            .send(FenceDone {
                drivers,
                started,
                result,
                elapsed: run.elapsed,
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
            command: "true".into(),
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
