//! The endpoint: the registry of authenticated connections keyed by node id, the dial loops
//! that keep configured peers connected, events to the daemon, and shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use clustd_core::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::sync::{mpsc, watch};

use crate::error::{RefuseReason, SendError};
use crate::net::Net;
use crate::queue::{Pushed, Replaced, SendQueue};
use crate::session::Hello;
use crate::{EndpointConfig, PeerKind, SendClass, TransportError, TransportKind};

/// What the endpoint tells the daemon.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportEvent {
    /// An authenticated connection to `id` now exists (after a `Disconnected`, or the first).
    Connected {
        /// Authenticated node id.
        id: NodeId,
        /// Daemon or driver.
        kind: PeerKind,
        /// The peer's process, from the kernel's credentials of the local driver socket
        /// (`SO_PEERCRED`: not something the peer says) at accept; `None` over the network.
        process: Option<crate::PeerProcess>,
    },
    /// The connection to `id` is gone (or was replaced; a `Connected` follows then). Reliable
    /// frames may have been lost only when this is announced; when the duplicate the other
    /// side dialed replaced it, nothing was (the pair is announced all the same).
    Disconnected {
        /// Authenticated node id.
        id: NodeId,
        /// Daemon or driver.
        kind: PeerKind,
    },
    /// A frame from an authenticated connection.
    Frame {
        /// Sender.
        from: NodeId,
        /// Daemon or driver.
        kind: PeerKind,
        /// The frame as the sender passed it to [`Endpoint::send`].
        frame: Vec<u8>,
    },
    /// A connection failed before it was authenticated (wrong secret, refused, timeout...).
    /// Best effort: dropped when the event queue is full, so a flood cannot fill it.
    HandshakeFailed {
        /// Remote address.
        addr: SocketAddr,
        /// What went wrong (never contains the secret).
        error: TransportError,
    },
}

struct Conn {
    generation: u64,
    kind: PeerKind,
    dialer: NodeId,
    queue: Arc<SendQueue>,
    /// The duplicate this one replaced, while that one still delivers what the remote sent
    /// on it before the swap (until the remote's goodbye). This one says `Ready` after.
    draining: Option<u64>,
}

/// State shared by the endpoint handle and its tasks; not generic over the transport.
pub(crate) struct Shared {
    pub(crate) config: EndpointConfig,
    events: mpsc::Sender<TransportEvent>,
    conns: Mutex<BTreeMap<NodeId, Conn>>,
    /// Serializes registry changes with the events announcing them, so a `Disconnected`
    /// and the `Connected` of a replacement are always seen in that order.
    status_order: tokio::sync::Mutex<()>,
    /// Bumped on every registry change; dial loops wait on it.
    changed: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    rng: Mutex<StdRng>,
    next_generation: AtomicU64,
    pub(crate) unauthenticated: Arc<crate::admission::Admission>,
    /// Every task holds a clone; shutdown waits until all are dropped.
    alive: Mutex<Option<mpsc::Sender<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are short and leave the data consistent, so poisoning is ignored.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn hello(&self) -> Hello {
        Hello {
            id: self.config.local_id.clone(),
            kind: self.config.local_kind,
        }
    }

    /// A fresh seed from the endpoint's rng (Noise ephemeral keys).
    pub(crate) fn seed(&self) -> [u8; 32] {
        let mut seed = [0u8; 32];
        lock(&self.rng).fill_bytes(&mut seed);
        seed
    }

