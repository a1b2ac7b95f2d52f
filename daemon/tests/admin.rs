//! The admin API over real HTTP on loopback: status JSON fields, metric names, commands.

use std::time::Duration;

use clustd::admin::Client;
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
