//! `handshake`: arbitrary bytes, truncations and bit flips fed to both sides of the Noise
//! handshake, authenticated messages with arbitrary plaintext (a peer or driver that holds
//! the secret but misbehaves), and a script of sends, deliveries, replays and forgeries over
//! an established session.

use arbitrary::{Arbitrary, Unstructured};
use clustd_core::NodeId;
use clustd_transport::session::{
    Acceptor, Body, Credential, Hello, Initiator, Proof, Reply, Responder, Session,
};
use clustd_transport::{NodeKey, PeerKind, RefuseReason, Secret, SessionError};

/// One handshake scenario.
#[derive(Arbitrary, Debug)]
enum Case {
    /// Arbitrary bytes as message 1, to a responder.
    Msg1(Vec<u8>),
    /// Arbitrary bytes as message 2, to an initiator that sent a real message 1.
    Msg2(Vec<u8>),
    /// Arbitrary bytes as the key confirmation, to a responder that replied.
    Confirm(Vec<u8>),
    /// A real handshake with one message tampered with (or the wrong secret or binding).
    Tampered {
        /// Which message: 0, 1 or 2 (mod 3).
        which: u8,
        /// How.
        how: Tamper,
        /// The responder holds another secret.
        other_secret: bool,
        /// The responder has another transport binding.
        other_binding: bool,
        /// Refuse instead of accepting.
        refuse: bool,
    },
    /// A correctly keyed message 1 carrying arbitrary plaintext instead of a hello.
    RawHello(Vec<u8>),
    /// A correctly keyed message 2 carrying arbitrary plaintext instead of a reply.
    RawReply(Vec<u8>),
    /// A script over an established session.
    Session(Vec<SessionOp>),
}

/// A change to a message on the wire.
#[derive(Arbitrary, Debug, Clone)]
enum Tamper {
    Truncate(u16),
    Flip(u16, u8),
    Append(Vec<u8>),
    Replace(Vec<u8>),
}

impl Tamper {
    fn apply(&self, wire: &[u8]) -> Vec<u8> {
        let mut out = wire.to_vec();
        match self {
            Self::Truncate(n) => out.truncate(usize::from(*n) % (wire.len() + 1)),
            Self::Flip(at, mask) => {
                if !out.is_empty() {
                    let i = usize::from(*at) % out.len();
                    out[i] ^= (*mask).max(1);
                }
            }
            Self::Append(more) => out.extend_from_slice(more),
            Self::Replace(bytes) => out.clone_from(bytes),
        }
        out
    }
}

/// One step over an established session between `a` (initiator) and `b` (responder).
#[derive(Arbitrary, Debug)]
enum SessionOp {
    /// Seal a message (reliable or datagram) in one direction.
    Seal {
        a_to_b: bool,
        datagram: bool,
        body: u8,
        payload: Vec<u8>,
    },
    /// Deliver a sealed message (again, possibly): `index` into everything sealed so far.
    Deliver { index: u16 },
    /// Deliver a tampered copy of a sealed message.
    DeliverTampered { index: u16, how: Tamper },
    /// Arbitrary bytes to one side.
    Garbage {
        to_b: bool,
        datagram: bool,
        bytes: Vec<u8>,
    },
}

struct Sealed {
    a_to_b: bool,
    datagram: bool,
    body: Body,
    payload: Vec<u8>,
    wire: Vec<u8>,
    /// Position among the reliable messages of its direction.
    order: usize,
    delivered: bool,
}

const BINDING: &[u8] = b"binding";

/// The secrets and ephemeral seeds of one run, derived from a hash of the whole input.
///
/// Why not constants: with fixed keys every run seals the same bytes, so an input could
/// carry a genuine message recorded from an earlier run and "forge" it. A message that
/// authenticates under keys derived from the very input that contains it cannot be found
/// without breaking the cryptography, so "garbage never authenticates" is a sound check.
struct Keys {
    secret: Vec<u8>,
    other_secret: Vec<u8>,
    initiator_seed: [u8; 32],
    responder_seed: [u8; 32],
}

