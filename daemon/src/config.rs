//! The daemon's TOML configuration: parsing, defaults and validation.
//!
//! Every error names the file, the key (and the line, when the parser knows it) and what to
//! do. Unknown keys are errors, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clustd_core::{Config as CoreConfig, NodeId};
use clustd_transport::{NodeKey, PublicKey, Secret, TransportKind};
use serde::Deserialize;

pub mod write;

/// Where `clustd status` and the other admin commands look for the config when not given
/// `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/clustd/clustd.toml";

/// The admin socket's file name in `node.data_dir` when `admin.socket` is not set.
pub const ADMIN_SOCKET_FILE: &str = "admin.sock";

/// A configuration problem, with where it is and what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The config file (or `<inline>`).
    pub file: String,
    /// The dotted key path, e.g. `election.election_timeout_ms`, with the line when known.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// A warning that does not stop the daemon (e.g. a world-readable secret file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning(pub String);

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    node: RawNode,
    cluster: RawCluster,
    #[serde(default)]
    election: RawElection,
    #[serde(default)]
    admin: RawAdmin,
    /// `[[check]]` tables, kept as tables so that their errors can name the check
    /// (`check[1] (web).fall`) and an unknown key can be explained.
    #[serde(default)]
    check: Vec<toml::Table>,
    #[serde(default)]
    health: RawHealth,
    fence: Option<RawFence>,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    data_dir: PathBuf,
    #[serde(default)]
    witness: bool,
    #[serde(default)]
    maintenance: bool,
    key_file: Option<PathBuf>,
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default = "default_transport")]
    transport: TransportKind,
    listen: String,
    secret_file: Option<PathBuf>,
    secret: Option<String>,
    driver_secret_file: Option<PathBuf>,
    driver_secret: Option<String>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    driver_socket: Option<PathBuf>,
    driver_socket_mode: Option<String>,
    driver_socket_group: Option<String>,
}

fn default_transport() -> TransportKind {
    TransportKind::Quic
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: String,
    addr: String,
    key: Option<String>,
}

/// `[election]` as written: a key the file leaves out is `None`, so that an error can tell
/// a value the operator chose from a default (see [`Timings`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawElection {
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<[u64; 2]>,
    #[serde(default)]
    priority: u8,
    #[serde(default)]
    preempt: bool,
    max_clock_drift: Option<f64>,
    stop_budget_ms: Option<u64>,
    lease_ms: Option<u64>,
    driver_lease_margin_ms: Option<u64>,
}

const DEFAULT_HEARTBEAT_MS: u64 = 100;
const DEFAULT_ELECTION_TIMEOUT_MS: [u64; 2] = [1000, 2000];
const DEFAULT_MAX_CLOCK_DRIFT: f64 = 0.05;
const DEFAULT_STOP_BUDGET_MS: u64 = 200;
const DEFAULT_DRIVER_LEASE_MARGIN_MS: u64 = 20;
const DEFAULT_FENCE_TIMEOUT_MS: u64 = 150;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    socket_mode: Option<String>,
    #[serde(default)]
    socket_group: Option<String>,
    #[serde(default)]
    listen: Option<SocketAddr>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    metrics_open: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: Option<String>,
    exec: Option<String>,
    http: Option<String>,
    tcp: Option<String>,
    #[serde(default = "default_check_interval")]
    interval_ms: u64,
    #[serde(default = "default_check_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_fall")]
    fall: u32,
    #[serde(default = "default_rise")]
    rise: u32,
}

/// The keys a `[[check]]` may have, for the error on any other.
const CHECK_KEYS: [&str; 8] = [
    "name",
    "exec",
    "http",
    "tcp",
    "interval_ms",
    "timeout_ms",
    "fall",
    "rise",
];

fn default_check_interval() -> u64 {
    1000
}
fn default_check_timeout() -> u64 {
    2000
}
fn default_fall() -> u32 {
    3
}
fn default_rise() -> u32 {
    2
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    alone: Option<String>,
    min_master_ms: Option<u64>,
    start_failure_ms: Option<u64>,
    driver_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFence {
    command: Option<String>,
    #[serde(default)]
    kill_driver: bool,
    timeout_ms: Option<u64>,
    watchdog: Option<PathBuf>,
    watchdog_timeout_ms: Option<u64>,
}

/// `[fence]`: what the daemon does itself when a driver that may run the service has not
/// confirmed its stop by its lease end (a frozen or wedged driver, a failed stop): with
/// `kill_driver`, it SIGKILLs the driver's process tree; then it runs `command`
/// (`/bin/sh -c`, in its own process group, killed at `timeout`), so that the service is
/// dead by lease end plus the stop budget, when a new master may start. At least one of
/// the two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceSettings {
    /// `fence.command`, e.g. `systemctl kill --signal=SIGKILL myapp.service`.
    pub command: Option<String>,
    /// `fence.kill_driver`: SIGKILL the process tree of each such driver that connected
    /// over the local driver socket (known by the kernel's peer credentials), before the
    /// command if there is one.
    pub kill_driver: bool,
    /// `fence.timeout_ms`: at most `election.stop_budget_ms`. The daemon starts the command
    /// this long before the stop budget after the driver's lease end runs out.
    pub timeout: Duration,
}

/// The longest check name (names are metric labels and log fields).
pub const MAX_CHECK_NAME_LEN: usize = 64;

/// The name of the check a failed `start` creates (see [`crate::health`]); no `[[check]]`
/// may use it.
pub const START_CHECK_NAME: &str = "start";

/// What a `[[check]]` runs: exactly one of `exec`, `http`, `tcp`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckKind {
    /// `exec`: a shell command (run like the shell driver's scripts: `/bin/bash -c`, its
    /// own process group, killed at the timeout); healthy on exit status 0.
    Exec {
        /// The command line.
        command: String,
    },
    /// `http`: a GET of an `http://` or `https://` URL; healthy on a 2xx answer.
    /// Redirects are not followed (a 3xx is a failure).
    Http {
        /// The URL, validated.
        url: reqwest::Url,
    },
    /// `tcp`: healthy when a connection to `host:port` is accepted. The host may be a name
    /// (`localhost:5432`), resolved at every run.
    Tcp {
        /// `host:port` (`[v6]:port` for an IPv6 literal).
        addr: String,
    },
}

impl CheckKind {
    /// `"exec"`, `"http"` or `"tcp"`: the config key, shown in status.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Exec { .. } => "exec",
            Self::Http { .. } => "http",
            Self::Tcp { .. } => "tcp",
        }
    }
}

/// One validated `[[check]]`: all of them must pass for the node to be healthy (and so
/// eligible to be master).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// Unique; `A-Z a-z 0-9 . _ -`, at most [`MAX_CHECK_NAME_LEN`]; shown in status,
    /// metrics, logs and notifications.
    pub name: String,
    /// What it runs.
    pub kind: CheckKind,
    /// Pause between the end of one run and the start of the next (runs never overlap).
    pub interval: Duration,
    /// Time limit of one run; a run past it is a failure (an exec check's process group is
    /// killed).
    pub timeout: Duration,
    /// Consecutive failures that make a healthy check unhealthy (at least 1).
    pub fall: u32,
    /// Consecutive successes that make an unhealthy check healthy (at least 1). A check
    /// starts unhealthy, so a booting node is not eligible before every check passed
    /// `rise` times.
    pub rise: u32,
}

/// `[health]`: what health does to mastership. `health.alone` and `health.min_master_ms`
/// live in [`Settings::core`] (`alone`, `min_master`), which acts on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// `health.start_failure_ms`: how long a failed `start` keeps the node unhealthy (the
    /// `start` check), unless a later start succeeds first.
    pub start_failure: Duration,
    /// `health.driver_timeout_ms`: a connected driver silent this long (drivers say
    /// `Alive` every [`clustd_core::driver::DRIVER_ALIVE_INTERVAL`]) is not responding: the node is
    /// unhealthy (check `<driver>/responding`) until it is heard again.
    pub driver_timeout: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            start_failure: Duration::from_secs(60),
            driver_timeout: Duration::from_millis(1000),
        }
    }
}

/// Whether `name` may name a check: 1 to [`MAX_CHECK_NAME_LEN`] of `A-Z a-z 0-9 . _ -`.
/// (`/` is not among them: `<driver>/<check>` names the checks drivers report.)
pub fn is_valid_check_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHECK_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `addr` is `host:port` with a non-zero port: an IP address, `[v6]:port`, or a
/// name to resolve (`localhost:5432`).
fn is_valid_tcp_target(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return !addr.ends_with(":0");
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    port_ok && host_ok
}

/// Validates the `[[check]]` tables.
fn parse_checks(
    tables: &[toml::Table],
    file: &str,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Vec<CheckConfig>, ConfigError> {
    let mut checks: Vec<CheckConfig> = Vec::with_capacity(tables.len());
    for (i, table) in tables.iter().enumerate() {
        // Names the check by index, and by name once it has a usable one.
        let label = match table.get("name").and_then(toml::Value::as_str) {
            Some(name) if is_valid_check_name(name) => format!("check[{i}] ({name})"),
            _ => format!("check[{i}]"),
        };
        let err = |key: &str, message: String| ConfigError {
            file: file.to_string(),
            key: format!("{label}.{key}"),
            message,
        };
        if let Some(unknown) = table.keys().find(|k| !CHECK_KEYS.contains(&k.as_str())) {
            return Err(err(
                unknown,
                "unknown key: a check has exactly one of exec, http, tcp (what it runs), and name, interval_ms, timeout_ms, fall, rise".into(),
            ));
        }
        // Only known keys are left, so this is a wrong type; the path names the key.
        let raw: RawCheck = serde_path_to_error::deserialize(toml::Value::Table(table.clone()))
            .map_err(|e| {
                let key = e.path().to_string();
                err(&key, e.inner().message().trim().to_string())
            })?;
        let name = match raw.name {
            None => {
                return Err(err(
                    "name",
                    "missing: give every check a unique name (A-Z a-z 0-9 . _ -, at most 64), shown in status, metrics and logs".into(),
                ));
            }
            Some(name) if !is_valid_check_name(&name) => {
                let why = if name.contains('/') {
                    "names with `/` are reserved for the checks drivers report (`<driver>/<check>`)"
                } else {
                    "use 1 to 64 of A-Z a-z 0-9 . _ -"
                };
                return Err(err("name", format!("`{name}` is not a check name: {why}")));
            }
            Some(name) if name == START_CHECK_NAME => {
                return Err(err(
                    "name",
                    "`start` is reserved: it is the check a failed `start` creates (see health.start_failure_ms); choose another name".into(),
                ));
            }
            Some(name) => name,
        };
        if let Some(earlier) = checks.iter().position(|c| c.name == name) {
            return Err(err(
                "name",
                format!("`{name}` is also check[{earlier}]'s name: names must be unique"),
            ));
        }
        let kinds: Vec<&str> = [
            ("exec", raw.exec.is_some()),
            ("http", raw.http.is_some()),
            ("tcp", raw.tcp.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        let kind = match (raw.exec, raw.http, raw.tcp) {
            (Some(command), None, None) => {
                if command.trim().is_empty() {
                    return Err(err(
                        "exec",
                        "empty: give the command to run, e.g. \"curl -fsS http://127.0.0.1:8080/health\"".into(),
                    ));
                }
                CheckKind::Exec { command }
            }
            (None, Some(url), None) => {
                // The URL is not echoed: it may hold a password (`http://user:pass@...`).
                let parsed = reqwest::Url::parse(url.trim()).map_err(|e| {
                    err(
                        "http",
                        format!("not a URL ({e}): write e.g. \"http://127.0.0.1:8080/health\""),
                    )
                })?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                    return Err(err(
                        "http",
                        format!(
                            "not an http:// or https:// URL with a host (it is {}://...): write e.g. \"http://127.0.0.1:8080/health\"",
                            parsed.scheme()
                        ),
                    ));
                }
                CheckKind::Http { url: parsed }
            }
            (None, None, Some(addr)) => {
                let addr = addr.trim().to_string();
                if !is_valid_tcp_target(&addr) {
                    return Err(err(
                        "tcp",
                        format!(
                            "`{addr}` is not host:port: write e.g. \"127.0.0.1:5432\", \"localhost:5432\" or \"[::1]:5432\""
                        ),
                    ));
                }
                CheckKind::Tcp { addr }
            }
            (None, None, None) => {
                return Err(err(
                    "exec",
                    "missing: a check needs exactly one of exec (a command), http (a URL) or tcp (host:port)".into(),
                ));
            }
            _ => {
                return Err(err(
                    kinds[1],
                    format!(
                        "{} are all set: a check has exactly one of exec, http, tcp; make one check for each",
                        kinds.join(" and ")
                    ),
                ));
            }
        };
        for (key, value) in [
            ("interval_ms", raw.interval_ms),
            ("timeout_ms", raw.timeout_ms),
        ] {
            if value == 0 {
                return Err(err(key, "must be positive (milliseconds)".into()));
            }
        }
        for (key, value) in [("fall", raw.fall), ("rise", raw.rise)] {
            if value == 0 {
                return Err(err(
                    key,
                    format!(
                        "must be at least 1: the number of consecutive {} that make the check {}",
                        if key == "fall" {
                            "failures"
                        } else {
                            "successes"
                        },
                        if key == "fall" {
                            "unhealthy"
                        } else {
                            "healthy"
                        }
                    ),
                ));
            }
        }
        // The defaults (1000 and 2000) are such a pair, chosen so: no warning unless one
        // of the two is set.
        let timing_set = table.contains_key("interval_ms") || table.contains_key("timeout_ms");
        if timing_set && raw.timeout_ms > raw.interval_ms {
            warnings.push(ConfigWarning(format!(
                "{file}: {label}: timeout_ms ({}) is above interval_ms ({}): fine, runs never overlap (the next starts interval_ms after the previous ended), but a hanging check is then seen only every timeout_ms + interval_ms ({} ms)",
                raw.timeout_ms,
                raw.interval_ms,
                raw.timeout_ms + raw.interval_ms
            )));
        }
        checks.push(CheckConfig {
            name,
            kind,
            interval: Duration::from_millis(raw.interval_ms),
            timeout: Duration::from_millis(raw.timeout_ms),
            fall: raw.fall,
            rise: raw.rise,
        });
    }
    Ok(checks)
}

/// A key of the timing rule: the `[election]` timings, and the `[fence]` ones that must fit
/// inside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimingKey {
    Heartbeat,
    ElectionTimeout,
    Drift,
    StopBudget,
    Lease,
    Margin,
    FenceTimeout,
    WatchdogTimeout,
}

impl TimingKey {
    /// The dotted key, as errors name it.
    fn path(self) -> &'static str {
        match self {
            Self::Heartbeat => "election.heartbeat_ms",
            Self::ElectionTimeout => "election.election_timeout_ms",
            Self::Drift => "election.max_clock_drift",
            Self::StopBudget => "election.stop_budget_ms",
            Self::Lease => "election.lease_ms",
            Self::Margin => "election.driver_lease_margin_ms",
            Self::FenceTimeout => "fence.timeout_ms",
            Self::WatchdogTimeout => "fence.watchdog_timeout_ms",
        }
    }
}

