//! Health: whether this node may be master, from its checks.
//!
//! [`Tracker`] owns the counting — fall/rise hysteresis per check, "all must pass" for the
//! node — and is pure: no I/O, no clock, every mutator takes `now`. Three sources feed it:
//! - the `[[check]]`s of the config, run by [`run::spawn_checks`], whose results go to
//!   [`Tracker::record`];
//! - checks drivers report (`FromDriver::Health`), named `<driver>/<check>`, through
//!   [`Tracker::record_driver`] and dropped by [`Tracker::forget_driver`];
//! - a failed `start` ([`Tracker::start_failed`]): the check `start`, unhealthy at once
//!   until `health.start_failure_ms` passes ([`Tracker::poll_timeout`] /
//!   [`Tracker::handle_timeout`]) or a later start succeeds.
//!
//! Every call that changes the node's health returns a [`HealthTransition`] saying which
//! check and why; the runtime passes it to the core (`Node::set_healthy`), the log and the
//! drivers.

pub mod run;

use std::time::Duration;

use clustd_core::Instant;
use serde::{Deserialize, Serialize};

use crate::config::{CheckConfig, CheckKind, START_CHECK_NAME, is_valid_check_name};

pub use run::{CheckResult, CheckTasks, run_check, spawn_checks};

/// The longest `last_result` kept, in bytes (cut at a character boundary).
pub const MAX_RESULT_LEN: usize = 256;

/// The most checks one driver may report: more are refused (and each is a metric label).
pub const MAX_CHECKS_PER_DRIVER: usize = 16;

/// The most driver-reported checks in all.
pub const MAX_DRIVER_CHECKS: usize = 64;

/// Where a check comes from, shown in status as `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CheckType {
    /// A `[[check]]` with `exec`.
    Exec,
    /// A `[[check]]` with `http`.
    Http,
    /// A `[[check]]` with `tcp`.
    Tcp,
    /// Reported by a driver (`<driver>/<check>`).
    Driver,
    /// A failed `start` (the check named `start`).
    Start,
}

impl CheckType {
    /// The type of a configured check.
    pub fn of(kind: &CheckKind) -> Self {
        match kind {
            CheckKind::Exec { .. } => Self::Exec,
            CheckKind::Http { .. } => Self::Http,
            CheckKind::Tcp { .. } => Self::Tcp,
        }
    }

    /// `"exec"`, `"http"`, `"tcp"`, `"driver"` or `"start"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Driver => "driver",
            Self::Start => "start",
        }
    }
}

/// The node's health changed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "pass it to Node::set_healthy, the log and the drivers"]
pub struct HealthTransition {
    /// The node's health now.
    pub healthy: bool,
    /// Why, in one line: `check web failed 3 times in a row: exit status 1`, or
    /// `all checks pass (check web passed 2 times in a row)`.
    pub detail: String,
}

/// One check, for `clustd status` and the admin API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// `web`, `shell-1/check`, `start`.
    pub name: String,
    /// Where it comes from.
    pub kind: CheckType,
    /// Whether it passes (after fall/rise).
    pub healthy: bool,
    /// Failures in a row, now.
    pub consecutive_failures: u32,
    /// Successes in a row, now.
    pub consecutive_successes: u32,
    /// Failures that make it unhealthy.
    pub fall: u32,
    /// Successes that make it healthy again.
    pub rise: u32,
    /// Failed runs since it was created.
    pub failures_total: u64,
    /// Runs (results) since it was created.
    pub runs_total: u64,
    /// The last run's one-line result (at most [`MAX_RESULT_LEN`] bytes).
    pub last_result: Option<String>,
    /// How long the last run took (configured checks only).
    pub last_duration_ms: Option<u64>,
    /// How long ago the last result came.
    pub last_run_ms_ago: Option<u64>,
    /// For `start`: in how long it stops counting against the node.
    pub clears_in_ms: Option<u64>,
}

