//! Rejected and failed handshakes, summarized: a flood of garbage handshakes must not turn
//! into a flood of log lines (one per attempt was 31 MB in 10 s). The first rejection after
//! a quiet period is logged at once, with its address and error; the rest of its interval
//! is counted by reason and by source address and logged as one summary line when the
//! interval ends; the next interval starts then, and a quiet interval ends the series.
//! The first of each kind of warning in a series is logged at once (at most one line per
//! [`FailureReason`], however large the flood), so that a node whose secret differs from its
//! peers' says so both as the acceptor ("authentication failed from ADDR: cluster secrets
//! differ, or a stranger") and as the dialer ("... dialing ADDR: it does not accept our
//! cluster secret ..."), whichever came first.
//!
//! Pure (time is passed in), so it is tested here without a clock; the runtime logs what it
//! returns and counts every failure in the `handshake_failures` metric.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clustd_core::Instant;
use clustd_transport::TransportError;

/// How often a series of rejections is summarized.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Source addresses counted one by one; more fall into "others", so a flood from many
/// addresses cannot grow the table.
const MAX_SOURCES: usize = 8;

/// Why a handshake failed, as counted and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureReason {
    /// Wrong secret, or not our protocol (also forged or replayed handshake messages).
    AuthenticationFailed,
    /// We dialed and the remote said it could not authenticate us: it holds another
    /// cluster secret (or its node key is not the one configured for it).
    SecretRefused,
    /// Authenticated, but we refused it or it refused us (unknown id, wrong kind...).
    Refused,
    /// Pushed out of a full admission pool by a newer unauthenticated connection.
    Evicted,
    /// No first message, or no complete handshake, in time.
    TimedOut,
    /// Anything else: closed, reset, I/O, TLS or QUIC errors (routine while peers restart).
    Failed,
}

impl FailureReason {
    /// The reason of a failed handshake.
    pub fn of(error: &TransportError) -> Self {
        use TransportError as E;
        match error {
            E::AuthenticationFailed | E::BadFrame | E::Replay => Self::AuthenticationFailed,
            E::SecretRejected { .. } => Self::SecretRefused,
            E::RefusedRemote { .. } | E::Refused(_) | E::UnexpectedNode { .. } => Self::Refused,
            E::Busy => Self::Evicted,
            E::HandshakeTimeout | E::ConnectTimeout => Self::TimedOut,
            _ => Self::Failed,
        }
    }

    /// The `reason` label of the `handshake_failures` metric.
    pub fn label(self) -> &'static str {
        match self {
            // Both sides of one failure, counted alike (the label set is documented).
            Self::AuthenticationFailed | Self::SecretRefused => "authentication_failed",
            Self::Refused => "refused",
            Self::Evicted => "evicted",
            Self::TimedOut => "timed_out",
            Self::Failed => "failed",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::AuthenticationFailed => "authentication failed",
            Self::SecretRefused => "refused our secret",
            Self::Refused => "refused",
            Self::Evicted => "evicted (too many unauthenticated connections)",
            Self::TimedOut => "timed out",
            Self::Failed => "failed",
        }
    }

    /// Worth a warning: someone without the secret, a misconfigured node, or a flood.
    /// Timeouts and the rest also happen when peers restart or the network drops.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            Self::AuthenticationFailed | Self::SecretRefused | Self::Refused | Self::Evicted
        )
    }
}

/// A line to log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Report {
    /// Log at WARN (else at DEBUG).
    pub warning: bool,
    /// The message.
    pub text: String,
}

/// The counts of the current interval.
#[derive(Debug, Default)]
pub struct Rejections {
    /// When the current interval ends; `None` while quiet.
    interval_end: Option<Instant>,
    by_reason: BTreeMap<FailureReason, u64>,
    by_source: BTreeMap<IpAddr, u64>,
    other_sources: u64,
    /// The kinds of warning logged at once in this series (the first of each other kind is,
    /// even when routine failures or another kind started the series).
    warned: BTreeSet<FailureReason>,
}