/// The largest value the search for a fix tries (about 35 years in milliseconds).
const MAX_SEARCH_MS: u64 = 1 << 40;

/// The timing keys as numbers (defaults filled in) and which of them the file sets: the
/// one place that checks the timing rule, and that finds the values an error suggests, so
/// that a suggestion is always one the check accepts.
#[derive(Clone, Debug)]
struct Timings {
    heartbeat_ms: u64,
    election_timeout_ms: [u64; 2],
    max_clock_drift: f64,
    stop_budget_ms: u64,
    /// `None`: the longest safe lease.
    lease_ms: Option<u64>,
    driver_lease_margin_ms: u64,
    /// `fence.timeout_ms`, when a fence command or `kill_driver` has to fit in the stop budget.
    fence_timeout_ms: Option<u64>,
    /// `fence.watchdog_timeout_ms`, when `fence.watchdog` is set.
    watchdog_timeout_ms: Option<u64>,
    /// The keys the file sets; the others hold their defaults.
    set: Vec<TimingKey>,
}

/// The first timing rule a [`Timings`] breaks.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Broken {
    /// `max_clock_drift` is outside `[0, 0.5)`.
    Drift,
    /// `election_timeout_ms` is not `[min, max]` with `0 < min <= max`.
    TimeoutRange,
    /// `heartbeat_ms = 0`.
    HeartbeatZero,
    /// `lease_ms = 0`.
    LeaseZero,
    /// No lease (of 1 ms or more) is safe: the stop budget takes all of `ET_min/(1+ρ)`.
    NoSafeLease,
    /// `lease_ms` is above the longest safe lease.
    LeaseTooLong { max_safe: u64 },
    /// More than half the lease passes between heartbeats.
    HeartbeatTooLong { lease: u64 },
    /// The drivers' margin is not below the lease.
    Margin { lease: u64 },
    /// `fence.timeout_ms` is zero or longer than the stop budget.
    FenceTimeout,
    /// The watchdog would fire after lease end + stop budget, so it could never be fed.
    Watchdog { lease: u64, slack: u64 },
}

impl Broken {
    /// The key the rule is about, if it is about one key rather than a derived value.
    fn subject(self) -> Option<TimingKey> {
        Some(match self {
            Self::Drift => TimingKey::Drift,
            Self::TimeoutRange => TimingKey::ElectionTimeout,
            Self::HeartbeatZero | Self::HeartbeatTooLong { .. } => TimingKey::Heartbeat,
            Self::LeaseZero | Self::LeaseTooLong { .. } => TimingKey::Lease,
            Self::NoSafeLease => return None,
            Self::Margin { .. } => TimingKey::Margin,
            Self::FenceTimeout => TimingKey::FenceTimeout,
            Self::Watchdog { .. } => TimingKey::WatchdogTimeout,
        })
    }

    /// The keys that take part, the most likely culprit first.
    fn keys(self) -> &'static [TimingKey] {
        use TimingKey as K;
        match self {
            Self::Drift => &[K::Drift],
            Self::TimeoutRange => &[K::ElectionTimeout],
            Self::HeartbeatZero => &[K::Heartbeat],
            Self::LeaseZero => &[K::Lease],
            Self::NoSafeLease => &[K::ElectionTimeout, K::StopBudget, K::Drift],
            Self::LeaseTooLong { .. } => &[K::Lease, K::ElectionTimeout, K::StopBudget, K::Drift],
            Self::HeartbeatTooLong { .. } => &[
                K::Heartbeat,
                K::Lease,
                K::ElectionTimeout,
                K::StopBudget,
                K::Drift,
            ],
            Self::Margin { .. } => &[
                K::Margin,
                K::Lease,
                K::ElectionTimeout,
                K::StopBudget,
                K::Drift,
            ],
            Self::FenceTimeout => &[K::FenceTimeout, K::StopBudget],
            Self::Watchdog { .. } => &[
                K::WatchdogTimeout,
                K::Lease,
                K::ElectionTimeout,
                K::StopBudget,
                K::Heartbeat,
                K::Drift,
            ],
        }
    }
}

/// One change to a timing key, part of a suggested fix.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Change {
    /// A key in milliseconds (not `election_timeout_ms`) gets this value.
    Ms(TimingKey, u64),
    ElectionTimeout([u64; 2]),
    Drift(f64),
    /// `election.lease_ms` left out: the longest safe lease.
    DeriveLease,
}

impl Change {
    fn key(self) -> TimingKey {
        match self {
            Self::Ms(key, _) => key,
            Self::ElectionTimeout(_) => TimingKey::ElectionTimeout,
            Self::Drift(_) => TimingKey::Drift,
            Self::DeriveLease => TimingKey::Lease,
        }
    }

    /// As the error message writes it: `election.stop_budget_ms = 20`; `None` for
    /// [`Change::DeriveLease`], which removes a key.
    fn assignment(self) -> Option<String> {
        Some(match self {
            Self::Ms(key, ms) => format!("{} = {ms}", key.path()),
            Self::ElectionTimeout([min, max]) => format!("{} = [{min}, {max}]", self.key().path()),
            Self::Drift(rho) => format!("{} = {rho}", self.key().path()),
            Self::DeriveLease => return None,
        })
    }
}

/// A timing error: the key at fault, what is wrong and the fixes it offers (each one a set
/// of changes that [`Timings::check`] accepts).
#[derive(Debug)]
struct TimingError {
    key: TimingKey,
    message: String,
    /// What the message offers, as changes (the tests apply each one).
    #[cfg_attr(not(test), allow(dead_code))]
    fixes: Vec<Vec<Change>>,
}

