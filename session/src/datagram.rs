//! Authenticated datagrams for embedders: the Noise handshakes of [`crate::handshake`] and
//! sealed datagrams over any connectionless socket (UDP, a radio link, a serial line),
//! sans-IO: bytes in, bytes out, time passed in, nothing read from a clock.
//!
//! A [`Datagrams`] is one node's end. It keeps an authenticated session to every
//! configured peer and tells you, for every datagram it accepts, **which peer sent it**:
//! that is the `from` to pass to `clustd_core::Node::handle_message`. A datagram whose
//! sender cannot be proven is refused with a [`Refused`] reason.
//!
//! ```text
//! loop {
//!     for (to, bytes) in datagrams.poll_transmit()  → socket.send_to(bytes, address_of(to))
//!     socket.recv(buf) → datagrams.receive(buf, now)  → Ok(Some(d)): node.handle_message(now, d.from, decode(d.payload))
//!     node.poll_transmit() → (to, msg)             → datagrams.send(&to, &encode(msg))
//!     at datagrams.poll_timeout()                  → datagrams.handle_timeout(now)
//! }
//! ```
//!
//! # The envelope
//! Every datagram, in both directions and at every stage, is one [`Envelope`]:
//!
//! | bytes | field | |
//! |---|---|---|
//! | 1 | version | [`ENVELOPE_VERSION`] |
//! | 1 | kind | [`Kind`]: 1 handshake message 1, 2 handshake message 2, 3 sealed by the session's initiator, 4 sealed by its responder (the acknowledgement) |
//! | 1 + n | from | length, then the sender's node id (UTF-8, 1 to 64 bytes) |
//! | 1 + n | to | length, then the receiver's node id |
//! | 8 | session | big endian; chosen at random by the initiator of the handshake |
//! | 8 | incarnation | big endian; in message 1 only, the initiator's *incarnation*, chosen at random each time an endpoint starts; 0 everywhere else |
//! | rest | body | the Noise handshake message, or a sealed datagram ([`crate::handshake::Sealer::seal_datagram`]) |
//!
//! The header travels in clear: an observer sees node ids, session ids and when a node
//! starts afresh (the payloads and the proof stay secret). It is authenticated anyway:
//! - In a handshake, `from`, `to`, `session` and `incarnation` go into the Noise prologue: both
//!   sides must hash the same bytes, so a changed header field fails the handshake. The
//!   handshake proves the initiator's credential (the cluster secret, or its node key when
//!   the peer is configured with one), and the [`crate::Hello`] inside must name the same
//!   id as `from`; with a node key, the proven key must be the one configured for `from`.
//! - A sealed datagram opens only under the keys of the session `(from, session)` names,
//!   which the handshake bound to `from`. Changing `from` or `session` selects other keys
//!   (or none) and the datagram does not open; `to` must be this node.
//! - Each sealed datagram has a fresh nonce; a 64-entry sliding window refuses replays.
//!
//! # Sessions
//! Sessions are one-way: each node dials every peer (the initiator sends on its session,
//! the responder only opens it and acknowledges it once), so two nodes never race to open
//! the same session.
//! - The responder keeps up to [`MAX_PENDING`] answered handshakes per peer until one
//!   proves itself with a sealed datagram (which only the holder of the initiator's keys
//!   can produce); only then does it replace the peer's session, and it acknowledges it.
//!   A duplicated or replayed message 1 of a pending session gets the same answer again
//!   and changes no keys.
//! - The initiator sends at once on the keys it agreed, and counts its session as
//!   [established](Datagrams::established) when the acknowledgement opens. A handshake not
//!   answered, or a session not acknowledged, within [`DatagramConfig::handshake_retry`]
//!   is tried again (message 1 again; a new session after a missing acknowledgement).
//!   A reply that does not authenticate changes nothing: the handshake is rebuilt from
//!   its seed for every reply.
//! - Every node dials every peer as soon as it starts. Restarts are told apart by
//!   incarnation: message 1 carries the initiator's (bound into the handshake), and the
//!   acknowledgement carries the responder's (sealed). When the incarnation a peer's proven
//!   session names differs from the one that acknowledged our session to it, our session is
//!   to a run of that peer that is gone, and we dial again. Nothing unauthenticated can
//!   trigger that, and it cannot loop: a re-dial does not change our incarnation.
//! - While a session is being set up, up to [`DatagramConfig::queue`] payloads wait for it
//!   (older ones are dropped first: election messages are superseded by newer ones).
//!
//! # What it proves, and what it does not
//! With node keys ([`DatagramConfig::node_key`] and a key per peer), a sender id is proven
//! by that node's private key: holding the cluster secret is not enough to speak as another
//! node. With the cluster secret alone, any holder of the secret can claim any peer id.
//! Datagrams can still be dropped, delayed and reordered by the network, and an attacker
//! who injects garbage can make the endpoint spend a few X25519 operations per datagram:
//! the election core tolerates loss, and nothing unauthenticated replaces a session.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use clustd_core::{Instant, NodeId};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::handshake::{
    Acceptor, Body, Credential, Hello, Initiator, Opener, Proof, Reply, Responder, Sealer,
    is_weak_public_key, sealed_len,
};
use crate::{NodeKey, PeerKind, PublicKey, Secret, SessionError};

