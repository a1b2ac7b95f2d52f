//! Shared by the daemon's integration tests.

// Each test crate that says `mod common;` compiles all of it and uses only part.
#[allow(dead_code)]
pub(crate) mod procs;

/// Runs each `async fn name(kind: TransportKind)` once per transport, as
/// `quic::name` and `websocket::name`: the same body, never a copy.
#[macro_export]
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod quic {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(clustd_transport::TransportKind::Quic).await }) *
        }
        mod websocket {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(clustd_transport::TransportKind::WebSocket).await }) *
        }
    };
}
