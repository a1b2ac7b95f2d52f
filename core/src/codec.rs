//! The wire format, owned here and nowhere else: one version byte, then bincode
//! (standard configuration, serde). Transports and drivers call [`encode`] and
//! [`decode`]; nothing else in the project calls bincode.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version byte in front of every frame. Bump it when the format changes.
pub const WIRE_VERSION: u8 = 2;

/// The largest frame accepted or produced, version byte included.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A frame of zero bytes: not even the version byte.
    #[error("empty frame")]
    Empty,
    /// Larger than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    Oversized(usize),
    /// The version byte is not one this build understands.
    #[error("unknown wire version {0} (this build speaks {WIRE_VERSION})")]
    UnknownVersion(u8),
    /// The frame ended before the message did.
    #[error("truncated frame")]
    Truncated,
    /// Bytes after a complete message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The bytes do not form a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded value would exceed [`MAX_FRAME_LEN`].
    #[error("encoded frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    Oversized(usize),
    /// The serializer refused the value.
    #[error("cannot encode: {0}")]
    Serialize(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encodes `value` as one frame: version byte + bincode.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![WIRE_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| EncodeError::Serialize(e.to_string()))?;
    if out.len() > MAX_FRAME_LEN {
        return Err(EncodeError::Oversized(out.len()));
    }
    Ok(out)
}

