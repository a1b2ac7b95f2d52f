//! `driver_protocol`: arbitrary messages from a daemon into the driver library's engine
//! (the real `run_engine`, through `clustd_drivers::fuzzing::EngineHarness`, on a paused
//! clock), well-formed or garbage, over connections that come and go.
//!
//! Frames go through `clustd_core::codec::decode` as in the driver's connection loop: a
//! frame that does not decode drops the connection (and the driver reconnects), exactly as
//! the loop does; so does a `Resync` request from the engine.
//!
//! Checked: the engine never stops or panics; every `Role` accepted on the current
//! connection is acknowledged exactly once, on that connection, and nothing else is; once
//! the driver has had time to act, the last change handed to it is the engine's target
//! role; the driver is never master past the most generous lease end it was ever given,
//! counted from each notice's send time (`sent_at_ns`, stamped on the harness's machine
//! clock, in the past, now or the future) or arrival, whichever is earlier — a late notice
//! never extends a lease; and after a long silence (no renewals) the driver always ends in
//! backup — the fail-safe — whatever lease values it was given. Health: the driver's
//! reports are refused only for a reason (a threshold of 0, a 17th check name), every
//! health result sent names a check that was reported, and once settled on a connection
//! the daemon has heard every reported check on it (re-sent after each reconnect); the
//! daemon's health events are never acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use clustd_core::codec;
use clustd_core::driver::{ActionResult, DriverRole, FromDriver, HealthChange, ToDriver};
use clustd_core::{NodeId, Term};
use clustd_drivers::fuzzing::{EngineHarness, Output};
use clustd_drivers::{HealthError, MAX_HEALTH_CHECKS};

/// One input: the driver's behaviour and what the daemon does.
#[derive(Arbitrary, Debug)]
pub struct Input {
    /// How long to wait for a first role at start-up (ms).
    pub startup_wait_ms: u16,
    /// The driver's actions: duration (ms) and result, cycled.
    pub actions: Vec<(u16, u8)>,
    /// What happens.
    pub ops: Vec<Op>,
}

/// One event on the daemon's side.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// A role message.
    Role {
        /// Master or backup.
        master: bool,
        /// The term the daemon stamps on the message (stale and future ones included).
        term: u64,
        /// Leader (index; none past 3).
        leader: u8,
        /// Remaining lease.
        lease_remaining_ms: u32,
        /// How long before now the daemon stamped it (ms; negative: in the future).
        sent_ago_ms: i16,
        /// `election.stop_budget_ms`.
        stop_budget_ms: u32,
        /// Sequence number.
        seq: u64,
        /// Reason.
        reason: String,
    },
    /// A lease renewal.
    Renewal {
        /// The term the daemon stamps on the message (stale and future ones included).
        term: u64,
        /// Remaining lease.
        lease_remaining_ms: u32,
        /// How long before now the daemon stamped it (ms; negative: in the future).
        sent_ago_ms: i16,
    },
    /// A driver of this node reported a failed stop (a cluster event; never acknowledged).
    StopFailed {
        /// The term the daemon stamps on the message (stale and future ones included).
        term: u64,
        /// `TimedOut` rather than `Failed`.
        timed_out: bool,
    },
    /// A raw frame (decoded with the codec; garbage drops the connection).
    Frame(Vec<u8>),
    /// A message on an earlier connection (ignored by the engine).
    OnOldConnection {
        /// Remaining lease of a master role.
        lease_remaining_ms: u32,
        /// Sequence number.
        seq: u64,
    },
    /// Time passes (ms).
    Advance(u16),
    /// The connection drops.
    Disconnect,
    /// The driver reconnects (if disconnected).
    Reconnect,
    /// The daemon reports a health or eligibility change (a cluster event; never acknowledged).
    Health {
        /// Which change (mod 4).
        change: u8,
        /// The term the daemon stamps on the message (stale and future ones included).
        term: u64,
        /// Detail.
        detail: String,
    },
    /// A peer's connection came up or went down (a cluster event; never acknowledged, never
    /// part of the role or lease).
    Peer {
        /// The peer (index).
        peer: u8,
        /// Up rather than down.
        up: bool,
        /// The term the daemon stamps on the message (stale and future ones included).
        term: u64,
    },
    /// The daemon ran its fence command for some drivers (a cluster event; never
    /// acknowledged, never part of the role or lease).
    Fenced {
        /// How many drivers it names (mod 4; 0 is an empty list).
        drivers: u8,
        /// The term the daemon stamps on the message (stale and future ones included).
        term: u64,
        /// It succeeded rather than failed.
        ok: bool,
    },
    /// The driver reports one result of check `check % 20` (more names than are allowed).
    ReportHealth {
        /// The check's number.
        check: u8,
        /// Whether it passed.
        healthy: bool,
        /// `fall` (0 is refused).
        fall: u8,
        /// `rise` (0 is refused).
        rise: u8,
    },
}

