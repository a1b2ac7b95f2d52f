//! What the admin API and `clustd status` show: a snapshot the runtime keeps up to date.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use clustd_core::message::{CheckReport, DriverReport, Report};

use crate::health::CheckStatus;

fn yes() -> bool {
    true
}

/// How many role changes the history keeps.
pub const HISTORY_LEN: usize = 32;

/// How many election steps [`Status::elections`] keeps: a campaign is up to six.
pub const ELECTION_STEPS_LEN: usize = 32;

/// The node as the admin API reports it (`GET /status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// This node's id.
    pub node_id: String,
    /// `master` or `backup`: what drivers act on.
    pub role: String,
    /// Protocol role: `leader`, `follower`, `pre-candidate`, `candidate`.
    pub protocol_role: String,
    /// Current term (fencing token).
    pub term: u64,
    /// The known leader.
    pub leader: Option<String>,
    /// While master: milliseconds of lease left.
    pub lease_remaining_ms: Option<u64>,
    /// Maintenance mode.
    pub maintenance: bool,
    /// Witness node (votes, never leads).
    pub witness: bool,
    /// Every check passes (`[[check]]`s, driver-reported checks, no recent failed start).
    #[serde(default = "yes")]
    pub healthy: bool,
    /// May become master: healthy, not in maintenance, not a witness.
    #[serde(default = "yes")]
    pub eligible: bool,
    /// Why not eligible, e.g. `unhealthy: check web failed 3 times in a row: exit status 1`.
    #[serde(default)]
    pub ineligible_reason: Option<String>,
    /// Master and unhealthy with no healthy peer reachable: staying master (`health.alone`).
    #[serde(default)]
    pub unhealthy_alone: bool,
    /// While mastership may not move for health (`health.min_master_ms` after the
    /// cluster's last health hand-over): milliseconds left.
    #[serde(default)]
    pub health_hold_ms: Option<u64>,
    /// Every check, configured and driver-reported, and `start` after a failed start.
    #[serde(default)]
    pub checks: Vec<CheckStatus>,
    /// `quic` or `websocket`.
    pub transport: String,
    /// Cluster listen address.
    pub listen: String,
    /// The other voters.
    pub peers: Vec<PeerStatus>,
    /// Drivers connected now, and disconnected ones that may still run the service or
    /// whose last stop failed: at most [`crate::runtime::MAX_REMEMBERED_DRIVERS`].
    pub drivers: Vec<DriverStatus>,
    /// How many drivers are connected (at most [`crate::runtime::MAX_CONNECTED_DRIVERS`]).
    #[serde(default)]
    pub drivers_connected: usize,
    /// How long a step-down would wait now for drivers that may still run the service
    /// (told "master", no `Ok` stop since), at most: their latest lease end plus the stop
    /// budget, in milliseconds; 0 when none may run.
    #[serde(default)]
    pub drivers_may_run_for_ms: u64,
    /// Driver connections refused because the connected-driver cap was reached.
    #[serde(default)]
    pub drivers_refused: u64,
    /// While the state cannot be written (a transient failure, being retried): the error.
    /// The node sends nothing meanwhile, so it votes for nobody.
    #[serde(default)]
    pub state_write_error: Option<String>,
    /// Transient state write failures since start.
    #[serde(default)]
    pub state_write_failures: u64,
    /// The last `[fence]` run, if any since start.
    #[serde(default)]
    pub last_fence: Option<FenceStatus>,
    /// `[fence]` runs since start.
    #[serde(default)]
    pub fences: u64,
    /// The `[fence] watchdog` device is open (armed): fed while master.
    #[serde(default)]
    pub watchdog_armed: bool,
    /// Recent role changes, oldest first.
    pub history: VecDeque<RoleChange>,
    /// The steps of this node's recent elections, oldest first: where a failover's time
    /// went (`clustd-bench failover` prints them as its breakdown).
    #[serde(default)]
    pub elections: VecDeque<ElectionStep>,
    /// Elections this node started.
    pub elections_started: u64,
    /// Elections this node won.
    pub elections_won: u64,
    /// Leader changes seen.
    pub leader_changes: u64,
    /// While leader: the eligible followers that answered within `ET_min`, best first —
    /// whom a step-down would hand over to now.
    #[serde(default)]
    pub successors: Vec<String>,
    /// The longest a hand-over may take with these settings (last lease + stop budget at
    /// the drift bound + an election), in milliseconds: how long a step-down waits for
    /// the new master.
    #[serde(default)]
    pub handover_max_ms: u64,
    /// Two processes claim one node id (this one's or a peer's), as last detected: what
    /// the ERROR said.
    #[serde(default)]
    pub duplicate_id: Option<String>,
    /// `election.priority`.
    #[serde(default)]
    pub priority: u8,
    /// `election.preempt`.
    #[serde(default)]
    pub preempt: bool,
}

