//! End-to-end tests over real loopback sockets. Every test body is written once, as an
//! `async fn(TransportKind)`, and run for both transports by
//! `clustd_transport::both_transports!`; the `wss://` tests at the end are WebSocket-only.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clustd_core::NodeId;
use clustd_transport::raw::RawConn;
use clustd_transport::session::{Credential, Hello};
use clustd_transport::{
    Endpoint, EndpointConfig, NodeKey, PeerKind, PublicKey, RefuseReason, Secret, SendClass,
    SendError, TlsFiles, TokioNet, TransportError, TransportEvent, TransportKind,
};
use tokio::sync::mpsc::Receiver;

const SECRET: &str = "test-cluster-secret-0123456789abcdef";
const WRONG_SECRET: &str = "wrong-cluster-secret-9876543210fedcba";
/// Generous: the machine is busy; nothing here measures speed.
const WAIT: Duration = Duration::from_secs(20);

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid test id")
}

fn secret(s: &str) -> Secret {
    Secret::from_bytes(s.as_bytes().to_vec()).expect("long enough")
}

/// Each test node's own key pair, the same in every test.
fn key_of(name: &str) -> NodeKey {
    let mut private = [0x5a; 32];
    for (i, b) in name.bytes().enumerate() {
        private[i % 32] ^= b;
    }
    NodeKey::from_private(private)
}

/// What a raw client proving `name`'s node key to the node `to` presents.
fn node_credential<'a>(
    cluster: &'a Secret,
    local: &'a NodeKey,
    remote: &'a PublicKey,
) -> Credential<'a> {
    Credential::NodeKey {
        secret: cluster,
        local,
        remote,
    }
}

/// A loopback address with a port that was free a moment ago (TCP or UDP per transport),
/// and never handed out before in this process. The kernel may give a just-released port
/// again: two `free_addr` calls in one test (both endpoints on one port), or another test
/// taking the address of an endpoint that is restarting, which then dials or is dialed by
/// a stranger with the same node ids and secret.
fn free_addr(kind: TransportKind) -> SocketAddr {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<SocketAddr>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    loop {
        let addr = match kind {
            TransportKind::WebSocket => {
                std::net::TcpListener::bind(any).and_then(|l| l.local_addr())
            }
            TransportKind::Quic => std::net::UdpSocket::bind(any).and_then(|s| s.local_addr()),
        }
        .expect("bind loopback");
        // A panicking test may poison the set; it is still a valid set of addresses.
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if handed_out.insert(addr) {
            return addr;
        }
    }
}

fn config(
    kind: TransportKind,
    me: &str,
    listen: Option<SocketAddr>,
    peers: &[(&str, SocketAddr)],
) -> EndpointConfig {
    let mut config = EndpointConfig::new(kind, id(me), PeerKind::Peer, secret(SECRET));
    config.listen = listen;
    config.peers = peers
        .iter()
        .map(|(p, a)| (id(p), *a))
        .collect::<BTreeMap<_, _>>();
    config.node_key = Some(key_of(me));
    config.peer_keys = peers
        .iter()
        .map(|(p, _)| (id(p), key_of(p).public()))
        .collect();
    config.limits.backoff_min = Duration::from_millis(20);
    config.limits.backoff_max = Duration::from_millis(300);
    config.limits.handshake_timeout = Duration::from_secs(3);
    config
}

async fn start(config: EndpointConfig) -> (Endpoint, Receiver<TransportEvent>) {
    // Logs only when RUST_LOG is set.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // A just-closed UDP port can stay busy for a moment while quinn drains (restart test).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Endpoint::start(TokioNet, config.clone()).await {
            Ok(started) => return started,
            Err(TransportError::Io(e))
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("endpoint does not start: {e}"),
        }
    }
}

/// Waits for the first event matching `pred`; returns it and every event seen before it.
async fn wait_for(
    events: &mut Receiver<TransportEvent>,
    what: &str,
    pred: impl Fn(&TransportEvent) -> bool,
) -> (TransportEvent, Vec<TransportEvent>) {
    let mut skipped = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if pred(&event) => return (event, skipped),
            Ok(Some(event)) => skipped.push(event),
            Ok(None) => panic!("event stream ended while waiting for {what}; saw {skipped:?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {skipped:?}"),
        }
    }
}

async fn connected(events: &mut Receiver<TransportEvent>, who: &str) {
    let who = id(who);
    wait_for(
        events,
        &format!("Connected({who})"),
        |e| matches!(e, TransportEvent::Connected { id, .. } if *id == who),
    )
    .await;
}

async fn frame_from(
    events: &mut Receiver<TransportEvent>,
    who: &str,
) -> (Vec<u8>, Vec<TransportEvent>) {
    let who = id(who);
    let (event, skipped) = wait_for(
        events,
        &format!("Frame from {who}"),
        |e| matches!(e, TransportEvent::Frame { from, .. } if *from == who),
    )
    .await;
    match event {
        TransportEvent::Frame { frame, .. } => (frame, skipped),
        _ => unreachable!("matched a frame"),
    }
}

/// Sends until accepted (the sender may learn of the connection a moment after the receiver).
async fn send_when_connected(endpoint: &Endpoint, to: &str, frame: &[u8], class: SendClass) {
    let to = id(to);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match endpoint.send(&to, frame.to_vec(), class) {
            Ok(()) => return,
            Err(SendError::NotConnected(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("send to {to} failed: {e}"),
        }
    }
}

/// Sends heartbeats from `sender` to `to` until `events` (of `to`) has one: the class is
/// lossy by contract (superseded while waiting, a QUIC datagram, and one sent on a duplicate
/// connection as it is replaced may be dropped), so one attempt proves nothing. Bounded.
async fn heartbeat_arrives(
    sender: &Endpoint,
    to: &str,
    events: &mut Receiver<TransportEvent>,
    frame: &[u8],
) {
    resend_until_arrives(
        sender,
        to,
        events,
        frame,
        SendClass::Heartbeat,
        40,
        Duration::from_millis(500),
    )
    .await;
}

/// Sends a Reliable `frame` from `sender` to `to` once; it must be the next frame from
/// `sender` on `events` (of `to`). Once, even right after connecting, when both ends dialed
/// each other and one connection replaces the other: that swap loses nothing.
async fn reliable_arrives(
    sender: &Endpoint,
    to: &str,
    events: &mut Receiver<TransportEvent>,
    frame: &[u8],
) {
    resend_until_arrives(sender, to, events, frame, SendClass::Reliable, 1, WAIT).await;
}

/// Sends `frame` of `class` up to `attempts` times, waiting `per_try` each time for a frame
/// from `sender` on `events`; the first one that arrives must be `frame`.
async fn resend_until_arrives(
    sender: &Endpoint,
    to: &str,
    events: &mut Receiver<TransportEvent>,
    frame: &[u8],
    class: SendClass,
    attempts: usize,
    per_try: Duration,
) {
    let from = sender.local_id().clone();
    for _ in 0..attempts {
        send_when_connected(sender, to, frame, class).await;
        let got = tokio::time::timeout(per_try, async {
            loop {
                match events.recv().await {
                    Some(TransportEvent::Frame {
                        from: f,
                        frame: got,
                        ..
                    }) if f == from => {
                        return got;
                    }
                    Some(_) => {}
                    None => panic!("event stream ended while waiting for a {class:?} frame"),
                }
            }
        })
        .await;
        if let Ok(got) = got {
            assert_eq!(got, frame);
            return;
        }
    }
    panic!("no {class:?} frame from {from} arrived in {attempts} attempts");
}

fn no_frames(events: &[TransportEvent]) -> bool {
    !events
        .iter()
        .any(|e| matches!(e, TransportEvent::Frame { .. }))
}

fn drain(events: &mut Receiver<TransportEvent>) -> Vec<TransportEvent> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        out.push(event);
    }
    out
}

/// One listening daemon `n1` that knows peer `n2` at an address where nobody listens, so a
/// raw client can pose as `n2`.
async fn lone_daemon(
    kind: TransportKind,
    tweak: impl FnOnce(&mut EndpointConfig),
) -> (Endpoint, Receiver<TransportEvent>, SocketAddr) {
    let mut cfg = config(
        kind,
        "n1",
        Some(free_addr(kind)),
        &[("n2", free_addr(kind))],
    );
    tweak(&mut cfg);
    let (endpoint, events) = start(cfg).await;
    let addr = endpoint.local_addr().expect("listening");
    (endpoint, events, addr)
}

