//! The notify driver: tells people about role changes and cluster events (peers, failed
//! stops, the node's health and eligibility) through webhooks, email and SMS, with
//! templates, retries and flap protection.
//!
//! Acting is only queueing: [`NotifyDriver::on_role_change`] and
//! [`NotifyDriver::on_cluster_event`] return at once, so a slow mail server never delays the
//! daemon's view of its drivers, nor a role change behind a peer event. One dispatcher task applies the
//! flap limiter and fans each message out to one task per sink.
//!
//! Events about this node (`became-master`, `peer-down`, ...) are sent by every node for
//! itself; the cluster-wide `new-master` and `master-lost` once per cluster event, by one
//! node (see [`EventKind::NewMaster`], [`EventKind::MasterLost`] and [`UpPeers`]).

mod cluster_wide;
mod limit;
mod sinks;
mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clustd_core::NodeId;
use clustd_core::driver::{ActionResult, DriverRole, HealthChange};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

pub use cluster_wide::UpPeers;
pub use sinks::SmtpSecurity;
pub use template::{FIELDS as TEMPLATE_FIELDS, Template};

use crate::config::{ConfigError, DaemonKeys, load_toml, parse_toml, resolve};
use crate::config::{DriverConfig, TransportKind};
use crate::driver::{ChangeSource, ClusterEvent, Driver, RoleChange};
use limit::{FlapLimiter, Verdict};
use sinks::{Rendered, Retry, Sink, spawn_sink};

/// What happened, as named in configs (`events = [...]`) and in the `{event}` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EventKind {
    /// This node became master.
    BecameMaster,
    /// This node stopped being master (including a fail-safe self-demotion).
    LostMaster,
    /// The cluster has no known master any more. Cluster-wide, so sent by one node only: of
    /// this node and the peers its daemon reports connected, the lost master left out, the
    /// one with the smallest id (string order); a node that knows no other connected node
    /// sends it too. The lost master, if alive (its lease ran out), tells of itself with
    /// `lost-master`.
    MasterLost,
    /// A node was elected master (`{leader}`, `{node}` name it). Cluster-wide, so sent only
    /// by the new master's notify driver, right after its `became-master`; not on the first
    /// role a driver is given (a driver started on a node that already was master).
    NewMaster,
    /// The local daemon lost its connection to a peer (`{peer}` names it).
    PeerDown,
    /// The local daemon's connection to a peer came (back) up (`{peer}` names it).
    PeerUp,
    /// A driver of this node reported that its stop failed or timed out (`{driver}` names
    /// it): the service may still run here beside a new master until that driver's lease
    /// ends. Sent by every node's notify driver for its own node.
    StopFailed,
    /// The daemon ran its `[fence]` command and it succeeded (`{driver}`: the drivers it
    /// was run for, comma-separated): they had not confirmed their stop by their lease end.
    Fenced,
    /// The daemon's `[fence]` command failed or timed out (`{detail}` says how): the
    /// service may still run here beside a new master.
    FenceFailed,
    /// This node's checks pass again (each passed `rise` times in a row); `{detail}` says
    /// which.
    Healthy,
    /// A check of this node failed `fall` times in a row (or a start failed); `{detail}`
    /// says which and how.
    Unhealthy,
    /// This node may not be master (unhealthy, in maintenance, a witness); `{detail}` says why.
    Ineligible,
    /// This node may be master again; `{detail}` says why.
    Eligible,
}

impl EventKind {
    /// The config name (`became-master`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BecameMaster => "became-master",
            Self::LostMaster => "lost-master",
            Self::MasterLost => "master-lost",
            Self::NewMaster => "new-master",
            Self::PeerDown => "peer-down",
            Self::PeerUp => "peer-up",
            Self::StopFailed => "stop-failed",
            Self::Fenced => "fenced",
            Self::FenceFailed => "fence-failed",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Ineligible => "ineligible",
            Self::Eligible => "eligible",
        }
    }

    /// The event for a health or eligibility change (named as the daemon names it).
    pub fn for_health(change: HealthChange) -> Self {
        match change {
            HealthChange::Healthy => Self::Healthy,
            HealthChange::Unhealthy => Self::Unhealthy,
            HealthChange::Ineligible => Self::Ineligible,
            HealthChange::Eligible => Self::Eligible,
        }
    }

    const ALL: [EventKind; 13] = [
        Self::BecameMaster,
        Self::LostMaster,
        Self::MasterLost,
        Self::NewMaster,
        Self::PeerDown,
        Self::PeerUp,
        Self::StopFailed,
        Self::Fenced,
        Self::FenceFailed,
        Self::Healthy,
        Self::Unhealthy,
        Self::Ineligible,
        Self::Eligible,
    ];
}

