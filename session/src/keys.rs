//! Credentials: the cluster secret, node key pairs and public keys, and what a peer is.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::SessionError;

/// What the other end of a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PeerKind {
    /// Another daemon of the cluster.
    Peer,
    /// A driver attached to a daemon.
    Driver,
}

/// The cluster secret. Never printed; zeroized on drop.
///
/// Any length of at least [`Secret::MIN_LEN`] bytes; the Noise pre-shared key is
/// SHA-256 of a label and the secret, so text and binary secrets both work.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// The shortest secret accepted, in bytes: the one minimum of the workspace (the
    /// daemon's secrets and admin tokens, the drivers' credential); `clustd keygen` makes 64
    /// hex characters.
    pub const MIN_LEN: usize = 32;

    /// Wraps secret bytes, refusing secrets shorter than [`Secret::MIN_LEN`].
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self, SessionError> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.len() < Self::MIN_LEN {
            return Err(SessionError::Config(format!(
                "the cluster secret must be at least {} bytes, got {}",
                Self::MIN_LEN,
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    /// Whether two secrets are the same bytes (to refuse a driver credential that is the
    /// cluster secret). Not constant-time: for configuration checks only.
    pub fn same_bytes(&self, other: &Secret) -> bool {
        *self.0 == *other.0
    }

    /// The 32-byte Noise pre-shared key derived from the secret for one use (`label`):
    /// peers and drivers derive different keys from the same bytes, so a secret used as a
    /// driver credential never opens a peer handshake.
    pub(crate) fn psk(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(label);
        ctx.update(&self.0);
        let digest = ctx.finish();
        let mut psk = Zeroizing::new([0u8; 32]);
        psk.copy_from_slice(digest.as_ref());
        psk
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A node's static X25519 key pair (`clustd keygen --node`): the node proves it in every
/// peer handshake, and its peers know the public half. Never printed; zeroized on drop.
#[derive(Clone)]
pub struct NodeKey {
    private: Zeroizing<[u8; 32]>,
    public: PublicKey,
}

impl NodeKey {
    /// The key pair with this private key (any 32 bytes: X25519 clamps them).
    pub fn from_private(private: [u8; 32]) -> Self {
        let private = Zeroizing::new(private);
        let public = crate::handshake::public_key_of(&private);
        Self { private, public }
    }

    /// Parses the private key from its text form (64 hex characters, surrounding
    /// whitespace ignored). The error never contains the text.
    pub fn from_hex(text: &str) -> Result<Self, SessionError> {
        let bytes = parse_hex32(text.trim()).ok_or_else(|| {
            SessionError::Config(
                "a node key is 64 hex characters (make one with `clustd keygen --node`)".into(),
            )
        })?;
        Ok(Self::from_private(*bytes))
    }

    /// The private key as 64 hex characters (for writing the key file).
    pub fn private_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex(&self.private[..]))
    }

    /// The public half, which the node's peers configure.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn private(&self) -> &[u8; 32] {
        &self.private
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey(public {}, private <redacted>)", self.public)
    }
}

/// A node's public key: 32 bytes, written as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = SessionError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let key = parse_hex32(text.trim()).map(|b| Self(*b)).ok_or_else(|| {
            SessionError::Config(format!(
                "a public key is 64 hex characters, got {} characters",
                text.trim().len()
            ))
        })?;
        if crate::handshake::is_weak_public_key(&key.0) {
            return Err(SessionError::Config(
                "not a usable public key (a small-order point such as all zeros: a placeholder?); print the real one with `clustd keygen --public KEY_FILE`".into(),
            ));
        }
        Ok(key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let raw = text.as_bytes();
    if raw.len() != 64 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (i, pair) in raw.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_and_checked() {
        let secret = Secret::from_bytes(b"very secret cluster key, 32 bytes or more".to_vec())
            .expect("long enough");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert!(Secret::from_bytes(b"short".to_vec()).is_err());
    }

    #[test]
    fn node_keys_round_trip_as_hex_and_are_redacted() {
        let key = NodeKey::from_private([7; 32]);
        let again = NodeKey::from_hex(&key.private_hex()).expect("parses");
        assert_eq!(again.public(), key.public());
        let public: PublicKey = key.public().to_string().parse().expect("parses");
        assert_eq!(public, key.public());
        assert!(!format!("{key:?}").contains(&*key.private_hex()));
        let err = NodeKey::from_hex("zz").expect_err("refused").to_string();
        assert!(!err.contains("zz"), "{err}");
        assert!("12ab".parse::<PublicKey>().is_err());
        // Small-order points would let anyone with the secret pass as that peer.
        assert!("00".repeat(32).parse::<PublicKey>().is_err());
        let one = format!("01{}", "00".repeat(31));
        assert!(one.parse::<PublicKey>().is_err());
    }
}