/// One peer daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    /// Node id.
    pub id: String,
    /// Configured address.
    pub addr: String,
    /// An authenticated connection exists.
    pub connected: bool,
    /// Milliseconds since the last message from it, if any.
    pub last_heard_ms_ago: Option<u64>,
    /// As its latest acknowledgement said (shown by the leader only): whether it may
    /// become master.
    #[serde(default)]
    pub eligible: Option<bool>,
}

/// One driver.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DriverStatus {
    /// Driver id.
    pub id: String,
    /// Connected now.
    pub connected: bool,
    /// Role last sent to it.
    pub last_role: Option<String>,
    /// Result of its last acknowledged action: `ok`, `failed: ...`, `timed-out`, or none yet.
    pub last_result: Option<String>,
    /// Whether the last role sent has been acknowledged.
    pub acknowledged: bool,
    /// Whether it may be running the service now: told "master", no `Ok` stop since, and
    /// not yet past its last lease end plus the stop budget.
    #[serde(default)]
    pub may_run: bool,
    /// Its latest stop failed or timed out (cleared by a later `Ok` stop): the service may
    /// still run there until its lease end plus the stop budget.
    #[serde(default)]
    pub stop_failed: bool,
    /// The last failed or timed-out stop, e.g. `term 7: failed: exit status 1`.
    #[serde(default)]
    pub last_stop_failure: Option<String>,
    /// Connected and silent past `health.driver_timeout_ms` (frozen, wedged): e.g.
    /// `not responding for 1.2 s`. The node is unhealthy meanwhile.
    #[serde(default)]
    pub not_responding: Option<String>,
}

/// One role change in the history.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RoleChange {
    /// Unix time in milliseconds.
    pub at_unix_ms: u64,
    /// `master` or `backup`.
    pub role: String,
    /// The term of the role: the fencing token a service can compare.
    pub term: u64,
    /// Why (`elected`, `lease-expired`, `stepped-down`, ...).
    pub reason: String,
}

/// One step of an election this node ran, as its runtime saw it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ElectionStep {
    /// What happened.
    pub step: ElectionStepKind,
    /// The term campaigned in (for [`ElectionStepKind::TimerFired`]: the term a won
    /// pre-vote campaigns in).
    pub term: u64,
    /// The machine's `CLOCK_MONOTONIC`, in nanoseconds: one clock for every process on
    /// the machine, the one the service records and driver leases use.
    pub at_mono_ns: u64,
    /// Unix time in milliseconds, for people.
    pub at_unix_ms: u64,
}

/// The steps of an election, in the order a won one takes them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ElectionStepKind {
    /// The election timer fired (no leader heard for the timeout): asking for pre-votes.
    TimerFired,
    /// A majority granted the pre-vote (or a hand-over said "campaign now"): the new term
    /// and its own vote go to disk.
    Campaign,
    /// The new term and vote are written and fsynced: the vote requests go out.
    Persisted,
    /// A majority voted for it: leader, sending its first heartbeat round.
    VoteQuorum,
    /// A majority acknowledged a heartbeat round: master, under a lease.
    Master,
    /// The first driver was sent "master" in this term.
    DriversTold,
    /// A step a newer daemon records and this reader does not know.
    #[serde(other)]
    Other,
}

