//! The local driver socket against real daemons on loopback: a shell driver configured with
//! `daemon = "unix:PATH"` and no secret at all follows its daemon; the socket has the
//! configured mode, and a user outside it (a child process running as `nobody`) cannot
//! connect.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use clustd::local::LocalCluster;
use clustd_drivers::{ShellConfig, ShellDriver};
use clustd_transport::TransportKind;

const WAIT: Duration = Duration::from_secs(30);

clustd_transport::both_transports!(a_driver_on_the_local_socket_needs_no_secret);

async fn a_driver_on_the_local_socket_needs_no_secret(kind: TransportKind) {
    let mut cluster = LocalCluster::start(3, kind, "").expect("cluster");
    let master = cluster.wait_for_master(None, WAIT).await.expect("a master");
    let m = cluster.index(&master).expect("known");
    let socket = cluster.settings[m]
        .driver_socket
        .clone()
        .expect("on by default")
        .path;
    assert_eq!(socket, cluster.settings[m].data_dir.join("driver.sock"));
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "default mode, got {mode:o}");

    // A shell driver with no secret_file at all.
    let dir = cluster.dir.path();
    let log = dir.join("local-actions.log");
    let text = format!(
        "daemon = \"unix:{}\"\ndriver_id = \"local-1\"\n\n[script]\nstart = '''echo start >> {log}'''\nstop = '''echo stop >> {log}'''\n",
        socket.display(),
        log = log.display()
    );
    let config =
        ShellConfig::parse(&dir.join("local.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let session =
        clustd_drivers::connect(config.connection.clone(), ShellDriver::from_config(&config))
            .expect("driver starts");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("start")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the local driver never ran start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = cluster.nodes[m].handle.status();
    assert!(
        status
            .drivers
            .iter()
            .any(|d| d.id == "local-1" && d.connected),
        "{status:?}"
    );

    // Outside the socket's owner and group: refused by the kernel, before any byte.
    if nix_is_root() {
        let parent = socket.parent().expect("in data_dir");
        // Let `nobody` reach the directory, so only the socket's own mode decides.
        for dir in [dir, parent] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        match connect_as_nobody(&socket) {
            Some(outcome) => assert_eq!(outcome, "denied", "nobody connected"),
            None => eprintln!("python3 is not installed: the `nobody` check is skipped"),
        }
    }
    drop(session);
    cluster.shutdown().await;
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Tries to connect to `socket` from a child running as uid/gid 65534.
fn connect_as_nobody(socket: &Path) -> Option<String> {
    use std::os::unix::process::CommandExt;
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n  s.connect(sys.argv[1]); print('connected')\nexcept PermissionError:\n  print('denied')\n";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(socket)
        .uid(65534)
        .gid(65534)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
