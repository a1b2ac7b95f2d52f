//! The secure channel shared by both transports, sans-IO: the Noise handshakes that
//! authenticate a connection, and the sealing of frames after it.
//!
//! Three handshakes, one per credential (see [`Credential`]); the responder tries each it
//! accepts on message 1 (trial decryption: nothing on the wire says which one is used):
//! - **node key** (`Noise_IKpsk1_25519_ChaChaPoly_SHA256`, PSK = the cluster secret): the
//!   dialing daemon knows the responder's public key and proves its own; the responder maps
//!   the proven key to the one node id it belongs to. Claiming another node's id is
//!   impossible without that node's private key.
//! - **cluster secret** (`Noise_NNpsk0_…`, PSK derived from the secret): peers without
//!   node keys (before a cluster migrates to them). Anyone with the secret can claim any
//!   keyless peer's id.
//! - **driver** (`Noise_NNpsk0_…`, PSK derived from the driver credential under a label of
//!   its own): a driver. Whatever its hello says, such a connection is only ever a driver.
//!   A driver that knows its daemon's public key uses `Noise_NKpsk0_…` instead: the daemon
//!   proves its node key, so no other holder of the drivers' credential can pose as it.
//!
//! Each handshake, with prologue = a label per handshake + transport binding (e.g. a QUIC
//! TLS exporter value):
//! 1. initiator → responder: message 1 + encrypted [`Hello`] (id, kind);
//! 2. responder → initiator: message 2 + encrypted [`Reply`] (its own hello, or a refusal);
//! 3. initiator → responder: first sealed message, a key confirmation. Only this proves to
//!    the responder that the initiator holds its credential *now* (message 1 alone could be
//!    a recording), so the responder accepts nobody before it.
//!
//! A party without the secret cannot decrypt messages 1 or 2 (the payload keys mix in the
//! PSK), so it learns nothing from them, not even node ids (the datagram envelope of
//! [`crate::datagram`] carries ids in clear, outside the handshake). Wire messages after
//! the handshake: `nonce (u64, big endian) || ciphertext chunks`, each chunk at most 65535 bytes, chunk *i*
//! sealed with nonce + *i*. Reliable messages must carry exactly the next expected nonce;
//! datagrams use nonces with the top bit set and a 64-entry sliding replay window.

use std::sync::Arc;

use clustd_core::NodeId;
use clustd_core::codec;
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use snow::params::NoiseParams;
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};

use crate::{NodeKey, PeerKind, PublicKey, RefuseReason, Secret, SessionError};

/// Peers with node keys: the initiator knows the responder's static key, sends its own.
const PEER_PATTERN: &str = "Noise_IKpsk1_25519_ChaChaPoly_SHA256";
/// Peers without node keys (the cluster secret alone), and drivers (their credential).
const SECRET_PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";
/// Drivers that know their daemon's public key: the daemon proves it.
const DRIVER_TO_DAEMON_PATTERN: &str = "Noise_NKpsk0_25519_ChaChaPoly_SHA256";
const PROLOGUE_LABEL: &[u8] = b"clustd transport v1\0";
const TAG_LEN: usize = 16;
const MAX_NOISE_MSG: usize = 65535;
const CHUNK_PLAIN: usize = MAX_NOISE_MSG - TAG_LEN;
const NONCE_LEN: usize = 8;
const DATAGRAM_BIT: u64 = 1 << 63;
/// Set in the AEAD nonce of the last chunk of a message (never in the nonce on the wire), so
/// a message cut at a chunk boundary does not open as a shorter one.
const FINAL_CHUNK_BIT: u64 = 1 << 62;
/// Largest handshake message accepted (a hello is tiny).
pub const MAX_HANDSHAKE_MSG: usize = 1024;

/// What a sealed message carries, in its first plaintext byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Body {
    /// The initiator's key confirmation (first message after the handshake).
    Confirm = 0,
    /// An application frame.
    Frame = 1,
    /// Nothing; keeps an idle connection alive.
    Keepalive = 2,
    /// The sender will send nothing more on this connection (it was replaced by another
    /// one). Everything it sent before is still delivered when the replacement was dialed
    /// by the other side (see the transports' duplicate rule); the receiver then closes it.
    Goodbye = 3,
    /// The sender registered this connection as the one it uses for the receiver and has
    /// delivered everything the connection it replaced carried: frames that must not be
    /// lost may go on it now. Sent once, before the sender's own reliable frames need it.
    Ready = 4,
}