/// The largest `v` in `lo..=hi` for which `ok(v)`, when `ok` holds from `lo` up to some
/// value and not beyond it. Whatever it returns passed `ok`.
fn largest(lo: u64, hi: u64, ok: impl Fn(u64) -> bool) -> Option<u64> {
    if lo > hi || !ok(lo) {
        return None;
    }
    if ok(hi) {
        return Some(hi);
    }
    let (mut good, mut bad) = (lo, hi);
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if ok(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

/// The smallest `v` in `lo..=hi` for which `ok(v)`, when `ok` fails below some value and
/// holds from it up to `hi`. Whatever it returns passed `ok`.
fn smallest(lo: u64, hi: u64, ok: impl Fn(u64) -> bool) -> Option<u64> {
    if lo > hi || !ok(hi) {
        return None;
    }
    if ok(lo) {
        return Some(lo);
    }
    let (mut bad, mut good) = (lo, hi);
    while good - bad > 1 {
        let mid = bad + (good - bad) / 2;
        if ok(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

/// `12.3` for a number of milliseconds that need not be whole.
fn fractional_ms(ms: f64) -> String {
    let text = format!("{ms:.1}");
    text.strip_suffix(".0").unwrap_or(&text).to_owned()
}

impl Timings {
    /// The timings of `[election]` and `[fence]` as written.
    fn from_raw(e: &RawElection, fence: Option<&RawFence>) -> Self {
        use TimingKey as K;
        let fence_runs = fence.filter(|f| f.command.is_some() || f.kill_driver);
        let watchdog = fence.filter(|f| f.watchdog.is_some());
        let set = [
            (K::Heartbeat, e.heartbeat_ms.is_some()),
            (K::ElectionTimeout, e.election_timeout_ms.is_some()),
            (K::Drift, e.max_clock_drift.is_some()),
            (K::StopBudget, e.stop_budget_ms.is_some()),
            (K::Lease, e.lease_ms.is_some()),
            (K::Margin, e.driver_lease_margin_ms.is_some()),
            (
                K::FenceTimeout,
                fence_runs.is_some_and(|f| f.timeout_ms.is_some()),
            ),
            (
                K::WatchdogTimeout,
                watchdog.is_some_and(|f| f.watchdog_timeout_ms.is_some()),
            ),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        Self {
            heartbeat_ms: e.heartbeat_ms.unwrap_or(DEFAULT_HEARTBEAT_MS),
            election_timeout_ms: e.election_timeout_ms.unwrap_or(DEFAULT_ELECTION_TIMEOUT_MS),
            max_clock_drift: e.max_clock_drift.unwrap_or(DEFAULT_MAX_CLOCK_DRIFT),
            stop_budget_ms: e.stop_budget_ms.unwrap_or(DEFAULT_STOP_BUDGET_MS),
            lease_ms: e.lease_ms,
            driver_lease_margin_ms: e
                .driver_lease_margin_ms
                .unwrap_or(DEFAULT_DRIVER_LEASE_MARGIN_MS),
            fence_timeout_ms: fence_runs.map(|f| f.timeout_ms.unwrap_or(DEFAULT_FENCE_TIMEOUT_MS)),
            watchdog_timeout_ms: watchdog.and_then(|f| f.watchdog_timeout_ms),
            set,
        }
    }

    fn is_set(&self, key: TimingKey) -> bool {
        self.set.contains(&key)
    }

    /// The longest safe lease for the election timeout, stop budget and drift, in ms.
    fn max_safe_lease(&self) -> Option<u64> {
        CoreConfig::safe_lease_for(
            Duration::from_millis(self.election_timeout_ms[0]),
            Duration::from_millis(self.stop_budget_ms),
            self.max_clock_drift,
        )
        .map(|lease| u64::try_from(lease.as_millis()).unwrap_or(u64::MAX))
    }

    /// The lease (ms) these timings give, or the first rule they break. The rule of
    /// [`clustd_core::config`], `lease/(1-ρ) + stop_budget <= ET_min/(1+ρ)`, and what the
    /// daemon adds: two heartbeats per lease, the drivers' margin below it, the fence inside
    /// the stop budget, a watchdog that fires by lease end + stop budget.
    fn check(&self) -> Result<u64, Broken> {
        let [min, max] = self.election_timeout_ms;
        if !(0.0..0.5).contains(&self.max_clock_drift) {
            return Err(Broken::Drift);
        }
        if min == 0 || max < min {
            return Err(Broken::TimeoutRange);
        }
        if self.heartbeat_ms == 0 {
            return Err(Broken::HeartbeatZero);
        }
        if self.lease_ms == Some(0) {
            return Err(Broken::LeaseZero);
        }
        let max_safe = self.max_safe_lease().ok_or(Broken::NoSafeLease)?;
        let lease = self.lease_ms.unwrap_or(max_safe);
        if lease > max_safe {
            return Err(Broken::LeaseTooLong { max_safe });
        }
        if self.heartbeat_ms.saturating_mul(2) > lease {
            return Err(Broken::HeartbeatTooLong { lease });
        }
        if self.driver_lease_margin_ms >= lease {
            return Err(Broken::Margin { lease });
        }
        if let Some(timeout) = self.fence_timeout_ms
            && (timeout == 0 || timeout > self.stop_budget_ms)
        {
            return Err(Broken::FenceTimeout);
        }
        if let Some(timeout) = self.watchdog_timeout_ms {
            // Fed only while `now + timeout <= lease end + stop budget`. The lease runs
            // from a heartbeat's send time, so what is left at its acknowledgement is the
            // lease minus the round trip: leave a quarter of the lease (at least two
            // heartbeats) for round trips and the feeding cadence.
            let slack = self.heartbeat_ms.saturating_mul(2).max(lease / 4);
            let room = lease.saturating_add(self.stop_budget_ms);
            if timeout == 0 || timeout.saturating_add(slack) > room {
                return Err(Broken::Watchdog { lease, slack });
            }
        }
        Ok(lease)
    }

    /// These timings with `changes` made.
    fn with(&self, changes: &[Change]) -> Self {
        let mut t = self.clone();
        for change in changes {
            match *change {
                Change::Ms(key, ms) => match key {
                    TimingKey::Heartbeat => t.heartbeat_ms = ms,
                    TimingKey::StopBudget => t.stop_budget_ms = ms,
                    TimingKey::Lease => t.lease_ms = Some(ms),
                    TimingKey::Margin => t.driver_lease_margin_ms = ms,
                    TimingKey::FenceTimeout => t.fence_timeout_ms = Some(ms),
                    TimingKey::WatchdogTimeout => t.watchdog_timeout_ms = Some(ms),
                    TimingKey::ElectionTimeout | TimingKey::Drift => {}
                },
                Change::ElectionTimeout(range) => t.election_timeout_ms = range,
                Change::Drift(rho) => t.max_clock_drift = rho,
                Change::DeriveLease => t.lease_ms = None,
            }
        }
        t
    }

    /// The lease after `changes`, if the timings then pass.
    fn works(&self, changes: &[Change]) -> Option<u64> {
        self.with(changes).check().ok()
    }

    /// `key` at the largest value in `lo..=hi` that passes.
    fn shorter(&self, key: TimingKey, lo: u64, hi: u64) -> Option<Vec<Change>> {
        let fix = |ms| vec![Change::Ms(key, ms)];
        largest(lo, hi, |ms| self.works(&fix(ms)).is_some()).map(fix)
    }

    /// `key` at the smallest value in `lo..=hi` that passes.
    fn longer(&self, key: TimingKey, lo: u64, hi: u64) -> Option<Vec<Change>> {
        let fix = |ms| vec![Change::Ms(key, ms)];
        smallest(lo, hi, |ms| self.works(&fix(ms)).is_some()).map(fix)
    }

    /// The shortest minimum election timeout from `from` on that passes, with the maximum
    /// kept unless it would be below the minimum (then twice the minimum).
    fn longer_election_timeout(&self, from: u64) -> Option<Vec<Change>> {
        let max = self.election_timeout_ms[1];
        let fix = |min: u64| {
            let max = if max >= min {
                max
            } else {
                min.saturating_mul(2)
            };
            vec![Change::ElectionTimeout([min, max])]
        };
        smallest(from.max(1), MAX_SEARCH_MS, |min| {
            self.works(&fix(min)).is_some()
        })
        .map(fix)
    }

    /// Fixes that lengthen the lease: a longer `lease_ms` when it is set, else a longer
    /// election timeout or a shorter stop budget (the lease is derived from them).
    fn longer_lease(&self) -> Vec<Vec<Change>> {
        match self.lease_ms {
            Some(lease) => {
                let max = self.max_safe_lease().unwrap_or(0);
                self.longer(TimingKey::Lease, lease.saturating_add(1), max)
                    .into_iter()
                    .collect()
            }
            None => [
                self.longer_election_timeout(self.election_timeout_ms[0].saturating_add(1)),
                self.shorter_stop_budget(),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }

    /// The longest stop budget below the current one that passes (never below the fence's
    /// timeout, which must fit in it).
    fn shorter_stop_budget(&self) -> Option<Vec<Change>> {
        let floor = self.fence_timeout_ms.unwrap_or(0);
        self.shorter(
            TimingKey::StopBudget,
            floor,
            self.stop_budget_ms.checked_sub(1)?,
        )
    }

    /// Changes that repair `broken`, each accepted by [`Timings::check`].
    fn fixes(&self, broken: Broken) -> Vec<Vec<Change>> {
        use TimingKey as K;
        let [min, max] = self.election_timeout_ms;
        let mut fixes: Vec<Vec<Change>> = match broken {
            Broken::Drift => vec![vec![Change::Drift(DEFAULT_MAX_CLOCK_DRIFT)]],
            Broken::TimeoutRange => {
                let swapped = vec![Change::ElectionTimeout([max, min])];
                if max > 0 && max < min && self.works(&swapped).is_some() {
                    vec![swapped]
                } else {
                    self.longer_election_timeout(1).into_iter().collect()
                }
            }
            Broken::HeartbeatZero => self
                .shorter(K::Heartbeat, 1, DEFAULT_HEARTBEAT_MS)
                .into_iter()
                .collect(),
            Broken::LeaseZero => vec![vec![Change::DeriveLease]],
            Broken::NoSafeLease => {
                let budget = self.shorter_stop_budget();
                // When the stop budget alone cannot help (two heartbeats do not fit what
                // is left), the defaults' proportions for this election timeout do.
                let scaled = if budget.is_none() {
                    self.scaled_to_election_timeout(min)
                } else {
                    None
                };
                [
                    self.longer_election_timeout(min.saturating_add(1)),
                    budget,
                    scaled,
                ]
                .into_iter()
                .flatten()
                .collect()
            }
            Broken::LeaseTooLong { max_safe } => [
                Some(vec![Change::Ms(K::Lease, max_safe)]),
                self.longer_election_timeout(min.saturating_add(1)),
                self.shorter_stop_budget(),
            ]
            .into_iter()
            .flatten()
            .collect(),
            Broken::HeartbeatTooLong { .. } => {
                let mut fixes: Vec<_> = self
                    .shorter(K::Heartbeat, 1, self.heartbeat_ms - 1)
                    .into_iter()
                    .collect();
                fixes.extend(self.longer_lease());
                fixes
            }
            Broken::Margin { lease } => {
                let margin = self.driver_lease_margin_ms;
                let hi = (margin.saturating_sub(1))
                    .min(DEFAULT_DRIVER_LEASE_MARGIN_MS)
                    .min(lease / 2);
                let mut fixes: Vec<_> = self.shorter(K::Margin, 0, hi).into_iter().collect();
                fixes.extend(self.longer_lease());
                fixes
            }
            Broken::FenceTimeout => {
                let timeout = self.fence_timeout_ms.unwrap_or(0);
                let mut fixes: Vec<_> = self
                    .shorter(K::FenceTimeout, 1, self.stop_budget_ms)
                    .into_iter()
                    .collect();
                let budget = Change::Ms(K::StopBudget, timeout);
                if timeout > 0 {
                    if self.works(&[budget]).is_some() {
                        fixes.push(vec![budget]);
                    } else if let Some(mut et) = self
                        .with(&[budget])
                        .longer_election_timeout(min.saturating_add(1))
                    {
                        et.insert(0, budget);
                        fixes.push(et);
                    }
                }
                fixes
            }
            Broken::Watchdog { .. } => {
                let timeout = self.watchdog_timeout_ms.unwrap_or(0);
                let mut fixes: Vec<_> = self
                    .shorter(K::WatchdogTimeout, 1, timeout.saturating_sub(1))
                    .into_iter()
                    .collect();
                fixes.extend(self.longer_lease());
                fixes
            }
        };
        fixes.retain(|fix| self.works(fix).is_some());
        if fixes.is_empty() {
            // More than one key is off: scale the others to the election timeout (or, if
            // even that fails, to the default one).
            let own = (min > 0 && min <= max).then_some(min);
            fixes.extend(
                own.into_iter()
                    .chain([DEFAULT_ELECTION_TIMEOUT_MS[0]])
                    .find_map(|min| self.scaled_to_election_timeout(min)),
            );
        }
        fixes
    }

    /// The defaults' proportions for a minimum election timeout of `min` ms (the defaults
    /// for 1000; stop budget 20 and heartbeat 10 for 100): a stop budget of `min/5`, a
    /// heartbeat of `min/10` (or the current one, if shorter), the longest safe lease, and
    /// the drivers' margin, fence and watchdog timeouts brought inside it, when they are
    /// not already. Only the keys that change are in it, and only if the result passes.
    fn scaled_to_election_timeout(&self, min: u64) -> Option<Vec<Change>> {
        use TimingKey as K;
        let mut changes = Vec::new();
        let [own_min, own_max] = self.election_timeout_ms;
        if own_min != min || own_max < min {
            changes.push(Change::ElectionTimeout([min, min.saturating_mul(2)]));
        }
        if !(0.0..0.5).contains(&self.max_clock_drift) {
            changes.push(Change::Drift(DEFAULT_MAX_CLOCK_DRIFT));
        }
        let budget = min / 5;
        if budget != self.stop_budget_ms {
            changes.push(Change::Ms(K::StopBudget, budget));
        }
        let heartbeat = (min / 10).clamp(1, self.heartbeat_ms.max(1));
        if heartbeat != self.heartbeat_ms {
            changes.push(Change::Ms(K::Heartbeat, heartbeat));
        }
        if self.lease_ms.is_some() {
            changes.push(Change::DeriveLease);
        }
        let scaled = self.with(&changes);
        let lease = scaled.max_safe_lease()?;
        if scaled.driver_lease_margin_ms >= lease {
            let margin = DEFAULT_DRIVER_LEASE_MARGIN_MS.min(lease / 2);
            changes.push(Change::Ms(K::Margin, margin));
        }
        if scaled
            .fence_timeout_ms
            .is_some_and(|t| t == 0 || t > budget)
        {
            changes.push(Change::Ms(K::FenceTimeout, budget));
        }
        if let Some(timeout) = scaled.watchdog_timeout_ms {
            let slack = heartbeat.saturating_mul(2).max(lease / 4);
            let most = lease.saturating_add(budget).saturating_sub(slack);
            if timeout == 0 || timeout > most {
                changes.push(Change::Ms(K::WatchdogTimeout, most));
            }
        }
        (!changes.is_empty() && self.works(&changes).is_some()).then_some(changes)
    }

    /// The key to blame: the one the rule is about if changing it helps; else (a derived
    /// lease, or a rule no change of its own key repairs) a key the file sets and whose
    /// change helps, or at least one the file sets.
    fn blame(&self, broken: Broken, fixes: &[Vec<Change>]) -> TimingKey {
        let fixed = |key: TimingKey| fixes.iter().any(|fix| fix[0].key() == key);
        if let Some(subject) = broken.subject()
            && fixed(subject)
        {
            return subject;
        }
        let keys = broken.keys();
        keys.iter()
            .copied()
            .find(|&key| self.is_set(key) && fixed(key))
            .or_else(|| keys.iter().copied().find(|&key| self.is_set(key)))
            .or_else(|| fixes.first().map(|fix| fix[0].key()))
            .unwrap_or(keys[0])
    }

    /// `key`'s value as written in the file: `200`, `[100, 200]`, `0.05`.
    fn value(&self, key: TimingKey) -> String {
        let ms = match key {
            TimingKey::ElectionTimeout => {
                let [min, max] = self.election_timeout_ms;
                return format!("[{min}, {max}]");
            }
            TimingKey::Drift => return self.max_clock_drift.to_string(),
            TimingKey::Heartbeat => self.heartbeat_ms,
            TimingKey::StopBudget => self.stop_budget_ms,
            TimingKey::Lease => match self.lease_ms {
                Some(ms) => ms,
                None => return "(the longest safe lease)".to_owned(),
            },
            TimingKey::Margin => self.driver_lease_margin_ms,
            TimingKey::FenceTimeout => self.fence_timeout_ms.unwrap_or(DEFAULT_FENCE_TIMEOUT_MS),
            TimingKey::WatchdogTimeout => self.watchdog_timeout_ms.unwrap_or(0),
        };
        ms.to_string()
    }

    /// `key`'s value with its unit, and `(the default)` when the file leaves it out.
    fn shown(&self, key: TimingKey) -> String {
        let value = match key {
            TimingKey::ElectionTimeout | TimingKey::Drift => self.value(key),
            TimingKey::Lease if self.lease_ms.is_none() => self.value(key),
            _ => format!("{} ms", self.value(key)),
        };
        if self.is_set(key) {
            value
        } else {
            format!("{value} (the default)")
        }
    }

    /// `election.stop_budget_ms = 200 (the default) and election.max_clock_drift = 0.05`:
    /// the keys other than `skip`.
    fn context(&self, keys: &[TimingKey], skip: TimingKey) -> String {
        let parts: Vec<String> = keys
            .iter()
            .filter(|&&key| key != skip)
            .map(|&key| {
                let default = if self.is_set(key) {
                    ""
                } else {
                    " (the default)"
                };
                format!("{} = {}{default}", key.path(), self.value(key))
            })
            .collect();
        match parts.split_last() {
            None => String::new(),
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        }
    }

    /// Where the lease comes from, for messages: `election.lease_ms`, or the inputs of the
    /// derived one.
    fn lease_origin(&self, skip: TimingKey) -> String {
        use TimingKey as K;
        if self.lease_ms.is_some() {
            return "election.lease_ms".to_owned();
        }
        let inputs = self.context(&[K::ElectionTimeout, K::StopBudget, K::Drift], skip);
        format!("the longest safe lease for {inputs}")
    }

    /// `set election.stop_budget_ms = 20 and election.heartbeat_ms = 10 (lease 71 ms)`: the
    /// resulting lease is shown when the fix changes it without naming it.
    fn render_fix(&self, fix: &[Change]) -> String {
        use TimingKey as K;
        let sets: Vec<String> = fix.iter().filter_map(|c| c.assignment()).collect();
        let mut text = if sets.is_empty() {
            String::new()
        } else {
            format!("set {}", sets.join(" and "))
        };
        if fix.contains(&Change::DeriveLease) {
            if !text.is_empty() {
                text.push_str(", and ");
            }
            text.push_str("remove election.lease_ms");
        }
        let lease_set = fix.iter().any(|c| matches!(c, Change::Ms(K::Lease, _)));
        let lease_changes = fix.iter().any(|c| {
            matches!(
                c.key(),
                K::ElectionTimeout | K::StopBudget | K::Drift | K::Lease
            )
        });
        if let Some(lease) = self.works(fix)
            && lease_changes
            && !lease_set
        {
            text.push_str(&format!(" (lease {lease} ms)"));
        }
        text
    }

    /// The error for the first rule these timings break, if any: the key at fault, what is
    /// wrong (with the values), and values that work.
    fn diagnose(&self) -> Option<TimingError> {
        use TimingKey as K;
        const RULE: &str = "lease/(1-drift) + stop_budget <= election_timeout_min/(1+drift)";
        let broken = self.check().err()?;
        let mut fixes = self.fixes(broken);
        let key = self.blame(broken, &fixes);
        // The blamed key's own fix first.
        fixes.sort_by_key(|fix| fix[0].key() != key);
        let is_subject = broken.subject() == Some(key);
        let verb = match broken {
            Broken::Drift => "is out of range".to_owned(),
            Broken::TimeoutRange => "is not a range".to_owned(),
            Broken::HeartbeatZero => "is no heartbeat interval".to_owned(),
            Broken::LeaseZero => "is no lease".to_owned(),
            Broken::NoSafeLease => "leaves no safe lease".to_owned(),
            Broken::LeaseTooLong { .. } if is_subject => "is unsafe".to_owned(),
            Broken::LeaseTooLong { .. } => {
                format!("makes election.lease_ms = {} unsafe", self.value(K::Lease))
            }
            Broken::HeartbeatTooLong { .. } if is_subject => {
                "is more than half the lease".to_owned()
            }
            Broken::Margin { .. } if is_subject => "is not below the lease".to_owned(),
            Broken::FenceTimeout if is_subject => {
                "does not fit inside election.stop_budget_ms".to_owned()
            }
            Broken::FenceTimeout => "is shorter than fence.timeout_ms".to_owned(),
            Broken::Watchdog { .. } if is_subject => {
                "fires too late for the lease inequality".to_owned()
            }
            Broken::HeartbeatTooLong { .. } | Broken::Margin { .. } | Broken::Watchdog { .. }
                if key == K::Lease =>
            {
                "is too short".to_owned()
            }
            Broken::HeartbeatTooLong { .. } | Broken::Margin { .. } | Broken::Watchdog { .. } => {
                "makes the lease too short".to_owned()
            }
        };
        let detail = match broken {
            Broken::Drift => {
                "max_clock_drift must be at least 0 and below 0.5 (a rate: 0.05 is 5 %)".to_owned()
            }
            Broken::TimeoutRange => "write [min, max] with 0 < min <= max".to_owned(),
            Broken::HeartbeatZero => "heartbeat_ms must be positive".to_owned(),
            Broken::LeaseZero => match self.works(&[Change::DeriveLease]) {
                Some(lease) => format!(
                    "leave the key out for the longest safe lease ({lease} ms with these timings)"
                ),
                None => "leave the key out for the longest safe lease".to_owned(),
            },
            Broken::NoSafeLease => {
                let limit = self.election_timeout_ms[0] as f64 / (1.0 + self.max_clock_drift);
                format!(
                    "the rule {RULE} needs the stop budget below election_timeout_min/(1+drift) = {} ms, so with {} every lease is unsafe",
                    fractional_ms(limit),
                    self.context(&[K::ElectionTimeout, K::StopBudget, K::Drift], key)
                )
            }
            Broken::LeaseTooLong { max_safe } => format!(
                "the rule {RULE} allows at most {max_safe} ms with {}",
                self.context(&[K::ElectionTimeout, K::StopBudget, K::Drift], key)
            ),
            Broken::HeartbeatTooLong { lease } => {
                let heartbeat = if key == K::Heartbeat {
                    String::new()
                } else {
                    format!(" and {}", self.context(&[K::Heartbeat], key))
                };
                format!(
                    "the lease is {lease} ms ({}){heartbeat}, and election.heartbeat_ms must be at most half the lease, so that every lease is renewed before it ends",
                    self.lease_origin(key)
                )
            }
            Broken::Margin { lease } => format!(
                "election.driver_lease_margin_ms must be below the lease ({lease} ms, {}): it is a safety margin taken off the lease drivers are given (they count it from the daemon's send time)",
                self.lease_origin(key)
            ),
            Broken::FenceTimeout => format!(
                "the fence must have killed the service by lease end plus the stop budget, when a new master may start, so fence.timeout_ms ({} ms) must be above 0 and at most election.stop_budget_ms ({} ms)",
                self.value(K::FenceTimeout),
                self.stop_budget_ms
            ),
            Broken::Watchdog { lease, slack } => {
                let room = lease.saturating_add(self.stop_budget_ms);
                format!(
                    "a watchdog must reset this machine by lease end + stop budget ({lease} + {} ms; the lease is {}), before a new master may start, so it is fed only while that much is left, and {slack} ms of that is kept for round trips: fence.watchdog_timeout_ms may be at most {}",
                    self.stop_budget_ms,
                    self.lease_origin(key),
                    room.saturating_sub(slack)
                )
            }
        };
        let offers: Vec<String> = fixes.iter().map(|fix| self.render_fix(fix)).collect();
        let offer = if offers.is_empty() {
            String::new()
        } else {
            format!(". Fix: {}", offers.join("; or "))
        };
        Some(TimingError {
            key,
            message: format!("{} {verb}: {detail}{offer}", self.shown(key)),
            fixes,
        })
    }
}

/// A validated daemon configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node.
    pub id: NodeId,
    /// Where `(term, vote)` is kept.
    pub data_dir: PathBuf,
    /// QUIC or WebSocket.
    pub transport: TransportKind,
    /// Cluster listen address (peers and drivers).
    pub listen: SocketAddr,
    /// The cluster secret.
    pub secret: Secret,
    /// This node's key pair (`node.key_file`), proven to peers in every handshake.
    pub node_key: Option<NodeKey>,
    /// The credential drivers prove (`cluster.driver_secret_file`); `None`: the cluster
    /// secret (drivers then hold the cluster's secret).
    pub driver_secret: Option<Secret>,
    /// The other voters and their addresses, by id.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The public key each peer must prove (`cluster.peers[].key`).
    pub peer_keys: BTreeMap<NodeId, PublicKey>,
    /// Certificate and key for `wss://`.
    pub tls: Option<clustd_transport::TlsFiles>,
    /// The local driver socket (`cluster.driver_socket`, default `<data_dir>/driver.sock`;
    /// `""` turns it off): local drivers connect there without a secret.
    pub driver_socket: Option<clustd_transport::LocalSocket>,
    /// The election core's settings (timings, priority, witness...).
    pub core: CoreConfig,
    /// A safety margin subtracted from the remaining lease sent to drivers, so a driver's
    /// lease always ends before the daemon's own. Not a delivery estimate: drivers count
    /// their lease from the daemon's send time (`sent_at_ns`, the machine's monotonic
    /// clock), so delivery time is already accounted for.
    pub driver_lease_margin: Duration,
    /// `[admin]`: where the admin API is served and who may use it.
    pub admin: AdminSettings,
    /// `[[check]]`: the node is healthy only while all of them pass.
    pub checks: Vec<CheckConfig>,
    /// `[health]` (its `alone` and `min_master_ms` are in [`Settings::core`]).
    pub health: HealthSettings,
    /// `[fence]` command, if configured.
    pub fence: Option<FenceSettings>,
    /// `[fence] watchdog`, if configured.
    pub watchdog: Option<crate::watchdog::WatchdogSettings>,
    /// The transport's limits and timers. Not in the config file: the timers follow the
    /// election timing ([`transport_limits`]), the rest suits a LAN cluster; tests shrink
    /// them, e.g. the unauthenticated-connection pool.
    pub transport_limits: clustd_transport::Limits,
    /// `node.maintenance`: start in maintenance mode (and, on `clustd reload`, turn it on
    /// or off when the file's value changed).
    pub maintenance: bool,
    /// The file these settings were read from (what `clustd reload` and `SIGHUP` re-read).
    pub source: Option<PathBuf>,
    /// `log.level`: the log filter (`info`, `debug`, `info,clustd::service=debug`); `RUST_LOG`
    /// overrides it when set.
    pub log_level: Option<String>,
}

impl Settings {
    /// Reads and validates a config file. Warnings are returned beside the settings.
    pub fn load(path: &Path) -> Result<(Self, Vec<ConfigWarning>), ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            message: format!("cannot read the config file: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (mut settings, warnings) = Self::parse(&text, &file, base)?;
        settings.source = Some(path.to_path_buf());
        Ok((settings, warnings))
    }

    /// What `clustd reload` would change, checked against the running settings: one line
    /// per changed key, or the keys that cannot change without a restart, or a timing that
    /// is not safe to change while other nodes still run the old one. Nothing is applied
    /// unless all of it can be.
    pub fn reload_changes(&self, new: &Settings) -> Result<Vec<String>, String> {
        let mut fixed = Vec::new();
        let mut need = |changed: bool, key: &str| {
            if changed {
                fixed.push(key.to_owned());
            }
        };
        need(self.id != new.id, "node.id");
        need(self.data_dir != new.data_dir, "node.data_dir");
        need(self.core.witness != new.core.witness, "node.witness");
        need(
            self.node_key.as_ref().map(NodeKey::public)
                != new.node_key.as_ref().map(NodeKey::public),
            "node.key_file",
        );
        need(self.transport != new.transport, "cluster.transport");
        need(self.listen != new.listen, "cluster.listen");
        need(!self.secret.same_bytes(&new.secret), "cluster.secret_file");
        need(
            match (&self.driver_secret, &new.driver_secret) {
                (Some(a), Some(b)) => !a.same_bytes(b),
                (None, None) => false,
                _ => true,
            },
            "cluster.driver_secret_file",
        );
        need(
            self.tls != new.tls,
            "cluster.tls_cert_file / cluster.tls_key_file",
        );
        need(
            self.driver_socket != new.driver_socket,
            "cluster.driver_socket",
        );
        need(
            self.admin.socket != new.admin.socket
                || self.admin.listen != new.admin.listen
                || self.admin.metrics_open != new.admin.metrics_open
                || match (&self.admin.token, &new.admin.token) {
                    (Some(a), Some(b)) => !a.same_as(b),
                    (None, None) => false,
                    _ => true,
                },
            "[admin]",
        );
        need(
            self.fence != new.fence || self.watchdog != new.watchdog,
            "[fence]",
        );
        if self.peers != new.peers || self.peer_keys != new.peer_keys {
            return Err(
                "cluster.peers changed: a reload cannot change the peer set (membership change is later work); the old config keeps running. To change it, stop every node, edit every node's cluster.peers alike, and start them again"
                    .into(),
            );
        }
        if !fixed.is_empty() {
            return Err(format!(
                "{} changed, which a reload cannot apply (restart the daemon for it); the old config keeps running",
                fixed.join(", ")
            ));
        }
        let (a, b) = (&self.core, &new.core);
        // Another node may still run the old timings: a longer lease, or a shorter election
        // timeout, stop budget or drift bound here could let a peer time out a master whose
        // lease is still valid.
        let ms = |d: Duration| d.as_millis();
        if b.lease > a.lease {
            return Err(format!(
                "election.lease_ms: {} ms is longer than the running {} ms; a reload only shortens the lease (a peer still on the old timings could time the master out while its lease runs). Set election.lease_ms = {} to keep it (a longer election timeout alone lengthens the derived lease), or stop every node and start them with the new timings",
                ms(b.lease),
                ms(a.lease),
                ms(a.lease)
            ));
        }
        if b.election_timeout_min < a.election_timeout_min {
            return Err(format!(
                "election.election_timeout_ms: a minimum of {} ms is below the running {} ms; a reload only lengthens the election timeout (a master elsewhere holds a lease sized for the old one). Stop every node and start them with the new timings",
                ms(b.election_timeout_min),
                ms(a.election_timeout_min)
            ));
        }
        if b.stop_budget < a.stop_budget {
            return Err(format!(
                "election.stop_budget_ms: {} ms is below the running {} ms; a reload only lengthens the stop budget (a stop already under way was promised the old one)",
                ms(b.stop_budget),
                ms(a.stop_budget)
            ));
        }
        if b.max_clock_drift < a.max_clock_drift {
            return Err(format!(
                "election.max_clock_drift: {} is below the running {}; a reload only widens the drift bound",
                b.max_clock_drift, a.max_clock_drift
            ));
        }
        // And across the two: until every node has reloaded, a master on the new timings is
        // timed out by a peer on the old ones, so the new lease and stop budget must fit the
        // old election timeout (the old lease fits the new, longer one already).
        let rho = a.max_clock_drift.max(b.max_clock_drift);
        let fits = CoreConfig::safe_lease_for(a.election_timeout_min, b.stop_budget, rho)
            .is_some_and(|max| b.lease <= max);
        if !fits {
            return Err(format!(
                "election.stop_budget_ms / election.lease_ms: a {} ms lease with a {} ms stop budget does not fit the election timeout the other nodes still run ({} ms minimum) while they have not reloaded; reload in two steps: first a longer election.election_timeout_ms on every node, then the longer stop budget",
                ms(b.lease),
                ms(b.stop_budget),
                ms(a.election_timeout_min)
            ));
        }
        let mut changes = Vec::new();
        let mut changed = |differs: bool, key: &str, from: String, to: String| {
            if differs {
                changes.push(format!("{key}: {from} -> {to}"));
            }
        };
        changed(
            a.priority != b.priority,
            "election.priority",
            a.priority.to_string(),
            b.priority.to_string(),
        );
        changed(
            a.preempt != b.preempt,
            "election.preempt",
            a.preempt.to_string(),
            b.preempt.to_string(),
        );
        changed(
            a.heartbeat_interval != b.heartbeat_interval,
            "election.heartbeat_ms",
            ms(a.heartbeat_interval).to_string(),
            ms(b.heartbeat_interval).to_string(),
        );
        changed(
            (a.election_timeout_min, a.election_timeout_max)
                != (b.election_timeout_min, b.election_timeout_max),
            "election.election_timeout_ms",
            format!(
                "[{}, {}]",
                ms(a.election_timeout_min),
                ms(a.election_timeout_max)
            ),
            format!(
                "[{}, {}]",
                ms(b.election_timeout_min),
                ms(b.election_timeout_max)
            ),
        );
        changed(
            a.lease != b.lease,
            "election.lease_ms",
            ms(a.lease).to_string(),
            ms(b.lease).to_string(),
        );
        changed(
            a.stop_budget != b.stop_budget,
            "election.stop_budget_ms",
            ms(a.stop_budget).to_string(),
            ms(b.stop_budget).to_string(),
        );
        changed(
            a.max_clock_drift != b.max_clock_drift,
            "election.max_clock_drift",
            a.max_clock_drift.to_string(),
            b.max_clock_drift.to_string(),
        );
        changed(
            a.alone != b.alone,
            "health.alone",
            a.alone.as_str().into(),
            b.alone.as_str().into(),
        );
        changed(
            a.min_master != b.min_master,
            "health.min_master_ms",
            ms(a.min_master).to_string(),
            ms(b.min_master).to_string(),
        );
        changed(
            self.driver_lease_margin != new.driver_lease_margin,
            "election.driver_lease_margin_ms",
            ms(self.driver_lease_margin).to_string(),
            ms(new.driver_lease_margin).to_string(),
        );
        changed(
            self.checks != new.checks,
            "[[check]]",
            format!("{} check(s)", self.checks.len()),
            format!("{} check(s)", new.checks.len()),
        );
        changed(
            self.health != new.health,
            "[health]",
            "old".into(),
            "new".into(),
        );
        changed(
            self.log_level != new.log_level,
            "log.level",
            self.log_level.clone().unwrap_or_else(|| "unset".into()),
            new.log_level.clone().unwrap_or_else(|| "unset".into()),
        );
        changed(
            self.maintenance != new.maintenance,
            "node.maintenance",
            self.maintenance.to_string(),
            new.maintenance.to_string(),
        );
        Ok(changes)
    }

    /// Parses config text; `file` names it in errors; relative paths are relative to `base`.
    pub fn parse(
        text: &str,
        file: &str,
        base: &Path,
    ) -> Result<(Self, Vec<ConfigWarning>), ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        let raw: RawFile = parse_toml(text, file)?;
        let mut warnings = Vec::new();

        let id = NodeId::new(&raw.node.id).map_err(|e| err("node.id", e.to_string()))?;
        let data_dir = base.join(&raw.node.data_dir);

        let secret_bytes = read_secret(
            SecretSource {
                file_key: "cluster.secret_file",
                inline_key: "cluster.secret",
                file: raw.cluster.secret_file.as_deref(),
                inline: raw.cluster.secret.as_deref(),
                what: "the cluster secret (make one with `clustd keygen`)",
            },
            file,
            base,
            &mut warnings,
        )?
        .ok_or_else(|| {
            err(
                "cluster.secret_file",
                "missing: point it at a file holding the cluster secret (make one with `clustd keygen`)"
                    .into(),
            )
        })?;
        let secret = checked_secret(secret_bytes, &raw.cluster.secret_file, "cluster", &err)?;
        let driver_secret = read_secret(
            SecretSource {
                file_key: "cluster.driver_secret_file",
                inline_key: "cluster.driver_secret",
                file: raw.cluster.driver_secret_file.as_deref(),
                inline: raw.cluster.driver_secret.as_deref(),
                what: "the drivers' credential (make one with `clustd keygen`)",
            },
            file,
            base,
            &mut warnings,
        )?
        .map(|bytes| checked_secret(bytes, &raw.cluster.driver_secret_file, "driver", &err))
        .transpose()?;
        let node_key = read_secret(
            SecretSource {
                file_key: "node.key_file",
                inline_key: "node.key",
                file: raw.node.key_file.as_deref(),
                inline: raw.node.key.as_deref(),
                what: "this node's private key (make one with `clustd keygen --node --out FILE`)",
            },
            file,
            base,
            &mut warnings,
        )?
        .map(|bytes| {
            let key = if raw.node.key_file.is_some() {
                "node.key_file"
            } else {
                "node.key"
            };
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                err(
                    key,
                    "not a node key: expected 64 hex characters (make one with `clustd keygen --node --out FILE`)".into(),
                )
            })?;
            NodeKey::from_hex(text).map_err(|e| err(key, e.to_string()))
        })
        .transpose()?;

        let listen = socket_addr(&raw.cluster.listen).map_err(|m| err("cluster.listen", m))?;
        let mut peers = BTreeMap::new();
        for (i, peer) in raw.cluster.peers.iter().enumerate() {
            let key = format!("cluster.peers[{i}].id");
            let peer_id = NodeId::new(&peer.id).map_err(|e| err(&key, e.to_string()))?;
            if peer_id == id {
                return Err(err(
                    &key,
                    format!("{peer_id} is this node (node.id); list only the other nodes"),
                ));
            }
            let addr_key = format!("cluster.peers[{i}].addr");
            let addr = socket_addr(&peer.addr).map_err(|m| err(&addr_key, m))?;
            if addr == listen {
                return Err(err(
                    &addr_key,
                    format!(
                        "{addr} is this node's own cluster.listen: {peer_id} must be reached at its own address"
                    ),
                ));
            }
            if let Some((other, _)) = peers.iter().find(|(_, a)| **a == addr) {
                return Err(err(
                    &addr_key,
                    format!(
                        "{peer_id} has the same address as {other} ({addr}): each node has its own"
                    ),
                ));
            }
            if peers.insert(peer_id.clone(), addr).is_some() {
                return Err(err(&key, format!("{peer_id} is listed twice")));
            }
        }
        let mut peer_keys = BTreeMap::new();
        for (i, peer) in raw.cluster.peers.iter().enumerate() {
            let Some(text) = &peer.key else { continue };
            let key = format!("cluster.peers[{i}].key");
            let public: PublicKey = text.parse().map_err(|_| {
                err(
                    &key,
                    format!(
                        "{}'s public key must be 64 hex characters, got {} characters (print it on that node with `clustd keygen --public KEY_FILE`)",
                        peer.id,
                        text.trim().len()
                    ),
                )
            })?;
            if node_key.as_ref().is_some_and(|own| own.public() == public) {
                return Err(err(
                    &key,
                    format!("this is this node's own public key, not {}'s", peer.id),
                ));
            }
            if let Some((other, _)) = peer_keys.iter().find(|(_, k)| **k == public) {
                return Err(err(
                    &key,
                    format!(
                        "{} has the same key as {other}: each node needs its own",
                        peer.id
                    ),
                ));
            }
            peer_keys.insert(
                NodeId::new(&peer.id).map_err(|e| err(&key, e.to_string()))?,
                public,
            );
        }
        if !peer_keys.is_empty() && node_key.is_none() {
            return Err(err(
                "node.key_file",
                "peers have keys (cluster.peers[].key), so this node needs its own: make one with `clustd keygen --node --out node.key` and set node.key_file".into(),
            ));
        }
        let keyless: Vec<String> = peers
            .keys()
            .filter(|id| !peer_keys.contains_key(*id))
            .map(ToString::to_string)
            .collect();
        if !keyless.is_empty() {
            warnings.push(ConfigWarning(format!(
                "{file}: {} authenticate(s) with the cluster secret alone (no cluster.peers[].key), so anyone holding the secret can pose as them; give every node a key (README: Security, moving to node keys)",
                keyless.join(", ")
            )));
        }
        match &driver_secret {
            None => warnings.push(ConfigWarning(format!(
                "{file}: cluster.driver_secret_file is not set: drivers prove the cluster secret, so every driver host holds it; give drivers their own credential (README: Security)"
            ))),
            Some(d) if d.same_bytes(&secret) => {
                return Err(err(
                    "cluster.driver_secret_file",
                    "holds the cluster secret: the drivers' credential must be a different secret (make one with `clustd keygen`)".into(),
                ));
            }
            Some(_) => {}
        }

        let driver_socket = match &raw.cluster.driver_socket {
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) if base.join(path).as_os_str().len() > MAX_SOCKET_PATH => {
                return Err(err(
                    "cluster.driver_socket",
                    format!(
                        "{} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have: choose a shorter path (e.g. /run/clustd/driver.sock)",
                        base.join(path).display()
                    ),
                ));
            }
            None if data_dir.join("driver.sock").as_os_str().len() > MAX_SOCKET_PATH => {
                warnings.push(ConfigWarning(format!(
                    "{file}: no local driver socket: {} would be longer than a Unix socket path may be; set cluster.driver_socket to a shorter path",
                    data_dir.join("driver.sock").display()
                )));
                None
            }
            path => {
                let path = path
                    .as_ref()
                    .map_or_else(|| data_dir.join("driver.sock"), |p| base.join(p));
                Some(local_socket(
                    file,
                    "cluster.driver_socket",
                    "connect as a driver (and be told it is master)",
                    path,
                    raw.cluster.driver_socket_mode.as_deref(),
                    raw.cluster.driver_socket_group.as_deref(),
                    &mut warnings,
                )?)
            }
        };
        let admin = admin_settings(file, base, &data_dir, &raw.admin, &mut warnings)?;
        let tls = match (&raw.cluster.tls_cert, &raw.cluster.tls_key) {
            (Some(cert), Some(key)) => Some(clustd_transport::TlsFiles {
                cert: base.join(cert),
                key: base.join(key),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(err(
                    "cluster.tls_key",
                    "tls_cert is set, so tls_key is required".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "cluster.tls_cert",
                    "tls_key is set, so tls_cert is required".into(),
                ));
            }
        };
        if tls.is_some() && raw.cluster.transport == TransportKind::Quic {
            warnings.push(ConfigWarning(format!(
                "{file}: cluster.tls_cert/tls_key are used by the websocket transport only; QUIC makes its own certificate"
            )));
        }

        let e = &raw.election;
        let timings = Timings::from_raw(e, raw.fence.as_ref());
        if let Some(broken) = timings.diagnose() {
            return Err(err(broken.key.path(), broken.message));
        }
        let mut voters: Vec<NodeId> = peers.keys().cloned().collect();
        voters.push(id.clone());
        voters.sort();
        let mut core = CoreConfig::new(id.clone(), voters);
        let [min, max] = timings.election_timeout_ms;
        core.max_clock_drift = timings.max_clock_drift;
        core.stop_budget = Duration::from_millis(timings.stop_budget_ms);
        core.set_timings(
            Duration::from_millis(timings.heartbeat_ms),
            Duration::from_millis(min),
            Duration::from_millis(max),
        );
        if let Some(lease) = timings.lease_ms {
            core.lease = Duration::from_millis(lease);
        }
        core.priority = e.priority;
        core.preempt = e.preempt;
        core.witness = raw.node.witness;
        let checks = parse_checks(&raw.check, file, &mut warnings)?;
        let mut health = HealthSettings::default();
        if let Some(alone) = &raw.health.alone {
            core.alone = match alone.as_str() {
                "stay" => clustd_core::Alone::Stay,
                "step-down" => clustd_core::Alone::StepDown,
                other => {
                    return Err(err(
                        "health.alone",
                        format!(
                            "`{other}` is neither \"stay\" (an unhealthy master with no healthy peer stays master, and says so) nor \"step-down\" (it steps down anyway: no master until a node is healthy)"
                        ),
                    ));
                }
            };
        }
        if let Some(ms) = raw.health.min_master_ms {
            core.min_master = Duration::from_millis(ms);
        }
        if let Some(ms) = raw.health.start_failure_ms {
            if ms == 0 {
                return Err(err(
                    "health.start_failure_ms",
                    "must be positive: how long (ms) a failed `start` keeps the node unhealthy"
                        .into(),
                ));
            }
            health.start_failure = Duration::from_millis(ms);
        }
        if let Some(ms) = raw.health.driver_timeout_ms {
            let floor = 2 * clustd_core::driver::DRIVER_ALIVE_INTERVAL.as_millis() as u64;
            if ms < floor {
                return Err(err(
                    "health.driver_timeout_ms",
                    format!(
                        "{ms} ms is too short: drivers say they are alive every {} ms, so allow at least {floor} ms (default 1000)",
                        clustd_core::driver::DRIVER_ALIVE_INTERVAL.as_millis()
                    ),
                ));
            }
            health.driver_timeout = Duration::from_millis(ms);
        }
        // Jitter seed: OS randomness, with the id mixed in so nodes differ even without it.
        core.rng_seed = random_u64() ^ clustd_core::hash::fnv1a(id.as_str().as_bytes());
        // Timings passed the daemon's own check, which includes the core's rule: an error
        // here is a bug in one of the two, still reported under the key it concerns.
        core.validate().map_err(|ce| {
            use clustd_core::ConfigError as C;
            let key = match &ce {
                C::Drift(_) => TimingKey::Drift,
                C::TimeoutRange { .. } => TimingKey::ElectionTimeout,
                C::Heartbeat { .. } => TimingKey::Heartbeat,
                C::UnsafeLease { .. } | C::NoLease { .. } if e.lease_ms.is_some() => {
                    TimingKey::Lease
                }
                C::UnsafeLease { .. } | C::NoLease { .. } => TimingKey::ElectionTimeout,
                _ => return err("cluster.peers", ce.to_string()),
            };
            err(key.path(), ce.to_string())
        })?;
        let margin = Duration::from_millis(timings.driver_lease_margin_ms);
        let watchdog = match &raw.fence {
            Some(RawFence {
                watchdog: Some(device),
                watchdog_timeout_ms,
                ..
            }) => {
                let Some(ms) = *watchdog_timeout_ms else {
                    return Err(err(
                        "fence.watchdog_timeout_ms",
                        "required with fence.watchdog: the device's own timeout (set it on the device, e.g. `modprobe softdog soft_margin=2` for 2000)".into(),
                    ));
                };
                // Its fit with the lease was checked with the other timings (`Timings`).
                Some(crate::watchdog::WatchdogSettings {
                    device: base.join(device),
                    timeout: Duration::from_millis(ms),
                })
            }
            Some(RawFence {
                watchdog: None,
                watchdog_timeout_ms: Some(_),
                ..
            }) => {
                return Err(err(
                    "fence.watchdog_timeout_ms",
                    "set without fence.watchdog: name the device too (e.g. \"/dev/watchdog\")"
                        .into(),
                ));
            }
            _ => None,
        };
        let fence = match &raw.fence {
            None => None,
            Some(RawFence {
                command: None,
                kill_driver: false,
                watchdog: Some(_),
                ..
            }) => None,
            Some(RawFence {
                command: None,
                kill_driver: false,
                ..
            }) => {
                return Err(err(
                    "fence.command",
                    "required (or fence.kill_driver = true, or fence.watchdog): give the command that kills the service for sure, e.g. \"systemctl kill --signal=SIGKILL myapp.service\"".into(),
                ));
            }
            Some(f) => {
                let command = f.command.clone();
                if command.as_ref().is_some_and(|c| c.trim().is_empty()) {
                    return Err(err(
                        "fence.command",
                        "empty: give the command that kills the service for sure, e.g. \"systemctl kill --signal=SIGKILL myapp.service\"".into(),
                    ));
                }
                Some(FenceSettings {
                    command,
                    kill_driver: f.kill_driver,
                    // Checked to fit in the stop budget with the other timings (`Timings`).
                    timeout: Duration::from_millis(
                        f.timeout_ms.unwrap_or(DEFAULT_FENCE_TIMEOUT_MS),
                    ),
                })
            }
        };
        if peers.len() == 1 && !raw.node.witness {
            warnings.push(ConfigWarning(format!(
                "{file}: a 2-node cluster has no majority when either node is down; add a third node (node.witness = true on a small machine will do)"
            )));
        }

        let log_level = match raw.log.level {
            Some(level) => Some(crate::logging::check_level(&level).map_err(|e| {
                err(
                    "log.level",
                    format!("{level:?} is not a log filter ({e}); e.g. \"info\", \"debug\" or \"info,clustd::service=debug\""),
                )
            })?),
            None => None,
        };
        let transport_limits = transport_limits(&core);
        Ok((
            Self {
                id,
                data_dir,
                transport: raw.cluster.transport,
                listen,
                secret,
                node_key,
                driver_secret,
                peers,
                peer_keys,
                tls,
                driver_socket,
                core,
                driver_lease_margin: margin,
                admin,
                checks,
                health,
                fence,
                watchdog,
                transport_limits,
                maintenance: raw.node.maintenance,
                source: None,
                log_level,
            },
            warnings,
        ))
    }
}

/// Shortest idle timeout of a connection to a peer: below it a busy scheduler (or a
/// garbage-collecting VM) would cut and redial healthy connections.
pub const MIN_TRANSPORT_IDLE: Duration = Duration::from_millis(250);

/// The transport's timers for this election timing: a connection to a peer that hears
/// nothing for `election_timeout_min` (at least [`MIN_TRANSPORT_IDLE`], at most the
/// transport's 5 s default) is closed and redialed, so a stalled stream costs about one
/// election timeout, the time the election takes to notice a silent leader anyway;
/// keepalives and the reconnect backoff follow (see `Limits::for_idle_timeout`).
pub fn transport_limits(core: &CoreConfig) -> clustd_transport::Limits {
    let idle = core.election_timeout_min.clamp(
        MIN_TRANSPORT_IDLE,
        clustd_transport::Limits::default().idle_timeout,
    );
    clustd_transport::Limits::for_idle_timeout(idle)
}

/// Parses TOML into `T`, turning errors into "key (line N): message".
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, ConfigError> {
    let located = |key: String, e: &toml::de::Error| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        ConfigError {
            file: file.to_string(),
            key: match line {
                Some(line) => format!("{key} (line {line})"),
                None => key,
            },
            message: e.message().trim().to_string(),
        }
    };
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| located("(syntax)".into(), &e))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            "(top level)".to_string()
        } else {
            path
        };
        let mut error = located(key, e.inner());
        if is_secret_key(e.path()) {
            // serde's "invalid type: integer `12345`, expected a string" would print the
            // secret (or what was meant to be) to the terminal and the journal.
            error.message =
                "must be a string (the value is not shown: it is the cluster secret)".into();
        }
        error
    })
}

