//! What an operator reads when the daemon cannot start: the key, the value, once.

use std::process::Command;

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
            format!(
                "[node]\nid = \"node-1\"\ndata_dir = \"data-{transport}\"\n\n[cluster]\ntransport = \"{transport}\"\nlisten = \"127.0.0.1:{port}\"\nsecret_file = \"secret\"\npeers = [{{ id = \"node-2\", addr = \"127.0.0.2:7400\" }}, {{ id = \"node-3\", addr = \"127.0.0.3:7400\" }}]\n"
            ),
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
        std::fs::write(
            &config,
            format!(
                "[node]\nid = \"node-1\"\ndata_dir = \"{data_dir}\"\n\n[cluster]\nlisten = \"127.0.0.1:7400\"\nsecret_file = \"secret\"\npeers = [{{ id = \"node-2\", addr = \"127.0.0.2:7400\" }}, {{ id = \"node-3\", addr = \"127.0.0.3:7400\" }}]\n"
            ),
        )
        .expect("config");
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