/// The envelope's first byte.
pub const ENVELOPE_VERSION: u8 = 0xC1;
/// Largest datagram accepted or produced (UDP's largest payload over IPv4).
pub const MAX_DATAGRAM: usize = 65_507;
/// Answered handshakes a responder keeps per peer until one proves itself.
pub const MAX_PENDING: usize = 4;

const BINDING_LABEL: &[u8] = b"clustd datagram v1\0";

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Handshake message 1, initiator to responder.
    Hello = 1,
    /// Handshake message 2, responder to initiator.
    Reply = 2,
    /// A sealed datagram from the session's initiator (a payload, or its confirmation).
    Sealed = 3,
    /// A sealed datagram from the session's responder: the acknowledgement that it took
    /// the session.
    Ack = 4,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Hello),
            2 => Some(Self::Reply),
            3 => Some(Self::Sealed),
            4 => Some(Self::Ack),
            _ => None,
        }
    }
}

/// The clear-text header of every datagram (see the [module docs](self) for the layout
/// and how each field is authenticated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// What the body is.
    pub kind: Kind,
    /// The sender's id, as claimed.
    pub from: NodeId,
    /// The receiver's id.
    pub to: NodeId,
    /// The session, chosen by its initiator.
    pub session: u64,
    /// In [`Kind::Hello`], the initiator's incarnation; 0 in every other kind.
    pub incarnation: u64,
}

impl Envelope {
    /// Bytes before the body for these ids.
    pub fn header_len(from: &NodeId, to: &NodeId) -> usize {
        20 + from.as_str().len() + to.as_str().len()
    }

    /// The envelope with `body` after it.
    pub fn write(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::header_len(&self.from, &self.to) + body.len());
        out.push(ENVELOPE_VERSION);
        out.push(self.kind as u8);
        for id in [&self.from, &self.to] {
            let raw = id.as_str().as_bytes();
            out.push(u8::try_from(raw.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(raw);
        }
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Reads the header; returns it and the body. Checks the form only: nothing in it is
    /// proven until [`Datagrams::receive`] accepts the datagram.
    pub fn parse(bytes: &[u8]) -> Result<(Self, &[u8]), Refused> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(Refused::Malformed("longer than the largest datagram"));
        }
        let mut at = bytes;
        let mut take = |n: usize| -> Result<&[u8], Refused> {
            if at.len() < n {
                return Err(Refused::Malformed("truncated"));
            }
            let (head, rest) = at.split_at(n);
            at = rest;
            Ok(head)
        };
        if take(1)?[0] != ENVELOPE_VERSION {
            return Err(Refused::Malformed("unknown version"));
        }
        let kind = Kind::from_byte(take(1)?[0]).ok_or(Refused::Malformed("unknown kind"))?;
        let mut id = || -> Result<NodeId, Refused> {
            let len = usize::from(take(1)?[0]);
            let raw = take(len)?;
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| NodeId::new(s).ok())
                .ok_or(Refused::Malformed("invalid node id"))
        };
        let (from, to) = (id()?, id()?);
        let mut session = [0u8; 8];
        session.copy_from_slice(take(8)?);
        let mut incarnation = [0u8; 8];
        incarnation.copy_from_slice(take(8)?);
        let incarnation = u64::from_be_bytes(incarnation);
        if kind != Kind::Hello && incarnation != 0 {
            return Err(Refused::Malformed("an incarnation outside a handshake"));
        }
        Ok((
            Self {
                kind,
                from,
                to,
                session: u64::from_be_bytes(session),
                incarnation,
            },
            at,
        ))
    }

    /// The Noise prologue binding of a handshake: every header field but the kind, with
    /// `from` = the initiator.
    fn binding(&self) -> Vec<u8> {
        let mut out = BINDING_LABEL.to_vec();
        for id in [&self.from, &self.to] {
            out.push(u8::try_from(id.as_str().len()).unwrap_or(u8::MAX));
            out.extend_from_slice(id.as_str().as_bytes());
        }
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out
    }
}

