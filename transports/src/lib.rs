//! Authenticated, encrypted transports for clustd: one API, two implementations
//! (WebSocket over TCP and QUIC), chosen by one config value (`cluster.transport`).
//!
//! The daemon runtime talks to an [`Endpoint`] and never learns which transport it has:
//!
//! ```ignore
//! let (endpoint, mut events) = Endpoint::start(TokioNet, config).await?;
//! endpoint.send(&peer, frame, SendClass::Heartbeat)?;   // never blocks
//! while let Some(event) = events.recv().await {           // Connected / Frame / Disconnected
//!     /* ... */
//! }
//! endpoint.shutdown().await;
//! ```
//!
//! # Public API
//! - [`EndpointConfig`] (with [`Limits`], [`Secret`], [`TransportKind`], [`PeerKind`],
//!   [`TlsFiles`]) describes who we are, whom we dial and what we accept.
//! - [`Endpoint::start`] listens (if `listen` is set) and keeps every configured peer
//!   connected, reconnecting with exponential backoff and jitter. [`Endpoint::dial`] dials
//!   an address without knowing the remote id in advance (drivers use it to reach their daemon).
//! - [`Endpoint::send`] queues one frame for one node id; [`SendClass::Heartbeat`] frames are
//!   lossy (a newer one replaces an older unsent one; over QUIC they go as datagrams),
//!   [`SendClass::Reliable`] frames may be lost only when a connection breaks or is replaced
//!   by a duplicate (the election protocol tolerates that); when a connection's queue is
//!   full it is closed (the peer is too slow) and [`SendError::Congested`] is returned.
//! - [`TransportEvent`]s arrive on a bounded channel: `Connected`, `Frame`, `Disconnected`,
//!   and `HandshakeFailed` (best effort, for logs and metrics).
//! - [`Net`] is the socket seam: [`TokioNet`] in production, a turmoil implementation in `sim`.
//!
//! # Security
//! Every connection runs a Noise handshake (see [`session`], from the runtime-free
//! `clustd-session` crate, which embedders of the core use too): between daemons
//! `IKpsk1_25519_ChaChaPoly_SHA256`, proving each node's static key with the cluster secret as
//! pre-shared key (a connection is the node whose key it proves, never the one it claims);
//! `NNpsk0` with the cluster secret alone for peers configured without keys; for drivers
//! `NNpsk0` (or `NKpsk0`, the daemon proving its key) under the drivers' credential, which
//! only ever yields a driver. Each proves its credential both ways without revealing it,
//! gives forward secrecy (ephemeral X25519) and yields one key per direction.
//! The responder only accepts the initiator after a key-confirmation message that depends on
//! its own fresh ephemeral key, so a recorded first message cannot be replayed to gain a
//! session. With QUIC the Noise prologue contains a TLS exporter value of the QUIC session,
//! so the proof cannot be relayed to another QUIC connection. Every frame afterwards is
//! sealed with ChaCha20-Poly1305 under an explicit, strictly increasing nonce (a sliding
//! window for QUIC datagrams): replayed, reordered or altered frames close the connection.
//! The handshake carries the node id and kind, believed only as far as the proof goes;
//! unknown ids are refused; when two connections of the same node exist, exactly one is kept
//! and only it delivers frames (see [`Endpoint`]).
//! A responder that cannot authenticate a first handshake message closes the link with a
//! fixed refusal (a WebSocket close code, a QUIC application close code; no secret material
//! and nothing a stranger could not already read from the closed connection), so the
//! dialer can say [`TransportError::SecretRejected`] instead of "connection reset".
//! Daemons may also serve local drivers on a Unix socket ([`LocalSocket`]), where the
//! socket's permissions authenticate.
//!
//! Determinism: no `std::time`, no `HashMap` iteration, `biased` selects, and all randomness
//! (jitter, Noise ephemerals, quinn's rng, the QUIC certificate key) derives from
//! [`Net::random_seed`], so the `sim` crate can replay a run.

mod admission;
mod backoff;
mod config;
mod endpoint;
mod error;
mod event;
mod link;
mod local;
mod net;
mod policy;
mod process;
mod queue;
mod quic;
#[cfg(any(test, feature = "test-util"))]
pub mod raw;
mod registry;
mod tls;
mod ws;

pub use backoff::Backoff;
pub use clustd_session::handshake as session;
pub use clustd_session::{NodeKey, PeerKind, PublicKey, Secret, SessionError};
pub use config::{EndpointConfig, Limits, LocalSocket, SendClass, TlsFiles, TransportKind};
pub use endpoint::Endpoint;
pub use error::{RefuseReason, SendError, TransportError};
pub use event::TransportEvent;
pub use local::bind_socket;
pub use net::{Net, TokioNet};
pub use process::{PeerProcess, ProcStat, proc_stat};

/// Runs each `async fn name(kind: TransportKind)` of an integration test once per
/// transport, as `quic::name` and `websocket::name` (the names CI and the README use): the
/// same body, never a copy. The one such macro of the workspace, shared by the transport,
/// daemon and bench tests; it names `tokio` only in the caller's code, so callers need
/// `tokio` (with `macros`) among their dev-dependencies.
#[cfg(feature = "test-util")]
#[macro_export]
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod quic {
            $(#[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::TransportKind::Quic).await })*
        }
        mod websocket {
            $(#[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::TransportKind::WebSocket).await })*
        }
    };
}
