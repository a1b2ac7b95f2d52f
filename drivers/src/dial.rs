//! The connection to the daemon: the seam the session's reconnect loop dials through
//! ([`Dialer`], [`Link`], [`DialError`]) and its implementation over clustd-transport
//! ([`TransportDialer`]): one driver [`Endpoint`] per connection attempt, so that a failed or
//! dropped connection is closed for good and the reconnect policy (backoff, jitter, log once
//! per kind of failure) stays in one place, the session. Generic over the [`Net`] that makes
//! the sockets, like the daemon's endpoint.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use clustd_core::NodeId;
use clustd_transport::{
    Endpoint, EndpointConfig, Net, PeerKind, Secret, SendClass, TransportError, TransportEvent,
    TransportKind,
};
use tokio::sync::mpsc;

use crate::config::DriverConfig;

/// One failed connection attempt, with a class so the log says each kind of failure once.
#[derive(Debug)]
pub(crate) struct DialError {
    /// `refused`, `timeout`, `handshake`, ... : attempts of the same class are logged once.
    pub(crate) class: &'static str,
    /// What the log says: the failure, and what to check when that is known.
    pub(crate) message: String,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Opens connections to the daemon.
pub(crate) trait Dialer: Send + 'static {
    /// An open connection.
    type Link: Link;
    /// Dials once (with its own timeout).
    fn dial(&mut self) -> impl Future<Output = Result<Self::Link, DialError>> + Send;
}

/// One open connection to the daemon; closed when dropped.
pub(crate) trait Link: Send {
    /// The next frame; `None` once the connection is gone. Must be cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Option<Vec<u8>>> + Send;
    /// Queues one frame without blocking.
    fn send(&mut self, frame: Vec<u8>) -> Result<(), String>;
    /// Closes the connection.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Dials the daemon over clustd-transport, with sockets from `net`.
pub(crate) struct TransportDialer<N: Net> {
    net: N,
    daemon: SocketAddr,
    socket: Option<std::path::PathBuf>,
    config: EndpointConfig,
    timeout: Duration,
}

impl<N: Net> TransportDialer<N> {
    /// Checks the secret (the transport's error says why it is refused) and prepares the
    /// endpoint config.
    pub(crate) fn new(
        config: &DriverConfig,
        net: N,
    ) -> Result<Self, clustd_transport::SessionError> {
        let secret = Secret::from_bytes(config.secret().to_vec())?;
        let mut endpoint = EndpointConfig::new(
            config.transport,
            config.driver_id.clone(),
            PeerKind::Driver,
            secret,
        );
        endpoint.limits.handshake_timeout = config.connect_timeout;
        endpoint.daemon_key = config.daemon_key;
        Ok(Self {
            net,
            daemon: config.daemon,
            socket: config.daemon_socket.clone(),
            config: endpoint,
            timeout: config.connect_timeout,
        })
    }
}

impl<N: Net> TransportDialer<N> {
    /// The daemon's network address, unless the driver dials its local socket.
    fn network_daemon(&self) -> Option<SocketAddr> {
        self.socket.is_none().then_some(self.daemon)
    }
}

/// One authenticated connection to the daemon.
pub(crate) struct TransportLink {
    endpoint: Endpoint,
    events: mpsc::Receiver<TransportEvent>,
    daemon: NodeId,
}

/// Sorts failures into kinds, so each kind is logged once while it lasts, and says what
/// to check for the ones an operator can fix here: a secret that differs from the
/// daemon's, or the other transport (`daemon` is `None` on the local driver socket, where
/// there is no secret and no transport to choose).
fn describe(
    error: &TransportError,
    transport: TransportKind,
    daemon: Option<SocketAddr>,
) -> DialError {
    let hinted = |class, message| DialError { class, message };
    match (error, daemon) {
        (TransportError::SecretRejected { remote_key }, _) => {
            let key = if *remote_key {
                "; or daemon_key is not the daemon's public key \
                 (`clustd keygen --public NODE_KEY_FILE` on its machine)"
            } else {
                ""
            };
            hinted(
                "authentication failed",
                format!(
                    "authentication failed: the secret differs from the daemon's \
                     (check secret_file / the daemon's cluster.driver_secret_file){key}"
                ),
            )
        }
        (TransportError::AuthenticationFailed, Some(addr)) => hinted(
            "authentication failed",
            format!(
                "authentication failed: what answers at {addr} does not prove the drivers' \
                 credential (is it the daemon? is secret_file its cluster.driver_secret_file?)"
            ),
        ),
        (TransportError::Io(e), Some(addr))
            if e.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            hinted(
                "connection refused",
                nothing_answers(transport, addr, " (connection refused)"),
            )
        }
        (TransportError::ConnectTimeout, Some(addr)) => {
            hinted("no answer", nothing_answers(transport, addr, ""))
        }
        _ => {
            let class = match error {
                TransportError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    "connection refused"
                }
                TransportError::Io(_) => "network error",
                TransportError::AuthenticationFailed => "authentication failed",
                TransportError::Refused(_) | TransportError::RefusedRemote { .. } => {
                    "refused by the daemon"
                }
                TransportError::HandshakeTimeout | TransportError::ConnectTimeout => "no answer",
                TransportError::Config(_) | TransportError::Tls(_) => "local transport setup",
                _ => "handshake or protocol error",
            };
            DialError {
                class,
                message: format!("{error} ({class})"),
            }
        }
    }
}

