//! The socket seam. The transports never touch tokio's sockets directly: they ask a [`Net`]
//! for TCP listeners and streams, a UDP socket for quinn and a quinn runtime, so the `sim`
//! crate can run the very same code over turmoil's simulated network.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

/// How sockets, the QUIC runtime and randomness are made.
///
/// Implemented by [`TokioNet`] for production; the simulation implements it with
/// `turmoil::net::{TcpListener, TcpStream, UdpSocket}` (a UDP adapter implementing
/// [`quinn::AsyncUdpSocket`]) and a quinn [`quinn::Runtime`] on tokio's (paused) clock.
pub trait Net: Clone + Send + Sync + 'static {
    /// A connected byte stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A bound TCP listener.
    type Listener: Send + Sync + 'static;

    /// Binds a TCP listener.
    fn tcp_bind(&self, addr: SocketAddr)
    -> impl Future<Output = io::Result<Self::Listener>> + Send;
    /// Accepts one connection; returns the stream and the remote address.
    fn tcp_accept(
        &self,
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
    /// The address a listener is bound to.
    fn tcp_local_addr(&self, listener: &Self::Listener) -> io::Result<SocketAddr>;
    /// Opens a TCP connection.
    fn tcp_connect(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// Binds a UDP socket for quinn.
    fn udp_bind(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Arc<dyn quinn::AsyncUdpSocket>>> + Send;
    /// The quinn runtime (timers and task spawning) matching these sockets.
    fn quic_runtime(&self) -> Arc<dyn quinn::Runtime>;
    /// 32 bytes of seed for everything random in one endpoint (jitter, Noise ephemeral
    /// keys, quinn's rng, the QUIC certificate key). Production: OS randomness; the
    /// simulation: derived from the run's seed.
    fn random_seed(&self) -> [u8; 32];
}

/// Real sockets on the tokio runtime, OS randomness.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioNet;

impl Net for TokioNet {
    type Stream = tokio::net::TcpStream;
    type Listener = tokio::net::TcpListener;

    async fn tcp_bind(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::bind(addr).await
    }

    async fn tcp_accept(
        &self,
        listener: &Self::Listener,
    ) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = listener.accept().await?;
        // Frames are small and latency-sensitive.
        stream.set_nodelay(true)?;
        Ok((stream, addr))
    }

    fn tcp_local_addr(&self, listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    async fn tcp_connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn udp_bind(&self, addr: SocketAddr) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        let socket = std::net::UdpSocket::bind(addr)?;
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }

    fn quic_runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(quinn::TokioRuntime)
    }

    fn random_seed(&self) -> [u8; 32] {
        use rand::RngCore;
        use rand::SeedableRng;
        let mut seed = [0u8; 32];
        rand::rngs::StdRng::from_os_rng().fill_bytes(&mut seed);
        seed
    }
}

use quinn::Runtime as _;