async fn raw_peer(kind: TransportKind, addr: SocketAddr, as_id: &str) -> RawConn {
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    let (cluster, local, remote) = (secret(SECRET), key_of(as_id), key_of("n1").public());
    let remote = raw
        .handshake(
            node_credential(&cluster, &local, &remote),
            &Hello {
                id: id(as_id),
                kind: PeerKind::Peer,
            },
        )
        .await
        .expect("handshake");
    assert_eq!(
        remote,
        Hello {
            id: id("n1"),
            kind: PeerKind::Peer
        }
    );
    raw
}

/// Whether `f` ends (Err or Ok) within the wait; the raw side must see the close.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------------------

async fn two_endpoints_exchange_frames(kind: TransportKind) {
    let (a1, a2) = (free_addr(kind), free_addr(kind));
    let (n1, mut e1) = start(config(kind, "n1", Some(a1), &[("n2", a2)])).await;
    let (n2, mut e2) = start(config(kind, "n2", Some(a2), &[("n1", a1)])).await;
    connected(&mut e1, "n2").await;
    connected(&mut e2, "n1").await;
    // Both dialed, so one connection may replace the other as the frames go: each goes once.
    reliable_arrives(&n1, "n2", &mut e2, b"hello n2").await;
    reliable_arrives(&n2, "n1", &mut e1, b"hello n1").await;
    // Heartbeat class (a datagram over QUIC) and a frame at the size limit.
    heartbeat_arrives(&n1, "n2", &mut e2, b"heartbeat").await;
    let big = vec![0xA5; clustd_core::codec::MAX_FRAME_LEN];
    reliable_arrives(&n2, "n1", &mut e1, &big).await;
    assert_eq!(n1.connected(), vec![(id("n2"), PeerKind::Peer)]);
    assert_eq!(n2.connected(), vec![(id("n1"), PeerKind::Peer)]);
    n1.shutdown().await;
    n2.shutdown().await;
}

async fn three_endpoints_exchange_frames(kind: TransportKind) {
    let names = ["n1", "n2", "n3"];
    let addrs: Vec<SocketAddr> = names.iter().map(|_| free_addr(kind)).collect();
    let mut nodes = Vec::new();
    for (i, me) in names.iter().enumerate() {
        let peers: Vec<(&str, SocketAddr)> = names
            .iter()
            .zip(&addrs)
            .filter(|(n, _)| *n != me)
            .map(|(n, a)| (*n, *a))
            .collect();
        nodes.push(start(config(kind, me, Some(addrs[i]), &peers)).await);
    }
    // Every ordered pair (resent until it arrives: see two_endpoints_exchange_frames).
    for (i, me) in names.iter().enumerate() {
        for (j, other) in names.iter().enumerate().filter(|(_, n)| *n != me) {
            let sender = nodes[i].0.clone();
            let frame = format!("{me}->{other}");
            reliable_arrives(&sender, other, &mut nodes[j].1, frame.as_bytes()).await;
        }
    }
    for (i, me) in names.iter().enumerate() {
        let peers: Vec<NodeId> = nodes[i]
            .0
            .connected()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            peers.len(),
            2,
            "{me} keeps exactly one connection per peer: {peers:?}"
        );
    }
    for (node, _) in nodes {
        node.shutdown().await;
    }
}

async fn driver_dials_by_address(kind: TransportKind) {
    let mut daemon_cfg = config(kind, "n1", Some(free_addr(kind)), &[]);
    daemon_cfg.accept_drivers = true;
    let (daemon, mut de) = start(daemon_cfg).await;
    let addr = daemon.local_addr().expect("listening");
    let driver_cfg = EndpointConfig::new(kind, id("shell-1"), PeerKind::Driver, secret(SECRET));
    let (driver, mut dre) = start(driver_cfg).await;
    driver.dial(addr);
    let (event, _) = wait_for(&mut dre, "driver connected", |e| {
        matches!(e, TransportEvent::Connected { .. })
    })
    .await;
    assert!(
        matches!(event, TransportEvent::Connected { ref id, kind: PeerKind::Peer, process: None } if id.as_str() == "n1")
    );
    let (event, _) = wait_for(&mut de, "daemon sees driver", |e| {
        matches!(e, TransportEvent::Connected { .. })
    })
    .await;
    assert!(
        matches!(event, TransportEvent::Connected { ref id, kind: PeerKind::Driver, process: None } if id.as_str() == "shell-1")
    );
    send_when_connected(&daemon, "shell-1", b"role", SendClass::Reliable).await;
    send_when_connected(&driver, "n1", b"ack", SendClass::Reliable).await;
    assert_eq!(frame_from(&mut dre, "n1").await.0, b"role");
    assert_eq!(frame_from(&mut de, "shell-1").await.0, b"ack");
    driver.shutdown().await;
    let (event, _) = wait_for(&mut de, "driver gone", |e| {
        matches!(e, TransportEvent::Disconnected { .. })
    })
    .await;
    assert!(matches!(
        event,
        TransportEvent::Disconnected {
            kind: PeerKind::Driver,
            ..
        }
    ));
    daemon.shutdown().await;
}

async fn reconnects_after_remote_restart(kind: TransportKind) {
    let (a1, a2) = (free_addr(kind), free_addr(kind));
    let (n1, mut e1) = start(config(kind, "n1", Some(a1), &[("n2", a2)])).await;
    let (n2, mut e2) = start(config(kind, "n2", Some(a2), &[("n1", a1)])).await;
    connected(&mut e1, "n2").await;
    connected(&mut e2, "n1").await;
    n2.shutdown().await;
    drop(e2);
    wait_for(&mut e1, "n2 disconnected", |e| {
        matches!(e, TransportEvent::Disconnected { .. })
    })
    .await;
    // Same address, new process state.
    let (n2, mut e2) = start(config(kind, "n2", Some(a2), &[("n1", a1)])).await;
    connected(&mut e1, "n2").await;
    connected(&mut e2, "n1").await;
    // Both ends dial after the restart, so a duplicate connection may replace the one the
    // frame is queued on: it is sent once and must arrive (it used to be lost about once in
    // 20 runs on a loaded machine).
    reliable_arrives(&n1, "n2", &mut e2, b"welcome back").await;
    n1.shutdown().await;
    n2.shutdown().await;
}

