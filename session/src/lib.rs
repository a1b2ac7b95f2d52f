//! # clustd-session: authenticated sessions without a runtime
//!
//! The secure channel of clustd as sans-IO pieces: bytes in, bytes out, no tokio, no
//! sockets, no clock reads, no OS randomness (seeds come from the caller). clustd's own
//! transports (`clustd-transport`, WebSocket and QUIC) run exactly this code; embedders of
//! `clustd-core` use it to learn, for every message, which node sent it.
//!
//! - [`handshake`]: the Noise handshakes (`IKpsk1` with node keys, `NNpsk0` with the cluster
//!   secret, two for drivers) and the sealing of frames after them, for streams and for
//!   datagrams.
//! - [`datagram`]: a complete endpoint for connectionless sockets (UDP and the like): a
//!   documented envelope that carries the sender id, sessions to every peer, retries and
//!   restarts. [`datagram::Datagrams::receive`] returns the sender as proven by its session,
//!   the `from` that `clustd_core::Node::handle_message` must be given.
//! - Credentials: [`Secret`] (the cluster secret), [`NodeKey`] and [`PublicKey`].
//!
//! ```
//! use clustd_core::{Instant, NodeId};
//! use clustd_session::Secret;
//! use clustd_session::datagram::{DatagramConfig, Datagrams};
//!
//! let id = |s: &str| NodeId::new(s).unwrap();
//! let secret = Secret::from_bytes(b"a cluster secret of 32 bytes ...".to_vec()).unwrap();
//! let mut a = Datagrams::new(DatagramConfig::new(id("a"), secret.clone(), [id("b")]), [1; 32], Instant::ZERO).unwrap();
//! let mut b = Datagrams::new(DatagramConfig::new(id("b"), secret, [id("a")]), [2; 32], Instant::ZERO).unwrap();
//! a.send(&id("b"), b"vote for me").unwrap(); // waits for a's session to b
//! // Carry datagrams both ways until nothing is left ("the network").
//! let mut got = Vec::new();
//! loop {
//!     let mut moved = false;
//!     while let Some((_, bytes)) = a.poll_transmit() { moved = true; got.extend(b.receive(&bytes, Instant::ZERO).unwrap()); }
//!     while let Some((_, bytes)) = b.poll_transmit() { moved = true; a.receive(&bytes, Instant::ZERO).unwrap(); }
//!     if !moved { break; }
//! }
//! assert_eq!(got[0].from, id("a"));
//! assert_eq!(got[0].payload, b"vote for me");
//! ```

pub mod datagram;
mod error;
pub mod handshake;
mod keys;

pub use error::{RefuseReason, SessionError};
pub use handshake::{Hello, Reply};
pub use keys::{NodeKey, PeerKind, PublicKey, Secret};
