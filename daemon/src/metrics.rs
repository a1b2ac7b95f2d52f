//! Prometheus metrics (`GET /metrics`), with the prometheus-client crate.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label for per-peer metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// Peer node id.
    pub peer: String,
}

/// Label for driver results.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`, `failed` or `timed_out`.
    pub result: String,
}

/// Label for failed handshakes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `authentication_failed`, `refused`, `evicted`, `timed_out` or `failed`
    /// (see [`crate::rejections::FailureReason`]).
    pub reason: String,
}

/// Label for per-check metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    /// The check's name: a `[[check]]`'s, `start`, or `<driver>/<check>` (at most
    /// [`crate::health::MAX_DRIVER_CHECKS`] of those, so the label set stays bounded).
    pub check: String,
}

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 while master, else 0.
    pub master: Gauge,
    /// Current term.
    pub term: Gauge,
    /// Leader changes seen.
    pub leader_changes: Counter,
    /// Elections started by this node.
    pub elections_started: Counter,
    /// Elections won by this node.
    pub elections_won: Counter,
    /// 1 while the peer is connected.
    pub peer_up: Family<PeerLabel, Gauge>,
    /// Heartbeat round-trip time (leader only), seconds.
    pub heartbeat_rtt: Histogram,
    /// Driver action results.
    pub driver_results: Family<ResultLabel, Counter>,
    /// Stops (acknowledged "backup") that failed or timed out: the service may still run
    /// there until that driver's lease end plus the stop budget. Alert on any increase.
    pub driver_stop_failures: Counter,
    /// Messages from a peer dropped because their term cannot be honest (more than
    /// `MAX_TERM_JUMP` above ours): that peer is compromised or broken. Alert on any.
    pub rejected_messages: Family<PeerLabel, Counter>,
    /// Handshakes that failed (inbound and outbound), by reason. Lower bound under a
    /// flood: the transport drops these events when its queue is full.
    pub handshake_failures: Family<ReasonLabel, Counter>,
    /// Drivers refused because [`crate::runtime::MAX_CONNECTED_DRIVERS`] were connected.
    pub drivers_refused: Counter,
    /// State writes that failed for a transient reason (EMFILE, ENOSPC, ...): the node
    /// sent nothing until a retry made the state durable.
    pub state_write_failures: Counter,
    /// 1 while the check passes (after fall/rise), by check.
    pub check_healthy: Family<CheckLabel, Gauge>,
    /// Failed runs, by check.
    pub check_failures: Family<CheckLabel, Counter>,
    /// 1 while this node may be master: healthy, not in maintenance, not a witness.
    pub eligible: Gauge,
    /// `[fence]` runs (a driver that may run the service did not confirm its stop by its
    /// lease end), by result (`ok`, `failed`, `timed_out`). Alert on any.
    pub fences: Family<ResultLabel, Counter>,
}

