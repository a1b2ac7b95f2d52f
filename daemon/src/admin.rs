//! The admin HTTP API (axum), bound to loopback by default, and its client for the CLI.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/status` | JSON [`Status`] |
//! | GET | `/metrics` | Prometheus/OpenMetrics text |
//! | POST | `/step-down` | graceful step-down (demote, then hand over) |
//! | POST | `/maintenance/on`, `/maintenance/off` | maintenance mode |
//!
//! It has no authentication: keep it on loopback (the default) or behind a firewall.
//!
//! Bounded against local users who open connections and never close them (with the default
//! 1024-descriptor limit, 1,100 idle connections once made the daemon unable to write its
//! state): see [`AdminLimits`]. One request per connection (no keep-alive), so no
//! connection idles between requests; a connection that has not sent its request head
//! within [`AdminLimits::header_timeout`] is closed, and none lives longer than
//! [`AdminLimits::connection_lifetime`]. At [`AdminLimits::max_connections`], a new
//! connection closes the oldest one still waiting for its request head, so a flood of idle
//! connections cannot lock out `clustd status`; when every connection is busy with a
//! request, the new one is closed at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};

use crate::runtime::{Command, Handle};
use crate::status::Status;

/// How much the admin server lets its clients hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Most connections open at once (64: far more than operators and scrapers need,
    /// far below any descriptor limit).
    pub max_connections: usize,
    /// A connection that has not sent its whole request head by then is closed (5 s).
    pub header_timeout: Duration,
    /// No connection lives longer, whatever it does (15 s: a request is answered in
    /// milliseconds; this bounds slow readers of a response).
    pub connection_lifetime: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(15),
        }
    }
}

/// The largest request head read, and the largest body any route may read: no route
/// takes a body today.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Serves the admin API on `listener` until `shutdown` completes, with the default
/// [`AdminLimits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: Handle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, handle, AdminLimits::default(), shutdown).await
}

/// The open connections, by accept order; `close` is taken when one is told to close.
#[derive(Debug, Default)]
struct Conns {
    open: BTreeMap<u64, Conn>,
}

#[derive(Debug)]
struct Conn {
    /// No request head has arrived yet.
    idle: bool,
    close: Option<tokio::sync::oneshot::Sender<()>>,
}

fn lock(conns: &Mutex<Conns>) -> MutexGuard<'_, Conns> {
    // Plain data, consistent after every short critical section.
    conns.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a connection's entry when its task ends, however it ends.
struct Registered {
    conns: Arc<Mutex<Conns>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.conns).open.remove(&self.id);
    }
}

/// [`serve`] with explicit limits (tests use short timeouts).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    handle: Handle,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(handle);
    let conns = Arc::new(Mutex::new(Conns::default()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE and friends: the pending connection stays in the backlog;
                        // pause instead of spinning on the same error.
                        tracing::warn!(error = %e, "admin API: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if !make_room(&mut tasks, &conns, limits.max_connections.max(1)).await {
                    tracing::debug!("admin API: every connection is busy; new connection closed");
                    continue;
                }
                let id = next_id;
                next_id += 1;
                let (close_tx, close_rx) = tokio::sync::oneshot::channel();
                lock(&conns).open.insert(id, Conn { idle: true, close: Some(close_tx) });
                let registered = Registered { conns: conns.clone(), id };
                tasks.spawn(serve_connection(stream, router.clone(), limits, registered, close_rx));
            }
        }
    }
    tasks.shutdown().await;
    Ok(())
}

/// Makes room for one more connection. At the cap, closes the oldest connection still
/// waiting for its request head and waits until its task has ended, so its descriptor is
/// gone: a burst of accepts never holds more than the cap. False when every connection is
/// busy with a request (each ends within the connection lifetime).
async fn make_room(tasks: &mut tokio::task::JoinSet<()>, conns: &Mutex<Conns>, max: usize) -> bool {
    while tasks.try_join_next().is_some() {}
    while tasks.len() >= max {
        let (oldest_idle, closing) = {
            let mut c = lock(conns);
            let old = c.open.iter().find(|(_, conn)| conn.idle).map(|(id, _)| *id);
            // Tasks told to close are out of `open` but may not have ended yet.
            let closing = tasks.len() > c.open.len();
            (old.and_then(|old| c.open.remove(&old)), closing)
        };
        match oldest_idle {
            Some(mut conn) => {
                if let Some(close) = conn.close.take() {
                    let _ = close.send(());
                }
                tracing::debug!("admin API: connection cap reached; closed the oldest idle one");
            }
            None if closing => {}
            None => return false,
        }
        if tasks.join_next().await.is_none() {
            break;
        }
    }
    true
}