/// Two nodes whose cluster secrets differ: each side says so. The acceptor cannot read
/// the first handshake message ("authentication failed"); the dialer is told so by the
/// acceptor's refusal and says the secrets differ (or, with node keys, the key) instead of
/// "connection reset".
async fn wrong_secret_is_rejected(kind: TransportKind) {
    let (a1, a2) = (free_addr(kind), free_addr(kind));
    let (n1, mut e1) = start(config(kind, "n1", Some(a1), &[("n2", a2)])).await;
    let mut bad = config(kind, "n2", Some(a2), &[("n1", a1)]);
    bad.secret = secret(WRONG_SECRET);
    let (n2, mut e2) = start(bad).await;
    let auth_failed = |e: &TransportEvent| {
        matches!(
            e,
            TransportEvent::HandshakeFailed {
                error: TransportError::AuthenticationFailed,
                ..
            }
        )
    };
    let refused_at = |at: SocketAddr| {
        move |e: &TransportEvent| {
            matches!(
                e,
                TransportEvent::HandshakeFailed {
                    addr,
                    error: TransportError::SecretRejected { remote_key: true },
                } if *addr == at
            )
        }
    };
    // Both directions fail, and each node sees both sides: n2 dials n1 and n1 dials n2.
    let mut seen = Vec::new();
    for (events, who) in [(&mut e1, "n1"), (&mut e2, "n2")] {
        let (event, before) =
            wait_for(events, &format!("{who} rejects its peer"), auth_failed).await;
        let TransportEvent::HandshakeFailed { error, .. } = &event else {
            unreachable!("matched")
        };
        assert_eq!(error.to_string(), "authentication failed");
        seen.extend(before);
    }
    for (events, peer, who) in [(&mut e1, a2, "n1"), (&mut e2, a1, "n2")] {
        let (event, before) =
            wait_for(events, &format!("{who}'s dial refused"), refused_at(peer)).await;
        let TransportEvent::HandshakeFailed { error, .. } = &event else {
            unreachable!("matched")
        };
        let message = error.to_string();
        assert_eq!(
            message,
            "authentication failed: the remote does not accept our secret (the secrets differ, \
             or its public key is not the one configured here)"
        );
        assert!(!message.contains(SECRET) && !message.contains(WRONG_SECRET));
        seen.extend(before);
    }
    // A raw client with the wrong secret (no keys) is told the same, and its link is closed.
    let mut raw = RawConn::connect(kind, a1).await.expect("raw link");
    let result = raw
        .handshake(
            Credential::ClusterSecret(&secret(WRONG_SECRET)),
            &Hello {
                id: id("n2"),
                kind: PeerKind::Peer,
            },
        )
        .await;
    assert!(
        matches!(
            result,
            Err(TransportError::SecretRejected { remote_key: false })
        ),
        "{result:?}"
    );
    let shown = format!(
        "{:?} {}",
        result,
        result
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(shown.contains("the secrets differ"), "{shown}");
    assert!(!shown.contains(SECRET) && !shown.contains(WRONG_SECRET));
    within("raw link closed", raw.closed()).await;
    seen.extend(drain(&mut e1));
    seen.extend(drain(&mut e2));
    assert!(no_frames(&seen));
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, TransportEvent::Connected { .. })),
        "{seen:?}"
    );
    assert!(n1.connected().is_empty() && n2.connected().is_empty());
    assert!(format!("{:?}", secret(SECRET)).contains("redacted"));
    n1.shutdown().await;
    n2.shutdown().await;
}

/// Garbage that is not a handshake message at all gets the same fixed refusal: it tells a
/// stranger nothing that the close right after its first message did not tell before.
async fn garbage_gets_the_fixed_refusal(kind: TransportKind) {
    let (n1, mut e1, addr) = lone_daemon(kind, |_| {}).await;
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    raw.send_raw(vec![0x42; 96]).await.expect("sent");
    let error = within("refusal", raw.recv_raw()).await.err();
    assert!(
        matches!(error, Some(TransportError::SecretRejected { .. })),
        "{error:?}"
    );
    wait_for(&mut e1, "n1 counts the garbage", |e| {
        matches!(
            e,
            TransportEvent::HandshakeFailed {
                error: TransportError::AuthenticationFailed,
                ..
            }
        )
    })
    .await;
    n1.shutdown().await;
}

/// A socket that takes what comes (UDP datagrams, or TCP connections into the kernel's
/// backlog) and never answers: the dial ends as "no answer", not as a stalled handshake,
/// so a driver can say that nothing speaks its transport there.
async fn dialing_where_nothing_answers_is_a_connect_timeout(kind: TransportKind) {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (_tcp, _udp, silent) = match kind {
        TransportKind::WebSocket => {
            let listener = std::net::TcpListener::bind(any).expect("bind");
            let addr = listener.local_addr().expect("addr");
            (Some(listener), None, addr)
        }
        _ => {
            let socket = std::net::UdpSocket::bind(any).expect("bind");
            let addr = socket.local_addr().expect("addr");
            (None, Some(socket), addr)
        }
    };
    let mut cfg = EndpointConfig::new(kind, id("drv"), PeerKind::Driver, secret(SECRET));
    cfg.limits.handshake_timeout = Duration::from_millis(500);
    let (driver, mut events) = start(cfg).await;
    driver.dial(silent);
    let (event, _) = wait_for(&mut events, "the dial gives up", |e| {
        matches!(e, TransportEvent::HandshakeFailed { .. })
    })
    .await;
    assert!(
        matches!(
            &event,
            TransportEvent::HandshakeFailed {
                addr,
                error: TransportError::ConnectTimeout,
            } if *addr == silent
        ),
        "{event:?}"
    );
    driver.shutdown().await;
}

async fn replayed_frame_is_rejected(kind: TransportKind) {
    let (n1, mut e1, addr) = lone_daemon(kind, |_| {}).await;
    let mut raw = raw_peer(kind, addr, "n2").await;
    let first = raw.seal(b"once").expect("seal");
    raw.send_raw(first.clone()).await.expect("send");
    assert_eq!(frame_from(&mut e1, "n2").await.0, b"once");
    raw.send_raw(first).await.expect("send replay");
    within("replay closes the link", raw.closed()).await;
    let (_, between) = wait_for(&mut e1, "n2 disconnected", |e| {
        matches!(e, TransportEvent::Disconnected { .. })
    })
    .await;
    assert!(
        no_frames(&between),
        "the replayed frame was delivered: {between:?}"
    );
    n1.shutdown().await;
}

async fn flipped_bits_are_rejected(kind: TransportKind) {
    let (n1, mut e1, addr) = lone_daemon(kind, |_| {}).await;
    // A bit in the nonce, in the ciphertext, and in the tag.
    for position in [3usize, 9, usize::MAX] {
        let mut raw = raw_peer(kind, addr, "n2").await;
        let mut sealed = raw.seal(b"sixteen byte msg").expect("seal");
        let at = position.min(sealed.len() - 1);
        sealed[at] ^= 0x10;
        raw.send_raw(sealed).await.expect("send");
        within("tampering closes the link", raw.closed()).await;
        let (_, between) = wait_for(&mut e1, "n2 disconnected", |e| {
            matches!(e, TransportEvent::Disconnected { .. })
        })
        .await;
        assert!(
            no_frames(&between),
            "a tampered frame was delivered: {between:?}"
        );
    }
    n1.shutdown().await;
}

async fn oversized_frame_closes_connection(kind: TransportKind) {
    let (n1, mut e1, addr) = lone_daemon(kind, |c| c.limits.max_frame_len = 1024).await;
    assert!(matches!(
        n1.send(&id("n2"), vec![0; 2048], SendClass::Reliable),
        Err(SendError::Oversized {
            len: 2048,
            limit: 1024
        })
    ));
    let mut raw = raw_peer(kind, addr, "n2").await;
    let sealed = raw.seal(&vec![7u8; 4096]).expect("seal");
    raw.send_raw(sealed).await.expect("send");
    within("oversized closes the link", raw.closed()).await;
    let (_, between) = wait_for(&mut e1, "n2 disconnected", |e| {
        matches!(e, TransportEvent::Disconnected { .. })
    })
    .await;
    assert!(no_frames(&between));
    // A frame within the limit still works on a new connection.
    let mut raw = raw_peer(kind, addr, "n2").await;
    let sealed = raw.seal(&[1u8; 1024]).expect("seal");
    raw.send_raw(sealed).await.expect("send");
    assert_eq!(frame_from(&mut e1, "n2").await.0, vec![1u8; 1024]);
    n1.shutdown().await;
}

async fn garbage_never_panics(kind: TransportKind) {
    let (n1, mut e1, addr) = lone_daemon(kind, |_| {}).await;
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        (0..=255u8).collect(),
        vec![0xFF; 5000],
    ];
    // Below the link: raw bytes on the socket.
    for bytes in &garbage {
        match kind {
            TransportKind::WebSocket => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
                let _ = tcp.write_all(bytes).await;
                let mut sink = Vec::new();
                let _ = within("server closes garbage tcp", tcp.read_to_end(&mut sink)).await;
            }
            TransportKind::Quic => {
                let udp = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                    .await
                    .expect("udp");
                let _ = udp.send_to(bytes, addr).await;
            }
        }
    }
    // Before the handshake: garbage as the first link message.
    for bytes in &garbage {
        let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
        let _ = raw.send_raw(bytes.clone()).await;
        within("garbage hello closes the link", raw.closed()).await;
    }
    // After the handshake: garbage as a sealed message.
    for bytes in &garbage {
        let mut raw = raw_peer(kind, addr, "n2").await;
        let _ = raw.send_raw(bytes.clone()).await;
        within("garbage frame closes the link", raw.closed()).await;
    }
    // Still serving.
    let mut raw = raw_peer(kind, addr, "n2").await;
    let sealed = raw.seal(b"still alive").expect("seal");
    raw.send_raw(sealed).await.expect("send");
    let (frame, before) = frame_from(&mut e1, "n2").await;
    assert_eq!(frame, b"still alive");
    assert!(
        no_frames(&before),
        "garbage was delivered as a frame: {before:?}"
    );
    n1.shutdown().await;
}