/// The events a role change means for people, as sent by this node: its own events, and
/// the cluster-wide ones only where this node is the one to send them (`up_peers`: the peers
/// its daemon reports connected).
pub fn events_for(change: &RoleChange, up_peers: &UpPeers) -> Vec<EventKind> {
    let mut events = Vec::new();
    // Only this driver is leaving; the node is still master. Nothing to tell people.
    if change.source == ChangeSource::DriverShutdown {
        return events;
    }
    let was_master = change.previous_role == Some(DriverRole::Master);
    // On the first change there is no "before": neither an election nor a lost master.
    let has_before = change.previous_role.is_some();
    match change.role {
        DriverRole::Master if !was_master => {
            events.push(EventKind::BecameMaster);
            if has_before {
                events.push(EventKind::NewMaster);
            }
        }
        DriverRole::Backup if was_master => events.push(EventKind::LostMaster),
        _ => {}
    }
    // A backup learning of a new leader says nothing: that leader's driver does.
    if has_before
        && change.role == DriverRole::Backup
        && change.leader.is_none()
        && let (Some(me), Some(lost)) = (&change.node, &change.previous_leader)
        && up_peers.sends_master_lost(me, lost)
    {
        events.push(EventKind::MasterLost);
    }
    events
}

fn event_text(kind: EventKind, change: &RoleChange) -> String {
    let leader = change.leader.as_ref().map_or("none", NodeId::as_str);
    match kind {
        EventKind::BecameMaster => "became master".into(),
        EventKind::LostMaster if change.source == ChangeSource::LeaseExpired => {
            "stopped being master: its lease ran out without renewal (fail-safe)".into()
        }
        EventKind::LostMaster => "stopped being master".into(),
        EventKind::MasterLost => "the cluster has no master".into(),
        EventKind::NewMaster => format!("new master elected: {leader}"),
        // Cluster events have their own text (`cluster_event_text`); never reached from a role change.
        EventKind::PeerDown => "a peer went down".into(),
        EventKind::PeerUp => "a peer came back".into(),
        EventKind::StopFailed => "a driver's stop failed".into(),
        EventKind::Fenced => "the daemon fenced drivers".into(),
        EventKind::FenceFailed => "the daemon's fence failed".into(),
        EventKind::Healthy => "healthy again".into(),
        EventKind::Unhealthy => "unhealthy".into(),
        EventKind::Ineligible => "may not be master".into(),
        EventKind::Eligible => "may be master again".into(),
    }
}

/// The event kind and text for a cluster event.
fn cluster_event_text(event: &ClusterEvent) -> (EventKind, String) {
    match event {
        ClusterEvent::PeerDown { peer, .. } => (
            EventKind::PeerDown,
            format!("peer {peer} is down (connection lost)"),
        ),
        ClusterEvent::PeerUp { peer, .. } => {
            (EventKind::PeerUp, format!("peer {peer} is up (connected)"))
        }
        ClusterEvent::StopFailed { driver, result, .. } => {
            let what = match result {
                ActionResult::Failed(why) => format!("failed: {why}"),
                ActionResult::TimedOut => "timed out".to_owned(),
                ActionResult::Ok => "was reported failed".to_owned(),
            };
            (
                EventKind::StopFailed,
                format!(
                    "driver {driver}'s stop {what}; the service may still run here beside a new master until that driver's lease ends"
                ),
            )
        }
        ClusterEvent::Fenced {
            drivers, result, ..
        } => {
            let list = drivers
                .iter()
                .map(NodeId::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            match result {
                ActionResult::Ok => (
                    EventKind::Fenced,
                    format!(
                        "the daemon fenced driver(s) {list}: they had not confirmed their stop by their lease end (frozen or wedged?)"
                    ),
                ),
                ActionResult::Failed(why) => (
                    EventKind::FenceFailed,
                    format!(
                        "the daemon's fence for driver(s) {list} FAILED ({why}): the service may still run here beside a new master; stop it by hand"
                    ),
                ),
                ActionResult::TimedOut => (
                    EventKind::FenceFailed,
                    format!(
                        "the daemon's fence for driver(s) {list} TIMED OUT: the service may still run here beside a new master; stop it by hand"
                    ),
                ),
            }
        }
        ClusterEvent::Health {
            change,
            detail,
            node,
            ..
        } => {
            let what = match change {
                HealthChange::Healthy => "is healthy again",
                HealthChange::Unhealthy => "is unhealthy",
                HealthChange::Ineligible => "may not be master",
                HealthChange::Eligible => "may be master again",
            };
            let text = if detail.is_empty() {
                format!("node {node} {what}")
            } else {
                format!("node {node} {what}: {detail}")
            };
            (EventKind::for_health(*change), text)
        }
    }
}

/// The template fields for `change`. `peer`, `driver` and `detail` are empty: only peer
/// events name a peer, only `stop-failed` a driver, only health events have a detail.
fn fields(
    kind: &str,
    text: String,
    change: &RoleChange,
    time: SystemTime,
) -> BTreeMap<&'static str, String> {
    let id = |n: &Option<NodeId>| n.as_ref().map(ToString::to_string).unwrap_or_default();
    BTreeMap::from([
        ("event", kind.to_owned()),
        ("event_text", text),
        ("node", id(&change.node)),
        ("role", change.role.as_str().to_owned()),
        (
            "previous_role",
            change
                .previous_role
                .map(DriverRole::as_str)
                .unwrap_or_default()
                .to_owned(),
        ),
        ("term", change.term.0.to_string()),
        ("leader", id(&change.leader)),
        ("previous_leader", id(&change.previous_leader)),
        ("reason", change.reason.clone()),
        ("peer", String::new()),
        ("driver", String::new()),
        ("detail", String::new()),
        ("time", humantime::format_rfc3339_seconds(time).to_string()),
    ])
}