impl Status {
    /// Its drivers as a [`Report`] and the cluster view list them: the connected ones, and
    /// those that may still run the service or whose stop failed.
    pub fn driver_lines(&self) -> impl Iterator<Item = DriverReport> + '_ {
        self.drivers
            .iter()
            .filter(|d| d.connected || d.may_run || d.stop_failed)
            .map(|d| DriverReport {
                id: d.id.clone(),
                connected: d.connected,
                role: d.last_role.clone().unwrap_or_default(),
                last_result: d.last_result.clone().unwrap_or_default(),
                may_run: d.may_run,
                stop_failed: d.stop_failed,
            })
    }

    /// Its checks as a [`Report`] and the cluster view list them.
    pub fn check_lines(&self) -> impl Iterator<Item = CheckReport> + '_ {
        self.checks.iter().map(|c| CheckReport {
            name: c.name.clone(),
            healthy: c.healthy,
            last_result: c.last_result.clone().unwrap_or_default(),
        })
    }

    /// Appends to the history, keeping the last [`HISTORY_LEN`].
    pub fn record(&mut self, change: RoleChange) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(change);
    }

    /// Appends to [`Status::elections`], keeping the last [`ELECTION_STEPS_LEN`].
    pub fn record_step(&mut self, step: ElectionStep) {
        if self.elections.len() == ELECTION_STEPS_LEN {
            self.elections.pop_front();
        }
        self.elections.push_back(step);
    }

    /// A human-readable table, as `clustd status` prints it.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let lease = self
            .lease_remaining_ms
            .map(|ms| format!(", lease {}", human_ms(ms)))
            .unwrap_or_default();
        let flags = match (self.maintenance, self.witness) {
            (true, _) => " [maintenance]",
            (_, true) => " [witness]",
            _ => "",
        };
        let _ = writeln!(
            out,
            "node {} is {} ({}), term {}, leader {}{}{}",
            self.node_id,
            self.role.to_uppercase(),
            self.protocol_role,
            self.term,
            self.leader.as_deref().unwrap_or("-"),
            lease,
            flags
        );
        let _ = writeln!(out, "transport {} on {}", self.transport, self.listen);
        match (&self.ineligible_reason, self.healthy) {
            (None, _) => {
                let _ = writeln!(out, "eligible to be master (every check passes)");
            }
            (Some(why), true) => {
                let _ = writeln!(out, "not eligible to be master: {why}");
            }
            (Some(why), false) => {
                let _ = writeln!(out, "!! NOT ELIGIBLE to be master: {why}");
            }
        }
        if let Some(problem) = &self.duplicate_id {
            let _ = writeln!(out, "!! DUPLICATE NODE ID: {problem}");
        }
        if self.role == "master" && self.drivers_connected == 0 {
            let _ = writeln!(
                out,
                "!! MASTER WITH NO DRIVER ATTACHED: nothing runs the service (start a driver on this node)"
            );
        }
        if self.unhealthy_alone {
            let _ = writeln!(
                out,
                "!! UNHEALTHY MASTER with no healthy peer reachable: staying master (health.alone)"
            );
        }
        if let Some(ms) = self.health_hold_ms {
            let _ = writeln!(
                out,
                "mastership is not moved for health for {} more (health.min_master_ms)",
                human_ms(ms)
            );
        }
        if let Some(error) = &self.state_write_error {
            let _ = writeln!(
                out,
                "!! CANNOT WRITE STATE ({error}): sending nothing, votes withheld, retrying"
            );
        }
        if self.drivers_refused > 0 {
            let _ = writeln!(
                out,
                "{} driver connection(s) refused (cap of connected drivers reached)",
                self.drivers_refused
            );
        }
        let _ = writeln!(
            out,
            "\n{:<20} {:<24} {:<10} {:<9} LAST HEARD",
            "PEER", "ADDRESS", "CONNECTED", "ELIGIBLE"
        );
        for p in &self.peers {
            let heard = p
                .last_heard_ms_ago
                .map_or("never".to_string(), |ms| format!("{} ago", human_ms(ms)));
            let _ = writeln!(
                out,
                "{:<20} {:<24} {:<10} {:<9} {}",
                p.id,
                p.addr,
                if p.connected { "yes" } else { "no" },
                match p.eligible {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "-",
                },
                heard
            );
        }
        if !self.checks.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<24} {:<7} {:<10} {:<9} {:<9} LAST RESULT",
                "CHECK", "KIND", "STATE", "FAILS", "TOOK"
            );
            for c in &self.checks {
                let state = match (c.healthy, c.runs_total) {
                    (_, 0) => "not run",
                    (true, _) => "healthy",
                    (false, _) => "UNHEALTHY",
                };
                let took = c.last_duration_ms.map_or("-".to_string(), human_ms);
                let mut last = c.last_result.clone().unwrap_or_else(|| "-".into());
                if let Some(ms) = c.last_run_ms_ago {
                    last = format!("{last} ({} ago)", human_ms(ms));
                }
                if let Some(ms) = c.clears_in_ms {
                    last = format!("{last}; counts for {} more", human_ms(ms));
                }
                let _ = writeln!(
                    out,
                    "{:<24} {:<7} {:<10} {:<9} {:<9} {}",
                    c.name,
                    c.kind.as_str(),
                    state,
                    format!("{}/{}", c.consecutive_failures, c.fall),
                    took,
                    last
                );
            }
        }
        if let Some(f) = &self.last_fence {
            let _ = writeln!(
                out,
                "\nFENCE: {} run(s); last for {} at {}: {} ({} ms){}",
                self.fences,
                f.drivers.join(", "),
                format_unix_ms(f.at_unix_ms),
                f.result,
                f.elapsed_ms,
                if f.result == "ok" {
                    ""
                } else {
                    "  !! the service may still run on this node"
                }
            );
        }
        if !self.drivers.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<28} {:<10} {:<8} LAST RESULT",
                "DRIVER", "CONNECTED", "ROLE"
            );
            for d in &self.drivers {
                let mut result = match (&d.last_result, d.acknowledged) {
                    (Some(r), true) => r.clone(),
                    (Some(r), false) => format!("{r} (waiting for the latest)"),
                    (None, _) => "-".into(),
                };
                if d.stop_failed {
                    let _ = write!(
                        result,
                        "  !! STOP FAILED ({}): the service may still run{}",
                        d.last_stop_failure.as_deref().unwrap_or("?"),
                        if d.may_run {
                            " until its lease end + stop budget"
                        } else {
                            ""
                        }
                    );
                } else if d.may_run && d.last_role.as_deref() == Some("backup") {
                    result.push_str(
                        "  (may still run until its stop is confirmed or its lease ends)",
                    );
                }
                if let Some(silent) = &d.not_responding {
                    let _ = write!(result, "  !! {}", silent.to_uppercase());
                }
                let _ = writeln!(
                    out,
                    "{:<28} {:<10} {:<8} {}",
                    d.id,
                    if d.connected { "yes" } else { "no" },
                    d.last_role.as_deref().unwrap_or("-"),
                    result
                );
            }
        }
        if !self.history.is_empty() {
            let _ = writeln!(out, "\nRECENT ROLE CHANGES");
            for h in self.history.iter().rev().take(10) {
                let _ = writeln!(
                    out,
                    "  {}  {:<7} term {:<5} {}",
                    format_unix_ms(h.at_unix_ms),
                    h.role,
                    h.term,
                    h.reason
                );
            }
        }
        let _ = writeln!(
            out,
            "\nelections started {}, won {}; leader changes {}",
            self.elections_started, self.elections_won, self.leader_changes
        );
        out
    }
}

