//! A bare client that speaks the wire protocol step by step, for tests, fuzzing and
//! benchmarks: it can run the real handshake and then misbehave (replay a recorded message,
//! flip bits, send garbage or oversized messages), which an [`crate::Endpoint`] never does.
//! It uses real tokio sockets.

use std::net::{Ipv4Addr, SocketAddr};

use crate::link::{LinkRx, LinkTx, handshake_initiator};
use crate::session::{Body, Credential, Hello, Session};
use crate::{Limits, TokioNet, TransportError, TransportKind};

pub use crate::link::Inbound;

enum RawLink {
    WebSocket(crate::ws::WsTx, crate::ws::WsRx),
    /// The endpoint is kept only to stay alive: dropping it would close the connection.
    Quic(
        crate::quic::QuicTx,
        crate::quic::QuicRx,
        #[allow(dead_code)] quinn::Endpoint,
    ),
}

/// One raw connection to an endpoint.
pub struct RawConn {
    link: RawLink,
    binding: Vec<u8>,
    session: Option<Session>,
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConn")
            .field("authenticated", &self.session.is_some())
            .finish()
    }
}

impl RawConn {
    /// Opens the link (TCP + WebSocket upgrade, or QUIC connection + stream); no handshake.
    pub async fn connect(kind: TransportKind, addr: SocketAddr) -> Result<Self, TransportError> {
        let limits = Limits::default();
        match kind {
            TransportKind::WebSocket => {
                let config = crate::ws::ws_config(limits.max_frame_len * 4);
                let (tx, rx) = crate::ws::connect(&TokioNet, addr, None, config).await?;
                Ok(Self {
                    link: RawLink::WebSocket(tx, rx),
                    binding: b"websocket".to_vec(),
                    session: None,
                })
            }
            TransportKind::Quic => {
                let endpoint = crate::quic::bind(
                    &TokioNet,
                    Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
                    &limits,
                    crate::net::Net::random_seed(&TokioNet),
                )
                .await?;
                let (tx, rx, binding) =
                    crate::quic::connect(&endpoint, addr, limits.max_frame_len * 4).await?;
                Ok(Self {
                    link: RawLink::Quic(tx, rx, endpoint),
                    binding,
                    session: None,
                })
            }
        }
    }

    /// Runs the initiator handshake as `local`, proving `credential`; returns the
    /// responder's hello.
    pub async fn handshake(
        &mut self,
        credential: Credential<'_>,
        local: &Hello,
    ) -> Result<Hello, TransportError> {
        let seed = crate::net::Net::random_seed(&TokioNet);
        let (remote, session) = match &mut self.link {
            RawLink::WebSocket(tx, rx) => {
                handshake_initiator(tx, rx, credential, &self.binding, seed, local, |_| Ok(()))
                    .await?
            }
            RawLink::Quic(tx, rx, _) => {
                handshake_initiator(tx, rx, credential, &self.binding, seed, local, |_| Ok(()))
                    .await?
            }
        };
        self.session = Some(session);
        // As a registered peer does: the remote's reliable frames may come now. Best
        // effort: a remote that closes right after the handshake is the caller's to see.
        let ready = self.sealed(Body::Ready)?;
        let _ = self.send_raw(ready).await;
        Ok(remote)
    }

    fn sealed(&mut self, body: Body) -> Result<Vec<u8>, TransportError> {
        let session = self.session.as_mut().ok_or(TransportError::Closed)?;
        Ok(session.seal(body, &[])?)
    }

    /// Seals `frame` as the next message of the session, without sending it.
    pub fn seal(&mut self, frame: &[u8]) -> Result<Vec<u8>, TransportError> {
        let session = self.session.as_mut().ok_or(TransportError::Closed)?;
        Ok(session.seal(Body::Frame, frame)?)
    }

    /// Sends bytes as one link message, as they are.
    pub async fn send_raw(&mut self, msg: Vec<u8>) -> Result<(), TransportError> {
        match &mut self.link {
            RawLink::WebSocket(tx, _) => tx.send(msg).await,
            RawLink::Quic(tx, _, _) => tx.send(msg).await,
        }
    }

    /// Receives one link message as it is.
    pub async fn recv_raw(&mut self) -> Result<Inbound, TransportError> {
        match &mut self.link {
            RawLink::WebSocket(_, rx) => rx.recv().await,
            RawLink::Quic(_, rx, _) => rx.recv().await,
        }
    }

    /// Receives and opens the next frame, skipping keepalives.
    pub async fn recv_frame(&mut self) -> Result<Vec<u8>, TransportError> {
        loop {
            let inbound = self.recv_raw().await?;
            let session = self.session.as_mut().ok_or(TransportError::Closed)?;
            let (body, payload) = match inbound {
                Inbound::Reliable(msg) => session.open(&msg)?,
                Inbound::Datagram(msg) => session.opener.open_datagram(&msg)?,
            };
            if body == Body::Frame {
                return Ok(payload);
            }
        }
    }

    /// Waits until the remote closes the link (keepalives and frames are read and dropped).
    /// Returns the error that ended it.
    pub async fn closed(&mut self) -> TransportError {
        loop {
            if let Err(error) = self.recv_raw().await {
                return error;
            }
        }
    }
}

/// Opens raw QUIC links from one client endpoint: much cheaper per link than
/// [`RawConn::connect`] (no endpoint, socket and certificate each), for tests that open
/// hundreds of connections.
#[derive(Debug, Clone)]
pub struct QuicDialer {
    endpoint: quinn::Endpoint,
}

impl QuicDialer {
    /// A client endpoint on an unspecified IPv4 address.
    pub async fn new() -> Result<Self, TransportError> {
        let limits = Limits::default();
        let seed = crate::net::Net::random_seed(&TokioNet);
        let endpoint = crate::quic::bind(&TokioNet, None, &limits, seed).await?;
        Ok(Self { endpoint })
    }

    /// Opens a QUIC connection and its stream (nothing is sent on it yet); no handshake.
    pub async fn connect(&self, addr: SocketAddr) -> Result<RawConn, TransportError> {
        let max_frame_len = Limits::default().max_frame_len * 4;
        let (tx, rx, binding) = crate::quic::connect(&self.endpoint, addr, max_frame_len).await?;
        Ok(RawConn {
            link: RawLink::Quic(tx, rx, self.endpoint.clone()),
            binding,
            session: None,
        })
    }
}
