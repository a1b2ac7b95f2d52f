//! # sim: deterministic simulation of whole clustd clusters
//!
//! The real node runtime (`clustd::run`) and the real transports (WebSocket and QUIC) run
//! as turmoil hosts; only the sockets ([`SimNet`]), the clock ([`DriftClock`]) and the disk
//! ([`SimStore`]) are swapped. A [`Cluster`] injects faults (partitions, one-way cuts,
//! crashes, restarts, loss, latency, clock drift) and its [`Checker`] checks, on every run:
//! one leader per term, disjoint master intervals as drivers see them, terms that never
//! decrease, one vote per term, and (when the scenario asks) liveness and stability.
//! Every failure prints the seed and the command that replays it.

pub mod check;
pub mod clock;
pub mod cluster;
pub mod insider;
pub mod machine;
pub mod net;
pub mod store;
pub mod sweep;

pub use check::{Checker, TraceHash};
pub use clock::DriftClock;
pub use cluster::{Cluster, Outcome, SimConfig, seed_from_env};
pub use net::SimNet;
pub use store::{Disk, SimStore};
