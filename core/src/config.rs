//! Election settings and the timing inequality that makes master intervals disjoint.
//!
//! Notation: `ET_min` is the minimum election timeout, `ρ` the largest clock-rate drift
//! between any node and real time, `stop_budget` the time reserved for a demoted master's
//! drivers to stop. A leader's lease ends, in real time, at most `lease / (1 - ρ)` after
//! the send time of the last heartbeat round a majority acknowledged; no other node can
//! be elected before `ET_min / (1 + ρ)` after that send time, because one node of that
//! majority is needed and it refuses votes for `ET_min` on its own clock after hearing the
//! heartbeat. So master intervals never overlap when
//!
//! ```text
//! lease / (1 - ρ) + stop_budget <= ET_min / (1 + ρ)
//! ```
//!
//! [`Config::validate`] rejects configurations that break it and says what to change.

use std::time::Duration;

use crate::ids::NodeId;

/// Everything a [`crate::Node`] needs to know about itself and the cluster.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// This node's id; it must be one of `voters`.
    pub id: NodeId,
    /// Every voter of the cluster, this node included. A majority of these is a quorum.
    pub voters: Vec<NodeId>,
    /// How often a leader sends heartbeats (and so renews its lease).
    pub heartbeat_interval: Duration,
    /// Smallest election timeout, `ET_min`.
    pub election_timeout_min: Duration,
    /// Largest election timeout: a follower times out between `ET_min` and this, earlier
    /// the better it ranks among the successors its leader advertised (else at random).
    pub election_timeout_max: Duration,
    /// How long a majority-acknowledged heartbeat round keeps the leader master.
    pub lease: Duration,
    /// `ρ`: the largest clock-rate drift between a node and real time (0.05 = 5 %).
    pub max_clock_drift: f64,
    /// Time reserved for a demoted master's drivers to stop their service.
    pub stop_budget: Duration,
    /// Election priority; higher is preferred as leader.
    pub priority: u8,
    /// Take leadership from a reachable leader of lower priority.
    pub preempt: bool,
    /// A witness votes but never stands for election (a tie-breaker machine).
    pub witness: bool,
    /// Seed of the node's random number generator (election timeout jitter).
    pub rng_seed: u64,
    /// What an unhealthy master does when no healthy, eligible peer is reachable to hand
    /// over to (see [`crate::Node::set_healthy`]).
    pub alone: Alone,
    /// A master is not moved for health reasons (nor preempted) sooner than this after it
    /// took over in a hand-over, nor sooner than this after its own last health
    /// hand-over: a flapping check moves mastership at most once per this interval.
    pub min_master: Duration,
}

/// What an unhealthy master does when it has no healthy, eligible peer to hand over to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Alone {
    /// Stay master (the default): a service that may be half-working beats none at all,
    /// and no other node could do better. Said loudly ([`crate::Event::UnhealthyAlone`]).
    #[default]
    Stay,
    /// Step down anyway (once a running `min_master` hold has ended): no node is master
    /// until one is healthy.
    StepDown,
}

impl Alone {
    /// `"stay"` or `"step-down"`, as in the daemon's `health.alone`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stay => "stay",
            Self::StepDown => "step-down",
        }
    }
}