/// Where one secret comes from: a file key and an inline key, at most one of them set.
struct SecretSource<'a> {
    file_key: &'static str,
    inline_key: &'static str,
    file: Option<&'a Path>,
    inline: Option<&'a str>,
    what: &'static str,
}

/// Reads a secret from its file (checked for its mode) or its inline value (warned
/// about); `None` when neither is set. Errors name the key, never the content.
fn read_secret(
    source: SecretSource<'_>,
    file: &str,
    base: &Path,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Option<Vec<u8>>, ConfigError> {
    let err = |key: &str, message: String| ConfigError {
        file: file.to_string(),
        key: key.to_string(),
        message,
    };
    match (source.file, source.inline) {
        (Some(_), Some(_)) => Err(err(
            source.file_key,
            format!(
                "set either {} or {}, not both",
                source.file_key, source.inline_key
            ),
        )),
        (None, None) => Ok(None),
        (Some(path), None) => {
            let path = base.join(path);
            let bytes = read_capped(&path, MAX_SECRET_FILE_LEN).map_err(|e| {
                err(
                    source.file_key,
                    format!("cannot read {} ({}): {e}", path.display(), source.what),
                )
            })?;
            if let Some(w) = clustd_drivers::secret_file_mode_warning(source.file_key, &path) {
                warnings.push(ConfigWarning(w));
            }
            Ok(Some(trim_ascii(&bytes).to_vec()))
        }
        (None, Some(inline)) => {
            warnings.push(ConfigWarning(format!(
                "{file}: {} is inline; prefer {} with mode 0600",
                source.inline_key, source.file_key
            )));
            Ok(Some(inline.trim().as_bytes().to_vec()))
        }
    }
}

/// A secret long enough to be one.
fn checked_secret(
    bytes: Vec<u8>,
    from_file: &Option<PathBuf>,
    which: &str,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<Secret, ConfigError> {
    let key = match (which, from_file.is_some()) {
        ("cluster", true) => "cluster.secret_file",
        ("cluster", false) => "cluster.secret",
        (_, true) => "cluster.driver_secret_file",
        (_, false) => "cluster.driver_secret",
    };
    if bytes.len() < Secret::MIN_LEN {
        return Err(err(
            key,
            format!(
                "the secret is {} bytes; at least {} are required (make one with `clustd keygen`)",
                bytes.len(),
                Secret::MIN_LEN
            ),
        ));
    }
    Secret::from_bytes(bytes).map_err(|e| err(key, e.to_string()))
}

/// Whether a config path names an inline secret (`cluster.secret`,
/// `cluster.driver_secret`, `node.key`, or anything in them).
fn is_secret_key(path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let mut segments = path.iter();
    match (segments.next(), segments.next()) {
        (Some(Segment::Map { key: table }), Some(Segment::Map { key })) => matches!(
            (table.as_str(), key.as_str()),
            ("cluster", "secret" | "driver_secret") | ("node", "key")
        ),
        _ => false,
    }
}

/// The largest secret file read; a secret is a line of text, so anything bigger (or a device
/// like /dev/zero) is a mistake, reported instead of exhausting memory.
pub const MAX_SECRET_FILE_LEN: u64 = 4096;

fn read_capped(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "longer than {limit} bytes; a cluster secret is one line (make one with `clustd keygen`)"
        )));
    }
    Ok(bytes)
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// A random u64 from the OS (seeds the election core's jitter).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Zero only if the OS has no randomness at all; the caller mixes in the node id.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A new random cluster secret: 32 bytes as 64 hex characters.
pub fn keygen() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The numeric id of group `name`.
fn group_id(name: &str) -> Result<u32, String> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group named `{name}` on this machine")),
        Err(e) => Err(format!("cannot look up group `{name}`: {e}")),
    }
}