impl Body {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Confirm),
            1 => Some(Self::Frame),
            2 => Some(Self::Keepalive),
            3 => Some(Self::Goodbye),
            4 => Some(Self::Ready),
            _ => None,
        }
    }
}

/// Who is speaking: sent encrypted in the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's node id.
    pub id: NodeId,
    /// Whether the initiator is a daemon (node key, cluster secret) or a driver (the drivers'
    /// credential): each kind is admitted under its own key and rules.
    pub kind: PeerKind,
}

/// The responder's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Accepted; this is who the responder is.
    Accepted(Hello),
    /// Refused; the responder closes after sending this.
    Refused(RefuseReason),
}

/// Snow resolver: ring for ChaCha20-Poly1305 and SHA-256, snow's own X25519, and our seeded
/// rng for the ephemeral key so simulated runs are reproducible.
struct SeededResolver {
    seed: [u8; 32],
}

struct SeededRandom(rand::rngs::StdRng);

impl snow::types::Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(SeededRandom(rand::rngs::StdRng::from_seed(
            self.seed,
        ))))
    }
    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(
        &self,
        choice: &snow::params::HashChoice,
    ) -> Option<Box<dyn snow::types::Hash>> {
        RingResolver.resolve_hash(choice)
    }
    fn resolve_cipher(
        &self,
        choice: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        RingResolver.resolve_cipher(choice)
    }
}

/// How an initiator proves who it is.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// A daemon dialing a peer whose public key it knows: `Noise_IKpsk1`, proving our
    /// node key, checking theirs, with the cluster secret as the pre-shared key.
    NodeKey {
        /// The cluster secret.
        secret: &'a Secret,
        /// Our node key.
        local: &'a NodeKey,
        /// The key the responder must prove.
        remote: &'a PublicKey,
    },
    /// The cluster secret alone (`Noise_NNpsk0`): peers that have no node keys yet.
    ClusterSecret(&'a Secret),
    /// A driver's credential (`Noise_NNpsk0` under a key derived for drivers only).
    Driver(&'a Secret),
    /// A driver's credential, and the daemon must prove its node key (`Noise_NKpsk0`):
    /// nobody else holding the drivers' credential can pose as the daemon.
    DriverToDaemon {
        /// The drivers' credential.
        secret: &'a Secret,
        /// The daemon's public key (its node key).
        daemon: &'a PublicKey,
    },
}

/// What a responder accepts.
#[derive(Clone, Copy)]
pub struct Acceptor<'a> {
    /// The cluster secret (peers without keys; the pre-shared key of keyed peers).
    pub secret: &'a Secret,
    /// Our node key: without it, keyed peers cannot connect to us.
    pub node_key: Option<&'a NodeKey>,
    /// The credential drivers prove, if drivers are accepted at all.
    pub driver: Option<&'a Secret>,
    /// Also accept drivers proving the cluster secret under the driver handshake (while
    /// drivers move to their own credential). Such a connection is still only a driver.
    pub driver_cluster_secret: bool,
}

/// What the initiator proved, as the responder saw it. The identity a connection may take
/// follows from this, never from the hello alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// It holds the private half of this node key (and the cluster secret).
    NodeKey(PublicKey),
    /// It holds the cluster secret.
    ClusterSecret,
    /// It holds the driver credential: it can only be a driver.
    Driver,
    /// A driver handshake under the cluster secret (a driver not yet moved to the drivers'
    /// credential): still only ever a driver.
    ClusterSecretDriver,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Peer,
    Secret,
    Driver,
    DriverToDaemon,
}

impl Flavour {
    fn pattern(self) -> &'static str {
        match self {
            Self::Peer => PEER_PATTERN,
            Self::Secret | Self::Driver => SECRET_PATTERN,
            Self::DriverToDaemon => DRIVER_TO_DAEMON_PATTERN,
        }
    }
    fn prologue_label(self) -> &'static [u8] {
        match self {
            Self::Peer => b"clustd peer key v1\0",
            Self::Secret => PROLOGUE_LABEL,
            Self::Driver => b"clustd driver v1\0",
            Self::DriverToDaemon => b"clustd driver to daemon v1\0",
        }
    }
    fn psk_label(self) -> &'static [u8] {
        match self {
            Self::Peer | Self::Secret => b"clustd noise psk v1\0",
            Self::Driver | Self::DriverToDaemon => b"clustd driver psk v1\0",
        }
    }
}

