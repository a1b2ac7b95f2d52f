//! Peer events end to end through the library: a fake daemon (a real clustd-transport
//! endpoint on 127.0.0.1) sends `ToDriver::Peer`, the notify driver running in-process
//! through `clustd_drivers::connect` posts `peer-down` / `peer-up` (and `stop-failed` for
//! `ToDriver::StopFailed`, and `unhealthy` / `ineligible` for `ToDriver::Health`) to a real
//! HTTP server, and nothing about them goes back to the daemon. The peers the daemon reports
//! up decide whether this node is the one that posts `master-lost`.

mod support;

use std::net::SocketAddr;

use clustd_core::driver::{ActionResult, DriverRole, FromDriver, HealthChange, ToDriver};
use clustd_core::{NodeId, Term};
use clustd_drivers::{NotifyConfig, NotifyDriver, TransportKind};
use support::{FakeDaemon, HttpServer, SECRET, init_tracing, wait_until};

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid")
}

fn backup(term: u64, seq: u64) -> ToDriver {
    ToDriver::Role {
        role: DriverRole::Backup,
        term: Term(term),
        node: id("node-1"),
        leader: Some(id("node-2")),
        lease_remaining_ms: 0,
        sent_at_ns: 0,
        stop_budget_ms: 500,
        reason: "follower".into(),
        seq,
    }
}

async fn expect_ack(daemon: &mut FakeDaemon, seq: u64) {
    assert_eq!(
        daemon.next_from_driver().await,
        FromDriver::Ack {
            seq,
            role: DriverRole::Backup,
            result: ActionResult::Ok
        }
    );
}