impl Keys {
    fn from_input(data: &[u8]) -> Self {
        let mut h = clustd_core::hash::Fnv1a::default();
        h.write(data);
        let mut seed = |tag: u8| {
            h.write(&[tag]);
            h.value()
        };
        let (s1, s2, s3, s4) = (seed(1), seed(2), seed(3), seed(4));
        let mut initiator_seed = [0u8; 32];
        let mut responder_seed = [0u8; 32];
        for (i, chunk) in initiator_seed.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&s3.rotate_left(i as u32 * 8).to_le_bytes());
        }
        for (i, chunk) in responder_seed.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&s4.rotate_left(i as u32 * 8).to_le_bytes());
        }
        Self {
            secret: format!("fuzz-{s1:016x}-{s2:016x}").into_bytes(),
            other_secret: format!("other-{s2:016x}-{s1:016x}").into_bytes(),
            initiator_seed,
            responder_seed,
        }
    }

    fn secret(&self) -> Secret {
        secret(&self.secret)
    }
}

/// A responder that accepts the cluster secret (and, with `key`, node-key handshakes).
fn acceptor<'a>(secret: &'a Secret, key: Option<&'a NodeKey>) -> Acceptor<'a> {
    Acceptor {
        secret,
        node_key: key,
        driver: None,
        driver_cluster_secret: false,
    }
}

fn secret(bytes: &[u8]) -> Secret {
    Secret::from_bytes(bytes.to_vec()).unwrap_or_else(|e| panic!("a 38-byte secret is valid: {e}"))
}

fn hello(id: &str, kind: PeerKind) -> Hello {
    Hello {
        id: NodeId::new(id).unwrap_or_else(|e| panic!("{id} is a valid id: {e}")),
        kind,
    }
}

/// The target body.
pub fn handshake(data: &[u8]) {
    let u = Unstructured::new(data);
    let Ok(case) = Case::arbitrary_take_rest(u) else {
        return;
    };
    run(case, &Keys::from_input(data));
}

fn run(case: Case, keys: &Keys) {
    let s = keys.secret();
    let (i_seed, r_seed) = (keys.initiator_seed, keys.responder_seed);
    let a_hello = hello("node-a", PeerKind::Peer);
    let b_hello = hello("node-b", PeerKind::Peer);
    let cred = Credential::ClusterSecret(&s);
    // Garbage is also tried as a node-key handshake.
    let b_key = NodeKey::from_private(keys.responder_seed);
    let accept = acceptor(&s, Some(&b_key));
    match case {
        Case::Msg1(bytes) => {
            if let Ok((_, got, _)) = Responder::read_hello(&accept, BINDING, r_seed, &bytes) {
                panic!("garbage message 1 authenticated as {got:?}");
            }
        }
        Case::Msg2(bytes) => {
            let (init, _) = Initiator::start(cred, BINDING, i_seed, &a_hello).expect("start");
            if let Ok((reply, ..)) = init.finish(&bytes) {
                panic!("garbage message 2 authenticated as {reply:?}");
            }
        }
        Case::Confirm(bytes) => {
            let (_, msg1) = Initiator::start(cred, BINDING, i_seed, &a_hello).expect("start");
            let (resp, _, _) =
                Responder::read_hello(&accept, BINDING, r_seed, &msg1).expect("hello");
            let (_, mut session) = resp.reply(&Reply::Accepted(b_hello)).expect("reply");
            if let Ok(opened) = session.open(&bytes) {
                panic!("garbage confirmation opened: {opened:?}");
            }
        }
        Case::Tampered {
            which,
            how,
            other_secret,
            other_binding,
            refuse,
        } => tampered(which % 3, &how, other_secret, other_binding, refuse, keys),
        Case::RawHello(payload) => {
            let Ok((_, msg1)) = Initiator::start_with_payload(cred, BINDING, i_seed, &payload)
            else {
                return; // too long for one handshake message
            };
            // Authenticated, so only the payload decides: it must decode as a hello exactly
            // when the codec says so, and nothing may panic.
            let expected = clustd_core::codec::decode::<Hello>(&payload).ok();
            match Responder::read_hello(&accept, BINDING, r_seed, &msg1) {
                Ok((resp, got, _)) => {
                    assert_eq!(Some(&got), expected.as_ref(), "hello decoded differently");
                    let _ = resp.reply(&Reply::Refused(RefuseReason::UnknownNode));
                }
                Err(SessionError::AuthenticationFailed) => {
                    panic!("a correctly keyed message 1 failed authentication")
                }
                Err(_) => assert!(expected.is_none(), "a valid hello was refused"),
            }
        }
        Case::RawReply(payload) => {
            let (init, msg1) = Initiator::start(cred, BINDING, i_seed, &a_hello).expect("start");
            let (resp, _, _) =
                Responder::read_hello(&accept, BINDING, r_seed, &msg1).expect("hello");
            let Ok((msg2, mut rs)) = resp.reply_with_payload(&payload) else {
                return;
            };
            let expected = clustd_core::codec::decode::<Reply>(&payload).ok();
            match init.finish(&msg2) {
                Ok((reply, _, confirm)) => {
                    assert_eq!(Some(&reply), expected.as_ref(), "reply decoded differently");
                    let (body, _) = rs.open(&confirm).expect("the confirmation opens");
                    assert_eq!(body, Body::Confirm);
                }
                Err(SessionError::AuthenticationFailed) => {
                    panic!("a correctly keyed message 2 failed authentication")
                }
                Err(_) => assert!(expected.is_none(), "a valid reply was refused"),
            }
        }
        Case::Session(ops) => session_script(&ops, keys),
    }
}