/// Whether `public` is a small-order X25519 point (all-zero, a placeholder or an attack):
/// every Diffie-Hellman with it gives zero, so it proves nothing. Tested by multiplying
/// with a fixed scalar: X25519 clamps scalars to multiples of 8, which send exactly the
/// small-order points to zero.
pub(crate) fn is_weak_public_key(public: &[u8; 32]) -> bool {
    let mut dh = DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("snow's default resolver has X25519");
    dh.set(&[0x42; 32]);
    let mut out = [0u8; 32];
    dh.dh(public, &mut out).is_err() || out == [0u8; 32]
}

/// The X25519 public key of a private key.
pub(crate) fn public_key_of(private: &[u8; 32]) -> PublicKey {
    let mut dh = DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("snow's default resolver has X25519");
    dh.set(private);
    let mut public = [0u8; 32];
    public.copy_from_slice(dh.pubkey());
    PublicKey(public)
}

struct Keys<'a> {
    secret: &'a Secret,
    local: Option<&'a NodeKey>,
    remote: Option<&'a PublicKey>,
}

fn build(
    flavour: Flavour,
    keys: &Keys<'_>,
    binding: &[u8],
    seed: [u8; 32],
    initiator: bool,
) -> Result<snow::HandshakeState, SessionError> {
    let setup = |e: snow::Error| SessionError::Protocol(format!("noise setup: {e}"));
    let params: NoiseParams = flavour
        .pattern()
        .parse()
        .map_err(|e| SessionError::Protocol(format!("noise params: {e}")))?;
    let psk = keys.secret.psk(flavour.psk_label());
    let mut prologue = flavour.prologue_label().to_vec();
    prologue.extend_from_slice(binding);
    let psk_at = if flavour == Flavour::Peer { 1 } else { 0 };
    let mut builder = snow::Builder::with_resolver(params, Box::new(SeededResolver { seed }))
        .psk(psk_at, &psk)
        .and_then(|b| b.prologue(&prologue))
        .map_err(setup)?;
    if let Some(local) = keys.local {
        builder = builder.local_private_key(local.private()).map_err(setup)?;
    }
    if let Some(remote) = keys.remote {
        builder = builder.remote_public_key(&remote.0).map_err(setup)?;
    }
    let state = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    };
    state.map_err(setup)
}

/// The initiator's side of the handshake.
pub struct Initiator {
    state: snow::HandshakeState,
}

impl Initiator {
    /// Starts a handshake; returns the state and message 1 to send.
    ///
    /// `binding` goes into the Noise prologue: both sides must pass the same bytes
    /// (for QUIC, a TLS exporter value of the connection).
    pub fn start(
        credential: Credential<'_>,
        binding: &[u8],
        seed: [u8; 32],
        hello: &Hello,
    ) -> Result<(Self, Vec<u8>), SessionError> {
        let payload = codec::encode(hello).map_err(|e| SessionError::Protocol(e.to_string()))?;
        Self::start_raw(credential, binding, seed, &payload)
    }

    /// Fuzzing hook: like [`Initiator::start`] with any plaintext in place of the encoded
    /// hello, so a fuzzer holding the secret can reach the responder's hello decoding.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn start_with_payload(
        credential: Credential<'_>,
        binding: &[u8],
        seed: [u8; 32],
        payload: &[u8],
    ) -> Result<(Self, Vec<u8>), SessionError> {
        Self::start_raw(credential, binding, seed, payload)
    }

    fn start_raw(
        credential: Credential<'_>,
        binding: &[u8],
        seed: [u8; 32],
        payload: &[u8],
    ) -> Result<(Self, Vec<u8>), SessionError> {
        let (flavour, keys) = match credential {
            Credential::NodeKey {
                secret,
                local,
                remote,
            } => (
                Flavour::Peer,
                Keys {
                    secret,
                    local: Some(local),
                    remote: Some(remote),
                },
            ),
            Credential::ClusterSecret(secret) => (Flavour::Secret, Keys::secret(secret)),
            Credential::Driver(secret) => (Flavour::Driver, Keys::secret(secret)),
            Credential::DriverToDaemon { secret, daemon } => (
                Flavour::DriverToDaemon,
                Keys {
                    secret,
                    local: None,
                    remote: Some(daemon),
                },
            ),
        };
        let mut state = build(flavour, &keys, binding, seed, true)?;
        let mut msg = vec![0u8; MAX_HANDSHAKE_MSG];
        let len = state
            .write_message(payload, &mut msg)
            .map_err(|e| SessionError::Protocol(format!("noise write: {e}")))?;
        msg.truncate(len);
        Ok((Self { state }, msg))
    }

    /// Reads message 2. On success returns the reply, the session, and the key-confirmation
    /// message to send (even when the reply is a refusal the session is returned unused).
    pub fn finish(mut self, msg2: &[u8]) -> Result<(Reply, Session, Vec<u8>), SessionError> {
        if msg2.len() > MAX_HANDSHAKE_MSG {
            return Err(SessionError::AuthenticationFailed);
        }
        let mut payload = vec![0u8; MAX_HANDSHAKE_MSG];
        let len = self
            .state
            .read_message(msg2, &mut payload)
            .map_err(|_| SessionError::AuthenticationFailed)?;
        let reply: Reply = codec::decode(&payload[..len])
            .map_err(|e| SessionError::Protocol(format!("handshake reply: {e}")))?;
        let mut session = Session::new(self.state)?;
        let confirm = session.seal(Body::Confirm, &[])?;
        Ok((reply, session, confirm))
    }
}

