//! A fault proxy: loopback forwarding ports with a cut/heal switch, for network partitions
//! without root or network namespaces.
//!
//! Each [`Link`] is one port on 127.0.0.1 that forwards to one target. The bench gives
//! every directed peer link A→B its own proxy port and writes that port into A's config as
//! B's address, so cutting the links to and from a node isolates it from its peers while its
//! local drivers stay connected. A cut link forwards nothing in either direction and looks
//! like a dead network, not a reset:
//!
//! - TCP (WebSocket): bytes stop being copied (those in flight are dropped; the rest stay in
//!   the kernel buffers) and new connections are accepted but never answered. On heal every
//!   connection that lived through the cut is closed, so both ends notice and redial; the
//!   transports reconnect with backoff. Reviving a TCP stream that lost bytes would be less
//!   honest than closing it.
//! - UDP (QUIC): datagrams are dropped both ways while cut and relayed again after the heal,
//!   so a QUIC connection survives a cut shorter than its idle timeout, as on a real network.
//!   Like a NAT, each (link, client source address) gets its own upstream socket, so the
//!   target sees one stable peer address per client.
//!
//! All tasks belong to the [`FaultProxy`]: dropping it ends them (and closes every socket).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Connections open at once per TCP link; more are closed at once (a bound, not a feature:
/// the transports open about one per peer).
const MAX_TCP_CONNECTIONS: usize = 256;

/// Client source addresses remembered per UDP link (one upstream socket each).
const MAX_UDP_CLIENTS: usize = 64;

/// Largest UDP datagram.
const MAX_DATAGRAM: usize = 65_535;

/// TCP copy buffer per direction.
const TCP_BUFFER: usize = 16 * 1024;

/// The peer links of a cluster on loopback, each directed link A→B through its own proxy
/// port: write [`Network::addr`] into A's config as B's address, then cut and heal.
pub struct Network {
    /// Owns the forwarding tasks: they end when the run does.
    _proxy: FaultProxy,
    /// `(from, to, link)` by node index.
    links: Vec<(usize, usize, Link)>,
}

impl Network {
    /// Proxy ports for every directed link between `ports` (the daemons' real listen ports).
    pub async fn new(
        transport: clustd_transport::TransportKind,
        ports: &[u16],
    ) -> std::io::Result<Self> {
        let protocol = match transport {
            clustd_transport::TransportKind::Quic => Protocol::Udp,
            clustd_transport::TransportKind::WebSocket => Protocol::Tcp,
        };
        let mut proxy = FaultProxy::new();
        let mut links = Vec::new();
        for from in 0..ports.len() {
            for (to, port) in ports.iter().enumerate().filter(|(to, _)| *to != from) {
                let target = SocketAddr::from(([127, 0, 0, 1], *port));
                links.push((from, to, proxy.link(protocol, target).await?));
            }
        }
        Ok(Self {
            _proxy: proxy,
            links,
        })
    }

    /// The address node `from` dials to reach node `to`.
    pub fn addr(&self, from: usize, to: usize) -> Option<SocketAddr> {
        self.links
            .iter()
            .find(|(f, t, _)| (*f, *t) == (from, to))
            .map(|(_, _, link)| link.listen_addr())
    }

    /// Cuts every link to and from `node`.
    pub fn isolate(&self, node: usize) {
        for (_, _, link) in self
            .links
            .iter()
            .filter(|(f, t, _)| *f == node || *t == node)
        {
            link.cut();
        }
    }

    /// Heals every link.
    pub fn recover(&self) {
        for (_, _, link) in &self.links {
            link.heal();
        }
    }
}

/// What a link forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP streams (the WebSocket transport).
    Tcp,
    /// UDP datagrams (the QUIC transport).
    Udp,
}

/// Owns the forwarding tasks of every link it opened; dropping it stops them all.
#[derive(Debug, Default)]
pub struct FaultProxy {
    tasks: JoinSet<()>,
}

