//! # clustd-core: sans-IO leader election with leases
//!
//! The election state machine of clustd, its messages and its wire codec.
//!
//! **The election state machine does no I/O, reads no clock and uses no OS randomness.**
//! Time comes in as an argument ([`Instant`]) to every method that needs it; randomness
//! comes from a seed in the [`Config`]; output is polled. (The one module that touches a
//! file system, [`store`], is a durable state file you may use or replace; nothing else
//! calls it.) That makes it embeddable in any runtime (tokio, plain
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
//!
//! ## Embedding: a checklist
//!
//! Three runnable examples, each checking all along its run that at most one lease gate is
//! open (CI runs all three):
//! - `cargo run -p clustd-core --example udp`: std UDP sockets in one thread, authenticated
//!   senders, state files; elects, refuses an attacker's replay and forgery, fails over,
//!   restarts a member from its file. Start here.
//! - `cargo run -p clustd-core --example smol`: the same members as tasks of the `smol`
//!   runtime (no tokio).
//! - `cargo run -p clustd-core --example embed`: plain threads and channels, the smallest.
//!
//! The runtime-independent half of the first two is `core/examples/common/mod.rs`: what to
//! do with a datagram, a timer and the outputs, in about a hundred lines.
//!
//! 1. **Clock.** One monotonic clock per node, the same one for every input and for the gate
//!    below. [`StdClock`] counts core [`Instant`]s from an origin on `std::time::Instant` and
//!    converts both ways (`to_std` for sleeping until [`Node::poll_timeout`]). Its rate may
//!    drift from real time by at most [`Config::max_clock_drift`]. **Suspend breaks it:**
//!    on Linux `std::time::Instant` (`CLOCK_MONOTONIC`) does not count time suspended, so a
//!    master resumed from suspend believes in the rest of its lease while a new master
//!    serves. Keep cluster members from suspending (or feed the core a clock that counts
//!    suspend, such as `CLOCK_BOOTTIME`).
//! 2. **Config.** [`Config::new`] or [`Config::fast_lan`]; change timings with
//!    [`Config::set_timings`], [`Config::set_stop_budget`] and
//!    [`Config::set_max_clock_drift`], which re-derive the lease (setting fields directly
//!    does not: call [`Config::derive_lease`]). [`Node::new`] validates.
//! 3. **Persist, then send.** After every input, drain [`Node::poll_persist`] and write the
//!    state durably (write, fsync, rename) **before** sending anything from
//!    [`Node::poll_transmit`]: a vote that is sent and then forgotten in a crash lets a node
//!    vote twice. [`store::FileStore`] does the write (the daemon's own store: checksum,
//!    atomic rename, directory fsync, and a refusal to start on a corrupt file). If a write
//!    fails, stop driving the node (send nothing) until it succeeds; never skip
//!    `poll_persist`: a node whose state is never taken stays silent.
//! 4. **Authenticate senders.** [`Message`] carries no sender: the `from` you pass to
//!    [`Node::handle_message`] must come from an authenticated channel. Anyone who can forge
//!    `from` can vote as a peer. The `clustd-session` crate (no runtime, bytes in and out)
//!    has clustd's Noise handshakes and, for datagram sockets, `clustd_session::datagram`:
//!    an envelope whose sender id the session proves, with replay protection. With node
//!    keys, even a holder of the cluster secret cannot speak as another node.
//! 5. **Events.** Safety-relevant: [`Event::BecameMaster`] (the gate opens),
//!    [`Event::LeaseRenewed`] (it stays open, or opens again, until the new lease end) and
//!    [`Event::BecameBackup`] (it is shut: stop the service). Everything else is
//!    informational (logs, metrics). The gate itself is the rule; events only tell you
//!    when to look.
//! 6. **The lease gate.** Let the service act only while [`Node::may_serve`] is true at the
//!    moment of acting, read from the same clock. [`Node::is_master`] is the role as of the
//!    last input: a node that is no longer driven keeps saying `true` while a new master
//!    serves elsewhere. A new master starts no sooner than this node's lease end plus
//!    [`Config::stop_budget`]: an in-process service keeps each action shorter than the stop
//!    budget; a service in another process gets [`Node::lease_remaining`] with the send
//!    time (it counts from the send time, minus a safety margin) and stops by itself at
//!    that lease end, whatever it hears.
//! 7. **Graceful shutdown.** On a leader, [`Node::step_down`] (it does nothing on a
//!    follower, which may just exit); stop the service, then [`Node::confirm_demoted`] (or
//!    let the lease plus stop budget pass); keep driving the node (inputs, timers, sends)
//!    until another node is named leader ([`Node::leader`]) or a bound of your choosing
//!    (the daemon waits up to about two maximum election timeouts), then exit.
//!
//! The daemon–driver protocol (for a service in another process) is in [`driver`].

pub mod check;
pub mod codec;
pub mod config;
pub mod driver;
#[cfg(any(test, feature = "harness"))]
pub mod fault;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
pub mod hash;
pub mod ids;
pub mod message;
pub mod node;
mod quorum;
pub mod rng;
pub mod store;
mod successor;
pub mod time;
mod tracker;

pub use config::{Alone, Config, ConfigError};
pub use ids::{InvalidNodeId, MAX_TERM_JUMP, NodeId, Term};
pub use message::Message;
pub use node::{
    Event, Node, PersistentState, Reason, RejectReason, Role, StartError, TransferError,
};
pub use time::{Instant, StdClock};
