//! The datagram endpoint as an embedder uses it: sessions come up by themselves, every
//! delivery names its proven sender, and nothing forged, replayed or altered gets through.

use std::collections::BTreeMap;
use std::time::Duration;

use clustd_core::{Instant, NodeId};
use clustd_session::datagram::{
    DatagramConfig, Datagrams, Delivery, ENVELOPE_VERSION, Envelope, Kind, Refused,
};
use clustd_session::{NodeKey, Secret, SessionError};
use proptest::prelude::*;

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

fn secret(s: &str) -> Secret {
    Secret::from_bytes(format!("{s} padded to be long enough for the 32-byte minimum").into_bytes())
        .expect("long")
}

fn node(me: &str, all: &[&str], seed: u8, secret: &Secret) -> Datagrams {
    let peers = all.iter().filter(|p| **p != me).map(|p| id(p));
    Datagrams::new(
        DatagramConfig::new(id(me), secret.clone(), peers),
        [seed; 32],
        Instant::ZERO,
    )
    .expect("valid config")
}

/// In-memory network: every node's outbox goes to its addressee until all are empty.
/// `tap` sees each datagram (sender, addressee, bytes) and says whether to deliver it.
struct Net {
    nodes: BTreeMap<NodeId, Datagrams>,
    delivered: Vec<(NodeId, Delivery)>,
    refused: Vec<(NodeId, Refused)>,
    now: Instant,
}

impl Net {
    fn new(names: &[&str], secret: &Secret) -> Self {
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, n)| (id(n), node(n, names, i as u8 + 1, secret)))
            .collect();
        Self {
            nodes,
            delivered: Vec::new(),
            refused: Vec::new(),
            now: Instant::ZERO,
        }
    }

    fn run(&mut self, mut tap: impl FnMut(&NodeId, &NodeId, &[u8]) -> bool) {
        for _ in 0..100 {
            let mut wire = Vec::new();
            for (from, node) in &mut self.nodes {
                while let Some((to, bytes)) = node.poll_transmit() {
                    wire.push((from.clone(), to, bytes));
                }
            }
            if wire.is_empty() {
                return;
            }
            for (from, to, bytes) in wire {
                if !tap(&from, &to, &bytes) {
                    continue;
                }
                let Some(node) = self.nodes.get_mut(&to) else {
                    continue;
                };
                match node.receive(&bytes, self.now) {
                    Ok(Some(delivery)) => self.delivered.push((to, delivery)),
                    Ok(None) => {}
                    Err(refused) => self.refused.push((to, refused)),
                }
            }
        }
        panic!("the network never went quiet");
    }

    fn settle(&mut self) {
        self.run(|_, _, _| true);
    }

    fn send(&mut self, from: &str, to: &str, payload: &[u8]) {
        self.nodes
            .get_mut(&id(from))
            .expect("node")
            .send(&id(to), payload)
            .expect("send");
    }

    /// Sends one payload and returns its envelope without delivering it.
    fn capture(&mut self, from: &str, to: &str, payload: &[u8]) -> Vec<u8> {
        self.send(from, to, payload);
        let (dest, bytes) = self
            .nodes
            .get_mut(&id(from))
            .expect("node")
            .poll_transmit()
            .expect("sealed at once on an established session");
        assert_eq!(dest, id(to));
        bytes
    }

    /// The next datagram `from` would send, taken off the wire undelivered.
    fn take(&mut self, from: &str) -> Vec<u8> {
        self.nodes
            .get_mut(&id(from))
            .expect("node")
            .poll_transmit()
            .expect("a datagram is waiting")
            .1
    }

    fn receive(&mut self, at: &str, bytes: &[u8]) -> Result<Option<Delivery>, Refused> {
        let now = self.now;
        self.nodes
            .get_mut(&id(at))
            .expect("node")
            .receive(bytes, now)
    }
}

