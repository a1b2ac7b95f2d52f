//! The datagram endpoint (`clustd_session::datagram`) under an attacker who sees the
//! traffic: two endpoints with a session, a few genuine sealed datagrams from one to the
//! other, and the input as a script of attacks — raw bytes, genuine datagrams with bits
//! flipped, cut, or replayed, in any order.
//!
//! Checks: nothing but a genuine, intact datagram is ever delivered; each genuine one at
//! most once, with its own payload and its proven sender; afterwards the session still
//! carries a new datagram (refusals changed no state).

use clustd_core::{Instant, NodeId};
use clustd_session::Secret;
use clustd_session::datagram::{DatagramConfig, Datagrams};

const GENUINE: usize = 4;

fn endpoint(me: &NodeId, peer: &NodeId, seed: u8) -> Datagrams {
    let secret = Secret::from_bytes(b"fuzzing cluster secret, 32 bytes".to_vec())
        .unwrap_or_else(|e| panic!("{e}"));
    Datagrams::new(
        DatagramConfig::new(me.clone(), secret, [peer.clone()]),
        [seed; 32],
        Instant::ZERO,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Carries datagrams both ways until none is left; returns what `b` delivered.
fn settle(a: &mut Datagrams, b: &mut Datagrams) -> Vec<Vec<u8>> {
    let mut delivered = Vec::new();
    for _ in 0..16 {
        let mut moved = false;
        while let Some((_, bytes)) = a.poll_transmit() {
            moved = true;
            if let Ok(Some(d)) = b.receive(&bytes, Instant::ZERO) {
                delivered.push(d.payload);
            }
        }
        while let Some((_, bytes)) = b.poll_transmit() {
            moved = true;
            let _ = a.receive(&bytes, Instant::ZERO);
        }
        if !moved {
            return delivered;
        }
    }
    panic!("the endpoints never went quiet");
}

/// The fuzz target's body.
pub fn datagram(data: &[u8]) {
    let (ida, idb) = (
        NodeId::new("a").unwrap_or_else(|e| panic!("{e}")),
        NodeId::new("b").unwrap_or_else(|e| panic!("{e}")),
    );
    let (mut a, mut b) = (endpoint(&ida, &idb, 1), endpoint(&idb, &ida, 2));
    assert!(settle(&mut a, &mut b).is_empty());
    let mut genuine = Vec::new();
    for i in 0..GENUINE {
        let payload = vec![i as u8; 1 + i * 7];
        a.send(&idb, &payload).unwrap_or_else(|e| panic!("{e}"));
        let (_, wire) = a
            .poll_transmit()
            .unwrap_or_else(|| panic!("sealed at once"));
        genuine.push((wire, payload));
    }
    let mut seen = [false; GENUINE];
    let mut input = data.iter().copied();
    while let Some(op) = input.next() {
        let pick = usize::from(input.next().unwrap_or(0)) % GENUINE;
        let (wire, payload) = &genuine[pick];
        let result = match op % 4 {
            0 => {
                let len = usize::from(input.next().unwrap_or(0));
                let raw: Vec<u8> = input.by_ref().take(len).collect();
                let result = b.receive(&raw, Instant::ZERO);
                assert!(
                    !matches!(result, Ok(Some(_))),
                    "raw bytes delivered: {raw:?}"
                );
                continue;
            }
            1 => {
                let mut bad = wire.clone();
                let at = usize::from(input.next().unwrap_or(0)) % bad.len();
                let mask = input.next().unwrap_or(1).max(1);
                bad[at] ^= mask;
                let result = b.receive(&bad, Instant::ZERO);
                assert!(
                    result.is_err(),
                    "a datagram with byte {at} ^ {mask:#x} got in: {result:?}"
                );
                continue;
            }
            2 => {
                let cut = usize::from(input.next().unwrap_or(0)) % wire.len();
                let result = b.receive(&wire[..cut], Instant::ZERO);
                assert!(
                    result.is_err(),
                    "a datagram cut at {cut} got in: {result:?}"
                );
                continue;
            }
            _ => b.receive(wire, Instant::ZERO),
        };
        if seen[pick] {
            assert!(result.is_err(), "genuine datagram {pick} delivered twice");
        } else {
            let delivery = result
                .unwrap_or_else(|e| panic!("genuine datagram {pick} refused: {e}"))
                .unwrap_or_else(|| panic!("genuine datagram {pick} carried nothing"));
            assert_eq!(delivery.from, ida, "the sender is the session's");
            assert_eq!(&delivery.payload, payload);
            seen[pick] = true;
        }
    }
    a.send(&idb, b"after the attack")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settle(&mut a, &mut b), vec![b"after the attack".to_vec()]);
}
