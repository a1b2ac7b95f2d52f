//! Test helpers: real servers on 127.0.0.1 (HTTP, SMTP via aiosmtpd), a fake daemon
//! speaking the real driver protocol over a real clustd-transport endpoint, and waiting.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustd_core::NodeId;
use clustd_core::codec::{decode, encode};
use clustd_core::driver::{FromDriver, ToDriver};
use clustd_transport::{
    Endpoint, EndpointConfig, PeerKind, Secret, SendClass, TokioNet, TransportEvent, TransportKind,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How long any wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub const SECRET: &str = "test-cluster-secret-0123456789abcdef";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "clustd_drivers=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after [`PATIENCE`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether any process of process group `pgid` is alive (zombies, exited but not yet
/// reaped by their parent, count as gone).
pub fn group_alive(pgid: i32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.filter_map(Result::ok).any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
            && !matches!(fields.first(), Some(&("Z" | "X")))
    })
}

/// Lines of a file, or nothing if it does not exist yet.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

// ----------------------------------------------------------------------------- HTTP

/// One request the test server received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// A tiny HTTP/1.1 server on 127.0.0.1: records requests, answers with scripted statuses
/// (200 once the script is used up); `hang` makes it never answer.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub requests: mpsc::UnboundedReceiver<Request>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
}

impl HttpServer {
    pub async fn start(statuses: &[u16], hang: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let statuses = Arc::new(Mutex::new(
            statuses.iter().copied().collect::<VecDeque<_>>(),
        ));
        let script = statuses.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut reader = BufReader::new(read);
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_owned();
                    let path = parts.next().unwrap_or_default().to_owned();
                    let mut headers = BTreeMap::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                        }
                    }
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let body = String::from_utf8_lossy(&body).into_owned();
                    let _ = tx.send(Request {
                        method,
                        path,
                        headers,
                        body,
                    });
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    let status = script.lock().expect("lock").pop_front().unwrap_or(200);
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
                    );
                    let _ = write.write_all(reply.as_bytes()).await;
                    let _ = write.shutdown().await;
                });
            }
        });
        Self {
            addr,
            requests: rx,
            statuses,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn next(&mut self) -> Request {
        tokio::time::timeout(PATIENCE, self.requests.recv())
            .await
            .expect("a request within the patience")
            .expect("server runs")
    }
}

/// Decodes an `application/x-www-form-urlencoded` body.
pub fn form(body: &str) -> BTreeMap<String, String> {
    fn unescape(s: &str) -> String {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && i + 2 < bytes.len()
                && let Ok(b) =
                    u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16)
            {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (unescape(k), unescape(v)))
        .collect()
}

// ----------------------------------------------------------------------------- SMTP

/// `python3 -m aiosmtpd` on 127.0.0.1, printing each message it gets (Debugging handler).
pub struct SmtpServer {
    pub port: u16,
    child: tokio::process::Child,
    out: mpsc::UnboundedReceiver<String>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl SmtpServer {
    /// Starts aiosmtpd. Returns `None` (after a loud message) only when python3 or aiosmtpd
    /// is missing and `CI` is not set; under CI a missing aiosmtpd fails the test.
    pub async fn start() -> Option<Self> {
        let available = std::process::Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !available {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            assert!(
                !ci,
                "CI is set but python3 with aiosmtpd is missing: `python3 -m pip install aiosmtpd` must run first"
            );
            eprintln!(
                "\n!!!!! SKIPPING SMTP TEST: python3 -m aiosmtpd is not available (python3 -m pip install aiosmtpd) !!!!!\n"
            );
            return None;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut child = tokio::process::Command::new("python3")
            .args([
                "-u",
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start aiosmtpd");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "aiosmtpd did not start listening on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Self {
            port,
            child,
            out: rx,
        })
    }

    /// The next message printed by aiosmtpd (headers and body, as lines).
    pub async fn next_message(&mut self) -> Vec<String> {
        let mut message = Vec::new();
        let mut inside = false;
        loop {
            let line = tokio::time::timeout(PATIENCE, self.out.recv())
                .await
                .expect("an email within the patience")
                .expect("aiosmtpd runs");
            if line.contains("MESSAGE FOLLOWS") {
                inside = true;
            } else if line.contains("END MESSAGE") {
                return message;
            } else if inside {
                message.push(line);
            }
        }
    }
}

// ----------------------------------------------------------------------------- fake daemon

/// A daemon stand-in: a real clustd-transport endpoint accepting drivers, speaking the real
/// driver protocol, driven by the test.
pub struct FakeDaemon {
    pub endpoint: Endpoint,
    events: mpsc::Receiver<TransportEvent>,
    pub addr: SocketAddr,
    pub id: NodeId,
}

impl FakeDaemon {
    pub async fn start(kind: TransportKind, listen: SocketAddr) -> Self {
        let id = NodeId::new("node-1").expect("valid");
        let secret = Secret::from_bytes(SECRET.as_bytes().to_vec()).expect("long enough");
        let mut config = EndpointConfig::new(kind, id.clone(), PeerKind::Peer, secret);
        config.listen = Some(listen);
        config.accept_drivers = true;
        let (endpoint, events) = Endpoint::start(TokioNet, config)
            .await
            .expect("fake daemon starts");
        let addr = endpoint.local_addr().expect("listening");
        Self {
            endpoint,
            events,
            addr,
            id,
        }
    }

    /// Waits for a driver to connect; returns its id.
    pub async fn accept_driver(&mut self) -> NodeId {
        loop {
            if let TransportEvent::Connected {
                id,
                kind: PeerKind::Driver,
                ..
            } = self.next_event().await
            {
                return id;
            }
        }
    }

    async fn next_event(&mut self) -> TransportEvent {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("a transport event within the patience")
            .expect("endpoint runs")
    }

    pub fn send(&self, driver: &NodeId, msg: &ToDriver) {
        let frame = encode(msg).expect("encodes");
        self.endpoint
            .send(driver, frame, SendClass::Reliable)
            .expect("driver connected");
    }

    /// The next message from a driver.
    pub async fn next_from_driver(&mut self) -> FromDriver {
        loop {
            if let TransportEvent::Frame {
                frame,
                kind: PeerKind::Driver,
                ..
            } = self.next_event().await
            {
                // Keepalives come every 250 ms on every connection: not what tests wait for.
                match decode(&frame).expect("driver frames decode") {
                    FromDriver::Alive => continue,
                    msg => return msg,
                }
            }
        }
    }

    /// Vanishes like a killed process: every connection and the listener close.
    pub async fn vanish(self) {
        self.endpoint.shutdown().await;
    }
}