impl Config {
    /// A configuration with the default timings: heartbeat 100 ms, election timeout
    /// 1000–2000 ms, drift 5 %, stop budget 200 ms, and the longest safe lease; an
    /// unhealthy master alone stays, `min_master` 30 s.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Self {
        let mut config = Self {
            id,
            voters,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            lease: Duration::ZERO,
            max_clock_drift: 0.05,
            stop_budget: Duration::from_millis(200),
            priority: 0,
            preempt: false,
            witness: false,
            rng_seed: 0,
            alone: Alone::Stay,
            min_master: Duration::from_secs(30),
        };
        config.lease = config.max_safe_lease().unwrap_or(Duration::ZERO);
        config
    }

    /// Sets heartbeat interval and election timeout range, and the lease to the longest
    /// safe value for them (see [`Config::max_safe_lease`]).
    pub fn set_timings(
        &mut self,
        heartbeat: Duration,
        election_timeout_min: Duration,
        election_timeout_max: Duration,
    ) {
        self.heartbeat_interval = heartbeat;
        self.election_timeout_min = election_timeout_min;
        self.election_timeout_max = election_timeout_max;
        self.derive_lease();
    }

    /// The fast LAN profile (README's): heartbeat 10 ms, election timeout 100–200 ms, stop
    /// budget 20 ms (a driver that stops fast, e.g. a VIP move), drift 5 %, and the longest
    /// safe lease for those.
    pub fn fast_lan(id: NodeId, voters: Vec<NodeId>) -> Self {
        let mut config = Self::new(id, voters);
        config.stop_budget = Duration::from_millis(20);
        config.set_timings(
            Duration::from_millis(10),
            Duration::from_millis(100),
            Duration::from_millis(200),
        );
        config
    }

    /// Sets the stop budget, and the lease to the longest safe value for it.
    pub fn set_stop_budget(&mut self, stop_budget: Duration) {
        self.stop_budget = stop_budget;
        self.derive_lease();
    }

    /// Sets `ρ`, and the lease to the longest safe value for it.
    pub fn set_max_clock_drift(&mut self, rho: f64) {
        self.max_clock_drift = rho;
        self.derive_lease();
    }

    /// Sets the lease to the longest safe value for the current timings, stop budget and
    /// drift (zero if none is safe; [`Config::validate`] then says why). Call it after
    /// setting those fields directly: the lease is not recomputed by itself.
    pub fn derive_lease(&mut self) {
        self.lease = self.max_safe_lease().unwrap_or(Duration::ZERO);
    }

    /// The longest lease that satisfies the inequality, rounded down to a millisecond,
    /// or `None` when no lease of a millisecond or more does (the stop budget is too large
    /// for the minimum election timeout).
    pub fn max_safe_lease(&self) -> Option<Duration> {
        Self::safe_lease_for(
            self.election_timeout_min,
            self.stop_budget,
            self.max_clock_drift,
        )
    }

    /// The longest lease that satisfies the inequality for these values, rounded down to a
    /// millisecond; `None` when no lease of a millisecond or more does. The one formula
    /// behind [`Config::max_safe_lease`], for callers (the daemon's config check) that try
    /// other values before they build a `Config`.
    pub fn safe_lease_for(
        election_timeout_min: Duration,
        stop_budget: Duration,
        max_clock_drift: f64,
    ) -> Option<Duration> {
        let rho = max_clock_drift;
        let et_min = election_timeout_min.as_secs_f64();
        let budget = stop_budget.as_secs_f64();
        let seconds = (et_min / (1.0 + rho) - budget) * (1.0 - rho);
        if !seconds.is_finite() {
            return None;
        }
        let millis = (seconds * 1000.0).floor();
        // `as` saturates; a lease beyond u64 milliseconds is no lease anyone configures.
        (millis >= 1.0).then(|| Duration::from_millis(millis as u64))
    }

    /// The shortest whole-millisecond minimum election timeout for which `lease` is safe
    /// with this node's stop budget and drift bound (`None` if the drift bound is out of
    /// range). Error messages suggest it.
    fn shortest_election_timeout_min_for(&self, lease: Duration) -> Option<Duration> {
        let rho = self.max_clock_drift;
        if !(0.0..0.5).contains(&rho) {
            return None;
        }
        let exact =
            (lease.as_secs_f64() / (1.0 - rho) + self.stop_budget.as_secs_f64()) * (1.0 + rho);
        let first = ((exact * 1000.0).ceil() as u64).saturating_sub(1).max(1);
        // The safe lease is rounded down to a millisecond: step past the rounding.
        (first..first.saturating_add(1000))
            .map(Duration::from_millis)
            .find(|&et_min| {
                Self::safe_lease_for(et_min, self.stop_budget, rho).is_some_and(|max| max >= lease)
            })
    }

    /// The longest whole-millisecond stop budget for which `lease` is safe with this node's
    /// minimum election timeout and drift bound, if any is.
    fn longest_stop_budget_for(&self, lease: Duration) -> Option<Duration> {
        let rho = self.max_clock_drift;
        if !(0.0..0.5).contains(&rho) {
            return None;
        }
        let exact = self.election_timeout_min.as_secs_f64() / (1.0 + rho)
            - lease.as_secs_f64() / (1.0 - rho);
        if !(exact.is_finite() && exact >= 0.0) {
            return None;
        }
        let first = (exact * 1000.0).floor() as u64 + 1;
        // From just above the exact value down, past the rounding of the safe lease.
        (first.saturating_sub(1000)..=first)
            .rev()
            .map(Duration::from_millis)
            .find(|&budget| {
                Self::safe_lease_for(self.election_timeout_min, budget, rho)
                    .is_some_and(|max| max >= lease)
            })
    }

    /// The stop budget as measured on this node's clock when the clock may run fast by
    /// `ρ`: waiting this long locally lets at least `stop_budget` pass in real time.
    pub fn stop_budget_at_drift_bound(&self) -> Duration {
        let rho = if self.max_clock_drift.is_finite() {
            self.max_clock_drift.clamp(0.0, 0.5)
        } else {
            0.5
        };
        self.stop_budget.mul_f64(1.0 + rho) + Duration::from_micros(1)
    }

    /// The number of votes that makes a majority of [`Config::voters`].
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Checks every rule; the error says which value to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.voters.contains(&self.id) {
            return Err(ConfigError::SelfNotVoter(self.id.clone()));
        }
        let mut sorted = self.voters.clone();
        sorted.sort();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ConfigError::DuplicateVoter(pair[0].clone()));
        }
        if !(0.0..0.5).contains(&self.max_clock_drift) {
            return Err(ConfigError::Drift(self.max_clock_drift));
        }
        if self.election_timeout_min.is_zero()
            || self.election_timeout_max < self.election_timeout_min
        {
            return Err(ConfigError::TimeoutRange {
                min: self.election_timeout_min,
                max: self.election_timeout_max,
            });
        }
        let max_safe = self.max_safe_lease();
        if let Some(max_safe) = max_safe
            && self.lease.is_zero()
        {
            return Err(ConfigError::NoLease { max_safe });
        }
        if max_safe.is_none_or(|max| self.lease > max) {
            // What the lease must be at least: the configured one, or (a derived lease
            // that came out as none) one that two heartbeats fit in.
            let wanted = self
                .lease
                .max(self.heartbeat_interval * 2)
                .max(Duration::from_millis(1));
            return Err(ConfigError::UnsafeLease {
                lease: self.lease,
                max_safe,
                election_timeout_min: self.election_timeout_min,
                stop_budget: self.stop_budget,
                max_clock_drift: self.max_clock_drift,
                shortest_election_timeout_min: self.shortest_election_timeout_min_for(wanted),
                longest_stop_budget: self.longest_stop_budget_for(wanted),
            });
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 2 > self.lease {
            return Err(ConfigError::Heartbeat {
                heartbeat: self.heartbeat_interval,
                lease: self.lease,
            });
        }
        Ok(())
    }
}