impl<'a> Keys<'a> {
    fn secret(secret: &'a Secret) -> Self {
        Self {
            secret,
            local: None,
            remote: None,
        }
    }
}

/// The responder's side of the handshake.
pub struct Responder {
    state: snow::HandshakeState,
}

impl Responder {
    /// Reads message 1: tries each credential `acceptor` accepts (a driver's, the cluster
    /// secret's, a node key's) and says which one the initiator proved. An error means the
    /// sender holds none of them (or sent garbage); which ones were tried is not revealed.
    pub fn read_hello(
        acceptor: &Acceptor<'_>,
        binding: &[u8],
        seed: [u8; 32],
        msg1: &[u8],
    ) -> Result<(Self, Hello, Proof), SessionError> {
        if msg1.len() > MAX_HANDSHAKE_MSG {
            return Err(SessionError::AuthenticationFailed);
        }
        let mut tries: Vec<(Flavour, Keys<'_>, Proof)> = Vec::with_capacity(4);
        if let Some(driver) = acceptor.driver {
            tries.push((Flavour::Driver, Keys::secret(driver), Proof::Driver));
        }
        if acceptor.driver_cluster_secret {
            tries.push((
                Flavour::Driver,
                Keys::secret(acceptor.secret),
                Proof::ClusterSecretDriver,
            ));
        }
        tries.push((
            Flavour::Secret,
            Keys::secret(acceptor.secret),
            Proof::ClusterSecret,
        ));
        if let Some(local) = acceptor.node_key {
            let with_key = |secret| Keys {
                secret,
                local: Some(local),
                remote: None,
            };
            if let Some(driver) = acceptor.driver {
                tries.push((Flavour::DriverToDaemon, with_key(driver), Proof::Driver));
            }
            if acceptor.driver_cluster_secret {
                tries.push((
                    Flavour::DriverToDaemon,
                    with_key(acceptor.secret),
                    Proof::ClusterSecretDriver,
                ));
            }
            tries.push((
                Flavour::Peer,
                Keys {
                    secret: acceptor.secret,
                    local: Some(local),
                    remote: None,
                },
                // Replaced by the proven key below.
                Proof::ClusterSecret,
            ));
        }
        let mut payload = vec![0u8; MAX_HANDSHAKE_MSG];
        for (flavour, keys, proof) in tries {
            let mut state = build(flavour, &keys, binding, seed, false)?;
            let Ok(len) = state.read_message(msg1, &mut payload) else {
                continue;
            };
            let proof = match flavour {
                Flavour::Driver | Flavour::Secret | Flavour::DriverToDaemon => proof,
                Flavour::Peer => {
                    let key: [u8; 32] = state
                        .get_remote_static()
                        .and_then(|k| k.try_into().ok())
                        .ok_or(SessionError::AuthenticationFailed)?;
                    Proof::NodeKey(PublicKey(key))
                }
            };
            let hello: Hello = codec::decode(&payload[..len])
                .map_err(|e| SessionError::Protocol(format!("handshake hello: {e}")))?;
            return Ok((Self { state }, hello, proof));
        }
        Err(SessionError::AuthenticationFailed)
    }

    /// Writes message 2 with `reply`; returns it and the session. The session is not yet
    /// authenticated: the caller must [`Session::open`] the initiator's first message and
    /// check it is a [`Body::Confirm`] before trusting the peer.
    pub fn reply(self, reply: &Reply) -> Result<(Vec<u8>, Session), SessionError> {
        let payload = codec::encode(reply).map_err(|e| SessionError::Protocol(e.to_string()))?;
        self.reply_raw(&payload)
    }

    /// Fuzzing hook: like [`Responder::reply`] with any plaintext in place of the encoded
    /// reply, so a fuzzer holding the secret can reach the initiator's reply decoding.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn reply_with_payload(self, payload: &[u8]) -> Result<(Vec<u8>, Session), SessionError> {
        self.reply_raw(payload)
    }

