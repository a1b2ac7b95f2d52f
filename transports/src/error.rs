//! Error types. Messages never contain key material: the secret is not reachable from here.

use std::io;

use clustd_core::NodeId;
pub use clustd_session::RefuseReason;
use clustd_session::SessionError;

/// Why a connection, handshake or endpoint failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The other side does not know the cluster secret (or is not speaking our protocol).
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A sealed frame did not verify: altered, forged or truncated.
    #[error("frame failed authentication (altered or forged)")]
    BadFrame,
    /// A sealed frame carried a nonce that was already used or is out of order.
    #[error("replayed or reordered frame")]
    Replay,
    /// We dialed, and the remote could not authenticate our first handshake message and
    /// said so before closing (an unauthenticated refusal, see the crate docs): it holds
    /// another secret, or, when `remote_key` is set, the public key we proved ourselves
    /// against is not its own. Anyone on the path could forge the refusal (as anyone there
    /// can reset the connection), so this is a diagnosis, never a security decision.
    #[error("authentication failed: the remote does not accept our secret ({})", if *remote_key {
        "the secrets differ, or its public key is not the one configured here"
    } else {
        "the secrets differ"
    })]
    SecretRejected {
        /// We used a handshake that proves the remote's public key too (node keys, or a
        /// driver's `daemon_key`): a wrong key is refused exactly like a wrong secret.
        remote_key: bool,
    },
    /// The other side authenticated but refused us.
    #[error("refused by the remote: {0}")]
    Refused(RefuseReason),
    /// We refused the other side.
    #[error("refused {id} ({reason})")]
    RefusedRemote {
        /// The id the remote claimed.
        id: NodeId,
        /// The admission rule it broke (unknown id, wrong secret, over a limit...).
        reason: RefuseReason,
    },
    /// We dialed a known node id and another one answered.
    #[error("expected node {expected}, got {got}")]
    UnexpectedNode {
        /// The id we dialed.
        expected: NodeId,
        /// The id that answered.
        got: NodeId,
    },
    /// The handshake did not finish within the handshake timeout.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// We dialed and the link itself (TCP and the WebSocket upgrade, or the QUIC
    /// connection) was not established within the handshake timeout: nothing answered.
    #[error("no answer (no connection within the handshake timeout)")]
    ConnectTimeout,
    /// Nothing was received for the idle timeout.
    #[error("connection idle for too long")]
    IdleTimeout,
    /// A message larger than the frame limit.
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    Oversized {
        /// Size received or to be sent.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A message that does not follow the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The connection was closed.
    #[error("connection closed")]
    Closed,
    /// Too many connections are in the handshake already.
    #[error("too many unauthenticated connections")]
    Busy,
    /// Socket error.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// WebSocket protocol error.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// QUIC error.
    #[error("quic: {0}")]
    Quic(String),
    /// TLS setup error (certificates, keys).
    #[error("tls: {0}")]
    Tls(String),
    /// Invalid configuration.
    #[error("invalid transport config: {0}")]
    Config(String),
}

/// Why [`crate::Endpoint::send`] did not queue a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No authenticated connection to that node id right now.
    #[error("not connected to {0}")]
    NotConnected(NodeId),
    /// The frame exceeds the frame limit.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    Oversized {
        /// Frame size.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// The reliable queue to that node was full: the connection was closed (it will be
    /// re-established) rather than dropping the frame silently or blocking.
    #[error("send queue to {0} full; connection closed")]
    Congested(NodeId),
}

impl From<SessionError> for TransportError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::AuthenticationFailed => Self::AuthenticationFailed,
            SessionError::BadFrame => Self::BadFrame,
            SessionError::Replay => Self::Replay,
            SessionError::Oversized { len, limit } => Self::Oversized { len, limit },
            SessionError::Protocol(why) => Self::Protocol(why),
            SessionError::Config(why) => Self::Config(why),
            // `SessionError` is non-exhaustive: anything newer is a protocol failure.
            other => Self::Protocol(other.to_string()),
        }
    }
}