/// `HH:MM:SS.mmm` UTC, for compact human output.
pub fn format_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring keeps the latest steps; a step this build does not know still parses (a
    /// newer daemon's status stays readable).
    #[test]
    fn election_steps_keep_the_latest_and_read_unknown_ones() {
        let mut status = Status::default();
        for term in 0..40 {
            status.record_step(ElectionStep {
                step: ElectionStepKind::Campaign,
                term,
                at_mono_ns: term,
                at_unix_ms: 0,
            });
        }
        assert_eq!(status.elections.len(), ELECTION_STEPS_LEN);
        assert_eq!(status.elections.front().map(|s| s.term), Some(8));
        let step: ElectionStep = serde_json::from_str(
            r#"{"step":"pre-vote-quorum","term":3,"at_mono_ns":1,"at_unix_ms":2}"#,
        )
        .expect("parses");
        assert_eq!(step.step, ElectionStepKind::Other);
        let json = serde_json::to_string(&ElectionStepKind::VoteQuorum).expect("serializes");
        assert_eq!(json, r#""vote-quorum""#);
    }

    fn driver(stop_failed: bool, may_run: bool) -> DriverStatus {
        DriverStatus {
            id: "shell-a".into(),
            connected: true,
            last_role: Some("backup".into()),
            last_result: Some(if stop_failed { "failed: exit 1" } else { "ok" }.into()),
            acknowledged: true,
            may_run,
            stop_failed,
            last_stop_failure: stop_failed.then(|| "term 7: failed: exit 1".into()),
            not_responding: None,
        }
    }

    /// A failed stop is the line an operator must not miss; a clean one says nothing more.
    #[test]
    fn a_failed_stop_is_loud_in_the_status_table() {
        let cases = [
            (
                true,
                true,
                Some("STOP FAILED (term 7: failed: exit 1)"),
                "lease end",
            ),
            (true, false, Some("STOP FAILED"), "may still run"),
            (
                false,
                true,
                None,
                "may still run until its stop is confirmed",
            ),
            (false, false, None, "ok"),
        ];
        for (stop_failed, may_run, loud, text) in cases {
            let status = Status {
                drivers: vec![driver(stop_failed, may_run)],
                ..Status::default()
            };
            let out = status.render();
            assert_eq!(out.contains("STOP FAILED"), loud.is_some(), "{out}");
            if let Some(loud) = loud {
                assert!(out.contains(loud), "{out}");
            }
            assert!(out.contains(text), "{out}");
        }
    }

    #[test]
    fn an_unhealthy_node_says_why_and_shows_each_check() {
        use crate::health::CheckType;
        let status = Status {
            healthy: false,
            eligible: false,
            ineligible_reason: Some(
                "unhealthy: check web failed 3 times in a row: exit status 7".into(),
            ),
            checks: vec![CheckStatus {
                name: "web".into(),
                kind: CheckType::Exec,
                healthy: false,
                consecutive_failures: 3,
                consecutive_successes: 0,
                fall: 3,
                rise: 2,
                failures_total: 4,
                runs_total: 9,
                last_result: Some("exit status 7: connection refused".into()),
                last_duration_ms: Some(12),
                last_run_ms_ago: Some(150),
                clears_in_ms: None,
            }],
            ..Status::default()
        };
        let out = status.render();
        assert!(
            out.contains("!! NOT ELIGIBLE to be master: unhealthy: check web failed 3 times"),
            "{out}"
        );
        let row = out
            .lines()
            .find(|l| l.starts_with("web "))
            .expect("a row for the check");
        for part in [
            "exec",
            "UNHEALTHY",
            "3/3",
            "12 ms",
            "connection refused",
            "150 ms ago",
        ] {
            assert!(row.contains(part), "{part:?} missing from {row:?}");
        }
        let healthy = Status {
            healthy: true,
            eligible: true,
            ..Status::default()
        };
        assert!(
            healthy
                .render()
                .contains("eligible to be master (every check passes)")
        );
    }

    #[test]
    fn old_status_json_without_the_health_fields_reads_as_healthy() {
        let mut json = serde_json::to_value(Status::default()).expect("serializes");
        let map = json.as_object_mut().expect("object");
        for key in [
            "healthy",
            "eligible",
            "ineligible_reason",
            "checks",
            "health_hold_ms",
            "unhealthy_alone",
        ] {
            map.remove(key);
        }
        let status: Status = serde_json::from_value(json).expect("parses");
        assert!(status.healthy && status.eligible && status.checks.is_empty());
    }

    #[test]
    fn old_status_json_without_the_new_driver_fields_still_parses() {
        let json = r#"{"id":"d","connected":true,"last_role":null,"last_result":null,"acknowledged":false}"#;
        let d: DriverStatus = serde_json::from_str(json).expect("parses");
        assert!(!d.stop_failed && !d.may_run && d.last_stop_failure.is_none());
    }
}

/// One run of the `[fence]` command.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FenceStatus {
    /// When it started (Unix ms, the node's wall clock).
    pub at_unix_ms: u64,
    /// The drivers that had not confirmed their stop by their lease end.
    pub drivers: Vec<String>,
    /// `ok`, `failed: exit status 3`, `timed-out`, ...
    pub result: String,
    /// How long it ran.
    pub elapsed_ms: u64,
}

