//! The socket seam for the simulation: [`SimNet`] makes turmoil's simulated TCP and UDP
//! sockets look like the real ones to `clustd-transport`, so WebSocket and QUIC run
//! unchanged. QUIC needs one adapter: quinn drives a UDP socket through
//! [`quinn::AsyncUdpSocket`] (a polling interface), turmoil offers an async one.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

/// Sockets from turmoil, randomness from the simulation's seed.
#[derive(Debug, Clone)]
pub struct SimNet {
    seed: u64,
    /// Every `random_seed` call gets a different (but reproducible) seed.
    calls: Arc<AtomicU64>,
}

impl SimNet {
    /// A net whose randomness derives from `seed` (mix in the node and incarnation).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            calls: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// SplitMix64: a tiny, well-mixed generator for deriving seeds.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mixes several values into one seed.
pub fn mix(parts: &[u64]) -> u64 {
    let mut state = 0x5eed_c1a5_7d00_0001;
    for part in parts {
        state ^= *part;
        splitmix(&mut state);
    }
    splitmix(&mut state)
}

/// turmoil binds only the unspecified or loopback address; a node's config names its own
/// address, which is the same thing for a host with one interface.
fn any_interface(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_loopback() {
        addr
    } else if addr.is_ipv4() {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, addr.port()))
    }
}

impl clustd_transport::Net for SimNet {
    type Stream = turmoil::net::TcpStream;
    type Listener = turmoil::net::TcpListener;

    async fn tcp_bind(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        turmoil::net::TcpListener::bind(any_interface(addr)).await
    }

    async fn tcp_accept(
        &self,
        listener: &Self::Listener,
    ) -> io::Result<(Self::Stream, SocketAddr)> {
        listener.accept().await
    }

    fn tcp_local_addr(&self, listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    async fn tcp_connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect(addr).await
    }

    async fn udp_bind(&self, addr: SocketAddr) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let socket = turmoil::net::UdpSocket::bind(any_interface(addr)).await?;
        Ok(Arc::new(SimUdp::new(socket)))
    }

    fn quic_runtime(&self) -> Arc<dyn quinn::Runtime> {
        // quinn's tokio runtime reads tokio's clock (paused and driven by turmoil) and
        // spawns on the host's runtime; only its sockets had to be replaced.
        Arc::new(quinn::TokioRuntime)
    }

    fn random_seed(&self) -> [u8; 32] {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut state = mix(&[self.seed, call]);
        let mut seed = [0u8; 32];
        for chunk in seed.chunks_mut(8) {
            chunk.copy_from_slice(&splitmix(&mut state).to_le_bytes());
        }
        seed
    }
}

/// A turmoil UDP socket behind quinn's polling interface.
///
/// Receiving: a task owned by the socket reads datagrams and queues them, so `poll_recv`
/// can poll a channel. Sending: turmoil's UDP has no back-pressure, so `try_send` never
/// blocks (a full receive queue at the other end drops the datagram, like a real network).
pub struct SimUdp {
    socket: Arc<turmoil::net::UdpSocket>,
    local: SocketAddr,
    rx: std::sync::Mutex<mpsc::UnboundedReceiver<(Vec<u8>, SocketAddr)>>,
    reader: tokio::task::AbortHandle,
}

impl SimUdp {
    fn new(socket: turmoil::net::UdpSocket) -> Self {
        let local = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let socket = Arc::new(socket);
        let (tx, rx) = mpsc::unbounded_channel();
        let reading = socket.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((len, from)) = reading.recv_from(&mut buf).await {
                if tx.send((buf[..len].to_vec(), from)).is_err() {
                    return;
                }
            }
        })
        .abort_handle();
        Self {
            socket,
            local,
            rx: std::sync::Mutex::new(rx),
            reader,
        }
    }
}

impl Drop for SimUdp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl fmt::Debug for SimUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimUdp")
            .field("local", &self.local)
            .finish()
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        // One datagram per transmit: max_transmit_segments is 1.
        match self
            .socket
            .try_send_to(transmit.contents, transmit.destination)
        {
            Ok(_) => Ok(()),
            // A partitioned or unknown destination is a lost datagram, not a socket error.
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut rx = self
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut filled = 0;
        while filled < bufs.len().min(meta.len()) {
            let polled = if filled == 0 {
                rx.poll_recv(cx)
            } else {
                match rx.try_recv() {
                    Ok(item) => Poll::Ready(Some(item)),
                    Err(_) => Poll::Pending,
                }
            };
            match polled {
                Poll::Ready(Some((bytes, from))) => {
                    let len = bytes.len().min(bufs[filled].len());
                    bufs[filled][..len].copy_from_slice(&bytes[..len]);
                    meta[filled] = RecvMeta {
                        addr: from,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: Some(self.local.ip()),
                    };
                    filled += 1;
                }
                Poll::Ready(None) if filled == 0 => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "socket closed",
                    )));
                }
                Poll::Ready(None) | Poll::Pending if filled > 0 => break,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(filled))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
