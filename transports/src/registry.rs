//! The registry of authenticated connections keyed by node id: who is connected, which of
//! two connections of one node is kept, whose frames are delivered, and the events that
//! announce each change, in order. It also holds what every task of the endpoint shares
//! (config, the event channel, the shutdown signal, the rng, the admission pool), so the
//! backends (WebSocket, QUIC, the local socket) and the link code depend on it, never on
//! the endpoint handle.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use clustd_core::NodeId;
use rand::RngCore;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch};

use crate::PeerKind;
use crate::admission::Admission;
use crate::backoff::Backoff;
use crate::config::EndpointConfig;
use crate::error::{RefuseReason, TransportError};
use crate::event::TransportEvent;
use crate::process::PeerProcess;
use crate::queue::{Replaced, SendQueue};
use crate::session::Hello;

struct Conn {
    generation: u64,
    kind: PeerKind,
    dialer: NodeId,
    queue: Arc<SendQueue>,
    /// The duplicate this one replaced, while that one still delivers what the remote sent
    /// on it before the swap (until the remote's goodbye). This one says `Ready` after.
    draining: Option<u64>,
}

/// The registry of one endpoint's connections and what the handle shares with its tasks
/// (config, events, shutdown, the rng); not generic over the transport.
pub(crate) struct Registry {
    pub(crate) config: EndpointConfig,
    events: mpsc::Sender<TransportEvent>,
    conns: Mutex<BTreeMap<NodeId, Conn>>,
    /// Serializes registry changes with the events announcing them, so a `Disconnected`
    /// and the `Connected` of a replacement are always seen in that order.
    status_order: tokio::sync::Mutex<()>,
    /// Bumped on every registry change; dial loops wait on it.
    changed: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    rng: SharedRng,
    next_generation: AtomicU64,
    pub(crate) unauthenticated: Arc<Admission>,
    /// Every task holds a clone; shutdown waits until all are dropped.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    /// Ends (yields `None`) once every clone of `alive` is dropped.
    finished: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

/// The endpoint's one rng, drawn from by every task (Noise ephemeral keys, redial jitter):
/// one stream from [`crate::Net::random_seed`], so a simulated run repeats.
#[derive(Clone)]
pub(crate) struct SharedRng(Arc<Mutex<StdRng>>);

impl SharedRng {
    fn lock(&self) -> MutexGuard<'_, StdRng> {
        lock(&self.0)
    }
}

impl RngCore for SharedRng {
    fn next_u32(&mut self) -> u32 {
        self.lock().next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.lock().next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.lock().fill_bytes(dst);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are short and leave the data consistent, so poisoning is ignored.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// An empty registry for `config`, drawing its randomness from `rng`, and the stream of
    /// its events (capacity `Limits::event_queue`).
    pub(crate) fn new(
        config: EndpointConfig,
        rng: StdRng,
    ) -> (Arc<Self>, mpsc::Receiver<TransportEvent>) {
        let (events, events_rx) = mpsc::channel(config.limits.event_queue.max(1));
        let (alive, finished) = mpsc::channel(1);
        let registry = Arc::new(Self {
            unauthenticated: Admission::new(&config),
            config,
            events,
            conns: Mutex::new(BTreeMap::new()),
            status_order: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            rng: SharedRng(Arc::new(Mutex::new(rng))),
            next_generation: AtomicU64::new(0),
            alive: Mutex::new(Some(alive)),
            finished: tokio::sync::Mutex::new(finished),
        });
        (registry, events_rx)
    }

    pub(crate) fn hello(&self) -> Hello {
        Hello {
            id: self.config.local_id.clone(),
            kind: self.config.local_kind,
        }
    }

    /// A fresh seed from the endpoint's rng (Noise ephemeral keys).
    pub(crate) fn seed(&self) -> [u8; 32] {
        let mut seed = [0u8; 32];
        self.rng.lock().fill_bytes(&mut seed);
        seed
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

    pub(crate) fn is_connected(&self, id: &NodeId) -> bool {
        lock(&self.conns).contains_key(id)
    }

    /// The send queue of the connection to `id`, if there is one.
    pub(crate) fn queue(&self, id: &NodeId) -> Option<Arc<SendQueue>> {
        lock(&self.conns).get(id).map(|conn| conn.queue.clone())
    }

    /// The authenticated connections right now, ordered by id.
    pub(crate) fn connected(&self) -> Vec<(NodeId, PeerKind)> {
        lock(&self.conns)
            .iter()
            .map(|(id, conn)| (id.clone(), conn.kind))
            .collect()
    }

    /// Changes whenever a connection is added, replaced, drained or removed.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// How a dial loop waits between attempts: from `Limits::backoff_min` doubling up to
    /// `Limits::backoff_max`, jittered from the endpoint's rng.
    pub(crate) fn redial_backoff(&self) -> Backoff<SharedRng> {
        let limits = &self.config.limits;
        Backoff::with_rng(limits.backoff_min, limits.backoff_max, self.rng.clone())
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
    /// (see [`Registry::drained`]), so the remote's frames arrive once and in order.
    pub(crate) async fn register(
        &self,
        remote: &Hello,
        dialer: NodeId,
        process: Option<PeerProcess>,
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
            old.map(|old| {
                // Replaced under the registry lock (conns, then queue: the order `deregister`
                // and `stop` use), so `draining` is decided in one step; the queue's lock
                // orders this with `read_loop` recording the remote's goodbye.
                let handover = old.queue.replace(how);
                // A duplicate delivers until the remote's goodbye, unless that came already
                // (the remote registered this one first): then its reader is done, and
                // nothing else would end the wait (see `drained`).
                if how == Replaced::Duplicate
                    && !handover.remote_left
                    && let Some(conn) = conns.get_mut(&remote.id)
                {
                    conn.draining = Some(old.generation);
                }
                (old, handover)
            })
        };
        if let Some((old, handover)) = replaced {
            queue.adopt(handover);
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
    /// nothing reliable before: see [`Registry::register`]). Any other replaced connection's
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

    /// Stops the endpoint's tasks and closes every connection (without waiting: see
    /// [`Registry::tasks_ended`]). Nothing registers afterwards.
    pub(crate) fn stop(&self) {
        self.shutdown.send_replace(true);
        for conn in lock(&self.conns).values() {
            conn.queue.close();
        }
        drop(lock(&self.alive).take());
    }

    /// Resolves once every task started with [`Registry::spawn`] has ended (after
    /// [`Registry::stop`]).
    pub(crate) async fn tasks_ended(&self) {
        let mut finished = self.finished.lock().await;
        while finished.recv().await.is_some() {}
    }
}
