//! The datagram endpoint as an embedder uses it: sessions come up by themselves, every
//! delivery names its proven sender, and nothing forged, replayed or altered gets through.

use std::collections::BTreeMap;
use std::time::Duration;

use clustd_core::{Instant, NodeId};
use clustd_session::datagram::{DatagramConfig, Datagrams, Delivery, ENVELOPE_VERSION, Refused};
use clustd_session::{NodeKey, Secret, SessionError};
use proptest::prelude::*;

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

fn secret(s: &str) -> Secret {
    Secret::from_bytes(format!("{s} padded to be long enough").into_bytes()).expect("long")
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
    net.settle();
    let wire = net.capture("a", "bb", b"x");
    assert_eq!(wire[0], ENVELOPE_VERSION);
    assert_eq!(wire[1], 3, "sealed");
    assert_eq!(&wire[2..4], b"\x01a");
    assert_eq!(&wire[4..7], b"\x02bb");
    // 8 bytes of session id, then flags (not fresh: a sealed datagram).
    assert_eq!(wire[15], 0);
    // Then the sealed datagram: top bit set in its nonce.
    assert_eq!(wire[16] & 0x80, 0x80);
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
            .filter(|(n, _)| **n != me)
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
    assert!(net.delivered.is_empty(), "{:?}", net.delivered);
    assert!(
        net.refused.iter().any(|(at, r)| at == &id("b")
            && matches!(r, Refused::Crypto { .. } | Refused::Impostor { .. })),
        "{:?}",
        net.refused
    );
    // The real c gets through.
    net.nodes.insert(id("c"), keyed("c", &keys["c"], 4));
    net.send("c", "b", b"real c");
    net.settle();
    assert_eq!(net.delivered.len(), 1);
    assert_eq!(net.delivered[0].1.from, id("c"));
}

#[test]
fn a_replayed_handshake_changes_nothing() {
    let s = secret("cluster");
    let mut net = Net::new(&["a", "b"], &s);
    let mut hellos = Vec::new();
    net.run(|from, to, bytes| {
        if from == &id("a") && to == &id("b") && bytes[1] == 1 {
            hellos.push(bytes.to_vec());
        }
        true
    });
    assert_eq!(hellos.len(), 1);
    net.receive("b", &hellos[0]).expect("answered again");
    net.send("a", "b", b"still here");
    net.settle();
    assert_eq!(
        net.delivered.len(),
        1,
        "{:?} {:?}",
        net.delivered,
        net.refused
    );
    assert_eq!(net.delivered[0].1.payload, b"still here");
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
    let err = Datagrams::new(config, [0; 32], Instant::ZERO).expect_err("no key");
    assert!(err.to_string().contains("needs a node key"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Unauthenticated input of any shape is refused without a panic and without
    /// disturbing the sessions.
    #[test]
    fn garbage_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600), header in any::<bool>()) {
        let s = secret("cluster");
        let mut net = Net::new(&["a", "b"], &s);
        net.settle();
        let mut input = bytes.clone();
        if header {
            // A valid header in front, so the body reaches the cryptography.
            let mut h = vec![ENVELOPE_VERSION, 1 + bytes.first().copied().unwrap_or(0) % 3, 1, b'a', 1, b'b'];
            h.extend_from_slice(&[0; 8]);
            h.push(0);
            h.extend_from_slice(&bytes);
            input = h;
        }
        prop_assert!(net.receive("b", &input).is_err());
        net.send("a", "b", b"ok");
        net.settle();
        prop_assert_eq!(net.delivered.len(), 1);
    }
}