    fn reply_raw(mut self, payload: &[u8]) -> Result<(Vec<u8>, Session), SessionError> {
        let mut msg = vec![0u8; MAX_HANDSHAKE_MSG];
        let len = self
            .state
            .write_message(payload, &mut msg)
            .map_err(|e| SessionError::Protocol(format!("noise write: {e}")))?;
        msg.truncate(len);
        Ok((msg, Session::new(self.state)?))
    }
}

/// The sending half of a session.
pub struct Sealer {
    keys: Arc<snow::StatelessTransportState>,
    next_nonce: u64,
    next_datagram_nonce: u64,
}

/// The receiving half of a session.
pub struct Opener {
    keys: Arc<snow::StatelessTransportState>,
    expected_nonce: u64,
    datagram_top: u64,
    datagram_seen: u64,
}

/// An established session: per-direction keys and nonces.
pub struct Session {
    /// Seals outgoing messages.
    pub sealer: Sealer,
    /// Opens incoming messages.
    pub opener: Opener,
}

impl Session {
    fn new(state: snow::HandshakeState) -> Result<Self, SessionError> {
        let keys = Arc::new(
            state
                .into_stateless_transport_mode()
                .map_err(|e| SessionError::Protocol(format!("noise split: {e}")))?,
        );
        Ok(Self {
            sealer: Sealer {
                keys: keys.clone(),
                next_nonce: 0,
                next_datagram_nonce: DATAGRAM_BIT,
            },
            opener: Opener {
                keys,
                expected_nonce: 0,
                datagram_top: 0,
                datagram_seen: 0,
            },
        })
    }

    /// Seals a reliable message (see [`Sealer::seal`]).
    pub fn seal(&mut self, body: Body, payload: &[u8]) -> Result<Vec<u8>, SessionError> {
        self.sealer.seal(body, payload)
    }

    /// Opens a reliable message (see [`Opener::open`]).
    pub fn open(&mut self, wire: &[u8]) -> Result<(Body, Vec<u8>), SessionError> {
        self.opener.open(wire)
    }
}

/// Bytes on the wire for a payload of `len` bytes (body byte, nonce and tags included).
pub fn sealed_len(len: usize) -> usize {
    let plain = len + 1;
    NONCE_LEN + plain + plain.div_ceil(CHUNK_PLAIN).max(1) * TAG_LEN
}

impl Sealer {
    /// Seals a reliable, in-order message.
    pub fn seal(&mut self, body: Body, payload: &[u8]) -> Result<Vec<u8>, SessionError> {
        let nonce = self.next_nonce;
        let (wire, chunks) = self.seal_with(nonce, body, payload)?;
        self.next_nonce += chunks;
        Ok(wire)
    }

    /// Seals a datagram (own nonce space, may arrive out of order or not at all).
    pub fn seal_datagram(&mut self, body: Body, payload: &[u8]) -> Result<Vec<u8>, SessionError> {
        let nonce = self.next_datagram_nonce;
        let (wire, chunks) = self.seal_with(nonce, body, payload)?;
        if chunks != 1 {
            return Err(SessionError::Oversized {
                len: payload.len(),
                limit: CHUNK_PLAIN - 1,
            });
        }
        self.next_datagram_nonce += 1;
        Ok(wire)
    }

    fn seal_with(
        &self,
        nonce: u64,
        body: Body,
        payload: &[u8],
    ) -> Result<(Vec<u8>, u64), SessionError> {
        let mut plain = Vec::with_capacity(payload.len() + 1);
        plain.push(body as u8);
        plain.extend_from_slice(payload);
        let mut wire = vec![0u8; sealed_len(payload.len())];
        wire[..NONCE_LEN].copy_from_slice(&nonce.to_be_bytes());
        let mut at = NONCE_LEN;
        let mut chunks = 0u64;
        let count = plain.len().div_ceil(CHUNK_PLAIN) as u64;
        for chunk in plain.chunks(CHUNK_PLAIN) {
            let last = chunks + 1 == count;
            let n = (nonce + chunks) | if last { FINAL_CHUNK_BIT } else { 0 };
            let written = self
                .keys
                .write_message(n, chunk, &mut wire[at..])
                .map_err(|e| SessionError::Protocol(format!("seal: {e}")))?;
            at += written;
            chunks += 1;
        }
        wire.truncate(at);
        Ok((wire, chunks))
    }
}