async fn silent_connection_times_out(kind: TransportKind) {
    let (n1, mut e1, addr) = lone_daemon(kind, |c| {
        c.limits.handshake_timeout = Duration::from_millis(300)
    })
    .await;
    if kind == TransportKind::WebSocket {
        use tokio::io::AsyncReadExt;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        let mut sink = Vec::new();
        let read = within("silent tcp closed", tcp.read_to_end(&mut sink)).await;
        assert!(read.is_ok() || read.is_err());
        assert!(sink.is_empty(), "nothing is sent to a silent client");
    }
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    within("silent link closed by the handshake timeout", raw.closed()).await;
    wait_for(&mut e1, "handshake timeout reported", |e| {
        matches!(
            e,
            TransportEvent::HandshakeFailed {
                error: TransportError::HandshakeTimeout,
                ..
            }
        )
    })
    .await;
    assert!(n1.connected().is_empty());
    n1.shutdown().await;
}

/// An authenticated peer that goes silent (a stalled stream: nothing arrives, not even a
/// keepalive) is closed after the idle timeout, and the daemon hears of it; a silent
/// driver is judged by its own, longer bound, so it is still connected then.
async fn a_silent_peer_is_closed_after_the_idle_timeout(kind: TransportKind) {
    let (n1, mut e1, addr) = lone_daemon(kind, |c| {
        c.accept_drivers = true;
        c.limits.idle_timeout = Duration::from_millis(300);
        c.limits.keepalive_interval = Duration::from_millis(75);
        c.limits.driver_idle_timeout = Duration::from_secs(120);
    })
    .await;
    let mut driver = RawConn::connect(kind, addr).await.expect("raw link");
    driver
        .handshake(
            Credential::Driver(&secret(SECRET)),
            &Hello {
                id: id("drv"),
                kind: PeerKind::Driver,
            },
        )
        .await
        .expect("driver handshake");
    connected(&mut e1, "drv").await;
    let mut peer = raw_peer(kind, addr, "n2").await;
    connected(&mut e1, "n2").await;
    let (event, _) = wait_for(&mut e1, "the silent peer dropped", |e| {
        matches!(e, TransportEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(&event, TransportEvent::Disconnected { id: who, kind: PeerKind::Peer } if *who == id("n2")),
        "the peer goes first: {event:?}"
    );
    within("the silent peer's link closed", peer.closed()).await;
    assert_eq!(n1.connected(), vec![(id("drv"), PeerKind::Driver)]);
    n1.shutdown().await;
}

async fn silent_connection_is_dropped_at_the_first_message_deadline(kind: TransportKind) {
    let (n1, mut e1, addr) = lone_daemon(kind, |c| {
        // Far beyond the test: only the first-message deadline may end the handshake.
        c.limits.handshake_timeout = Duration::from_secs(3600);
        c.limits.first_message_timeout = Duration::from_millis(300);
        // The deadline holds while more than half of the pool is taken: one connection here.
        c.limits.max_unauthenticated = 1;
    })
    .await;
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    within(
        "silent link closed at the first-message deadline",
        raw.closed(),
    )
    .await;
    wait_for(&mut e1, "handshake timeout reported", |e| {
        matches!(
            e,
            TransportEvent::HandshakeFailed {
                error: TransportError::HandshakeTimeout,
                ..
            }
        )
    })
    .await;
    // An honest handshake sends its first message at once and is not affected.
    let mut raw = raw_peer(kind, addr, "n2").await;
    let sealed = raw.seal(b"in time").expect("seal");
    raw.send_raw(sealed).await.expect("send");
    assert_eq!(frame_from(&mut e1, "n2").await.0, b"in time");
    n1.shutdown().await;
}

async fn unknown_node_id_is_refused(kind: TransportKind) {
    let (n1, mut e1, addr) = lone_daemon(kind, |_| {}).await;
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    let result = raw
        .handshake(
            Credential::ClusterSecret(&secret(SECRET)),
            &Hello {
                id: id("stranger"),
                kind: PeerKind::Peer,
            },
        )
        .await;
    assert!(
        matches!(
            result,
            Err(TransportError::Refused(RefuseReason::UnknownNode))
        ),
        "{result:?}"
    );
    within("refused link closed", raw.closed()).await;
    // Drivers are refused by a daemon that does not accept them.
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    let result = raw
        .handshake(
            Credential::Driver(&secret(SECRET)),
            &Hello {
                id: id("drv"),
                kind: PeerKind::Driver,
            },
        )
        .await;
    assert!(
        matches!(
            result,
            Err(TransportError::Refused(RefuseReason::KindNotAccepted))
        ),
        "{result:?}"
    );
    let (_, before) = wait_for(&mut e1, "refusal reported", |e| {
        matches!(
            e,
            TransportEvent::HandshakeFailed {
                error: TransportError::RefusedRemote { .. },
                ..
            }
        )
    })
    .await;
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, TransportEvent::Connected { .. }))
    );
    assert!(n1.connected().is_empty());
    n1.shutdown().await;
}

/// The attack: a holder of the cluster secret (or of another node's key) claims a lower
/// node id at a higher-id node, hoping to replace the real peer's connection. With node
/// keys the claim must be backed by that node's key, so it is refused and the real
/// connection is untouched.
async fn a_connection_proving_n3s_key_cannot_be_n1(kind: TransportKind) {
    let (a1, a2) = (free_addr(kind), free_addr(kind));
    let (n1, mut e1) = start(config(
        kind,
        "n1",
        Some(a1),
        &[("n2", a2), ("n3", free_addr(kind))],
    ))
    .await;
    let (n2, mut e2) = start(config(
        kind,
        "n2",
        Some(a2),
        &[("n1", a1), ("n3", free_addr(kind))],
    ))
    .await;
    connected(&mut e1, "n2").await;
    connected(&mut e2, "n1").await;
    // Both dialed: let the duplicate (if any) settle before the attack.
    heartbeat_arrives(&n1, "n2", &mut e2, b"settled").await;
    // (n3 never answers, so its dial failures keep coming: drain for a bounded time.)
    let quiet = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::timeout_at(quiet, e2.recv()).await.is_ok() {}
    let cluster = secret(SECRET);
    let (n3_key, n2_public) = (key_of("n3"), key_of("n2").public());
    let as_n1 = Hello {
        id: id("n1"),
        kind: PeerKind::Peer,
    };
    // n3's key, n1's name.
    let mut raw = RawConn::connect(kind, a2).await.expect("raw link");
    let result = raw
        .handshake(node_credential(&cluster, &n3_key, &n2_public), &as_n1)
        .await;
    assert!(
        matches!(
            result,
            Err(TransportError::Refused(RefuseReason::KeyRequired))
        ),
        "{result:?}"
    );
    // The cluster secret alone, n1's name.
    let mut raw = RawConn::connect(kind, a2).await.expect("raw link");
    let result = raw
        .handshake(Credential::ClusterSecret(&cluster), &as_n1)
        .await;
    assert!(
        matches!(
            result,
            Err(TransportError::Refused(RefuseReason::KeyRequired))
        ),
        "{result:?}"
    );
    // A made-up key, n1's name.
    let forged = NodeKey::from_private([1; 32]);
    let mut raw = RawConn::connect(kind, a2).await.expect("raw link");
    let result = raw
        .handshake(node_credential(&cluster, &forged, &n2_public), &as_n1)
        .await;
    assert!(
        matches!(
            result,
            Err(TransportError::Refused(RefuseReason::KeyRequired))
        ),
        "{result:?}"
    );
    // The real n1 connection was never replaced: frames still flow, no Disconnected.
    n1.send(&id("n2"), b"still me".to_vec(), SendClass::Reliable)
        .expect("queued");
    let (_, before) = wait_for(&mut e2, "frame from the real n1", |e| {
        matches!(e, TransportEvent::Frame { from, frame, .. } if from.as_str() == "n1" && frame == b"still me")
    })
    .await;
    assert!(
        !before.iter().any(|e| matches!(
            e,
            TransportEvent::Disconnected { .. } | TransportEvent::Connected { .. }
        )),
        "{before:?}"
    );
    n1.shutdown().await;
    n2.shutdown().await;
}

