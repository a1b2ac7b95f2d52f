//! QUIC transport: one bidirectional stream per connection carrying length-prefixed link
//! messages (u32, big endian), and QUIC datagrams for heartbeats. The Noise prologue binds
//! the handshake to this QUIC connection through a TLS exporter value.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clustd_core::NodeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::link::{
    Inbound, LinkRx, LinkTx, REFUSAL_CODE, REFUSAL_REASON, Via, accept_flow, dial_flow,
    max_link_msg, refused_by_remote,
};
use crate::net::Net;
use crate::registry::Registry;
use crate::{Limits, TransportError, tls};

const EXPORTER_LABEL: &[u8] = b"EXPORTER-clustd-noise-binding";

fn quic_err(error: impl std::fmt::Display) -> TransportError {
    TransportError::Quic(error.to_string())
}

/// A lost connection, told apart when the remote closed it with the refusal.
fn lost(error: &quinn::ConnectionError) -> TransportError {
    match error {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from(REFUSAL_CODE) =>
        {
            refused_by_remote()
        }
        other => quic_err(other),
    }
}

/// The exporter value both ends of one QUIC connection agree on, and nobody else knows.
pub(crate) fn binding(conn: &quinn::Connection) -> Result<Vec<u8>, TransportError> {
    let mut out = vec![0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| TransportError::Quic("TLS exporter unavailable".into()))?;
    Ok(out)
}

pub(crate) struct QuicTx {
    conn: quinn::Connection,
    send: quinn::SendStream,
}

type ReadFuture =
    Pin<Box<dyn Future<Output = (quinn::RecvStream, Result<Vec<u8>, TransportError>)> + Send>>;

pub(crate) struct QuicRx {
    conn: quinn::Connection,
    stream: Option<quinn::RecvStream>,
    /// A stream read in progress survives a datagram arriving first (cancel safety).
    pending: Option<ReadFuture>,
    max_len: usize,
}

impl Drop for QuicRx {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"closed");
    }
}

impl LinkTx for QuicTx {
    async fn send(&mut self, msg: Vec<u8>) -> Result<(), TransportError> {
        let len = u32::try_from(msg.len()).map_err(|_| TransportError::Oversized {
            len: msg.len(),
            limit: u32::MAX as usize,
        })?;
        let mut buf = Vec::with_capacity(4 + msg.len());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&msg);
        self.send.write_all(&buf).await.map_err(quic_err)
    }

    async fn linger(&mut self, bound: std::time::Duration) {
        // Closing a QUIC connection discards stream data the remote has not read yet, so
        // finish the stream and let the remote close first (it does once it has read our
        // last message), within `bound`. Nothing waits for this: the connection that
        // replaced this one carries frames already.
        if self.send.finish().is_ok() {
            let _ = tokio::time::timeout(bound, self.conn.closed()).await;
        }
    }

    async fn refuse(&mut self) {
        // CONNECTION_CLOSE goes out at once and the connection needs nothing from the remote
        // any more (unlike stream data, which a close would discard unsent).
        self.conn
            .close(quinn::VarInt::from(REFUSAL_CODE), REFUSAL_REASON.as_bytes());
    }

    fn datagram_room(&self) -> Option<usize> {
        self.conn.max_datagram_size()
    }

    fn send_datagram(&mut self, msg: Vec<u8>) -> Result<(), TransportError> {
        self.conn.send_datagram(Bytes::from(msg)).map_err(quic_err)
    }
}