/// Decodes one whole frame. Never panics, whatever the bytes.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = frame.split_first().ok_or(DecodeError::Empty)?;
    if frame.len() > MAX_FRAME_LEN {
        return Err(DecodeError::Oversized(frame.len()));
    }
    if version != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config()).map_err(|e| match e {
        bincode::error::DecodeError::UnexpectedEnd { .. } => DecodeError::Truncated,
        other => DecodeError::Malformed(other.to_string()),
    })?;
    if used != body.len() {
        return Err(DecodeError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{ActionResult, DriverRole, FromDriver, HealthChange, ToDriver};
    use crate::ids::{NodeId, Term};
    use crate::message::Message;
    use proptest::prelude::*;

    fn node_id() -> impl Strategy<Value = NodeId> {
        "[a-z0-9._-]{1,64}".prop_map(|s| NodeId::new(s).expect("pattern gives valid ids"))
    }

    fn message() -> impl Strategy<Value = Message> {
        let term = any::<u64>().prop_map(Term);
        prop_oneof![
            term.clone().prop_map(|term| Message::PreVote { term }),
            (term.clone(), any::<bool>(), any::<Option<u32>>()).prop_map(
                |(term, granted, retry_after_ms)| Message::PreVoteResponse {
                    term,
                    granted,
                    retry_after_ms
                }
            ),
            (term.clone(), any::<bool>())
                .prop_map(|(term, transfer)| Message::RequestVote { term, transfer }),
            (term.clone(), any::<bool>())
                .prop_map(|(term, granted)| Message::Vote { term, granted }),
            (
                term.clone(),
                any::<u64>(),
                proptest::collection::vec(node_id(), 0..8),
                any::<u32>()
            )
                .prop_map(|(term, round, successors, hold_ms)| Message::Heartbeat {
                    term,
                    round,
                    successors,
                    hold_ms
                }),
            (
                term.clone(),
                any::<u64>(),
                any::<u8>(),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(term, round, priority, eligible, preempt)| {
                    Message::HeartbeatAck {
                        term,
                        round,
                        priority,
                        eligible,
                        preempt,
                    }
                }),
            (term.clone(), any::<u32>())
                .prop_map(|(term, hold_ms)| Message::TimeoutNow { term, hold_ms }),
            (term.clone(), node_id(), any::<u64>())
                .prop_map(|(term, to, round)| Message::TransferRequest { term, to, round }),
            (
                term,
                any::<bool>(),
                "[ -~]{0,40}",
                proptest::option::of(node_id())
            )
                .prop_map(|(term, master, reason, leader)| Message::Report {
                    term,
                    report: Box::new(crate::message::Report {
                        master,
                        leader,
                        ineligible_reason: reason,
                        ..Default::default()
                    }),
                }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(msg in message()) {
            let frame = encode(&msg).expect("small messages encode");
            prop_assert_eq!(frame[0], WIRE_VERSION);
            prop_assert_eq!(decode::<Message>(&frame), Ok(msg));
        }

        #[test]
        fn driver_messages_round_trip(seq in any::<u64>(), term in any::<u64>(), ms in any::<u32>(),
                                      node in node_id(), leader in proptest::option::of(node_id()),
                                      reason in ".{0,40}") {
            let to = ToDriver::Role { role: DriverRole::Master, term: Term(term), node, leader,
                                      lease_remaining_ms: ms, sent_at_ns: seq ^ term,
                                      stop_budget_ms: ms / 2, reason: reason.clone(), seq };
            prop_assert_eq!(decode::<ToDriver>(&encode(&to).expect("encodes")), Ok(to));
            let from = FromDriver::Ack { seq, role: DriverRole::Backup, result: ActionResult::Failed(reason) };
            prop_assert_eq!(decode::<FromDriver>(&encode(&from).expect("encodes")), Ok(from));
        }

        #[test]
        fn peer_events_round_trip(peer in node_id(), up in any::<bool>(), term in any::<u64>()) {
            let msg = ToDriver::Peer { peer, up, term: Term(term) };
            let frame = encode(&msg).expect("encodes");
            prop_assert_eq!(decode::<ToDriver>(&frame), Ok(msg));
            for cut in 0..frame.len() {
                prop_assert!(decode::<ToDriver>(&frame[..cut]).is_err());
            }
        }

        #[test]
        fn health_messages_round_trip(node in node_id(), term in any::<u64>(), healthy in any::<bool>(),
                                      detail in ".{0,40}", fall in any::<u32>(), rise in any::<u32>(),
                                      change in proptest::sample::select(vec![HealthChange::Healthy,
                                          HealthChange::Unhealthy, HealthChange::Ineligible, HealthChange::Eligible])) {
            let to = ToDriver::Health { node, term: Term(term), change, detail: detail.clone() };
            prop_assert_eq!(decode::<ToDriver>(&encode(&to).expect("encodes")), Ok(to));
            let from = FromDriver::Health { check: "check".into(), healthy, detail, fall, rise };
            let frame = encode(&from).expect("encodes");
            prop_assert_eq!(decode::<FromDriver>(&frame), Ok(from));
            for cut in 0..frame.len() {
                prop_assert!(decode::<FromDriver>(&frame[..cut]).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Message>(&bytes);
            let _ = decode::<ToDriver>(&bytes);
            let _ = decode::<FromDriver>(&bytes);
        }

        #[test]
        fn every_truncation_is_an_error(msg in message()) {
            let frame = encode(&msg).expect("encodes");
            for cut in 0..frame.len() {
                prop_assert!(decode::<Message>(&frame[..cut]).is_err());
            }
        }
    }

    #[test]
    fn typed_errors() {
        let frame = encode(&Message::PreVote { term: Term(7) }).expect("encodes");
        assert_eq!(decode::<Message>(&[]), Err(DecodeError::Empty));
        assert_eq!(decode::<Message>(&frame[..1]), Err(DecodeError::Truncated));
        let mut wrong_version = frame.clone();
        wrong_version[0] = 99;
        assert_eq!(
            decode::<Message>(&wrong_version),
            Err(DecodeError::UnknownVersion(99))
        );
        let mut trailing = frame.clone();
        trailing.push(0);
        assert_eq!(
            decode::<Message>(&trailing),
            Err(DecodeError::TrailingBytes(1))
        );
        let huge = vec![WIRE_VERSION; MAX_FRAME_LEN + 1];
        assert_eq!(
            decode::<Message>(&huge),
            Err(DecodeError::Oversized(MAX_FRAME_LEN + 1))
        );
        // Variant index far out of range.
        assert!(matches!(
            decode::<Message>(&[WIRE_VERSION, 200]),
            Err(DecodeError::Malformed(_))
        ));
        // An invalid node id is rejected by the decoder itself.
        let bad_id = encode(&("bad id!".to_string(),)).expect("encodes");
        assert!(matches!(
            decode::<(NodeId,)>(&bad_id),
            Err(DecodeError::Malformed(_))
        ));
        let big = ToDriver::Role {
            role: DriverRole::Master,
            term: Term(1),
            node: NodeId::new("n").expect("valid"),
            leader: None,
            lease_remaining_ms: 0,
            sent_at_ns: 0,
            stop_budget_ms: 0,
            reason: "x".repeat(MAX_FRAME_LEN),
            seq: 0,
        };
        assert!(matches!(
            encode(&big),
            Err(EncodeError::Oversized(_) | EncodeError::Serialize(_))
        ));
    }
}
