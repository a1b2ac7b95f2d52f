//! The endpoint handle: starts a backend (WebSocket or QUIC) and the local driver socket
//! over one registry of connections, runs the dial loops that keep configured peers
//! connected, takes the daemon's frames to send, and shuts it all down.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use clustd_core::NodeId;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::mpsc;

use crate::error::SendError;
use crate::event::TransportEvent;
use crate::net::Net;
use crate::queue::Pushed;
use crate::registry::Registry;
use crate::{EndpointConfig, PeerKind, SendClass, TransportError, TransportKind};

/// The transport-specific half: how to dial and how to serve.
enum Backend<N: Net> {
    WebSocket(crate::ws::WsBackend<N>),
    Quic(crate::quic::QuicBackend),
}

impl<N: Net> Backend<N> {
    /// Starts the configured transport (listening if `listen` is set); `seed` keys what the
    /// transport draws itself (QUIC: its rng, certificate key and tokens).
    async fn start(
        net: N,
        registry: &Arc<Registry>,
        seed: [u8; 32],
    ) -> Result<(Self, Option<SocketAddr>), TransportError> {
        Ok(match registry.config.kind {
            TransportKind::WebSocket => {
                let (ws, local_addr) = crate::ws::WsBackend::start(net, registry).await?;
                (Self::WebSocket(ws), local_addr)
            }
            TransportKind::Quic => {
                let (quic, local_addr) =
                    crate::quic::QuicBackend::start(&net, registry, seed).await?;
                (Self::Quic(quic), local_addr)
            }
        })
    }

    async fn dial_once(
        &self,
        registry: &Arc<Registry>,
        addr: SocketAddr,
        expected: Option<&NodeId>,
    ) -> Result<(), TransportError> {
        match self {
            Self::WebSocket(ws) => ws.dial_once(registry, addr, expected).await,
            Self::Quic(quic) => quic.dial_once(registry, addr, expected).await,
        }
    }
}

/// What the handle asks of a backend when it shuts down, around waiting for the
/// registry's tasks: the transport's own teardown, whatever it is.
trait Teardown: Send + Sync {
    /// Called once the registry stopped, before its tasks are waited for: closes the
    /// transport's own sockets at once (QUIC tells every connection it is closing).
    fn close(&self);
    /// Called once every task ended: waits, bounded, until the remotes have been told.
    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl<N: Net> Teardown for Backend<N> {
    fn close(&self) {
        match self {
            Self::WebSocket(_) => {}
            Self::Quic(quic) => quic.close(),
        }
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        match self {
            Self::WebSocket(_) => Box::pin(async {}),
            Self::Quic(quic) => Box::pin(quic.closed()),
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
    registry: Arc<Registry>,
    backend: Arc<Backend<N>>,
    target: Target,
    expected: Option<NodeId>,
) {
    let mut backoff = registry.redial_backoff();
    let mut changed = registry.changes();
    let stopped = registry.stopped();
    tokio::pin!(stopped);
    // When both ends start at once both dial, and one connection must lose (nothing is
    // lost with it, but the swap costs a round trip or two). The higher id gives the lower
    // id's dial, which wins anyway, a head start, so that race is rare.
    if expected
        .as_ref()
        .is_some_and(|id| *id < registry.config.local_id)
    {
        let delay = backoff.initial_delay();
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
                if !registry.is_connected(id) {
                    break;
                }
                tokio::select! {
                    biased;
                    () = &mut stopped => return,
                    _ = changed.changed() => {}
                }
            }
        }
        if registry.is_stopped() {
            return;
        }
        let dial = async {
            match &target {
                Target::Addr(addr) => backend.dial_once(&registry, *addr, expected.as_ref()).await,
                Target::Socket(path) => crate::local::dial_once(&registry, path).await,
            }
        };
        let attempt = tokio::select! {
            biased;
            () = &mut stopped => return,
            result = dial => result,
        };
        match attempt {
            Ok(()) => backoff.reset(),
            Err(error) => {
                tracing::debug!(%target, %error, "dial failed");
                let addr = match &target {
                    Target::Addr(addr) => *addr,
                    Target::Socket(_) => crate::local::LOCAL_ADDR,
                };
                registry.handshake_failed(addr, error);
            }
        }
        let delay = backoff.next_delay();
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
    registry: Arc<Registry>,
    local_addr: Option<SocketAddr>,
    dial: Arc<dyn Fn(Target) + Send + Sync>,
    backend: Arc<dyn Teardown>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_id", &self.registry.config.local_id)
            .field("kind", &self.registry.config.kind)
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
        // Drawn whichever the transport, so the rest of the rng's stream does not depend on it.
        let mut backend_seed = [0u8; 32];
        rng.fill_bytes(&mut backend_seed);
        let (registry, events_rx) = Registry::new(config, rng);
        let (backend, local_addr) = Backend::start(net, &registry, backend_seed).await?;
        let backend = Arc::new(backend);
        if let Some(socket) = &registry.config.driver_socket {
            let listener = crate::local::bind(socket)?;
            registry.spawn(crate::local::serve(registry.clone(), listener));
        }
        for (id, addr) in &registry.config.peers {
            registry.spawn(dial_loop(
                registry.clone(),
                backend.clone(),
                Target::Addr(*addr),
                Some(id.clone()),
            ));
        }
        let dial = {
            let registry = registry.clone();
            let backend = backend.clone();
            Arc::new(move |target| {
                registry.spawn(dial_loop(registry.clone(), backend.clone(), target, None));
            })
        };
        let endpoint = Self {
            registry,
            local_addr,
            dial,
            backend,
        };
        Ok((endpoint, events_rx))
    }

    /// The address we listen on (with the real port when `listen` had port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Our node id.
    pub fn local_id(&self) -> &NodeId {
        &self.registry.config.local_id
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
        let limit = self.registry.config.limits.max_frame_len;
        if frame.len() > limit {
            return Err(SendError::Oversized {
                len: frame.len(),
                limit,
            });
        }
        let Some(queue) = self.registry.queue(to) else {
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
        self.registry.connected()
    }

    /// Closes every connection and listener and waits for the endpoint's tasks to end.
    pub async fn shutdown(self) {
        self.registry.stop();
        self.backend.close();
        self.registry.tasks_ended().await;
        self.backend.closed().await;
    }
}
