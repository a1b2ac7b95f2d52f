//! The notify driver against real daemons (three, in this process, on loopback), for both
//! transports: when a node dies, another node's daemon tells its notify driver, which
//! POSTs a `peer-down` naming the dead node to a real HTTP server on 127.0.0.1.

mod common;

use std::time::Duration;

use clustd::local::{DRIVER_SECRET_FILE, LocalCluster};
use clustd::runtime::Shutdown;
use clustd_drivers::{DriverSession, NotifyConfig, NotifyDriver};
use clustd_transport::TransportKind;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

clustd_transport::both_transports!(a_dead_peer_is_reported_by_webhook);

/// A minimal webhook receiver on 127.0.0.1: one request per connection, answered 200; the
/// JSON bodies come out of the returned channel.
async fn webhook_server() -> (String, mpsc::UnboundedReceiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                let mut line = String::new();
                let mut length = 0;
                // Request line, then headers up to the blank line.
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line.trim_end().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).await.is_err() {
                    return;
                }
                if let Ok(json) = serde_json::from_slice(&body) {
                    let _ = tx.send(json);
                }
                let reply = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = write.write_all(reply.as_bytes()).await;
                let _ = write.shutdown().await;
            });
        }
    });
    (url, rx)
}

/// A notify driver for node `i`, reporting peer events only (so no flap limit gets near).
fn attach(cluster: &LocalCluster, i: usize, kind: TransportKind, url: &str) -> DriverSession {
    let name = cluster.settings[i].id.as_str();
    let transport = kind.as_str();
    let text = format!(
        "daemon = \"{}\"\ntransport = \"{transport}\"\nsecret_file = \"{DRIVER_SECRET_FILE}\"\ndriver_id = \"notify-{name}\"\n\
         events = [\"peer-down\", \"peer-up\"]\n\
         [rate_limit]\nmax_messages = 100\n\
         [[webhook]]\nurl = \"{url}\"\n",
        cluster.settings[i].listen,
    );
    let file = cluster.dir.path().join(format!("notify-{name}.toml"));
    let config = NotifyConfig::parse(&file, &text).unwrap_or_else(|e| panic!("{e}"));
    clustd_drivers::connect(config.connection.clone(), NotifyDriver::new(&config))
        .expect("driver starts")
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_dead_peer_is_reported_by_webhook(kind: TransportKind) {
    let mut cluster = LocalCluster::start(3, kind, "").expect("cluster");
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let m = cluster.index(&master).expect("known");
    let watcher = (m + 1) % 3;
    let (url, mut posts) = webhook_server().await;
    let session = attach(&cluster, watcher, kind, &url);

    // The watcher's daemon has its driver and sees the master: the next change is news.
    wait_until("the watcher's daemon has its driver and the master", || {
        let s = cluster.nodes[watcher].handle.status();
        s.drivers.iter().any(|d| d.connected && d.acknowledged)
            && s.peers
                .iter()
                .any(|p| p.id == master.as_str() && p.connected)
    })
    .await;

    cluster.stop(m, Shutdown::Immediate).await.expect("stop");
    let watcher_id = cluster.settings[watcher].id.to_string();
    let report = tokio::time::timeout(WAIT, async {
        loop {
            let post = posts.recv().await.expect("server runs");
            if post["event"] == "peer-down" && post["peer"] == master.as_str() {
                return post;
            }
        }
    })
    .await
    .expect("a peer-down for the dead master within the patience");
    assert_eq!(report["node"], watcher_id.as_str(), "{report}");
    let text = report["text"].as_str().expect("text");
    assert!(text.contains(&format!("peer {master} is down")), "{text}");

    session.shutdown().await.expect("driver shuts down");
    cluster.shutdown().await;
}
