//! What an operator reads when the daemon cannot start: the key, the value, once.

mod common;

use std::process::Command;
use std::time::Duration;

/// node-1 of a three-node cluster listening on 127.0.0.1:`port`, with the secret in
/// `secret` beside the config.
fn node_toml(transport: &str, data_dir: &str, port: u16) -> String {
    format!(
        "[node]\nid = \"node-1\"\ndata_dir = \"{data_dir}\"\n\n[cluster]\ntransport = \"{transport}\"\nlisten = \"127.0.0.1:{port}\"\nsecret_file = \"secret\"\npeers = [{{ id = \"node-2\", addr = \"127.0.0.2:7400\" }}, {{ id = \"node-3\", addr = \"127.0.0.3:7400\" }}]\n"
    )
}

/// A cluster port another program holds: one line naming `cluster.listen` and the address
/// (it used to repeat the OS error three times).
#[test]
fn a_cluster_port_in_use_is_named_once() {
    let port = clustd::local::free_port().expect("a port");
    // Both transports' sockets: QUIC binds UDP, WebSocket TCP.
    let _udp = std::net::UdpSocket::bind(("127.0.0.1", port)).expect("udp");
    let _tcp = std::net::TcpListener::bind(("127.0.0.1", port)).expect("tcp");
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    clustd::config::write_secret_file(&secret).expect("secret");
    for transport in ["quic", "websocket"] {
        let config = dir.path().join(format!("{transport}.toml"));
        std::fs::write(
            &config,
            node_toml(transport, &format!("data-{transport}"), port),
        )
        .expect("config");
        let out = Command::new(env!("CARGO_BIN_EXE_clustd"))
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .expect("clustd runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{transport}: started anyway: {err}");
        let line = format!("cluster.listen 127.0.0.1:{port}: cannot bind: the address is in use");
        assert!(err.contains(&line), "{transport}: {err}");
        assert_eq!(
            err.matches("in use").count(),
            1,
            "{transport}: said once: {err}"
        );
    }
}

/// `clustd check-config` probes `node.data_dir` as the daemon will use it: a data_dir it
/// cannot write, or a damaged state file, fails the check naming `node.data_dir`.
#[test]
fn check_config_probes_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    clustd::config::write_secret_file(&secret).expect("secret");
    let check = |data_dir: &str| {
        let config = dir.path().join("node.toml");
        std::fs::write(&config, node_toml("quic", data_dir, 7400)).expect("config");
        let out = Command::new(env!("CARGO_BIN_EXE_clustd"))
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .expect("clustd runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // Fresh: created, probed, no state yet.
    let (ok, out) = check("data");
    assert!(ok && out.contains("is writable; stored term 0"), "{out}");
    assert!(dir.path().join("data").is_dir());
    // Not a directory (as root, a read-only mode would not stop us; a file does).
    std::fs::write(dir.path().join("a-file"), "x").expect("file");
    let (ok, out) = check("a-file");
    assert!(
        !ok && out.contains("node.data_dir") && out.contains("would stop at its first election"),
        "{out}"
    );
    // A damaged state file.
    std::fs::write(
        dir.path().join("data").join(clustd::store::STATE_FILE),
        b"garbage!",
    )
    .expect("state");
    let (ok, out) = check("data");
    assert!(
        !ok && out.contains("node.data_dir: the state file") && out.contains("damaged"),
        "{out}"
    );
}

/// A peer gone for longer than ET_max: a WARN naming it, its address and the quorum
/// arithmetic, on the nodes that miss it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_is_named_with_the_quorum_arithmetic() {
    use common::procs::ProcCluster;
    let cluster = ProcCluster::start_plain(clustd_transport::TransportKind::Quic)
        .await
        .expect("cluster");
    let master = cluster.one_master(Duration::from_secs(60)).await;
    let m = cluster.index(&master);
    let gone = (m + 1) % 3;
    let gone_id = cluster.nodes[gone].id.clone();
    let log = cluster.nodes[m].daemon_log.clone();
    // Only what comes after the kill (a peer that was slow to start is warned about too).
    let from = std::fs::read_to_string(&log).unwrap_or_default().len();
    cluster.signal_daemon(gone, "KILL");
    let line = cluster
        .wait_for(
            "the master to warn about the lost peer",
            Duration::from_secs(30),
            || {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let found = log
                    .get(from..)
                    .unwrap_or_default()
                    .lines()
                    .find(|l| {
                        l.contains("WARN") && l.contains(&format!("peer {gone_id} (127.0.0.1:"))
                    })
                    .map(str::to_owned);
                async move { found }
            },
        )
        .await;
    assert!(
        line.contains("unreachable for")
            && line.contains("2 of 3 voters reachable, 2 needed for a quorum; quorum holds"),
        "{line}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
