//! The admin API over real HTTP on loopback: status JSON fields, metric names, commands.

use std::time::Duration;

use clustd::admin::{AdminLimits, Client};
use clustd::local::LocalCluster;
use clustd::status::Status;
use clustd_transport::TransportKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metrics_and_commands() {
    let mut cluster = LocalCluster::start(3, TransportKind::WebSocket, "").expect("cluster");
    let master = cluster
        .wait_for_master(None, Duration::from_secs(30))
        .await
        .expect("a master");
    let i = cluster.index(&master).expect("known");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(clustd::admin::serve(
        listener,
        cluster.nodes[i].handle.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let client = Client::new(addr);

    let json: serde_json::Value =
        serde_json::from_str(&client.status_json().await.expect("GET /status")).expect("JSON");
    for field in [
        "node_id",
        "role",
        "protocol_role",
        "term",
        "leader",
        "lease_remaining_ms",
        "maintenance",
        "peers",
        "drivers",
        "history",
        "elections_started",
        "elections_won",
        "leader_changes",
        "transport",
    ] {
        assert!(json.get(field).is_some(), "status lacks {field}: {json}");
    }
    let status: Status = serde_json::from_value(json).expect("typed");
    assert_eq!(status.role, "master");
    assert_eq!(status.node_id, master.as_str());
    assert!(status.lease_remaining_ms.is_some());
    assert_eq!(status.peers.len(), 2);
    assert!(
        status
            .history
            .iter()
            .any(|h| h.role == "master" && h.reason == "elected")
    );
    assert!(status.render().contains("is MASTER"));

    let metrics = client.metrics().await.expect("GET /metrics");
    for name in [
        "clustd_master 1",
        "clustd_term ",
        "clustd_leader_changes_total",
        "clustd_elections_started_total",
        "clustd_elections_won_total",
        "clustd_peer_up{peer=",
        "clustd_heartbeat_rtt_seconds_bucket",
        "clustd_driver_results",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }

    client
        .post("/maintenance/on")
        .await
        .expect("POST /maintenance/on");
    let other = cluster
        .wait_for_master(Some(&master), Duration::from_secs(30))
        .await
        .expect("hand-over");
    assert_ne!(other, master);
    let status: Status =
        serde_json::from_str(&client.status_json().await.expect("status")).expect("JSON");
    assert!(status.maintenance && status.role == "backup");
    client
        .post("/maintenance/off")
        .await
        .expect("POST /maintenance/off");
    assert!(
        client.post("/nope").await.is_err(),
        "unknown paths are errors"
    );

    let _ = stop_tx.send(());
    let _ = server.await;
    cluster.shutdown().await;
}

/// Descriptors open in this process (the daemon runs in it).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// A local user opens many connections to the admin port and never sends a byte. The
/// daemon keeps at most `max_connections` of them (closing the oldest idle one for each
/// new one), closes the rest within the header timeout, and still answers `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_never_exhaust_descriptors() {
    use tokio::io::AsyncReadExt;
    const FLOOD: usize = 200;
    // One node of a three-node cluster is a real daemon; it needs no master for this.
    let (_dir, settings) =
        LocalCluster::configure(3, TransportKind::WebSocket, "").expect("configure");
    let mut node = clustd::local::LocalNode::start(&settings[0]);
    node.started().await.expect("the node runs");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = AdminLimits {
        max_connections: 16,
        header_timeout: Duration::from_secs(1),
        connection_lifetime: Duration::from_secs(10),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(clustd::admin::serve_with(
        listener,
        node.handle.clone(),
        limits,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let before = open_fds();
    // Our own FLOOD sockets, the daemon's share (at most the cap, plus a few being closed
    // or the node's own reconnect attempts to its absent peers).
    let bound = before + FLOOD + limits.max_connections + 16;

    let mut idle = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        assert!(open_fds() <= bound, "{} descriptors open", open_fds());
    }
    let status: Status = serde_json::from_str(
        &Client::new(addr)
            .status_json()
            .await
            .expect("GET /status during the flood"),
    )
    .expect("JSON");
    assert_eq!(status.node_id, "node-1");
    assert!(open_fds() <= bound, "{} descriptors open", open_fds());

    // Every idle connection is closed by the daemon (EOF, or a reset), well within WAIT.
    let mut buf = [0u8; 64];
    for (i, stream) in idle.iter_mut().enumerate() {
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "idle connection {i} not closed by the daemon: {read:?}"
        );
        assert!(open_fds() <= bound, "{} descriptors open", open_fds());
    }
    drop(idle);
    // And the daemon holds none of them any more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while open_fds() > before + 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} descriptors open, {before} before the flood",
            open_fds()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still serving.
    Client::new(addr)
        .status_json()
        .await
        .expect("GET /status after the flood");

    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = node.stop(clustd::Shutdown::Immediate).await;
}
