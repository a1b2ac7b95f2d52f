//! The check runners against real commands, an HTTP server and a TCP listener on
//! 127.0.0.1, counted by the health tracker as the runtime counts them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use clustd::config::{CheckConfig, CheckKind};
use clustd::health::{CheckResult, Tracker, run_check, spawn_checks};
use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Long enough for a loaded CI machine; conditions are waited for, never slept on.
const DEADLINE: Duration = Duration::from_secs(20);

fn check(name: &str, kind: CheckKind, fall: u32, rise: u32) -> CheckConfig {
    CheckConfig {
        name: name.into(),
        kind,
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(2000),
        fall,
        rise,
    }
}

fn exec(command: String) -> CheckKind {
    CheckKind::Exec { command }
}

/// Results from running checks, counted by a tracker.
struct Watch {
    rx: mpsc::Receiver<CheckResult>,
    tracker: Tracker,
    origin: tokio::time::Instant,
    /// Every result seen, in order.
    seen: Vec<CheckResult>,
}

impl Watch {
    fn new(checks: &[CheckConfig], rx: mpsc::Receiver<CheckResult>) -> Self {
        Self {
            rx,
            tracker: Tracker::new(checks, Duration::from_secs(60)),
            origin: tokio::time::Instant::now(),
            seen: Vec::new(),
        }
    }

    /// Counts results until the node's health is `healthy`; panics after [`DEADLINE`].
    async fn until_healthy(&mut self, healthy: bool) {
        let waiting = async {
            while self.tracker.is_healthy() != healthy {
                let result = self.rx.recv().await.expect("the checks run");
                let now = clustd_core::Instant::from_elapsed(self.origin.elapsed());
                let _ = self.tracker.record(&result, now);
                self.seen.push(result);
            }
        };
        if tokio::time::timeout(DEADLINE, waiting).await.is_err() {
            panic!(
                "not {} after {DEADLINE:?}; results: {:?}",
                if healthy { "healthy" } else { "unhealthy" },
                self.seen
            );
        }
    }

    fn last(&self) -> &CheckResult {
        self.seen.last().expect("a result")
    }
}

/// Waits until process group `group` has no member left.
async fn until_group_gone(group: i32) {
    let gone = async {
        while killpg(Pid::from_raw(group), None) != Err(Errno::ESRCH) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, gone)
        .await
        .unwrap_or_else(|_| panic!("process group {group} still alive after {DEADLINE:?}"));
}

async fn read_pid(path: &Path) -> i32 {
    let reading = async {
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, reading)
        .await
        .expect("the script wrote its pid")
}

#[tokio::test]
async fn an_exec_check_follows_a_file_with_fall_and_rise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flag = dir.path().join("up");
    let web = check(
        "web",
        exec(format!("test -f '{}' && echo up", flag.display())),
        2,
        2,
    );
    let (tx, rx) = mpsc::channel(16);
    let _tasks = spawn_checks(std::slice::from_ref(&web), tx);
    let mut watch = Watch::new(std::slice::from_ref(&web), rx);
    assert!(!watch.tracker.is_healthy(), "a check starts unhealthy");

    std::fs::write(&flag, b"").expect("touch");
    watch.until_healthy(true).await;
    let passes = watch.seen.iter().rev().take_while(|r| r.healthy).count();
    assert!(
        passes >= 2,
        "healthy only after rise passes: {:?}",
        watch.seen
    );
    assert_eq!(watch.last().detail, "up");

    std::fs::remove_file(&flag).expect("rm");
    let before = watch.seen.len();
    watch.until_healthy(false).await;
    let failures = watch.seen[before..].iter().filter(|r| !r.healthy).count();
    assert!(
        failures >= 2,
        "unhealthy only after fall failures: {:?}",
        watch.seen
    );
    assert_eq!(watch.last().detail, "exit status 1");
    let why = watch.tracker.why_unhealthy().expect("unhealthy");
    assert!(
        why.contains("check web failed 2 times in a row: exit status 1"),
        "{why}"
    );
}

