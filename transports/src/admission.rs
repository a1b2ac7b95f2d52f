//! Admission of unauthenticated connections: who may hold one of the
//! [`Limits::max_unauthenticated`] handshake slots, and who is pushed out when they are all
//! taken.
//!
//! A fixed pool that refuses newcomers when full can be held by anyone who opens silent
//! connections faster than the handshake timeout frees them, and then no honest node gets
//! in. So a full pool never refuses: it **evicts** a connection to make room, chosen so that
//! an honest dialer, which sends its first handshake message within a round trip of
//! connecting, is the last to go:
//! - connections that have not sent their first handshake message yet go before those that
//!   have (a silent flood only ever evicts itself once an honest handshake is under way),
//!   and among equals the **oldest** goes first;
//! - one source IP address (other than a configured peer's) holds at most
//!   [`Limits::max_unauthenticated_per_ip`] slots: a newcomer beyond that evicts that
//!   address's own oldest connection, never anybody else's;
//! - [`Limits::unauthenticated_reserved_for_peers`] slots are usable only from the IP
//!   addresses of configured peers: other addresses can never evict a peer's connection
//!   from them. (On one host, e.g. a loopback test cluster, peers and attackers share the
//!   address: there the ordering above is what keeps a peer in.)
//!
//! Under pressure (more than half of the pool taken, [`Admission::under_pressure`]) the first
//! handshake message must arrive within [`Limits::first_message_timeout`] of accepting (see
//! [`FirstMessage`]; without pressure a slow link keeps the whole handshake timeout), and
//! QUIC asks unvalidated sources for a Retry round trip first, so spoofed source addresses
//! cannot take slots. The whole handshake always has [`Limits::handshake_timeout`].
//!
//! Deterministic for the simulation: ordered maps only, no clock (the deadline uses tokio's).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::{EndpointConfig, Limits, TransportError};

/// The admission pool of one endpoint.
pub(crate) struct Admission {
    capacity: usize,
    per_ip: usize,
    reserved: usize,
    peer_ips: BTreeSet<IpAddr>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Admitted connections by admission order: the first key is the oldest.
    slots: BTreeMap<u64, Slot>,
    next: u64,
}

struct Slot {
    ip: IpAddr,
    from_peer: bool,
    /// The first handshake message has arrived.
    progressed: bool,
    evict: oneshot::Sender<()>,
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    // Critical sections are short and leave the data consistent, so poisoning is ignored.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `::ffff:a.b.c.d` and `a.b.c.d` are one source (dual-stack listeners report the former).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

impl Admission {
    /// A pool sized by `config.limits`, reserving slots for `config.peers`' addresses.
    pub(crate) fn new(config: &EndpointConfig) -> Arc<Self> {
        let limits: &Limits = &config.limits;
        let capacity = limits.max_unauthenticated.max(1);
        Arc::new(Self {
            capacity,
            per_ip: limits.max_unauthenticated_per_ip.clamp(1, capacity),
            // Strangers keep at least half: drivers may connect from elsewhere.
            reserved: limits.unauthenticated_reserved_for_peers.min(capacity / 2),
            peer_ips: config
                .peers
                .values()
                .map(|addr| canonical(addr.ip()))
                .collect(),
            state: Mutex::new(State::default()),
        })
    }

