//! Hostile networks against real daemons on loopback: a flood of silent connections to
//! every node does not keep a restarted node out of its cluster.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clustd::local::{LocalCluster, LocalNode};
use clustd::runtime::Shutdown;
use clustd_transport::TransportKind;
use clustd_transport::raw::QuicDialer;

const WAIT: Duration = Duration::from_secs(30);
const ELECTION: &str = "heartbeat_ms = 100\nelection_timeout_ms = [1000, 2000]";
/// Each daemon's pool of unauthenticated connections, shrunk from the default 64 so that
/// the flood (whose QUIC handshakes cost CPU in this debug build, in this process) does not
/// starve the whole machine: admission is what is tested, not the CPU.
const POOL: usize = 8;
/// Silent connections per node: more than the pool.
const FLOOD_PER_NODE: usize = 12;

clustd_transport::both_transports!(restarted_node_rejoins_through_a_flood_of_silent_connections);

/// Keeps `per_addr` silent connections open to each address from background tasks
/// (a bare TCP socket for WebSocket; a QUIC connection whose stream never carries a byte),
/// reopening each one shortly after it is dropped or fails. Aborted when dropped; the
/// counter counts attempts.
fn silent_flood(
    kind: TransportKind,
    quic: &QuicDialer,
    addrs: &[SocketAddr],
    per_addr: usize,
) -> (tokio::task::JoinSet<()>, Arc<AtomicUsize>) {
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for &addr in addrs {
        for _ in 0..per_addr {
            let attempts = attempts.clone();
            let dialer = quic.clone();
            flood.spawn(async move {
                loop {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    // A target that is down (or drops what it cannot take) is retried soon.
                    let connect = Duration::from_millis(500);
                    match kind {
                        TransportKind::WebSocket => {
                            use tokio::io::AsyncReadExt;
                            let tcp =
                                tokio::time::timeout(connect, tokio::net::TcpStream::connect(addr));
                            if let Ok(Ok(mut tcp)) = tcp.await {
                                let mut sink = Vec::new();
                                let _ = tcp.read_to_end(&mut sink).await;
                            }
                        }
                        TransportKind::Quic => {
                            let raw = tokio::time::timeout(connect, dialer.connect(addr));
                            if let Ok(Ok(mut raw)) = raw.await {
                                raw.closed().await;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    }
    (flood, attempts)
}

async fn restarted_node_rejoins_through_a_flood_of_silent_connections(kind: TransportKind) {
    // Logs only when RUST_LOG is set.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (dir, mut settings) = LocalCluster::configure(3, kind, ELECTION).expect("config");
    for s in &mut settings {
        s.transport_limits.max_unauthenticated = POOL;
    }
    let nodes = settings.iter().map(LocalNode::start).collect();
    let mut cluster = LocalCluster {
        dir,
        settings,
        nodes,
    };
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let i = (0..3)
        .find(|&i| cluster.nodes[i].settings.id != master)
        .expect("a backup");
    cluster.stop(i, Shutdown::Immediate).await.expect("stop");
    // Every node's port, the stopped one's too: its peers must dial it through the flood.
    let addrs: Vec<SocketAddr> = cluster.settings.iter().map(|s| s.listen).collect();
    let quic = QuicDialer::new().await.expect("client endpoint");
    let (flood, attempts) = silent_flood(kind, &quic, &addrs, FLOOD_PER_NODE);
    let deadline = tokio::time::Instant::now() + WAIT;
    while attempts.load(Ordering::Relaxed) < 2 * addrs.len() * FLOOD_PER_NODE {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.restart(i).await.expect("restarts");
    // A few election timeouts (at most 2 s each), far less than the flood lasts.
    let bound = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = cluster.nodes[i].handle.status();
        if s.leader.as_deref() == Some(master.as_str()) && s.role == "backup" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < bound,
            "the restarted node stayed out while the flood ran: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cluster.masters(), vec![master.clone()]);
    drop(flood);
    cluster.shutdown().await;
}
