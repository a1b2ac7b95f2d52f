//! The bench's verdict on "never two masters": the daemons' service records fed to the one
//! checker, [`ServiceChecker`].
//!
//! Every daemon logs what it sends its drivers and hears back on tracing target
//! [`SERVICE_LOG_TARGET`] (JSON lines with `--log-format json`), with its instants as
//! readings of the machine's `CLOCK_MONOTONIC`. All the bench's processes share the
//! machine, so those readings are one global time: the records of every node and every
//! incarnation (a killed daemon's log ends, its successor appends) are merged, sorted by
//! that time, and fed to the checker together with the bench's own SIGKILLs.
//!
//! The checker proves only what it is fed, so a record it cannot read, or a run in which no
//! driver was ever told "master", is a violation rather than a silent pass.

use std::collections::BTreeMap;
use std::time::Duration;

use clustd_core::check::{ServiceChecker, ServiceInput};
use clustd_core::{NodeId, Term};
use serde_json::Value;

use clustd::runtime::SERVICE_LOG_TARGET;

/// One input of the checker, at a `CLOCK_MONOTONIC` reading.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    at: Duration,
    node: NodeId,
    input: ServiceInput,
}

/// The service records of a whole bench run, and the crashes the bench caused.
#[derive(Debug, Default)]
pub struct ServiceLog {
    events: Vec<Event>,
    /// Records that could not be read: each one is a violation (the verdict is incomplete).
    unreadable: Vec<String>,
}

impl ServiceLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every service record of one daemon log (`source` names it in errors). Lines of
    /// other targets, and lines that are not JSON (a panic message), are skipped; a line
    /// that looks like a service record (it names the target, or has a `record` field: a
    /// line cut short) but cannot be read is kept as a violation.
    pub fn add_log(&mut self, source: &str, text: &str) {
        let quoted_target = format!("\"{SERVICE_LOG_TARGET}\"");
        for (number, line) in text.lines().enumerate() {
            if !line.contains(&quoted_target) && !line.contains("\"record\":\"") {
                continue;
            }
            match parse_line(line) {
                Ok(Some(event)) => self.events.push(event),
                Ok(None) => {}
                Err(why) => self.unreadable.push(format!(
                    "unreadable service record at {source}:{}: {why}: {line}",
                    number + 1
                )),
            }
        }
    }

    /// The bench SIGKILLed `node`'s daemon at `at` (a `CLOCK_MONOTONIC` reading taken once
    /// the process was gone, so every record it logged lies before).
    pub fn crashed(&mut self, at: Duration, node: NodeId) {
        self.events.push(Event {
            at,
            node,
            input: ServiceInput::Crashed,
        });
    }

    /// Feeds everything, in time order, to a fresh checker and returns it. `stop_budget`
    /// holds each node's `election.stop_budget` (the machine has one clock: no drift).
    pub fn check(&self, stop_budget: &BTreeMap<NodeId, Duration>) -> ServiceChecker {
        let mut checker = ServiceChecker::new();
        for text in &self.unreadable {
            checker.violation(text.clone());
        }
        let mut events: Vec<&Event> = self.events.iter().collect();
        // Stable: one daemon's records keep their log order when they share an instant, and
        // a crash (added after the logs) follows the records stamped at its instant.
        events.sort_by_key(|e| e.at);
        let mut told_master = 0usize;
        for e in events {
            // Only a "master" notice uses the stop budget.
            let budget = if matches!(e.input, ServiceInput::ToldMaster { .. }) {
                told_master += 1;
                let Some(budget) = stop_budget.get(&e.node) else {
                    checker.violation(format!(
                        "{} told a driver master, but the bench knows no stop budget for it",
                        e.node
                    ));
                    continue;
                };
                *budget
            } else {
                Duration::ZERO
            };
            checker.feed(e.at, &e.node, &e.input, budget);
        }
        if told_master == 0 {
            checker.violation(format!(
                "no told_master record in the daemons' logs (target {SERVICE_LOG_TARGET}): \
                 the checker saw no service at all, so it proves nothing"
            ));
        }
        checker
    }
}