fn tampered(
    which: u8,
    how: &Tamper,
    other_secret: bool,
    other_binding: bool,
    refuse: bool,
    keys: &Keys,
) {
    let a_hello = &hello("node-a", PeerKind::Peer);
    let b_hello = &hello("node-b", PeerKind::Peer);
    let (i_seed, r_seed) = (keys.initiator_seed, keys.responder_seed);
    let si = keys.secret();
    let sr = secret(if other_secret {
        &keys.other_secret
    } else {
        &keys.secret
    });
    let br: &[u8] = if other_binding { b"other" } else { BINDING };
    let mismatch = other_secret || other_binding;
    // The node-key handshake, the one peers use: a's key proven to b, b's key known to a.
    let a_key = NodeKey::from_private(keys.initiator_seed);
    let b_key = NodeKey::from_private(keys.responder_seed);
    let b_public = b_key.public();
    let cred = Credential::NodeKey {
        secret: &si,
        local: &a_key,
        remote: &b_public,
    };
    let (init, msg1) = Initiator::start(cred, BINDING, i_seed, a_hello).expect("start");
    let sent1 = if which == 0 {
        how.apply(&msg1)
    } else {
        msg1.clone()
    };
    let changed1 = sent1 != msg1;
    let (resp, got) = match Responder::read_hello(&acceptor(&sr, Some(&b_key)), br, r_seed, &sent1)
    {
        Ok((resp, got, proof)) => {
            assert_eq!(
                proof,
                Proof::NodeKey(a_key.public()),
                "another key was proven"
            );
            (resp, got)
        }
        Err(_) => return,
    };
    assert!(
        !mismatch,
        "message 1 authenticated with another secret or binding"
    );
    assert!(!changed1, "a tampered message 1 authenticated");
    assert_eq!(&got, a_hello);
    let reply = if refuse {
        Reply::Refused(RefuseReason::Duplicate)
    } else {
        Reply::Accepted(b_hello.clone())
    };
    let (msg2, mut rs) = resp.reply(&reply).expect("reply");
    let sent2 = if which == 1 {
        how.apply(&msg2)
    } else {
        msg2.clone()
    };
    let (got_reply, mut is, confirm) = match init.finish(&sent2) {
        Ok(ok) => ok,
        Err(_) => {
            assert!(sent2 != msg2, "an intact message 2 was refused");
            return;
        }
    };
    assert!(sent2 == msg2, "a tampered message 2 authenticated");
    assert_eq!(got_reply, reply);
    let sent3 = if which == 2 {
        how.apply(&confirm)
    } else {
        confirm.clone()
    };
    match rs.open(&sent3) {
        Ok((body, payload)) => {
            assert!(sent3 == confirm, "a tampered confirmation opened");
            assert_eq!((body, payload.as_slice()), (Body::Confirm, &[][..]));
        }
        Err(_) => {
            assert!(sent3 != confirm, "an intact confirmation was refused");
            // A refused forgery changes nothing: the real one still opens.
            let (body, _) = rs.open(&confirm).expect("the real confirmation opens");
            assert_eq!(body, Body::Confirm);
        }
    }
    // Both directions work afterwards.
    let wire = is.seal(Body::Frame, b"ping").expect("seal");
    assert_eq!(rs.open(&wire).expect("open").1, b"ping");
    let wire = rs.seal(Body::Frame, b"pong").expect("seal");
    assert_eq!(is.open(&wire).expect("open").1, b"pong");
}