/// Replays the connection loop's side and checks the engine's answers.
struct Model {
    harness: EngineHarness,
    /// The current connection, if up.
    conn: Option<u64>,
    next_conn: u64,
    /// Roles accepted and not yet acknowledged, by (conn, seq): how many.
    unacked: BTreeMap<(u64, u64), u32>,
    /// Longest action, for "enough time to act".
    longest_action: Duration,
    /// The latest any lease notice accepted so far allows (machine clock, ns): the earlier
    /// of its stamp and its arrival, plus its lease. The driver is never master after it.
    lease_bound_ns: u64,
    /// The checks the driver reported (accepted reports only).
    reported: BTreeSet<String>,
    /// The checks whose results went out, per connection.
    health_sent: BTreeMap<u64, BTreeSet<String>>,
}

impl Model {
    fn reconnect(&mut self) {
        if self.conn.is_none() {
            self.next_conn += 1;
            self.conn = Some(self.next_conn);
            self.harness.connected(self.next_conn);
        }
    }

    fn disconnect(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.harness.disconnected(conn);
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        let Some(conn) = self.conn else {
            return;
        };
        match codec::decode::<ToDriver>(frame) {
            Ok(msg) => {
                match &msg {
                    ToDriver::Role {
                        role,
                        seq,
                        sent_at_ns,
                        lease_remaining_ms,
                        ..
                    } => {
                        *self.unacked.entry((conn, *seq)).or_default() += 1;
                        if *role == DriverRole::Master {
                            self.lease_notice(*sent_at_ns, *lease_remaining_ms);
                        }
                    }
                    ToDriver::LeaseRenewal {
                        sent_at_ns,
                        lease_remaining_ms,
                        ..
                    } => self.lease_notice(*sent_at_ns, *lease_remaining_ms),
                    _ => {}
                }
                self.harness.message(conn, msg);
            }
            Err(_) => {
                // The connection loop drops the connection on an undecodable frame.
                self.disconnect();
                self.reconnect();
            }
        }
    }

    /// A lease notice stamped `sent_at_ns` arrives now.
    fn lease_notice(&mut self, sent_at_ns: u64, lease_remaining_ms: u32) {
        let anchor = sent_at_ns.min(self.harness.now_ns());
        let end = anchor.saturating_add(u64::from(lease_remaining_ms) * 1_000_000);
        self.lease_bound_ns = self.lease_bound_ns.max(end);
    }

    /// The stamp of a notice sent `ago_ms` before now.
    fn stamp(&self, ago_ms: i16) -> u64 {
        let now = self.harness.now_ns();
        let ago = u64::from(ago_ms.unsigned_abs()) * 1_000_000;
        if ago_ms >= 0 {
            now.saturating_sub(ago)
        } else {
            now.saturating_add(ago)
        }
    }

    fn outputs(&mut self, context: &Op) {
        for output in self.harness.take_outputs() {
            match output {
                Output::Send {
                    conn,
                    msg: FromDriver::Ack { seq, .. },
                } => {
                    let left = self.unacked.get_mut(&(conn, seq)).unwrap_or_else(|| {
                        panic!("after {context:?}: ack of ({conn}, {seq}) that nobody asked for")
                    });
                    *left -= 1;
                    if *left == 0 {
                        self.unacked.remove(&(conn, seq));
                    }
                }
                Output::Send {
                    conn,
                    msg: FromDriver::Health { check, .. },
                } => {
                    assert!(
                        self.reported.contains(&check),
                        "after {context:?}: a result for `{check}`, which was never reported"
                    );
                    self.health_sent.entry(conn).or_default().insert(check);
                }
                Output::Send { msg, .. } => panic!("after {context:?}: unexpected {msg:?}"),
                Output::Resync { conn } => {
                    if self.conn == Some(conn) {
                        self.disconnect();
                        self.reconnect();
                    }
                }
            }
        }
        if let Some(why) = self.harness.failure() {
            panic!("after {context:?}: the engine stopped: {why}");
        }
        let status = self.harness.status();
        if status.target_role == Some(DriverRole::Master) {
            let now = self.harness.now_ns();
            assert!(
                now <= self.lease_bound_ns,
                "after {context:?}: still master {} ns after the most generous lease ended: {status:?}",
                now - self.lease_bound_ns
            );
        }
    }

