//! The settings every driver shares — how to reach the daemon ([`DriverConfig`]) — and
//! loading driver configs (TOML) with errors that name the file, the key and what is wrong.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clustd_core::{InvalidNodeId, NodeId};
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;

/// Which transport the daemon's cluster endpoint speaks (`transport` in driver configs:
/// `"quic"` or `"websocket"`).
pub use clustd_transport::TransportKind;

/// The transport when a config names none: QUIC, the daemon's default.
pub(crate) fn default_transport() -> TransportKind {
    TransportKind::Quic
}

/// How a driver reaches its daemon, and how patient it is.
#[derive(Clone)]
#[non_exhaustive]
pub struct DriverConfig {
    /// The daemon's cluster address (`cluster.listen` of the local daemon).
    pub daemon: SocketAddr,
    /// The daemon's transport.
    pub transport: TransportKind,
    /// This driver's id, unique among the daemon's drivers.
    pub driver_id: NodeId,
    /// How long to wait for the first role before settling into backup (default 5 s).
    pub startup_wait: Duration,
    /// First reconnect delay (default 100 ms); doubles per failure.
    pub reconnect_initial: Duration,
    /// Largest reconnect delay (default 5 s).
    pub reconnect_max: Duration,
    /// How long one connection attempt (dial + handshake) may take (default 5 s).
    pub connect_timeout: Duration,
    /// Seeds the reconnect jitter (and the notify driver's retry jitter), for runs that must
    /// repeat exactly (simulations, tests). `None` (the default): seeded from the
    /// [`Net`](clustd_transport::Net)'s `random_seed()` — OS randomness in production.
    pub rng_seed: Option<u64>,
    /// The daemon's public key (its node key, `clustd keygen --public` on that node): the
    /// daemon must prove it, so nobody else holding the drivers' credential can pose as the
    /// daemon and tell this driver it is master. `None`: any holder who answers at `daemon`.
    pub daemon_key: Option<clustd_transport::PublicKey>,
    /// Reach the daemon on its local driver socket instead of `daemon` (`daemon =
    /// "unix:PATH"` in a driver config): no secret is used, the socket's permissions decide.
    pub daemon_socket: Option<std::path::PathBuf>,
    secret: Vec<u8>,
}

impl fmt::Debug for DriverConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverConfig")
            .field("daemon", &self.daemon)
            .field("transport", &self.transport)
            .field("driver_id", &self.driver_id)
            .field("rng_seed", &self.rng_seed)
            .field("daemon_key", &self.daemon_key)
            .field("daemon_socket", &self.daemon_socket)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl DriverConfig {
    /// A config with a generated driver id (`{kind}-{8 hex digits}`, from OS randomness;
    /// replace it with [`DriverConfig::with_driver_id`] for a fixed one, as a simulation
    /// does) and default timings.
    pub fn new(
        daemon: SocketAddr,
        transport: TransportKind,
        secret: impl Into<Vec<u8>>,
        kind: &str,
    ) -> Self {
        Self {
            daemon,
            transport,
            driver_id: generate_driver_id(kind),
            startup_wait: Duration::from_secs(5),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            rng_seed: None,
            daemon_key: None,
            daemon_socket: None,
            secret: secret.into(),
        }
    }

    /// Uses `id` instead of a generated id.
    pub fn with_driver_id(mut self, id: impl AsRef<str>) -> Result<Self, InvalidNodeId> {
        self.driver_id = NodeId::new(id)?;
        Ok(self)
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// A fresh, unique-enough driver id: `kind` (reduced to valid id characters) and 32 random bits.
pub fn generate_driver_id(kind: &str) -> NodeId {
    let kind: String = kind
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(40)
        .collect();
    let kind = if kind.is_empty() {
        "driver".to_owned()
    } else {
        kind
    };
    let suffix: u32 = rand::rngs::StdRng::from_os_rng().random();
    // Valid by construction: filtered characters, at most 40 + 1 + 8 long.
    NodeId::new(format!("{kind}-{suffix:08x}")).expect("generated ids are valid")
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file (or a file it names) could not be read.
    #[error("{file}: cannot read {what}: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// What was being read (`the config file`, or the key naming another file).
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key is missing, unknown, of the wrong type or has a bad value.
    #[error("{file}{}: key `{key}`: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// The key, dotted from the root (`script.timeout_ms`); `(syntax)` for a TOML syntax error.
        key: String,
        /// The line in the file, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::Read { .. } => None,
        }
    }

    pub(crate) fn invalid(file: &Path, key: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            line: None,
            message: message.into(),
        }
    }
}

/// Reads and parses `file`.
pub(crate) fn load_toml<T: DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        what: "the config file".into(),
        source,
    })?;
    parse_toml(file, &text)
}

/// Parses `text` (from `file`, for messages), naming the failing key.
pub(crate) fn parse_toml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError::Invalid {
        file: file.to_owned(),
        key: "(syntax)".into(),
        line: line_of(e.span()),
        message: e.message().trim().to_owned(),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let mut key = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().trim().to_owned();
        // serde reports unknown and missing fields at the table that holds them: name the key itself.
        for prefix in ["unknown field `", "missing field `"] {
            let field = message
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next());
            if let Some(field) = field
                && key != field
                && !key.ends_with(&format!(".{field}"))
            {
                key = if key == "." || key.is_empty() {
                    field.to_owned()
                } else {
                    format!("{key}.{field}")
                };
            }
        }
        if key == "." || key.is_empty() {
            key = "(root)".into();
        }
        ConfigError::Invalid {
            file: file.to_owned(),
            key,
            line: line_of(inner.span()),
            message,
        }
    })
}