#[test]
fn sessions_come_up_and_every_delivery_names_its_sender() {
    let s = secret("cluster");
    let mut net = Net::new(&["a", "b", "c"], &s);
    // Sent before any session exists: it waits for the handshake.
    net.send("a", "b", b"early");
    net.settle();
    assert!(net.refused.is_empty(), "{:?}", net.refused);
    for n in ["a", "b", "c"] {
        assert_eq!(net.nodes[&id(n)].established().len(), 2, "{n}");
    }
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("b", "a")] {
        net.send(from, to, format!("{from}->{to}").as_bytes());
    }
    net.settle();
    let got: Vec<(String, String, String)> = net
        .delivered
        .iter()
        .map(|(at, d)| {
            (
                at.to_string(),
                d.from.to_string(),
                String::from_utf8(d.payload.clone()).expect("utf8"),
            )
        })
        .collect();
    let want = |at: &str, from: &str, what: &str| (at.into(), from.into(), what.into());
    assert_eq!(
        got,
        vec![
            want("b", "a", "early"),
            want("b", "a", "a->b"),
            want("c", "b", "b->c"),
            want("a", "b", "b->a"),
            want("a", "c", "c->a"),
        ]
    );
}

#[test]
fn the_envelope_is_as_documented() {
    let s = secret("cluster");
    let mut net = Net::new(&["a", "bb"], &s);
    let hello = net.take("a");
    assert_eq!((hello[0], hello[1]), (ENVELOPE_VERSION, 1));
    assert_ne!(
        &hello[15..23],
        &[0; 8],
        "a hello names its sender's incarnation"
    );
    net.receive("bb", &hello).expect("answered");
    net.settle();
    let wire = net.capture("a", "bb", b"x");
    assert_eq!(wire[0], ENVELOPE_VERSION);
    assert_eq!(wire[1], 3, "sealed");
    assert_eq!(&wire[2..4], b"\x01a");
    assert_eq!(&wire[4..7], b"\x02bb");
    // 8 bytes of session id, then 8 of incarnation (0: only a hello carries one).
    assert_eq!(&wire[15..23], &[0; 8]);
    // Then the sealed datagram: top bit set in its nonce.
    assert_eq!(wire[23] & 0x80, 0x80);
    assert_eq!(
        net.receive("bb", &wire)
            .expect("opens")
            .expect("frame")
            .payload,
        b"x"
    );
}

#[test]
fn a_wrong_secret_gets_no_session_and_no_delivery() {
    let (good, bad) = (secret("cluster"), secret("guess"));
    let mut net = Net::new(&["a", "b"], &good);
    net.nodes.insert(id("m"), node("m", &["a", "m"], 9, &bad));
    // m claims to be a peer "m" of a; a has no such peer, and with "a"'s peer list m's
    // hello to a fails the secret. Make a accept m as a peer to reach the cryptography.
    net.nodes
        .insert(id("a"), node("a", &["a", "b", "m"], 1, &good));
    net.send("m", "a", b"let me in");
    net.settle();
    assert!(net.delivered.is_empty());
    assert!(
        net.refused.iter().any(|(at, r)| at == &id("a")
            && matches!(
                r,
                Refused::Crypto {
                    error: SessionError::AuthenticationFailed,
                    ..
                }
            )),
        "{:?}",
        net.refused
    );
    assert!(!net.nodes[&id("m")].established().contains(&id("a")));
    assert!(!net.nodes[&id("a")].established().contains(&id("m")));
}

#[test]
fn a_replayed_datagram_is_refused() {
    let s = secret("cluster");
    let mut net = Net::new(&["a", "b"], &s);
    net.settle();
    let wire = net.capture("a", "b", b"step down");
    assert!(net.receive("b", &wire).expect("first time").is_some());
    assert!(matches!(
        net.receive("b", &wire),
        Err(Refused::Crypto {
            error: SessionError::Replay,
            ..
        })
    ));
}