impl Opener {
    /// Opens a reliable message: it must carry exactly the next nonce and verify.
    pub fn open(&mut self, wire: &[u8]) -> Result<(Body, Vec<u8>), SessionError> {
        let nonce = read_nonce(wire)?;
        if nonce != self.expected_nonce {
            return Err(SessionError::Replay);
        }
        let (body, payload, chunks) = self.open_with(nonce, wire)?;
        self.expected_nonce += chunks;
        Ok((body, payload))
    }

    /// Opens a datagram: fresh nonce (sliding window of 64) and a valid tag.
    pub fn open_datagram(&mut self, wire: &[u8]) -> Result<(Body, Vec<u8>), SessionError> {
        let nonce = read_nonce(wire)?;
        if nonce & DATAGRAM_BIT == 0 {
            return Err(SessionError::Replay);
        }
        let seq = nonce & !DATAGRAM_BIT;
        // seq is 0-based; datagram_top is (highest seen + 1), 0 when none was seen.
        if seq < self.datagram_top {
            let age = self.datagram_top - 1 - seq;
            if age >= 64 || self.datagram_seen & (1 << age) != 0 {
                return Err(SessionError::Replay);
            }
        }
        let (body, payload, chunks) = self.open_with(nonce, wire)?;
        if chunks != 1 {
            return Err(SessionError::BadFrame);
        }
        if seq + 1 > self.datagram_top {
            let shift = seq + 1 - self.datagram_top;
            self.datagram_seen = if shift >= 64 {
                0
            } else {
                self.datagram_seen << shift
            };
            self.datagram_seen |= 1;
            self.datagram_top = seq + 1;
        } else {
            let age = self.datagram_top - 1 - seq;
            self.datagram_seen |= 1 << age;
        }
        Ok((body, payload))
    }

    fn open_with(&self, nonce: u64, wire: &[u8]) -> Result<(Body, Vec<u8>, u64), SessionError> {
        let sealed = &wire[NONCE_LEN..];
        if sealed.is_empty() || nonce & FINAL_CHUNK_BIT != 0 {
            return Err(SessionError::BadFrame);
        }
        let mut plain = vec![0u8; sealed.len()];
        let mut at = 0;
        let mut chunks = 0u64;
        let count = sealed.len().div_ceil(MAX_NOISE_MSG) as u64;
        for chunk in sealed.chunks(MAX_NOISE_MSG) {
            if chunk.len() <= TAG_LEN {
                return Err(SessionError::BadFrame);
            }
            let n = nonce.checked_add(chunks).ok_or(SessionError::Replay)?;
            if n & FINAL_CHUNK_BIT != 0 {
                return Err(SessionError::Replay);
            }
            let n = if chunks + 1 == count {
                n | FINAL_CHUNK_BIT
            } else {
                n
            };
            let read = self
                .keys
                .read_message(n, chunk, &mut plain[at..])
                .map_err(|_| SessionError::BadFrame)?;
            at += read;
            chunks += 1;
        }
        plain.truncate(at);
        let (&first, _) = plain.split_first().ok_or(SessionError::BadFrame)?;
        let body = Body::from_byte(first)
            .ok_or_else(|| SessionError::Protocol(format!("unknown body type {first}")))?;
        plain.remove(0);
        Ok((body, plain, chunks))
    }
}

