//! One vocabulary of faults for every randomized search: the core's property tests, the
//! election fuzz target and the simulation sweep all draw from [`Fault::draw`] and apply
//! the same typed faults to their own cluster.
//!
//! **Swarm testing** (as TigerBeetle's VOPR does): each run enables a random subset of the
//! [`FaultKind`]s ([`Swarm::draw`]) and prints it with its seed, so that rare combinations
//! (say, clocks at the drift bound *and* one-way heartbeat loss *and* a step-down) are
//! dense in some runs instead of diluted in all of them.
//!
//! Node indices wrap around the cluster size. A backend that cannot model a fault (the core
//! harness has no disk to tear) lets time pass instead and says so in its docs.

use std::fmt;

use crate::ids::MAX_TERM_JUMP;

/// Where the randomness comes from: a seeded generator, proptest's input or fuzz bytes.
pub trait FaultRng {
    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64;

    /// True with probability `percent` / 100.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub use crate::rng::SplitMix;

impl FaultRng for SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A family of faults that swarm testing switches on or off as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FaultKind {
    /// Crashes (disk survives) and restarts.
    Crash,
    /// Isolation and partitions, healed by `Recover`.
    Partition,
    /// One direction of one link cut.
    OneWayCut,
    /// One direction of one link loses heartbeats only (acks and votes still pass).
    HeartbeatLoss,
    /// Random message loss.
    Loss,
    /// Message delay and jitter.
    Delay,
    /// A node's clock rate anywhere within the drift bound.
    Drift,
    /// The leader's clock at exactly one end of the drift bound, every other at the other.
    DriftAtBound,
    /// Every cut healed within one heartbeat of a follower's election timeout.
    HealNearTimeout,
    /// Graceful step-down (a hand-over), maintenance on/off (a hand-over).
    HandOver,
    /// How a node's driver answers stops: promptly, late, or never (disconnected).
    SlowDriver,
    /// A daemon stops running for a while, its clock going on (SIGSTOP, a VM pause).
    Pause,
    /// Disk faults: a crash loses unsynced writes, a torn or corrupt state file.
    Disk,
    /// A node's service turns unhealthy or healthy again (its checks fail or pass).
    Health,
    /// A node's driver stops running for a while (SIGSTOP, swapped out, wedged): it cannot
    /// act on its lease, so only its daemon's fence, or the machine's watchdog, stops the
    /// service in time.
    DriverPause,
    /// The link between a daemon and its driver delays delivery (a descheduled driver, a
    /// busy queue): renewals arrive late.
    DriverLink,
    /// A hostile insider (a peer with the cluster secret, compromised or buggy) sends
    /// messages no honest node would: for now, absurd terms ([`Fault::ForgedTerm`]).
    Insider,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [Self; 17] = [
        Self::Crash,
        Self::Partition,
        Self::OneWayCut,
        Self::HeartbeatLoss,
        Self::Loss,
        Self::Delay,
        Self::Drift,
        Self::DriftAtBound,
        Self::HealNearTimeout,
        Self::HandOver,
        Self::SlowDriver,
        Self::Pause,
        Self::Disk,
        Self::Health,
        Self::DriverPause,
        Self::DriverLink,
        Self::Insider,
    ];

    /// Every kind but [`FaultKind::Insider`]: what a cluster of honest nodes suffers, in
    /// [`FaultKind::ALL`] order. For a backend that cannot (yet) play a hostile peer; its
    /// swarms ([`Swarm::draw_among`]) are the ones drawn before `Insider` existed.
    pub const HONEST: [Self; 16] = {
        // `Insider` is the last of `ALL` (tested): the rest, derived rather than listed twice.
        let mut honest = [Self::Crash; 16];
        let mut i = 0;
        while i < honest.len() {
            honest[i] = Self::ALL[i];
            i += 1;
        }
        honest
    };

    /// A short kebab-case name, as printed with a seed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Partition => "partition",
            Self::OneWayCut => "one-way-cut",
            Self::HeartbeatLoss => "heartbeat-loss",
            Self::Loss => "loss",
            Self::Delay => "delay",
            Self::Drift => "drift",
            Self::DriftAtBound => "drift-at-bound",
            Self::HealNearTimeout => "heal-near-timeout",
            Self::HandOver => "hand-over",
            Self::SlowDriver => "slow-driver",
            Self::Pause => "pause",
            Self::Disk => "disk",
            Self::Health => "health",
            Self::DriverPause => "driver-pause",
            Self::DriverLink => "driver-link",
            Self::Insider => "insider",
        }
    }

    /// How often a fault of this kind is drawn, relative to the others enabled.
    fn weight(self) -> u64 {
        match self {
            Self::Crash | Self::Partition => 4,
            Self::HandOver | Self::SlowDriver => 3,
            Self::OneWayCut
            | Self::HeartbeatLoss
            | Self::Drift
            | Self::DriftAtBound
            | Self::HealNearTimeout
            | Self::Health
            | Self::DriverPause => 2,
            // An insider's forged message must change nothing: more of them would only
            // dilute the faults that do.
            Self::Loss
            | Self::Delay
            | Self::Pause
            | Self::Disk
            | Self::DriverLink
            | Self::Insider => 1,
        }
    }
}