    /// The driver reports a result; a refusal must have its reason.
    fn report(&mut self, check: u8, healthy: bool, fall: u8, rise: u8) {
        let name = format!("check-{}", check % 20);
        let result = self
            .harness
            .report_health(&name, healthy, u32::from(fall), u32::from(rise));
        match result {
            Ok(()) => {
                self.reported.insert(name);
            }
            Err(HealthError::ZeroThreshold { .. }) => assert!(fall == 0 || rise == 0),
            Err(HealthError::TooManyChecks(refused)) => {
                assert_eq!(refused, name);
                assert!(self.reported.len() >= MAX_HEALTH_CHECKS && !self.reported.contains(&name));
            }
            Err(e) => panic!("report of `{name}` refused: {e}"),
        }
    }

    /// Gives the driver time to work through everything queued (the queue holds at most
    /// a few transitions, each done within the longest action).
    fn settle(&mut self, context: &Op) {
        for _ in 0..4 {
            self.harness
                .advance(self.longest_action + Duration::from_millis(1));
            self.outputs(context);
        }
    }
}

fn node() -> NodeId {
    NodeId::new("node-1").unwrap_or_else(|_| unreachable!("valid id"))
}

fn leader(i: u8) -> Option<NodeId> {
    (i < 3).then(|| {
        NodeId::new(format!("node-{}", i + 1)).unwrap_or_else(|_| unreachable!("valid id"))
    })
}

/// Half the leases short (under 5 s, like real ones), so that their ends fall between the
/// steps and a lease that runs even a little too long is seen; the other half anything up
/// to `u32::MAX` ms.
fn lease(raw: u32) -> u32 {
    if raw & 1 == 0 { raw % 5000 } else { raw }
}

fn result(code: u8) -> ActionResult {
    match code % 4 {
        0 | 1 => ActionResult::Ok,
        2 => ActionResult::Failed("scripted failure".into()),
        _ => ActionResult::TimedOut,
    }
}

