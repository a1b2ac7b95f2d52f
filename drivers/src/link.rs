//! The daemon connection over clustd-transport: one driver [`Endpoint`] per connection
//! attempt, so that a failed or dropped connection is closed for good and the reconnect
//! policy (backoff, jitter, log once per kind of failure) stays in one place, the session.
//! Generic over the [`Net`] that makes the sockets, like the daemon's endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use clustd_core::NodeId;
use clustd_transport::{
    Endpoint, EndpointConfig, Net, PeerKind, Secret, SendClass, TransportError, TransportEvent,
};
use tokio::sync::mpsc;

use crate::session::{DialError, Dialer, DriverConfig, Link, SessionError};

/// Dials the daemon over clustd-transport, with sockets from `net`.
pub(crate) struct TransportDialer<N: Net> {
    net: N,
    daemon: SocketAddr,
    socket: Option<std::path::PathBuf>,
    config: EndpointConfig,
    timeout: Duration,
}

impl<N: Net> TransportDialer<N> {
    /// Checks the secret and prepares the endpoint config.
    pub(crate) fn new(config: &DriverConfig, net: N) -> Result<Self, SessionError> {
        let secret = Secret::from_bytes(config.secret().to_vec())
            .map_err(|e| SessionError::Transport(e.to_string()))?;
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

/// One authenticated connection to the daemon.
pub(crate) struct TransportLink {
    endpoint: Endpoint,
    events: mpsc::Receiver<TransportEvent>,
    daemon: NodeId,
}

/// Sorts failures into kinds, so each kind is logged once while it lasts.
fn classify(error: &TransportError) -> &'static str {
    match error {
        TransportError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused"
        }
        TransportError::Io(_) => "network error",
        TransportError::AuthenticationFailed => {
            "authentication failed: is the secret the daemon's?"
        }
        TransportError::Refused(_) | TransportError::RefusedRemote { .. } => {
            "refused by the daemon"
        }
        TransportError::HandshakeTimeout => "no answer",
        TransportError::Config(_) | TransportError::Tls(_) => "local transport setup",
        _ => "handshake or protocol error",
    }
}

impl<N: Net> Dialer for TransportDialer<N> {
    type Link = TransportLink;

    async fn dial(&mut self) -> Result<TransportLink, DialError> {
        let (endpoint, mut events) = Endpoint::start(self.net.clone(), self.config.clone())
            .await
            .map_err(|e| DialError {
                class: classify(&e),
                message: e.to_string(),
            })?;
        match &self.socket {
            Some(path) => endpoint.dial_socket(path),
            None => endpoint.dial(self.daemon),
        }
        let waited = tokio::time::timeout(self.timeout, async {
            while let Some(event) = events.recv().await {
                match event {
                    TransportEvent::Connected {
                        id,
                        kind: PeerKind::Peer,
                        ..
                    } => return Ok(id),
                    TransportEvent::HandshakeFailed { error, .. } => {
                        return Err(DialError {
                            class: classify(&error),
                            message: error.to_string(),
                        });
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
                    message: format!("no connection within {} ms", self.timeout.as_millis()),
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
