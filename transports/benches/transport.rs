//! Transport benchmark over loopback, for each transport: round-trip time of a small frame
//! (p50/p99), one-way frames per second, and handshake time (link + Noise).
//!
//! Run: `cargo bench -p clustd-transport --bench transport` (optionally `-- --quick`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clustd_core::NodeId;
use clustd_transport::raw::RawConn;
use clustd_transport::session::Hello;
use clustd_transport::{
    Endpoint, EndpointConfig, PeerKind, Secret, SendClass, TokioNet, TransportEvent, TransportKind,
};
use tokio::sync::mpsc::Receiver;

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

fn secret() -> Secret {
    Secret::from_bytes(b"benchmark-cluster-secret-0123456789".to_vec()).expect("long enough")
}

fn free_addr(kind: TransportKind) -> SocketAddr {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    match kind {
        TransportKind::WebSocket => std::net::TcpListener::bind(any).and_then(|l| l.local_addr()),
        TransportKind::Quic => std::net::UdpSocket::bind(any).and_then(|s| s.local_addr()),
    }
    .expect("bind loopback")
}

fn config(
    kind: TransportKind,
    me: &str,
    listen: Option<SocketAddr>,
    peer: (&str, SocketAddr),
) -> EndpointConfig {
    let mut config = EndpointConfig::new(kind, id(me), PeerKind::Peer, secret());
    config.listen = listen;
    config.peers = BTreeMap::from([(id(peer.0), peer.1)]);
    // The throughput run queues everything at once.
    config.limits.send_queue = 1 << 20;
    config.limits.event_queue = 1 << 16;
    config
}

async fn next_frame(events: &mut Receiver<TransportEvent>) -> Vec<u8> {
    loop {
        match events.recv().await.expect("events") {
            TransportEvent::Frame { frame, .. } => return frame,
            _ => continue,
        }
    }
}

async fn wait_connected(events: &mut Receiver<TransportEvent>) {
    loop {
        if let TransportEvent::Connected { .. } = events.recv().await.expect("events") {
            return;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

struct Row {
    kind: TransportKind,
    rtt_p50: Duration,
    rtt_p99: Duration,
    frames_per_sec: f64,
    handshake_p50: Duration,
    handshake_p99: Duration,
}

async fn bench(kind: TransportKind, rtt_rounds: usize, frames: usize, handshakes: usize) -> Row {
    let (a1, a2) = (free_addr(kind), free_addr(kind));
    let (n1, mut e1) = Endpoint::start(TokioNet, config(kind, "n1", Some(a1), ("n2", a2)))
        .await
        .expect("start");
    let (n2, mut e2) = Endpoint::start(TokioNet, config(kind, "n2", Some(a2), ("n1", a1)))
        .await
        .expect("start");
    wait_connected(&mut e1).await;
    wait_connected(&mut e2).await;
    // Let duplicate-connection resolution settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while e1.try_recv().is_ok() {}
    while e2.try_recv().is_ok() {}

    // Echo server on n2.
    let echo = {
        let n2 = n2.clone();
        tokio::spawn(async move {
            while let Some(event) = e2.recv().await {
                if let TransportEvent::Frame { from, frame, .. } = event
                    && frame.first() == Some(&1)
                {
                    let _ = n2.send(&from, frame, SendClass::Reliable);
                }
            }
        })
    };

    // Round trips of a 32-byte frame (first byte 1 = echo me).
    let peer = id("n2");
    let mut rtts = Vec::with_capacity(rtt_rounds);
    let frame = {
        let mut f = vec![0u8; 32];
        f[0] = 1;
        f
    };
    for round in 0..rtt_rounds + 100 {
        let start = Instant::now();
        n1.send(&peer, frame.clone(), SendClass::Reliable)
            .expect("send");
        next_frame(&mut e1).await;
        if round >= 100 {
            rtts.push(start.elapsed()); // first 100 are warm-up
        }
    }
    rtts.sort();

    // One-way throughput of 64-byte frames (first byte 0 = do not echo); the last one echoes.
    let small = vec![0u8; 64];
    let start = Instant::now();
    for _ in 0..frames - 1 {
        n1.send(&peer, small.clone(), SendClass::Reliable)
            .expect("send");
    }
    n1.send(&peer, frame.clone(), SendClass::Reliable)
        .expect("send");
    next_frame(&mut e1).await;
    let frames_per_sec = frames as f64 / start.elapsed().as_secs_f64();

    // Handshakes: link establishment + Noise, against n1 (posing as n2 is fine: the
    // duplicate is drained and closed).
    let mut times = Vec::with_capacity(handshakes);
    for _ in 0..handshakes {
        let start = Instant::now();
        let mut raw = RawConn::connect(kind, a1).await.expect("raw connect");
        raw.handshake(
            clustd_transport::session::Credential::ClusterSecret(&secret()),
            &Hello {
                id: id("n2"),
                kind: PeerKind::Peer,
            },
        )
        .await
        .expect("handshake");
        times.push(start.elapsed());
        drop(raw);
    }
    times.sort();

    echo.abort();
    n1.shutdown().await;
    n2.shutdown().await;
    Row {
        kind,
        rtt_p50: percentile(&rtts, 0.5),
        rtt_p99: percentile(&rtts, 0.99),
        frames_per_sec,
        handshake_p50: percentile(&times, 0.5),
        handshake_p99: percentile(&times, 0.99),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rtt_rounds, frames, handshakes) = if quick {
        (500, 20_000, 20)
    } else {
        (5_000, 200_000, 100)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows: Vec<Row> = [TransportKind::WebSocket, TransportKind::Quic]
        .into_iter()
        .map(|kind| runtime.block_on(bench(kind, rtt_rounds, frames, handshakes)))
        .collect();
    println!();
    println!(
        "clustd-transport over 127.0.0.1 ({rtt_rounds} round trips of 32 B, {frames} frames of 64 B one way, {handshakes} handshakes)"
    );
    println!(
        "{:<10} {:>10} {:>10} {:>14} {:>14} {:>14}",
        "transport", "RTT p50", "RTT p99", "frames/s", "handshake p50", "handshake p99"
    );
    for row in rows {
        println!(
            "{:<10} {:>10.1?} {:>10.1?} {:>14.0} {:>14.1?} {:>14.1?}",
            format!("{:?}", row.kind),
            row.rtt_p50,
            row.rtt_p99,
            row.frames_per_sec,
            row.handshake_p50,
            row.handshake_p99
        );
    }
}