/// Makes a node key pair, writes the private key to `path` (mode 0600, refusing to
/// overwrite a file) and returns the public key.
pub fn write_node_key(path: &Path) -> Result<PublicKey, std::io::Error> {
    let mut private = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut private[..]).map_err(|e| std::io::Error::other(e.to_string()))?;
    let key = NodeKey::from_private(*private);
    let mut text = zeroize::Zeroizing::new(key.private_hex());
    text.push('\n');
    write_new_private(path, &text, "key")?;
    Ok(key.public())
}

/// Writes a new random secret ([`keygen`]) to `path`, mode 0600, never overwriting: a
/// cluster secret, a drivers' credential or an admin token.
pub fn write_secret_file(path: &Path) -> Result<(), std::io::Error> {
    let mut text =
        zeroize::Zeroizing::new(keygen().map_err(|e| std::io::Error::other(e.to_string()))?);
    text.push('\n');
    write_new_private(path, &text, "secret")
}

/// Creates `path` (mode 0600; an existing file is never overwritten), writes `text`, syncs.
fn write_new_private(path: &Path, text: &str, what: &str) -> Result<(), std::io::Error> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "{}: {e} (an existing {what} is never overwritten)",
                path.display()
            ),
        )
    })?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// The public key of a node's private key file.
