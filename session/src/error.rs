//! Why a handshake, a sealed message or a credential was refused. Messages never contain key
//! material: the secret is not reachable from here.

use serde::{Deserialize, Serialize};

/// Why a handshake or a sealed message failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The other side does not hold a credential we accept (or is not speaking our protocol).
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A sealed message did not verify: altered, forged or truncated.
    #[error("frame failed authentication (altered or forged)")]
    BadFrame,
    /// A sealed message carried a nonce that was already used or is out of order.
    #[error("replayed or reordered frame")]
    Replay,
    /// A message larger than the limit.
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    Oversized {
        /// Size received or to be sent.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A message that authenticated but does not follow the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// An unusable credential or setting.
    #[error("{0}")]
    Config(String),
}

/// Why an authenticated remote was refused. Travels (encrypted) in the handshake reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The node id is not in the configured peers.
    UnknownNode,
    /// This endpoint does not accept that kind (e.g. drivers at a node without `accept_drivers`).
    KindNotAccepted,
    /// The node id is our own.
    SameId,
    /// A connection with this id already exists and is kept instead.
    Duplicate,
    /// This node id must prove its configured node key (and did not, or proved another).
    KeyRequired,
    /// `Limits::max_drivers` drivers are connected already; retry later.
    TooManyDrivers,
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::UnknownNode => "unknown node id",
            Self::KindNotAccepted => "kind not accepted",
            Self::SameId => "same node id as ours",
            Self::Duplicate => "duplicate connection",
            Self::KeyRequired => "this node id must prove its node key",
            Self::TooManyDrivers => "too many drivers are connected",
        })
    }
}