    pub(crate) fn check_outbound(
        &self,
        remote: &Hello,
        expected: Option<&NodeId>,
    ) -> Result<(), TransportError> {
        if let Some(expected) = expected
            && *expected != remote.id
        {
            return Err(TransportError::UnexpectedNode {
                expected: expected.clone(),
                got: remote.id.clone(),
            });
        }
        let reason = if remote.kind != PeerKind::Peer {
            Some(RefuseReason::KindNotAccepted)
        } else if expected.is_none() && self.config.peer_keys.contains_key(&remote.id) {
            // Dialed by address with the cluster secret: a keyed node proved nothing.
            Some(RefuseReason::KeyRequired)
        } else if remote.id == self.config.local_id {
            Some(RefuseReason::SameId)
        } else if self.config.local_kind == PeerKind::Peer
            && !self.config.peers.contains_key(&remote.id)
        {
            Some(RefuseReason::UnknownNode)
        } else {
            None
        };
        match reason {
            Some(reason) => Err(TransportError::RefusedRemote {
                id: remote.id.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let Some(token) = lock(&self.alive).clone() else {
            return;
        };
        tokio::spawn(async move {
            task.await;
            drop(token);
        });
    }

    pub(crate) fn handshake_failed(&self, addr: SocketAddr, error: TransportError) {
        tracing::debug!(local = %self.config.local_id, %addr, %error, "handshake failed");
        let _ = self
            .events
            .try_send(TransportEvent::HandshakeFailed { addr, error });
    }

    fn is_connected(&self, id: &NodeId) -> bool {
        lock(&self.conns).contains_key(id)
    }

    /// Adds an authenticated connection. When one with the same id exists, exactly one is
    /// kept: if both were dialed by the same side the newer wins (the older is most likely
    /// dead: the remote restarted); otherwise the one dialed by the lower node id wins, which
    /// both ends compute alike. `None`: this one lost (or we are stopping) and must close;
    /// nothing it carries is delivered (the remote sent no frame that must arrive on it: it
    /// waits for our `Ready`, which a loser never sends). Both connections proved the same
    /// credential, so this only settles two dials of the same node, never who that node is.
    ///
    /// A duplicate replaced by the other side's dial keeps delivering until the remote's
    /// goodbye (the remote may have used it), and the winner says `Ready` only after that
    /// (see [`Shared::drained`]), so the remote's frames arrive once and in order.
    pub(crate) async fn register(
        &self,
        remote: &Hello,
        dialer: NodeId,
        process: Option<crate::PeerProcess>,
    ) -> Option<(u64, Arc<SendQueue>)> {
        let _order = self.status_order.lock().await;
        if self.is_stopped() {
            return None;
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(SendQueue::new(self.config.limits.send_queue));
        let replaced = {
            let mut conns = lock(&self.conns);
            // The handshake refused it already unless two raced for the last slot.
            if remote.kind == PeerKind::Driver
                && !conns.contains_key(&remote.id)
                && conns
                    .values()
                    .filter(|c| c.kind == PeerKind::Driver)
                    .count()
                    >= self.config.limits.max_drivers
            {
                return None;
            }
            let mut how = Replaced::Redialed;
            if let Some(existing) = conns.get(&remote.id) {
                let lower = std::cmp::min(&self.config.local_id, &remote.id);
                if existing.dialer != dialer {
                    if dialer != *lower {
                        tracing::debug!(local = %self.config.local_id, peer = %remote.id, "duplicate connection: keeping the other");
                        return None;
                    }
                    how = Replaced::Duplicate;
                }
            }
            let conn = Conn {
                generation,
                kind: remote.kind,
                dialer,
                queue: queue.clone(),
                draining: None,
            };
            let old = conns.insert(remote.id.clone(), conn);
            if let (Some(old), Replaced::Duplicate) = (&old, how)
                && let Some(conn) = conns.get_mut(&remote.id)
            {
                conn.draining = Some(old.generation);
            }
            old.map(|old| (old, how))
        };
        if let Some((old, how)) = replaced {
            queue.adopt(old.queue.replace(how));
            tracing::debug!(local = %self.config.local_id, peer = %remote.id, "connection replaced by a newer one");
            let _ = self
                .events
                .send(TransportEvent::Disconnected {
                    id: remote.id.clone(),
                    kind: old.kind,
                })
                .await;
        }
        tracing::debug!(local = %self.config.local_id, peer = %remote.id, kind = ?remote.kind, "connected");
        let _ = self
            .events
            .send(TransportEvent::Connected {
                id: remote.id.clone(),
                kind: remote.kind,
                process,
            })
            .await;
        self.changed.send_modify(|v| *v += 1);
        Some((generation, queue))
    }

    /// Whether a driver connection `remote` would fit under `Limits::max_drivers` now
    /// (a replacement for a connected id always does). Checked again on registration.
    pub(crate) fn room_for(&self, remote: &Hello) -> Result<(), RefuseReason> {
        let conns = lock(&self.conns);
        let full = remote.kind == PeerKind::Driver
            && !conns.contains_key(&remote.id)
            && conns
                .values()
                .filter(|c| c.kind == PeerKind::Driver)
                .count()
                >= self.config.limits.max_drivers;
        if full {
            Err(RefuseReason::TooManyDrivers)
        } else {
            Ok(())
        }
    }

    /// Resolves once connection `generation` to `id` has no duplicate draining before it
    /// (at once for most), or is gone; bounded by the handshake timeout, the most a
    /// live remote takes to register the winner and say goodbye on the loser.
    /// `false` when the bound ran out first: the caller must close the connection rather
    /// than say `Ready` (what the duplicate still carries would arrive after newer frames).
    pub(crate) async fn drained(&self, id: &NodeId, generation: u64) -> bool {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                changed.borrow_and_update();
                let draining = lock(&self.conns)
                    .get(id)
                    .is_some_and(|c| c.generation == generation && c.draining.is_some());
                if !draining || changed.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(self.config.limits.handshake_timeout, wait)
            .await
            .is_ok()
    }

    /// Removes connection `generation` to `remote` when it ends. `ended_by_remote`: its
    /// goodbye or close ended it, not one of our bounds (a stall).
    pub(crate) async fn deregister(&self, remote: &Hello, generation: u64, ended_by_remote: bool) {
        let _order = self.status_order.lock().await;
        let removed = {
            let mut conns = lock(&self.conns);
            match conns.get_mut(&remote.id) {
                Some(conn) if conn.generation == generation => conns.remove(&remote.id),
                Some(conn) if conn.draining == Some(generation) => {
                    // A replaced duplicate delivered all it will: its successor may say
                    // Ready. Unless we cut it (it stalled before the remote's goodbye):
                    // then frames may be lost on it, and only a real disconnect may say
                    // so, so the successor closes too (a `Disconnected` follows).
                    if !ended_by_remote {
                        conn.queue.close();
                    }
                    conn.draining = None;
                    drop(conns);
                    self.changed.send_modify(|v| *v += 1);
                    None
                }
                _ => None,
            }
        };
        if let Some(conn) = removed {
            tracing::debug!(local = %self.config.local_id, peer = %remote.id, "disconnected");
            let _ = self
                .events
                .send(TransportEvent::Disconnected {
                    id: remote.id.clone(),
                    kind: conn.kind,
                })
                .await;
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Hands a frame to the daemon, if the connection it came on is still the registered
    /// one or the duplicate it replaced, until that one's goodbye (its successor carries
    /// nothing reliable before: see [`Shared::register`]). Any other replaced connection's
    /// frames are dropped: two connections never both speak for one node.
    pub(crate) async fn deliver(
        &self,
        remote: &Hello,
        generation: u64,
        frame: Vec<u8>,
    ) -> Result<(), TransportError> {
        let event = TransportEvent::Frame {
            from: remote.id.clone(),
            kind: remote.kind,
            frame,
        };
        // Room first, then the check and the enqueue under the registry lock: a replacement
        // registers under that lock before it announces itself, so a frame of the old
        // connection is either queued before that or not at all.
        let permit = self
            .events
            .reserve()
            .await
            .map_err(|_| TransportError::Closed)?;
        let conns = lock(&self.conns);
        if conns
            .get(&remote.id)
            .is_none_or(|conn| conn.generation != generation && conn.draining != Some(generation))
        {
            return Err(TransportError::Closed);
        }
        permit.send(event);
        drop(conns);
        Ok(())
    }

    fn backoff_delay(&self, backoff: Duration) -> Duration {
        // Equal jitter: between half and all of the current backoff.
        let half = backoff / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_nanos(lock(&self.rng).random_range(0..nanos))
    }
}

/// The transport-specific half: how to dial and how to serve.
pub(crate) enum Backend<N: Net> {
    WebSocket(crate::ws::WsBackend<N>),
    Quic(crate::quic::QuicBackend),
}

impl<N: Net> Backend<N> {
    async fn dial_once(
        &self,
        shared: &Arc<Shared>,
        addr: SocketAddr,
        expected: Option<&NodeId>,
    ) -> Result<(), TransportError> {
        match self {
            Self::WebSocket(ws) => ws.dial_once(shared, addr, expected).await,
            Self::Quic(quic) => quic.dial_once(shared, addr, expected).await,
        }
    }
}

/// What a dial loop reaches.
#[derive(Clone)]
enum Target {
    /// A network address (the configured transport).
    Addr(SocketAddr),
    /// A daemon's local driver socket.
    Socket(std::path::PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Socket(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Keeps one remote connected: dial, run the session, back off with jitter, repeat.
async fn dial_loop<N: Net>(
    shared: Arc<Shared>,
    backend: Arc<Backend<N>>,
    target: Target,
    expected: Option<NodeId>,
) {
    let limits = shared.config.limits.clone();
    let mut backoff = limits.backoff_min;
    let mut changed = shared.changed.subscribe();
    let stopped = shared.stopped();
    tokio::pin!(stopped);
    // When both ends start at once both dial, and one connection must lose (nothing is
    // lost with it, but the swap costs a round trip or two). The higher id gives the lower
    // id's dial, which wins anyway, a head start, so that race is rare.
    if expected
        .as_ref()
        .is_some_and(|id| *id < shared.config.local_id)
    {
        let delay = shared.backoff_delay(limits.backoff_min);
        tokio::select! {
            biased;
            () = &mut stopped => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
    loop {
        // The remote may have dialed us: no second connection while one exists.
        if let Some(id) = &expected {
            loop {
                changed.borrow_and_update();
                if !shared.is_connected(id) {
                    break;
                }
                tokio::select! {
                    biased;
                    () = &mut stopped => return,
                    _ = changed.changed() => {}
                }
            }
        }
        if shared.is_stopped() {
            return;
        }
        let dial = async {
            match &target {
                Target::Addr(addr) => backend.dial_once(&shared, *addr, expected.as_ref()).await,
                Target::Socket(path) => crate::local::dial_once(&shared, path).await,
            }
        };
        let attempt = tokio::select! {
            biased;
            () = &mut stopped => return,
            result = dial => result,
        };
        match attempt {
            Ok(()) => backoff = limits.backoff_min,
            Err(error) => {
                tracing::debug!(%target, %error, "dial failed");
                let addr = match &target {
                    Target::Addr(addr) => *addr,
                    Target::Socket(_) => crate::local::LOCAL_ADDR,
                };
                shared.handshake_failed(addr, error);
            }
        }
        let delay = shared.backoff_delay(backoff);
        backoff = (backoff * 2).min(limits.backoff_max);
        tokio::select! {
            biased;
            () = &mut stopped => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// A running transport endpoint. Cheap to clone; all clones drive the same endpoint.
#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<Shared>,
    local_addr: Option<SocketAddr>,
    dial: Arc<dyn Fn(Target) + Send + Sync>,
    finished: Arc<tokio::sync::Mutex<mpsc::Receiver<()>>>,
    quic: Option<quinn::Endpoint>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_id", &self.shared.config.local_id)
            .field("kind", &self.shared.config.kind)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Starts the endpoint: binds `listen` (if any), starts dialing every configured peer,
    /// and returns the handle and the event stream.
    pub async fn start<N: Net>(
        net: N,
        config: EndpointConfig,
    ) -> Result<(Self, mpsc::Receiver<TransportEvent>), TransportError> {
        if config.peers.contains_key(&config.local_id) {
            return Err(TransportError::Config(
                "peers must not contain the local id".into(),
            ));
        }
        if let Some(id) = config
            .peer_keys
            .keys()
            .find(|id| !config.peers.contains_key(*id))
        {
            return Err(TransportError::Config(format!(
                "a key is configured for {id}, which is not a peer"
            )));
        }
        if !config.peer_keys.is_empty() && config.node_key.is_none() {
            return Err(TransportError::Config(
                "peers have node keys but this node has none: set its node key".into(),
            ));
        }
        if config.driver_socket.is_some() && !config.accept_drivers {
            return Err(TransportError::Config(
                "a driver socket needs accept_drivers".into(),
            ));
        }
        if config.local_kind == PeerKind::Driver
            && (config.listen.is_some() || config.accept_drivers)
        {
            return Err(TransportError::Config(
                "a driver neither listens nor accepts".into(),
            ));
        }
        let mut rng = StdRng::from_seed(net.random_seed());
        let mut quic_seed = [0u8; 32];
        rng.fill_bytes(&mut quic_seed);
        let (events_tx, events_rx) = mpsc::channel(config.limits.event_queue.max(1));
        let (alive_tx, alive_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            unauthenticated: crate::admission::Admission::new(&config),
            config,
            events: events_tx,
            conns: Mutex::new(BTreeMap::new()),
            status_order: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            rng: Mutex::new(rng),
            next_generation: AtomicU64::new(0),
            alive: Mutex::new(Some(alive_tx)),
        });
        let (backend, local_addr, quic) = match shared.config.kind {
            TransportKind::WebSocket => {
                let (ws, local_addr) = crate::ws::WsBackend::start(net, &shared).await?;
                (Backend::WebSocket(ws), local_addr, None)
            }
            TransportKind::Quic => {
                let (quic, local_addr) =
                    crate::quic::QuicBackend::start(&net, &shared, quic_seed).await?;
                let endpoint = quic.endpoint().clone();
                (Backend::Quic(quic), local_addr, Some(endpoint))
            }
        };
        let backend = Arc::new(backend);
        if let Some(socket) = &shared.config.driver_socket {
            let listener = crate::local::bind(socket)?;
            shared.spawn(crate::local::serve(shared.clone(), listener));
        }
        for (id, addr) in &shared.config.peers {
            shared.spawn(dial_loop(
                shared.clone(),
                backend.clone(),
                Target::Addr(*addr),
                Some(id.clone()),
            ));
        }
        let dial = {
            let shared = shared.clone();
            Arc::new(move |target| {
                shared.spawn(dial_loop(shared.clone(), backend.clone(), target, None));
            })
        };
        let endpoint = Self {
            shared,
            local_addr,
            dial,
            finished: Arc::new(tokio::sync::Mutex::new(alive_rx)),
            quic,
        };
        Ok((endpoint, events_rx))
    }

    /// The address we listen on (with the real port when `listen` had port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Our node id.
    pub fn local_id(&self) -> &NodeId {
        &self.shared.config.local_id
    }

    /// Dials `addr` without knowing the remote id (drivers reaching their daemon) and keeps
    /// it connected, with backoff, until shutdown. The remote id arrives in `Connected`.
    pub fn dial(&self, addr: SocketAddr) {
        (self.dial)(Target::Addr(addr));
    }

    /// Like [`Endpoint::dial`], to a daemon's local driver socket (a driver on the daemon's
    /// machine; no secret: the socket's permissions decide who may connect).
    pub fn dial_socket(&self, path: impl Into<std::path::PathBuf>) {
        (self.dial)(Target::Socket(path.into()));
    }

    /// Queues `frame` for `to`; never blocks. See [`SendClass`] for what may be dropped.
    pub fn send(&self, to: &NodeId, frame: Vec<u8>, class: SendClass) -> Result<(), SendError> {
        let limit = self.shared.config.limits.max_frame_len;
        if frame.len() > limit {
            return Err(SendError::Oversized {
                len: frame.len(),
                limit,
            });
        }
        let queue = lock(&self.shared.conns)
            .get(to)
            .map(|conn| conn.queue.clone());
        let Some(queue) = queue else {
            return Err(SendError::NotConnected(to.clone()));
        };
        match queue.push(class, frame) {
            Pushed::Queued => Ok(()),
            Pushed::Closed => Err(SendError::NotConnected(to.clone())),
            Pushed::Full => {
                tracing::warn!(peer = %to, "send queue full: closing the slow connection");
                Err(SendError::Congested(to.clone()))
            }
        }
    }

    /// The authenticated connections right now, ordered by id.
    pub fn connected(&self) -> Vec<(NodeId, PeerKind)> {
        lock(&self.shared.conns)
            .iter()
            .map(|(id, conn)| (id.clone(), conn.kind))
            .collect()
    }

    /// Closes every connection and listener and waits for the endpoint's tasks to end.
    pub async fn shutdown(self) {
        self.shared.shutdown.send_replace(true);
        for conn in lock(&self.shared.conns).values() {
            conn.queue.close();
        }
        drop(lock(&self.shared.alive).take());
        if let Some(quic) = &self.quic {
            quic.close(0u32.into(), b"shutdown");
        }
        let mut finished = self.finished.lock().await;
        while finished.recv().await.is_some() {}
        if let Some(quic) = &self.quic {
            let _ = tokio::time::timeout(Duration::from_secs(1), quic.wait_idle()).await;
        }
    }
}