/// A driver's credential (every driver host has it) never makes a peer: not with the
/// driver flavour claiming a peer, and not used as if it were the cluster secret.
async fn a_driver_credential_cannot_be_a_peer(kind: TransportKind) {
    let driver_secret = secret("driver-credential-0123456789abcdef");
    let (n1, mut e1, addr) = lone_daemon(kind, |c| {
        c.accept_drivers = true;
        c.driver_secret = Some(secret("driver-credential-0123456789abcdef"));
    })
    .await;
    let as_n2 = Hello {
        id: id("n2"),
        kind: PeerKind::Peer,
    };
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    let result = raw
        .handshake(Credential::Driver(&driver_secret), &as_n2)
        .await;
    assert!(
        matches!(
            result,
            Err(TransportError::Refused(RefuseReason::KindNotAccepted))
        ),
        "{result:?}"
    );
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    let result = raw
        .handshake(Credential::ClusterSecret(&driver_secret), &as_n2)
        .await;
    assert!(result.is_err(), "{result:?}");
    // A driver still proving the cluster secret (not moved to the drivers' credential yet)
    // gets in, as a driver only: claiming a peer with it is refused.
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    let result = raw
        .handshake(Credential::Driver(&secret(SECRET)), &as_n2)
        .await;
    assert!(
        matches!(
            result,
            Err(TransportError::Refused(RefuseReason::KindNotAccepted))
        ),
        "{result:?}"
    );
    let as_driver = Hello {
        id: id("drv"),
        kind: PeerKind::Driver,
    };
    let mut old = RawConn::connect(kind, addr).await.expect("raw link");
    old.handshake(Credential::Driver(&secret(SECRET)), &as_driver)
        .await
        .expect("an old driver is still a driver");
    connected(&mut e1, "drv").await;
    // The right credential does.
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    raw.handshake(Credential::Driver(&driver_secret), &as_driver)
        .await
        .expect("driver accepted");
    connected(&mut e1, "drv").await;
    assert_eq!(n1.connected(), vec![(id("drv"), PeerKind::Driver)]);
    n1.shutdown().await;
}

/// A driver that knows its daemon's key connects only to that daemon: another holder of the
/// drivers' credential answering at the address (a spoofed or squatted port) cannot pose as
/// it and tell the driver it is master.
async fn a_driver_with_its_daemons_key_reaches_only_that_daemon(kind: TransportKind) {
    let credential = || secret("driver-credential-0123456789abcdef");
    let (real, mut real_events, real_addr) = lone_daemon(kind, |c| {
        c.accept_drivers = true;
        c.driver_secret = Some(credential());
    })
    .await;
    // The impostor: same credential, its own key (it is some other daemon, or a squatter).
    let (fake, mut fake_events, fake_addr) = lone_daemon(kind, |c| {
        c.local_id = id("n9");
        c.node_key = Some(key_of("n9"));
        c.accept_drivers = true;
        c.driver_secret = Some(credential());
    })
    .await;
    let mut cfg = EndpointConfig::new(kind, id("drv"), PeerKind::Driver, credential());
    cfg.daemon_key = Some(key_of("n1").public());
    cfg.limits.backoff_min = Duration::from_millis(20);
    cfg.limits.backoff_max = Duration::from_millis(100);
    let (driver, mut driver_events) = start(cfg).await;
    driver.dial(fake_addr);
    wait_for(
        &mut fake_events,
        "the impostor fails the driver's handshake",
        |e| matches!(e, TransportEvent::HandshakeFailed { .. }),
    )
    .await;
    assert!(fake.connected().is_empty());
    driver.dial(real_addr);
    connected(&mut real_events, "drv").await;
    let (event, before) = wait_for(&mut driver_events, "connected to the real daemon", |e| {
        matches!(e, TransportEvent::Connected { .. })
    })
    .await;
    assert!(
        matches!(&event, TransportEvent::Connected { id: daemon, .. } if daemon.as_str() == "n1"),
        "{event:?} after {before:?}"
    );
    assert!(fake.connected().is_empty(), "the impostor got the driver");
    driver.shutdown().await;
    real.shutdown().await;
    fake.shutdown().await;
}

/// Dialing by address (no expected id) with the cluster secret proves nothing about a
/// keyed node: an answer claiming to be one is refused, not registered as that peer.
async fn a_keyed_peer_reached_by_address_must_prove_its_key(kind: TransportKind) {
    let (a1, a2) = (free_addr(kind), free_addr(kind));
    let (n1, mut e1) = start(config(kind, "n1", Some(a1), &[("n2", a2)])).await;
    // The impostor calls itself n2 and takes keyless claims (it has the secret, not n2's key).
    let mut fake = config(kind, "n2", Some(free_addr(kind)), &[("n1", a1)]);
    fake.node_key = None;
    fake.peer_keys.clear();
    let (fake, _fake_events) = start(fake).await;
    n1.dial(fake.local_addr().expect("listening"));
    wait_for(&mut e1, "the impostor's answer refused", |e| {
        matches!(
            e,
            TransportEvent::HandshakeFailed {
                error: TransportError::RefusedRemote {
                    reason: RefuseReason::KeyRequired,
                    ..
                },
                ..
            }
        )
    })
    .await;
    assert!(n1.connected().is_empty(), "{:?}", n1.connected());
    n1.shutdown().await;
    fake.shutdown().await;
}

/// The local driver socket: a driver on the daemon's machine connects with no secret at
/// all (the socket's mode decides who may), and nothing but a driver can come in that way.
async fn a_local_driver_connects_on_the_socket_without_a_secret(kind: TransportKind) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("driver.sock");
    let (n1, mut e1, _) = lone_daemon(kind, |c| {
        c.accept_drivers = true;
        c.driver_secret = Some(secret("driver-credential-0123456789abcdef"));
        c.driver_socket = Some(clustd_transport::LocalSocket {
            path: path.clone(),
            mode: 0o660,
            gid: None,
        });
    })
    .await;
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "mode {mode:o}");
    // Any bytes will do as the driver's secret: it is not used on the socket.
    let cfg = EndpointConfig::new(
        kind,
        id("drv"),
        PeerKind::Driver,
        secret("not-the-credential-at-all-00000000"),
    );
    let (driver, mut driver_events) = start(cfg).await;
    driver.dial_socket(&path);
    // The daemon learns the driver's process from the kernel (here: this test process).
    let me = std::process::id();
    wait_for(&mut e1, "Connected(drv) with its process id", |e| {
        matches!(e, TransportEvent::Connected { id, process: Some(p), .. }
            if id.as_str() == "drv" && p.pid == me && p.start_time > 0)
    })
    .await;
    connected(&mut driver_events, "n1").await;
    n1.send(&id("drv"), b"over the socket".to_vec(), SendClass::Reliable)
        .expect("queued");
    assert_eq!(
        frame_from(&mut driver_events, "n1").await.0,
        b"over the socket"
    );
    // A peer claim on the socket is refused.
    let mut as_peer = config(kind, "n2", None, &[]);
    as_peer.peers.clear();
    let (peer, mut peer_events) = start(as_peer).await;
    peer.dial_socket(&path);
    wait_for(&mut peer_events, "the peer claim refused", |e| {
        matches!(
            e,
            TransportEvent::HandshakeFailed {
                error: TransportError::Refused(RefuseReason::KindNotAccepted),
                ..
            }
        )
    })
    .await;
    assert_eq!(n1.connected(), vec![(id("drv"), PeerKind::Driver)]);
    // A second daemon pointed at the same socket refuses to take it over.
    let mut second = config(kind, "n7", Some(free_addr(kind)), &[]);
    second.accept_drivers = true;
    second.driver_socket = Some(clustd_transport::LocalSocket {
        path: path.clone(),
        mode: 0o660,
        gid: None,
    });
    let err = Endpoint::start(TokioNet, second)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("another process serves it"), "{err}");
    driver.shutdown().await;
    peer.shutdown().await;
    n1.shutdown().await;
}