/// One JSON log line: `Ok(None)` if it is not a service record.
fn parse_line(line: &str) -> Result<Option<Event>, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    if v.get("target").and_then(Value::as_str) != Some(SERVICE_LOG_TARGET) {
        return Ok(None);
    }
    // tracing-subscriber nests the fields unless the event is flattened.
    let fields = v.get("fields").unwrap_or(&v);
    let text = |name: &str| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no string field `{name}`"))
    };
    let number = |name: &str| {
        fields
            .get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("no integer field `{name}`"))
    };
    let id = |name: &str| {
        NodeId::new(text(name)?).map_err(|e| format!("field `{name}` is not a node id: {e}"))
    };
    let nanos = |name: &str| number(name).map(Duration::from_nanos);
    let input = match text("record")? {
        "told_master" => ServiceInput::ToldMaster {
            driver: id("driver")?,
            term: Term(number("term")?),
            lease_end: nanos("lease_until_mono_ns")?,
        },
        "lease_given" => ServiceInput::Lease {
            driver: id("driver")?,
            lease_end: nanos("lease_until_mono_ns")?,
        },
        "stop_confirmed" => ServiceInput::StopConfirmed {
            driver: id("driver")?,
        },
        "stop_failed" => ServiceInput::StopFailed {
            driver: id("driver")?,
        },
        "fenced" => ServiceInput::Fenced {
            driver: id("driver")?,
        },
        other => return Err(format!("unknown record `{other}`")),
    };
    Ok(Some(Event {
        at: nanos("at_mono_ns")?,
        node: id("node")?,
        input,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    /// A log line as `clustd --log-format json` writes it (fields in the daemon's order).
    fn line(record: &str, node: &str, at: u64, lease_until: Option<u64>) -> String {
        let lease =
            lease_until.map_or_else(String::new, |u| format!(r#","lease_until_mono_ns":{u}"#));
        format!(
            r#"{{"timestamp":"2026-01-01T00:00:00.000000Z","level":"INFO","fields":{{"message":"{record} (synthetic)","record":"{record}","node":"{node}","driver":"shell-{node}","term":3,"at_mono_ns":{at}{lease}}},"target":"{SERVICE_LOG_TARGET}"}}"#
        )
    }

    fn budgets() -> BTreeMap<NodeId, Duration> {
        ["node-1", "node-2"]
            .into_iter()
            .map(|n| (id(n), Duration::from_millis(200)))
            .collect()
    }

    /// node-1 is master with a lease renewed to 1.9 s and is SIGKILLed at 1.15 s; node-2's
    /// log (read first: order of the logs must not matter) tells its driver "master" at
    /// `node2_at`. Unrelated lines around the records are skipped.
    fn verdict(node2_at: u64) -> Vec<String> {
        let node1 = [
            r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","fields":{"message":"became MASTER"},"target":"clustd::runtime"}"#.to_string(),
            line("told_master", "node-1", S, Some(S + 800 * MS)),
            line("lease_given", "node-1", S + 100 * MS, Some(S + 900 * MS)),
            "thread 'main' panicked (not JSON)".to_string(),
        ]
        .join("\n");
        let node2 = line("told_master", "node-2", node2_at, Some(node2_at + 800 * MS));
        let mut log = ServiceLog::new();
        log.add_log("node-2.log", &node2);
        log.add_log("node-1.log", &node1);
        log.crashed(Duration::from_nanos(S + 150 * MS), id("node-1"));
        let checker = log.check(&budgets());
        checker.violations().iter().map(|v| v.0.clone()).collect()
    }

    #[test]
    fn a_master_told_before_the_old_lease_plus_budget_is_an_overlap() {
        // The old interval ends at lease 1.9 s + budget 0.2 s = 2.1 s.
        let found = verdict(2 * S);
        assert_eq!(found.len(), 1, "{found:?}");
        let text = &found[0];
        assert!(
            text.contains("node-2 (term 3)") && text.contains("node-1 (term 3)"),
            "{text}"
        );
        assert!(text.contains("lease end 1.9s + stop budget"), "{text}");
        assert!(text.contains("daemon crashed at 1.15s"), "{text}");
    }

    #[test]
    fn a_master_told_after_the_old_lease_plus_budget_is_a_clean_hand_over() {
        assert_eq!(verdict(2 * S + 100 * MS), Vec::<String>::new());
    }

    #[test]
    fn a_confirmed_stop_ends_the_interval_at_once() {
        let text = [
            line("told_master", "node-1", S, Some(S + 800 * MS)),
            line("stop_confirmed", "node-1", S + 200 * MS, None),
            line("told_master", "node-2", S + 201 * MS, Some(2 * S)),
        ]
        .join("\n");
        let mut log = ServiceLog::new();
        log.add_log("all.log", &text);
        let checker = log.check(&budgets());
        assert!(
            checker.violations().is_empty(),
            "{:?}",
            checker.violations()
        );
        assert_eq!(checker.intervals().len(), 2);
    }

    #[test]
    fn a_failed_stop_ends_nothing() {
        let text = [
            line("told_master", "node-1", S, Some(S + 800 * MS)),
            line("stop_failed", "node-1", S + 200 * MS, Some(S + 800 * MS)),
            line("told_master", "node-2", S + 201 * MS, Some(2 * S)),
        ]
        .join("\n");
        let mut log = ServiceLog::new();
        log.add_log("all.log", &text);
        let checker = log.check(&budgets());
        assert_eq!(checker.violations().len(), 1, "{:?}", checker.violations());
        assert_eq!(checker.failed_stops(), 1);
    }

    #[test]
    fn no_service_at_all_proves_nothing() {
        let mut log = ServiceLog::new();
        log.add_log("empty.log", "");
        let found = log.check(&budgets());
        assert_eq!(found.violations().len(), 1);
        assert!(found.violations()[0].0.contains("no told_master record"));
    }

    #[test]
    fn an_unreadable_service_record_is_a_violation() {
        let good = line("told_master", "node-1", S, Some(S + 800 * MS));
        let cut = &good[..good.find("at_mono_ns").expect("a field")];
        let no_lease = line("told_master", "node-2", 3 * S, None);
        let mut log = ServiceLog::new();
        log.add_log("node.log", &[good.as_str(), cut, &no_lease].join("\n"));
        let found: Vec<String> = log
            .check(&budgets())
            .violations()
            .iter()
            .map(|v| v.0.clone())
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("node.log:2: not JSON"), "{}", found[0]);
        assert!(
            found[1].contains("node.log:3: no integer field `lease_until_mono_ns`"),
            "{}",
            found[1]
        );
    }
}
