//! A flood of garbage handshakes makes a daemon log a bounded summary, never one line per
//! attempt. One test in this binary: it owns the process's log subscriber.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use clustd::local::{LocalCluster, LocalNode};
use clustd::runtime::Shutdown;
use clustd_transport::TransportKind;
use clustd_transport::raw::RawConn;

const ELECTION: &str = "heartbeat_ms = 100\nelection_timeout_ms = [1000, 2000]";
/// How long the garbage comes.
const ATTACK: Duration = Duration::from_secs(3);
/// The daemon summarizes rejections every 10 s; generous on a busy machine.
const SUMMARY_WAIT: Duration = Duration::from_secs(30);

/// Every log line of the process, as the daemon's fmt layer writes them.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Warnings logged since the last call, and clears the log.
fn take_warnings() -> Vec<String> {
    let mut log = LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let text = String::from_utf8_lossy(&log).into_owned();
    log.clear();
    text.lines()
        .filter(|l| l.contains("WARN"))
        .map(str::to_owned)
        .collect()
}

/// Garbage first messages from a few concurrent clients for [`ATTACK`]; returns how many.
async fn garbage_handshakes(kind: TransportKind, addr: std::net::SocketAddr) -> usize {
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..4u64 {
        clients.spawn(async move {
            let until = tokio::time::Instant::now() + ATTACK;
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ c;
            let mut sent = 0;
            while tokio::time::Instant::now() < until {
                let Ok(mut raw) = RawConn::connect(kind, addr).await else {
                    continue;
                };
                // xorshift: looks random, is not a Noise message under any key.
                let garbage: Vec<u8> = (0..96)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state.to_le_bytes()[0]
                    })
                    .collect();
                if raw.send_raw(garbage).await.is_ok() {
                    sent += 1;
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), raw.closed()).await;
            }
            sent
        });
    }
    clients.join_all().await.into_iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_handshakes_log_a_bounded_summary() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(|| Capture)
        .init();
    for kind in [TransportKind::WebSocket, TransportKind::Quic] {
        let (_dir, settings) = LocalCluster::configure(3, kind, ELECTION).expect("config");
        // One node alone: it stays a candidate, which is all this needs.
        let mut node = LocalNode::start(&settings[0]);
        node.started().await.expect("starts");
        let _ = take_warnings();
        let attempts = garbage_handshakes(kind, settings[0].listen).await;
        assert!(attempts >= 20, "{kind:?}: only {attempts} attempts");
        let during: Vec<String> = take_warnings()
            .into_iter()
            .filter(|l| l.contains("reject"))
            .collect();
        assert!(
            during.len() <= 2,
            "{kind:?}: {} warnings for {attempts} garbage handshakes, e.g. {:?}",
            during.len(),
            during.first()
        );
        // Then one summary with the count.
        let deadline = tokio::time::Instant::now() + SUMMARY_WAIT;
        let summary = loop {
            let warnings = take_warnings();
            if let Some(s) = warnings.iter().find(|l| l.contains("rejected")) {
                break s.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{kind:?}: no summary of the rejections"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            summary.contains("authentication failed") && summary.contains("127.0.0.1"),
            "{kind:?}: {summary}"
        );
        eprintln!("{kind:?}: {attempts} garbage handshakes; {summary}");
        node.stop(Shutdown::Immediate).await.expect("stops");
    }
}