/// How a driver reaches its daemon: the top-level keys shared by both driver configs.
#[derive(Clone, Debug)]
pub(crate) struct DaemonKeys {
    pub(crate) daemon: String,
    pub(crate) transport: TransportKind,
    pub(crate) secret_file: Option<PathBuf>,
    pub(crate) driver_id: Option<String>,
    pub(crate) startup_wait_ms: Option<u64>,
    pub(crate) daemon_key: Option<String>,
}

impl DaemonKeys {
    /// Checks the values and reads the secret file.
    pub(crate) fn to_driver_config(
        &self,
        file: &Path,
        kind: &str,
    ) -> Result<DriverConfig, ConfigError> {
        // `unix:PATH`: the daemon's local driver socket, where no secret is needed.
        let socket = match self.daemon.strip_prefix("unix:") {
            Some("") => {
                return Err(ConfigError::invalid(
                    file,
                    "daemon",
                    "`unix:` needs the socket's path, e.g. unix:/var/lib/clustd/driver.sock"
                        .to_string(),
                ));
            }
            Some(path) => Some(resolve(file, Path::new(path))),
            None => None,
        };
        let daemon = match &socket {
            Some(_) => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            None => self.daemon.parse().map_err(|e| {
                ConfigError::invalid(
                    file,
                    "daemon",
                    format!(
                        "`{}` is not an address like 127.0.0.1:7400 or a socket like unix:/var/lib/clustd/driver.sock: {e}",
                        self.daemon
                    ),
                )
            })?,
        };
        let secret = match (&self.secret_file, &socket) {
            (Some(secret_file), _) => {
                let secret_path = resolve(file, secret_file);
                let secret =
                    std::fs::read_to_string(&secret_path).map_err(|source| ConfigError::Read {
                        file: file.to_owned(),
                        what: format!("`secret_file` {}", secret_path.display()),
                        source,
                    })?;
                if let Some(warning) = secret_file_mode_warning("secret_file", &secret_path) {
                    tracing::warn!("{}: {warning}", file.display());
                }
                let secret = secret.trim().to_owned();
                if secret.is_empty() {
                    return Err(ConfigError::invalid(
                        file,
                        "secret_file",
                        format!("{} is empty", secret_path.display()),
                    ));
                }
                secret
            }
            // Not used on the socket; any bytes of the minimum length will do.
            (None, Some(_)) => "no secret is used on the daemon's local socket".to_owned(),
            (None, None) => {
                return Err(ConfigError::invalid(
                    file,
                    "secret_file",
                    "missing: point it at the drivers' credential (the daemon's cluster.driver_secret_file), or connect on the daemon's local socket with daemon = \"unix:PATH\", which needs none".to_string(),
                ));
            }
        };
        let mut config = DriverConfig::new(daemon, self.transport, secret, kind);
        config.daemon_socket = socket.clone();
        if let Some(id) = &self.driver_id {
            config = config
                .with_driver_id(id.clone())
                .map_err(|e| ConfigError::invalid(file, "driver_id", e.to_string()))?;
        }
        if let Some(ms) = self.startup_wait_ms {
            config.startup_wait = Duration::from_millis(ms);
        }
        match &self.daemon_key {
            Some(_) if socket.is_some() => {
                return Err(ConfigError::invalid(
                    file,
                    "daemon_key",
                    "is for a daemon reached over the transport; on the local socket its permissions decide who serves and who connects: remove daemon_key, or use the daemon's cluster address".to_string(),
                ));
            }
            Some(text) => {
                let key = text.parse().map_err(|e: clustd_transport::SessionError| {
                    ConfigError::invalid(file, "daemon_key", e.to_string())
                })?;
                config.daemon_key = Some(key);
            }
            None if socket.is_some() => {}
            None => tracing::warn!(
                "{}: daemon_key is not set: the daemon is not authenticated, so anyone holding the drivers' credential who answers at {} could tell this driver it is master; set it to the daemon's public key (`clustd keygen --public NODE_KEY_FILE` on its machine)",
                file.display(),
                self.daemon
            ),
        }
        Ok(config)
    }
}

/// A warning when the secret file at `path` (named by config key `key`) can be read or
/// written by anyone but its owner: its group or other users. The daemon uses it too
/// (it depends on this crate already), so both say the same thing.
#[cfg(unix)]
pub fn secret_file_mode_warning(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    let who = match (mode & 0o070 != 0, mode & 0o007 != 0) {
        (false, false) => return None,
        (true, false) => "its group",
        (false, true) => "other users",
        (true, true) => "its group and other users",
    };
    Some(format!(
        "{key} {} is accessible to {who} (mode {:o}); run `chmod 600 {}`",
        path.display(),
        mode & 0o777,
        path.display()
    ))
}

/// A warning when the secret file can be read by others (never on this platform).
#[cfg(not(unix))]
pub fn secret_file_mode_warning(_key: &str, _path: &Path) -> Option<String> {
    None
}

/// Paths in a config are relative to the config file's folder.
pub(crate) fn resolve(config_file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        config_file.parent().unwrap_or(Path::new(".")).join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owner-only is quiet; any access for the group or others is named in the warning.
    #[cfg(unix)]
    #[test]
    fn the_secret_file_mode_warning_names_who_can_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "s").expect("write");
        for (mode, who) in [
            (0o600, None),
            (0o400, None),
            (0o640, Some("its group (")),
            (0o604, Some("other users (")),
            (0o644, Some("its group and other users (")),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let warning = secret_file_mode_warning("secret_file", &path);
            match who {
                None => assert_eq!(warning, None, "mode {mode:o}"),
                Some(who) => {
                    let w = warning.expect("a warning");
                    assert!(w.contains(who) && w.contains("chmod 600"), "{w}");
                }
            }
        }
    }
}