/// README's migration, round two: n1 already lists n2's key, n2 (which has its own key from
/// round one) still lists n1 without one. They connect, and frames flow both ways.
async fn migration_to_node_keys_keeps_the_pair_connected(kind: TransportKind) {
    let (a1, a2) = (free_addr(kind), free_addr(kind));
    let c1 = config(kind, "n1", Some(a1), &[("n2", a2)]);
    let mut c2 = config(kind, "n2", Some(a2), &[("n1", a1)]);
    c2.peer_keys.clear();
    let (n1, mut e1) = start(c1).await;
    let (n2, mut e2) = start(c2).await;
    connected(&mut e1, "n2").await;
    connected(&mut e2, "n1").await;
    heartbeat_arrives(&n1, "n2", &mut e2, b"to n2").await;
    heartbeat_arrives(&n2, "n1", &mut e1, b"to n1").await;
    n1.shutdown().await;
    n2.shutdown().await;
}

/// Holders of the drivers' credential cannot exhaust the daemon's descriptors: beyond
/// `max_drivers` a driver is refused (and told why); a reconnecting driver id still fits.
async fn driver_connections_are_capped(kind: TransportKind) {
    let (n1, mut e1, addr) = lone_daemon(kind, |c| {
        c.accept_drivers = true;
        c.limits.max_drivers = 2;
    })
    .await;
    let driver = |name: &str| Hello {
        id: id(name),
        kind: PeerKind::Driver,
    };
    let mut kept = Vec::new();
    for name in ["d1", "d2"] {
        let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
        raw.handshake(Credential::Driver(&secret(SECRET)), &driver(name))
            .await
            .expect("room for it");
        connected(&mut e1, name).await;
        kept.push(raw);
    }
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    let result = raw
        .handshake(Credential::Driver(&secret(SECRET)), &driver("d3"))
        .await;
    assert!(
        matches!(
            result,
            Err(TransportError::Refused(RefuseReason::TooManyDrivers))
        ),
        "{result:?}"
    );
    // d1 reconnecting (its old connection replaced) is not a third driver.
    let mut again = RawConn::connect(kind, addr).await.expect("raw link");
    again
        .handshake(Credential::Driver(&secret(SECRET)), &driver("d1"))
        .await
        .expect("a replacement fits");
    assert_eq!(
        n1.connected()
            .iter()
            .filter(|(_, k)| *k == PeerKind::Driver)
            .count(),
        2
    );
    n1.shutdown().await;
}

async fn second_driver_with_same_id_replaces_first(kind: TransportKind) {
    let (n1, mut e1, addr) = lone_daemon(kind, |c| c.accept_drivers = true).await;
    let hello = Hello {
        id: id("drv"),
        kind: PeerKind::Driver,
    };
    let mut first = RawConn::connect(kind, addr).await.expect("raw link");
    first
        .handshake(Credential::Driver(&secret(SECRET)), &hello)
        .await
        .expect("handshake");
    connected(&mut e1, "drv").await;
    let mut second = RawConn::connect(kind, addr).await.expect("raw link");
    second
        .handshake(Credential::Driver(&secret(SECRET)), &hello)
        .await
        .expect("handshake");
    wait_for(&mut e1, "old one disconnected", |e| {
        matches!(e, TransportEvent::Disconnected { .. })
    })
    .await;
    connected(&mut e1, "drv").await;
    within("first connection closed", first.closed()).await;
    assert_eq!(n1.connected(), vec![(id("drv"), PeerKind::Driver)]);
    n1.send(&id("drv"), b"to the new one".to_vec(), SendClass::Reliable)
        .expect("queued");
    assert_eq!(
        within("frame on second", second.recv_frame())
            .await
            .expect("frame"),
        b"to the new one"
    );
    n1.shutdown().await;
}

