//! What an endpoint is configured with: identity, secret, peers, limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clustd_core::NodeId;
use clustd_core::codec::MAX_FRAME_LEN;
use clustd_session::{NodeKey, PeerKind, PublicKey, Secret};
use serde::{Deserialize, Serialize};

/// Which transport carries the frames (`cluster.transport` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// QUIC (quinn, rustls with ring); heartbeats as datagrams.
    Quic,
    /// WebSocket over TCP (`ws://`, or `wss://` with [`TlsFiles`]).
    #[serde(rename = "websocket")]
    WebSocket,
}

impl TransportKind {
    /// Both, in the order tests and benchmarks run them.
    pub const ALL: [TransportKind; 2] = [TransportKind::Quic, TransportKind::WebSocket];

    /// `"quic"` or `"websocket"`: the `cluster.transport` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::WebSocket => "websocket",
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Certificate and private key (PEM files) for serving `wss://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How urgent and how lossy a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendClass {
    /// Superseded by the next one: at most one waits per connection (a newer one replaces
    /// it), and over QUIC it travels as a datagram, so it is never retransmitted late. Not
    /// ordered: datagrams reorder, and while two crossing connections swap, an older one
    /// may still arrive on the replaced connection after a newer one on its successor.
    Heartbeat,
    /// Delivered once and in order while the remote stays connected, including across
    /// the swap when both ends dialed each other and one connection replaces the other.
    /// Lost only when a `Disconnected` is announced: the connection broke, the remote
    /// restarted, or the queue overflowed (`SendError::Congested`, never silently). The
    /// election protocol tolerates that loss.
    Reliable,
}

/// Limits and timers. The defaults suit a LAN cluster with 100 ms heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame sent or accepted; a larger one closes the connection.
    pub max_frame_len: usize,
    /// Time allowed from accepting a socket (or dialing) to an authenticated session; also
    /// the bound on a replaced duplicate connection's wind-down (its remote's goodbye, and
    /// on QUIC the wait for the remote to close after ours).
    pub handshake_timeout: Duration,
    /// Connections still in the handshake at once (accepted side). When all are taken, a
    /// newcomer evicts the oldest that has not sent its first handshake message yet (or,
    /// failing that, the oldest): a flood of silent connections cannot keep a peer out.
    pub max_unauthenticated: usize,
    /// Of those, at most this many from one source IP address that is not a configured
    /// peer's; a newcomer beyond it evicts that address's own oldest connection.
    pub max_unauthenticated_per_ip: usize,
    /// Of those, how many only connections from a configured peer's IP address may use
    /// (at most half of `max_unauthenticated`).
    pub unauthenticated_reserved_for_peers: usize,
    /// Time allowed from accepting a socket to the first handshake message (an honest
    /// dialer sends it within a round trip or two) while more than half of
    /// `max_unauthenticated` is taken; otherwise, and for the rest of the handshake,
    /// `handshake_timeout` applies.
    pub first_message_timeout: Duration,
    /// Authenticated driver connections at once (accepted side). One more is closed right
    /// after its handshake, so drivers holding the credential cannot exhaust the daemon's
    /// file descriptors; a replacement for a connected driver id is always accepted.
    pub max_drivers: usize,
    /// Reliable frames waiting per connection before it is considered too slow and closed.
    pub send_queue: usize,
    /// First reconnect delay (before jitter).
    pub backoff_min: Duration,
    /// Largest reconnect delay (before jitter).
    pub backoff_max: Duration,
    /// A keepalive is sent after this long without sending anything.
    pub keepalive_interval: Duration,
    /// A connection to a daemon is closed after this long without receiving anything: a
    /// stalled stream (a cut link whose retransmissions never arrive) is noticed in this
    /// time and redialed. Peers must send keepalives well within it (see
    /// [`Limits::for_idle_timeout`]).
    pub idle_timeout: Duration,
    /// The same for a connection from a driver: drivers prove they are alive at their own
    /// pace (the driver library every 250 ms), which the daemon's election timing does not
    /// set, so it has its own, fixed bound.
    pub driver_idle_timeout: Duration,
    /// Capacity of the event channel returned by [`crate::Endpoint::start`].
    pub event_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_len: MAX_FRAME_LEN,
            handshake_timeout: Duration::from_secs(5),
            max_unauthenticated: 64,
            max_unauthenticated_per_ip: 8,
            unauthenticated_reserved_for_peers: 16,
            first_message_timeout: Duration::from_secs(1),
            max_drivers: 128,
            send_queue: 1024,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            driver_idle_timeout: Duration::from_secs(5),
            event_queue: 4096,
        }
    }
}

impl Limits {
    /// The defaults with the timers scaled to `idle` (the daemon passes its minimum
    /// election timeout): connections to daemons close after `idle` of silence; keepalives
    /// go after `idle / 4` without sending, so a peer whose own `idle` is half ours still
    /// hears us in time, with room for a busy scheduler; reconnects back off to at most
    /// `idle`, so a healed link is redialed within about that. The driver bound stays.
    pub fn for_idle_timeout(idle: Duration) -> Self {
        let defaults = Self::default();
        Self {
            idle_timeout: idle,
            keepalive_interval: idle / 4,
            backoff_max: idle.max(defaults.backoff_min),
            ..defaults
        }
    }
}

/// Everything an [`crate::Endpoint`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// QUIC or WebSocket.
    pub kind: TransportKind,
    /// Our node id (a daemon's id, or a driver's id).
    pub local_id: NodeId,
    /// Whether we are a daemon (`Peer`) or a driver.
    pub local_kind: PeerKind,
    /// A daemon's cluster secret (the pre-shared key of every peer handshake), or a
    /// driver's credential (the secret its daemon accepts from drivers).
    pub secret: Secret,
    /// This daemon's node key. Required when any peer has a key in `peer_keys`.
    pub node_key: Option<NodeKey>,
    /// Where to listen; daemons listen, drivers do not.
    pub listen: Option<SocketAddr>,
    /// Peers to dial and keep connected; also the only peer ids accepted inbound.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The public key each peer must prove. A peer listed here can only be reached, and
    /// only connect, by proving this key; a peer without an entry authenticates with the
    /// cluster secret alone, which anyone holding it can claim (kept for migrating a
    /// cluster to node keys; see README "Security").
    pub peer_keys: BTreeMap<NodeId, PublicKey>,
    /// Accept `Driver` connections with any valid id (that is not a peer's or ours).
    pub accept_drivers: bool,
    /// Serve local drivers on this Unix socket too (a daemon with `accept_drivers`): access
    /// by file permissions, no secret (see [`LocalSocket`]). Not in the simulation.
    pub driver_socket: Option<LocalSocket>,
    /// A driver's daemon's public key (its node key), which the daemon must prove; `None`:
    /// anyone holding the drivers' credential who answers at the daemon's address passes.
    pub daemon_key: Option<PublicKey>,
    /// The credential drivers must prove; `None` means the cluster secret (as before
    /// driver credentials existed). A driver handshake can only ever yield a driver.
    pub driver_secret: Option<Secret>,
    /// Serve `wss://` with this certificate (WebSocket only; QUIC makes its own certificate).
    pub tls: Option<TlsFiles>,
    /// Dial peers with `wss://` (the server certificate is not checked: the Noise
    /// handshake authenticates). Defaults to `tls.is_some()` in [`EndpointConfig::new`].
    pub dial_tls: bool,
    /// Limits and timers.
    pub limits: Limits,
}