/// Nothing answers `transport` at `addr`: most often the daemon speaks the other one.
fn nothing_answers(transport: TransportKind, addr: SocketAddr, detail: &str) -> String {
    // The protocols' own spelling in prose; the config value (`as_str`) for the hint.
    let ours = match transport {
        TransportKind::Quic => "QUIC",
        TransportKind::WebSocket => "WebSocket",
    };
    let other = TransportKind::ALL
        .into_iter()
        .find(|kind| *kind != transport)
        .map_or("", TransportKind::as_str);
    format!(
        "nothing answers {ours} at {addr}{detail}: \
         if the daemon's cluster.transport is {other}, set transport = \"{other}\" here"
    )
}

impl<N: Net> Dialer for TransportDialer<N> {
    type Link = TransportLink;

    async fn dial(&mut self) -> Result<TransportLink, DialError> {
        let (endpoint, mut events) = Endpoint::start(self.net.clone(), self.config.clone())
            .await
            .map_err(|e| describe(&e, self.config.kind, self.network_daemon()))?;
        match &self.socket {
            Some(path) => endpoint.dial_socket(path),
            None => endpoint.dial(self.daemon),
        }
        // A backstop only: the endpoint's own handshake timeout (`self.timeout` too) ends
        // every attempt and knows whether anything answered at all, so it must come first.
        let waited = tokio::time::timeout(self.timeout.saturating_mul(2), async {
            while let Some(event) = events.recv().await {
                match event {
                    TransportEvent::Connected {
                        id,
                        kind: PeerKind::Peer,
                        ..
                    } => return Ok(id),
                    TransportEvent::HandshakeFailed { error, .. } => {
                        return Err(describe(&error, self.config.kind, self.network_daemon()));
                    }
                    _ => {}
                }
            }
            Err(DialError {
                class: "endpoint stopped",
                message: "the transport endpoint stopped".into(),
            })
        })
        .await;
        match waited {
            Ok(Ok(daemon)) => Ok(TransportLink {
                endpoint,
                events,
                daemon,
            }),
            Ok(Err(e)) => {
                endpoint.shutdown().await;
                Err(e)
            }
            Err(_) => {
                endpoint.shutdown().await;
                Err(DialError {
                    class: "no answer",
                    message: format!(
                        "no connection within {} ms (no answer)",
                        self.timeout.saturating_mul(2).as_millis()
                    ),
                })
            }
        }
    }
}

impl Link for TransportLink {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.events.recv().await? {
                TransportEvent::Frame { from, frame, .. } if from == self.daemon => {
                    return Some(frame);
                }
                TransportEvent::Disconnected { id, .. } if id == self.daemon => return None,
                _ => {}
            }
        }
    }

    fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        self.endpoint
            .send(&self.daemon, frame, SendClass::Reliable)
            .map_err(|e| e.to_string())
    }

    async fn close(self) {
        self.endpoint.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7400))
    }

    #[test]
    fn a_refused_secret_says_the_secrets_differ() {
        let plain = describe(
            &TransportError::SecretRejected { remote_key: false },
            TransportKind::Quic,
            Some(addr()),
        );
        assert_eq!(
            plain.to_string(),
            "authentication failed: the secret differs from the daemon's (check secret_file / \
             the daemon's cluster.driver_secret_file)"
        );
        let keyed = describe(
            &TransportError::SecretRejected { remote_key: true },
            TransportKind::Quic,
            Some(addr()),
        );
        assert!(
            keyed.to_string().ends_with(
                "; or daemon_key is not the daemon's public key \
                 (`clustd keygen --public NODE_KEY_FILE` on its machine)"
            ),
            "{keyed}"
        );
        assert_eq!(plain.class, keyed.class);
    }

    #[test]
    fn nothing_answering_hints_at_the_other_transport() {
        let quic = describe(
            &TransportError::ConnectTimeout,
            TransportKind::Quic,
            Some(addr()),
        );
        assert_eq!(
            quic.to_string(),
            "nothing answers QUIC at 127.0.0.1:7400: if the daemon's cluster.transport is \
             websocket, set transport = \"websocket\" here"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let ws = describe(
            &TransportError::Io(refused),
            TransportKind::WebSocket,
            Some(addr()),
        );
        assert_eq!(
            ws.to_string(),
            "nothing answers WebSocket at 127.0.0.1:7400 (connection refused): if the daemon's \
             cluster.transport is quic, set transport = \"quic\" here"
        );
        // A stalled handshake is not "nothing answers"; the local socket has no transport.
        let stalled = describe(
            &TransportError::HandshakeTimeout,
            TransportKind::Quic,
            Some(addr()),
        );
        assert_eq!(stalled.to_string(), "handshake timed out (no answer)");
        let socket = describe(
            &TransportError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            TransportKind::Quic,
            None,
        );
        assert!(!socket.to_string().contains("transport"), "{socket}");
        assert_eq!(socket.class, "connection refused");
    }
}