fn read_nonce(wire: &[u8]) -> Result<u64, SessionError> {
    let bytes: [u8; NONCE_LEN] = wire
        .get(..NONCE_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(SessionError::BadFrame)?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret(s: &str) -> Secret {
        Secret::from_bytes(format!("{s}-padded-to-the-32-byte-minimum-length").into_bytes())
            .expect("long enough")
    }

    fn hello(id: &str, kind: PeerKind) -> Hello {
        Hello {
            id: NodeId::new(id).expect("valid"),
            kind,
        }
    }

    fn accept(secret: &Secret) -> Acceptor<'_> {
        Acceptor {
            secret,
            node_key: None,
            driver: None,
            driver_cluster_secret: false,
        }
    }

    /// Runs the whole handshake in memory; returns (initiator session, responder session).
    fn pair(binding_i: &[u8], binding_r: &[u8]) -> Result<(Session, Session), SessionError> {
        let s = secret("k");
        let (init, msg1) = Initiator::start(
            Credential::ClusterSecret(&s),
            binding_i,
            [1; 32],
            &hello("a", PeerKind::Peer),
        )?;
        let (resp, got, proof) = Responder::read_hello(&accept(&s), binding_r, [2; 32], &msg1)?;
        assert_eq!(proof, Proof::ClusterSecret);
        assert_eq!(got, hello("a", PeerKind::Peer));
        let (msg2, mut rs) = resp.reply(&Reply::Accepted(hello("b", PeerKind::Peer)))?;
        let (reply, is, confirm) = init.finish(&msg2)?;
        assert_eq!(reply, Reply::Accepted(hello("b", PeerKind::Peer)));
        assert_eq!(rs.open(&confirm)?.0, Body::Confirm);
        Ok((is, rs))
    }

    #[test]
    fn wrong_secret_fails_on_both_sides() {
        let (x, y) = (secret("x"), secret("y"));
        let (_, msg1) = Initiator::start(
            Credential::ClusterSecret(&x),
            b"",
            [1; 32],
            &hello("a", PeerKind::Peer),
        )
        .expect("start");
        let err = Responder::read_hello(&accept(&y), b"", [2; 32], &msg1)
            .err()
            .expect("fails");
        assert_eq!(err.to_string(), "authentication failed");
        // And an initiator reading a reply made with another secret fails too.
        let (init, msg1) = Initiator::start(
            Credential::ClusterSecret(&x),
            b"",
            [1; 32],
            &hello("a", PeerKind::Peer),
        )
        .expect("start");
        let (resp, _, _) = Responder::read_hello(&accept(&x), b"", [2; 32], &msg1).expect("same");
        let (msg2, _) = resp
            .reply(&Reply::Refused(RefuseReason::UnknownNode))
            .expect("reply");
        let mut forged = msg2.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            init.finish(&forged),
            Err(SessionError::AuthenticationFailed)
        ));
    }

    #[test]
    fn a_node_key_handshake_proves_both_keys() {
        let s = secret("k");
        let (a, b, c) = (
            NodeKey::from_private([1; 32]),
            NodeKey::from_private([2; 32]),
            NodeKey::from_private([3; 32]),
        );
        let b_accepts = Acceptor {
            secret: &s,
            node_key: Some(&b),
            driver: None,
            driver_cluster_secret: false,
        };
        let dial = |local: &NodeKey, remote: &PublicKey| {
            Initiator::start(
                Credential::NodeKey {
                    secret: &s,
                    local,
                    remote,
                },
                b"bind",
                [5; 32],
                &hello("a", PeerKind::Peer),
            )
            .expect("start")
        };
        // a dials b knowing b's key: b learns a's key, whatever id a claims.
        let (init, msg1) = dial(&a, &b.public());
        let (resp, got, proof) =
            Responder::read_hello(&b_accepts, b"bind", [6; 32], &msg1).expect("b reads");
        assert_eq!(proof, Proof::NodeKey(a.public()));
        assert_eq!(got.id.as_str(), "a");
        let (msg2, mut rs) = resp
            .reply(&Reply::Accepted(hello("b", PeerKind::Peer)))
            .expect("reply");
        let (_, _, confirm) = init.finish(&msg2).expect("a reads b's reply");
        assert_eq!(rs.open(&confirm).expect("confirm").0, Body::Confirm);
        // c answering in b's place cannot: a's message 1 is for b's key only.
        let c_accepts = Acceptor {
            secret: &s,
            node_key: Some(&c),
            driver: None,
            driver_cluster_secret: false,
        };
        let (_, msg1) = dial(&a, &b.public());
        assert!(matches!(
            Responder::read_hello(&c_accepts, b"bind", [6; 32], &msg1),
            Err(SessionError::AuthenticationFailed)
        ));
        // Without the cluster secret the node key alone opens nothing.
        let other = secret("other");
        let (_, msg1) = Initiator::start(
            Credential::NodeKey {
                secret: &other,
                local: &a,
                remote: &b.public(),
            },
            b"bind",
            [5; 32],
            &hello("a", PeerKind::Peer),
        )
        .expect("start");
        assert!(Responder::read_hello(&b_accepts, b"bind", [6; 32], &msg1).is_err());
    }

    #[test]
    fn a_driver_credential_only_ever_proves_a_driver() {
        let (cluster, driver) = (secret("cluster"), secret("driver"));
        let key = NodeKey::from_private([4; 32]);
        let daemon = Acceptor {
            secret: &cluster,
            node_key: Some(&key),
            driver: Some(&driver),
            driver_cluster_secret: false,
        };
        let (_, msg1) = Initiator::start(
            Credential::Driver(&driver),
            b"",
            [1; 32],
            &hello("n1", PeerKind::Peer),
        )
        .expect("start");
        let (_, got, proof) = Responder::read_hello(&daemon, b"", [2; 32], &msg1).expect("reads");
        assert_eq!(got.kind, PeerKind::Peer, "the claim is read...");
        assert_eq!(proof, Proof::Driver, "...but the proof says driver");
        // The driver credential used as a cluster secret proves nothing.
        let (_, msg1) = Initiator::start(
            Credential::ClusterSecret(&driver),
            b"",
            [1; 32],
            &hello("n1", PeerKind::Peer),
        )
        .expect("start");
        assert!(Responder::read_hello(&daemon, b"", [2; 32], &msg1).is_err());
        // Even when the same bytes are both (the legacy setup), the two proofs differ.
        let legacy = Acceptor {
            secret: &cluster,
            node_key: None,
            driver: Some(&cluster),
            driver_cluster_secret: false,
        };
        let (_, msg1) = Initiator::start(
            Credential::Driver(&cluster),
            b"",
            [1; 32],
            &hello("n1", PeerKind::Peer),
        )
        .expect("start");
        let (_, _, proof) = Responder::read_hello(&legacy, b"", [2; 32], &msg1).expect("reads");
        assert_eq!(proof, Proof::Driver);
    }

    #[test]
    fn different_binding_fails() {
        assert!(pair(b"exporter-1", b"exporter-2").is_err());
    }

    #[test]
    fn replay_flip_and_datagrams() {
        let (mut a, mut b) = pair(b"", b"").expect("handshake");
        let m1 = a.seal(Body::Frame, b"one").expect("seal");
        let m2 = a.seal(Body::Frame, b"two").expect("seal");
        assert_eq!(b.open(&m1).expect("open"), (Body::Frame, b"one".to_vec()));
        assert!(matches!(b.open(&m1), Err(SessionError::Replay)));
        let mut flipped = m2.clone();
        flipped[12] ^= 0x40;
        assert!(matches!(b.open(&flipped), Err(SessionError::BadFrame)));
        assert_eq!(b.open(&m2).expect("open").1, b"two");
        let d1 = a.sealer.seal_datagram(Body::Frame, b"hb1").expect("seal");
        let d2 = a.sealer.seal_datagram(Body::Frame, b"hb2").expect("seal");
        assert_eq!(b.opener.open_datagram(&d2).expect("newer first").1, b"hb2");
        assert_eq!(b.opener.open_datagram(&d1).expect("older once").1, b"hb1");
        assert!(matches!(
            b.opener.open_datagram(&d1),
            Err(SessionError::Replay)
        ));
        assert!(matches!(b.open(&d1), Err(SessionError::Replay)));
    }

    /// Found while writing the `handshake` fuzz target: a two-chunk message cut after its
    /// first chunk used to open as a shorter message.
    #[test]
    fn a_message_cut_at_a_chunk_boundary_does_not_open() {
        let (mut a, mut b) = pair(b"", b"").expect("handshake");
        let payload = vec![7u8; CHUNK_PLAIN + 10];
        let wire = a.seal(Body::Frame, &payload).expect("seal");
        let cut = NONCE_LEN + MAX_NOISE_MSG;
        assert!(wire.len() > cut);
        assert!(matches!(b.open(&wire[..cut]), Err(SessionError::BadFrame)));
        // The refused cut changed nothing: the whole message still opens.
        assert_eq!(b.open(&wire).expect("opens"), (Body::Frame, payload));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn handshake_and_framing_round_trip(frames in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..70_000), 1..4)) {
            let (mut a, mut b) = pair(b"bind", b"bind").expect("handshake");
            for frame in &frames {
                let wire = a.seal(Body::Frame, frame).expect("seal");
                prop_assert_eq!(wire.len(), sealed_len(frame.len()));
                prop_assert_eq!(b.open(&wire).expect("open"), (Body::Frame, frame.clone()));
                let back = b.seal(Body::Frame, frame).expect("seal");
                prop_assert_eq!(a.open(&back).expect("open").1, frame.clone());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let s = secret("k");
            let key = NodeKey::from_private([9; 32]);
            let all = Acceptor { secret: &s, node_key: Some(&key), driver: Some(&s), driver_cluster_secret: true };
            let _ = Responder::read_hello(&all, b"", [3; 32], &bytes);
            let (init, _) = Initiator::start(Credential::ClusterSecret(&s), b"", [4; 32], &hello("a", PeerKind::Peer)).expect("start");
            let _ = init.finish(&bytes);
            let (mut a, _) = pair(b"", b"").expect("handshake");
            let _ = a.open(&bytes);
            let _ = a.opener.open_datagram(&bytes);
        }
    }
}