#[test]
fn a_flipped_bit_anywhere_is_refused_and_changes_nothing() {
    let s = secret("cluster");
    let mut net = Net::new(&["a", "b"], &s);
    net.settle();
    let wire = net.capture("a", "b", b"term 7, vote for a");
    for at in 0..wire.len() {
        for bit in 0..8 {
            let mut bad = wire.clone();
            bad[at] ^= 1 << bit;
            let result = net.receive("b", &bad);
            assert!(result.is_err(), "byte {at} bit {bit}: {result:?}");
        }
    }
    // None of that moved the replay window or the session.
    let delivery = net.receive("b", &wire).expect("intact").expect("frame");
    assert_eq!(delivery.from, id("a"));
}

#[test]
fn a_forged_sender_is_refused() {
    let s = secret("cluster");
    let mut net = Net::new(&["a", "b", "c"], &s);
    net.settle();
    // a's sealed datagram to b, rewritten to claim c sent it.
    let wire = net.capture("a", "b", b"I am c");
    let mut forged = Vec::new();
    forged.extend_from_slice(&wire[..2]);
    forged.extend_from_slice(b"\x01c");
    forged.extend_from_slice(&wire[4..]);
    let result = net.receive("b", &forged);
    assert!(
        matches!(result, Err(Refused::NoSession { ref from, .. } | Refused::Crypto { ref from, .. }) if from == &id("c")),
        "{result:?}"
    );
    // The same with c's session id too (the attacker saw c's traffic): wrong keys.
    let from_c = net.capture("c", "b", b"real c");
    let mut forged = forged.clone();
    forged[6..14].copy_from_slice(&from_c[6..14]);
    assert!(matches!(
        net.receive("b", &forged),
        Err(Refused::Crypto {
            error: SessionError::BadFrame,
            ..
        })
    ));
    assert_eq!(
        net.receive("b", &from_c)
            .expect("real")
            .expect("frame")
            .from,
        id("c")
    );
    // Addressed to another node: refused before any cryptography.
    assert!(matches!(net.receive("c", &wire), Err(Refused::NotForUs(to)) if to == id("b")));
}

/// With node keys, holding the cluster secret is not enough to speak as another node.
#[test]
fn with_node_keys_a_secret_holder_cannot_claim_another_id() {
    let s = secret("cluster");
    let keys: BTreeMap<&str, NodeKey> = [("a", 1u8), ("b", 2), ("c", 3)]
        .into_iter()
        .map(|(n, k)| (n, NodeKey::from_private([k; 32])))
        .collect();
    let keyed = |me: &str, key: &NodeKey, seed: u8| {
        let mut config = DatagramConfig::new(id(me), s.clone(), []);
        config.node_key = Some(key.clone());
        config.peers = keys
            .iter()
            .filter(|(n, k)| **n != me && k.public() != key.public())
            .map(|(n, k)| (id(n), Some(k.public())))
            .collect();
        Datagrams::new(config, [seed; 32], Instant::ZERO).expect("valid")
    };
    let mut net = Net::new(&[], &s);
    net.nodes.insert(id("b"), keyed("b", &keys["b"], 2));
    // a, holding the secret and its own key, poses as c.
    net.nodes.insert(id("c"), keyed("c", &keys["a"], 3));
    net.send("c", "b", b"c says: vote for a");
    net.settle();
    // a's key under c's name: b learns the key a proves, which is not c's.
    assert!(
        net.refused.iter().any(|(at, r)| at == &id("b")
            && matches!(r, Refused::Impostor { why, .. } if why.contains("node key configured"))),
        "{:?}",
        net.refused
    );
    assert!(!net.nodes[&id("c")].established().contains(&id("b")));
    // A holder of the secret with no node key at all, claiming c: b wants c's key.
    let mut bare = DatagramConfig::new(id("c"), s.clone(), [id("b")]);
    bare.node_key = None;
    net.nodes.insert(
        id("c"),
        Datagrams::new(bare, [5; 32], Instant::ZERO).expect("valid"),
    );
    net.refused.clear();
    net.settle();
    assert!(
        net.refused.iter().any(|(at, r)| at == &id("b")
            && matches!(r, Refused::Impostor { why, .. } if why.contains("node key configured"))),
        "{:?}",
        net.refused
    );
    assert!(net.delivered.is_empty());
    // The real c gets through.
    net.nodes.insert(id("c"), keyed("c", &keys["c"], 4));
    net.send("c", "b", b"real c");
    net.settle();
    assert_eq!(net.delivered.len(), 1);
    assert_eq!(net.delivered[0].1.from, id("c"));
}

