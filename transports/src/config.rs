//! What an endpoint is configured with: identity, secret, peers, limits.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clustd_core::NodeId;
use clustd_core::codec::MAX_FRAME_LEN;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

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

/// What the other end of a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PeerKind {
    /// Another daemon of the cluster.
    Peer,
    /// A driver attached to a daemon.
    Driver,
}

/// The cluster secret. Never printed; zeroized on drop.
///
/// Any length of at least [`Secret::MIN_LEN`] bytes; the Noise pre-shared key is
/// SHA-256 of a label and the secret, so text and binary secrets both work.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// The shortest secret accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// Wraps secret bytes, refusing secrets shorter than [`Secret::MIN_LEN`].
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self, crate::TransportError> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.len() < Self::MIN_LEN {
            return Err(crate::TransportError::Config(format!(
                "the cluster secret must be at least {} bytes, got {}",
                Self::MIN_LEN,
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    /// Whether two secrets are the same bytes (to refuse a driver credential that is the
    /// cluster secret). Not constant-time: for configuration checks only.
    pub fn same_bytes(&self, other: &Secret) -> bool {
        *self.0 == *other.0
    }

    /// The 32-byte Noise pre-shared key derived from the secret for one use (`label`):
    /// peers and drivers derive different keys from the same bytes, so a secret used as a
    /// driver credential never opens a peer handshake.
    pub(crate) fn psk(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(label);
        ctx.update(&self.0);
        let digest = ctx.finish();
        let mut psk = Zeroizing::new([0u8; 32]);
        psk.copy_from_slice(digest.as_ref());
        psk
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A node's static X25519 key pair (`clustd keygen --node`): the node proves it in every
/// peer handshake, and its peers know the public half. Never printed; zeroized on drop.
#[derive(Clone)]
pub struct NodeKey {
    private: Zeroizing<[u8; 32]>,
    public: PublicKey,
}

impl NodeKey {
    /// The key pair with this private key (any 32 bytes: X25519 clamps them).
    pub fn from_private(private: [u8; 32]) -> Self {
        let private = Zeroizing::new(private);
        let public = crate::session::public_key_of(&private);
        Self { private, public }
    }

    /// Parses the private key from its text form (64 hex characters, surrounding
    /// whitespace ignored). The error never contains the text.
    pub fn from_hex(text: &str) -> Result<Self, crate::TransportError> {
        let bytes = parse_hex32(text.trim()).ok_or_else(|| {
            crate::TransportError::Config(
                "a node key is 64 hex characters (make one with `clustd keygen --node`)".into(),
            )
        })?;
        Ok(Self::from_private(*bytes))
    }

    /// The private key as 64 hex characters (for writing the key file).
    pub fn private_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex(&self.private[..]))
    }

    /// The public half, which the node's peers configure.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn private(&self) -> &[u8; 32] {
        &self.private
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey(public {}, private <redacted>)", self.public)
    }
}

/// A node's public key: 32 bytes, written as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = crate::TransportError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let key = parse_hex32(text.trim()).map(|b| Self(*b)).ok_or_else(|| {
            crate::TransportError::Config(format!(
                "a public key is 64 hex characters, got {} characters",
                text.trim().len()
            ))
        })?;
        if crate::session::is_weak_public_key(&key.0) {
            return Err(crate::TransportError::Config(
                "not a usable public key (a small-order point such as all zeros: a placeholder?); print the real one with `clustd keygen --public KEY_FILE`".into(),
            ));
        }
        Ok(key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let raw = text.as_bytes();
    if raw.len() != 64 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (i, pair) in raw.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
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
    /// it), and over QUIC it travels as a datagram, so it is never retransmitted late.
    Heartbeat,
    /// Delivered in order unless the connection breaks or is replaced by a duplicate
    /// connection (both ends dialed each other, or the remote restarted; frames in flight
    /// on the replaced connection are lost, like in a break). Never dropped because a queue is full without an error. The
    /// election protocol tolerates loss.
    Reliable,
}

/// Limits and timers. The defaults suit a LAN cluster with 100 ms heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame sent or accepted; a larger one closes the connection.
    pub max_frame_len: usize,
    /// Time allowed from accepting a socket (or dialing) to an authenticated session.
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
    /// The connection is closed after this long without receiving anything.
    pub idle_timeout: Duration,
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
            event_queue: 4096,
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
    /// by file permissions, no secret (see [`crate::LocalSocket`]). Not in the simulation.
    pub driver_socket: Option<crate::LocalSocket>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_and_checked() {
        let secret = Secret::from_bytes(b"very secret cluster key".to_vec()).expect("long enough");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert!(Secret::from_bytes(b"short".to_vec()).is_err());
    }

    #[test]
    fn node_keys_round_trip_as_hex_and_are_redacted() {
        let key = NodeKey::from_private([7; 32]);
        let again = NodeKey::from_hex(&key.private_hex()).expect("parses");
        assert_eq!(again.public(), key.public());
        let public: PublicKey = key.public().to_string().parse().expect("parses");
        assert_eq!(public, key.public());
        assert!(!format!("{key:?}").contains(&*key.private_hex()));
        let err = NodeKey::from_hex("zz").expect_err("refused").to_string();
        assert!(!err.contains("zz"), "{err}");
        assert!("12ab".parse::<PublicKey>().is_err());
        // Small-order points would let anyone with the secret pass as that peer.
        assert!("00".repeat(32).parse::<PublicKey>().is_err());
        let one = format!("01{}", "00".repeat(31));
        assert!(one.parse::<PublicKey>().is_err());
    }

    #[test]
    fn transport_kind_from_config_strings() {
        use serde::de::value::{Error, StrDeserializer};
        let parse = |s: &str| TransportKind::deserialize(StrDeserializer::<Error>::new(s));
        assert_eq!(parse("quic").ok(), Some(TransportKind::Quic));
        assert_eq!(parse("websocket").ok(), Some(TransportKind::WebSocket));
        assert!(parse("tcp").is_err());
    }
}