impl EndpointConfig {
    /// A config with no listener, no peers, no drivers accepted and default limits.
    pub fn new(
        kind: TransportKind,
        local_id: NodeId,
        local_kind: PeerKind,
        secret: Secret,
    ) -> Self {
        Self {
            kind,
            local_id,
            local_kind,
            secret,
            node_key: None,
            listen: None,
            peers: BTreeMap::new(),
            peer_keys: BTreeMap::new(),
            accept_drivers: false,
            driver_socket: None,
            daemon_key: None,
            driver_secret: None,
            tls: None,
            dial_tls: false,
            limits: Limits::default(),
        }
    }
}

/// Where a daemon serves its local drivers, and who may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSocket {
    /// The socket's path.
    pub path: PathBuf,
    /// Its permission bits (e.g. `0o660`: owner and group may connect).
    pub mode: u32,
    /// Its group (numeric id), if it should not keep the daemon's.
    pub gid: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_kind_from_config_strings() {
        use serde::de::value::{Error, StrDeserializer};
        let parse = |s: &str| TransportKind::deserialize(StrDeserializer::<Error>::new(s));
        assert_eq!(parse("quic").ok(), Some(TransportKind::Quic));
        assert_eq!(parse("websocket").ok(), Some(TransportKind::WebSocket));
        assert!(parse("tcp").is_err());
    }
}
