//! Authenticated datagrams for embedders: the Noise handshakes of [`crate::handshake`] and
//! sealed datagrams over any connectionless socket (UDP, a radio link, a serial line),
//! sans-IO: bytes in, bytes out, time passed in, nothing read from a clock.
//!
//! A [`Datagrams`] is one node's end. It keeps an authenticated session to every
//! configured peer and tells you, for every datagram it accepts, **which peer sent it**:
//! that is the `from` to pass to `clustd_core::Node::handle_message`. A datagram whose
//! sender cannot be proven is refused with a [`Refused`] reason and changes nothing.
//!
//! ```text
//! loop {
//!     for (to, bytes) in datagrams.poll_transmit()  → socket.send_to(bytes, address_of(to))
//!     socket.recv(buf) → datagrams.receive(buf, now)  → Ok(Some(d)): node.handle_message(now, d.from, decode(d.payload))
//!     node.poll_transmit() → (to, msg)             → datagrams.send(&to, &encode(msg), now)
//!     at datagrams.poll_timeout()                  → datagrams.handle_timeout(now)
//! }
//! ```
//!
//! # The envelope
//! Every datagram, in both directions and at every stage, is one envelope:
//!
//! | bytes | field | |
//! |---|---|---|
//! | 1 | version | [`ENVELOPE_VERSION`] |
//! | 1 | kind | 1 = handshake message 1, 2 = handshake message 2, 3 = sealed |
//! | 1 + n | from | length, then the sender's node id (UTF-8, 1 to 64 bytes) |
//! | 1 + n | to | length, then the receiver's node id |
//! | 8 | session | big endian; chosen at random by the initiator of the handshake |
//! | 1 | flags | bit 0: *fresh*, the initiator has had no session to this peer since it started |
//! | rest | body | the Noise handshake message, or a sealed datagram ([`crate::handshake::Sealer::seal_datagram`]) |
//!
//! How the header is authenticated, although it travels in clear:
//! - In a handshake, `from`, `to`, `session` and `flags` go into the Noise prologue: both
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
//! the responder only opens), so two nodes never race to open the same session. A new
//! session replaces the old one only once a datagram sealed under it opens (which only the
//! holder of the initiator's keys can produce): a replayed handshake message changes nothing.
//! A handshake not answered within [`DatagramConfig::handshake_retry`] starts again.
//! Every node dials every peer as soon as it starts, with the *fresh* flag set until its
//! first session to that peer is up. A peer that accepts a fresh session while its own
//! session to that node is up dials again once the fresh one proves itself: the node
//! restarted and forgot the old one. (A re-dial is never fresh, so this does not loop.)
//! A reply that fails to authenticate uses the pending handshake up, so an attacker who
//! sees the session id can delay a session by one retry each time, as it could by
//! dropping datagrams.
//! While a session is being set up, up to [`DatagramConfig::queue`] payloads wait for it
//! (older ones are dropped first: election messages are superseded by newer ones).
//!
//! # What it proves, and what it does not
//! With node keys ([`DatagramConfig::node_key`] and a key per peer), a sender id is proven
//! by that node's private key: holding the cluster secret is not enough to speak as another
//! node. With the cluster secret alone, any holder of the secret can claim any peer id.
//! Datagrams can still be dropped, delayed and reordered by the network: the election core
//! tolerates that.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use clustd_core::{Instant, NodeId};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::handshake::{
    Acceptor, Body, Credential, Hello, Initiator, Opener, Proof, Reply, Responder, Sealer,
};
use crate::{NodeKey, PeerKind, PublicKey, Secret, SessionError};

/// The envelope's first byte.
pub const ENVELOPE_VERSION: u8 = 0xC1;
/// Largest datagram accepted or produced (UDP's largest payload over IPv4).
pub const MAX_DATAGRAM: usize = 65_507;

