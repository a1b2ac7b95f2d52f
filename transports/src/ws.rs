//! WebSocket transport: one binary message per link message, over `ws://` or `wss://`.

use std::net::SocketAddr;
use std::sync::Arc;

use clustd_core::NodeId;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::link::{
    Inbound, LinkRx, LinkTx, REFUSAL_CODE, REFUSAL_REASON, Via, accept_flow, dial_flow,
    max_link_msg, refused_by_remote,
};
use crate::net::Net;
use crate::registry::Registry;
use crate::{TransportError, tls};

/// Any byte stream: plain TCP or TLS over it, from any [`Net`].
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// No binding for WebSocket: TLS (if any) is terminated by tungstenite's peer, not exported.
const WS_BINDING: &[u8] = b"websocket";

pub(crate) struct WsTx(SplitSink<Ws, Message>);
pub(crate) struct WsRx(SplitStream<Ws>);

fn ws_err(error: tungstenite::Error) -> TransportError {
    match error {
        tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
            size,
            max_size,
        }) => TransportError::Oversized {
            len: size,
            limit: max_size,
        },
        tungstenite::Error::Capacity(e) => TransportError::Protocol(e.to_string()),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            TransportError::Closed
        }
        tungstenite::Error::Io(e) => TransportError::Io(e),
        other => TransportError::WebSocket(other.to_string()),
    }
}

impl LinkTx for WsTx {
    async fn send(&mut self, msg: Vec<u8>) -> Result<(), TransportError> {
        self.0
            .send(Message::Binary(msg.into()))
            .await
            .map_err(ws_err)
    }

    async fn refuse(&mut self) {
        // Sent and flushed, not waited on: the caller drops the link right after, and the
        // remote reads the close frame before the end of the stream.
        let frame = CloseFrame {
            code: CloseCode::from(REFUSAL_CODE),
            reason: REFUSAL_REASON.into(),
        };
        let _ = self.0.send(Message::Close(Some(frame))).await;
    }
}

impl LinkRx for WsRx {
    async fn recv(&mut self) -> Result<Inbound, TransportError> {
        loop {
            match self.0.next().await {
                None => return Err(TransportError::Closed),
                Some(Err(e)) => return Err(ws_err(e)),
                Some(Ok(Message::Binary(bytes))) => return Ok(Inbound::Reliable(bytes.into())),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(Some(frame))))
                    if frame.code == CloseCode::from(REFUSAL_CODE) =>
                {
                    return Err(refused_by_remote());
                }
                Some(Ok(Message::Close(_))) => return Err(TransportError::Closed),
                Some(Ok(Message::Text(_))) => {
                    return Err(TransportError::Protocol("text message".into()));
                }
            }
        }
    }
}

pub(crate) fn ws_config(max_frame_len: usize) -> WebSocketConfig {
    let limit = max_link_msg(max_frame_len);
    // The default read buffer (128 KiB) is zeroed on every read; 4 KiB is near plain TCP.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

/// Opens a WebSocket link to `addr` (TCP, optional TLS, upgrade).
pub(crate) async fn connect<N: Net>(
    net: &N,
    addr: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
    config: WebSocketConfig,
) -> Result<(WsTx, WsRx), TransportError> {
    let tcp = net.tcp_connect(addr).await?;
    let (io, scheme): (Box<dyn Io>, _) = match tls {
        Some(connector) => (
            Box::new(connector.connect(tls::server_name()?, tcp).await?),
            "wss",
        ),
        None => (Box::new(tcp), "ws"),
    };
    client(io, &format!("{scheme}://{addr}/clustd"), config).await
}

/// The WebSocket client handshake over an established byte stream.
pub(crate) async fn client(
    io: Box<dyn Io>,
    url: &str,
    config: WebSocketConfig,
) -> Result<(WsTx, WsRx), TransportError> {
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, io, Some(config))
        .await
        .map_err(ws_err)?;
    let (tx, rx) = ws.split();
    Ok((WsTx(tx), WsRx(rx)))
}

/// The WebSocket server handshake over an accepted byte stream.
pub(crate) async fn server(
    io: Box<dyn Io>,
    config: WebSocketConfig,
) -> Result<(WsTx, WsRx), TransportError> {
    let ws = tokio_tungstenite::accept_async_with_config(io, Some(config))
        .await
        .map_err(ws_err)?;
    let (tx, rx) = ws.split();
    Ok((WsTx(tx), WsRx(rx)))
}

pub(crate) struct WsBackend<N: Net> {
    net: N,
    connector: Option<tokio_rustls::TlsConnector>,
    config: WebSocketConfig,
}

impl<N: Net> WsBackend<N> {
    pub(crate) async fn start(
        net: N,
        registry: &Arc<Registry>,
    ) -> Result<(Self, Option<SocketAddr>), TransportError> {
        let config = ws_config(registry.config.limits.max_frame_len);
        let acceptor = match &registry.config.tls {
            Some(files) => {
                let (certs, key) = tls::load(files)?;
                let server = tls::server_config(certs, key, false)?;
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
            }
            None => None,
        };
        let connector = if registry.config.dial_tls {
            Some(tokio_rustls::TlsConnector::from(Arc::new(
                tls::client_config(false)?,
            )))
        } else {
            None
        };
        let mut local_addr = None;
        if let Some(listen) = registry.config.listen {
            let listener = net.tcp_bind(listen).await?;
            local_addr = Some(net.tcp_local_addr(&listener)?);
            registry.spawn(serve(
                net.clone(),
                registry.clone(),
                listener,
                acceptor,
                config,
            ));
        }
        Ok((
            Self {
                net,
                connector,
                config,
            },
            local_addr,
        ))
    }

    pub(crate) async fn dial_once(
        &self,
        registry: &Arc<Registry>,
        addr: SocketAddr,
        expected: Option<&NodeId>,
    ) -> Result<(), TransportError> {
        dial_flow(registry, expected, Via::Network, async {
            let (tx, rx) = connect(&self.net, addr, self.connector.as_ref(), self.config).await?;
            Ok((tx, rx, WS_BINDING.to_vec()))
        })
        .await
    }
}

async fn serve<N: Net>(
    net: N,
    registry: Arc<Registry>,
    listener: N::Listener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    config: WebSocketConfig,
) {
    let stopped = registry.stopped();
    tokio::pin!(stopped);
    // Out of file descriptors can last (a flood): warn when it starts, not on every retry.
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stopped => return,
            accepted = net.tcp_accept(&listener) => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(accepted) => {
                accept_failing = false;
                accepted
            }
            Err(error) => {
                if accept_failing {
                    tracing::debug!(%error, "accept failed");
                } else {
                    tracing::warn!(%error, "accept failed (further failures are not logged until one succeeds)");
                }
                accept_failing = true;
                // E.g. out of file descriptors: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let ticket = registry.unauthenticated.admit(addr);
        let acceptor = acceptor.clone();
        let establish = async move {
            let io: Box<dyn Io> = match acceptor {
                Some(acceptor) => Box::new(acceptor.accept(tcp).await?),
                None => Box::new(tcp),
            };
            let (tx, rx) = server(io, config).await?;
            Ok((tx, rx, WS_BINDING.to_vec()))
        };
        registry.spawn(accept_flow(
            registry.clone(),
            addr,
            Via::Network,
            ticket,
            None,
            establish,
        ));
    }
}