/// [`human_duration`] of milliseconds.
pub fn human_ms(ms: u64) -> String {
    human_duration(std::time::Duration::from_millis(ms))
}

/// A duration for people: `850 ms`, `1.2 s`, `3 m 20 s`, `2 h 5 m`.
pub fn human_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    match () {
        () if ms < 1000 => format!("{ms} ms"),
        () if s < 60 => format!("{:.1} s", d.as_secs_f64()),
        () if s < 3600 => format!("{} m {} s", s / 60, s % 60),
        () => format!("{} h {} m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod human_tests {
    #[test]
    fn durations_read_like_a_person_would_say_them() {
        use std::time::Duration;
        for (ms, text) in [
            (850, "850 ms"),
            (1_200, "1.2 s"),
            (200_000, "3 m 20 s"),
            (7_500_000, "2 h 5 m"),
        ] {
            assert_eq!(super::human_duration(Duration::from_millis(ms)), text);
        }
    }
}

/// The whole cluster as one node knows it (`GET /cluster`, `clustd status --all`): its own
/// status and what each peer last said about itself (`Message::Report`, carried through the
/// cluster, about once a second), marked when not heard from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterView {
    /// The node that answered.
    pub from: String,
    /// The master, when exactly one node is master by what is known.
    pub master: Option<String>,
    /// Every node, this one first, then the peers in id order.
    pub nodes: Vec<NodeView>,
    /// What an operator should look at, one line each (empty when all is well).
    pub warnings: Vec<String>,
}