/// Whether a silent TCP client's socket is still open: nothing to read, and no EOF.
fn tcp_still_open(tcp: &std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut byte = [0u8; 1];
    matches!((&*tcp).read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn unauthenticated_connections_are_capped(kind: TransportKind) {
    let (a1, a2) = (free_addr(kind), free_addr(kind));
    let mut cfg = config(kind, "n1", Some(a1), &[("n2", a2)]);
    cfg.limits.max_unauthenticated = 2;
    // Far beyond the test: only the cap may close a silent client here.
    cfg.limits.handshake_timeout = Duration::from_secs(3600);
    cfg.limits.first_message_timeout = Duration::from_secs(3600);
    cfg.limits.idle_timeout = Duration::from_secs(3600);
    let (n1, mut e1) = start(cfg).await;
    match kind {
        TransportKind::WebSocket => {
            use tokio::io::AsyncReadExt;
            // Two clients that connect and never speak hold both slots (the listener
            // accepts in connection order, so these two are the ones admitted).
            let mut first = tokio::net::TcpStream::connect(a1).await.expect("tcp");
            let second = tokio::net::TcpStream::connect(a1).await.expect("tcp");
            let third = tokio::net::TcpStream::connect(a1).await.expect("tcp");
            // The third takes the oldest one's slot instead of being refused.
            let mut sink = Vec::new();
            let read = within("the oldest client is evicted", first.read_to_end(&mut sink)).await;
            assert!(
                sink.is_empty(),
                "nothing is sent to an evicted client: {read:?}"
            );
            // Non-blocking std sockets (tokio's `try_read` would only reflect cached readiness).
            let admitted: Vec<std::net::TcpStream> = [second, third]
                .into_iter()
                .map(|tcp| tcp.into_std().expect("std socket"))
                .collect();
            assert!(
                admitted.iter().all(tcp_still_open),
                "the two newest clients are still waiting for their handshake"
            );
            drop(admitted);
        }
        TransportKind::Quic => {
            // A QUIC connection whose stream never carries a byte holds its slot in
            // `accept_bi`. The slot is taken before the QUIC handshake is accepted, so
            // once `connect` returns, the endpoint counts the connection.
            let mut first = RawConn::connect(kind, a1).await.expect("raw link");
            let second = RawConn::connect(kind, a1).await.expect("raw link");
            let third = within(
                "a client over the cap is admitted",
                RawConn::connect(kind, a1),
            )
            .await
            .expect("the newest client takes the oldest one's slot");
            within("the oldest client is evicted", first.closed()).await;
            drop((second, third));
        }
    }
    // Once the silent clients are gone, a real peer gets in (it may be dropped while their
    // permits are still held: it retries with backoff).
    let (n2, mut e2) = start(config(kind, "n2", None, &[("n1", a1)])).await;
    connected(&mut e1, "n2").await;
    connected(&mut e2, "n1").await;
    send_when_connected(&n2, "n1", b"past the cap", SendClass::Reliable).await;
    send_when_connected(&n1, "n2", b"welcome", SendClass::Reliable).await;
    assert_eq!(frame_from(&mut e1, "n2").await.0, b"past the cap");
    assert_eq!(frame_from(&mut e2, "n1").await.0, b"welcome");
    n2.shutdown().await;
    n1.shutdown().await;
}

/// Keeps `slots` silent connections to `addr` open from background tasks: each one connects
/// (TCP only for WebSocket; a QUIC connection whose stream never carries a byte), waits
/// until the endpoint drops it, pauses a little and reconnects. Aborted when dropped. The
/// counter counts the connection attempts so far.
fn silent_flood(
    kind: TransportKind,
    addr: SocketAddr,
    slots: usize,
) -> (tokio::task::JoinSet<()>, std::sync::Arc<AtomicUsize>) {
    let opened = std::sync::Arc::new(AtomicUsize::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..slots {
        let opened = opened.clone();
        flood.spawn(async move {
            loop {
                opened.fetch_add(1, Ordering::Relaxed);
                match kind {
                    TransportKind::WebSocket => {
                        use tokio::io::AsyncReadExt;
                        if let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await {
                            let mut sink = Vec::new();
                            let _ = tcp.read_to_end(&mut sink).await;
                        }
                    }
                    TransportKind::Quic => {
                        if let Ok(mut raw) = RawConn::connect(kind, addr).await {
                            raw.closed().await;
                        }
                    }
                }
                // A reconnecting attacker, not a busy loop (a few per second per slot).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    (flood, opened)
}

async fn peer_connects_through_a_flood_of_silent_connections(kind: TransportKind) {
    let (a1, a2) = (free_addr(kind), free_addr(kind));
    let mut cfg = config(kind, "n1", Some(a1), &[("n2", a2)]);
    cfg.limits.max_unauthenticated = 8;
    // Far beyond the test: a silent connection is never ended by the handshake timeout or
    // QUIC's idle timeout here, only by admission.
    cfg.limits.handshake_timeout = Duration::from_secs(3600);
    cfg.limits.idle_timeout = Duration::from_secs(3600);
    let (n1, mut e1) = start(cfg).await;
    // Twice the limit, all from 127.0.0.1 like the peer.
    let (flood, opened) = silent_flood(kind, a1, 16);
    // Every slot is taken before the peer starts dialing.
    let deadline = tokio::time::Instant::now() + WAIT;
    while opened.load(Ordering::Relaxed) < 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The peer only dials: n1 cannot reach it the other way round, past the flood.
    let (n2, mut e2) = start(config(kind, "n2", None, &[("n1", a1)])).await;
    // Well within what a silent connection could hold a slot for before admission existed.
    let bound = Duration::from_secs(10);
    tokio::time::timeout(bound, connected(&mut e1, "n2"))
        .await
        .expect("the peer got in while the flood ran");
    connected(&mut e2, "n1").await;
    send_when_connected(&n2, "n1", b"through the flood", SendClass::Reliable).await;
    assert_eq!(frame_from(&mut e1, "n2").await.0, b"through the flood");
    drop(flood);
    n2.shutdown().await;
    n1.shutdown().await;
}

async fn shutdown_does_not_wait_for_silent_clients(kind: TransportKind) {
    let (n1, _e1, addr) = lone_daemon(kind, |c| {
        // Far beyond the test: only shutdown may end these handshakes.
        c.limits.handshake_timeout = Duration::from_secs(3600);
    })
    .await;
    // One link that never starts the handshake, and for WebSocket one TCP socket that never
    // even upgrades.
    let mut raw = RawConn::connect(kind, addr).await.expect("raw link");
    let tcp = match kind {
        TransportKind::WebSocket => Some(tokio::net::TcpStream::connect(addr).await.expect("tcp")),
        TransportKind::Quic => None,
    };
    within("shutdown with silent clients connected", n1.shutdown()).await;
    within("silent link closed by shutdown", raw.closed()).await;
    drop(tcp);
}

/// The first `count` numbered frames from `from` on `events`, in arrival order, and how
/// many `Disconnected` events came meanwhile.
async fn receive_numbered(
    events: &mut Receiver<TransportEvent>,
    from: &str,
    count: u32,
) -> (Vec<u32>, usize) {
    let from = id(from);
    let (mut got, mut swaps) = (Vec::new(), 0);
    while got.len() < count as usize {
        match events.recv().await.expect("events") {
            TransportEvent::Frame { from: f, frame, .. } if f == from => {
                got.push(u32::from_be_bytes(frame.try_into().expect("4 bytes")));
            }
            TransportEvent::Disconnected { .. } => swaps += 1,
            _ => {}
        }
    }
    (got, swaps)
}

/// Rounds of [`stress_duplicate_connections`]: `CLUSTD_STRESS_ROUNDS`, or a CI-sized count.
fn stress_rounds() -> usize {
    std::env::var("CLUSTD_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// Two endpoints started at once, each dialing the other within a millisecond, so the two
/// connections cross and one replaces the other while both ends stream Reliable frames
/// (sent as soon as the first connection is up). Every frame must arrive exactly once and
/// in order, in both directions, every round; no `Disconnected` may be a real break. Prints
/// how many rounds swapped connections under load (the case that used to lose frames).
///
/// And a swap must not stall the stream: the handshake timeout (which bounds how long a
/// replaced QUIC connection lingers for its remote to close) is set far beyond `WAIT`.
async fn stress_duplicate_connections(kind: TransportKind) {
    const FRAMES: u32 = 300;
    let rounds = stress_rounds();
    let mut swapped = 0;
    for round in 0..rounds {
        let (a1, a2) = (free_addr(kind), free_addr(kind));
        let mut c1 = config(kind, "n1", Some(a1), &[("n2", a2)]);
        let mut c2 = config(kind, "n2", Some(a2), &[("n1", a1)]);
        for c in [&mut c1, &mut c2] {
            c.limits.backoff_min = Duration::from_millis(1);
            c.limits.handshake_timeout = WAIT * 3;
        }
        let ((n1, mut e1), (n2, mut e2)) = tokio::join!(start(c1), start(c2));
        let stream = |from: Endpoint, to: &'static str| {
            tokio::spawn(async move {
                for i in 0..FRAMES {
                    send_when_connected(&from, to, &i.to_be_bytes(), SendClass::Reliable).await;
                    if i % 8 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        let (s1, s2) = (stream(n1.clone(), "n2"), stream(n2.clone(), "n1"));
        let ((got2, swaps2), (got1, swaps1)) = within("every frame of the round", async {
            tokio::join!(
                receive_numbered(&mut e2, "n1", FRAMES),
                receive_numbered(&mut e1, "n2", FRAMES)
            )
        })
        .await;
        let expected: Vec<u32> = (0..FRAMES).collect();
        assert_eq!(
            got2, expected,
            "round {round}: n1 -> n2 lost or reordered frames"
        );
        assert_eq!(
            got1, expected,
            "round {round}: n2 -> n1 lost or reordered frames"
        );
        s1.await.expect("sender n1");
        s2.await.expect("sender n2");
        assert_eq!(n1.connected(), vec![(id("n2"), PeerKind::Peer)]);
        assert_eq!(n2.connected(), vec![(id("n1"), PeerKind::Peer)]);
        if swaps1 + swaps2 > 0 {
            swapped += 1;
        }
        n1.shutdown().await;
        n2.shutdown().await;
    }
    eprintln!("{kind}: {swapped} of {rounds} rounds replaced a duplicate connection mid-stream");
}

/// Waits for the next `Connected` on `events`.
async fn next_connected(events: &mut Receiver<TransportEvent>) {
    loop {
        if let TransportEvent::Connected { .. } = events.recv().await.expect("events") {
            return;
        }
    }
}

/// A dial that reaches its remote late lands after the remote's own dial made the pair's
/// connection, and replaces that connection at both ends at once. On QUIC this happens to
/// every fresh cluster: a daemon's first Initial to a peer not listening yet is lost and
/// quinn resends it about a second later. Reliable frames sent after the swap must flow
/// although the handshake timeout (the bound on a replaced connection's wind-down, the
/// linger for the remote's close) is set far beyond `WAIT`. (This pair of endpoints did
/// not stall even before the successor stopped waiting for the old connection's linger;
/// the daemons' fresh-cluster failover did: see README, ultra-fast profile.)
#[tokio::test]
async fn quic_a_late_duplicate_does_not_stall_reliable_frames() {
    const FRAMES: u32 = 50;
    let kind = TransportKind::Quic;
    let mut swapped = None;
    for _attempt in 0..5 {
        let (a1, a2) = (free_addr(kind), free_addr(kind));
        let mut c1 = config(kind, "n1", Some(a1), &[("n2", a2)]);
        let mut c2 = config(kind, "n2", Some(a2), &[("n1", a1)]);
        for c in [&mut c1, &mut c2] {
            c.limits.handshake_timeout = WAIT * 3;
        }
        // n1 dials before n2 listens: its first Initial is lost, its resend comes late.
        let (n1, e1) = start(c1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (n2, mut e2) = start(c2).await;
        within("n2 connected to n1", next_connected(&mut e2)).await;
        // The late dial replaces it (a second `Connected`), unless it was the first to land
        // (a slow start of n2): then try again.
        if tokio::time::timeout(Duration::from_secs(5), next_connected(&mut e2))
            .await
            .is_ok()
        {
            swapped = Some((n1, e1, n2, e2));
            break;
        }
        n1.shutdown().await;
        n2.shutdown().await;
    }
    let (n1, mut e1, n2, mut e2) =
        swapped.expect("no late duplicate replaced a connection in 5 tries");
    let stream = |from: Endpoint, to: &'static str| {
        tokio::spawn(async move {
            for i in 0..FRAMES {
                send_when_connected(&from, to, &i.to_be_bytes(), SendClass::Reliable).await;
            }
        })
    };
    let (s1, s2) = (stream(n1.clone(), "n2"), stream(n2.clone(), "n1"));
    let ((got2, _), (got1, _)) = within(
        "reliable frames on the connection that replaced the first",
        async {
            tokio::join!(
                receive_numbered(&mut e2, "n1", FRAMES),
                receive_numbered(&mut e1, "n2", FRAMES)
            )
        },
    )
    .await;
    let expected: Vec<u32> = (0..FRAMES).collect();
    assert_eq!(got2, expected, "n1 -> n2 lost or reordered frames");
    assert_eq!(got1, expected, "n2 -> n1 lost or reordered frames");
    s1.await.expect("sender n1");
    s2.await.expect("sender n2");
    n1.shutdown().await;
    n2.shutdown().await;
}

clustd_transport::both_transports!(
    two_endpoints_exchange_frames,
    three_endpoints_exchange_frames,
    driver_dials_by_address,
    reconnects_after_remote_restart,
    wrong_secret_is_rejected,
    garbage_gets_the_fixed_refusal,
    dialing_where_nothing_answers_is_a_connect_timeout,
    replayed_frame_is_rejected,
    flipped_bits_are_rejected,
    oversized_frame_closes_connection,
    garbage_never_panics,
    silent_connection_times_out,
    a_silent_peer_is_closed_after_the_idle_timeout,
    silent_connection_is_dropped_at_the_first_message_deadline,
    unknown_node_id_is_refused,
    second_driver_with_same_id_replaces_first,
    a_connection_proving_n3s_key_cannot_be_n1,
    a_driver_credential_cannot_be_a_peer,
    migration_to_node_keys_keeps_the_pair_connected,
    driver_connections_are_capped,
    a_driver_with_its_daemons_key_reaches_only_that_daemon,
    a_keyed_peer_reached_by_address_must_prove_its_key,
    a_local_driver_connects_on_the_socket_without_a_secret,
    unauthenticated_connections_are_capped,
    shutdown_does_not_wait_for_silent_clients,
    peer_connects_through_a_flood_of_silent_connections,
    stress_duplicate_connections,
);

// --- wss:// (WebSocket only) ------------------------------------------------------------

/// A fresh self-signed certificate for `localhost`.
fn certificate() -> rcgen::CertifiedKey<rcgen::KeyPair> {
    rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate")
}

/// `certificate` written as PEM files into `dir`, under `name`.cert.pem and `name`.key.pem.
fn pem_files(
    dir: &tempfile::TempDir,
    name: &str,
    certified: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.path().join(format!("{name}.cert.pem")),
        key: dir.path().join(format!("{name}.key.pem")),
    };
    std::fs::write(&files.cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&files.key, certified.signing_key.serialize_pem()).expect("write key");
    files
}

fn with_wss(mut config: EndpointConfig, files: &TlsFiles) -> EndpointConfig {
    config.tls = Some(files.clone());
    config.dial_tls = true;
    config
}

/// Completes a TLS handshake with `addr`, trusting only `certified`'s certificate for
/// `localhost`: proves the listener serves exactly the configured certificate.
async fn tls_handshake_with(addr: SocketAddr, certified: &rcgen::CertifiedKey<rcgen::KeyPair>) {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(certified.cert.der().clone())
        .expect("trust the test certificate");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    within("TLS handshake", connector.connect(name, tcp))
        .await
        .expect("the listener speaks TLS with the configured certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_endpoints_exchange_frames() {
    let kind = TransportKind::WebSocket;
    let dir = tempfile::tempdir().expect("temp dir");
    let (c1, c2) = (certificate(), certificate());
    let (f1, f2) = (pem_files(&dir, "n1", &c1), pem_files(&dir, "n2", &c2));
    let (a1, a2) = (free_addr(kind), free_addr(kind));
    let (n1, mut e1) = start(with_wss(config(kind, "n1", Some(a1), &[("n2", a2)]), &f1)).await;
    let (n2, mut e2) = start(with_wss(config(kind, "n2", Some(a2), &[("n1", a1)]), &f2)).await;
    tls_handshake_with(a1, &c1).await;
    tls_handshake_with(a2, &c2).await;
    connected(&mut e1, "n2").await;
    connected(&mut e2, "n1").await;
    reliable_arrives(&n1, "n2", &mut e2, b"hello n2 over tls").await;
    reliable_arrives(&n2, "n1", &mut e1, b"hello n1 over tls").await;
    heartbeat_arrives(&n2, "n1", &mut e1, b"heartbeat").await;
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ws_dialer_cannot_reach_wss_listener() {
    let kind = TransportKind::WebSocket;
    let dir = tempfile::tempdir().expect("temp dir");
    let files = pem_files(&dir, "n1", &certificate());
    let (n1, mut e1, addr) = lone_daemon(kind, |c| *c = with_wss(c.clone(), &files)).await;
    // A raw `ws://` link is not even established.
    let raw = within("plain link to a TLS listener", RawConn::connect(kind, addr)).await;
    assert!(
        raw.is_err(),
        "a ws:// link to a wss:// listener was established"
    );
    // A plain endpoint (dial_tls = false) fails, and fails again on retry.
    let (n2, mut e2) = start(config(kind, "n2", None, &[("n1", addr)])).await;
    let mut seen = Vec::new();
    for attempt in ["first", "retried"] {
        let (_, before) = wait_for(
            &mut e2,
            &format!("{attempt} plain dial fails"),
            |e| matches!(e, TransportEvent::HandshakeFailed { addr: a, .. } if *a == addr),
        )
        .await;
        seen.extend(before);
    }
    seen.extend(drain(&mut e1));
    seen.extend(drain(&mut e2));
    assert!(no_frames(&seen), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, TransportEvent::Connected { .. })),
        "{seen:?}"
    );
    assert!(n1.connected().is_empty() && n2.connected().is_empty());
    assert!(matches!(
        n2.send(&id("n1"), b"x".to_vec(), SendClass::Reliable),
        Err(SendError::NotConnected(_))
    ));
    n2.shutdown().await;
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_fail_at_start() {
    let kind = TransportKind::WebSocket;
    let dir = tempfile::tempdir().expect("temp dir");
    let good = pem_files(&dir, "good", &certificate());
    let other = pem_files(&dir, "other", &certificate());
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").expect("write garbage");
    // (files, the path the error must name; None when the pair is the problem)
    let cases = [
        (
            TlsFiles {
                cert: missing.clone(),
                key: good.key.clone(),
            },
            Some(&missing),
        ),
        (
            TlsFiles {
                cert: good.cert.clone(),
                key: missing.clone(),
            },
            Some(&missing),
        ),
        (
            TlsFiles {
                cert: garbage.clone(),
                key: good.key.clone(),
            },
            Some(&garbage),
        ),
        (
            TlsFiles {
                cert: good.cert.clone(),
                key: garbage.clone(),
            },
            Some(&garbage),
        ),
        // A certificate file holds no private key.
        (
            TlsFiles {
                cert: good.cert.clone(),
                key: good.cert.clone(),
            },
            Some(&good.cert),
        ),
        // Both valid, but the key is not the certificate's.
        (
            TlsFiles {
                cert: good.cert.clone(),
                key: other.key.clone(),
            },
            None,
        ),
    ];
    for (files, named) in cases {
        let cfg = with_wss(config(kind, "n1", Some(free_addr(kind)), &[]), &files);
        match Endpoint::start(TokioNet, cfg).await {
            Err(TransportError::Tls(message)) => {
                if let Some(path) = named {
                    assert!(
                        message.contains(&path.display().to_string()),
                        "{files:?}: the error does not name the file: {message}"
                    );
                }
            }
            Err(other) => panic!("{files:?}: expected a TLS error, got {other}"),
            Ok((endpoint, _)) => {
                endpoint.shutdown().await;
                panic!("{files:?}: the endpoint started");
            }
        }
    }
}