/// A duplicated or replayed message 1, before or after its session proved itself, gets
/// the same answer (or none) and never re-keys the responder.
#[test]
fn a_duplicated_or_replayed_hello_changes_no_keys() {
    let s = secret("cluster");
    let mut net3 = Net::new(&["a", "b"], &s);
    let a_hello = {
        let (to, bytes) = net3
            .nodes
            .get_mut(&id("a"))
            .expect("a")
            .poll_transmit()
            .expect("hello");
        assert_eq!(to, id("b"));
        bytes
    };
    assert!(net3.receive("b", &a_hello).is_ok());
    assert!(
        net3.receive("b", &a_hello).is_ok(),
        "a duplicate is answered"
    );
    // b answered twice; both answers must be the same message 2.
    let replies: Vec<Vec<u8>> =
        std::iter::from_fn(|| net3.nodes.get_mut(&id("b")).expect("b").poll_transmit())
            .filter(|(to, bytes)| to == &id("a") && bytes[1] == 2)
            .map(|(_, bytes)| bytes)
            .collect();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0], replies[1], "the same answer, the same keys");
    for reply in &replies {
        let _ = net3.receive("a", reply);
    }
    net3.settle();
    net3.send("a", "b", b"still one session");
    net3.settle();
    assert_eq!(
        net3.delivered
            .iter()
            .map(|(_, d)| d.payload.clone())
            .collect::<Vec<_>>(),
        vec![b"still one session".to_vec()],
        "{:?}",
        net3.refused
    );
    assert!(net3.nodes[&id("a")].established().contains(&id("b")));
    // And a hello recorded earlier, replayed once the session is up, changes nothing.
    assert!(matches!(
        net3.receive("b", &a_hello),
        Err(Refused::Stale { .. })
    ));
    net3.send("a", "b", b"after the replay");
    net3.settle();
    assert_eq!(
        net3.delivered.last().expect("delivered").1.payload,
        b"after the replay"
    );
}

/// Garbage that names a pending handshake's session id (which travels in clear) must not
/// use the handshake up.
#[test]
fn a_forged_reply_does_not_use_the_handshake_up() {
    let s = secret("cluster");
    let mut net = Net::new(&["a", "b"], &s);
    let hello = net.take("a");
    // A reply from b naming a's session, with garbage for a body.
    let (hello_envelope, _) = Envelope::parse(&hello).expect("an envelope");
    let forged = Envelope {
        kind: Kind::Reply,
        from: id("b"),
        to: id("a"),
        session: hello_envelope.session,
        incarnation: 0,
    }
    .write(&[0x55; 48]);
    assert!(matches!(
        net.receive("a", &forged),
        Err(Refused::Crypto { .. })
    ));
    // The real handshake still completes, without waiting for a retry.
    net.receive("b", &hello).expect("answered");
    net.settle();
    assert!(
        net.nodes[&id("a")].established().contains(&id("b")),
        "{:?}",
        net.refused
    );
}