/// A driver's health report that was not counted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverCheckRefused {
    /// The check's name is not `A-Z a-z 0-9 . _ -` (1 to 64 bytes).
    #[error(
        "driver {driver} reported a check named {check:?}: a check name is 1 to 64 of A-Z a-z 0-9 . _ -"
    )]
    BadName {
        /// The driver.
        driver: String,
        /// The name as reported (cut to 64 bytes).
        check: String,
    },
    /// `fall` or `rise` is 0.
    #[error(
        "driver {driver} reported check {check} with fall {fall} and rise {rise}: both must be at least 1"
    )]
    BadThreshold {
        /// The driver.
        driver: String,
        /// The check.
        check: String,
        /// As reported.
        fall: u32,
        /// As reported.
        rise: u32,
    },
    /// The driver already reports [`MAX_CHECKS_PER_DRIVER`] other checks.
    #[error(
        "driver {driver} reported a new check {check} beyond its {MAX_CHECKS_PER_DRIVER}: ignored"
    )]
    TooManyForDriver {
        /// The driver.
        driver: String,
        /// The check refused.
        check: String,
    },
    /// Drivers already report [`MAX_DRIVER_CHECKS`] checks in all.
    #[error(
        "driver {driver} reported a new check {check} beyond the {MAX_DRIVER_CHECKS} driver checks allowed in all: ignored"
    )]
    TooMany {
        /// The driver.
        driver: String,
        /// The check refused.
        check: String,
    },
}

/// One `FromDriver::Health` report, as [`Tracker::record_driver`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverReport<'a> {
    /// The check's name as the driver calls it (`A-Z a-z 0-9 . _ -`, 1 to 64).
    pub check: &'a str,
    /// Whether this run passed.
    pub healthy: bool,
    /// One line on what happened.
    pub detail: &'a str,
    /// Consecutive failures that make the check unhealthy (at least 1).
    pub fall: u32,
    /// Consecutive successes that make it healthy again (at least 1).
    pub rise: u32,
}

/// What [`Tracker::forget_driver`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use = "the removed checks' metrics must be dropped too"]
pub struct DriverForgotten {
    /// The names of the checks removed (e.g. to drop their metric labels).
    pub removed: Vec<String>,
    /// Set when removing them changed the node's health.
    pub transition: Option<HealthTransition>,
}

#[derive(Clone, Debug)]
struct Check {
    name: String,
    kind: CheckType,
    /// The driver reporting it, for [`CheckType::Driver`].
    driver: Option<String>,
    fall: u32,
    rise: u32,
    healthy: bool,
    consecutive_failures: u32,
    consecutive_successes: u32,
    failures_total: u64,
    runs_total: u64,
    last_result: Option<String>,
    last_duration: Option<Duration>,
    last_run: Option<Instant>,
    /// For `start`: when it turns healthy by itself.
    clears_at: Option<Instant>,
}

impl Check {
    fn new(name: String, kind: CheckType, fall: u32, rise: u32, healthy: bool) -> Self {
        Self {
            name,
            kind,
            driver: None,
            fall,
            rise,
            healthy,
            consecutive_failures: 0,
            consecutive_successes: 0,
            failures_total: 0,
            runs_total: 0,
            last_result: None,
            last_duration: None,
            last_run: None,
            clears_at: None,
        }
    }

    /// Counts one run.
    fn count(&mut self, passed: bool, detail: &str, duration: Option<Duration>, now: Instant) {
        self.runs_total += 1;
        self.last_result = Some(truncate(detail, MAX_RESULT_LEN));
        self.last_duration = duration;
        self.last_run = Some(now);
        if passed {
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            self.consecutive_failures = 0;
            if !self.healthy && self.consecutive_successes >= self.rise {
                self.healthy = true;
            }
        } else {
            self.failures_total += 1;
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.consecutive_successes = 0;
            if self.healthy && self.consecutive_failures >= self.fall {
                self.healthy = false;
            }
        }
    }