impl Rejections {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// When [`Rejections::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.interval_end
    }

    /// Counts one failed handshake; returns what to log at once (the first of a series).
    pub fn record(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        error: &TransportError,
    ) -> Option<Report> {
        let reason = FailureReason::of(error);
        // Under a flood the runtime may not get to its timers: summarize from here too.
        let summary = self.handle_timeout(now);
        let first_warning = reason.is_warning() && !self.warned.contains(&reason);
        if self.interval_end.is_none() || first_warning {
            if self.interval_end.is_none() {
                self.interval_end = Some(now + SUMMARY_INTERVAL);
            }
            if reason.is_warning() {
                self.warned.insert(reason);
            }
            if let Some(summary) = summary {
                // Rare (an interval ended just now): the summary goes first, this one is
                // counted in the next instead of being logged on its own.
                self.count(reason, addr);
                return Some(summary);
            }
            let text = format!(
                "{} (more within {} s are summarized)",
                describe(reason, addr, error),
                SUMMARY_INTERVAL.as_secs()
            );
            return Some(Report {
                warning: reason.is_warning(),
                text,
            });
        }
        self.count(reason, addr);
        summary
    }

    fn count(&mut self, reason: FailureReason, addr: SocketAddr) {
        *self.by_reason.entry(reason).or_default() += 1;
        let ip = addr.ip();
        if let Some(count) = self.by_source.get_mut(&ip) {
            *count += 1;
        } else if self.by_source.len() < MAX_SOURCES {
            self.by_source.insert(ip, 1);
        } else {
            self.other_sources += 1;
        }
    }

    /// Ends the interval if it is over: the summary, if anything was counted in it.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Report> {
        let end = self.interval_end?;
        if now < end {
            return None;
        }
        let total: u64 = self.by_reason.values().sum();
        if total == 0 {
            self.interval_end = None;
            self.warned.clear();
            return None;
        }
        let mut text = format!(
            "rejected {} connections in the last {} s:",
            thousands(total),
            SUMMARY_INTERVAL.as_secs()
        );
        let mut reasons: Vec<(FailureReason, u64)> =
            self.by_reason.iter().map(|(r, n)| (*r, *n)).collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (i, (reason, n)) in reasons.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let _ = write!(text, "{sep}{} {}", thousands(*n), reason.text());
        }
        let mut sources: Vec<(IpAddr, u64)> =
            self.by_source.iter().map(|(a, n)| (*a, *n)).collect();
        sources.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        text.push_str("; from ");
        for (i, (ip, n)) in sources.iter().take(3).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(text, "{sep}{ip} ({})", thousands(*n));
        }
        let rest: u64 = sources.iter().skip(3).map(|(_, n)| n).sum::<u64>() + self.other_sources;
        if rest > 0 {
            let _ = write!(text, " and {} from other addresses", thousands(rest));
        }
        let warning = reasons.iter().any(|(r, _)| r.is_warning());
        self.by_reason.clear();
        self.by_source.clear();
        self.other_sources = 0;
        self.interval_end = Some(now + SUMMARY_INTERVAL);
        Some(Report { warning, text })
    }
}

/// One failed handshake as the operator should read it: what failed, with whom, and for
/// authentication failures the likely cause (the error alone says only "authentication
/// failed", which sends people looking at the network).
fn describe(reason: FailureReason, addr: SocketAddr, error: &TransportError) -> String {
    match error {
        TransportError::AuthenticationFailed => format!(
            "authentication failed from {addr}: cluster secrets differ, or a stranger \
             (or a driver whose secret_file is not cluster.driver_secret_file)"
        ),
        TransportError::SecretRejected { remote_key } => {
            let key = if *remote_key {
                ", or its node key is not the key cluster.peers gives for it"
            } else {
                ""
            };
            format!(
                "authentication failed dialing {addr}: it does not accept our cluster secret: \
                 cluster secrets differ{key}"
            )
        }
        _ if reason.is_warning() => format!("connection rejected from {addr}: {error}"),
        _ => format!("connection attempt failed from {addr}: {error}"),
    }
}