/// b's handshake is answered by a's old run; a restarts and its fresh handshake reaches b
/// before that stale answer does. b must not stay on keys a no longer has.
#[test]
fn a_stale_answer_after_a_restart_does_not_strand_the_session() {
    let s = secret("cluster");
    let mut net = Net::new(&["a", "b"], &s);
    // b's hello to the old a, and the old a's reply, held back.
    let b_hello = net.take("b");
    net.take("a"); // a's hello, lost
    net.receive("a", &b_hello).expect("old a answers");
    let stale_reply = net.take("a");
    // a restarts; its fresh hello reaches b first, then the stale reply.
    net.nodes.insert(id("a"), node("a", &["a", "b"], 42, &s));
    let fresh_hello = net.take("a");
    net.receive("b", &fresh_hello).expect("b answers the new a");
    net.receive("b", &stale_reply)
        .expect("b takes the stale keys, unacknowledged");
    net.settle();
    // Whatever b believed, after the retry time both directions work.
    net.now = net.now + Duration::from_millis(250);
    let now = net.now;
    for node in net.nodes.values_mut() {
        node.handle_timeout(now).expect("retry");
    }
    net.settle();
    net.send("a", "b", b"a to b");
    net.send("b", "a", b"b to a");
    net.settle();
    let mut got: Vec<Vec<u8>> = net
        .delivered
        .iter()
        .map(|(_, d)| d.payload.clone())
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![b"a to b".to_vec(), b"b to a".to_vec()],
        "{:?}",
        net.refused
    );
    assert_eq!(net.nodes[&id("b")].established(), vec![id("a")]);
}

/// A session counts as established only once its acknowledgement opens; a lost
/// acknowledgement means a new session after the retry time.
#[test]
fn an_unacknowledged_session_is_dialed_again() {
    let s = secret("cluster");
    let mut net = Net::new(&["a", "b"], &s);
    net.run(|from, _, bytes| !(from == &id("b") && bytes[1] == 4));
    assert!(net.nodes[&id("a")].established().is_empty(), "no ack yet");
    net.send("a", "b", b"sent on the unacknowledged session");
    net.settle();
    assert_eq!(
        net.delivered.len(),
        1,
        "it still delivers: b has the session"
    );
    let retry = net.nodes[&id("a")]
        .poll_timeout()
        .expect("waiting for an ack");
    net.now = retry;
    for node in net.nodes.values_mut() {
        node.handle_timeout(retry).expect("redial");
    }
    net.settle();
    assert_eq!(net.nodes[&id("a")].established(), vec![id("b")]);
    assert_eq!(net.nodes[&id("a")].poll_timeout(), None);
}

#[test]
fn lost_handshakes_are_retried() {
    let s = secret("cluster");
    let mut net = Net::new(&["a", "b"], &s);
    net.send("a", "b", b"after the loss");
    // Lose every handshake message once.
    net.run(|_, _, _| false);
    assert!(net.nodes[&id("a")].established().is_empty());
    let retry = net.nodes[&id("a")].poll_timeout().expect("a retry is due");
    assert_eq!(retry, Instant::ZERO + Duration::from_millis(200));
    net.now = retry;
    for node in net.nodes.values_mut() {
        node.handle_timeout(retry).expect("redial");
    }
    net.settle();
    assert_eq!(net.delivered.len(), 1, "{:?}", net.refused);
    assert_eq!(net.delivered[0].1.payload, b"after the loss");
    assert_eq!(net.nodes[&id("a")].poll_timeout(), None);
}

#[test]
fn a_restarted_peer_is_reached_again() {
    let s = secret("cluster");
    let mut net = Net::new(&["a", "b"], &s);
    net.settle();
    // b restarts: a new endpoint that remembers nothing.
    net.nodes.insert(id("b"), node("b", &["a", "b"], 77, &s));
    net.settle();
    net.send("a", "b", b"to the new b");
    net.send("b", "a", b"from the new b");
    net.settle();
    let mut got: Vec<(String, Vec<u8>)> = net
        .delivered
        .iter()
        .map(|(at, d)| (at.to_string(), d.payload.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a".into(), b"from the new b".to_vec()),
            ("b".into(), b"to the new b".to_vec()),
        ],
        "{:?}",
        net.refused
    );
}

