//! What the shell driver binary says when it cannot get in: a secret that differs from the
//! daemon's, and a daemon that speaks the other transport. The daemon is a real
//! clustd-transport endpoint on 127.0.0.1 (a daemon accepting drivers under its drivers'
//! credential); the driver is the real binary, and each test reads its log until the line
//! comes (or the patience runs out).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use clustd_core::NodeId;
use clustd_transport::{
    Endpoint, EndpointConfig, PeerKind, Secret, TokioNet, TransportError, TransportEvent,
    TransportKind,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc::Receiver;

/// How long any wait may take before the test fails (QUIC's "no answer" alone takes the
/// driver's 5 s connect timeout).
const PATIENCE: Duration = Duration::from_secs(30);
const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789abcdef";
const DRIVER_SECRET: &str = "test-driver-secret-0123456789abcdef";
const WRONG_SECRET: &str = "wrong-driver-secret-9876543210zz";

/// A daemon endpoint on a fresh loopback port, accepting drivers that prove
/// [`DRIVER_SECRET`].
async fn daemon(kind: TransportKind) -> (Endpoint, Receiver<TransportEvent>, SocketAddr) {
    let secret = |s: &str| Secret::from_bytes(s.as_bytes().to_vec()).expect("long enough");
    let id = NodeId::new("n1").expect("valid id");
    let mut config = EndpointConfig::new(kind, id, PeerKind::Peer, secret(CLUSTER_SECRET));
    config.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.accept_drivers = true;
    config.driver_secret = Some(secret(DRIVER_SECRET));
    let (endpoint, events) = Endpoint::start(TokioNet, config)
        .await
        .expect("daemon endpoint starts");
    let addr = endpoint.local_addr().expect("listening");
    (endpoint, events, addr)
}

/// Runs `clustd-shell-driver` against `daemon` over `kind` with `secret` as its secret
/// file, until a line of its log contains `expected`; returns that line.
async fn driver_says(
    dir: &Path,
    daemon: SocketAddr,
    kind: TransportKind,
    secret: &str,
    expected: &str,
) -> String {
    let secret_file = dir.join(format!("secret-{}", kind.as_str()));
    std::fs::write(&secret_file, secret).expect("write the secret");
    let config = dir.join(format!("driver-{}.toml", kind.as_str()));
    std::fs::write(
        &config,
        format!(
            "daemon = \"{daemon}\"\ntransport = \"{}\"\nsecret_file = \"{}\"\n\
             driver_id = \"shell-test\"\n\n\
             [script]\nshell = \"/bin/sh\"\nstart = \"true\"\nstop = \"true\"\n",
            kind.as_str(),
            secret_file.display()
        ),
    )
    .expect("write the config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_clustd-shell-driver"))
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        // The drivers log to stdout.
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the driver binary runs");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("readable log") {
            if line.contains(expected) {
                return Some(line);
            }
            seen.push(line);
        }
        None
    })
    .await;
    let _ = child.kill().await;
    match found {
        Ok(Some(line)) => line,
        Ok(None) => panic!("the driver exited without saying {expected:?}; it said {seen:#?}"),
        Err(_) => panic!("the driver did not say {expected:?} in time; it said {seen:#?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_with_another_secret_says_the_secret_differs() {
    let dir = tempfile::tempdir().expect("tempdir");
    for kind in [TransportKind::WebSocket, TransportKind::Quic] {
        let (daemon, mut events, addr) = daemon(kind).await;
        let line = driver_says(
            dir.path(),
            addr,
            kind,
            WRONG_SECRET,
            "authentication failed: the secret differs from the daemon's \
             (check secret_file / the daemon's cluster.driver_secret_file)",
        )
        .await;
        assert!(line.contains(&addr.to_string()), "{kind:?}: {line}");
        assert!(!line.contains(WRONG_SECRET) && !line.contains(DRIVER_SECRET));
        // The daemon's side of it: the first message proved nothing it accepts.
        let failed = tokio::time::timeout(PATIENCE, async {
            while let Some(event) = events.recv().await {
                if let TransportEvent::HandshakeFailed { error, .. } = event {
                    return Some(error);
                }
            }
            None
        })
        .await;
        assert!(
            matches!(failed, Ok(Some(TransportError::AuthenticationFailed))),
            "{kind:?}: {failed:?}"
        );
        daemon.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_on_the_other_transport_is_told_to_switch() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (daemon_kind, driver_kind, hint) in [
        (
            TransportKind::WebSocket,
            TransportKind::Quic,
            "if the daemon's cluster.transport is websocket, set transport = \"websocket\" here",
        ),
        (
            TransportKind::Quic,
            TransportKind::WebSocket,
            "if the daemon's cluster.transport is quic, set transport = \"quic\" here",
        ),
    ] {
        let (daemon, _events, addr) = daemon(daemon_kind).await;
        let ours = match driver_kind {
            TransportKind::Quic => "QUIC",
            _ => "WebSocket",
        };
        let line = driver_says(dir.path(), addr, driver_kind, DRIVER_SECRET, hint).await;
        assert!(
            line.contains(&format!("nothing answers {ours} at {addr}")),
            "{driver_kind:?}: {line}"
        );
        daemon.shutdown().await;
    }
}