const KIND_HELLO: u8 = 1;
const KIND_REPLY: u8 = 2;
const KIND_SEALED: u8 = 3;
const FLAG_FRESH: u8 = 1;
const BINDING_LABEL: &[u8] = b"clustd datagram v1\0";

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
    /// A handshake not answered within this starts again (a lost datagram).
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
/// worth a log line or a counter, and none needs an answer.
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
    /// A handshake reply or a sealed datagram for a session this node does not have (an
    /// old session, a restart, or a forgery).
    #[error("no session {session:016x} with {from}")]
    NoSession {
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

struct Header {
    kind: u8,
    from: NodeId,
    to: NodeId,
    session: u64,
    flags: u8,
}

impl Header {
    fn write(&self, body: &[u8]) -> Vec<u8> {
        let (from, to) = (self.from.as_str().as_bytes(), self.to.as_str().as_bytes());
        let mut out = Vec::with_capacity(13 + from.len() + to.len() + body.len());
        out.push(ENVELOPE_VERSION);
        out.push(self.kind);
        for id in [from, to] {
            out.push(u8::try_from(id.len()).unwrap_or_else(|_| unreachable!("ids are short")));
            out.extend_from_slice(id);
        }
        out.extend_from_slice(&self.session.to_be_bytes());
        out.push(self.flags);
        out.extend_from_slice(body);
        out
    }

    fn read(bytes: &[u8]) -> Result<(Self, &[u8]), Refused> {
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
        let kind = take(1)?[0];
        if !matches!(kind, KIND_HELLO | KIND_REPLY | KIND_SEALED) {
            return Err(Refused::Malformed("unknown kind"));
        }
        let mut id = || -> Result<NodeId, Refused> {
            let len = usize::from(take(1)?[0]);
            let raw = take(len)?;
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| NodeId::new(s).ok())
                .ok_or(Refused::Malformed("invalid node id"))
        };
        let (from, to) = (id()?, id()?);
        let session = u64::from_be_bytes(
            take(8)?
                .try_into()
                .unwrap_or_else(|_| unreachable!("8 bytes")),
        );
        let flags = take(1)?[0];
        if flags & !FLAG_FRESH != 0 {
            return Err(Refused::Malformed("unknown flags"));
        }
        Ok((
            Self {
                kind,
                from,
                to,
                session,
                flags,
            },
            at,
        ))
    }

    /// The Noise prologue binding of a handshake: every header field but the kind, with
    /// `from` = the initiator.
    fn binding(&self) -> Vec<u8> {
        let mut out = BINDING_LABEL.to_vec();
        for id in [&self.from, &self.to] {
            out.push(id.as_str().len() as u8);
            out.extend_from_slice(id.as_str().as_bytes());
        }
        out.extend_from_slice(&self.session.to_be_bytes());
        out.push(self.flags);
        out
    }
}

enum Outbound {
    Handshaking {
        session: u64,
        initiator: Box<Initiator>,
        retry_at: Instant,
    },
    Established {
        session: u64,
        sealer: Sealer,
    },
    /// A failed handshake reply used the handshake up: dial again at `retry_at`.
    Waiting {
        retry_at: Instant,
    },
}

struct Inbound {
    session: u64,
    opener: Opener,
    /// The peer started afresh (flag *fresh*) while our session to it was up: that session
    /// was to its previous run, so dial again once this one proves itself.
    redial: bool,
}

struct Peer {
    key: Option<PublicKey>,
    out: Outbound,
    /// Whether no session of ours to this peer was ever established (our `fresh` flag).
    never_established: bool,
    queued: VecDeque<Vec<u8>>,
    /// The session the peer sends on, once a datagram sealed under it opened.
    inbound: Option<Inbound>,
    /// A session the peer opened (we answered its handshake) that has not proven itself.
    pending: Option<Inbound>,
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
    /// fix it only in tests.
    pub fn new(config: DatagramConfig, seed: [u8; 32], now: Instant) -> Result<Self, SessionError> {
        if config.peers.contains_key(&config.me) {
            return Err(SessionError::Config(format!(
                "{} is in its own peer list",
                config.me
            )));
        }
        if config.node_key.is_none()
            && let Some((id, _)) = config.peers.iter().find(|(_, key)| key.is_some())
        {
            return Err(SessionError::Config(format!(
                "peer {id} has a public key, so {} needs a node key of its own to dial it",
                config.me
            )));
        }
        if config.queue == 0 || config.handshake_retry.is_zero() {
            return Err(SessionError::Config(
                "queue and handshake_retry must be positive".into(),
            ));
        }
        let mut this = Self {
            me: config.me,
            secret: config.secret,
            node_key: config.node_key,
            peers: BTreeMap::new(),
            retry: config.handshake_retry,
            queue: config.queue,
            rng: StdRng::from_seed(seed),
            transmit: VecDeque::new(),
        };
        for (id, key) in config.peers {
            let out = this.dial(&id, key.as_ref(), true, now)?;
            this.peers.insert(
                id,
                Peer {
                    key,
                    out,
                    never_established: true,
                    queued: VecDeque::new(),
                    inbound: None,
                    pending: None,
                },
            );
        }
        Ok(this)
    }