/// A configuration the core refuses to run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// [`crate::Node::reconfigure`] was given another id, voter list or witness flag.
    #[error("the node id, the voters and the witness flag cannot change while running")]
    Unchangeable,
    /// The voter list does not contain the node itself.
    #[error("the voter list must contain this node ({0})")]
    SelfNotVoter(NodeId),
    /// A node id appears twice in the voter list.
    #[error("node id {0} appears more than once among the voters")]
    DuplicateVoter(NodeId),
    /// The clock drift bound is outside `[0, 0.5)`.
    #[error("max clock drift must be at least 0 and below 0.5, got {0}")]
    Drift(f64),
    /// The election timeout range is empty or zero.
    #[error(
        "election timeout range [{}, {}] is invalid: the minimum must be above 0 and at most the maximum",
        ms(.min),
        ms(.max)
    )]
    TimeoutRange {
        /// Configured minimum.
        min: Duration,
        /// Configured maximum.
        max: Duration,
    },
    /// Heartbeats are too slow to renew the lease before it expires.
    #[error(
        "heartbeat interval {} does not fit a lease of {}: it must be positive and at most half the lease; set it to at most {}",
        ms(.heartbeat),
        ms(.lease),
        ms(&(*.lease / 2))
    )]
    Heartbeat {
        /// Configured heartbeat interval.
        heartbeat: Duration,
        /// Configured lease.
        lease: Duration,
    },
    /// The lease breaks `lease/(1-ρ) + stop_budget <= ET_min/(1+ρ)`.
    #[error("{}", unsafe_lease_text(self))]
    UnsafeLease {
        /// Configured lease (zero: derived, and no lease is safe).
        lease: Duration,
        /// The largest safe lease; `None`: no lease of a millisecond or more is safe.
        max_safe: Option<Duration>,
        /// Configured minimum election timeout.
        election_timeout_min: Duration,
        /// Configured stop budget.
        stop_budget: Duration,
        /// Configured drift bound `ρ`.
        max_clock_drift: f64,
        /// The shortest minimum election timeout that makes the lease safe (with two
        /// heartbeats in it), if any does.
        shortest_election_timeout_min: Option<Duration>,
        /// The longest stop budget that makes the lease safe (with two heartbeats in it),
        /// if any does.
        longest_stop_budget: Option<Duration>,
    },
    /// The lease is zero while a positive one is safe: it was derived before the timings,
    /// stop budget or drift it depends on were changed, or never.
    #[error(
        "the lease is 0 ms: it was derived for other timings (fields set directly, or a stop budget changed after set_timings); call Config::derive_lease() (the longest safe lease now is {}), or use Config::set_timings / set_stop_budget / set_max_clock_drift, which derive it",
        ms(.max_safe)
    )]
    NoLease {
        /// The largest safe lease.
        max_safe: Duration,
    },
}