async fn peer_events_become_webhook_posts(kind: TransportKind) {
    init_tracing();
    let mut server = HttpServer::start(&[], false).await;
    let localhost: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut daemon = FakeDaemon::start(kind, localhost).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), SECRET).expect("write");
    let transport = kind.as_str();
    let text = format!(
        "daemon = \"{}\"\ntransport = \"{transport}\"\nsecret_file = \"secret\"\ndriver_id = \"notify-test\"\n\
         [templates]\ntext = \"{{node}}: {{event_text}} [{{peer}}]\"\n\
         [[webhook]]\nurl = \"{}\"\n",
        daemon.addr,
        server.url("/hook")
    );
    let config = NotifyConfig::parse(&dir.path().join("notify.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let session = clustd_drivers::connect(config.connection.clone(), NotifyDriver::new(&config))
        .expect("session starts");
    let driver = daemon.accept_driver().await;
    assert_eq!(driver, id("notify-test"));

    // The first role (backup, nothing to tell), then node-3 goes down and comes back.
    daemon.send(&driver, &backup(1, 1));
    expect_ack(&mut daemon, 1).await;
    for up in [false, true] {
        daemon.send(
            &driver,
            &ToDriver::Peer {
                peer: id("node-3"),
                up,
                term: Term(1),
            },
        );
    }
    for (event, text) in [
        (
            "peer-down",
            "node-1: peer node-3 is down (connection lost) [node-3]",
        ),
        ("peer-up", "node-1: peer node-3 is up (connected) [node-3]"),
    ] {
        let req = server.next().await;
        assert_eq!(req.path, "/hook");
        let body: serde_json::Value = serde_json::from_str(&req.body).expect("json body");
        assert_eq!(body["event"], event, "{body}");
        assert_eq!(body["peer"], "node-3", "{body}");
        assert_eq!(body["node"], "node-1", "{body}");
        assert_eq!(body["term"], 1, "{body}: the term is a JSON number");
        // The node's own state comes from its last role change.
        assert_eq!(body["role"], "backup", "{body}");
        assert_eq!(body["leader"], "node-2", "{body}");
        assert_eq!(body["text"], text, "{body}");
    }
    let status = session.watch_status();
    wait_until("both events reached the driver", || {
        status.borrow().cluster_events == 2
    })
    .await;
    // Peer events are not acknowledged: the next thing from the driver is the next role's ack.
    daemon.send(&driver, &backup(2, 2));
    expect_ack(&mut daemon, 2).await;
    assert_eq!(session.status().target_role, Some(DriverRole::Backup));
    assert_eq!(session.status().lease_expiries, 0);
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

#[tokio::test]
async fn peer_events_become_webhook_posts_over_quic() {
    peer_events_become_webhook_posts(TransportKind::Quic).await;
}

#[tokio::test]
async fn peer_events_become_webhook_posts_over_websocket() {
    peer_events_become_webhook_posts(TransportKind::WebSocket).await;
}

/// A driver of this node reported a failed stop: the daemon relays `StopFailed`, and the
/// notify driver posts `stop-failed` naming that driver — nothing goes back to the daemon.
#[tokio::test]
async fn a_failed_stop_becomes_a_stop_failed_post() {
    init_tracing();
    let kind = TransportKind::WebSocket;
    let mut server = HttpServer::start(&[], false).await;
    let localhost: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut daemon = FakeDaemon::start(kind, localhost).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), SECRET).expect("write");
    let text = format!(
        "daemon = \"{}\"\ntransport = \"websocket\"\nsecret_file = \"secret\"\ndriver_id = \"notify-test\"\n\
         events = [\"stop-failed\"]\n\
         [templates]\ntext = \"{{node}}: {{event}} by {{driver}} [{{peer}}]: {{event_text}}\"\n\
         [[webhook]]\nurl = \"{}\"\n",
        daemon.addr,
        server.url("/hook")
    );
    let config = NotifyConfig::parse(&dir.path().join("notify.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let session = clustd_drivers::connect(config.connection.clone(), NotifyDriver::new(&config))
        .expect("session starts");
    let driver = daemon.accept_driver().await;
    daemon.send(&driver, &backup(3, 1));
    expect_ack(&mut daemon, 1).await;
    daemon.send(
        &driver,
        &ToDriver::StopFailed {
            driver: id("shell-1"),
            term: Term(3),
            result: ActionResult::Failed("exit status 1".into()),
        },
    );
    let req = server.next().await;
    let body: serde_json::Value = serde_json::from_str(&req.body).expect("json body");
    assert_eq!(body["event"], "stop-failed", "{body}");
    assert_eq!(body["driver"], "shell-1", "{body}");
    assert_eq!(body["node"], "node-1", "{body}");
    assert_eq!(body["term"], 3, "{body}: the term is a JSON number");
    assert_eq!(
        body["text"],
        "node-1: stop-failed by shell-1 []: driver shell-1's stop failed: exit status 1; \
         the service may still run here beside a new master until that driver's lease ends",
        "{body}"
    );
    // Not acknowledged: the next thing from the driver is the next role's ack.
    daemon.send(&driver, &backup(4, 2));
    expect_ack(&mut daemon, 2).await;
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

/// The daemon fenced a frozen driver, then a fence failed: the notify driver posts `fenced`
/// and `fence-failed`, naming the drivers and the result; nothing goes back to the daemon.
#[tokio::test]
async fn fences_become_fenced_and_fence_failed_posts() {
    init_tracing();
    let kind = TransportKind::Quic;
    let mut server = HttpServer::start(&[], false).await;
    let localhost: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut daemon = FakeDaemon::start(kind, localhost).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), SECRET).expect("write");
    let text = format!(
        "daemon = \"{}\"\ntransport = \"quic\"\nsecret_file = \"secret\"\ndriver_id = \"notify-test\"\n\
         events = [\"fenced\", \"fence-failed\"]\n\
         [templates]\ntext = \"{{node}}: {{event}} {{driver}} ({{detail}})\"\n\
         [[webhook]]\nurl = \"{}\"\n",
        daemon.addr,
        server.url("/hook")
    );
    let config = NotifyConfig::parse(&dir.path().join("notify.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let session = clustd_drivers::connect(config.connection.clone(), NotifyDriver::new(&config))
        .expect("session starts");
    let driver = daemon.accept_driver().await;
    daemon.send(&driver, &backup(3, 1));
    expect_ack(&mut daemon, 1).await;
    for (result, event, detail) in [
        (ActionResult::Ok, "fenced", "ok"),
        (
            ActionResult::Failed("exit status 3".into()),
            "fence-failed",
            "failed: exit status 3",
        ),
    ] {
        daemon.send(
            &driver,
            &ToDriver::Fenced {
                drivers: vec![id("shell-1"), id("shell-2")],
                term: Term(3),
                result,
            },
        );
        let req = server.next().await;
        let body: serde_json::Value = serde_json::from_str(&req.body).expect("json body");
        assert_eq!(body["event"], event, "{body}");
        assert_eq!(body["driver"], "shell-1,shell-2", "{body}");
        assert_eq!(
            body["text"],
            format!("node-1: {event} shell-1,shell-2 ({detail})"),
            "{body}"
        );
    }
    daemon.send(&driver, &backup(4, 2));
    expect_ack(&mut daemon, 2).await;
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
}

/// The node's checks failed: the daemon sends `ToDriver::Health`, and the notify driver posts
/// `unhealthy` (then `ineligible`, when subscribed) with the daemon's detail — nothing goes
/// back to the daemon, and unsubscribed health events (`healthy`) are not posted.
#[tokio::test]
async fn a_health_change_becomes_an_unhealthy_post() {
    init_tracing();
    let kind = TransportKind::WebSocket;
    let mut server = HttpServer::start(&[], false).await;
    let localhost: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut daemon = FakeDaemon::start(kind, localhost).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), SECRET).expect("write");
    let text = format!(
        "daemon = \"{}\"\ntransport = \"websocket\"\nsecret_file = \"secret\"\ndriver_id = \"notify-test\"\n\
         events = [\"unhealthy\", \"ineligible\"]\n\
         [templates]\ntext = \"{{node}}: {{event}} ({{detail}}): {{event_text}}\"\n\
         [[webhook]]\nurl = \"{}\"\n",
        daemon.addr,
        server.url("/hook")
    );
    let config = NotifyConfig::parse(&dir.path().join("notify.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let session = clustd_drivers::connect(config.connection.clone(), NotifyDriver::new(&config))
        .expect("session starts");
    let driver = daemon.accept_driver().await;
    daemon.send(&driver, &backup(6, 1));
    expect_ack(&mut daemon, 1).await;
    let detail = "check shell-1/check failed 3 times in a row: exit status 1: ready is missing";
    for change in [
        HealthChange::Healthy,
        HealthChange::Unhealthy,
        HealthChange::Ineligible,
    ] {
        daemon.send(
            &driver,
            &ToDriver::Health {
                node: id("node-1"),
                term: Term(6),
                change,
                detail: detail.into(),
            },
        );
    }
    for (event, what) in [
        ("unhealthy", "is unhealthy"),
        ("ineligible", "may not be master"),
    ] {
        let req = server.next().await;
        assert_eq!(req.path, "/hook");
        let body: serde_json::Value = serde_json::from_str(&req.body).expect("json body");
        assert_eq!(body["event"], event, "{body}");
        assert_eq!(body["node"], "node-1", "{body}");
        assert_eq!(body["term"], 6, "{body}: the term is a JSON number");
        assert_eq!(body["detail"], detail, "{body}");
        assert_eq!(body["role"], "backup", "{body}");
        assert_eq!(body["peer"], "", "{body}");
        assert_eq!(
            body["text"],
            format!("node-1: {event} ({detail}): node node-1 {what}: {detail}"),
            "{body}"
        );
    }
    let status = session.watch_status();
    wait_until("the three events reached the driver", || {
        status.borrow().cluster_events == 3
    })
    .await;
    // Not acknowledged: the next thing from the driver is the next role's ack.
    daemon.send(&driver, &backup(7, 2));
    expect_ack(&mut daemon, 2).await;
    session.shutdown().await.expect("clean shutdown");
    // `healthy` was not subscribed: nothing more was posted.
    assert!(
        server.requests.try_recv().is_err(),
        "only the subscribed events"
    );
    daemon.vanish().await;
}

/// The master (node-2) is lost: of node-1 and node-3, still connected, only node-1 (the
/// smallest id) posts `master-lost`; neither posts `new-master` when node-3 then wins, as
/// backups (node-3's own driver does). `term` is a JSON number throughout.
async fn master_lost_is_posted_by_the_smallest_connected_node(me: &str) -> Vec<String> {
    init_tracing();
    let mut server = HttpServer::start(&[], false).await;
    let localhost: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut daemon = FakeDaemon::start(TransportKind::WebSocket, localhost).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), SECRET).expect("write");
    let text = format!(
        "daemon = \"{}\"\ntransport = \"websocket\"\nsecret_file = \"secret\"\ndriver_id = \"notify-test\"\n\
         events = [\"master-lost\", \"new-master\", \"peer-down\"]\n\
         [templates]\ntext = \"{{node}}: {{event}} [{{peer}}]\"\n\
         [[webhook]]\nurl = \"{}\"\n",
        daemon.addr,
        server.url("/hook")
    );
    let config = NotifyConfig::parse(&dir.path().join("notify.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let session = clustd_drivers::connect(config.connection.clone(), NotifyDriver::new(&config))
        .expect("session starts");
    let driver = daemon.accept_driver().await;
    let role = |term: u64, leader: Option<&str>, seq: u64| ToDriver::Role {
        role: DriverRole::Backup,
        term: Term(term),
        node: id(me),
        leader: leader.map(id),
        lease_remaining_ms: 0,
        sent_at_ns: 0,
        stop_budget_ms: 500,
        reason: "follower".into(),
        seq,
    };
    let peer = |peer: &str, up: bool| ToDriver::Peer {
        peer: id(peer),
        up,
        term: Term(1),
    };
    let others: Vec<&str> = ["node-1", "node-2", "node-3"]
        .into_iter()
        .filter(|n| *n != me)
        .collect();
    // Connected: the first role, then every connected peer (twice, as after a reconnect).
    daemon.send(&driver, &role(1, Some("node-2"), 1));
    expect_ack(&mut daemon, 1).await;
    for _ in 0..2 {
        for other in &others {
            daemon.send(&driver, &peer(other, true));
        }
    }
    // The master goes: its connection, then the leaderless role; then node-3 wins term 2.
    daemon.send(&driver, &peer("node-2", false));
    let mut posted = vec![post(&mut server).await];
    daemon.send(&driver, &role(1, None, 2));
    expect_ack(&mut daemon, 2).await;
    daemon.send(&driver, &role(2, Some("node-3"), 3));
    expect_ack(&mut daemon, 3).await;
    // A last event marks the end: whatever the roles caused was posted before it.
    let last = others.iter().find(|o| **o != "node-2").expect("a survivor");
    daemon.send(&driver, &peer(last, false));
    loop {
        let text = post(&mut server).await;
        let done = text.contains("peer-down") && text.contains(last);
        posted.push(text);
        if done {
            break;
        }
    }
    session.shutdown().await.expect("clean shutdown");
    daemon.vanish().await;
    posted
}

/// The next webhook post's text, after checking that its term is a JSON number.
async fn post(server: &mut HttpServer) -> String {
    let body: serde_json::Value =
        serde_json::from_str(&server.next().await.body).expect("json body");
    assert!(body["term"].is_u64(), "the term is a JSON number: {body}");
    body["text"].as_str().expect("text").to_owned()
}

#[tokio::test]
async fn the_smallest_surviving_node_posts_master_lost() {
    assert_eq!(
        master_lost_is_posted_by_the_smallest_connected_node("node-1").await,
        [
            "node-1: peer-down [node-2]",
            "node-1: master-lost []",
            "node-1: peer-down [node-3]"
        ]
    );
}

#[tokio::test]
async fn a_larger_surviving_node_leaves_master_lost_to_the_smallest() {
    assert_eq!(
        master_lost_is_posted_by_the_smallest_connected_node("node-3").await,
        ["node-3: peer-down [node-2]", "node-3: peer-down [node-1]"]
    );
}