#[test]
fn configs_that_cannot_work_are_refused() {
    let s = secret("cluster");
    let mut config = DatagramConfig::new(id("a"), s.clone(), [id("a")]);
    let err = Datagrams::new(config.clone(), [0; 32], Instant::ZERO).expect_err("own id");
    assert!(err.to_string().contains("own peer list"), "{err}");
    config.peers = [(id("b"), Some(NodeKey::from_private([2; 32]).public()))].into();
    let err = Datagrams::new(config.clone(), [0; 32], Instant::ZERO).expect_err("no key");
    assert!(err.to_string().contains("needs a node key"), "{err}");
    let own = NodeKey::from_private([1; 32]);
    config.node_key = Some(own.clone());
    config.peers = [(id("b"), Some(own.public()))].into();
    let err = Datagrams::new(config.clone(), [0; 32], Instant::ZERO).expect_err("own key");
    assert!(err.to_string().contains("own public key"), "{err}");
    let shared = NodeKey::from_private([2; 32]).public();
    config.peers = [(id("b"), Some(shared)), (id("c"), Some(shared))].into();
    let err = Datagrams::new(config.clone(), [0; 32], Instant::ZERO).expect_err("same key");
    assert!(err.to_string().contains("same public key"), "{err}");
    config.peers = [(id("b"), Some(clustd_session::PublicKey([0; 32])))].into();
    let err = Datagrams::new(config, [0; 32], Instant::ZERO).expect_err("weak key");
    assert!(err.to_string().contains("small-order"), "{err}");
    let mut config = DatagramConfig::new(id("a"), s, [id("b")]);
    let endpoint = Datagrams::new(config.clone(), [0; 32], Instant::ZERO).expect("valid");
    let limit = endpoint.max_payload(&id("b"));
    let mut endpoint = endpoint;
    assert!(
        matches!(
            endpoint.send(&id("b"), &vec![0; limit + 1]),
            Err(SessionError::Oversized { .. })
        ),
        "refused while the session is still being set up, too"
    );
    endpoint
        .send(&id("b"), &vec![0; limit])
        .expect("the largest payload");
    config.queue = 0;
    assert!(Datagrams::new(config, [0; 32], Instant::ZERO).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Unauthenticated input of any shape is refused without a panic and without
    /// disturbing the sessions.
    #[test]
    fn garbage_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600), header in any::<bool>(), kind in 1u8..=4) {
        let s = secret("cluster");
        let mut net = Net::new(&["a", "b"], &s);
        // Mid-handshake: a's and b's hellos are out, nothing answered yet.
        let a_hello = net.take("a");
        let b_hello = net.take("b");
        let mut input = bytes.clone();
        if header {
            // A valid header naming a real session, so the body reaches the cryptography:
            // a's own session for a reply or an ack, b's for a hello or a sealed datagram.
            let session = if matches!(kind, 2 | 4) { &a_hello[6..14] } else { &b_hello[6..14] };
            let mut h = vec![ENVELOPE_VERSION, kind, 1, b'b', 1, b'a'];
            h.extend_from_slice(session);
            h.extend_from_slice(&[0; 8]);
            h.extend_from_slice(&bytes);
            input = h;
        }
        prop_assert!(net.receive("a", &input).is_err());
        // Nothing was used up: the handshakes complete without a retry.
        net.receive("b", &a_hello).expect("b answers a");
        net.receive("a", &b_hello).expect("a answers b");
        net.settle();
        prop_assert!(net.nodes[&id("a")].established().contains(&id("b")));
        net.send("a", "b", b"ok");
        net.settle();
        prop_assert_eq!(net.delivered.len(), 1);
    }
}
