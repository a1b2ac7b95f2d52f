//! # clustd-core: sans-IO leader election with leases
//!
//! The election state machine of clustd, its messages and its wire codec.
//!
//! **This crate does no I/O, reads no clock and uses no OS randomness.** Time comes in as
//! an argument ([`Instant`]) to every method that needs it; randomness comes from a seed in
//! the [`Config`]; output is polled. That makes it embeddable in any runtime (tokio, plain
//! threads, a simulator) and makes every run reproducible from its inputs.
//!
//! The protocol is Raft's leader election without a log, with pre-vote, check-quorum, a
//! leader lease, leadership transfer, maintenance mode and priorities. A leader is *master*
//! (may run the service) only while its lease is valid, and the timing rule checked by
//! [`Config::validate`] ensures two master intervals never overlap under bounded clock drift.
//! What exactly is promised — service intervals as drivers run them, ending only at an `Ok`
//! stop or at lease end plus the stop budget — is judged by the one checker in [`check`],
//! which every test, simulation, benchmark and demo of the project uses.
//! A peer's term more than [`MAX_TERM_JUMP`] above a node's own is dropped, never adopted
//! ([`Event::Rejected`]), so one forged message cannot use up the terms.
//!
//! ```
//! use clustd_core::{Config, Instant, Node, NodeId, PersistentState};
//! let ids: Vec<NodeId> = ["a", "b", "c"].iter().map(|s| NodeId::new(s).unwrap()).collect();
//! let mut node = Node::new(Config::new(ids[0].clone(), ids.clone()), PersistentState::default(), Instant::ZERO).unwrap();
//! let now = node.poll_timeout();
//! node.handle_timeout(now);
//! while let Some(state) = node.poll_persist() { /* write durably first */ let _ = state; }
//! while let Some((to, msg)) = node.poll_transmit() { /* then send */ let _ = (to, msg); }
//! while let Some(event) = node.poll_event() { /* then tell drivers */ let _ = event; }
//! ```

pub mod check;
pub mod codec;
pub mod config;
#[cfg(any(test, feature = "harness"))]
pub mod fault;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
pub mod ids;
pub mod message;
pub mod node;
pub mod time;

pub use config::{Alone, Config, ConfigError};
pub use ids::{InvalidNodeId, MAX_TERM_JUMP, NodeId, Term};
pub use message::{
    ActionResult, DRIVER_ALIVE_INTERVAL, DriverRole, FromDriver, HealthChange, Message, ToDriver,
};
pub use node::{Event, Node, PersistentState, Reason, RejectReason, Role, StartError};
pub use time::Instant;
