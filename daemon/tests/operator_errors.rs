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