/// One node in a [`ClusterView`]. The fields from its report are `None` when nothing
/// was heard from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Cluster address.
    pub addr: String,
    /// The node that answered.
    pub this_node: bool,
    /// An authenticated connection to it exists (always true for this node).
    pub connected: bool,
    /// Its report is current: connected and heard within the staleness bound.
    pub heard: bool,
    /// Milliseconds since anything was heard from it (`None`: never, since this node started).
    pub last_heard_ms_ago: Option<u64>,
    /// Milliseconds since its last report.
    pub report_age_ms: Option<u64>,
    /// `master`, `backup`, or `unknown` (not heard from, or it said master and that lease
    /// has run out since).
    pub role: String,
    /// `leader`, `follower`, `pre-candidate`, `candidate`.
    pub protocol_role: Option<String>,
    /// Its term.
    pub term: Option<u64>,
    /// The leader it knows.
    pub leader: Option<String>,
    /// While master: lease left now (its report's value less the report's age).
    pub lease_remaining_ms: Option<u64>,
    /// Every check passes.
    pub healthy: Option<bool>,
    /// May become master.
    pub eligible: Option<bool>,
    /// Why not.
    pub ineligible_reason: Option<String>,
    /// Maintenance mode.
    pub maintenance: Option<bool>,
    /// A witness.
    pub witness: Option<bool>,
    /// Its election priority.
    pub priority: Option<u8>,
    /// Whether it preempts a master of lower priority.
    pub preempt: Option<bool>,
    /// Its drivers (connected, or that may still run the service).
    pub drivers: Vec<DriverReport>,
    /// Its checks.
    pub checks: Vec<CheckReport>,
}