/// The template fields for a cluster event: the event's own (`event`, `event_text`, `peer`
/// or `driver` or `detail`, `node`, `term`, `time`), and this node's current state from the last role
/// change (`role`, `previous_role`, `leader`, `previous_leader`, `reason`; empty before the
/// first).
fn cluster_fields(
    kind: EventKind,
    text: String,
    event: &ClusterEvent,
    last: Option<&RoleChange>,
    time: SystemTime,
) -> BTreeMap<&'static str, String> {
    let mut fields = match last {
        Some(change) => fields(kind.as_str(), text, change, time),
        None => [
            "role",
            "previous_role",
            "leader",
            "previous_leader",
            "reason",
            "peer",
            "driver",
            "detail",
        ]
        .into_iter()
        .map(|k| (k, String::new()))
        .chain([
            ("event", kind.as_str().to_owned()),
            ("event_text", text),
            ("time", humantime::format_rfc3339_seconds(time).to_string()),
        ])
        .collect(),
    };
    let node = event
        .node()
        .or_else(|| last.and_then(|c| c.node.as_ref()))
        .map(ToString::to_string)
        .unwrap_or_default();
    fields.insert("node", node);
    fields.insert("term", event.term().0.to_string());
    if let Some(peer) = event.peer() {
        fields.insert("peer", peer.to_string());
    }
    match event {
        ClusterEvent::StopFailed { driver, .. } => {
            fields.insert("driver", driver.to_string());
        }
        ClusterEvent::Health { detail, .. } => {
            fields.insert("detail", detail.clone());
        }
        ClusterEvent::Fenced {
            drivers, result, ..
        } => {
            let list = drivers
                .iter()
                .map(NodeId::as_str)
                .collect::<Vec<_>>()
                .join(",");
            fields.insert("driver", list);
            let detail = match result {
                ActionResult::Ok => "ok".to_owned(),
                ActionResult::Failed(why) => format!("failed: {why}"),
                ActionResult::TimedOut => "timed out".to_owned(),
            };
            fields.insert("detail", detail);
        }
        ClusterEvent::PeerDown { .. } | ClusterEvent::PeerUp { .. } => {}
    }
    fields
}