/// The target body.
pub fn driver_protocol(data: &[u8]) {
    let u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary_take_rest(u) else {
        return;
    };
    let script: Vec<(Duration, ActionResult)> = input
        .actions
        .iter()
        .take(8)
        .map(|(ms, code)| (Duration::from_millis(u64::from(*ms % 5000)), result(*code)))
        .collect();
    let longest_action = script.iter().map(|(d, _)| *d).max().unwrap_or_default();
    let harness = EngineHarness::new(
        Duration::from_millis(u64::from(input.startup_wait_ms)),
        script,
    );
    let mut model = Model {
        harness,
        conn: None,
        next_conn: 0,
        unacked: BTreeMap::new(),
        longest_action,
        lease_bound_ns: 0,
        reported: BTreeSet::new(),
        health_sent: BTreeMap::new(),
    };
    let end = Op::Advance(0);
    model.reconnect();
    for op in input.ops.iter().take(64) {
        match op {
            Op::Role {
                master,
                term,
                leader: l,
                lease_remaining_ms,
                sent_ago_ms,
                stop_budget_ms,
                seq,
                reason,
            } => {
                let role = if *master {
                    DriverRole::Master
                } else {
                    DriverRole::Backup
                };
                let sent_at_ns = model.stamp(*sent_ago_ms);
                let msg = ToDriver::Role {
                    role,
                    term: Term(*term),
                    node: node(),
                    leader: leader(*l),
                    lease_remaining_ms: lease(*lease_remaining_ms),
                    sent_at_ns,
                    stop_budget_ms: *stop_budget_ms,
                    reason: reason.chars().take(64).collect(),
                    seq: *seq,
                };
                let frame = codec::encode(&msg).unwrap_or_else(|e| panic!("encodes: {e}"));
                model.frame(&frame);
            }
            Op::Renewal {
                term,
                lease_remaining_ms,
                sent_ago_ms,
            } => {
                let sent_at_ns = model.stamp(*sent_ago_ms);
                let msg = ToDriver::LeaseRenewal {
                    term: Term(*term),
                    lease_remaining_ms: lease(*lease_remaining_ms),
                    sent_at_ns,
                };
                let frame = codec::encode(&msg).unwrap_or_else(|e| panic!("encodes: {e}"));
                model.frame(&frame);
            }
            Op::StopFailed { term, timed_out } => {
                let msg = ToDriver::StopFailed {
                    driver: NodeId::new("shell-1").unwrap_or_else(|_| unreachable!("valid id")),
                    term: Term(*term),
                    result: if *timed_out {
                        ActionResult::TimedOut
                    } else {
                        ActionResult::Failed("exit status 1".into())
                    },
                };
                let frame = codec::encode(&msg).unwrap_or_else(|e| panic!("encodes: {e}"));
                model.frame(&frame);
            }
            Op::Frame(bytes) => model.frame(bytes),
            Op::OnOldConnection {
                lease_remaining_ms,
                seq,
            } => {
                if model.next_conn > 1 {
                    let msg = ToDriver::Role {
                        role: DriverRole::Master,
                        term: Term(u64::MAX),
                        node: node(),
                        leader: None,
                        lease_remaining_ms: *lease_remaining_ms,
                        sent_at_ns: model.harness.now_ns(),
                        stop_budget_ms: 0,
                        reason: "stale".into(),
                        seq: *seq,
                    };
                    model.harness.message(model.next_conn - 1, msg);
                }
            }
            Op::Advance(ms) => model.harness.advance(Duration::from_millis(u64::from(*ms))),
            Op::Disconnect => model.disconnect(),
            Op::Reconnect => model.reconnect(),
            Op::Health {
                change,
                term,
                detail,
            } => {
                let change = [
                    HealthChange::Healthy,
                    HealthChange::Unhealthy,
                    HealthChange::Ineligible,
                    HealthChange::Eligible,
                ][usize::from(*change % 4)];
                let msg = ToDriver::Health {
                    node: node(),
                    term: Term(*term),
                    change,
                    detail: detail.chars().take(64).collect(),
                };
                let frame = codec::encode(&msg).unwrap_or_else(|e| panic!("encodes: {e}"));
                model.frame(&frame);
            }
            Op::Peer { peer, up, term } => {
                let msg = ToDriver::Peer {
                    peer: NodeId::new(format!("node-{}", peer % 8))
                        .unwrap_or_else(|_| unreachable!("valid id")),
                    up: *up,
                    term: Term(*term),
                };
                let frame = codec::encode(&msg).unwrap_or_else(|e| panic!("encodes: {e}"));
                model.frame(&frame);
            }
            Op::Fenced { drivers, term, ok } => {
                let msg = ToDriver::Fenced {
                    drivers: (0..drivers % 4)
                        .map(|i| {
                            NodeId::new(format!("shell-{i}"))
                                .unwrap_or_else(|_| unreachable!("valid id"))
                        })
                        .collect(),
                    term: Term(*term),
                    result: if *ok {
                        ActionResult::Ok
                    } else {
                        ActionResult::Failed("fence command exit status 1".into())
                    },
                };
                let frame = codec::encode(&msg).unwrap_or_else(|e| panic!("encodes: {e}"));
                model.frame(&frame);
            }
            Op::ReportHealth {
                check,
                healthy,
                fall,
                rise,
            } => model.report(*check, *healthy, *fall, *rise),
        }
        model.outputs(op);
    }

    // Converged: the driver was last handed the engine's target role.
    model.settle(&end);
    let status = model.harness.status();
    let changes = model.harness.changes();
    if let Some(target) = status.target_role {
        let last = changes.last().map(|c| c.role);
        // Nothing handed over yet is fine only when the target needs no action (a start-up
        // stop already applied counts as handed over, so that does not happen either).
        assert_eq!(
            last,
            Some(target),
            "the driver did not converge: {status:?}"
        );
    }
    assert!(
        model.unacked.is_empty(),
        "roles never acknowledged: {:?}",
        model.unacked
    );
    // The daemon on the current connection has heard every check the driver reported.
    if let Some(conn) = model.conn {
        let heard = model.health_sent.get(&conn).cloned().unwrap_or_default();
        assert!(
            model.reported.is_subset(&heard),
            "reported {:?}, but connection {conn} heard only {heard:?}",
            model.reported
        );
    }

    // The fail-safe: silence long enough for any lease (u32::MAX ms is under 50 days).
    model.harness.advance(Duration::from_secs(50 * 24 * 3600));
    model.outputs(&end);
    model.settle(&end);
    let status = model.harness.status();
    let changes = model.harness.changes();
    assert_eq!(
        status.target_role,
        Some(DriverRole::Backup),
        "still master after a silence longer than any lease: {status:?}"
    );
    assert_eq!(
        changes.last().map(|c| c.role),
        Some(DriverRole::Backup),
        "the driver was not told to stop after the lease ran out: {status:?}"
    );
}