/// One forwarding port and its switch. Cheap to clone; all clones switch the same link.
#[derive(Debug, Clone)]
pub struct Link {
    protocol: Protocol,
    listen: SocketAddr,
    target: SocketAddr,
    switch: Arc<watch::Sender<Switch>>,
    counters: Arc<Counters>,
}

/// The position of a link's switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Switch {
    cut: bool,
    /// Cuts so far: a TCP connection that lived through one is closed even if it only
    /// notices after the heal.
    cuts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    forwarded_bytes: AtomicU64,
    dropped_bytes: AtomicU64,
    held_connections: AtomicU64,
}

/// What a link has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkStats {
    /// Payload bytes forwarded, both directions.
    pub forwarded_bytes: u64,
    /// Payload bytes read and dropped because the link was cut (UDP datagrams; for TCP only
    /// the bytes already read when the cut was noticed: the rest stay unread).
    pub dropped_bytes: u64,
    /// TCP connections blackholed right now (waiting for the heal to be closed).
    pub held_connections: u64,
}

impl FaultProxy {
    /// A proxy with no links yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens a forwarding port on 127.0.0.1 (any free port) to `target`, which must be a
    /// loopback address. The link starts healed. Needs a tokio runtime.
    pub async fn link(&mut self, protocol: Protocol, target: SocketAddr) -> io::Result<Link> {
        if !target.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the fault proxy forwards on loopback only, not to {target}"),
            ));
        }
        let switch = Arc::new(watch::Sender::new(Switch {
            cut: false,
            cuts: 0,
        }));
        let counters = Arc::new(Counters::default());
        let listen = match protocol {
            Protocol::Tcp => {
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
                let listen = listener.local_addr()?;
                self.tasks.spawn(serve_tcp(
                    listener,
                    target,
                    switch.clone(),
                    counters.clone(),
                ));
                listen
            }
            Protocol::Udp => {
                let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
                let listen = socket.local_addr()?;
                self.tasks.spawn(serve_udp(
                    Arc::new(socket),
                    target,
                    switch.clone(),
                    counters.clone(),
                ));
                listen
            }
        };
        Ok(Link {
            protocol,
            listen,
            target,
            switch,
            counters,
        })
    }
}

impl Link {
    /// What the link forwards.
    #[must_use]
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The proxy port: give this address to the client instead of the target's.
    #[must_use]
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Where the link forwards to.
    #[must_use]
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Whether the link is cut.
    #[must_use]
    pub fn is_cut(&self) -> bool {
        self.switch.borrow().cut
    }

    /// What the link has done so far.
    #[must_use]
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            forwarded_bytes: self.counters.forwarded_bytes.load(Ordering::Relaxed),
            dropped_bytes: self.counters.dropped_bytes.load(Ordering::Relaxed),
            held_connections: self.counters.held_connections.load(Ordering::Relaxed),
        }
    }

    /// Stops forwarding in both directions (see the module doc for what each protocol sees).
    /// Cutting a cut link does nothing.
    pub fn cut(&self) {
        self.switch.send_if_modified(|s| {
            if s.cut {
                return false;
            }
            s.cut = true;
            s.cuts += 1;
            true
        });
    }

    /// Forwards again; TCP connections that lived through the cut are closed.
    pub fn heal(&self) {
        self.switch
            .send_if_modified(|s| std::mem::replace(&mut s.cut, false));
    }
}

/// Accepts connections to a TCP link; each one is forwarded by its own task, which ends with
/// this one (the `JoinSet` aborts its tasks when dropped).
async fn serve_tcp(
    listener: TcpListener,
    target: SocketAddr,
    switch: Arc<watch::Sender<Switch>>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) if connections.len() < MAX_TCP_CONNECTIONS => {
                    connections.spawn(forward_tcp(
                        client,
                        target,
                        switch.subscribe(),
                        counters.clone(),
                    ));
                }
                Ok(_) => {}
                // Out of file descriptors, most likely: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// How one direction of a TCP connection ended.
