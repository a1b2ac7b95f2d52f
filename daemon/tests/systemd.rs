//! `Type=notify` on real daemons: each tells `$NOTIFY_SOCKET` `READY=1` once it runs,
//! feeds the watchdog (`WATCHDOG_USEC`), says `RELOADING=1` then `READY=1` around a
//! `SIGHUP` reload and `STOPPING=1` on `SIGTERM`. The test plays systemd's side: a datagram
//! socket in a temporary directory.

mod common;

use std::time::Duration;

use clustd_transport::TransportKind;
use common::procs::ProcCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_speak_the_systemd_notify_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&path).expect("bind the notify socket");
    let notify = path.to_str().expect("a UTF-8 path");
    let cluster = ProcCluster::start_plain_env(
        TransportKind::Quic,
        &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")],
    )
    .await
    .expect("cluster");
    let mut seen: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut wait_for =
        async |what: &str, seen: &mut Vec<String>, ok: &dyn Fn(&[String]) -> bool| {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !ok(seen) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, socket.recv(&mut buf)).await {
                    Ok(Ok(n)) => seen.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    _ => panic!("{what}: only {seen:?}"),
                }
            }
        };
    let count = |seen: &[String], state: &str| seen.iter().filter(|s| s.starts_with(state)).count();
    wait_for(
        "READY=1 from the three daemons, and the watchdog fed",
        &mut seen,
        &|s| count(s, "READY=1") == 3 && count(s, "WATCHDOG=1") >= 3,
    )
    .await;
    // A reload: RELOADING=1 (with the monotonic time systemd asks for), then READY=1.
    seen.clear();
    cluster.signal_daemon(0, "HUP");
    wait_for("RELOADING=1 then READY=1", &mut seen, &|s| {
        let reloading = s
            .iter()
            .position(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC="));
        reloading.is_some_and(|i| s[i..].iter().any(|m| m == "READY=1"))
    })
    .await;
    seen.clear();
    cluster.signal_daemon(1, "TERM");
    wait_for("STOPPING=1", &mut seen, &|s| count(s, "STOPPING=1") == 1).await;
}