/// A duration as people read a timing setting: `714 ms`, `95.238 ms`.
fn ms(duration: &Duration) -> String {
    let millis = duration.as_secs_f64() * 1000.0;
    if duration.subsec_nanos() % 1_000_000 == 0 {
        return format!("{} ms", duration.as_millis());
    }
    let text = format!("{millis:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "0" {
        "less than 0.001 ms".to_owned()
    } else {
        format!("{text} ms")
    }
}

/// [`ConfigError::UnsafeLease`]'s message: what the rule allows, and values that satisfy it.
fn unsafe_lease_text(error: &ConfigError) -> String {
    let ConfigError::UnsafeLease {
        lease,
        max_safe,
        election_timeout_min,
        stop_budget,
        max_clock_drift,
        shortest_election_timeout_min,
        longest_stop_budget,
    } = error
    else {
        return String::new();
    };
    let rule = "lease/(1-drift) + stop_budget <= election_timeout_min/(1+drift)";
    let given = format!(
        "election_timeout_min {}, stop_budget {} and drift {max_clock_drift}",
        ms(election_timeout_min),
        ms(stop_budget)
    );
    let mut fixes = Vec::new();
    let mut text = match max_safe {
        Some(max) => {
            fixes.push(format!(
                "shorten the lease to at most {} (Config::derive_lease sets the longest)",
                ms(max)
            ));
            format!(
                "lease {} is unsafe: the rule {rule} allows at most {} with {given}",
                ms(lease),
                ms(max)
            )
        }
        None => {
            let limit = election_timeout_min.as_secs_f64() / (1.0 + max_clock_drift);
            format!(
                "every lease is unsafe: the rule {rule} needs the stop budget below election_timeout_min/(1+drift) = {}, with {given}",
                ms(&Duration::try_from_secs_f64(limit).unwrap_or_default())
            )
        }
    };
    if let Some(et_min) = shortest_election_timeout_min {
        fixes.push(format!(
            "raise election_timeout_min to at least {} (Config::set_timings derives the lease)",
            ms(et_min)
        ));
    }
    if let Some(budget) = longest_stop_budget {
        fixes.push(format!(
            "lower the stop budget to at most {} (Config::set_stop_budget)",
            ms(budget)
        ));
    }
    if fixes.is_empty() {
        fixes.push("lower the drift bound".to_owned());
    }
    text.push_str("; ");
    text.push_str(&fixes.join(", or "));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names
            .iter()
            .map(|n| NodeId::new(n).expect("valid id"))
            .collect()
    }

    fn base() -> Config {
        let voters = ids(&["a", "b", "c"]);
        Config::new(voters[0].clone(), voters)
    }

    #[test]
    fn default_config_is_valid_and_lease_is_the_safe_maximum() {
        let config = base();
        config.validate().expect("defaults are valid");
        // (1000/1.05 - 200) * 0.95 = 714.76 ms
        assert_eq!(config.lease, Duration::from_millis(714));
        let rho = config.max_clock_drift;
        let lhs = config.lease.as_secs_f64() / (1.0 - rho) + config.stop_budget.as_secs_f64();
        assert!(lhs <= config.election_timeout_min.as_secs_f64() / (1.0 + rho));
    }

    #[test]
    fn the_fast_profile_is_the_same_in_every_order_of_setting_it() {
        let ms = Duration::from_millis;
        let fast = Config::fast_lan(base().id, base().voters);
        fast.validate().expect("the preset is valid");
        let mut timings_first = base();
        timings_first.set_timings(ms(10), ms(100), ms(200));
        timings_first.set_stop_budget(ms(20));
        let mut budget_first = base();
        budget_first.set_stop_budget(ms(20));
        budget_first.set_timings(ms(10), ms(100), ms(200));
        for c in [&timings_first, &budget_first] {
            c.validate().expect("valid");
            assert_eq!(
                (c.lease, c.stop_budget, c.heartbeat_interval),
                (fast.lease, fast.stop_budget, fast.heartbeat_interval)
            );
        }
        // Fields set directly leave the lease as it was: the error names that, not the heartbeat.
        let mut direct = base();
        direct.set_timings(ms(10), ms(100), ms(200)); // the lease is 0: 200 ms budget is too big
        direct.stop_budget = ms(20);
        let e = direct.validate().expect_err("lease left at 0");
        assert!(matches!(e, ConfigError::NoLease { .. }), "{e}");
        assert!(e.to_string().contains("derive_lease"), "{e}");
        direct.derive_lease();
        assert_eq!(direct.lease, fast.lease);
        // Drift changes the safe lease too.
        let mut drift = fast.clone();
        drift.set_max_clock_drift(0.01);
        assert!(drift.lease > fast.lease);
        drift.validate().expect("valid");
    }

    use crate::harness::assert_plain;

    #[test]
    fn unsafe_lease_messages_give_values_that_work() {
        let ms = Duration::from_millis;
        let lease_too_long = {
            let mut c = base();
            c.lease = ms(715);
            c
        };
        let fast_timings_default_budget = {
            let mut c = base();
            c.set_timings(ms(10), ms(100), ms(200)); // the 200 ms stop budget leaves no lease
            c
        };
        let budget_set_directly = {
            let mut c = base();
            c.stop_budget = ms(960); // the 714 ms lease stays
            c
        };
        for (name, config, needle) in [
            ("lease too long", lease_too_long, "allows at most 714 ms"),
            (
                "no lease for the fast timings",
                fast_timings_default_budget,
                "every lease is unsafe",
            ),
            (
                "budget set directly",
                budget_set_directly,
                "every lease is unsafe",
            ),
        ] {
            let e = config.validate().expect_err(name);
            let text = e.to_string();
            assert_plain(&text);
            assert!(text.contains(needle), "{name}: {text}");
            let ConfigError::UnsafeLease {
                max_safe,
                shortest_election_timeout_min,
                longest_stop_budget,
                ..
            } = e
            else {
                panic!("{name}: {e:?}")
            };
            // Every value the message offers passes, applied the way it says.
            let derived = config.lease.is_zero();
            if let Some(max) = max_safe {
                assert!(text.contains(&format!("at most {} ms", max.as_millis())));
                let mut fixed = config.clone();
                fixed.lease = max;
                fixed.validate().expect(name);
            }
            let et_min = shortest_election_timeout_min.expect("a longer timeout always works");
            assert!(
                text.contains(&format!("at least {} ms", et_min.as_millis())),
                "{text}"
            );
            let mut fixed = config.clone();
            if derived {
                let max = config.election_timeout_max.max(et_min);
                fixed.set_timings(config.heartbeat_interval, et_min, max);
            } else {
                fixed.election_timeout_min = et_min;
                fixed.election_timeout_max = fixed.election_timeout_max.max(et_min);
            }
            fixed.validate().expect(name);
            // One millisecond less is not enough: the value is the boundary.
            let mut short = fixed.clone();
            short.election_timeout_min = et_min - ms(1);
            if derived {
                short.derive_lease();
            }
            assert!(
                short.validate().is_err(),
                "{name}: {et_min:?} is not the shortest"
            );
            if let Some(budget) = longest_stop_budget {
                assert!(text.contains(&format!("at most {} ms", budget.as_millis())));
                let mut fixed = config.clone();
                if derived {
                    fixed.set_stop_budget(budget);
                } else {
                    fixed.stop_budget = budget;
                }
                fixed.validate().expect(name);
            }
        }
        // The whole message, for the fast timings left with the default 200 ms stop budget.
        let mut c = base();
        c.set_timings(ms(10), ms(100), ms(200));
        assert_eq!(
            c.validate().expect_err("no lease").to_string(),
            "every lease is unsafe: the rule lease/(1-drift) + stop_budget <= \
             election_timeout_min/(1+drift) needs the stop budget below \
             election_timeout_min/(1+drift) = 95.238 ms, with election_timeout_min 100 ms, \
             stop_budget 200 ms and drift 0.05; raise election_timeout_min to at least 233 ms \
             (Config::set_timings derives the lease), or lower the stop budget to at most 74 ms \
             (Config::set_stop_budget)"
        );
    }

    #[test]
    fn heartbeat_and_range_messages_are_plain_and_say_what_works() {
        let ms = Duration::from_millis;
        let mut slow = base();
        slow.heartbeat_interval = ms(400);
        let e = slow.validate().expect_err("heartbeat too slow").to_string();
        assert_plain(&e);
        assert!(
            e.contains("heartbeat interval 400 ms") && e.contains("at most 357 ms"),
            "{e}"
        );
        slow.heartbeat_interval = ms(357);
        slow.validate().expect("the suggested heartbeat works");

        let mut range = base();
        range.election_timeout_max = ms(900);
        let e = range.validate().expect_err("inverted").to_string();
        assert_plain(&e);
        assert!(e.contains("[1000 ms, 900 ms]"), "{e}");

        let mut stale = base();
        stale.set_timings(ms(10), ms(100), ms(200));
        stale.stop_budget = ms(20);
        let e = stale.validate().expect_err("lease left at 0").to_string();
        assert_plain(&e);
        assert!(e.contains("the longest safe lease now is 71 ms"), "{e}");

        // Sub-millisecond values read as fractions of a millisecond.
        let mut fine = base();
        fine.lease = Duration::from_micros(714_500);
        let e = fine.validate().expect_err("too long").to_string();
        assert_plain(&e);
        assert!(e.contains("lease 714.5 ms"), "{e}");
    }

    #[test]
    fn table_of_invalid_configs() {
        type Edit = fn(&mut Config);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "self missing",
                |c| drop(c.voters.remove(0)),
                "must contain this node",
            ),
            (
                "duplicate voter",
                |c| c.voters.push(c.voters[1].clone()),
                "more than once",
            ),
            ("negative drift", |c| c.max_clock_drift = -0.1, "drift"),
            ("huge drift", |c| c.max_clock_drift = 0.5, "drift"),
            (
                "zero timeout",
                |c| c.election_timeout_min = Duration::ZERO,
                "timeout range",
            ),
            (
                "inverted range",
                |c| c.election_timeout_max = Duration::from_millis(900),
                "timeout range",
            ),
            (
                "slow heartbeat",
                |c| c.heartbeat_interval = Duration::from_millis(400),
                "heartbeat interval",
            ),
            (
                "long lease",
                |c| c.lease = Duration::from_millis(715),
                "lease",
            ),
            (
                "budget too big",
                |c| c.stop_budget = Duration::from_millis(960),
                "unsafe",
            ),
        ];
        for (name, edit, needle) in cases {
            let mut config = base();
            edit(&mut config);
            let err = config.validate().expect_err(name).to_string();
            assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
        }
    }
}