    /// This node's id.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The peers this node can send to without a handshake first, in id order.
    pub fn established(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| matches!(p.out, Outbound::Established { .. }))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Seals `payload` for `to` (queued for [`Datagrams::poll_transmit`]); while the
    /// session to `to` is being set up, it waits (see [`DatagramConfig::queue`]).
    pub fn send(&mut self, to: &NodeId, payload: &[u8]) -> Result<(), SessionError> {
        let me = self.me.clone();
        let queue = self.queue;
        let peer = self
            .peers
            .get_mut(to)
            .ok_or_else(|| SessionError::Config(format!("{to} is not a configured peer")))?;
        match &mut peer.out {
            Outbound::Established { session, sealer } => {
                let body = sealer.seal_datagram(Body::Frame, payload)?;
                let header = Header {
                    kind: KIND_SEALED,
                    from: me,
                    to: to.clone(),
                    session: *session,
                    flags: 0,
                };
                let wire = header.write(&body);
                if wire.len() > MAX_DATAGRAM {
                    return Err(SessionError::Oversized {
                        len: payload.len(),
                        limit: MAX_DATAGRAM - (wire.len() - payload.len()),
                    });
                }
                self.transmit.push_back((to.clone(), wire));
            }
            Outbound::Handshaking { .. } | Outbound::Waiting { .. } => {
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

    /// When [`Datagrams::handle_timeout`] must be called next (a handshake retry).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|p| match p.out {
                Outbound::Handshaking { retry_at, .. } | Outbound::Waiting { retry_at } => {
                    Some(retry_at)
                }
                Outbound::Established { .. } => None,
            })
            .min()
    }