    /// Why it is unhealthy (or, when healthy, what made it so), in one line.
    fn describe(&self) -> String {
        let result = self.last_result.as_deref().unwrap_or("");
        let times = |n: u32| {
            if n == 1 {
                "once".to_string()
            } else {
                format!("{n} times in a row")
            }
        };
        if self.kind == CheckType::Start && !self.healthy {
            return format!("check start failed: {result}");
        }
        match (self.healthy, self.runs_total) {
            (false, 0) => format!(
                "check {} has not run yet (it must pass {} before the node is healthy)",
                self.name,
                times(self.rise)
            ),
            (false, _) if self.consecutive_successes > 0 => format!(
                "check {} passed {} of the {} runs in a row it needs: {result}",
                self.name, self.consecutive_successes, self.rise
            ),
            (false, _) => format!(
                "check {} failed {}: {result}",
                self.name,
                times(self.consecutive_failures)
            ),
            (true, _) if self.consecutive_failures > 0 => format!(
                "check {} failed {} ({} make it unhealthy): {result}",
                self.name,
                times(self.consecutive_failures),
                self.fall
            ),
            (true, 0) => format!("check {} has no result yet", self.name),
            (true, _) => format!(
                "check {} passed {}: {result}",
                self.name,
                times(self.consecutive_successes)
            ),
        }
    }

    fn status(&self, now: Instant) -> CheckStatus {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        CheckStatus {
            name: self.name.clone(),
            kind: self.kind,
            healthy: self.healthy,
            consecutive_failures: self.consecutive_failures,
            consecutive_successes: self.consecutive_successes,
            fall: self.fall,
            rise: self.rise,
            failures_total: self.failures_total,
            runs_total: self.runs_total,
            last_result: self.last_result.clone(),
            last_duration_ms: self.last_duration.map(ms),
            last_run_ms_ago: self
                .last_run
                .map(|at| ms(now.saturating_duration_since(at))),
            clears_in_ms: self
                .clears_at
                .filter(|_| !self.healthy)
                .map(|at| ms(at.saturating_duration_since(now))),
        }
    }
}

/// The health of this node: every check, and whether all pass.
///
/// Configured checks start *unhealthy* and turn healthy after `rise` passes, so a booting
/// node never becomes master with a dead service. With no checks at all the node is
/// healthy.
///
/// Driver-reported checks start *healthy*, and their first report counts as one run: a
/// failure makes the check unhealthy at once only with `fall = 1`. A driver connects (or
/// reconnects after a restart of either side) while its service may well be running
/// under a healthy master; starting it unhealthy would make that master hand over for as
/// long as `rise` reports take, for no fault at all. A driver that wants "unhealthy until
/// proven otherwise" reports with `fall = 1`.
#[derive(Clone, Debug)]
pub struct Tracker {
    /// Configured checks in config order, then driver checks as they came, then `start`.
    checks: Vec<Check>,
    start_failure: Duration,
    /// Drivers whose latest start failed (and still counts): only each one's own later
    /// successful start clears it, so another driver's `Ok` cannot hide it.
    start_failed_by: std::collections::BTreeSet<String>,
}

impl Tracker {
    /// A tracker for the configured `checks`; a failed start counts for `start_failure`
    /// (`health.start_failure_ms`).
    pub fn new(checks: &[CheckConfig], start_failure: Duration) -> Self {
        Self {
            checks: checks
                .iter()
                .map(|c| {
                    Check::new(
                        c.name.clone(),
                        CheckType::of(&c.kind),
                        c.fall,
                        c.rise,
                        false,
                    )
                })
                .collect(),
            start_failure,
            start_failed_by: std::collections::BTreeSet::new(),
        }
    }

    /// `clustd reload`: the configured checks become `checks` (they were `old`). A check
    /// whose configuration is unchanged keeps its state; a new or changed one starts
    /// *passing*, so a reload never moves mastership by itself — it turns the node
    /// unhealthy only after failing `fall` times. Driver-reported checks and a failed
    /// `start` stay as they are.
    pub fn reconfigure(
        &mut self,
        checks: &[CheckConfig],
        old: &[CheckConfig],
        start_failure: Duration,
    ) -> Option<HealthTransition> {
        let before = self.is_healthy();
        let configured = |k: &Check| !matches!(k.kind, CheckType::Driver | CheckType::Start);
        let mut next: Vec<Check> = checks
            .iter()
            .map(|c| {
                let unchanged = old.contains(c);
                match self
                    .checks
                    .iter()
                    .find(|k| configured(k) && k.name == c.name)
                {
                    Some(k) if unchanged => k.clone(),
                    _ => Check::new(c.name.clone(), CheckType::of(&c.kind), c.fall, c.rise, true),
                }
            })
            .collect();
        next.extend(self.checks.iter().filter(|k| !configured(k)).cloned());
        self.checks = next;
        self.start_failure = start_failure;
        self.transition(before, "the checks were reloaded")
    }