fn ms_u64(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl NodeView {
    /// Its drivers in one line: `shell-a master: ok; vip backup: ok (gone)`, or `-`.
    pub fn drivers_text(&self) -> String {
        if self.drivers.is_empty() {
            return "-".into();
        }
        self.drivers
            .iter()
            .map(|d| {
                let role = if d.role.is_empty() { "-" } else { &d.role };
                let result = if d.last_result.is_empty() {
                    "-"
                } else {
                    &d.last_result
                };
                let flag = match (d.connected, d.stop_failed) {
                    (_, true) => " STOP FAILED",
                    (false, _) => " (gone)",
                    _ => "",
                };
                format!("{} {role}: {result}{flag}", d.id)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// This node, from its own status.
    pub fn of_self(status: &Status) -> Self {
        Self {
            id: status.node_id.clone(),
            addr: status.listen.clone(),
            this_node: true,
            connected: true,
            heard: true,
            last_heard_ms_ago: Some(0),
            report_age_ms: Some(0),
            role: status.role.clone(),
            protocol_role: Some(status.protocol_role.clone()),
            term: Some(status.term),
            leader: status.leader.clone(),
            lease_remaining_ms: status.lease_remaining_ms,
            healthy: Some(status.healthy),
            eligible: Some(status.eligible),
            ineligible_reason: status.ineligible_reason.clone(),
            maintenance: Some(status.maintenance),
            witness: Some(status.witness),
            priority: Some(status.priority),
            preempt: Some(status.preempt),
            drivers: status.driver_lines().collect(),
            checks: status.check_lines().collect(),
        }
    }

    /// A peer, from what this node knows: whether it is connected, when it was last heard
    /// from, its last report (age, term, report), and whether this node follows it as
    /// leader now. A report older than `stale_after`, or from a peer not connected now, is
    /// shown but not believed (`heard` false, role `unknown`). A report that said master
    /// counts while the lease it gave has not run out since, or while this node follows
    /// that peer (its heartbeats say it still leads).
    pub fn of_peer(
        id: &str,
        addr: &str,
        connected: bool,
        last_heard: Option<std::time::Duration>,
        report: Option<(std::time::Duration, clustd_core::Term, &Report)>,
        stale_after: std::time::Duration,
        followed: bool,
    ) -> Self {
        let mut view = Self {
            id: id.to_owned(),
            addr: addr.to_owned(),
            connected,
            last_heard_ms_ago: last_heard.map(ms_u64),
            role: "unknown".into(),
            ..Self::default()
        };
        let Some((age, term, r)) = report else {
            return view;
        };
        let lease_left = u64::from(r.lease_remaining_ms).saturating_sub(ms_u64(age));
        view.heard = connected && age <= stale_after;
        view.report_age_ms = Some(ms_u64(age));
        view.role = match (view.heard, r.master) {
            (true, true) if lease_left > 0 || followed => "master",
            (true, false) => "backup",
            _ => "unknown",
        }
        .into();
        view.protocol_role = Some(r.protocol_role.clone());
        view.term = Some(term.0);
        view.leader = r.leader.as_ref().map(ToString::to_string);
        view.lease_remaining_ms = (r.master && lease_left > 0).then_some(lease_left);
        view.healthy = Some(r.healthy);
        view.eligible = Some(r.eligible);
        view.ineligible_reason =
            (!r.ineligible_reason.is_empty()).then(|| r.ineligible_reason.clone());
        view.maintenance = Some(r.maintenance);
        view.witness = Some(r.witness);
        view.priority = Some(r.priority);
        view.preempt = Some(r.preempt);
        view.drivers = r.drivers.clone();
        view.checks = r.checks.clone();
        view
    }
}

impl ClusterView {
    /// The view from node `from`, with its master and warnings worked out.
    pub fn new(from: &str, nodes: Vec<NodeView>) -> Self {
        let masters: Vec<&NodeView> = nodes.iter().filter(|n| n.role == "master").collect();
        let mut warnings = Vec::new();
        match masters.as_slice() {
            [] => warnings.push("no master: no node is master now".to_owned()),
            [_] => {}
            many => warnings.push(format!(
                "!! more than one node says it is master: {}",
                many.iter()
                    .map(|n| format!("{} (term {})", n.id, n.term.unwrap_or(0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        for m in &masters {
            if !m.drivers.iter().any(|d| d.connected) {
                warnings.push(format!(
                    "{} is master but no driver is attached: nothing runs the service",
                    m.id
                ));
            }
        }
        let heard: Vec<&NodeView> = nodes.iter().filter(|n| n.heard).collect();
        if !heard.iter().any(|n| n.eligible == Some(true)) {
            warnings.push("no node heard from is eligible to be master".to_owned());
        }
        for n in nodes.iter().filter(|n| !n.heard) {
            warnings.push(match n.last_heard_ms_ago {
                Some(ms) => format!("{} not heard from for {}", n.id, human_ms(ms)),
                None => format!("{} never heard from (since {from} started)", n.id),
            });
        }
        let master = match masters.as_slice() {
            [m] => Some(m.id.clone()),
            _ => None,
        };
        Self {
            from: from.to_owned(),
            master,
            nodes,
            warnings,
        }
    }

    /// The table `clustd status --all` prints.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cluster as {} sees it: master {}",
            self.from,
            self.master.as_deref().unwrap_or("NONE")
        );
        let _ = writeln!(
            out,
            "\n{:<16} {:<8} {:<6} {:<16} {:<9} {:<10} {:<12} DRIVERS",
            "NODE", "ROLE", "TERM", "LEADER", "LEASE", "HEALTH", "HEARD"
        );
        for n in &self.nodes {
            let id = if n.this_node {
                format!("{} *", n.id)
            } else {
                n.id.clone()
            };
            let health = match (n.maintenance, n.eligible, n.healthy, n.witness) {
                (None, ..) => "-",
                (Some(true), ..) => "maint",
                (_, _, _, Some(true)) => "witness",
                (_, _, Some(false), _) => "UNHEALTHY",
                (_, Some(false), ..) => "inelig.",
                _ => "healthy",
            };
            let heard = match (n.this_node, n.heard, n.last_heard_ms_ago) {
                (true, ..) => "this node".to_owned(),
                (false, true, Some(ms)) => format!("{} ago", human_ms(ms)),
                (false, false, Some(ms)) => format!("NOT {}", human_ms(ms)),
                (false, _, None) => "NEVER".to_owned(),
            };
            let drivers = n.drivers_text();
            let _ = writeln!(
                out,
                "{:<16} {:<8} {:<6} {:<16} {:<9} {:<10} {:<12} {}",
                id,
                if n.role == "master" {
                    "MASTER".to_owned()
                } else {
                    n.role.clone()
                },
                n.term.map_or("-".to_owned(), |t| t.to_string()),
                n.leader.as_deref().unwrap_or("-"),
                n.lease_remaining_ms.map_or("-".to_owned(), human_ms),
                health,
                heard,
                drivers
            );
            if let Some(why) = &n.ineligible_reason {
                let _ = writeln!(out, "{:<16} not eligible: {why}", "");
            }
        }
        for w in &self.warnings {
            let _ = writeln!(out, "!! {w}");
        }
        out
    }
}
