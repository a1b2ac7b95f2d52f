//! What the endpoint tells the daemon: the events its connections produce, in the order
//! the registry of connections settles them.

use std::net::SocketAddr;

use clustd_core::NodeId;
use clustd_session::PeerKind;

use crate::error::TransportError;
use crate::process::PeerProcess;

/// What the endpoint tells the daemon.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportEvent {
    /// An authenticated connection to `id` now exists (after a `Disconnected`, or the first).
    Connected {
        /// Authenticated node id.
        id: NodeId,
        /// Whether `id` is a daemon (a peer node) or a driver: the daemon routes the frames
        /// of each to a different handler.
        kind: PeerKind,
        /// The peer's process, from the kernel's credentials of the local driver socket
        /// (`SO_PEERCRED`: not something the peer says) at accept; `None` over the network.
        process: Option<PeerProcess>,
    },
    /// The connection to `id` is gone (or was replaced; a `Connected` follows then). Reliable
    /// frames may have been lost only when this is announced; when the duplicate the other
    /// side dialed replaced it, nothing was (the pair is announced all the same).
    Disconnected {
        /// Authenticated node id.
        id: NodeId,
        /// Whether `id` is a daemon (a peer node) or a driver: the daemon routes the frames
        /// of each to a different handler.
        kind: PeerKind,
    },
    /// A frame from an authenticated connection.
    Frame {
        /// Sender.
        from: NodeId,
        /// Whether `id` is a daemon (a peer node) or a driver: the daemon routes the frames
        /// of each to a different handler.
        kind: PeerKind,
        /// The frame as the sender passed it to [`Endpoint::send`](crate::Endpoint::send).
        frame: Vec<u8>,
    },
    /// A connection failed before it was authenticated (wrong secret, refused, timeout...).
    /// Best effort: dropped when the event queue is full, so a flood cannot fill it.
    HandshakeFailed {
        /// Remote address.
        addr: SocketAddr,
        /// What went wrong (never contains the secret).
        error: TransportError,
    },
}