    /// Starts again every handshake that went unanswered for the retry time.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        let due: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| match p.out {
                Outbound::Handshaking { retry_at, .. } | Outbound::Waiting { retry_at } => {
                    retry_at <= now
                }
                Outbound::Established { .. } => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.redial(&id, now)?;
        }
        Ok(())
    }

    /// Handles one received datagram (from any source address: the envelope says who, and
    /// the session proves it). `Ok(Some(_))` is an authenticated payload; `Ok(None)` was
    /// protocol traffic (handshakes, confirmations).
    pub fn receive(&mut self, datagram: &[u8], now: Instant) -> Result<Option<Delivery>, Refused> {
        let (header, body) = Header::read(datagram)?;
        if header.to != self.me {
            return Err(Refused::NotForUs(header.to));
        }
        if !self.peers.contains_key(&header.from) {
            return Err(Refused::UnknownPeer(header.from));
        }
        if header.kind != KIND_HELLO && header.flags != 0 {
            // Only a handshake binds its flags; elsewhere they must be clear.
            return Err(Refused::Malformed("flags outside a handshake"));
        }
        match header.kind {
            KIND_HELLO => self.on_hello(&header, body).map(|()| None),
            KIND_REPLY => self.on_reply(&header, body).map(|()| None),
            _ => self.on_sealed(&header, body, now),
        }
    }

    fn dial(
        &mut self,
        to: &NodeId,
        key: Option<&PublicKey>,
        fresh: bool,
        now: Instant,
    ) -> Result<Outbound, SessionError> {
        let session = self.rng.next_u64();
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let header = Header {
            kind: KIND_HELLO,
            from: self.me.clone(),
            to: to.clone(),
            session,
            flags: if fresh { FLAG_FRESH } else { 0 },
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
        let (initiator, msg1) = Initiator::start(credential, &header.binding(), seed, &hello)?;
        self.transmit.push_back((to.clone(), header.write(&msg1)));
        Ok(Outbound::Handshaking {
            session,
            initiator: Box::new(initiator),
            retry_at: now + self.retry,
        })
    }

    fn redial(&mut self, id: &NodeId, now: Instant) -> Result<(), SessionError> {
        let Some(peer) = self.peers.get(id) else {
            return Ok(());
        };
        let (key, fresh) = (peer.key, peer.never_established);
        let out = self.dial(id, key.as_ref(), fresh, now)?;
        if let Some(peer) = self.peers.get_mut(id) {
            peer.out = out;
        }
        Ok(())
    }

    fn on_hello(&mut self, header: &Header, msg1: &[u8]) -> Result<(), Refused> {
        let from = header.from.clone();
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
            Responder::read_hello(&acceptor, &header.binding(), seed, msg1).map_err(crypto)?;
        let impostor = |why| Refused::Impostor {
            from: from.clone(),
            why,
        };
        if hello.id != header.from || hello.kind != PeerKind::Peer {
            return Err(impostor(
                "the handshake names another sender than the envelope",
            ));
        }
        let expected = self.peers.get(&from).and_then(|p| p.key);
        match (expected, proof) {
            (Some(key), Proof::NodeKey(proven)) if key == proven => {}
            (Some(_), _) => return Err(impostor("does not prove the node key configured for it")),
            (None, Proof::ClusterSecret) => {}
            (None, _) => return Err(impostor("proves a node key, but none is configured for it")),
        }
        let accepted = Reply::Accepted(Hello {
            id: self.me.clone(),
            kind: PeerKind::Peer,
        });
        let (msg2, session) = responder.reply(&accepted).map_err(crypto)?;
        let reply = Header {
            kind: KIND_REPLY,
            from: self.me.clone(),
            to: from.clone(),
            session: header.session,
            flags: 0,
        };
        self.transmit.push_back((from.clone(), reply.write(&msg2)));
        if let Some(peer) = self.peers.get_mut(&from) {
            let up = matches!(peer.out, Outbound::Established { .. });
            peer.pending = Some(Inbound {
                session: header.session,
                opener: session.opener,
                redial: up && header.flags & FLAG_FRESH != 0,
            });
        }
        Ok(())
    }

    fn on_reply(&mut self, header: &Header, msg2: &[u8]) -> Result<(), Refused> {
        let from = header.from.clone();
        let no_session = || Refused::NoSession {
            from: from.clone(),
            session: header.session,
        };
        let peer = self.peers.get_mut(&from).ok_or_else(no_session)?;
        let retry_at = match &peer.out {
            Outbound::Handshaking {
                session, retry_at, ..
            } if *session == header.session => *retry_at,
            _ => return Err(no_session()),
        };
        // Reading message 2 uses the handshake up: one that fails (garbage that names our
        // session id, which travels in clear) leaves the peer to the retry.
        let Outbound::Handshaking { initiator, .. } =
            std::mem::replace(&mut peer.out, Outbound::Waiting { retry_at })
        else {
            unreachable!("matched above")
        };
        let (reply, session, _stream_confirm) =
            (*initiator).finish(msg2).map_err(|error| Refused::Crypto {
                from: from.clone(),
                error,
            })?;
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
        let mut sealer = session.sealer;
        let mut wires = Vec::with_capacity(peer.queued.len() + 1);
        let seal = |sealer: &mut Sealer, body, payload: &[u8]| {
            sealer.seal_datagram(body, payload).ok().map(|body| {
                Header {
                    kind: KIND_SEALED,
                    from: self.me.clone(),
                    to: from.clone(),
                    session: header.session,
                    flags: 0,
                }
                .write(&body)
            })
        };
        wires.extend(seal(&mut sealer, Body::Confirm, &[]));
        for payload in peer.queued.drain(..) {
            wires.extend(seal(&mut sealer, Body::Frame, &payload));
        }
        peer.out = Outbound::Established {
            session: header.session,
            sealer,
        };
        peer.never_established = false;
        self.transmit
            .extend(wires.into_iter().map(|wire| (from.clone(), wire)));
        Ok(())
    }

    fn on_sealed(
        &mut self,
        header: &Header,
        body: &[u8],
        now: Instant,
    ) -> Result<Option<Delivery>, Refused> {
        let from = header.from.clone();
        let peer = self
            .peers
            .get_mut(&from)
            .ok_or_else(|| Refused::UnknownPeer(from.clone()))?;
        let crypto = |error| Refused::Crypto {
            from: from.clone(),
            error,
        };
        let mut redial = false;
        let (kind, payload) = match (&mut peer.inbound, &mut peer.pending) {
            (Some(inbound), _) if inbound.session == header.session => {
                inbound.opener.open_datagram(body).map_err(crypto)?
            }
            (_, Some(pending)) if pending.session == header.session => {
                let opened = pending.opener.open_datagram(body).map_err(crypto)?;
                // Proven: only the initiator's keys seal under this session.
                let pending = peer
                    .pending
                    .take()
                    .unwrap_or_else(|| unreachable!("matched"));
                // A peer that restarted forgot our session to it: dial it again.
                redial = pending.redial;
                peer.inbound = Some(pending);
                opened
            }
            _ => {
                return Err(Refused::NoSession {
                    from,
                    session: header.session,
                });
            }
        };
        if redial {
            self.redial(&from, now).map_err(|error| Refused::Crypto {
                from: from.clone(),
                error,
            })?;
        }
        Ok(match kind {
            Body::Frame => Some(Delivery { from, payload }),
            Body::Confirm | Body::Keepalive => None,
            Body::Goodbye => {
                if let Some(peer) = self.peers.get_mut(&from) {
                    peer.inbound = None;
                }
                None
            }
        })
    }
}
