//! Identifiers that travel on the wire: node ids and terms.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest node id accepted anywhere (config, handshake, wire).
pub const MAX_NODE_ID_LEN: usize = 64;

/// A node's name in the cluster, e.g. `node-1`. Cheap to clone.
///
/// Ids are compared and ordered as strings; the order is used to break ties
/// (priority ranking, transfer targets) so every node computes the same result.
///
/// Deserializing validates, so a peer cannot smuggle an invalid id through the wire.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct NodeId(Arc<str>);

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl TryFrom<String> for NodeId {
    type Error = InvalidNodeId;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

impl NodeId {
    /// Makes a node id, checking that it is 1..=64 characters of `[A-Za-z0-9._-]`.
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidNodeId> {
        let id = id.as_ref();
        if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
            return Err(InvalidNodeId::Length(id.len()));
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidNodeId::Character(c));
        }
        Ok(Self(id.into()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNodeId {
    /// Empty, or longer than [`MAX_NODE_ID_LEN`].
    #[error("node id must be 1 to {MAX_NODE_ID_LEN} characters long, got {0}")]
    Length(usize),
    /// Contains a character outside `[A-Za-z0-9._-]`.
    #[error("node id may contain only letters, digits, '.', '_' and '-', found {0:?}")]
    Character(char),
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = InvalidNodeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// How far above its own term a node accepts a peer's term. A message whose term is more
/// than this above the receiver's is dropped, never adopted (the node emits
/// [`Event::Rejected`](crate::Event::Rejected)).
///
/// Without this bound one forged message from a node with the cluster secret (a compromised
/// or buggy peer) carrying term `u64::MAX` would be adopted and persisted by every node, and
/// no election could ever be won again, not even after restarting them all.
///
/// **Why no honest node reaches it.** Terms grow by one per election attempt that passed
/// pre-vote, that is, one that a majority let happen; a node that was cut off cannot bump
/// the term. A peer is honestly ahead of us only by the attempts held while we were not
/// listening. 2^32 attempts at one every 10 ms (far quicker than any sane election timeout:
/// attempts are at least `ET_min` apart on each node) take 2^32 × 10 ms ≈ 4.3 × 10^7 s,
/// about 497 days or 16 months of uninterrupted failed elections.
///
/// The bound is per message: a hostile insider could still walk the term up in steps of
/// `MAX_TERM_JUMP`, but it needs 2^32 accepted messages to get near the top, and no node
/// goes past [`Term::CEILING`] either way.
///
/// **Recovery** when a node refuses to start because its persisted term is above
/// [`Term::CEILING`] (or the cluster's terms were walked up to it): stop every daemon of
/// the cluster; wait until every driver's lease has ended (services stopped); remove the
/// persisted state (the daemon's `<data_dir>/state`) on every node; start them again. That
/// is safe: no node is master while all are stopped, and every restarted node waits
/// `ET_min` before it votes, so the fresh terms start from 0 with no lease outstanding.
pub const MAX_TERM_JUMP: u64 = 1 << 32;

/// An election term. It only grows, and it is the fencing token handed to drivers:
/// an action taken under term `t` must be rejected by anything that has seen a term `> t`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Term(pub u64);

impl Term {
    /// The highest term a node adopts, campaigns in or starts from: `u64::MAX` −
    /// [`MAX_TERM_JUMP`] (at one election a millisecond, 5.8 × 10^8 years away). A persisted
    /// term above it makes [`Node::new`](crate::Node::new) refuse to start; see
    /// [`MAX_TERM_JUMP`] for the recovery.
    pub const CEILING: Self = Self(u64::MAX - MAX_TERM_JUMP);

    /// The term after this one, or `None` when that would pass [`Term::CEILING`]: a node
    /// there cannot campaign (it still follows a leader of its term).
    #[must_use]
    pub fn next(self) -> Option<Self> {
        self.0
            .checked_add(1)
            .map(Self)
            .filter(|next| *next <= Self::CEILING)
    }

    /// By how much `other` is above this term (`None` if it is not above).
    #[must_use]
    pub fn distance_to(self, other: Self) -> Option<u64> {
        other.0.checked_sub(self.0).filter(|d| *d > 0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_validation() {
        assert!(NodeId::new("node-1").is_ok());
        assert!(NodeId::new("a.b_c-9").is_ok());
        assert_eq!(NodeId::new(""), Err(InvalidNodeId::Length(0)));
        assert_eq!(NodeId::new("x".repeat(65)), Err(InvalidNodeId::Length(65)));
        assert_eq!(NodeId::new("a b"), Err(InvalidNodeId::Character(' ')));
        assert_eq!(NodeId::new("ünï"), Err(InvalidNodeId::Character('ü')));
    }

    #[test]
    fn next_is_checked_and_stops_at_the_ceiling() {
        assert_eq!(Term(0).next(), Some(Term(1)));
        assert_eq!(Term(Term::CEILING.0 - 1).next(), Some(Term::CEILING));
        assert_eq!(Term::CEILING.next(), None);
        assert_eq!(Term(u64::MAX).next(), None);
    }

    #[test]
    fn distance_is_only_upwards() {
        assert_eq!(Term(5).distance_to(Term(5)), None);
        assert_eq!(Term(5).distance_to(Term(4)), None);
        assert_eq!(Term(5).distance_to(Term(7)), Some(2));
        assert_eq!(Term(0).distance_to(Term(u64::MAX)), Some(u64::MAX));
    }
}