async fn read_message(
    mut stream: quinn::RecvStream,
    max_len: usize,
) -> (quinn::RecvStream, Result<Vec<u8>, TransportError>) {
    let mut len = [0u8; 4];
    if let Err(error) = stream.read_exact(&mut len).await {
        return (stream, Err(read_err(error)));
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max_len {
        return (
            stream,
            Err(TransportError::Oversized {
                len,
                limit: max_len,
            }),
        );
    }
    let mut msg = vec![0u8; len];
    let result = stream
        .read_exact(&mut msg)
        .await
        .map(|()| msg)
        .map_err(read_err);
    (stream, result)
}

fn read_err(error: quinn::ReadExactError) -> TransportError {
    match error {
        quinn::ReadExactError::FinishedEarly(_) => TransportError::Closed,
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => lost(&e),
        quinn::ReadExactError::ReadError(e) => quic_err(e),
    }
}

enum Got {
    Stream(quinn::RecvStream, Result<Vec<u8>, TransportError>),
    Datagram(Result<Bytes, quinn::ConnectionError>),
}

impl LinkRx for QuicRx {
    async fn recv(&mut self) -> Result<Inbound, TransportError> {
        if self.pending.is_none() {
            let stream = self.stream.take().ok_or(TransportError::Closed)?;
            self.pending = Some(Box::pin(read_message(stream, self.max_len)));
        }
        let got = {
            let Some(pending) = self.pending.as_mut() else {
                return Err(TransportError::Closed);
            };
            tokio::select! {
                biased;
                (stream, result) = pending => Got::Stream(stream, result),
                datagram = self.conn.read_datagram() => Got::Datagram(datagram),
            }
        };
        match got {
            Got::Stream(stream, result) => {
                self.pending = None;
                self.stream = Some(stream);
                result.map(Inbound::Reliable)
            }
            Got::Datagram(datagram) => {
                let datagram = datagram.map_err(|e| lost(&e))?;
                if datagram.len() > self.max_len {
                    return Err(TransportError::Oversized {
                        len: datagram.len(),
                        limit: self.max_len,
                    });
                }
                Ok(Inbound::Datagram(datagram.into()))
            }
        }
    }
}

fn link(
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    max_frame_len: usize,
) -> Result<(QuicTx, QuicRx, Vec<u8>), TransportError> {
    let binding = binding(&conn)?;
    let rx = QuicRx {
        conn: conn.clone(),
        stream: Some(recv),
        pending: None,
        max_len: max_link_msg(max_frame_len),
    };
    Ok((QuicTx { conn, send }, rx, binding))
}

fn transport_config(limits: &Limits) -> Result<quinn::TransportConfig, TransportError> {
    let mut transport = quinn::TransportConfig::default();
    // Our own keepalives and idle timeout run on the stream (shared with WebSocket);
    // QUIC's idle timeout is a backstop for a connection whose stream never opened.
    let longest = limits.idle_timeout.max(limits.driver_idle_timeout);
    let idle = quinn::IdleTimeout::try_from(longest * 2).map_err(quic_err)?;
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(idle))
        .datagram_receive_buffer_size(Some(64 * 1024));
    Ok(transport)
}

/// A client config for dialing clustd QUIC endpoints (certificate not checked).
pub(crate) fn client_config(limits: &Limits) -> Result<quinn::ClientConfig, TransportError> {
    let crypto = QuicClientConfig::try_from(tls::client_config(true)?).map_err(quic_err)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config(limits)?));
    Ok(client)
}

/// Opens a QUIC link to `addr` from `endpoint` (connection + the one bidirectional stream).
pub(crate) async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    max_frame_len: usize,
) -> Result<(QuicTx, QuicRx, Vec<u8>), TransportError> {
    let conn = endpoint
        .connect(addr, tls::SERVER_NAME)
        .map_err(quic_err)?
        .await
        .map_err(quic_err)?;
    let (send, recv) = conn.open_bi().await.map_err(quic_err)?;
    link(conn, send, recv, max_frame_len)
}

/// The clock of QUIC tokens: tokio's time since the endpoint started, as if since the Unix
/// epoch (tokens never leave the endpoint that made them, so only differences matter).
struct TokenClock(tokio::time::Instant);

impl quinn::TimeSource for TokenClock {
    fn now(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + self.0.elapsed()
    }
}