// ---------------------------------------------------------------------------------------
// Config

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyFile {
    daemon: String,
    #[serde(default = "crate::config::default_transport")]
    transport: TransportKind,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    driver_id: Option<String>,
    #[serde(default)]
    startup_wait_ms: Option<u64>,
    daemon_key: Option<String>,
    #[serde(default)]
    events: Option<Vec<EventKind>>,
    #[serde(default)]
    templates: TemplatesSection,
    #[serde(default)]
    rate_limit: RateLimitSection,
    #[serde(default)]
    retry: RetrySection,
    #[serde(default)]
    webhook: Vec<WebhookSection>,
    #[serde(default)]
    email: Vec<EmailSection>,
    #[serde(default)]
    sms: Vec<SmsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TemplatesSection {
    text: String,
    subject: String,
}

const DEFAULT_TEXT: &str = "[clustd] {node}: {event_text} (role {role}, term {term}, leader {leader}, reason {reason}) at {time}";
const DEFAULT_SUBJECT: &str = "[clustd] {node}: {event}";

impl Default for TemplatesSection {
    fn default() -> Self {
        Self {
            text: DEFAULT_TEXT.into(),
            subject: DEFAULT_SUBJECT.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RateLimitSection {
    window_ms: u64,
    max_messages: usize,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        Self {
            window_ms: 60_000,
            max_messages: 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RetrySection {
    attempts: u32,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
    timeout_ms: u64,
}

impl Default for RetrySection {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailSection {
    server: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default = "default_security")]
    security: SmtpSecurity,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    from: String,
    to: Vec<String>,
}

fn default_security() -> SmtpSecurity {
    SmtpSecurity::Starttls
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmsSection {
    #[serde(default = "default_sms_base")]
    base_url: String,
    account_sid: String,
    auth_token_file: PathBuf,
    from: String,
    to: Vec<String>,
}

fn default_sms_base() -> String {
    "https://api.twilio.com".into()
}

/// A loaded and checked notify driver config.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NotifyConfig {
    /// How to reach the daemon.
    pub connection: DriverConfig,
    /// The events that are sent.
    pub events: Vec<EventKind>,
    /// Message text (webhook `text`, email body, SMS).
    pub text: Template,
    /// Email subject.
    pub subject: Template,
    /// Flap protection: at most `max_messages` per window.
    pub rate_window: Duration,
    /// See `rate_window`.
    pub rate_max: usize,
    sinks: Vec<(String, Sink)>,
    retry: Retry,
}

fn read_secret_file(file: &Path, key: &str, path: &Path) -> Result<String, ConfigError> {
    let path = resolve(file, path);
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        what: format!("`{key}` {}", path.display()),
        source,
    })?;
    Ok(text.trim().to_owned())
}

impl NotifyConfig {
    /// Loads `file`; errors name the file and the key.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::check(file, load_toml(file)?)
    }

    /// Parses `text` as if read from `file` (paths resolve against `file`'s folder).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::check(file, parse_toml(file, text)?)
    }

    /// The sink names, in order (`webhook[0]`, `email[0]`, `sms[0]`, ...).
    pub fn sink_names(&self) -> Vec<&str> {
        self.sinks.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn check(file: &Path, raw: NotifyFile) -> Result<Self, ConfigError> {
        let bad = |key: &str, msg: String| ConfigError::invalid(file, key, msg);
        let text = Template::new(&raw.templates.text).map_err(|e| bad("templates.text", e))?;
        let subject =
            Template::new(&raw.templates.subject).map_err(|e| bad("templates.subject", e))?;
        if raw.rate_limit.max_messages == 0 {
            return Err(bad("rate_limit.max_messages", "must be at least 1".into()));
        }
        if raw.rate_limit.window_ms == 0 {
            return Err(bad("rate_limit.window_ms", "must be at least 1".into()));
        }
        if raw.retry.attempts == 0 {
            return Err(bad("retry.attempts", "must be at least 1".into()));
        }
        if raw.retry.timeout_ms == 0 {
            return Err(bad("retry.timeout_ms", "must be at least 1".into()));
        }
        let mut sinks = Vec::new();
        for (i, w) in raw.webhook.into_iter().enumerate() {
            let key = format!("webhook[{i}]");
            let url = parse_http_url(&w.url).map_err(|e| bad(&format!("{key}.url"), e))?;
            for (name, value) in &w.headers {
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(value).is_err()
                {
                    return Err(bad(
                        &format!("{key}.headers.{name}"),
                        "not a valid HTTP header".into(),
                    ));
                }
            }
            sinks.push((
                key,
                Sink::Webhook {
                    url,
                    headers: w.headers,
                },
            ));
        }
        for (i, e) in raw.email.into_iter().enumerate() {
            let key = format!("email[{i}]");
            let mailbox = |k: &str, s: &str| {
                s.parse::<lettre::message::Mailbox>().map_err(|err| {
                    bad(
                        &format!("{key}.{k}"),
                        format!("`{s}` is not an email address: {err}"),
                    )
                })
            };
            let from = mailbox("from", &e.from)?;
            if e.to.is_empty() {
                return Err(bad(
                    &format!("{key}.to"),
                    "needs at least one address".into(),
                ));
            }
            let to =
                e.to.iter()
                    .map(|s| mailbox("to", s))
                    .collect::<Result<Vec<_>, _>>()?;
            if e.server.trim().is_empty() {
                return Err(bad(&format!("{key}.server"), "must not be empty".into()));
            }
            let credentials = match (e.username, e.password_file) {
                (Some(user), Some(path)) => Some((
                    user,
                    read_secret_file(file, &format!("{key}.password_file"), &path)?,
                )),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(bad(
                        &format!("{key}.password_file"),
                        "is needed with `username`".into(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(bad(
                        &format!("{key}.username"),
                        "is needed with `password_file`".into(),
                    ));
                }
            };
            let port = e.port.unwrap_or(match e.security {
                SmtpSecurity::Starttls => 587,
                SmtpSecurity::Tls => 465,
                SmtpSecurity::Plain => 25,
            });
            sinks.push((
                key,
                Sink::Email {
                    host: e.server,
                    port,
                    security: e.security,
                    credentials,
                    from,
                    to,
                },
            ));
        }
        for (i, s) in raw.sms.into_iter().enumerate() {
            let key = format!("sms[{i}]");
            let base =
                parse_http_url(&s.base_url).map_err(|e| bad(&format!("{key}.base_url"), e))?;
            if s.account_sid.is_empty() || !s.account_sid.chars().all(|c| c.is_ascii_alphanumeric())
            {
                return Err(bad(
                    &format!("{key}.account_sid"),
                    "must be letters and digits".into(),
                ));
            }
            if s.to.is_empty() {
                return Err(bad(
                    &format!("{key}.to"),
                    "needs at least one number".into(),
                ));
            }
            let path = format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                base.path().trim_end_matches('/'),
                s.account_sid
            );
            let mut messages_url = base.clone();
            messages_url.set_path(&path);
            let auth_token =
                read_secret_file(file, &format!("{key}.auth_token_file"), &s.auth_token_file)?;
            sinks.push((
                key,
                Sink::Sms {
                    messages_url,
                    account_sid: s.account_sid,
                    auth_token,
                    from: s.from,
                    to: s.to,
                },
            ));
        }
        let keys = DaemonKeys {
            daemon: raw.daemon,
            transport: raw.transport,
            secret_file: raw.secret_file,
            driver_id: raw.driver_id,
            startup_wait_ms: raw.startup_wait_ms,
            daemon_key: raw.daemon_key,
        };
        Ok(Self {
            connection: keys.to_driver_config(file, "notify")?,
            events: raw.events.unwrap_or_else(|| EventKind::ALL.to_vec()),
            text,
            subject,
            rate_window: Duration::from_millis(raw.rate_limit.window_ms),
            rate_max: raw.rate_limit.max_messages,
            sinks,
            retry: Retry {
                attempts: raw.retry.attempts,
                initial: Duration::from_millis(raw.retry.initial_backoff_ms),
                max: Duration::from_millis(raw.retry.max_backoff_ms),
                timeout: Duration::from_millis(raw.retry.timeout_ms),
            },
        })
    }
}

fn parse_http_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{s}` must be an http:// or https:// URL"));
    }
    Ok(url)
}

// ---------------------------------------------------------------------------------------
// The driver

/// Sends notifications on role changes and cluster events (peers, failed stops, the
/// node's health and eligibility).
#[derive(Debug)]
pub struct NotifyDriver {
    events: Vec<EventKind>,
    text: Template,
    subject: Template,
    queue: mpsc::UnboundedSender<Rendered>,
    /// The last role change, whatever its result: peer events report the node's state from it.
    last_change: Option<RoleChange>,
    /// Decides whether this node is the one to send `master-lost`.
    up_peers: UpPeers,
}

impl NotifyDriver {
    /// Starts the dispatcher and sink tasks for `config` (needs a tokio runtime).
    pub fn new(config: &NotifyConfig) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("clustd-notify-driver/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let sinks: Vec<_> = config
            .sinks
            .iter()
            .zip(0u64..)
            .map(|((name, sink), index)| {
                // One jitter stream per sink: from the config's seed when it has one.
                let rng = match config.connection.rng_seed {
                    Some(seed) => StdRng::seed_from_u64(seed ^ (index + 1).rotate_left(32)),
                    None => StdRng::from_os_rng(),
                };
                let queue = spawn_sink(name.clone(), sink.clone(), config.retry, http.clone(), rng);
                (name.clone(), queue)
            })
            .collect();
        let (queue, rx) = mpsc::unbounded_channel();
        let limiter = FlapLimiter::new(config.rate_window, config.rate_max);
        tokio::spawn(dispatch(
            rx,
            limiter,
            config.rate_window,
            config.text.clone(),
            config.subject.clone(),
            sinks,
        ));
        Self {
            events: config.events.clone(),
            text: config.text.clone(),
            subject: config.subject.clone(),
            queue,
            last_change: None,
            up_peers: UpPeers::default(),
        }
    }

    /// Renders `fields` and hands the message to the dispatcher (rate limit, then sinks).
    fn enqueue(&self, fields: BTreeMap<&'static str, String>) -> Result<(), String> {
        let rendered = Rendered {
            text: self.text.render(&fields),
            subject: self.subject.render(&fields),
            fields,
        };
        self.queue
            .send(rendered)
            .map_err(|_| "the notification dispatcher stopped".to_owned())
    }
}

impl Driver for NotifyDriver {
    async fn on_role_change(&mut self, change: RoleChange) -> ActionResult {
        let now = SystemTime::now();
        let mut result = ActionResult::Ok;
        for kind in events_for(&change, &self.up_peers) {
            if !self.events.contains(&kind) {
                continue;
            }
            let fields = fields(kind.as_str(), event_text(kind, &change), &change, now);
            if let Err(e) = self.enqueue(fields) {
                result = ActionResult::Failed(e);
                break;
            }
        }
        self.last_change = Some(change);
        result
    }

    async fn on_cluster_event(&mut self, event: ClusterEvent) {
        let changed = self.up_peers.handle_event(&event);
        if let ClusterEvent::PeerUp { peer, .. } = &event
            && !changed
        {
            // The daemon repeats the connected peers on each driver connection.
            tracing::debug!(%peer, "peer already known up: not news");
            return;
        }
        let (kind, text) = cluster_event_text(&event);
        if !self.events.contains(&kind) {
            return;
        }
        let fields = cluster_fields(
            kind,
            text,
            &event,
            self.last_change.as_ref(),
            SystemTime::now(),
        );
        if let Err(e) = self.enqueue(fields) {
            tracing::error!("{} notification not sent: {e}", kind.as_str());
        }
    }
}

/// Applies the flap limiter and fans out to the sinks.
async fn dispatch(
    mut rx: mpsc::UnboundedReceiver<Rendered>,
    mut limiter: FlapLimiter,
    window: Duration,
    text: Template,
    subject: Template,
    sinks: Vec<(String, mpsc::Sender<Rendered>)>,
) {
    let fan_out = |msg: Rendered| {
        for (name, sink) in &sinks {
            // A full queue means the sink is far behind (down for long): drop rather than block the others.
            if sink.try_send(msg.clone()).is_err() {
                tracing::error!(sink = %name, "sink queue full or closed: notification dropped");
            }
        }
    };
    let mut summary_at: Option<Instant> = None;
    let mut latest_held: Option<Rendered> = None;
    let mut held_kinds: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        tokio::select! {
            biased;
            () = sleep_until(summary_at.unwrap_or_else(Instant::now)), if summary_at.is_some() => {
                let now = Instant::now();
                match limiter.take_summary(now) {
                    Some(count) => {
                        summary_at = None;
                        let latest = latest_held.take();
                        let kinds: Vec<String> = std::mem::take(&mut held_kinds)
                            .into_iter()
                            .map(|(k, n)| format!("{k} x{n}"))
                            .collect();
                        let mut fields = latest.map(|m| m.fields).unwrap_or_default();
                        let latest_text = fields.get("event_text").cloned().unwrap_or_default();
                        fields.insert("event", "flapping".into());
                        fields.insert(
                            "event_text",
                            format!(
                                "flapping: {count} notifications held back in the last {} s ({}); latest: {latest_text}",
                                window.as_secs_f64(),
                                kinds.join(", ")
                            ),
                        );
                        tracing::warn!(count, "flapping: sending one summary for the held-back notifications");
                        fan_out(Rendered { text: text.render(&fields), subject: subject.render(&fields), fields });
                    }
                    None => summary_at = limiter.holding().then(|| limiter.summary_due()),
                }
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                match limiter.offer(Instant::now()) {
                    Verdict::Send => fan_out(msg),
                    Verdict::Held { summary_at: at } => {
                        tracing::info!("rate limit reached: notification held for the flapping summary");
                        *held_kinds.entry(msg.fields.get("event").cloned().unwrap_or_default()).or_default() += 1;
                        latest_held = Some(msg);
                        summary_at = Some(at);
                    }
                }
            }
        }
    }
}

/// Runs the notify driver for `config` until `shutdown` completes.
pub async fn run_notify_driver(
    config: NotifyConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), crate::SessionError> {
    let driver = NotifyDriver::new(&config);
    crate::reconnect::run(config.connection, driver, shutdown).await
}

#[cfg(test)]
mod tests {
    use clustd_core::Term;

    use super::*;

    fn id(s: &str) -> Option<NodeId> {
        Some(NodeId::new(s).expect("valid"))
    }

    fn up(peers: &[&str]) -> UpPeers {
        let mut up = UpPeers::default();
        for p in peers {
            let peer = NodeId::new(*p).expect("valid");
            up.handle_event(&ClusterEvent::PeerUp {
                peer,
                term: Term(2),
                node: id("a"),
            });
        }
        up
    }

    #[test]
    fn events_follow_the_role_and_the_leader() {
        use DriverRole::{Backup, Master};
        use EventKind::{BecameMaster, LostMaster, MasterLost, NewMaster};
        let none = Vec::<EventKind>::new();
        // (role, previous role, leader, previous leader, peers up) for node `a` -> events
        let table = [
            // Elected: it tells of itself and, being the new master, of the election.
            (
                Master,
                Some(Backup),
                id("a"),
                id("b"),
                up(&[]),
                vec![BecameMaster, NewMaster],
            ),
            // The first role: no "before", so no election to tell of.
            (Master, None, id("a"), None, up(&[]), vec![BecameMaster]),
            // The master lost its lease and knows no peer: it cannot know better.
            (
                Backup,
                Some(Master),
                None,
                id("a"),
                up(&[]),
                vec![LostMaster, MasterLost],
            ),
            // ... with a peer connected, that peer tells the cluster; `a` only of itself.
            (
                Backup,
                Some(Master),
                None,
                id("a"),
                up(&["b"]),
                vec![LostMaster],
            ),
            // A backup learning of a new master says nothing: the new master does.
            (
                Backup,
                Some(Backup),
                id("c"),
                id("b"),
                up(&["c"]),
                none.clone(),
            ),
            // The master was lost: `a` is the smallest node connected, the lost one left out.
            (
                Backup,
                Some(Backup),
                None,
                id("b"),
                up(&[]),
                vec![MasterLost],
            ),
            (
                Backup,
                Some(Backup),
                None,
                id("b"),
                up(&["b", "c"]),
                vec![MasterLost],
            ),
            (
                Backup,
                Some(Backup),
                None,
                id("c"),
                up(&["0"]),
                none.clone(),
            ),
            (Backup, None, id("b"), None, up(&[]), none.clone()),
            (Backup, None, None, None, up(&[]), none.clone()),
            (
                Backup,
                Some(Backup),
                id("b"),
                id("b"),
                up(&[]),
                none.clone(),
            ),
        ];
        for (role, prev, leader, prev_leader, peers, events) in table {
            let mut c = RoleChange::new(role, Term(2), id("a"))
                .with_leader(leader)
                .with_previous_role(prev);
            c.previous_leader = prev_leader;
            assert_eq!(events_for(&c, &peers), events, "{c:?}, up {peers:?}");
        }
        let mut leaving =
            RoleChange::new(Backup, Term(2), id("a")).with_previous_role(Some(Master));
        leaving.source = ChangeSource::DriverShutdown;
        assert_eq!(
            events_for(&leaving, &up(&[])),
            none,
            "the driver leaving is not a role change"
        );
    }

    /// One node's notify driver, as far as deciding its events goes: its up-peer set and its
    /// last role change, fed as the daemon would.
    struct NodeView {
        me: NodeId,
        up: UpPeers,
        last: Option<RoleChange>,
        sent: Vec<EventKind>,
        /// Crashed: its daemon and driver are gone.
        dead: bool,
    }

    impl NodeView {
        fn new(me: &str) -> Self {
            Self {
                me: NodeId::new(me).expect("valid"),
                up: UpPeers::default(),
                last: None,
                sent: Vec::new(),
                dead: false,
            }
        }

        fn role(&mut self, role: DriverRole, term: u64, leader: &str) {
            if self.dead {
                return;
            }
            let leader = (!leader.is_empty()).then(|| NodeId::new(leader).expect("valid"));
            let mut change = RoleChange::new(role, Term(term), Some(self.me.clone()))
                .with_leader(leader)
                .with_previous_role(self.last.as_ref().map(|c| c.role));
            change.previous_leader = self.last.as_ref().and_then(|c| c.leader.clone());
            self.sent.extend(events_for(&change, &self.up));
            self.last = Some(change);
        }

        fn peer(&mut self, peer: &str, up: bool) {
            if self.dead {
                return;
            }
            let (peer, term, node) = (NodeId::new(peer).expect("valid"), Term(1), None);
            self.up.handle_event(&if up {
                ClusterEvent::PeerUp { peer, term, node }
            } else {
                ClusterEvent::PeerDown { peer, term, node }
            });
        }
    }

    /// Three nodes, node-1 master; then `fail` happens, and node-`elected` wins term 2.
    /// Returns what each node sent from `fail` on.
    fn failover(fail: impl Fn(&mut [NodeView; 3]), elected: usize) -> Vec<(String, EventKind)> {
        use DriverRole::{Backup, Master};
        let mut nodes = [1, 2, 3].map(|n| NodeView::new(&format!("node-{n}")));
        // Each driver connects: the first role, then the peers its daemon has connected.
        for i in 0..3 {
            let role = if i == 0 { Master } else { Backup };
            nodes[i].role(role, 1, "node-1");
            for j in (0..3).filter(|j| *j != i) {
                let peer = nodes[j].me.to_string();
                nodes[i].peer(&peer, true);
            }
        }
        for node in &mut nodes {
            node.sent.clear();
        }
        fail(&mut nodes);
        let winner = format!("node-{elected}");
        for (i, node) in nodes.iter_mut().enumerate() {
            let role = if i + 1 == elected { Master } else { Backup };
            node.role(role, 2, &winner);
        }
        nodes
            .iter()
            .flat_map(|n| n.sent.iter().map(|e| (n.me.to_string(), *e)))
            .collect()
    }

    fn count(sent: &[(String, EventKind)], kind: EventKind) -> Vec<&str> {
        sent.iter()
            .filter(|(_, k)| *k == kind)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    #[test]
    fn a_three_node_failover_sends_one_new_master_and_one_master_lost() {
        use DriverRole::Backup;
        // node-1 dies. node-2's daemon reports it down before the leaderless role; node-3's
        // role comes first (a stop goes before held events): the rule holds either way.
        let crash = |n: &mut [NodeView; 3]| {
            n[0].dead = true;
            n[1].peer("node-1", false);
            n[1].role(Backup, 1, "");
            n[2].role(Backup, 1, "");
            n[2].peer("node-1", false);
        };
        // node-1 lives but loses its lease (steps down); everyone stays connected.
        let lease_lost = |n: &mut [NodeView; 3]| {
            for node in n.iter_mut() {
                node.role(Backup, 1, "");
            }
        };
        for (name, sent, elected) in [
            ("crash, node-2 elected", failover(crash, 2), "node-2"),
            ("crash, node-3 elected", failover(crash, 3), "node-3"),
            (
                "lease lost, node-3 elected",
                failover(lease_lost, 3),
                "node-3",
            ),
            (
                "lease lost, node-1 re-elected",
                failover(lease_lost, 1),
                "node-1",
            ),
        ] {
            assert_eq!(
                count(&sent, EventKind::NewMaster),
                [elected],
                "{name}: {sent:?}"
            );
            assert_eq!(
                count(&sent, EventKind::MasterLost),
                ["node-2"],
                "{name}: {sent:?}"
            );
            assert_eq!(count(&sent, EventKind::BecameMaster), [elected], "{name}");
        }
        // The old master that lost its lease tells of itself.
        let sent = failover(lease_lost, 3);
        assert_eq!(count(&sent, EventKind::LostMaster), ["node-1"]);
    }

    #[test]
    fn peer_events_name_the_peer_and_keep_the_node_state() {
        let event = ClusterEvent::PeerDown {
            peer: NodeId::new("c").expect("valid"),
            term: Term(7),
            node: id("a"),
        };
        let (kind, text) = cluster_event_text(&event);
        assert_eq!(kind, EventKind::PeerDown);
        let time = SystemTime::UNIX_EPOCH;
        let last = RoleChange::new(DriverRole::Backup, Term(5), id("a"))
            .with_leader(id("b"))
            .with_reason("follower");
        let f = cluster_fields(kind, text.clone(), &event, Some(&last), time);
        assert_eq!(f["event"], "peer-down");
        assert_eq!(f["event_text"], "peer c is down (connection lost)");
        assert_eq!((f["peer"].as_str(), f["node"].as_str()), ("c", "a"));
        assert_eq!(f["term"], "7");
        assert_eq!((f["role"].as_str(), f["leader"].as_str()), ("backup", "b"));
        // Before any role change: the event's own fields, the rest empty but present.
        let f = cluster_fields(kind, text, &event, None, time);
        assert_eq!(f["node"], "a");
        assert_eq!(f["role"], "");
        assert!(TEMPLATE_FIELDS.iter().all(|k| f.contains_key(k)), "{f:?}");
    }

    #[test]
    fn health_events_are_named_like_the_change_and_carry_the_detail() {
        let time = SystemTime::UNIX_EPOCH;
        let last = RoleChange::new(DriverRole::Master, Term(4), id("a")).with_leader(id("a"));
        for (change, event, text) in [
            (
                HealthChange::Unhealthy,
                "unhealthy",
                "node a is unhealthy: check web failed 3 times in a row: exit status 1",
            ),
            (
                HealthChange::Healthy,
                "healthy",
                "node a is healthy again: check web failed 3 times in a row: exit status 1",
            ),
            (
                HealthChange::Ineligible,
                "ineligible",
                "node a may not be master: check web failed 3 times in a row: exit status 1",
            ),
            (
                HealthChange::Eligible,
                "eligible",
                "node a may be master again: check web failed 3 times in a row: exit status 1",
            ),
        ] {
            let health = ClusterEvent::Health {
                change,
                detail: "check web failed 3 times in a row: exit status 1".into(),
                term: Term(4),
                node: NodeId::new("a").expect("valid"),
            };
            let (kind, t) = cluster_event_text(&health);
            assert_eq!(kind.as_str(), event);
            assert_eq!(kind.as_str(), change.as_str(), "the daemon's name");
            assert_eq!(t, text);
            let f = cluster_fields(kind, t, &health, Some(&last), time);
            assert_eq!(f["event"], event);
            assert_eq!(f["node"], "a");
            assert_eq!(f["term"], "4");
            assert_eq!(
                f["detail"],
                "check web failed 3 times in a row: exit status 1"
            );
            assert_eq!((f["peer"].as_str(), f["driver"].as_str()), ("", ""));
            assert_eq!(f["role"], "master");
            assert!(TEMPLATE_FIELDS.iter().all(|k| f.contains_key(k)), "{f:?}");
        }
        // No detail: the text ends with what changed.
        let bare = ClusterEvent::Health {
            change: HealthChange::Eligible,
            detail: String::new(),
            term: Term(4),
            node: NodeId::new("a").expect("valid"),
        };
        assert_eq!(cluster_event_text(&bare).1, "node a may be master again");
        // Every event kind parses from its config name.
        for kind in EventKind::ALL {
            let parsed: EventKind =
                serde_json::from_value(serde_json::Value::String(kind.as_str().into()))
                    .expect("parses");
            assert_eq!(parsed, kind);
        }
    }
}