/// What a disk fault does to a node's state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskFault {
    /// Crash now, losing every write that was not fsynced.
    LoseUnsynced,
    /// Crash in the middle of a write: the state file is torn.
    Torn,
    /// Flip bits in the state file while the node is down (it must refuse to start).
    Corrupt,
}

/// One fault (or a stretch of time without one).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Let this many ms of global time pass.
    Run(u64),
    /// Crash a node; its disk survives.
    Crash(usize),
    /// Restart a crashed node.
    Restart(usize),
    /// Cut a node off from everyone.
    Isolate(usize),
    /// Split into two groups by bit mask over the node order.
    Split(u8),
    /// Heal every cut and every heartbeat loss.
    Recover,
    /// Cut `from → to`.
    CutOneWay(usize, usize),
    /// Lose heartbeats `from → to` (nothing else).
    LoseHeartbeats(usize, usize),
    /// Message loss, parts per million.
    Loss(u32),
    /// Maximum one-way delay, ms (at least 1).
    Delay(u64),
    /// A node's clock rate: 1 + this many parts per million (within the drift bound).
    Drift(usize, i32),
    /// The current leader's clock at 1 + ρ (`leader_fast`) or 1 − ρ, every other node's at
    /// the opposite end.
    DriftAtBound {
        /// Which side the leader is on.
        leader_fast: bool,
    },
    /// Run until one heartbeat before the earliest follower election timeout, then heal.
    HealNearTimeout,
    /// Graceful step-down of a node (does nothing unless it leads).
    StepDown(usize),
    /// Maintenance on or off.
    Maintenance(usize, bool),
    /// An operator on node `.0` asks for a switchover to node `.1` (`clustd step-down
    /// --to`): the leader hands over to it if it may; a refused request does nothing.
    Switchover(usize, usize),
    /// From now on, a node's driver confirms stops this many ms after being told "backup",
    /// or never (`None`: disconnected, or its stop fails).
    DriverStops(usize, Option<u64>),
    /// The link between a node's daemon and its driver delays delivery this many ms
    /// (renewals arrive late; the driver's lease must not grow from it).
    DriverLinkDelay(usize, u64),
    /// A node's daemon stops running for this many ms while its clock goes on.
    Pause(usize, u64),
    /// A node's driver stops running for this many ms (SIGSTOP): it neither stops the
    /// service at its lease end nor answers its daemon, and the service runs on meanwhile.
    DriverPause(usize, u64),
    /// A disk fault on a node.
    Disk(usize, DiskFault),
    /// A node's service turns healthy (`true`) or unhealthy: its health checks say so,
    /// with their hysteresis already applied.
    Health(usize, bool),
    /// Node `from` (a real peer, compromised or buggy; the next node if it is `to`) sends
    /// `to` one message whose term is `above` above `to`'s current term (capped at
    /// `u64::MAX`). `above` is always more than [`MAX_TERM_JUMP`]: the message must be
    /// dropped, and nothing may change. The backend picks the kind of message.
    ForgedTerm {
        /// The node that receives the forged message.
        to: usize,
        /// Claimed (and authenticated) sender.
        from: usize,
        /// How far above the receiver's term the forged term is.
        above: u64,
    },
}

impl Fault {
    /// The family this fault belongs to (`None` for `Run`, always enabled).
    pub fn kind(&self) -> Option<FaultKind> {
        Some(match self {
            Self::Run(_) => return None,
            Self::Crash(_) | Self::Restart(_) => FaultKind::Crash,
            Self::Isolate(_) | Self::Split(_) | Self::Recover => FaultKind::Partition,
            Self::CutOneWay(..) => FaultKind::OneWayCut,
            Self::LoseHeartbeats(..) => FaultKind::HeartbeatLoss,
            Self::Loss(_) => FaultKind::Loss,
            Self::Delay(_) => FaultKind::Delay,
            Self::Drift(..) => FaultKind::Drift,
            Self::DriftAtBound { .. } => FaultKind::DriftAtBound,
            Self::HealNearTimeout => FaultKind::HealNearTimeout,
            Self::StepDown(_) | Self::Maintenance(..) | Self::Switchover(..) => FaultKind::HandOver,
            Self::DriverStops(..) => FaultKind::SlowDriver,
            Self::DriverLinkDelay(..) => FaultKind::DriverLink,
            Self::Pause(..) => FaultKind::Pause,
            Self::DriverPause(..) => FaultKind::DriverPause,
            Self::Disk(..) => FaultKind::Disk,
            Self::Health(..) => FaultKind::Health,
            Self::ForgedTerm { .. } => FaultKind::Insider,
        })
    }