/// `168000` as `168,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    fn from(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 40000)
    }

    #[test]
    fn a_flood_gives_one_line_at_once_and_one_summary_per_interval() {
        let mut r = Rejections::new();
        let first = r
            .record(
                at(0),
                from("10.0.0.1"),
                &TransportError::AuthenticationFailed,
            )
            .expect("the first is logged at once");
        assert!(first.warning);
        assert!(first.text.contains("10.0.0.1"), "{}", first.text);
        for i in 1..168_000 {
            let report = r.record(
                at(i / 17),
                from("10.0.0.1"),
                &TransportError::AuthenticationFailed,
            );
            assert_eq!(report, None);
        }
        assert!(
            r.record(
                at(9_999),
                from("10.0.0.2"),
                &TransportError::HandshakeTimeout
            )
            .is_none()
        );
        assert_eq!(r.poll_timeout(), Some(at(10_000)));
        assert_eq!(r.handle_timeout(at(9_999)), None);
        let summary = r.handle_timeout(at(10_000)).expect("summary");
        assert!(summary.warning);
        assert_eq!(
            summary.text,
            "rejected 168,000 connections in the last 10 s: 167,999 authentication failed, \
             1 timed out; from 10.0.0.1 (167,999), 10.0.0.2 (1)"
        );
        // A quiet interval ends the series; the next rejection is logged at once again.
        assert_eq!(r.handle_timeout(at(20_000)), None);
        assert_eq!(r.poll_timeout(), None);
        assert!(
            r.record(at(30_000), from("10.0.0.1"), &TransportError::Busy)
                .is_some()
        );
    }

    #[test]
    fn the_first_warning_is_logged_at_once_even_after_routine_failures() {
        let mut r = Rejections::new();
        let routine = r.record(at(0), from("10.0.0.9"), &TransportError::Closed);
        assert!(!routine.expect("first of the series").warning);
        let warning = r
            .record(
                at(1),
                from("10.0.0.1"),
                &TransportError::AuthenticationFailed,
            )
            .expect("the first warning is not held back");
        assert!(warning.warning && warning.text.contains("authentication failed"));
        assert_eq!(
            r.record(
                at(2),
                from("10.0.0.1"),
                &TransportError::AuthenticationFailed
            ),
            None
        );
    }

    #[test]
    fn authentication_failures_say_the_secrets_differ_on_both_sides() {
        let mut r = Rejections::new();
        let acceptor = r
            .record(
                at(0),
                from("10.0.0.1"),
                &TransportError::AuthenticationFailed,
            )
            .expect("logged at once");
        assert!(acceptor.warning);
        assert_eq!(
            acceptor.text,
            "authentication failed from 10.0.0.1:40000: cluster secrets differ, or a stranger \
             (or a driver whose secret_file is not cluster.driver_secret_file) \
             (more within 10 s are summarized)"
        );
        // The same node dialing that peer: another kind, so it is not held back either.
        let dialer = r
            .record(
                at(1),
                from("10.0.0.1"),
                &TransportError::SecretRejected { remote_key: true },
            )
            .expect("the dialer's side is logged at once too");
        assert!(dialer.warning);
        assert_eq!(
            dialer.text,
            "authentication failed dialing 10.0.0.1:40000: it does not accept our cluster \
             secret: cluster secrets differ, or its node key is not the key cluster.peers \
             gives for it (more within 10 s are summarized)"
        );
        // Then both are counted, never logged one by one.
        for i in 2..1000 {
            let error = if i % 2 == 0 {
                TransportError::AuthenticationFailed
            } else {
                TransportError::SecretRejected { remote_key: false }
            };
            assert_eq!(r.record(at(i), from("10.0.0.1"), &error), None);
        }
        let summary = r.handle_timeout(at(10_000)).expect("summary");
        assert_eq!(
            summary.text,
            "rejected 998 connections in the last 10 s: 499 authentication failed, \
             499 refused our secret; from 10.0.0.1 (998)"
        );
        assert_eq!(
            describe(
                FailureReason::SecretRefused,
                from("10.0.0.2"),
                &TransportError::SecretRejected { remote_key: false }
            ),
            "authentication failed dialing 10.0.0.2:40000: it does not accept our cluster \
             secret: cluster secrets differ"
        );
        assert_eq!(
            FailureReason::of(&TransportError::ConnectTimeout),
            FailureReason::TimedOut
        );
    }

    #[test]
    fn sources_are_bounded_and_routine_failures_are_not_warnings() {
        let mut r = Rejections::new();
        let first = r.record(at(0), from("10.0.0.1"), &TransportError::HandshakeTimeout);
        assert!(!first.expect("logged").warning);
        for i in 0..100u8 {
            let _ = r.record(at(1), from(&format!("10.1.0.{i}")), &TransportError::Closed);
        }
        let summary = r.handle_timeout(at(10_000)).expect("summary");
        assert!(!summary.warning);
        assert!(
            summary.text.contains("97 from other addresses"),
            "{}",
            summary.text
        );
        // A summary comes from `record` too once the interval is over.
        assert_eq!(
            r.record(at(15_000), from("10.0.0.1"), &TransportError::Closed),
            None
        );
        let late = r
            .record(at(20_000), from("10.0.0.1"), &TransportError::Closed)
            .expect("the second interval's summary");
        assert!(
            late.text.starts_with("rejected 1 connections"),
            "{}",
            late.text
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