    /// Whether every check passes (true with none).
    pub fn is_healthy(&self) -> bool {
        self.checks.iter().all(|c| c.healthy)
    }

    /// Why the node is unhealthy, one clause per failing check joined with `; `; `None`
    /// while healthy.
    pub fn why_unhealthy(&self) -> Option<String> {
        let failing: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.healthy)
            .map(Check::describe)
            .collect();
        (!failing.is_empty()).then(|| failing.join("; "))
    }

    /// Every check's state, for status (config order, then driver checks, then `start`).
    pub fn statuses(&self, now: Instant) -> Vec<CheckStatus> {
        self.checks.iter().map(|c| c.status(now)).collect()
    }

    /// One check's status, by name (`web`, `<driver>/<check>`, `start`).
    pub fn status(&self, name: &str, now: Instant) -> Option<CheckStatus> {
        self.checks
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.status(now))
    }

    /// The number of checks drivers report.
    pub fn driver_check_count(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.kind == CheckType::Driver)
            .count()
    }

    /// Clears the `start` check once `health.start_failure_ms` has passed since the last
    /// failed start.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<HealthTransition> {
        let before = self.is_healthy();
        let start = self.checks.iter_mut().find(|c| {
            c.kind == CheckType::Start && !c.healthy && c.clears_at.is_some_and(|at| at <= now)
        })?;
        start.healthy = true;
        start.clears_at = None;
        start.consecutive_failures = 0;
        self.start_failed_by.clear();
        let cause = format!(
            "the failed start counted for {} ms",
            self.start_failure.as_millis()
        );
        self.transition(before, &cause)
    }

    /// Counts one run of a configured check. A result for a name the tracker does not know
    /// (a runner of an older config) is ignored.
    pub fn record(&mut self, result: &CheckResult, now: Instant) -> Option<HealthTransition> {
        let before = self.is_healthy();
        let check = self.checks.iter_mut().find(|c| {
            c.name == result.name && !matches!(c.kind, CheckType::Driver | CheckType::Start)
        })?;
        check.count(result.healthy, &result.detail, Some(result.duration), now);
        let cause = check.describe();
        self.transition(before, &cause)
    }

    /// Counts one report of check `check` by driver `driver` (`FromDriver::Health`), as the
    /// check `<driver>/<check>`, made on its first report (see the type's docs for its
    /// starting state). `fall` and `rise` are taken from every report.
    pub fn record_driver(
        &mut self,
        driver: &str,
        report: &DriverReport<'_>,
        now: Instant,
    ) -> Result<Option<HealthTransition>, DriverCheckRefused> {
        let DriverReport {
            check,
            healthy,
            detail,
            fall,
            rise,
        } = *report;
        if !is_valid_check_name(check) {
            return Err(DriverCheckRefused::BadName {
                driver: driver.to_string(),
                check: truncate(check, crate::config::MAX_CHECK_NAME_LEN),
            });
        }
        if fall == 0 || rise == 0 {
            return Err(DriverCheckRefused::BadThreshold {
                driver: driver.to_string(),
                check: check.to_string(),
                fall,
                rise,
            });
        }
        let name = driver_check_name(driver, check);
        let before = self.is_healthy();
        let index = match self.checks.iter().position(|c| c.name == name) {
            Some(index) => index,
            None => {
                let of_driver = self
                    .checks
                    .iter()
                    .filter(|c| c.driver.as_deref() == Some(driver))
                    .count();
                if of_driver >= MAX_CHECKS_PER_DRIVER {
                    return Err(DriverCheckRefused::TooManyForDriver {
                        driver: driver.to_string(),
                        check: check.to_string(),
                    });
                }
                if self.driver_check_count() >= MAX_DRIVER_CHECKS {
                    return Err(DriverCheckRefused::TooMany {
                        driver: driver.to_string(),
                        check: check.to_string(),
                    });
                }
                let mut new = Check::new(name, CheckType::Driver, fall, rise, true);
                new.driver = Some(driver.to_string());
                // Before `start`, which stays last.
                let at = self
                    .checks
                    .iter()
                    .position(|c| c.kind == CheckType::Start)
                    .unwrap_or(self.checks.len());
                self.checks.insert(at, new);
                at
            }
        };
        let entry = &mut self.checks[index];
        entry.fall = fall;
        entry.rise = rise;
        entry.count(healthy, detail, None, now);
        let cause = entry.describe();
        Ok(self.transition(before, &cause))
    }

    /// Drops every check driver `driver` reported (it disconnected).
    pub fn forget_driver(&mut self, driver: &str, _now: Instant) -> DriverForgotten {
        let before = self.is_healthy();
        let mut removed = Vec::new();
        self.checks.retain(|c| {
            let of_driver = c.driver.as_deref() == Some(driver);
            if of_driver {
                removed.push(c.name.clone());
            }
            !of_driver
        });
        let cause = format!("driver {driver}'s checks were dropped: it disconnected");
        let transition = self.transition(before, &cause);
        DriverForgotten {
            removed,
            transition,
        }
    }

    /// A driver's `start` failed: the node is unhealthy at once, until
    /// `health.start_failure_ms` passes or a later start succeeds. Another failure restarts
    /// that time.
    pub fn start_failed(
        &mut self,
        driver: &str,
        detail: &str,
        now: Instant,
    ) -> Option<HealthTransition> {
        let before = self.is_healthy();
        let index = match self.checks.iter().position(|c| c.kind == CheckType::Start) {
            Some(index) => index,
            None => {
                self.checks.push(Check::new(
                    START_CHECK_NAME.to_string(),
                    CheckType::Start,
                    1,
                    1,
                    true,
                ));
                self.checks.len() - 1
            }
        };
        let start = &mut self.checks[index];
        let text = format!(
            "driver {driver}: {detail} (counts for {} ms unless a start succeeds)",
            self.start_failure.as_millis()
        );
        start.count(false, &text, None, now);
        start.clears_at = Some(now + self.start_failure);
        self.start_failed_by.insert(driver.to_string());
        let cause = start.describe();
        self.transition(before, &cause)
    }

    /// `driver`'s start succeeded: its failed one no longer counts (another driver's still
    /// does).
    pub fn start_succeeded(&mut self, driver: &str, now: Instant) -> Option<HealthTransition> {
        if !self.start_failed_by.remove(driver) || !self.start_failed_by.is_empty() {
            return None;
        }
        let before = self.is_healthy();
        let start = self
            .checks
            .iter_mut()
            .find(|c| c.kind == CheckType::Start && !c.healthy)?;
        start.count(true, "a start succeeded", None, now);
        start.clears_at = None;
        self.transition(before, "a start succeeded")
    }

    /// When [`Tracker::handle_timeout`] must be called next: when a failed start stops
    /// counting.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.checks
            .iter()
            .filter(|c| !c.healthy)
            .filter_map(|c| c.clears_at)
            .min()
    }

    /// The transition, if the node's health is no longer `before`. `cause` is what just
    /// changed: the reason when the node turned unhealthy, appended when it turned healthy.
    fn transition(&self, before: bool, cause: &str) -> Option<HealthTransition> {
        let healthy = self.is_healthy();
        (healthy != before).then(|| HealthTransition {
            healthy,
            detail: if healthy {
                format!("all checks pass ({cause})")
            } else {
                cause.to_string()
            },
        })
    }
}