enum PumpEnd {
    /// End of stream, passed on as a half close.
    Eof,
    /// A read or write failed: the connection is over.
    Failed,
    /// The link was cut: what was just read is dropped.
    Cut,
}

/// Forwards one TCP connection while the link is up. Once the link has been cut, holds both
/// sockets without reading or writing until the heal, then closes them.
async fn forward_tcp(
    mut client: TcpStream,
    target: SocketAddr,
    mut switch: watch::Receiver<Switch>,
    counters: Arc<Counters>,
) {
    let start = *switch.borrow_and_update();
    // Kept open until the end of the function, so the target sees silence during a cut too.
    let mut server = None;
    if !start.cut {
        let Ok(connected) = TcpStream::connect(target).await else {
            // The target is down: the client sees its connection closed, as from the target.
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = connected.set_nodelay(true);
        let server = server.insert(connected);
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let up = pump(
            &mut client_read,
            &mut server_write,
            switch.clone(),
            start.cuts,
            &counters,
        );
        let down = pump(
            &mut server_read,
            &mut client_write,
            switch.clone(),
            start.cuts,
            &counters,
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                end = &mut up, if !up_done => match end {
                    PumpEnd::Eof => up_done = true,
                    PumpEnd::Failed => return,
                    PumpEnd::Cut => break,
                },
                end = &mut down, if !down_done => match end {
                    PumpEnd::Eof => down_done = true,
                    PumpEnd::Failed => return,
                    PumpEnd::Cut => break,
                },
                _ = switch.wait_for(|s| s.cuts != start.cuts) => break,
            }
            if up_done && down_done {
                return;
            }
        }
    }
    // Cut: blackholed until the heal. An error means the link is gone: close as on a heal.
    counters.held_connections.fetch_add(1, Ordering::Relaxed);
    let _ = switch.wait_for(|s| !s.cut).await;
    counters.held_connections.fetch_sub(1, Ordering::Relaxed);
    drop(server);
}

/// Copies one direction of a TCP connection until end of stream, an error or a cut (checked
/// after every read, so nothing read after a cut is forwarded).
async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    switch: watch::Receiver<Switch>,
    cuts: u64,
    counters: &Counters,
) -> PumpEnd {
    let mut buf = vec![0u8; TCP_BUFFER];
    loop {
        let len = match from.read(&mut buf).await {
            Ok(0) => {
                return match to.shutdown().await {
                    Ok(()) => PumpEnd::Eof,
                    Err(_) => PumpEnd::Failed,
                };
            }
            Ok(len) => len,
            Err(_) => return PumpEnd::Failed,
        };
        let len64 = u64::try_from(len).unwrap_or(u64::MAX);
        let now = *switch.borrow();
        if now.cut || now.cuts != cuts {
            counters.dropped_bytes.fetch_add(len64, Ordering::Relaxed);
            return PumpEnd::Cut;
        }
        if to.write_all(&buf[..len]).await.is_err() {
            return PumpEnd::Failed;
        }
        counters.forwarded_bytes.fetch_add(len64, Ordering::Relaxed);
    }
}

/// Relays datagrams of a UDP link: client → target here, target → client in one task per
/// client (its upstream socket), all ending with this one.
async fn serve_udp(
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    switch: Arc<watch::Sender<Switch>>,
    counters: Arc<Counters>,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut relays = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let len64 = u64::try_from(len).unwrap_or(u64::MAX);
        if switch.borrow().cut {
            counters.dropped_bytes.fetch_add(len64, Ordering::Relaxed);
            continue;
        }
        let upstream = match upstreams.get(&client) {
            Some(upstream) => upstream.clone(),
            None if upstreams.len() < MAX_UDP_CLIENTS => {
                let Ok(upstream) = udp_upstream(target).await else {
                    continue;
                };
                let upstream = Arc::new(upstream);
                upstreams.insert(client, upstream.clone());
                relays.spawn(relay_back(
                    upstream.clone(),
                    socket.clone(),
                    client,
                    switch.subscribe(),
                    counters.clone(),
                ));
                upstream
            }
            None => continue,
        };
        // A full buffer or a dead target loses the datagram, as a network would.
        if upstream.send(&buf[..len]).await.is_ok() {
            counters.forwarded_bytes.fetch_add(len64, Ordering::Relaxed);
        }
    }
}