#[tokio::test]
async fn a_hanging_exec_check_is_killed_at_its_timeout_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let mut hang = check(
        "hang",
        exec(format!("echo $$ > '{}'; sleep 600", pid_file.display())),
        1,
        1,
    );
    hang.timeout = Duration::from_millis(300);
    let result = run_check(&hang).await;
    assert!(!result.healthy, "{result:?}");
    assert!(
        result.detail.starts_with("timed out after 300 ms"),
        "{result:?}"
    );
    assert!(result.duration >= Duration::from_millis(300), "{result:?}");
    until_group_gone(read_pid(&pid_file).await).await;
}

#[tokio::test]
async fn dropping_the_tasks_kills_a_running_exec_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let mut hang = check(
        "hang",
        exec(format!("echo $$ > '{}'; sleep 600", pid_file.display())),
        1,
        1,
    );
    hang.timeout = Duration::from_secs(600);
    let (tx, _rx) = mpsc::channel(16);
    let tasks = spawn_checks(&[hang], tx);
    let group = read_pid(&pid_file).await;
    assert_eq!(killpg(Pid::from_raw(group), None), Ok(()), "running");
    drop(tasks);
    until_group_gone(group).await;
}

/// A tiny HTTP server on 127.0.0.1 answering every request with the status in `status`.
async fn http_server(status: Arc<AtomicU16>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let status = status.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 {status} Whatever\r\nLocation: http://example.invalid/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}/health")
}

#[tokio::test]
async fn an_http_check_is_healthy_on_2xx_only() {
    let status = Arc::new(AtomicU16::new(200));
    let url = http_server(status.clone()).await;
    let api = check(
        "api",
        CheckKind::Http {
            url: url.parse().expect("url"),
        },
        2,
        2,
    );
    let (tx, rx) = mpsc::channel(16);
    let _tasks = spawn_checks(std::slice::from_ref(&api), tx);
    let mut watch = Watch::new(std::slice::from_ref(&api), rx);
    watch.until_healthy(true).await;
    assert_eq!(watch.last().detail, "HTTP 200");

    status.store(503, Ordering::SeqCst);
    watch.until_healthy(false).await;
    assert_eq!(watch.last().detail, "HTTP 503");

    status.store(302, Ordering::SeqCst);
    let redirect = run_check(&api).await;
    assert!(!redirect.healthy);
    assert_eq!(redirect.detail, "HTTP 302 (redirects are not followed)");
}

#[tokio::test]
async fn an_http_check_without_a_server_fails_without_echoing_the_url() {
    // Bind then drop: a port on which nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let api = check(
        "api",
        CheckKind::Http {
            url: format!("http://user:hunter2@127.0.0.1:{port}/health")
                .parse()
                .expect("url"),
        },
        1,
        1,
    );
    let result = run_check(&api).await;
    assert!(!result.healthy, "{result:?}");
    assert!(!result.detail.contains("hunter2"), "{result:?}");
    assert!(!result.detail.is_empty());
    assert!(
        result.detail.contains("connect"),
        "says what failed: {result:?}"
    );
}

#[tokio::test]
async fn a_tcp_check_fails_once_the_listener_is_gone() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepting = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let db = check(
        "db",
        CheckKind::Tcp {
            addr: addr.to_string(),
        },
        2,
        1,
    );
    let (tx, rx) = mpsc::channel(16);
    let _tasks = spawn_checks(std::slice::from_ref(&db), tx);
    let mut watch = Watch::new(std::slice::from_ref(&db), rx);
    watch.until_healthy(true).await;
    assert_eq!(watch.last().detail, format!("connected to {addr}"));

    accepting.abort();
    let _ = accepting.await;
    watch.until_healthy(false).await;
    let detail = &watch.last().detail;
    assert!(
        detail.starts_with(&format!("cannot connect to {addr}")),
        "{detail}"
    );
}

#[tokio::test]
async fn a_tcp_check_resolves_names() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let db = check(
        "db",
        CheckKind::Tcp {
            addr: format!("localhost:{port}"),
        },
        1,
        1,
    );
    let accepting = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
    let result = run_check(&db).await;
    // `localhost` may resolve to ::1 first on some machines; it must reach 127.0.0.1 then.
    assert!(result.healthy, "{result:?}");
    accepting.abort();
}