/// Runs a real handshake; returns (initiator session, responder session).
fn established(keys: &Keys) -> (Session, Session) {
    let s = keys.secret();
    let (i_seed, r_seed) = (keys.initiator_seed, keys.responder_seed);
    let (init, msg1) = Initiator::start(
        Credential::Driver(&s),
        BINDING,
        i_seed,
        &hello("node-a", PeerKind::Driver),
    )
    .expect("start");
    let accept = Acceptor {
        secret: &s,
        node_key: None,
        driver: Some(&s),
        driver_cluster_secret: false,
    };
    let (resp, _, _) = Responder::read_hello(&accept, BINDING, r_seed, &msg1).expect("hello");
    let (msg2, mut rs) = resp
        .reply(&Reply::Accepted(hello("node-b", PeerKind::Peer)))
        .expect("reply");
    let (_, is, confirm) = init.finish(&msg2).expect("finish");
    assert_eq!(rs.open(&confirm).expect("confirm").0, Body::Confirm);
    (is, rs)
}

fn body(byte: u8) -> Body {
    match byte % 5 {
        0 => Body::Confirm,
        1 => Body::Frame,
        2 => Body::Keepalive,
        3 => Body::Goodbye,
        _ => Body::Ready,
    }
}

/// Sealed payloads are capped so one input cannot allocate much; chunking (payloads over
/// one Noise message) is covered by the unit tests of `clustd-transport`.
const MAX_PAYLOAD: usize = 2048;

fn session_script(ops: &[SessionOp], keys: &Keys) {
    let (mut a, mut b) = established(keys);
    let mut sealed: Vec<Sealed> = Vec::new();
    // Per direction (a→b, b→a): reliable messages sealed, and the next one expected.
    let mut reliable_sealed = [0usize; 2];
    let mut next_expected = [0usize; 2];
    for op in ops.iter().take(64) {
        match op {
            SessionOp::Seal {
                a_to_b,
                datagram,
                body: b_byte,
                payload,
            } => {
                let payload = &payload[..payload.len().min(MAX_PAYLOAD)];
                let sender = if *a_to_b { &mut a } else { &mut b };
                let body = body(*b_byte);
                let wire = if *datagram {
                    sender.sealer.seal_datagram(body, payload)
                } else {
                    sender.seal(body, payload)
                }
                .expect("small payloads seal");
                let dir = usize::from(!*a_to_b);
                let order = reliable_sealed[dir];
                if !*datagram {
                    reliable_sealed[dir] += 1;
                }
                sealed.push(Sealed {
                    a_to_b: *a_to_b,
                    datagram: *datagram,
                    body,
                    payload: payload.to_vec(),
                    wire,
                    order,
                    delivered: false,
                });
            }
            SessionOp::Deliver { index } => {
                if sealed.is_empty() {
                    continue;
                }
                let i = usize::from(*index) % sealed.len();
                let m = &mut sealed[i];
                let receiver = if m.a_to_b { &mut b } else { &mut a };
                let result = if m.datagram {
                    receiver.opener.open_datagram(&m.wire)
                } else {
                    receiver.open(&m.wire)
                };
                let dir = usize::from(!m.a_to_b);
                match result {
                    Ok((body, payload)) => {
                        assert!(!m.delivered, "a replayed message opened");
                        assert_eq!((body, &payload), (m.body, &m.payload), "contents changed");
                        if !m.datagram {
                            assert_eq!(
                                m.order, next_expected[dir],
                                "a reliable message skipped ahead"
                            );
                            next_expected[dir] += 1;
                        }
                        m.delivered = true;
                    }
                    Err(e) => {
                        assert!(
                            m.delivered || m.datagram || m.order != next_expected[dir],
                            "the next reliable message was refused: {e}"
                        );
                    }
                }
            }
            SessionOp::DeliverTampered { index, how } => {
                if sealed.is_empty() {
                    continue;
                }
                let m = &sealed[usize::from(*index) % sealed.len()];
                let forged = how.apply(&m.wire);
                if forged == m.wire {
                    continue;
                }
                let receiver = if m.a_to_b { &mut b } else { &mut a };
                let result = if m.datagram {
                    receiver.opener.open_datagram(&forged)
                } else {
                    receiver.open(&forged)
                };
                if let Ok(opened) = result {
                    panic!("a tampered message opened: {opened:?}");
                }
            }
            SessionOp::Garbage {
                to_b,
                datagram,
                bytes,
            } => {
                let receiver = if *to_b { &mut b } else { &mut a };
                let result = if *datagram {
                    receiver.opener.open_datagram(bytes)
                } else {
                    receiver.open(bytes)
                };
                if let Ok(opened) = result {
                    panic!("garbage opened: {opened:?}");
                }
            }
        }
    }
}