pub fn public_key_of_file(path: &Path) -> Result<PublicKey, std::io::Error> {
    let bytes = zeroize::Zeroizing::new(read_capped(path, MAX_SECRET_FILE_LEN)?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| std::io::Error::other(format!("{}: not a node key", path.display())))?;
    NodeKey::from_hex(text)
        .map(|k| k.public())
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

/// `[admin]`, checked: the admin socket (always), the TCP listener (optional, with a
/// token) and whether `/metrics` is open on TCP.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// `admin.socket` (default `<data_dir>/admin.sock`), mode `admin.socket_mode` (default
    /// 0660) and group `admin.socket_group`: who may connect is who may use the API.
    pub socket: clustd_transport::LocalSocket,
    /// `admin.listen`: also serve over TCP, where every request needs the token.
    pub listen: Option<SocketAddr>,
    /// `admin.token_file`'s token (required with `admin.listen`).
    pub token: Option<crate::admin::AdminToken>,
    /// `admin.metrics_open`: `GET /metrics` over TCP without the token.
    pub metrics_open: bool,
}

/// An IP address with a port. Host names are refused, and say so: resolving them would let
/// a DNS answer decide who the peers are.
fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.trim().parse() {
        return Ok(addr);
    }
    let host_port = text
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    Err(match host_port {
        Some((host, port)) if host.parse::<std::net::IpAddr>().is_ok() => format!(
            "`{text}`: an IPv6 address with a port is written in brackets, like [{host}]:{port}"
        ),
        Some((host, port)) => format!(
            "`{text}` names a host: only IP addresses are accepted (write `{host}`'s IP, e.g. 192.0.2.12:{port}), so that a DNS answer can never change who the peers are"
        ),
        None => format!("`{text}` is not an IP address with a port, like 192.0.2.12:7400"),
    })
}