    /// Unauthenticated connections admitted right now.
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).slots.len()
    }

    /// More than half of the pool is taken: a QUIC source must then prove its address (a
    /// Retry round trip, cheap for an honest dialer; a flood from spoofed addresses never
    /// gets past it) and a connection gets only [`Limits::first_message_timeout`] for its
    /// first handshake message.
    pub(crate) fn under_pressure(&self) -> bool {
        self.len() > self.capacity / 2
    }

    /// Admits a connection from `addr`, evicting another one if the pool is full. Never
    /// refuses. The ticket holds the slot until it is dropped.
    pub(crate) fn admit(self: &Arc<Self>, addr: SocketAddr) -> Ticket {
        let ip = canonical(addr.ip());
        let from_peer = self.peer_ips.contains(&ip);
        let (evict, evicted) = oneshot::channel();
        let mut state = lock(&self.state);
        if let Some(victim) = self.victim(&state, ip, from_peer)
            && let Some(slot) = state.slots.remove(&victim)
        {
            tracing::debug!(ip = %slot.ip, progressed = slot.progressed, "unauthenticated connections full: evicting one");
            let _ = slot.evict.send(());
        }
        let id = state.next;
        state.next += 1;
        state.slots.insert(
            id,
            Slot {
                ip,
                from_peer,
                progressed: false,
                evict,
            },
        );
        drop(state);
        Ticket {
            admission: self.clone(),
            id,
            evicted: Some(evicted),
        }
    }

    /// Which slot a newcomer from `ip` takes over, if the pool has no room for it.
    fn victim(&self, state: &State, ip: IpAddr, from_peer: bool) -> Option<u64> {
        let slots = &state.slots;
        let count = |pred: &dyn Fn(&Slot) -> bool| slots.values().filter(|s| pred(s)).count();
        // The least valuable slot among those `pred` selects: silent before progressed,
        // then the oldest (the map iterates oldest first).
        let pick = |pred: &dyn Fn(&Slot) -> bool| {
            slots
                .iter()
                .filter(|(_, s)| pred(s))
                .min_by_key(|(id, s)| (s.progressed, **id))
                .map(|(id, _)| *id)
        };
        if !from_peer {
            if count(&|s| s.ip == ip) >= self.per_ip {
                return pick(&|s| s.ip == ip);
            }
            if count(&|s| !s.from_peer) >= self.capacity - self.reserved {
                return pick(&|s| !s.from_peer);
            }
            if slots.len() >= self.capacity {
                // Peers use more than their reserve: the shared part is taken back from them.
                return pick(&|s| s.from_peer);
            }
            return None;
        }
        if slots.len() >= self.capacity {
            // A peer's address pushes out strangers first.
            return pick(&|s| !s.from_peer).or_else(|| pick(&|_| true));
        }
        None
    }

    fn progressed(&self, id: u64) {
        if let Some(slot) = lock(&self.state).slots.get_mut(&id) {
            slot.progressed = true;
        }
    }

    fn release(&self, id: u64) {
        lock(&self.state).slots.remove(&id);
    }
}

/// One admitted unauthenticated connection's slot; released when dropped.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    evicted: Option<oneshot::Receiver<()>>,
}

impl Ticket {
    /// Resolves when the slot is taken over by a newer connection: the handshake must then
    /// be abandoned. Pending forever once it has resolved (or was awaited) before.
    pub(crate) async fn evicted(&mut self) {
        // Cancel-safe: the receiver stays until it has resolved. It cannot fail while we
        // hold the ticket (the sender lives in our slot until it is used).
        if let Some(evicted) = self.evicted.as_mut()
            && evicted.await.is_ok()
        {
            self.evicted = None;
            return;
        }
        self.evicted = None;
        std::future::pending().await
    }

    /// The deadline for this connection's first handshake message, `patience` from now;
    /// once the message is in, the connection is evicted only after every silent one.
    pub(crate) fn first_message(&self, patience: Duration) -> FirstMessage {
        FirstMessage {
            admission: self.admission.clone(),
            id: self.id,
            deadline: tokio::time::Instant::now() + patience,
            patience,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.id);
    }
}

/// The first-message deadline of one admitted connection (see [`Ticket::first_message`]).
///
/// Enforced only while the pool is [under pressure](Admission::under_pressure): with room
/// to spare, a slow link (a long path, a busy peer) keeps the whole handshake timeout; each
/// time the deadline passes without pressure it is pushed back by the same amount.
pub(crate) struct FirstMessage {
    admission: Arc<Admission>,
    id: u64,
    deadline: tokio::time::Instant,
    patience: Duration,
}

impl FirstMessage {
    /// Waits for `fut` (establishing the link, or the first message), giving up with
    /// [`TransportError::HandshakeTimeout`] at a deadline that passes under pressure.
    pub(crate) async fn within<F: Future>(&mut self, fut: F) -> Result<F::Output, TransportError> {
        tokio::pin!(fut);
        loop {
            match tokio::time::timeout_at(self.deadline, &mut fut).await {
                Ok(output) => return Ok(output),
                Err(_) if self.admission.under_pressure() => {
                    return Err(TransportError::HandshakeTimeout);
                }
                Err(_) => self.deadline += self.patience,
            }
        }
    }

    /// The first handshake message is in: from now on the connection is evicted only after
    /// every silent one.
    pub(crate) fn arrived(self) {
        self.admission.progressed(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PeerKind, Secret, TransportKind};
    use clustd_core::NodeId;

    fn pool(capacity: usize, per_ip: usize, reserved: usize, peers: &[&str]) -> Arc<Admission> {
        let secret = Secret::from_bytes(b"admission test secret, 32 bytes or more".to_vec())
            .expect("long enough");
        let id = NodeId::new("n1").expect("valid id");
        let mut config = EndpointConfig::new(TransportKind::WebSocket, id, PeerKind::Peer, secret);
        config.limits.max_unauthenticated = capacity;
        config.limits.max_unauthenticated_per_ip = per_ip;
        config.limits.unauthenticated_reserved_for_peers = reserved;
        for (i, ip) in peers.iter().enumerate() {
            let peer = NodeId::new(format!("p{i}")).expect("valid id");
            config
                .peers
                .insert(peer, SocketAddr::new(ip.parse().expect("ip"), 7400));
        }
        Admission::new(&config)
    }

    fn from(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 40000)
    }