/// One request on one connection, within the limits; `close_rx` fires when the accept
/// loop needs the slot.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    limits: AdminLimits,
    registered: Registered,
    close_rx: tokio::sync::oneshot::Receiver<()>,
) {
    use hyper::service::Service as _;
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conns = registered.conns.clone();
    let id = registered.id;
    let service = hyper::service::service_fn(move |request| {
        // The request head is in: no longer idle, so not the first to be closed.
        if let Some(conn) = lock(&conns).open.get_mut(&id) {
            conn.idle = false;
        }
        service.call(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_REQUEST_BYTES)
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    // hyper's header timer starts with the head; this one also covers a client that
    // never sends a byte.
    let conns = registered.conns.clone();
    let idle_too_long = async {
        tokio::time::sleep(limits.header_timeout).await;
        let idle = lock(&conns).open.get(&id).is_none_or(|conn| conn.idle);
        if !idle {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = connection => {}
        _ = close_rx => {}
        () = idle_too_long => {}
        () = tokio::time::sleep(limits.connection_lifetime) => {}
    }
    drop(registered);
}

/// The routes, for embedding or testing.
pub fn router(handle: Handle) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/step-down", post(step_down))
        .route("/maintenance/on", post(maintenance_on))
        .route("/maintenance/off", post(maintenance_off))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(handle)
}

async fn status(State(handle): State<Handle>) -> Json<Status> {
    Json(handle.status())
}

async fn metrics(State(handle): State<Handle>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        handle.metrics_text(),
    )
}

async fn run_command(handle: &Handle, command: Command) -> (StatusCode, Json<serde_json::Value>) {
    if handle.command(command).await {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "ok": true, "status": handle.status() })),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ok": false, "error": "the node is shutting down" })),
        )
    }
}

async fn step_down(State(handle): State<Handle>) -> impl IntoResponse {
    run_command(&handle, Command::StepDown).await
}

async fn maintenance_on(State(handle): State<Handle>) -> impl IntoResponse {
    run_command(&handle, Command::Maintenance(true)).await
}

async fn maintenance_off(State(handle): State<Handle>) -> impl IntoResponse {
    run_command(&handle, Command::Maintenance(false)).await
}

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered, or the answer was not HTTP.
    #[error(
        "cannot reach the clustd admin API at {addr}: {source} (is the daemon running, and is admin.listen right?)"
    )]
    Unreachable {
        /// The address tried.
        addr: SocketAddr,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// The daemon answered with an error.
    #[error("the daemon at {addr} answered {status}: {body}")]
    Refused {
        /// The address tried.
        addr: SocketAddr,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
}

/// A small client for the admin API.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Client {
    /// A client for the API at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self { addr, http }
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<String, ClientError> {
        let addr = self.addr;
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable { addr, source })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|source| ClientError::Unreachable { addr, source })?;
        if !status.is_success() {
            return Err(ClientError::Refused {
                addr,
                status: status.as_u16(),
                body,
            });
        }
        Ok(body)
    }

    /// `GET /status`, raw JSON.
    pub async fn status_json(&self) -> Result<String, ClientError> {
        self.call(self.http.get(format!("http://{}/status", self.addr)))
            .await
    }

    /// `POST path` (e.g. `/step-down`), raw JSON.
    pub async fn post(&self, path: &str) -> Result<String, ClientError> {
        self.call(self.http.post(format!("http://{}{path}", self.addr)))
            .await
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.call(self.http.get(format!("http://{}/metrics", self.addr)))
            .await
    }
}
