//! Health reports from a driver to its daemon: the handle a driver reports through
//! ([`HealthReporter`]) and the small book of latest results the engine sends from.
//!
//! A report never waits and never touches the role path: it overwrites its check's latest
//! result in the book and wakes the engine, which sends the results that changed on the
//! current connection, and every check's latest result again on each new connection (the
//! daemon forgets a driver's checks when the driver disconnects, so a daemon that restarted
//! or a link that broke would otherwise not know them until each check reported again).
//! Only the latest result per check is kept, for at most [`MAX_HEALTH_CHECKS`] names, with
//! names and details cut to [`MAX_HEALTH_TEXT`] bytes: a driver that reports faster than
//! the link carries them, or while no daemon is connected, uses bounded memory. Results
//! reported faster than the engine sends them collapse to the latest one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use clustd_core::driver::FromDriver;
use tokio::sync::Notify;

/// Most check names one driver may report; a new name beyond this is refused
/// ([`HealthError::TooManyChecks`]).
pub const MAX_HEALTH_CHECKS: usize = 16;

/// Longest check name and detail sent, in bytes; longer ones are cut at a character boundary.
pub const MAX_HEALTH_TEXT: usize = 256;

/// Why a health report was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The check has no name (empty, or only spaces).
    #[error("a health check needs a name")]
    EmptyName,
    /// `fall` or `rise` is 0: the daemon counts at least one result either way.
    #[error("fall and rise must be at least 1 (got fall = {fall}, rise = {rise})")]
    ZeroThreshold {
        /// The `fall` asked for.
        fall: u32,
        /// The `rise` asked for.
        rise: u32,
    },
    /// [`MAX_HEALTH_CHECKS`] checks are known already and this name is not one of them.
    #[error("at most {MAX_HEALTH_CHECKS} health checks per driver: `{0}` is one too many")]
    TooManyChecks(String),
}

/// One check's latest result, as it goes to the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Latest {
    healthy: bool,
    detail: String,
    fall: u32,
    rise: u32,
    /// Not sent on the current connection yet.
    pending: bool,
}

/// The latest result of each check; pure, so the bounds are tested without a runtime.
#[derive(Debug, Default)]
struct HealthBook {
    checks: BTreeMap<String, Latest>,
}

impl HealthBook {
    fn record(
        &mut self,
        check: &str,
        healthy: bool,
        detail: &str,
        fall: u32,
        rise: u32,
    ) -> Result<(), HealthError> {
        if fall == 0 || rise == 0 {
            return Err(HealthError::ZeroThreshold { fall, rise });
        }
        let check = one_line(check.trim());
        if check.is_empty() {
            return Err(HealthError::EmptyName);
        }
        if !self.checks.contains_key(&check) && self.checks.len() >= MAX_HEALTH_CHECKS {
            return Err(HealthError::TooManyChecks(check));
        }
        self.checks.insert(
            check,
            Latest {
                healthy,
                detail: one_line(detail),
                fall,
                rise,
                pending: true,
            },
        );
        Ok(())
    }

    /// The results not yet sent on the current connection, marked sent.
    fn take_pending(&mut self) -> Vec<FromDriver> {
        self.checks
            .iter_mut()
            .filter(|(_, latest)| latest.pending)
            .map(|(check, latest)| {
                latest.pending = false;
                message(check, latest)
            })
            .collect()
    }

    /// Every check's latest result (for a new connection), all marked sent.
    fn take_all(&mut self) -> Vec<FromDriver> {
        self.checks
            .iter_mut()
            .map(|(check, latest)| {
                latest.pending = false;
                message(check, latest)
            })
            .collect()
    }
}

fn message(check: &str, latest: &Latest) -> FromDriver {
    FromDriver::Health {
        check: check.to_owned(),
        healthy: latest.healthy,
        detail: latest.detail.clone(),
        fall: latest.fall,
        rise: latest.rise,
    }
}

/// `text` on one line (line breaks become spaces), cut to [`MAX_HEALTH_TEXT`] bytes at a
/// character boundary: the daemon shows details in logs and notifications.
fn one_line(text: &str) -> String {
    let mut cut = text.len().min(MAX_HEALTH_TEXT);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].replace(['\n', '\r'], " ")
}

#[derive(Debug, Default)]
struct Shared {
    book: Mutex<HealthBook>,
    /// Woken on every report; holds one permit when nobody waits, so none is lost.
    reported: Notify,
}

/// Reports a driver's health checks to its daemon; cheap to clone, usable from any task.
///
/// Each [`HealthReporter::report`] is one run of a check, counted by the daemon like a
/// `[[check]]` of its own (named `<driver id>/<check>`): `fall` failures in a row make the
/// node unhealthy (not eligible to be master), `rise` successes in a row healthy again.
/// Reporting never blocks: while no daemon is connected the latest result of each check
/// is kept and sent on connect, and after every reconnect the latest results are sent
/// again. A driver gets its session's reporter in [`crate::Driver::on_session_start`];
/// in-process users can also take it from [`crate::DriverSession::health_reporter`].
#[derive(Clone, Debug, Default)]
pub struct HealthReporter {
    shared: Arc<Shared>,
}