    /// Draws one fault among the kinds `swarm` enables (or a `Run`), for `nodes` nodes.
    /// `max_drift_ppm` is ρ in parts per million; `et_max_ms` bounds pauses (2 × ET_max).
    pub fn draw(rng: &mut impl FaultRng, swarm: &Swarm, limits: &Limits) -> Self {
        const RUN_WEIGHT: u64 = 8;
        let total: u64 = RUN_WEIGHT + swarm.kinds.iter().map(|k| k.weight()).sum::<u64>();
        let mut ticket = rng.below(total);
        let mut kind = None;
        for k in &swarm.kinds {
            if ticket < k.weight() {
                kind = Some(*k);
                break;
            }
            ticket -= k.weight();
        }
        let n = limits.nodes.max(1) as u64;
        let node = |rng: &mut dyn FnMut(u64) -> u64| rng(n) as usize;
        let mut r = |k: u64| rng.below(k);
        let Some(kind) = kind else {
            return Self::Run(1 + r(3000));
        };
        let rho = i64::from(limits.max_drift_ppm);
        match kind {
            FaultKind::Crash => {
                if r(2) == 0 {
                    Self::Crash(node(&mut r))
                } else {
                    Self::Restart(node(&mut r))
                }
            }
            FaultKind::Partition => match r(3) {
                0 => Self::Isolate(node(&mut r)),
                1 => Self::Split(u8::try_from(r(256)).unwrap_or(0)),
                _ => Self::Recover,
            },
            FaultKind::OneWayCut => Self::CutOneWay(node(&mut r), node(&mut r)),
            FaultKind::HeartbeatLoss => Self::LoseHeartbeats(node(&mut r), node(&mut r)),
            FaultKind::Loss => Self::Loss(u32::try_from(r(300_001)).unwrap_or(0)),
            FaultKind::Delay => Self::Delay(if r(2) == 0 { 1 + r(150) } else { 150 + r(2350) }),
            FaultKind::Drift => {
                let d = i64::try_from(r(u64::try_from(2 * rho + 1).unwrap_or(1))).unwrap_or(0);
                Self::Drift(node(&mut r), i32::try_from(d - rho).unwrap_or(0))
            }
            FaultKind::DriftAtBound => Self::DriftAtBound {
                leader_fast: r(2) == 0,
            },
            FaultKind::HealNearTimeout => Self::HealNearTimeout,
            FaultKind::HandOver => match r(4) {
                0 => Self::Maintenance(node(&mut r), r(2) == 0),
                1 => Self::Switchover(node(&mut r), node(&mut r)),
                _ => Self::StepDown(node(&mut r)),
            },
            FaultKind::DriverLink => {
                Self::DriverLinkDelay(node(&mut r), r(limits.et_max_ms / 2 + 1))
            }
            FaultKind::DriverPause => {
                Self::DriverPause(node(&mut r), 1 + r(2 * limits.et_max_ms.max(1)))
            }
            FaultKind::SlowDriver => {
                let i = node(&mut r);
                Self::DriverStops(
                    i,
                    match r(3) {
                        0 => None,
                        1 => Some(r(20)),
                        _ => Some(r(limits.stop_budget_ms.max(1) * 2)),
                    },
                )
            }
            FaultKind::Pause => Self::Pause(node(&mut r), 1 + r(2 * limits.et_max_ms.max(1))),
            FaultKind::Disk => Self::Disk(
                node(&mut r),
                match r(3) {
                    0 => DiskFault::LoseUnsynced,
                    1 => DiskFault::Torn,
                    _ => DiskFault::Corrupt,
                },
            ),
            // Unhealthy a little more often than healthy: most runs then see a master
            // whose service died, and a cluster where several nodes' services did.
            FaultKind::Health => Self::Health(node(&mut r), r(5) < 2),
            FaultKind::Insider => Self::ForgedTerm {
                to: node(&mut r),
                from: node(&mut r),
                above: match r(4) {
                    0 => u64::MAX,
                    1 => MAX_TERM_JUMP + 1,
                    2 => MAX_TERM_JUMP + 1 + r(MAX_TERM_JUMP),
                    _ => 1 << (33 + r(31)),
                },
            },
        }
    }
}

