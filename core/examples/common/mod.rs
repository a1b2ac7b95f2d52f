//! The part of an embedding that does not depend on the runtime: one cluster member, which
//! turns authenticated datagrams into election inputs and election outputs into sealed
//! datagrams, persisting before it sends. `udp.rs` (std sockets, one thread) and `smol.rs`
//! (async tasks) only move bytes and wake it up.
//!
//! Read it top to bottom: it is the Embedding checklist of the crate docs, in code.

// Each example uses a different part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use clustd_core::store::{FileStore, StateStore, StoreError};
use clustd_core::{Config, Event, Instant, Message, Node, NodeId, codec};
use clustd_session::Secret;
use clustd_session::datagram::{DatagramConfig, Datagrams, Refused};

/// One node: the election core, its authenticated datagram endpoint and its state file.
pub(crate) struct Member {
    /// The election state machine.
    pub(crate) node: Node,
    /// Sessions to the other members: who sent what, proven.
    pub(crate) net: Datagrams,
    store: FileStore,
    /// Datagrams refused (forged, replayed, altered, or from a restarted peer's old
    /// session): a counter, and the last few reasons. Never an unbounded list: refusals
    /// are the attacker's to multiply.
    pub(crate) refused: u64,
    pub(crate) last_refusals: VecDeque<Refused>,
    /// Authenticated payloads received, per proven sender.
    pub(crate) heard: BTreeMap<NodeId, u64>,
}

/// 32 random bytes from the operating system: session keys must not be guessable.
pub(crate) fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap_or_else(|e| panic!("no OS randomness: {e}"));
    seed
}

/// The secret every member shares (from a file with mode 0600 in a real deployment).
pub(crate) fn cluster_secret() -> Secret {
    Secret::from_bytes(b"example cluster secret: use 32 random bytes".to_vec())
        .unwrap_or_else(|e| panic!("{e}"))
}

impl Member {
    /// Starts (or restarts) `me` at `now`, reading its state from `dir`.
    ///
    /// Checklist: 1 the clock is the caller's (`now`); 2 the fast LAN profile; 3 the saved
    /// `(term, vote)` comes back from disk, and a corrupt file stops the start.
    pub(crate) fn start(
        me: &NodeId,
        members: &[NodeId],
        dir: &Path,
        now: Instant,
    ) -> Result<Self, StoreError> {
        let mut store = FileStore::new(dir.join(me.as_str()));
        let saved = store.load()?;
        let mut config = Config::fast_lan(me.clone(), members.to_vec());
        let [a, b, c, d, e, f, g, h, ..] = os_seed();
        config.rng_seed = u64::from_le_bytes([a, b, c, d, e, f, g, h]);
        let node = Node::new(config, saved, now).unwrap_or_else(|e| panic!("config: {e}"));
        let peers = members.iter().filter(|id| *id != me).cloned();
        let net = Datagrams::new(
            DatagramConfig::new(me.clone(), cluster_secret(), peers),
            os_seed(),
            now,
        )
        .unwrap_or_else(|e| panic!("datagram config: {e}"));
        Ok(Self {
            node,
            net,
            store,
            refused: 0,
            last_refusals: VecDeque::new(),
            heard: BTreeMap::new(),
        })
    }

    /// One datagram from the socket. Checklist 4: the sender is the one its session proves,
    /// never an address or a field anyone could write.
    pub(crate) fn on_datagram(&mut self, bytes: &[u8], now: Instant) {
        match self.net.receive(bytes, now) {
            Ok(Some(delivery)) => match codec::decode::<Message>(&delivery.payload) {
                Ok(msg) => {
                    *self.heard.entry(delivery.from.clone()).or_default() += 1;
                    self.node.handle_message(now, &delivery.from, msg);
                }
                Err(e) => eprintln!(
                    "{}: undecodable frame from {}: {e}",
                    self.me(),
                    delivery.from
                ),
            },
            Ok(None) => {} // handshakes and confirmations
            Err(refused) => {
                self.refused += 1;
                if self.last_refusals.len() == 8 {
                    self.last_refusals.pop_front();
                }
                self.last_refusals.push_back(refused);
            }
        }
    }

    /// The earliest instant either machine wants to be woken at.
    pub(crate) fn next_wakeup(&self) -> Instant {
        let node = self.node.poll_timeout();
        self.net.poll_timeout().map_or(node, |net| net.min(node))
    }

    /// Fires whatever timers are due at `now`.
    pub(crate) fn on_timers(&mut self, now: Instant) {
        if now >= self.node.poll_timeout() {
            self.node.handle_timeout(now);
        }
        if self.net.poll_timeout().is_some_and(|at| now >= at) {
            self.net
                .handle_timeout(now)
                .unwrap_or_else(|e| panic!("redial: {e}"));
        }
    }

    /// After every input: persist, then seal, then report. Returns the datagrams to send.
    ///
    /// Checklist 3: the state is durable (fsync, rename) before any message leaves. If the
    /// save fails, nothing is sent: the caller must stop driving this member.
    pub(crate) fn flush(&mut self) -> Result<Vec<(NodeId, Vec<u8>)>, StoreError> {
        let mut latest = None;
        while let Some(state) = self.node.poll_persist() {
            latest = Some(state);
        }
        if let Some(state) = latest {
            self.store.save(&state)?;
        }
        while let Some((to, msg)) = self.node.poll_transmit() {
            let frame = codec::encode(&msg).unwrap_or_else(|e| panic!("encode: {e}"));
            self.net
                .send(&to, &frame)
                .unwrap_or_else(|e| panic!("seal for {to}: {e}"));
        }
        // Checklist 5: the events say when to look at the gate; they are not the gate.
        while let Some(event) = self.node.poll_event() {
            match event {
                Event::BecameMaster { term, .. } => {
                    println!("  {} is MASTER (term {term})", self.me())
                }
                Event::BecameBackup { term, reason, .. } => {
                    println!(
                        "  {} is backup (term {term}, {})",
                        self.me(),
                        reason.as_str()
                    )
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        while let Some(datagram) = self.net.poll_transmit() {
            out.push(datagram);
        }
        Ok(out)
    }

    /// This member's id.
    pub(crate) fn me(&self) -> &NodeId {
        self.node.id()
    }
}

/// Checklist 6, checked from outside: the members whose lease gate is open at `now` (one
/// clock for all, read once). A member that is no longer driven still counts until its
/// lease ends: its service could still be acting. Exits the process if two are open.
pub(crate) fn open_gates<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    now: Instant,
) -> Vec<NodeId> {
    let open: Vec<NodeId> = nodes
        .into_iter()
        .filter(|node| node.may_serve(now))
        .map(|node| node.id().clone())
        .collect();
    if open.len() > 1 {
        eprintln!("FAILED: two lease gates open at {now}: {open:?}");
        std::process::exit(1);
    }
    open
}

/// A scratch directory for the members' state files, removed on drop.
pub(crate) struct ScratchDir(pub(crate) std::path::PathBuf);

impl ScratchDir {
    /// A fresh directory under the system's temporary directory.
    pub(crate) fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