    fn is_evicted(ticket: &mut Ticket) -> bool {
        matches!(
            ticket.evicted.as_mut().map(oneshot::Receiver::try_recv),
            Some(Ok(()))
        )
    }

    #[test]
    fn a_full_pool_evicts_the_oldest_silent_connection() {
        let pool = pool(3, 3, 0, &[]);
        let mut tickets: Vec<Ticket> = (0..3).map(|_| pool.admit(from("10.0.0.9"))).collect();
        pool.progressed(tickets[0].id);
        let newest = pool.admit(from("10.0.0.9"));
        assert!(!is_evicted(&mut tickets[0]), "progressed goes last");
        assert!(is_evicted(&mut tickets[1]), "oldest silent goes first");
        assert!(!is_evicted(&mut tickets[2]));
        assert_eq!(pool.len(), 3);
        drop(newest);
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn one_address_only_evicts_itself_beyond_its_share() {
        let pool = pool(8, 2, 0, &[]);
        let mut other = pool.admit(from("10.0.0.1"));
        let mut a: Vec<Ticket> = (0..2).map(|_| pool.admit(from("10.0.0.2"))).collect();
        let _third = pool.admit(from("10.0.0.2"));
        assert!(is_evicted(&mut a[0]));
        assert!(!is_evicted(&mut a[1]));
        assert!(!is_evicted(&mut other));
        assert_eq!(pool.len(), 3);
    }

    #[test]
    fn strangers_never_evict_peers_from_the_reserve() {
        let pool = pool(4, 4, 2, &["10.0.0.2", "10.0.0.3"]);
        let mut peers = [pool.admit(from("10.0.0.2")), pool.admit(from("10.0.0.3"))];
        let mut strangers: Vec<Ticket> = (0..2)
            .map(|i| pool.admit(from(&format!("10.1.0.{i}"))))
            .collect();
        // Full: a stranger takes a stranger's slot, never a peer's.
        let _late = pool.admit(from("10.1.0.9"));
        assert!(is_evicted(&mut strangers[0]));
        assert!(peers.iter_mut().all(|p| !is_evicted(p)));
        // A peer address takes a stranger's slot first.
        let _peer = pool.admit(from("::ffff:10.0.0.2"));
        assert!(is_evicted(&mut strangers[1]));
        assert!(peers.iter_mut().all(|p| !is_evicted(p)));
    }

    #[test]
    fn strangers_take_back_shared_slots_from_peers() {
        let pool = pool(3, 3, 1, &["10.0.0.2"]);
        let mut peers: Vec<Ticket> = (0..3).map(|_| pool.admit(from("10.0.0.2"))).collect();
        let _stranger = pool.admit(from("10.1.0.1"));
        assert!(is_evicted(&mut peers[0]));
        let _second = pool.admit(from("10.1.0.2"));
        assert!(is_evicted(&mut peers[1]));
        // The reserve stays the peers'.
        let _third = pool.admit(from("10.1.0.3"));
        assert!(!is_evicted(&mut peers[2]));
        assert_eq!(pool.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_message_deadline_holds_only_under_pressure() {
        let pool = pool(2, 2, 0, &[]);
        let ticket = pool.admit(from("10.0.0.1"));
        let mut first = ticket.first_message(Duration::from_secs(1));
        let silent = first.within(std::future::pending::<()>());
        // One of two slots taken: a slow first message is waited for (virtual time).
        let waited = tokio::time::timeout(Duration::from_secs(5), silent).await;
        assert!(waited.is_err(), "no deadline without pressure");
        let _second = pool.admit(from("10.0.0.2"));
        let started = tokio::time::Instant::now();
        let result = first.within(std::future::pending::<()>()).await;
        assert!(matches!(result, Err(TransportError::HandshakeTimeout)));
        assert!(started.elapsed() <= Duration::from_secs(1));
        // What arrives in time is passed on.
        let mut first = ticket.first_message(Duration::from_secs(1));
        assert!(matches!(first.within(async { 7 }).await, Ok(7)));
    }

    #[test]
    fn under_pressure_above_half_full() {
        let pool = pool(4, 4, 0, &[]);
        let _a: Vec<Ticket> = (0..2).map(|_| pool.admit(from("10.0.0.1"))).collect();
        assert!(!pool.under_pressure());
        let _b = pool.admit(from("10.0.0.1"));
        assert!(pool.under_pressure());
    }
}