/// The name of a check a driver reports: `<driver>/<check>`.
pub fn driver_check_name(driver: &str, check: &str) -> String {
    format!("{driver}/{check}")
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_check(name: &str, fall: u32, rise: u32) -> CheckConfig {
        CheckConfig {
            name: name.into(),
            kind: CheckKind::Exec {
                command: "true".into(),
            },
            interval: Duration::from_millis(1000),
            timeout: Duration::from_millis(2000),
            fall,
            rise,
        }
    }

    fn result(name: &str, healthy: bool) -> CheckResult {
        CheckResult {
            name: name.into(),
            healthy,
            detail: if healthy { "ok" } else { "exit status 1" }.into(),
            duration: Duration::from_millis(5),
        }
    }

    fn report<'a>(
        check: &'a str,
        healthy: bool,
        detail: &'a str,
        fall: u32,
        rise: u32,
    ) -> DriverReport<'a> {
        DriverReport {
            check,
            healthy,
            detail,
            fall,
            rise,
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// Feeds `runs` (true = pass) to one check and returns its health after each.
    fn health_after_each(fall: u32, rise: u32, start_healthy: bool, runs: &[bool]) -> Vec<bool> {
        let mut tracker = Tracker::new(&[exec_check("web", fall, rise)], Duration::from_secs(60));
        if start_healthy {
            for i in 0..rise {
                let _ = tracker.record(&result("web", true), at(u64::from(i)));
            }
            assert!(tracker.is_healthy());
        }
        runs.iter()
            .enumerate()
            .map(|(i, pass)| {
                let _ = tracker.record(&result("web", *pass), at(100 + i as u64));
                tracker.is_healthy()
            })
            .collect()
    }

    #[test]
    fn fall_rise_hysteresis() {
        let (t, f) = (true, false);
        // (fall, rise, starts healthy, runs, health after each run)
        type Case<'a> = (u32, u32, bool, &'a [bool], &'a [bool]);
        let cases: &[Case<'_>] = &[
            // Starts unhealthy, healthy after `rise` passes in a row.
            (3, 2, false, &[t, t, t], &[f, t, t]),
            (3, 2, false, &[t, f, t, t], &[f, f, f, t]),
            (3, 1, false, &[t], &[t]),
            // Unhealthy after `fall` failures in a row, not before.
            (3, 2, true, &[f, f, f, f], &[t, t, f, f]),
            (3, 2, true, &[f, f, t, f, f], &[t, t, t, t, t]),
            (1, 1, true, &[f, t, f], &[f, t, f]),
            // A check that flips every run never changes state.
            (3, 2, true, &[f, t, f, t, f, t, f, t], &[t; 8]),
            (3, 2, false, &[t, f, t, f, t, f, t, f], &[f; 8]),
            // Recovery needs `rise` in a row after falling.
            (
                2,
                3,
                true,
                &[f, f, t, t, f, t, t, t],
                &[t, f, f, f, f, f, f, t],
            ),
        ];
        for (fall, rise, healthy, runs, expected) in cases {
            assert_eq!(
                health_after_each(*fall, *rise, *healthy, runs),
                *expected,
                "fall {fall} rise {rise} starting healthy {healthy} runs {runs:?}"
            );
        }
    }

    #[test]
    fn configured_checks_start_unhealthy_and_none_means_healthy() {
        let tracker = Tracker::new(&[exec_check("web", 3, 2)], Duration::from_secs(60));
        assert!(!tracker.is_healthy());
        let why = tracker.why_unhealthy().expect("unhealthy");
        assert!(why.contains("check web has not run yet"), "{why}");
        assert!(why.contains("2 times"), "{why}");

        let none = Tracker::new(&[], Duration::from_secs(60));
        assert!(none.is_healthy());
        assert_eq!(none.why_unhealthy(), None);
        assert_eq!(none.poll_timeout(), None);
    }

    #[test]
    fn all_checks_must_pass_and_transitions_say_why() {
        let checks = [exec_check("web", 3, 1), exec_check("db", 1, 1)];
        let mut tracker = Tracker::new(&checks, Duration::from_secs(60));
        assert_eq!(tracker.record(&result("web", true), at(1)), None);
        let up = tracker
            .record(&result("db", true), at(2))
            .expect("healthy now");
        assert!(up.healthy);
        assert!(up.detail.starts_with("all checks pass"), "{}", up.detail);

        let down = tracker
            .record(&result("db", false), at(3))
            .expect("unhealthy");
        assert!(!down.healthy);
        assert_eq!(down.detail, "check db failed once: exit status 1");
        // Already unhealthy: another failing check is no transition, but is listed.
        for i in 0..3 {
            assert_eq!(tracker.record(&result("web", false), at(4 + i)), None);
        }
        let why = tracker.why_unhealthy().expect("unhealthy");
        assert!(why.contains("check db failed once"), "{why}");
        assert!(
            why.contains("check web failed 3 times in a row: exit status 1"),
            "{why}"
        );
        // Unknown names are ignored.
        assert_eq!(tracker.record(&result("gone", true), at(9)), None);

        let statuses = tracker.statuses(at(10));
        let web = &statuses[0];
        assert_eq!(
            (
                web.name.as_str(),
                web.kind,
                web.healthy,
                web.consecutive_failures
            ),
            ("web", CheckType::Exec, false, 3)
        );
        assert_eq!((web.failures_total, web.runs_total), (3, 4));
        assert_eq!(web.last_duration_ms, Some(5));
        assert_eq!(web.last_run_ms_ago, Some(4));
    }

    #[test]
    fn fall_three_reports_the_count() {
        let mut tracker = Tracker::new(&[exec_check("web", 3, 1)], Duration::from_secs(60));
        let _ = tracker.record(&result("web", true), at(0));
        assert_eq!(tracker.record(&result("web", false), at(1)), None);
        assert_eq!(tracker.record(&result("web", false), at(2)), None);
        let down = tracker
            .record(&result("web", false), at(3))
            .expect("unhealthy");
        assert_eq!(
            down.detail,
            "check web failed 3 times in a row: exit status 1"
        );
    }

    #[test]
    fn driver_checks_are_created_counted_and_forgotten() {
        let mut tracker = Tracker::new(&[], Duration::from_secs(60));
        // First report passes: healthy, no transition.
        assert_eq!(
            tracker.record_driver("d1", &report("check", true, "ok", 3, 2), at(0)),
            Ok(None)
        );
        // First report fails with fall 3: still healthy (one failure counted).
        assert_eq!(
            tracker.record_driver("d1", &report("other", false, "down", 3, 2), at(0)),
            Ok(None)
        );
        assert!(tracker.is_healthy());
        // First report fails with fall 1: unhealthy at once.
        let down = tracker
            .record_driver("d2", &report("check", false, "pg down", 1, 1), at(1))
            .expect("counted")
            .expect("transition");
        assert!(!down.healthy);
        assert_eq!(down.detail, "check d2/check failed once: pg down");
        let names: Vec<String> = tracker
            .statuses(at(2))
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["d1/check", "d1/other", "d2/check"]);
        assert_eq!(tracker.statuses(at(2))[2].kind, CheckType::Driver);

        let gone = tracker.forget_driver("d2", at(3));
        assert_eq!(gone.removed, ["d2/check"]);
        let up = gone.transition.expect("healthy again");
        assert!(up.healthy);
        assert!(
            up.detail.contains("driver d2's checks were dropped"),
            "{}",
            up.detail
        );
        let gone = tracker.forget_driver("d1", at(4));
        assert_eq!(gone.removed.len(), 2);
        assert_eq!(gone.transition, None);
        assert_eq!(tracker.driver_check_count(), 0);
    }

    #[test]
    fn driver_reports_are_checked_and_capped() {
        let mut tracker = Tracker::new(&[], Duration::from_secs(60));
        let refused =
            |r: Result<Option<HealthTransition>, DriverCheckRefused>| r.expect_err("refused");
        assert!(matches!(
            refused(tracker.record_driver("d", &report("a/b", true, "", 1, 1), at(0))),
            DriverCheckRefused::BadName { .. }
        ));
        assert!(matches!(
            refused(tracker.record_driver("d", &report("", true, "", 1, 1), at(0))),
            DriverCheckRefused::BadName { .. }
        ));
        assert!(matches!(
            refused(tracker.record_driver("d", &report("c", true, "", 0, 1), at(0))),
            DriverCheckRefused::BadThreshold { .. }
        ));
        for i in 0..MAX_CHECKS_PER_DRIVER {
            assert_eq!(
                tracker.record_driver("d", &report(&format!("c{i}"), true, "", 1, 1), at(0)),
                Ok(None)
            );
        }
        let too_many = refused(tracker.record_driver("d", &report("extra", true, "", 1, 1), at(0)));
        assert!(matches!(
            too_many,
            DriverCheckRefused::TooManyForDriver { .. }
        ));
        assert!(too_many.to_string().contains("driver d"), "{too_many}");
        // An existing check still counts.
        assert_eq!(
            tracker.record_driver("d", &report("c0", true, "", 1, 1), at(1)),
            Ok(None)
        );
        for driver in 1..MAX_DRIVER_CHECKS / MAX_CHECKS_PER_DRIVER {
            for i in 0..MAX_CHECKS_PER_DRIVER {
                let name = format!("c{i}");
                let _ = tracker.record_driver(
                    &format!("d{driver}"),
                    &report(&name, true, "", 1, 1),
                    at(0),
                );
            }
        }
        assert_eq!(tracker.driver_check_count(), MAX_DRIVER_CHECKS);
        assert!(matches!(
            refused(tracker.record_driver("late", &report("c", true, "", 1, 1), at(0))),
            DriverCheckRefused::TooMany { .. }
        ));
        let _ = tracker.forget_driver("d", at(2));
        assert_eq!(
            tracker.record_driver("late", &report("c", true, "", 1, 1), at(3)),
            Ok(None)
        );
    }

    #[test]
    fn a_failed_start_counts_until_it_expires_or_a_start_succeeds() {
        let mut tracker = Tracker::new(&[], Duration::from_millis(60_000));
        let down = tracker
            .start_failed("shell", "exit status 2", at(1000))
            .expect("unhealthy");
        assert!(!down.healthy);
        assert!(
            down.detail
                .starts_with("check start failed: driver shell: exit status 2"),
            "{}",
            down.detail
        );
        assert_eq!(tracker.poll_timeout(), Some(at(61_000)));
        assert_eq!(tracker.handle_timeout(at(60_999)), None);
        // A second failure restarts the time.
        assert_eq!(
            tracker.start_failed("shell", "exit status 2", at(30_000)),
            None
        );
        assert_eq!(tracker.poll_timeout(), Some(at(90_000)));
        let status = &tracker.statuses(at(40_000))[0];
        assert_eq!(
            (status.name.as_str(), status.kind, status.clears_in_ms),
            ("start", CheckType::Start, Some(50_000))
        );
        assert_eq!(tracker.handle_timeout(at(61_000)), None);
        let up = tracker.handle_timeout(at(90_000)).expect("healthy");
        assert!(up.healthy);
        assert!(up.detail.contains("60000 ms"), "{}", up.detail);
        assert_eq!(tracker.poll_timeout(), None);
        // The check stays in status, healthy, with its history.
        assert_eq!(tracker.statuses(at(90_001))[0].failures_total, 2);

        // Cleared by a successful start.
        let _ = tracker.start_failed("shell", "timed out", at(100_000));
        assert!(!tracker.is_healthy());
        // Another driver's successful start does not hide it.
        assert_eq!(tracker.start_succeeded("notify", at(100_200)), None);
        assert!(!tracker.is_healthy());
        let up = tracker
            .start_succeeded("shell", at(100_500))
            .expect("healthy");
        assert_eq!(up.detail, "all checks pass (a start succeeded)");
        assert_eq!(tracker.poll_timeout(), None);
        assert_eq!(tracker.start_succeeded("shell", at(100_600)), None);
    }

    #[test]
    fn a_failed_start_with_a_failing_check_stays_unhealthy_after_expiry() {
        let mut tracker = Tracker::new(&[exec_check("web", 1, 1)], Duration::from_millis(10));
        let _ = tracker.record(&result("web", true), at(0));
        let _ = tracker.start_failed("shell", "exit status 1", at(1));
        let _ = tracker.record(&result("web", false), at(2));
        assert_eq!(tracker.handle_timeout(at(11)), None);
        let why = tracker.why_unhealthy().expect("web fails");
        assert!(why.starts_with("check web failed once"), "{why}");
    }

    #[test]
    fn results_are_cut_at_a_char_boundary() {
        let cases: &[(&str, usize, &str)] = &[
            ("short", 256, "short"),
            ("abcdef", 3, "abc"),
            ("aé", 2, "a"),
            ("aé", 3, "aé"),
            ("€€", 4, "€"),
            ("", 0, ""),
        ];
        for (text, max, expected) in cases {
            assert_eq!(truncate(text, *max), *expected, "{text:?} at {max}");
        }
        let mut tracker = Tracker::new(&[exec_check("web", 1, 1)], Duration::from_secs(60));
        let long = CheckResult {
            detail: "é".repeat(300),
            ..result("web", true)
        };
        let _ = tracker.record(&long, at(0));
        let last = tracker.statuses(at(0))[0]
            .last_result
            .clone()
            .expect("kept");
        assert_eq!(last.len(), MAX_RESULT_LEN);
        assert_eq!(last, "é".repeat(128));
    }
}