/// What [`Fault::draw`] needs to know about the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Number of nodes.
    pub nodes: usize,
    /// ρ in parts per million (50 000 for 5 %).
    pub max_drift_ppm: u32,
    /// `ET_max` in ms (pauses last up to twice that).
    pub et_max_ms: u64,
    /// The stop budget in ms (slow drivers answer within up to twice that).
    pub stop_budget_ms: u64,
}

/// The fault kinds one run enables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swarm {
    /// Enabled kinds, in [`FaultKind::ALL`] order.
    pub kinds: Vec<FaultKind>,
}

impl Swarm {
    /// Every kind enabled.
    pub fn all() -> Self {
        Self {
            kinds: FaultKind::ALL.to_vec(),
        }
    }

    /// Only these kinds.
    pub fn only(kinds: &[FaultKind]) -> Self {
        let mut kinds = kinds.to_vec();
        kinds.sort();
        kinds.dedup();
        Self { kinds }
    }

    /// Each kind of [`FaultKind::ALL`] enabled with probability one half (at least one).
    pub fn draw(rng: &mut impl FaultRng) -> Self {
        Self::draw_among(rng, &FaultKind::ALL)
    }

    /// Each of `among` (in [`FaultKind::ALL`] order) enabled with probability one half, at
    /// least one — for a backend that cannot model every kind (e.g. [`FaultKind::HONEST`]).
    pub fn draw_among(rng: &mut impl FaultRng, among: &[FaultKind]) -> Self {
        let mut kinds: Vec<FaultKind> = among
            .iter()
            .copied()
            .filter(|_| rng.below(2) == 0)
            .collect();
        if kinds.is_empty()
            && let Some(kind) = usize::try_from(rng.below(among.len() as u64))
                .ok()
                .and_then(|i| among.get(i))
        {
            kinds.push(*kind);
        }
        Self { kinds }
    }

    /// Whether `kind` is enabled.
    pub fn has(&self, kind: FaultKind) -> bool {
        self.kinds.contains(&kind)
    }
}

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.kinds.iter().map(|k| k.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        nodes: 5,
        max_drift_ppm: 50_000,
        et_max_ms: 2000,
        stop_budget_ms: 200,
    };

    #[test]
    fn draws_only_enabled_kinds_and_stays_in_bounds() {
        let mut rng = SplitMix(7);
        for _ in 0..200 {
            let swarm = Swarm::draw(&mut rng);
            assert!(!swarm.kinds.is_empty());
            for _ in 0..50 {
                let fault = Fault::draw(&mut rng, &swarm, &LIMITS);
                if let Some(kind) = fault.kind() {
                    assert!(swarm.has(kind), "{fault:?} not in {swarm}");
                }
                match fault {
                    Fault::Drift(_, d) => assert!(d.abs() <= 50_000, "{d}"),
                    Fault::Pause(_, ms) | Fault::DriverPause(_, ms) => {
                        assert!((1..=4000).contains(&ms));
                    }
                    Fault::Delay(ms) => assert!((1..2500).contains(&ms)),
                    Fault::ForgedTerm { above, .. } => assert!(above > MAX_TERM_JUMP),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn every_kind_is_drawn_when_enabled() {
        let mut rng = SplitMix(1);
        let swarm = Swarm::all();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            if let Some(kind) = Fault::draw(&mut rng, &swarm, &LIMITS).kind() {
                seen.insert(kind);
            }
        }
        assert_eq!(seen.len(), FaultKind::ALL.len());
    }

    #[test]
    fn honest_swarms_never_draw_insiders() {
        let mut rng = SplitMix(3);
        for _ in 0..500 {
            let swarm = Swarm::draw_among(&mut rng, &FaultKind::HONEST);
            assert!(!swarm.kinds.is_empty() && !swarm.has(FaultKind::Insider));
            for _ in 0..20 {
                let fault = Fault::draw(&mut rng, &swarm, &LIMITS);
                assert!(!matches!(fault, Fault::ForgedTerm { .. }), "{fault:?}");
            }
        }
        assert_eq!(&FaultKind::ALL[..16], &FaultKind::HONEST[..]);
        assert_eq!(FaultKind::ALL[16], FaultKind::Insider);
    }

    #[test]
    fn swarms_print_their_kinds() {
        let swarm = Swarm::only(&[FaultKind::Pause, FaultKind::Crash]);
        assert_eq!(swarm.to_string(), "crash,pause");
    }
}