/// A Unix socket path holds at most 107 bytes (sun_path).
const MAX_SOCKET_PATH: usize = 107;

/// A local socket at `path` with the mode and group given under `key`_mode / `key`_group;
/// `who` says what connecting allows, for the warning about a world-connectable mode.
fn local_socket(
    file: &str,
    key: &str,
    who: &str,
    path: PathBuf,
    mode: Option<&str>,
    group: Option<&str>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<clustd_transport::LocalSocket, ConfigError> {
    let err = |key: String, message: String| ConfigError {
        file: file.to_owned(),
        key,
        message,
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(err(
            key.to_owned(),
            format!(
                "{} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have: choose a shorter path (e.g. /run/clustd/{})",
                path.display(),
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        ));
    }
    let mode_text = mode.unwrap_or("0660");
    let mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            err(
                format!("{key}_mode"),
                format!("`{mode_text}` is not a file mode like \"0660\""),
            )
        })?;
    if mode & 0o002 != 0 {
        warnings.push(ConfigWarning(format!(
            "{file}: {key}_mode {mode:o} lets every local user {who}; use 0660 and {key}_group"
        )));
    }
    let gid = match group {
        None => None,
        Some(name) => Some(group_id(name).map_err(|message| err(format!("{key}_group"), message))?),
    };
    Ok(clustd_transport::LocalSocket { path, mode, gid })
}

/// Reads a token file (`key` names it in errors): trimmed, at least [`Secret::MIN_LEN`] bytes.
fn read_token(file: &str, key: &str, path: &Path) -> Result<crate::admin::AdminToken, ConfigError> {
    let err = |message: String| ConfigError {
        file: file.to_owned(),
        key: key.to_owned(),
        message,
    };
    let bytes = zeroize::Zeroizing::new(
        read_capped(path, MAX_SECRET_FILE_LEN)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?,
    );
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| err(format!("{} is not text", path.display())))?
        .trim();
    if text.len() < Secret::MIN_LEN {
        return Err(err(format!(
            "the token in {} is {} bytes; at least {} (make one with `clustd keygen --out {}`)",
            path.display(),
            text.len(),
            Secret::MIN_LEN,
            path.display()
        )));
    }
    Ok(crate::admin::AdminToken::new(text.to_owned()))
}