impl HealthReporter {
    /// A reporter not yet attached to a session (for tests, or to hand to a driver built
    /// before its session); a session makes its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports one result of `check` that counts at once (`fall` = `rise` = 1): the
    /// driver's own verdict, e.g. "the service answered" or "it did not, because ...".
    pub fn report(&self, check: &str, healthy: bool, detail: &str) -> Result<(), HealthError> {
        self.report_with(check, healthy, detail, 1, 1)
    }

    /// Reports one result of `check`, which the daemon counts with hysteresis: `fall`
    /// failures in a row make the node unhealthy, `rise` successes in a row healthy again.
    /// `check` and `detail` are put on one line and cut to [`MAX_HEALTH_TEXT`] bytes.
    pub fn report_with(
        &self,
        check: &str,
        healthy: bool,
        detail: &str,
        fall: u32,
        rise: u32,
    ) -> Result<(), HealthError> {
        self.book().record(check, healthy, detail, fall, rise)?;
        self.shared.reported.notify_one();
        Ok(())
    }

    /// Waits until something was reported since the last wait (cancel-safe).
    pub(crate) async fn reported(&self) {
        self.shared.reported.notified().await;
    }

    /// Results not yet sent on the current connection.
    pub(crate) fn take_pending(&self) -> Vec<FromDriver> {
        self.book().take_pending()
    }

    /// Every check's latest result, for a new connection.
    pub(crate) fn take_all(&self) -> Vec<FromDriver> {
        self.book().take_all()
    }

    fn book(&self) -> MutexGuard<'_, HealthBook> {
        // Nothing panics while holding the lock; a poisoned book is still consistent.
        self.shared
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(messages: &[FromDriver]) -> Vec<(String, bool)> {
        messages
            .iter()
            .map(|m| match m {
                FromDriver::Health { check, healthy, .. } => (check.clone(), *healthy),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn only_the_latest_result_per_check_is_kept_and_everything_is_resent_on_demand() {
        let mut book = HealthBook::default();
        book.record("web", false, "down", 3, 2).expect("ok");
        book.record("web", true, "up", 3, 2).expect("ok");
        book.record("db", true, "", 1, 1).expect("ok");
        assert_eq!(
            checks(&book.take_pending()),
            [("db".into(), true), ("web".into(), true)]
        );
        assert!(book.take_pending().is_empty(), "sent once");
        book.record("db", false, "gone", 1, 1).expect("ok");
        assert_eq!(checks(&book.take_pending()), [("db".into(), false)]);
        assert_eq!(
            checks(&book.take_all()),
            [("db".into(), false), ("web".into(), true)]
        );
        assert!(book.take_pending().is_empty());
    }

    #[test]
    fn names_are_bounded_in_number_and_text_in_length() {
        let mut book = HealthBook::default();
        for i in 0..MAX_HEALTH_CHECKS {
            book.record(&format!("c{i}"), true, "", 1, 1).expect("room");
        }
        assert_eq!(
            book.record("one-more", true, "", 1, 1),
            Err(HealthError::TooManyChecks("one-more".into()))
        );
        // A known name still reports.
        book.record("c0", false, "", 1, 1).expect("known");
        // 'é' is two bytes: a cut at 256 would split one.
        let long = format!("x{}", "é".repeat(300));
        let mut book = HealthBook::default();
        book.record(&long, false, &format!("{long}\nsecond line"), 1, 1)
            .expect("ok");
        let [FromDriver::Health { check, detail, .. }] = &book.take_all()[..] else {
            panic!("one result");
        };
        assert_eq!(check.len(), 255);
        assert!(long.starts_with(check.as_str()));
        assert_eq!(detail.len(), 255);
        assert!(!detail.contains('\n'));
    }

    #[test]
    fn bad_reports_are_refused() {
        let mut book = HealthBook::default();
        assert_eq!(
            book.record(" ", true, "", 1, 1),
            Err(HealthError::EmptyName)
        );
        assert_eq!(
            book.record("web", true, "", 0, 1),
            Err(HealthError::ZeroThreshold { fall: 0, rise: 1 })
        );
        assert_eq!(
            book.record("web", true, "", 2, 0),
            Err(HealthError::ZeroThreshold { fall: 2, rise: 0 })
        );
        assert!(book.take_all().is_empty());
    }

    #[tokio::test]
    async fn a_report_made_before_anyone_waits_still_wakes_the_engine() {
        let reporter = HealthReporter::new();
        reporter.report("web", true, "ok").expect("ok");
        tokio::time::timeout(std::time::Duration::from_secs(10), reporter.reported())
            .await
            .expect("the permit was kept");
        assert_eq!(checks(&reporter.take_pending()), [("web".into(), true)]);
    }
}