/// Who this node is and whom it talks to.
#[derive(Clone)]
pub struct DatagramConfig {
    /// This node's id.
    pub me: NodeId,
    /// The cluster secret (the Noise pre-shared key).
    pub secret: Secret,
    /// This node's key pair. Required when any peer has a key.
    pub node_key: Option<NodeKey>,
    /// Every other node, with its public key if it proves one. A peer configured with a
    /// key must prove exactly that key; one without is believed on the cluster secret.
    pub peers: BTreeMap<NodeId, Option<PublicKey>>,
    /// A handshake not answered, or a session not acknowledged, within this is tried again.
    pub handshake_retry: Duration,
    /// Payloads kept per peer while its session is being set up.
    pub queue: usize,
}

impl DatagramConfig {
    /// A configuration with the cluster secret alone (no node keys), retrying a handshake
    /// after 200 ms and keeping 8 payloads per peer while it is set up.
    pub fn new(me: NodeId, secret: Secret, peers: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            me,
            secret,
            node_key: None,
            peers: peers.into_iter().map(|id| (id, None)).collect(),
            handshake_retry: Duration::from_millis(200),
            queue: 8,
        }
    }

    fn check(&self) -> Result<(), SessionError> {
        let bad = |why: String| Err(SessionError::Config(why));
        if self.peers.contains_key(&self.me) {
            return bad(format!("{} is in its own peer list", self.me));
        }
        if self.queue == 0 || self.handshake_retry.is_zero() {
            return bad("queue and handshake_retry must be positive".into());
        }
        let own = self.node_key.as_ref().map(NodeKey::public);
        let mut seen: BTreeMap<PublicKey, &NodeId> = BTreeMap::new();
        for (id, key) in &self.peers {
            let Some(key) = key else { continue };
            if self.node_key.is_none() {
                return bad(format!(
                    "peer {id} has a public key, so {} needs a node key of its own to dial it",
                    self.me
                ));
            }
            if is_weak_public_key(&key.0) {
                return bad(format!(
                    "peer {id}'s public key is a small-order point (a placeholder?): it proves nothing"
                ));
            }
            if Some(*key) == own {
                return bad(format!("peer {id} has {}'s own public key", self.me));
            }
            if let Some(other) = seen.insert(*key, id) {
                return bad(format!(
                    "peers {other} and {id} have the same public key: either could pass as the other"
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for DatagramConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatagramConfig")
            .field("me", &self.me)
            .field("node_key", &self.node_key)
            .field("peers", &self.peers)
            .field("handshake_retry", &self.handshake_retry)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// A payload from an authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The peer that sealed it, as proven by its session.
    pub from: NodeId,
    /// What it sent.
    pub payload: Vec<u8>,
}

/// Why a received datagram was dropped. Nothing in it comes from key material; each is
/// worth a counter (or a rate-limited log line), and none needs an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Not an envelope (too short, wrong version, bad lengths or ids, too long).
    #[error("not a clustd datagram envelope: {0}")]
    Malformed(&'static str),
    /// Addressed to another node id.
    #[error("addressed to {0}, not to this node")]
    NotForUs(NodeId),
    /// The sender id is not a configured peer (or is this node's own).
    #[error("{0} is not a configured peer")]
    UnknownPeer(NodeId),
    /// A handshake reply, a sealed datagram or an acknowledgement for a session this node
    /// does not have (an old session, a restart, or a forgery).
    #[error("no session {session:016x} with {from}")]
    NoSession {
        /// The claimed sender.
        from: NodeId,
        /// The session it named.
        session: u64,
    },
    /// A handshake for a session that already proved itself: a duplicate or a replay.
    #[error("from {from}: a handshake for session {session:016x}, which is already in use")]
    Stale {
        /// The claimed sender.
        from: NodeId,
        /// The session it named.
        session: u64,
    },
    /// The cryptography refused it: wrong secret or key, replayed, altered or forged.
    #[error("from {from}: {error}")]
    Crypto {
        /// The claimed sender (unproven).
        from: NodeId,
        /// What failed.
        error: SessionError,
    },
    /// It authenticated, but names another sender or proves the wrong key.
    #[error("from {from}: {why}")]
    Impostor {
        /// The claimed sender.
        from: NodeId,
        /// What did not match.
        why: &'static str,
    },
}

enum Outbound {
    /// Message 1 sent; the handshake is rebuilt from `seed` for each reply.
    Handshaking {
        session: u64,
        seed: [u8; 32],
        retry_at: Instant,
    },
    /// Keys agreed; `acked_by` is the responder's incarnation once its acknowledgement opened.
    Established {
        session: u64,
        sealer: Sealer,
        opener: Opener,
        acked_by: Option<u64>,
        retry_at: Instant,
    },
}

/// A session the peer initiated, as its responder holds it.
struct Inbound {
    session: u64,
    opener: Opener,
    sealer: Sealer,
    /// Message 2, resent as is to a duplicate of message 1.
    msg2: Vec<u8>,
    /// The initiator's incarnation, as its message 1 proved.
    incarnation: u64,
}

struct Peer {
    key: Option<PublicKey>,
    out: Outbound,
    /// The peer's incarnation, as its latest proven session says.
    incarnation: Option<u64>,
    queued: VecDeque<Vec<u8>>,
    /// The session the peer sends on, once a datagram sealed under it opened.
    inbound: Option<Inbound>,
    /// Sessions the peer opened (we answered) that have not proven themselves, oldest first.
    pending: VecDeque<Inbound>,
}

/// One node's authenticated datagram endpoint. See the [module docs](self).
pub struct Datagrams {
    me: NodeId,
    secret: Secret,
    node_key: Option<NodeKey>,
    peers: BTreeMap<NodeId, Peer>,
    retry: Duration,
    queue: usize,
    rng: StdRng,
    /// Random per start: tells this run from the previous ones.
    incarnation: u64,
    transmit: VecDeque<(NodeId, Vec<u8>)>,
}

impl fmt::Debug for Datagrams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datagrams")
            .field("me", &self.me)
            .field("established", &self.established())
            .finish_non_exhaustive()
    }
}

impl Datagrams {
    /// Starts the endpoint at `now`: a handshake to every peer is queued for
    /// [`Datagrams::poll_transmit`] at once.
    ///
    /// `seed` feeds the handshakes' ephemeral keys and session ids: in production take it
    /// from the operating system's generator (`getrandom`), or forward secrecy is lost;
    /// fix it only in tests. Refuses a config whose keys could let one node pass as another.
    pub fn new(config: DatagramConfig, seed: [u8; 32], now: Instant) -> Result<Self, SessionError> {
        config.check()?;
        let mut this = Self {
            me: config.me,
            secret: config.secret,
            node_key: config.node_key,
            peers: BTreeMap::new(),
            retry: config.handshake_retry,
            queue: config.queue,
            rng: StdRng::from_seed(seed),
            incarnation: 0,
            transmit: VecDeque::new(),
        };
        // Never 0, which marks "no incarnation" in the envelopes of other kinds.
        this.incarnation = this.rng.next_u64().max(1);
        for (id, key) in config.peers {
            let out = this.dial(&id, key.as_ref(), now)?;
            this.peers.insert(
                id,
                Peer {
                    key,
                    out,
                    incarnation: None,
                    queued: VecDeque::new(),
                    inbound: None,
                    pending: VecDeque::new(),
                },
            );
        }
        Ok(this)
    }

    /// This node's id.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The peers whose acknowledgement of our current session opened, in id order: what we
    /// send them is sealed at once. (A peer that restarted since then is dialed again as
    /// soon as its first handshake arrives.)
    pub fn established(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| {
                matches!(
                    p.out,
                    Outbound::Established {
                        acked_by: Some(_),
                        ..
                    }
                )
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The largest payload [`Datagrams::send`] takes for `to`.
    pub fn max_payload(&self, to: &NodeId) -> usize {
        // One Noise chunk: body byte and tag around the payload, the nonce before it.
        let overhead = Envelope::header_len(&self.me, to) + sealed_len(0);
        MAX_DATAGRAM.saturating_sub(overhead)
    }

    /// Seals `payload` for `to` (queued for [`Datagrams::poll_transmit`]); while the
    /// session to `to` is being set up, it waits (see [`DatagramConfig::queue`]).
    pub fn send(&mut self, to: &NodeId, payload: &[u8]) -> Result<(), SessionError> {
        let limit = self.max_payload(to);
        if payload.len() > limit {
            return Err(SessionError::Oversized {
                len: payload.len(),
                limit,
            });
        }
        let me = self.me.clone();
        let queue = self.queue;
        let peer = self
            .peers
            .get_mut(to)
            .ok_or_else(|| SessionError::Config(format!("{to} is not a configured peer")))?;
        match &mut peer.out {
            Outbound::Established {
                session, sealer, ..
            } => {
                let body = sealer.seal_datagram(Body::Frame, payload)?;
                let envelope = Envelope {
                    kind: Kind::Sealed,
                    from: me,
                    to: to.clone(),
                    session: *session,
                    incarnation: 0,
                };
                self.transmit.push_back((to.clone(), envelope.write(&body)));
            }
            Outbound::Handshaking { .. } => {
                if peer.queued.len() == queue {
                    peer.queued.pop_front();
                }
                peer.queued.push_back(payload.to_vec());
            }
        }
        Ok(())
    }

    /// The next datagram to send, and to which peer (you map peer ids to addresses).
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.transmit.pop_front()
    }

    /// When [`Datagrams::handle_timeout`] must be called next (a handshake to retry, an
    /// acknowledgement to wait for).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|p| match p.out {
                Outbound::Handshaking { retry_at, .. }
                | Outbound::Established {
                    acked_by: None,
                    retry_at,
                    ..
                } => Some(retry_at),
                Outbound::Established {
                    acked_by: Some(_), ..
                } => None,
            })
            .min()
    }

    /// Retries every handshake that went unanswered, and dials again every session that
    /// went unacknowledged, for the retry time.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        let ids: Vec<NodeId> = self.peers.keys().cloned().collect();
        for id in ids {
            let Some(peer) = self.peers.get(&id) else {
                continue;
            };
            match peer.out {
                Outbound::Handshaking {
                    session,
                    seed,
                    retry_at,
                } if retry_at <= now => {
                    // Message 1 again, the same bytes: a responder that has it pending
                    // answers with the same message 2.
                    let key = peer.key;
                    let (_, msg1, envelope) = self.initiator(&id, key.as_ref(), session, seed)?;
                    self.transmit.push_back((id.clone(), envelope.write(&msg1)));
                    if let Some(Peer {
                        out: Outbound::Handshaking { retry_at, .. },
                        ..
                    }) = self.peers.get_mut(&id)
                    {
                        *retry_at = now + self.retry;
                    }
                }
                Outbound::Established {
                    acked_by: None,
                    retry_at,
                    ..
                } if retry_at <= now => self.redial(&id, now)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Handles one received datagram (from any source address: the envelope says who, and
    /// the session proves it). `Ok(Some(_))` is an authenticated payload; `Ok(None)` was
    /// protocol traffic (handshakes, confirmations, acknowledgements).
    pub fn receive(&mut self, datagram: &[u8], now: Instant) -> Result<Option<Delivery>, Refused> {
        let (envelope, body) = Envelope::parse(datagram)?;
        if envelope.to != self.me {
            return Err(Refused::NotForUs(envelope.to));
        }
        if !self.peers.contains_key(&envelope.from) {
            return Err(Refused::UnknownPeer(envelope.from));
        }
        match envelope.kind {
            Kind::Hello => self.on_hello(&envelope, body).map(|()| None),
            Kind::Reply => self.on_reply(&envelope, body, now).map(|()| None),
            Kind::Sealed => self.on_sealed(&envelope, body, now),
            Kind::Ack => self.on_ack(&envelope, body, now).map(|()| None),
        }
    }

    /// The initiator's state for `session`, rebuilt from its seed (the same message 1
    /// every time), and the envelope of message 1.
    fn initiator(
        &self,
        to: &NodeId,
        key: Option<&PublicKey>,
        session: u64,
        seed: [u8; 32],
    ) -> Result<(Initiator, Vec<u8>, Envelope), SessionError> {
        let envelope = Envelope {
            kind: Kind::Hello,
            from: self.me.clone(),
            to: to.clone(),
            session,
            incarnation: self.incarnation,
        };
        let credential = match (key, &self.node_key) {
            (Some(remote), Some(local)) => Credential::NodeKey {
                secret: &self.secret,
                local,
                remote,
            },
            _ => Credential::ClusterSecret(&self.secret),
        };
        let hello = Hello {
            id: self.me.clone(),
            kind: PeerKind::Peer,
        };
        let (initiator, msg1) = Initiator::start(credential, &envelope.binding(), seed, &hello)?;
        Ok((initiator, msg1, envelope))
    }

    /// A handshake with a new session id; queues message 1.
    fn dial(
        &mut self,
        to: &NodeId,
        key: Option<&PublicKey>,
        now: Instant,
    ) -> Result<Outbound, SessionError> {
        let session = self.rng.next_u64();
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let (_, msg1, envelope) = self.initiator(to, key, session, seed)?;
        self.transmit.push_back((to.clone(), envelope.write(&msg1)));
        Ok(Outbound::Handshaking {
            session,
            seed,
            retry_at: now + self.retry,
        })
    }

    /// A handshake with a new session, replacing ours to `id`.
    fn redial(&mut self, id: &NodeId, now: Instant) -> Result<(), SessionError> {
        let Some(peer) = self.peers.get(id) else {
            return Ok(());
        };
        let key = peer.key;
        let out = self.dial(id, key.as_ref(), now)?;
        if let Some(peer) = self.peers.get_mut(id) {
            peer.out = out;
        }
        Ok(())
    }

    fn on_hello(&mut self, envelope: &Envelope, msg1: &[u8]) -> Result<(), Refused> {
        let from = envelope.from.clone();
        let Some(peer) = self.peers.get(&from) else {
            return Err(Refused::UnknownPeer(from));
        };
        if peer
            .inbound
            .as_ref()
            .is_some_and(|i| i.session == envelope.session)
        {
            return Err(Refused::Stale {
                from,
                session: envelope.session,
            });
        }
        if let Some(pending) = peer.pending.iter().find(|p| p.session == envelope.session) {
            // A duplicate (or replay) of a pending one: the same answer, the same keys.
            let reply = Envelope {
                kind: Kind::Reply,
                from: self.me.clone(),
                to: from.clone(),
                session: envelope.session,
                incarnation: 0,
            };
            let wire = reply.write(&pending.msg2);
            self.transmit.push_back((from, wire));
            return Ok(());
        }
        let crypto = |error| Refused::Crypto {
            from: from.clone(),
            error,
        };
        let acceptor = Acceptor {
            secret: &self.secret,
            node_key: self.node_key.as_ref(),
            driver: None,
            driver_cluster_secret: false,
        };
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let (responder, hello, proof) =
            Responder::read_hello(&acceptor, &envelope.binding(), seed, msg1).map_err(crypto)?;
        let impostor = |why| Refused::Impostor {
            from: from.clone(),
            why,
        };
        if hello.id != envelope.from || hello.kind != PeerKind::Peer {
            return Err(impostor(
                "the handshake names another sender than the envelope",
            ));
        }
        match (peer.key, proof) {
            (Some(key), Proof::NodeKey(proven)) if key == proven => {}
            (Some(_), _) => {
                return Err(impostor("does not prove the node key configured for it"));
            }
            (None, Proof::ClusterSecret) => {}
            (None, _) => {
                return Err(impostor("proves a node key, but none is configured for it"));
            }
        }
        let accepted = Reply::Accepted(Hello {
            id: self.me.clone(),
            kind: PeerKind::Peer,
        });
        let (msg2, session) = responder.reply(&accepted).map_err(crypto)?;
        let reply = Envelope {
            kind: Kind::Reply,
            from: self.me.clone(),
            to: from.clone(),
            session: envelope.session,
            incarnation: 0,
        };
        self.transmit.push_back((from.clone(), reply.write(&msg2)));
        if let Some(peer) = self.peers.get_mut(&from) {
            if peer.pending.len() == MAX_PENDING {
                peer.pending.pop_front();
            }
            peer.pending.push_back(Inbound {
                session: envelope.session,
                opener: session.opener,
                sealer: session.sealer,
                msg2,
                incarnation: envelope.incarnation,
            });
        }
        Ok(())
    }

    fn on_reply(&mut self, envelope: &Envelope, msg2: &[u8], now: Instant) -> Result<(), Refused> {
        let from = envelope.from.clone();
        let no_session = || Refused::NoSession {
            from: from.clone(),
            session: envelope.session,
        };
        let peer = self.peers.get(&from).ok_or_else(no_session)?;
        let seed = match peer.out {
            Outbound::Handshaking { session, seed, .. } if session == envelope.session => seed,
            _ => return Err(no_session()),
        };
        let crypto = |error| Refused::Crypto {
            from: from.clone(),
            error,
        };
        // Rebuilt for this reply: one that does not authenticate leaves the handshake as it was.
        let (initiator, _, _) = self
            .initiator(&from, peer.key.as_ref(), envelope.session, seed)
            .map_err(crypto)?;
        let (reply, session, _stream_confirm) = initiator.finish(msg2).map_err(crypto)?;
        match reply {
            Reply::Accepted(hello) if hello.id == from && hello.kind == PeerKind::Peer => {}
            Reply::Accepted(_) => {
                return Err(Refused::Impostor {
                    from,
                    why: "answered as another node",
                });
            }
            Reply::Refused(_) => {
                return Err(Refused::Impostor {
                    from,
                    why: "refused our handshake",
                });
            }
        }
        let me = self.me.clone();
        let retry = self.retry;
        let Some(peer) = self.peers.get_mut(&from) else {
            return Err(no_session());
        };
        let (mut sealer, opener) = (session.sealer, session.opener);
        let sealed = Envelope {
            kind: Kind::Sealed,
            from: me,
            to: from.clone(),
            session: envelope.session,
            incarnation: 0,
        };
        let mut wires = Vec::with_capacity(peer.queued.len() + 1);
        // Sizes were checked in `send`, so sealing cannot fail here.
        if let Ok(body) = sealer.seal_datagram(Body::Confirm, &[]) {
            wires.push(sealed.write(&body));
        }
        for payload in peer.queued.drain(..) {
            if let Ok(body) = sealer.seal_datagram(Body::Frame, &payload) {
                wires.push(sealed.write(&body));
            }
        }
        peer.out = Outbound::Established {
            session: envelope.session,
            sealer,
            opener,
            acked_by: None,
            retry_at: now + retry,
        };
        self.transmit
            .extend(wires.into_iter().map(|wire| (from.clone(), wire)));
        Ok(())
    }

    fn on_ack(&mut self, envelope: &Envelope, body: &[u8], now: Instant) -> Result<(), Refused> {
        let from = envelope.from.clone();
        let no_session = || Refused::NoSession {
            from: from.clone(),
            session: envelope.session,
        };
        let peer = self.peers.get_mut(&from).ok_or_else(no_session)?;
        let known = peer.incarnation;
        let Outbound::Established {
            session,
            opener,
            acked_by,
            ..
        } = &mut peer.out
        else {
            return Err(no_session());
        };
        if *session != envelope.session {
            return Err(no_session());
        }
        let (kind, payload) = opener
            .open_datagram(body)
            .map_err(|error| Refused::Crypto {
                from: from.clone(),
                error,
            })?;
        let incarnation = match (kind, <[u8; 8]>::try_from(payload.as_slice())) {
            (Body::Confirm, Ok(bytes)) => u64::from_be_bytes(bytes),
            _ => {
                return Err(Refused::Impostor {
                    from,
                    why: "a responder sends nothing but its acknowledgement",
                });
            }
        };
        *acked_by = Some(incarnation);
        if known.is_some_and(|known| known != incarnation) {
            // Acknowledged by a run of the peer older than the one whose session we hold
            // (a late acknowledgement): those keys are gone with it.
            let _ = self.redial(&from, now);
        }
        Ok(())
    }

    fn on_sealed(
        &mut self,
        envelope: &Envelope,
        body: &[u8],
        now: Instant,
    ) -> Result<Option<Delivery>, Refused> {
        let from = envelope.from.clone();
        let me = self.me.clone();
        let peer = self
            .peers
            .get_mut(&from)
            .ok_or_else(|| Refused::UnknownPeer(from.clone()))?;
        let crypto = |error| Refused::Crypto {
            from: from.clone(),
            error,
        };
        let mut redial = false;
        let (kind, payload) = if let Some(inbound) = peer
            .inbound
            .as_mut()
            .filter(|i| i.session == envelope.session)
        {
            inbound.opener.open_datagram(body).map_err(crypto)?
        } else if let Some(at) = peer
            .pending
            .iter()
            .position(|p| p.session == envelope.session)
        {
            let opened = peer.pending[at]
                .opener
                .open_datagram(body)
                .map_err(crypto)?;
            // Proven: only the initiator's keys seal under this session.
            let Some(mut proven) = peer.pending.remove(at) else {
                return Err(Refused::NoSession {
                    from,
                    session: envelope.session,
                });
            };
            // Pending sessions older than the proven one are superseded.
            peer.pending.drain(..at);
            let ours = self.incarnation.to_be_bytes();
            if let Ok(ack) = proven.sealer.seal_datagram(Body::Confirm, &ours) {
                let envelope = Envelope {
                    kind: Kind::Ack,
                    from: me,
                    to: from.clone(),
                    session: envelope.session,
                    incarnation: 0,
                };
                self.transmit
                    .push_back((from.clone(), envelope.write(&ack)));
            }
            // Our session, if another run of the peer acknowledged it, is to a run that is
            // gone: dial again. (Unacknowledged, it is checked when the ack comes.)
            redial = matches!(peer.out, Outbound::Established { acked_by: Some(theirs), .. } if theirs != proven.incarnation);
            peer.incarnation = Some(proven.incarnation);
            peer.inbound = Some(proven);
            opened
        } else {
            return Err(Refused::NoSession {
                from,
                session: envelope.session,
            });
        };
        if redial {
            // Dialing only fails on a broken Noise setup, which `new` already did once;
            // the payload is delivered either way, and the unacknowledged session retries.
            let _ = self.redial(&from, now);
        }
        Ok(match kind {
            Body::Frame => Some(Delivery { from, payload }),
            // Datagram sessions end by being replaced; a goodbye changes nothing.
            Body::Confirm | Body::Keepalive | Body::Goodbye | Body::Ready => None,
        })
    }
}
