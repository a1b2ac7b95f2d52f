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
    for transport in
        clustd_transport::TransportKind::ALL.map(clustd_transport::TransportKind::as_str)
    {
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

/// Two daemons started with one node id (a copied config): an ERROR on both of them and on
/// their peers, naming the addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_with_one_node_id_are_an_error_on_both() {
    use common::procs::{ProcCluster, clustd_bin};
    let cluster = ProcCluster::start_plain(clustd_transport::TransportKind::Quic)
        .await
        .expect("cluster");
    cluster.one_master(Duration::from_secs(60)).await;
    // node-1's config, copied to another data dir and port: same id, same key.
    let original = std::fs::read_to_string(cluster.dir.path().join("node-1.toml")).expect("config");
    let listen = original
        .lines()
        .find(|l| l.starts_with("listen = "))
        .expect("cluster.listen")
        .to_owned();
    let port = clustd::local::free_port().expect("port");
    let twin_dir = cluster.dir.path().join("twin");
    let data_dir = original
        .lines()
        .find(|l| l.starts_with("data_dir = "))
        .expect("node.data_dir")
        .to_owned();
    let twin = original
        .replacen(&listen, &format!("listen = \"127.0.0.1:{port}\""), 1)
        .replacen(
            &data_dir,
            &format!("data_dir = \"{}\"", twin_dir.display()),
            1,
        );
    let twin_config = cluster.dir.path().join("twin.toml");
    std::fs::write(&twin_config, twin).expect("twin config");
    let twin_log = cluster.dir.path().join("twin.log");
    let _twin = tokio::process::Command::new(clustd_bin())
        .args(["run", "--config"])
        .arg(&twin_config)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&twin_log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("the twin starts");
    let error_in = |log: &std::path::Path, what: &str| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("ERROR") && l.contains(what))
            .map(str::to_owned)
    };
    let logs = [
        ("node-1", cluster.nodes[0].daemon_log.clone()),
        ("the twin", twin_log.clone()),
    ];
    for (who, log) in &logs {
        let line = cluster
            .wait_for(
                &format!("{who} to say another daemon has its id"),
                Duration::from_secs(60),
                || {
                    let found = error_in(log, "another daemon runs with this node's id node-1");
                    async move { found }
                },
            )
            .await;
        assert!(line.contains("listening on 127.0.0.1:"), "{line}");
    }
    let peer_logs = [
        cluster.nodes[1].daemon_log.clone(),
        cluster.nodes[2].daemon_log.clone(),
    ];
    let line = cluster
        .wait_for(
            "a peer to name both processes",
            Duration::from_secs(60),
            || {
                let found = peer_logs
                    .iter()
                    .find_map(|log| error_in(log, "two daemons run with node id node-1"));
                async move { found }
            },
        )
        .await;
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
}