async fn udp_upstream(target: SocketAddr) -> io::Result<UdpSocket> {
    let upstream = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    upstream.connect(target).await?;
    Ok(upstream)
}

/// Relays the target's answers to one client through the link's port.
async fn relay_back(
    upstream: Arc<UdpSocket>,
    downstream: Arc<UdpSocket>,
    client: SocketAddr,
    switch: watch::Receiver<Switch>,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        // An error is the ICMP "port unreachable" of a target that is down (reported once
        // per datagram sent to it), not a reason to stop relaying.
        let Ok(len) = upstream.recv(&mut buf).await else {
            continue;
        };
        let len64 = u64::try_from(len).unwrap_or(u64::MAX);
        if switch.borrow().cut {
            counters.dropped_bytes.fetch_add(len64, Ordering::Relaxed);
        } else if downstream.send_to(&buf[..len], client).await.is_ok() {
            counters.forwarded_bytes.fetch_add(len64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generous: these wait for loopback I/O, they do not measure it.
    const PATIENCE: Duration = Duration::from_secs(10);

    async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
        tokio::time::timeout(PATIENCE, f)
            .await
            .unwrap_or_else(|_| panic!("{what} within {PATIENCE:?}"))
    }

    /// Waits until the link's counters satisfy `ok`.
    async fn until(link: &Link, what: &str, ok: impl Fn(LinkStats) -> bool) {
        within(what, async {
            while !ok(link.stats()) {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }

    /// A TCP echo server on loopback.
    async fn tcp_echo() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// A UDP echo server on loopback.
    async fn udp_echo() -> SocketAddr {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binds");
        let addr = socket.local_addr().expect("has an address");
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..len], from).await;
            }
        });
        addr
    }

    async fn tcp_round_trip(stream: &mut TcpStream, msg: &[u8]) {
        stream.write_all(msg).await.expect("writes");
        let mut got = vec![0u8; msg.len()];
        within("the echo", stream.read_exact(&mut got))
            .await
            .expect("reads");
        assert_eq!(got, msg);
    }

    async fn udp_client(link: &Link) -> UdpSocket {
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binds");
        client.connect(link.listen_addr()).await.expect("connects");
        client
    }

    async fn udp_round_trip(client: &UdpSocket, msg: &[u8]) {
        client.send(msg).await.expect("sends");
        let mut buf = [0u8; 64];
        let len = within("the echo", client.recv(&mut buf))
            .await
            .expect("receives");
        assert_eq!(&buf[..len], msg);
    }

    #[tokio::test]
    async fn tcp_forwards_blackholes_when_cut_and_closes_on_heal() {
        let mut proxy = FaultProxy::new();
        let link = proxy
            .link(Protocol::Tcp, tcp_echo().await)
            .await
            .expect("opens");
        assert_eq!(link.protocol(), Protocol::Tcp);
        let mut stream = TcpStream::connect(link.listen_addr())
            .await
            .expect("connects");
        tcp_round_trip(&mut stream, b"hello").await;
        until(&link, "hello counted both ways", |s| {
            s.forwarded_bytes == 10
        })
        .await;

        link.cut();
        assert!(link.is_cut());
        stream
            .write_all(b"lost")
            .await
            .expect("writes into the void");
        // A new connection during the cut is not refused, just never answered.
        let mut during = TcpStream::connect(link.listen_addr())
            .await
            .expect("connects");
        during.write_all(b"void").await.expect("writes");
        until(&link, "both connections blackholed", |s| {
            s.held_connections == 2
        })
        .await;
        assert_eq!(
            link.stats().forwarded_bytes,
            10,
            "nothing forwarded while cut"
        );

        // The heal closes both: they read the end of the stream (or a reset), never an echo.
        link.heal();
        let mut buf = [0u8; 16];
        let read = within("the close on heal", stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "closed, not echoed: {read:?}"
        );
        let read = within("the close on heal", during.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "closed, not echoed: {read:?}"
        );
        assert_eq!(link.stats().forwarded_bytes, 10);

        // A new connection after the heal forwards again.
        let mut stream = TcpStream::connect(link.listen_addr())
            .await
            .expect("connects");
        tcp_round_trip(&mut stream, b"again").await;
    }

    #[tokio::test]
    async fn tcp_connection_that_missed_a_short_cut_is_closed() {
        let mut proxy = FaultProxy::new();
        let link = proxy
            .link(Protocol::Tcp, tcp_echo().await)
            .await
            .expect("opens");
        let mut stream = TcpStream::connect(link.listen_addr())
            .await
            .expect("connects");
        tcp_round_trip(&mut stream, b"hello").await;
        // Cut and healed before the connection's task runs again: bytes written during the
        // cut still never reach the target.
        link.cut();
        stream.write_all(b"lost").await.expect("writes");
        link.heal();
        let mut buf = [0u8; 16];
        let read = within("the close", stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "closed, not echoed: {read:?}"
        );
    }

    #[tokio::test]
    async fn udp_forwards_drops_when_cut_and_resumes_on_heal() {
        let mut proxy = FaultProxy::new();
        let link = proxy
            .link(Protocol::Udp, udp_echo().await)
            .await
            .expect("opens");
        let client = udp_client(&link).await;
        udp_round_trip(&client, b"one").await;

        link.cut();
        client.send(b"dropped").await.expect("sends");
        until(&link, "the datagram dropped", |s| s.dropped_bytes == 7).await;
        link.heal();
        // Had "dropped" gone through, its echo would be read here instead.
        udp_round_trip(&client, b"two").await;
        until(&link, "one and two counted both ways", |s| {
            s.forwarded_bytes == 12
        })
        .await;
    }

    #[tokio::test]
    async fn udp_cut_drops_answers_too() {
        // A target the test answers by hand, so the answer can be sent while the link is cut.
        let target = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binds");
        let mut proxy = FaultProxy::new();
        let link = proxy
            .link(Protocol::Udp, target.local_addr().expect("has an address"))
            .await
            .expect("opens");
        assert_eq!(link.target(), target.local_addr().expect("has an address"));
        let client = udp_client(&link).await;
        client.send(b"request").await.expect("sends");
        let mut buf = [0u8; 64];
        let (len, upstream) = within("the request", target.recv_from(&mut buf))
            .await
            .expect("receives");
        assert_eq!(&buf[..len], b"request");

        link.cut();
        target.send_to(b"answer", upstream).await.expect("sends");
        until(&link, "the answer dropped", |s| s.dropped_bytes == 6).await;
        link.heal();
        target.send_to(b"later", upstream).await.expect("sends");
        // Had "answer" gone through, it would be read here instead.
        let len = within("the answer after the heal", client.recv(&mut buf))
            .await
            .expect("receives");
        assert_eq!(&buf[..len], b"later");
    }

    #[tokio::test]
    async fn forwards_to_loopback_only() {
        let mut proxy = FaultProxy::new();
        let err = proxy
            .link(Protocol::Tcp, "192.0.2.1:80".parse().expect("parses"))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_ports() {
        let mut proxy = FaultProxy::new();
        let link = proxy
            .link(Protocol::Tcp, tcp_echo().await)
            .await
            .expect("opens");
        drop(proxy);
        // The abort is asynchronous; the port closes once the task is gone.
        within("the port to close", async {
            while TcpStream::connect(link.listen_addr()).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
}