fn admin_settings(
    file: &str,
    base: &Path,
    data_dir: &Path,
    raw: &RawAdmin,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<AdminSettings, ConfigError> {
    let path = raw
        .socket
        .as_ref()
        .map_or_else(|| data_dir.join(ADMIN_SOCKET_FILE), |p| base.join(p));
    let socket = local_socket(
        file,
        "admin.socket",
        "step the master down and switch maintenance",
        path,
        raw.socket_mode.as_deref(),
        raw.socket_group.as_deref(),
        warnings,
    )?;
    let token = match (&raw.listen, &raw.token_file) {
        (Some(_), None) => {
            return Err(ConfigError {
                file: file.to_owned(),
                key: "admin.token_file".into(),
                message: "admin.listen serves the admin API over TCP, where anyone who can connect could step the master down: set admin.token_file to a file holding a token (`clustd keygen --out /etc/clustd/admin-token`; mode 0600), or remove admin.listen and use the admin socket".into(),
            });
        }
        (None, Some(_)) => {
            warnings.push(ConfigWarning(format!(
                "{file}: admin.token_file is set but admin.listen is not: the token is only for the TCP listener; the admin socket's permissions decide who may use it"
            )));
            None
        }
        (Some(_), Some(token_file)) => {
            let path = base.join(token_file);
            if let Some(w) = clustd_drivers::secret_file_mode_warning("admin.token_file", &path) {
                warnings.push(ConfigWarning(format!("{file}: {w}")));
            }
            Some(read_token(file, "admin.token_file", &path)?)
        }
        (None, None) => None,
    };
    if let Some(listen) = raw.listen
        && !listen.ip().is_loopback()
    {
        warnings.push(ConfigWarning(format!(
            "{file}: admin.listen {listen} is reachable from other machines: the token is sent in clear text over plain HTTP; keep it on loopback (or a management network you trust) and use the admin socket locally"
        )));
    }
    if raw.metrics_open && raw.listen.is_none() {
        warnings.push(ConfigWarning(format!(
            "{file}: admin.metrics_open needs admin.listen: there is no TCP listener to open /metrics on"
        )));
    }
    Ok(AdminSettings {
        socket,
        listen: raw.listen,
        token,
        metrics_open: raw.metrics_open,
    })
}

#[derive(Debug, Deserialize)]
struct AdminOnly {
    node: AdminOnlyNode,
    #[serde(default)]
    admin: RawAdmin,
}

#[derive(Debug, Deserialize)]
struct AdminOnlyNode {
    data_dir: PathBuf,
}

/// How `clustd status` and the other admin commands reach the daemon of the config file
/// at `path`, reading only `node.data_dir` and `[admin]` (not the secrets): its admin
/// socket, or, with `prefer_tcp` and `admin.listen` set, TCP with `admin.token_file`'s token.
pub fn admin_endpoint(
    path: &Path,
    prefer_tcp: bool,
) -> Result<crate::admin::Endpoint, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        key: "(file)".into(),
        message: format!("cannot read the config file: {e}"),
    })?;
    let parsed: AdminOnly = parse_toml(&text, &file)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let admin = parsed.admin;
    if prefer_tcp && admin.listen.is_none() {
        return Err(ConfigError {
            file,
            key: "admin.listen".into(),
            message: "not set, so --tcp has nothing to connect to: leave --tcp off to use the admin socket".into(),
        });
    }
    if prefer_tcp && let Some(addr) = admin.listen {
        let token = match &admin.token_file {
            Some(t) => Some(read_token(&file, "admin.token_file", &base.join(t))?),
            None => None,
        };
        return Ok(crate::admin::Endpoint::Tcp { addr, token });
    }
    let socket = admin.socket.as_ref().map_or_else(
        || base.join(&parsed.node.data_dir).join(ADMIN_SOCKET_FILE),
        |p| base.join(p),
    );
    Ok(crate::admin::Endpoint::Socket(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config's keys by table, so that a test can apply a suggested change as an operator
    /// would: edit the `[election]` or `[fence]` key, or remove it.
    #[derive(Clone)]
    struct Keys {
        election: Vec<(String, String)>,
        fence: Vec<(String, String)>,
    }

    impl Keys {
        fn new(election: &[(&str, &str)], fence: &[(&str, &str)]) -> Self {
            let own = |pairs: &[(&str, &str)]| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            };
            Self {
                election: own(election),
                fence: own(fence),
            }
        }

        fn toml(&self) -> String {
            let lines = |pairs: &[(String, String)]| {
                pairs
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}\n"))
                    .collect::<String>()
            };
            let mut text = format!(
                "[node]\nid = \"node-1\"\ndata_dir = \"data\"\n\n[cluster]\nlisten = \"127.0.0.1:7400\"\nsecret = \"{}\"\npeers = [{{ id = \"node-2\", addr = \"127.0.0.1:7402\" }}, {{ id = \"node-3\", addr = \"127.0.0.1:7403\" }}]\n\n[election]\n{}",
                "0123456789abcdef".repeat(4),
                lines(&self.election)
            );
            if !self.fence.is_empty() {
                text.push_str(&format!("\n[fence]\n{}", lines(&self.fence)));
            }
            text
        }

        /// Makes `change` the way the message words it (`election.x = 5`, `remove ...`).
        fn apply(&mut self, change: Change) {
            let (table, name) = change.key().path().split_once('.').expect("dotted path");
            let pairs = match table {
                "election" => &mut self.election,
                "fence" => &mut self.fence,
                other => panic!("no table {other}"),
            };
            pairs.retain(|(k, _)| k != name);
            if let Some(assignment) = change.assignment() {
                let (_, value) = assignment.split_once(" = ").expect("an assignment");
                pairs.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    fn parse(keys: &Keys) -> Result<Settings, ConfigError> {
        Settings::parse(&keys.toml(), "test.toml", Path::new("/etc/clustd")).map(|(s, _)| s)
    }

    fn timings(keys: &Keys) -> Timings {
        let raw: RawFile = parse_toml(&keys.toml(), "test.toml").expect("parses");
        Timings::from_raw(&raw.election, raw.fence.as_ref())
    }

    use clustd_core::harness::assert_plain;

    #[test]
    fn a_short_election_timeout_alone_is_blamed_for_leaving_no_lease() {
        // Issue 14: `election_timeout_ms = [100, 200]` alone used to say
        // "election.stop_budget_ms: lease 0ns is unsafe ... (largest safe lease: None)".
        let keys = Keys::new(&[("election_timeout_ms", "[100, 200]")], &[]);
        let e = parse(&keys).expect_err("no lease fits the default stop budget");
        assert_eq!(e.key, "election.election_timeout_ms");
        assert_plain(&e.message);
        assert_eq!(
            e.message,
            "[100, 200] leaves no safe lease: the rule lease/(1-drift) + stop_budget <= \
             election_timeout_min/(1+drift) needs the stop budget below \
             election_timeout_min/(1+drift) = 95.2 ms, so with election.stop_budget_ms = 200 \
             (the default) and election.max_clock_drift = 0.05 (the default) every lease is \
             unsafe. Fix: set election.election_timeout_ms = [432, 864] (lease 200 ms); or set \
             election.stop_budget_ms = 20 and election.heartbeat_ms = 10 (lease 71 ms)"
        );
        // Both suggestions work as written.
        let longer = Keys::new(&[("election_timeout_ms", "[432, 864]")], &[]);
        assert_eq!(parse(&longer).expect("valid").core.lease.as_millis(), 200);
        let fast = Keys::new(
            &[
                ("election_timeout_ms", "[100, 200]"),
                ("stop_budget_ms", "20"),
                ("heartbeat_ms", "10"),
            ],
            &[],
        );
        assert_eq!(parse(&fast).expect("valid").core.lease.as_millis(), 71);
        // And 432 is the shortest minimum that works with the defaults.
        let shorter = Keys::new(&[("election_timeout_ms", "[431, 864]")], &[]);
        assert!(parse(&shorter).is_err());
    }

    #[test]
    fn every_timing_error_names_the_key_at_fault_and_offers_values_that_pass() {
        let watchdog = [
            ("watchdog", "\"/dev/watchdog\""),
            ("watchdog_timeout_ms", "1000"),
        ];
        /// A name, the `[election]` and `[fence]` keys, the key the error must name.
        type Case<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            &'a str,
        );
        let cases: &[Case] = &[
            (
                "short election timeout",
                &[("election_timeout_ms", "[100, 200]")],
                &[],
                "election.election_timeout_ms",
            ),
            (
                "short election timeout, short heartbeat",
                &[
                    ("election_timeout_ms", "[210, 400]"),
                    ("heartbeat_ms", "10"),
                ],
                &[],
                "election.election_timeout_ms",
            ),
            (
                "short election timeout, long drift",
                &[
                    ("election_timeout_ms", "[100, 200]"),
                    ("stop_budget_ms", "200"),
                    ("max_clock_drift", "0.2"),
                ],
                &[],
                "election.election_timeout_ms",
            ),
            (
                "long stop budget",
                &[("stop_budget_ms", "960")],
                &[],
                "election.stop_budget_ms",
            ),
            (
                "long stop budget and a short lease",
                &[("stop_budget_ms", "960"), ("lease_ms", "100")],
                &[],
                "election.stop_budget_ms",
            ),
            (
                "long lease",
                &[("lease_ms", "900")],
                &[],
                "election.lease_ms",
            ),
            ("zero lease", &[("lease_ms", "0")], &[], "election.lease_ms"),
            (
                "lease too short for the heartbeat and the margin",
                &[("lease_ms", "5"), ("heartbeat_ms", "5")],
                &[],
                "election.lease_ms",
            ),
            (
                "slow heartbeat",
                &[("heartbeat_ms", "500")],
                &[],
                "election.heartbeat_ms",
            ),
            (
                "zero heartbeat",
                &[("heartbeat_ms", "0")],
                &[],
                "election.heartbeat_ms",
            ),
            (
                "the default heartbeat and the fast timings",
                &[
                    ("election_timeout_ms", "[100, 200]"),
                    ("stop_budget_ms", "20"),
                ],
                &[],
                "election.heartbeat_ms",
            ),
            (
                "a large drift shortens the lease below two heartbeats",
                &[
                    ("max_clock_drift", "0.4"),
                    ("election_timeout_ms", "[500, 1000]"),
                ],
                &[],
                "election.heartbeat_ms",
            ),
            (
                "inverted range",
                &[("election_timeout_ms", "[2000, 1000]")],
                &[],
                "election.election_timeout_ms",
            ),
            (
                "zero minimum",
                &[("election_timeout_ms", "[0, 200]")],
                &[],
                "election.election_timeout_ms",
            ),
            (
                "drift",
                &[("max_clock_drift", "0.7")],
                &[],
                "election.max_clock_drift",
            ),
            (
                "drift nan",
                &[("max_clock_drift", "nan")],
                &[],
                "election.max_clock_drift",
            ),
            (
                "margin",
                &[("driver_lease_margin_ms", "800")],
                &[],
                "election.driver_lease_margin_ms",
            ),
            (
                "the default margin and a tiny lease",
                &[
                    ("election_timeout_ms", "[25, 50]"),
                    ("stop_budget_ms", "5"),
                    ("heartbeat_ms", "5"),
                ],
                &[],
                "election.driver_lease_margin_ms",
            ),
            (
                "fence longer than the stop budget",
                &[],
                &[("command", "\"kill-it\""), ("timeout_ms", "250")],
                "fence.timeout_ms",
            ),
            (
                "the default fence timeout and a short stop budget",
                &[("stop_budget_ms", "100")],
                &[("kill_driver", "true")],
                "fence.timeout_ms",
            ),
            ("late watchdog", &[], &watchdog, "fence.watchdog_timeout_ms"),
            (
                "late watchdog and a set lease",
                &[("lease_ms", "500")],
                &watchdog,
                "fence.watchdog_timeout_ms",
            ),
            (
                "short election timeout and a watchdog",
                &[("election_timeout_ms", "[100, 200]")],
                &[
                    ("command", "\"kill-it\""),
                    ("watchdog", "\"/dev/watchdog\""),
                    ("watchdog_timeout_ms", "1000"),
                ],
                "election.election_timeout_ms",
            ),
            (
                "several keys off at once",
                &[
                    ("election_timeout_ms", "[100, 200]"),
                    ("lease_ms", "5"),
                    ("heartbeat_ms", "5"),
                ],
                &[],
                "election.election_timeout_ms",
            ),
        ];
        for (name, election, fence, key) in cases {
            let keys = Keys::new(election, fence);
            let e = parse(&keys).expect_err(name);
            assert_eq!(e.key, *key, "{name}: {e}");
            assert_plain(&e.to_string());
            let t = timings(&keys);
            let diagnosis = t.diagnose().expect(name);
            assert_eq!(diagnosis.message, e.message, "{name}");
            assert!(!diagnosis.fixes.is_empty(), "{name}: no fix offered: {e}");
            for fix in &diagnosis.fixes {
                let offered = t.render_fix(fix);
                assert!(
                    e.message.contains(&offered),
                    "{name}: {offered:?} not in {e}"
                );
                let mut fixed = keys.clone();
                for change in fix {
                    fixed.apply(*change);
                }
                if let Err(still) = parse(&fixed) {
                    panic!("{name}: {offered} does not fix it: {still}");
                }
            }
        }
    }

    /// The transport notices a stalled peer stream in about one election timeout: its
    /// idle timeout follows `election_timeout_min` (within bounds), keepalives and the
    /// reconnect backoff with it; drivers keep their own bound.
    #[test]
    fn transport_timers_follow_the_election_timeout() {
        let cases: &[(&[(&str, &str)], u64)] = &[
            (&[], 1000),
            (&[("election_timeout_ms", "[2000, 4000]")], 2000),
            (
                &[
                    ("heartbeat_ms", "20"),
                    ("election_timeout_ms", "[100, 200]"),
                    ("stop_budget_ms", "20"),
                ],
                250,
            ),
            (&[("election_timeout_ms", "[8000, 12000]")], 5000),
        ];
        for (election, idle_ms) in cases {
            let settings = parse(&Keys::new(election, &[])).expect("valid");
            let limits = &settings.transport_limits;
            let idle = Duration::from_millis(*idle_ms);
            assert_eq!(limits.idle_timeout, idle, "{election:?}");
            assert_eq!(limits.keepalive_interval, idle / 4, "{election:?}");
            assert_eq!(limits.backoff_max, idle, "{election:?}");
            assert_eq!(limits.driver_idle_timeout, Duration::from_secs(5));
        }
    }

    #[test]
    fn the_values_offered_are_the_limits() {
        // The heartbeat: half the 714 ms lease works, one more does not.
        let keys = Keys::new(&[("heartbeat_ms", "500")], &[]);
        let e = parse(&keys).expect_err("slow heartbeat");
        assert!(
            e.message.contains("at most half the lease")
                && e.message.contains("set election.heartbeat_ms = 357;"),
            "{e}"
        );
        for (heartbeat, ok) in [("357", true), ("358", false)] {
            let keys = Keys::new(&[("heartbeat_ms", heartbeat)], &[]);
            assert_eq!(parse(&keys).is_ok(), ok, "heartbeat {heartbeat}");
        }
        // The stop budget: 741 ms leaves a 200 ms lease (two heartbeats), 742 does not.
        let keys = Keys::new(&[("stop_budget_ms", "960")], &[]);
        let e = parse(&keys).expect_err("long stop budget");
        assert!(
            e.message
                .contains("set election.stop_budget_ms = 741 (lease 200 ms)"),
            "{e}"
        );
        assert!(e.message.contains("unsafe"), "{e}");
        for (budget, ok) in [("741", true), ("742", false)] {
            let keys = Keys::new(&[("stop_budget_ms", budget)], &[]);
            assert_eq!(parse(&keys).is_ok(), ok, "stop budget {budget}");
        }
        // The lease: the longest safe one.
        let keys = Keys::new(&[("lease_ms", "900")], &[]);
        let e = parse(&keys).expect_err("long lease");
        assert!(
            e.message.contains("allows at most 714 ms")
                && e.message.contains("set election.lease_ms = 714;"),
            "{e}"
        );
    }
}
