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

/// An election term. It only grows, and it is the fencing token handed to drivers:
/// an action taken under term `t` must be rejected by anything that has seen a term `> t`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Term(pub u64);

impl Term {
    /// The term after this one.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
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
}