impl Metrics {
    /// Registers everything under the `clustd_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("clustd");
        let master = Gauge::default();
        let term = Gauge::default();
        let leader_changes = Counter::default();
        let elections_started = Counter::default();
        let elections_won = Counter::default();
        let peer_up = Family::<PeerLabel, Gauge>::default();
        let heartbeat_rtt = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ]);
        let driver_results = Family::<ResultLabel, Counter>::default();
        let driver_stop_failures = Counter::default();
        let rejected_messages = Family::<PeerLabel, Counter>::default();
        let handshake_failures = Family::<ReasonLabel, Counter>::default();
        let drivers_refused = Counter::default();
        let state_write_failures = Counter::default();
        let check_healthy = Family::<CheckLabel, Gauge>::default();
        let check_failures = Family::<CheckLabel, Counter>::default();
        let eligible = Gauge::default();
        let fences = Family::<ResultLabel, Counter>::default();
        registry.register("master", "1 while this node is master", master.clone());
        registry.register("term", "Current election term", term.clone());
        registry.register(
            "leader_changes",
            "Leader changes seen",
            leader_changes.clone(),
        );
        registry.register(
            "elections_started",
            "Elections started by this node",
            elections_started.clone(),
        );
        registry.register(
            "elections_won",
            "Elections won by this node",
            elections_won.clone(),
        );
        registry.register("peer_up", "1 while the peer is connected", peer_up.clone());
        registry.register(
            "heartbeat_rtt_seconds",
            "Heartbeat round-trip time measured by the leader",
            heartbeat_rtt.clone(),
        );
        registry.register(
            "driver_results",
            "Driver action results",
            driver_results.clone(),
        );
        registry.register(
            "driver_stop_failures",
            "Driver stops that failed or timed out (the service may still run until that driver's lease end plus the stop budget)",
            driver_stop_failures.clone(),
        );
        registry.register(
            "rejected_messages",
            "Peer messages dropped because their term is absurdly far ahead (a compromised or broken peer)",
            rejected_messages.clone(),
        );
        registry.register(
            "handshake_failures",
            "Handshakes that failed or were rejected, by reason (a lower bound under a flood)",
            handshake_failures.clone(),
        );
        registry.register(
            "drivers_refused",
            "Driver connections refused because the connected-driver cap was reached",
            drivers_refused.clone(),
        );
        registry.register(
            "state_write_failures",
            "State writes that failed for a transient reason (the node withheld its messages and retried)",
            state_write_failures.clone(),
        );
        registry.register(
            "check_healthy",
            "1 while the health check passes (after fall/rise)",
            check_healthy.clone(),
        );
        registry.register(
            "check_failures",
            "Failed runs of the health check",
            check_failures.clone(),
        );
        registry.register(
            "eligible",
            "1 while this node may be master (healthy, not in maintenance, not a witness)",
            eligible.clone(),
        );
        registry.register(
            "fences",
            "Fence command runs (a driver did not confirm its stop by its lease end), by result",
            fences.clone(),
        );
        Self {
            registry,
            master,
            term,
            leader_changes,
            elections_started,
            elections_won,
            peer_up,
            heartbeat_rtt,
            driver_results,
            driver_stop_failures,
            rejected_messages,
            handshake_failures,
            drivers_refused,
            state_write_failures,
            check_healthy,
            check_failures,
            eligible,
            fences,
        }
    }

    /// One result of check `name` was counted: `passed` is this run's outcome,
    /// `healthy` the check's state after it (fall/rise applied).
    pub fn check_result(&self, name: &str, passed: bool, healthy: bool) {
        let label = CheckLabel {
            check: name.to_string(),
        };
        self.check_healthy
            .get_or_create(&label)
            .set(i64::from(healthy));
        let failures = self.check_failures.get_or_create(&label);
        if !passed {
            failures.inc();
        }
    }

    /// Check `name` is gone (its driver disconnected): its series are dropped, so the
    /// label set holds only current checks.
    pub fn forget_check(&self, name: &str) {
        let label = CheckLabel {
            check: name.to_string(),
        };
        self.check_healthy.remove(&label);
        self.check_failures.remove(&label);
    }

    /// Sets `clustd_eligible`.
    pub fn set_eligible(&self, eligible: bool) {
        self.eligible.set(i64::from(eligible));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_metrics_follow_results_and_forgotten_checks_go() {
        let metrics = Metrics::new();
        metrics.check_result("web", true, true);
        metrics.check_result("web", false, true);
        metrics.check_result("shell/check", false, false);
        metrics.set_eligible(true);
        let text = metrics.encode();
        for line in [
            "clustd_check_healthy{check=\"web\"} 1",
            "clustd_check_failures_total{check=\"web\"} 1",
            "clustd_check_healthy{check=\"shell/check\"} 0",
            "clustd_eligible 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        metrics.forget_check("shell/check");
        assert!(!metrics.encode().contains("shell/check"));
    }
}