/// Binds a quinn endpoint on `net` (a server too when `listen` is set).
pub(crate) async fn bind<N: Net>(
    net: &N,
    listen: Option<SocketAddr>,
    limits: &Limits,
    seed: [u8; 32],
) -> Result<quinn::Endpoint, TransportError> {
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config.rng_seed(Some(seed));
    let server = match listen {
        Some(_) => {
            let (cert, key) = tls::self_signed(seed)?;
            let crypto = tls::server_config(vec![cert], key, true)?;
            let crypto = QuicServerConfig::try_from(crypto).map_err(quic_err)?;
            // Retry (see `serve`) and address-validation tokens: keyed from the seed and
            // timed by tokio's clock, so a simulated run stays reproducible (quinn's
            // defaults are OS randomness and `SystemTime`). Only this endpoint reads them.
            let token_key = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"clustd quic tokens")
                .extract(&seed);
            let mut server = quinn::ServerConfig::new(Arc::new(crypto), Arc::new(token_key));
            server.time_source(Arc::new(TokenClock(tokio::time::Instant::now())));
            server.transport_config(Arc::new(transport_config(limits)?));
            Some(server)
        }
        None => None,
    };
    let addr = listen.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let socket = net.udp_bind(addr).await?;
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        server,
        socket,
        net.quic_runtime(),
    )?;
    endpoint.set_default_client_config(client_config(limits)?);
    Ok(endpoint)
}

pub(crate) struct QuicBackend {
    endpoint: quinn::Endpoint,
}

impl QuicBackend {
    pub(crate) async fn start<N: Net>(
        net: &N,
        registry: &Arc<Registry>,
        seed: [u8; 32],
    ) -> Result<(Self, Option<SocketAddr>), TransportError> {
        let config = &registry.config;
        // A dialing-only endpoint still needs a UDP socket, in the peers' address family.
        let bind_addr = match (
            config.listen,
            config.peers.values().any(SocketAddr::is_ipv6),
        ) {
            (Some(addr), _) => Some(addr),
            (None, true) => Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))),
            (None, false) => None,
        };
        let endpoint = bind(net, bind_addr, &config.limits, seed).await?;
        let local_addr = match config.listen {
            Some(_) => Some(endpoint.local_addr()?),
            None => None,
        };
        if config.listen.is_some() {
            registry.spawn(serve(registry.clone(), endpoint.clone()));
        }
        Ok((Self { endpoint }, local_addr))
    }

    /// Closes the QUIC endpoint: every connection is told at once (CONNECTION_CLOSE) and
    /// nothing new is accepted.
    pub(crate) fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }

    /// Waits until the closes have gone out (the endpoint is idle), at most a second.
    pub(crate) async fn closed(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    pub(crate) async fn dial_once(
        &self,
        registry: &Arc<Registry>,
        addr: SocketAddr,
        expected: Option<&NodeId>,
    ) -> Result<(), TransportError> {
        let max_frame_len = registry.config.limits.max_frame_len;
        dial_flow(
            registry,
            expected,
            Via::Network,
            connect(&self.endpoint, addr, max_frame_len),
        )
        .await
    }
}

async fn serve(registry: Arc<Registry>, endpoint: quinn::Endpoint) {
    let stopped = registry.stopped();
    tokio::pin!(stopped);
    let max_frame_len = registry.config.limits.max_frame_len;
    loop {
        let incoming = tokio::select! {
            biased;
            () = &mut stopped => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(mut incoming) = incoming else { return };
        // Under load, a source must first show that it receives at its address (a Retry
        // round trip): spoofed sources never take a slot, and an honest dialer pays one RTT.
        if registry.unauthenticated.under_pressure() && !incoming.remote_address_validated() {
            tracing::debug!(addr = %incoming.remote_address(), "busy: asking for address validation");
            match incoming.retry() {
                Ok(()) => continue,
                // Only refused for an Incoming that carries a retry token already.
                Err(error) => incoming = error.into_incoming(),
            }
        }
        let addr = incoming.remote_address();
        // Never refuses: a full pool evicts an older unauthenticated connection.
        let ticket = registry.unauthenticated.admit(addr);
        let establish = async move {
            let conn = incoming.await.map_err(quic_err)?;
            let (send, recv) = conn.accept_bi().await.map_err(quic_err)?;
            link(conn, send, recv, max_frame_len)
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
