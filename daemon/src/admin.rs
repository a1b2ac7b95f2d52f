//! The admin HTTP API (axum), bound to loopback by default, and its client for the CLI.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/status` | JSON [`Status`] |
//! | GET | `/metrics` | Prometheus/OpenMetrics text |
//! | GET | `/leader` | 200 with JSON while this node is master with a lease left, 503 otherwise (for load balancer health checks) |
//! | GET | `/` | the status page: the cluster table (readable without JavaScript), live from `/events` |
//! | GET | `/events` | server-sent events: `cluster` (the whole view, on connect, on change and every second), `role`, `health`, `peer` |
//! | GET | `/cluster` | JSON [`ClusterView`]: every node as this one knows it, through the cluster |
//! | POST | `/step-down` | graceful step-down (demote, then hand over), waiting for the new master; body `{"to": "node-2"}` for a switchover to that node (from any node), `{"force": true}` to step down with no eligible successor; 409 with the reason when refused |
//! | POST | `/reload` | re-read the config file and apply what can change without a role change; 409 naming the key when it cannot (the old config keeps running) |
//! | POST | `/maintenance/on`, `/maintenance/off` | maintenance mode; `on` that would leave no eligible node is refused (409) unless the body says `{"force": true}` |
//!
//! **Who may use it.** The API is served on a Unix socket (`admin.socket`, default
//! `<data_dir>/admin.sock`, mode 0660, group `admin.socket_group`): whoever may connect to
//! it may use it, and the CLI uses it. Over TCP (`admin.listen`, optional) every request
//! needs `Authorization: Bearer <admin.token_file's token>` (401 without it), except
//! `GET /metrics` with `admin.metrics_open = true`. A browser cannot send that header, so
//! `GET /?token=<token>` answers with a cookie holding it (`HttpOnly`, `SameSite=Strict`)
//! and a redirect to `/`; the cookie then admits `GET`s (the page and its `/events`), never
//! a `POST`. On both, a `POST` from a browser is
//! refused: one with an `Origin` header is 403, one whose body is not declared
//! `application/json` is 415 (a cross-site form or `text/plain` fetch cannot set it
//! without a CORS preflight, which is never answered).
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
use crate::status::{ClusterView, NodeView, Status, human_ms};

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

/// The admin token (`admin.token_file`): never printed.
#[derive(Clone)]
pub struct AdminToken(zeroize::Zeroizing<String>);

impl AdminToken {
    /// Wraps a token.
    pub fn new(token: String) -> Self {
        Self(zeroize::Zeroizing::new(token))
    }

    /// Whether `other` is the same token (a reload compares the old and new file's).
    pub fn same_as(&self, other: &AdminToken) -> bool {
        self.matches(other.0.as_bytes())
    }

    /// Whether `offered` is this token, in time that does not depend on where they differ.
    fn matches(&self, offered: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        ours.len() == offered.len()
            && ours
                .iter()
                .zip(offered)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Where the admin API listens.
#[derive(Debug, Default)]
pub struct Listeners {
    /// The admin socket.
    pub socket: Option<tokio::net::UnixListener>,
    /// `admin.listen`.
    pub tcp: Option<tokio::net::TcpListener>,
}

/// Who may do what over TCP.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The token every TCP request must carry; `None`: TCP requests are all refused.
    pub token: Option<AdminToken>,
    /// `GET /metrics` over TCP without the token.
    pub metrics_open: bool,
}

/// How a request arrived (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Socket,
    Tcp,
}

/// Serves the admin API on `listeners` until `shutdown` completes, with the default
/// [`AdminLimits`].
pub async fn serve(
    listeners: Listeners,
    handle: Handle,
    access: Access,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listeners, handle, access, AdminLimits::default(), shutdown).await
}

/// A connection's mark that it serves an event stream (see `serve_connection`).
#[derive(Debug, Clone, Default)]
pub struct StreamGrant(Arc<std::sync::atomic::AtomicBool>);

/// How long an event stream lives at most (the page reconnects by itself).
const EVENT_STREAM_LIFETIME: Duration = Duration::from_secs(3600);

/// The cookie that carries the admin token for the status page.
const TOKEN_COOKIE: &str = "clustd_token";

/// The token in the request's `clustd_token` cookie, if any.
fn token_cookie(headers: &axum::http::HeaderMap) -> Option<Vec<u8>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
        .map(|t| t.as_bytes().to_vec())
}

/// Refuses what the caller may not do (see the module docs).
async fn guard(
    State(access): State<Arc<Access>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let refuse = |status: StatusCode, error: &str| {
        (
            status,
            Json(serde_json::json!({ "ok": false, "error": error })),
        )
            .into_response()
    };
    let via = request
        .extensions()
        .get::<Via>()
        .copied()
        .unwrap_or(Via::Tcp);
    if via == Via::Tcp {
        let open = access.metrics_open
            && request.method() == axum::http::Method::GET
            && request.uri().path() == "/metrics";
        let offered = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let get = request.method() == axum::http::Method::GET;
        let cookie = get.then(|| token_cookie(request.headers())).flatten();
        let allowed = match (&access.token, offered.or(cookie.as_deref())) {
            (Some(token), Some(offered)) => token.matches(offered),
            _ => false,
        };
        // The page's login: `/?token=...` sets the cookie and sends the browser to `/`.
        if get
            && request.uri().path() == "/"
            && let Some(query) = request.uri().query()
            && let Some(offered) = query.split('&').find_map(|kv| kv.strip_prefix("token="))
        {
            if access
                .token
                .as_ref()
                .is_some_and(|t| t.matches(offered.as_bytes()))
            {
                return (
                    StatusCode::SEE_OTHER,
                    [
                        (header::LOCATION, "/".to_owned()),
                        (
                            header::SET_COOKIE,
                            format!("{TOKEN_COOKIE}={offered}; HttpOnly; SameSite=Strict; Path=/"),
                        ),
                    ],
                )
                    .into_response();
            }
            return refuse(
                StatusCode::UNAUTHORIZED,
                "the token in the address is not admin.token_file's",
            );
        }
        if !open && !allowed {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "this request needs `Authorization: Bearer <token>` with the token of admin.token_file (`clustd status --config FILE` sends it), or use the admin socket",
            );
        }
    }
    if request.method() == axum::http::Method::POST {
        if request.headers().contains_key(header::ORIGIN) {
            return refuse(
                StatusCode::FORBIDDEN,
                "a POST with an Origin header comes from a web page: refused (use the clustd CLI or curl)",
            );
        }
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a POST must send `Content-Type: application/json` (with a JSON body, `{}` will do)",
            );
        }
    }
    next.run(request).await
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

/// One accepted connection, on either listener.
enum Accepted {
    Socket(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept_socket(l: &Option<tokio::net::UnixListener>) -> std::io::Result<Accepted> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| Accepted::Socket(s)),
        None => std::future::pending().await,
    }
}

async fn accept_tcp(l: &Option<tokio::net::TcpListener>) -> std::io::Result<Accepted> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        None => std::future::pending().await,
    }
}

/// [`serve`] with explicit limits (tests use short timeouts). The limits hold for both
/// listeners together.
pub async fn serve_with(
    listeners: Listeners,
    handle: Handle,
    access: Access,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(handle).layer(axum::middleware::from_fn_with_state(
        Arc::new(access),
        guard,
    ));
    let conns = Arc::new(Mutex::new(Conns::default()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = async {
                tokio::select! {
                    a = accept_socket(&listeners.socket) => a,
                    a = accept_tcp(&listeners.tcp) => a,
                }
            } => {
                let accepted = match accepted {
                    Ok(accepted) => accepted,
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
                match accepted {
                    Accepted::Socket(s) => tasks.spawn(serve_connection(s, Via::Socket, router.clone(), limits, registered, close_rx)),
                    Accepted::Tcp(s) => tasks.spawn(serve_connection(s, Via::Tcp, router.clone(), limits, registered, close_rx)),
                };
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
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    via: Via,
    router: Router,
    limits: AdminLimits,
    registered: Registered,
    close_rx: tokio::sync::oneshot::Receiver<()>,
) {
    use hyper::service::Service as _;
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conns = registered.conns.clone();
    let id = registered.id;
    // Set by the `/events` handler once it has a stream slot (after the guard let the
    // request through): only then does the connection outlive `connection_lifetime`.
    let streaming = StreamGrant::default();
    let granted = streaming.clone();
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            // The request head is in: no longer idle, so not the first to be closed.
            if let Some(conn) = lock(&conns).open.get_mut(&id) {
                conn.idle = false;
            }
            request.extensions_mut().insert(via);
            request.extensions_mut().insert(streaming.clone());
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
    // An event stream lives longer (its count is capped instead); any other connection
    // at most `connection_lifetime`.
    let lifetime = async {
        tokio::time::sleep(limits.connection_lifetime).await;
        if granted.0.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(EVENT_STREAM_LIFETIME).await;
        }
    };
    tokio::select! {
        _ = connection => {}
        _ = close_rx => {}
        () = idle_too_long => {}
        () = lifetime => {}
    }
    drop(registered);
}

/// The routes, for embedding or testing.
pub fn router(handle: Handle) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/events", get(events))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/leader", get(leader))
        .route("/cluster", get(cluster))
        .route("/step-down", post(step_down))
        .route("/maintenance/on", post(maintenance_on))
        .route("/maintenance/off", post(maintenance_off))
        .route("/reload", post(reload))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(axum::Extension(crate::page::Streams::default()))
        .with_state(handle)
}

async fn page(State(handle): State<Handle>) -> impl IntoResponse {
    let Some(status) = fresh_status(&handle).await else {
        return not_answering().into_response();
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        crate::page::render(&handle.cluster(), &status),
    )
        .into_response()
}

async fn events(
    State(handle): State<Handle>,
    axum::Extension(streams): axum::Extension<crate::page::Streams>,
    grant: Option<axum::Extension<StreamGrant>>,
) -> axum::response::Response {
    match crate::page::events(handle, streams) {
        Some(sse) => {
            if let Some(axum::Extension(grant)) = grant {
                grant.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            sse.into_response()
        }
        None => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} event streams are open already: close one",
                crate::page::MAX_EVENT_STREAMS
            ),
        )
        .into_response(),
    }
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

/// A fresh status snapshot, or `None` when the runtime does not answer within a second
/// (hung, or shutting down): then nothing it last said may be trusted.
async fn fresh_status(handle: &Handle) -> Option<Status> {
    match tokio::time::timeout(Duration::from_secs(1), handle.command(Command::Refresh)).await {
        Ok(true) => Some(handle.status()),
        _ => None,
    }
}

fn not_answering() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(
            serde_json::json!({ "ok": false, "error": "the daemon's runtime does not answer (hung or shutting down)" }),
        ),
    )
}

/// `GET /leader`: 200 only while this node is master with lease left, so a load balancer
/// sends traffic to the master alone (like Patroni's `/primary`).
async fn leader(State(handle): State<Handle>) -> impl IntoResponse {
    let Some(status) = fresh_status(&handle).await else {
        return not_answering();
    };
    let lease = status.lease_remaining_ms.unwrap_or(0);
    if status.role == "master" && lease > 0 {
        (
            StatusCode::OK,
            Json(serde_json::json!({
                "ok": true, "node_id": status.node_id, "term": status.term, "lease_remaining_ms": lease,
            })),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "ok": false, "node_id": status.node_id, "role": status.role, "leader": status.leader,
                "error": format!("{} is not master", status.node_id),
            })),
        )
    }
}

async fn cluster(State(handle): State<Handle>) -> impl IntoResponse {
    if fresh_status(&handle).await.is_none() {
        return not_answering().into_response();
    }
    Json(handle.cluster()).into_response()
}

/// The optional JSON body of `POST /step-down` and `POST /maintenance/on`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Switchover to this node.
    #[serde(default)]
    to: Option<String>,
    /// Do it even if it leaves no eligible node (no master).
    #[serde(default)]
    force: bool,
}

type Answer = (StatusCode, Json<serde_json::Value>);

fn refused(status: StatusCode, error: String) -> Answer {
    (
        status,
        Json(serde_json::json!({ "ok": false, "error": error })),
    )
}

fn options(body: &[u8]) -> Result<Options, Answer> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Options::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        refused(
            StatusCode::BAD_REQUEST,
            format!("the request body: {e} (expected {{\"to\": \"NODE\", \"force\": true}}, both optional)"),
        )
    })
}

/// Why each node other than this one may not take over, one clause each.
fn why_not_eligible(view: &ClusterView) -> String {
    let reasons: Vec<String> = view
        .nodes
        .iter()
        .filter(|n| !n.this_node)
        .map(|n| format!("{} {}", n.id, why_not(n)))
        .collect();
    if reasons.is_empty() {
        "it has no peers".to_owned()
    } else {
        reasons.join(", ")
    }
}

fn why_not(n: &NodeView) -> String {
    if !n.heard {
        return match n.last_heard_ms_ago {
            Some(ms) => format!("not heard from for {}", human_ms(ms)),
            None => "never heard from".to_owned(),
        };
    }
    match (n.maintenance, n.witness, n.eligible, &n.ineligible_reason) {
        (Some(true), ..) => "in maintenance".to_owned(),
        (_, Some(true), ..) => "a witness".to_owned(),
        (.., Some(false), Some(why)) => format!("not eligible ({why})"),
        (.., Some(false), None) => "not eligible".to_owned(),
        _ => {
            "eligible, but not answering the master within the minimum election timeout".to_owned()
        }
    }
}

/// Polls until `done` says the hand-over finished (`Some`), or `max` passed (`None`).
async fn wait_for_master(
    handle: &Handle,
    max: Duration,
    done: impl Fn(&Status, &ClusterView) -> bool,
) -> Option<ClusterView> {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let status = fresh_status(handle).await?;
        let view = handle.cluster();
        if done(&status, &view) {
            return Some(view);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a step-down answer waits for the new master: the longest hand-over, within
/// the connection's lifetime.
fn handover_wait(status: &Status) -> Duration {
    Duration::from_millis(status.handover_max_ms).min(Duration::from_secs(12))
}

async fn step_down(State(handle): State<Handle>, body: axum::body::Bytes) -> impl IntoResponse {
    let options = match options(&body) {
        Ok(o) => o,
        Err(answer) => return answer,
    };
    let Some(status) = fresh_status(&handle).await else {
        return not_answering();
    };
    let view = handle.cluster();
    if let Some(to) = options.to {
        return switchover(&handle, &status, &view, to).await;
    }
    if status.role != "master" {
        let master = match &status.leader {
            Some(leader) if *leader != status.node_id => format!("the master is {leader}"),
            _ => "no master is known".to_owned(),
        };
        return (
            StatusCode::CONFLICT,
            Json(serde_json::json!({
                "ok": false,
                "error": format!(
                    "{} is not master ({master}): run it there, or use `clustd step-down --to NODE` from any node",
                    status.node_id
                ),
                "status": status,
            })),
        );
    }
    if status.successors.is_empty() && !options.force {
        return refused(
            StatusCode::CONFLICT,
            format!(
                "{} has no eligible successor ({}): stepping down would leave the cluster without a master; --force steps down anyway",
                status.node_id,
                why_not_eligible(&view)
            ),
        );
    }
    let me = status.node_id.clone();
    match handle.call(Command::StepDown).await {
        None => return not_answering(),
        Some(Err(why)) => return refused(StatusCode::CONFLICT, why),
        Some(Ok(_)) => {}
    }
    if status.successors.is_empty() {
        return (
            StatusCode::OK,
            Json(serde_json::json!({
                "ok": true, "master": null,
                "note": format!("{me} stepped down with no eligible successor: the cluster has no master until a node may take over"),
            })),
        );
    }
    let started = tokio::time::Instant::now();
    let done = |_: &Status, v: &ClusterView| v.master.as_ref().is_some_and(|m| *m != me);
    handover_answer(
        wait_for_master(&handle, handover_wait(&status), done).await,
        started,
        &me,
        None,
    )
}

fn handover_answer(
    view: Option<ClusterView>,
    started: tokio::time::Instant,
    from: &str,
    to: Option<&str>,
) -> Answer {
    let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match view {
        Some(view) => (
            StatusCode::OK,
            Json(serde_json::json!({ "ok": true, "master": view.master, "took_ms": took })),
        ),
        None => refused(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the hand-over from {from}{} did not finish within {}: see `clustd status --all` and the master's log",
                to.map(|t| format!(" to {t}")).unwrap_or_default(),
                human_ms(took)
            ),
        ),
    }
}

async fn switchover(handle: &Handle, status: &Status, view: &ClusterView, to: String) -> Answer {
    let Some(target) = view.nodes.iter().find(|n| n.id == to) else {
        let ids: Vec<&str> = view.nodes.iter().map(|n| n.id.as_str()).collect();
        return refused(
            StatusCode::NOT_FOUND,
            format!(
                "no node {to:?} in this cluster (its nodes: {})",
                ids.join(", ")
            ),
        );
    };
    if target.role == "master" {
        return refused(StatusCode::CONFLICT, format!("{to} is already master"));
    }
    if !target.heard || target.eligible != Some(true) {
        return refused(
            StatusCode::CONFLICT,
            format!("cannot hand over to {to}: it is {}", why_not(target)),
        );
    }
    // Refused here as the leader would (a follower's request would just time out): a
    // preempting node of higher priority would take mastership straight back.
    let to_priority = target.priority.unwrap_or(0);
    if let Some(by) = view.nodes.iter().find(|n| {
        n.id != to
            && n.heard
            && n.eligible == Some(true)
            && n.preempt == Some(true)
            && n.priority.unwrap_or(0) > to_priority
    }) {
        return refused(
            StatusCode::CONFLICT,
            format!(
                "cannot hand over to {to}: {} (priority {}, preempt on) would take mastership back from {to} (priority {to_priority}) at once: lower its election.priority or turn its election.preempt off first (clustd reload)",
                by.id,
                by.priority.unwrap_or(0)
            ),
        );
    }
    let Ok(id) = clustd_core::NodeId::new(&to) else {
        return refused(StatusCode::BAD_REQUEST, format!("{to:?} is not a node id"));
    };
    let from = view
        .master
        .clone()
        .or_else(|| status.leader.clone())
        .unwrap_or_default();
    match handle.call(Command::Switchover(id)).await {
        None => return not_answering(),
        Some(Err(why)) => {
            return refused(
                StatusCode::CONFLICT,
                format!("cannot hand over to {to}: {why}"),
            );
        }
        Some(Ok(_)) => {}
    }
    let started = tokio::time::Instant::now();
    let done = |_: &Status, v: &ClusterView| v.master.as_deref() == Some(to.as_str());
    handover_answer(
        wait_for_master(handle, handover_wait(status), done).await,
        started,
        &from,
        Some(&to),
    )
}

async fn maintenance_on(
    State(handle): State<Handle>,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let options = match options(&body) {
        Ok(o) => o,
        Err(answer) => return answer,
    };
    if options.to.is_some() {
        return refused(
            StatusCode::BAD_REQUEST,
            "maintenance takes no \"to\"".into(),
        );
    }
    let Some(status) = fresh_status(&handle).await else {
        return not_answering();
    };
    let view = handle.cluster();
    let others = view
        .nodes
        .iter()
        .any(|n| !n.this_node && n.heard && n.eligible == Some(true));
    if status.eligible && !status.maintenance && !others && !options.force {
        return refused(
            StatusCode::CONFLICT,
            format!(
                "maintenance on {} would leave no node eligible to be master ({}): --force turns it on anyway",
                status.node_id,
                why_not_eligible(&view)
            ),
        );
    }
    run_command(&handle, Command::Maintenance(true)).await
}

async fn reload(State(handle): State<Handle>) -> impl IntoResponse {
    match handle.call(Command::Reload).await {
        None => not_answering(),
        Some(Ok(changes)) => (
            StatusCode::OK,
            Json(serde_json::json!({ "ok": true, "changes": changes })),
        ),
        Some(Err(why)) => refused(StatusCode::CONFLICT, why),
    }
}

async fn maintenance_off(State(handle): State<Handle>) -> impl IntoResponse {
    run_command(&handle, Command::Maintenance(false)).await
}

/// Where a client finds the admin API.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The admin socket.
    Socket(std::path::PathBuf),
    /// `admin.listen`, with the token to send.
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// `admin.token_file`'s token.
        token: Option<AdminToken>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Socket(path) => write!(f, "{}", path.display()),
            Self::Tcp { addr, .. } => write!(f, "http://{addr}"),
        }
    }
}

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered, or the answer was not HTTP.
    #[error("cannot reach the clustd admin API at {endpoint}: {message}")]
    Unreachable {
        /// Where.
        endpoint: String,
        /// What went wrong, and what to check.
        message: String,
    },
    /// The daemon answered with an error.
    #[error("{}", refusal(endpoint, *status, body))]
    Refused {
        /// Where.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
}

/// The `error` of a JSON answer, or the whole body.
fn refusal(endpoint: &str, status: u16, body: &str) -> String {
    let error = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    match error {
        Some(error) => format!("{error} (the daemon at {endpoint} answered {status})"),
        None => format!("the daemon at {endpoint} answered {status}: {body}"),
    }
}

/// How long the client waits for an answer (a step-down waits for the new master).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A small client for the admin API, on its socket or over TCP with the token.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    http: reqwest::Client,
}

impl Client {
    /// A client for the API at `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self { endpoint, http }
    }

    /// A client for the admin socket at `path`.
    pub fn socket(path: impl Into<std::path::PathBuf>) -> Self {
        Self::new(Endpoint::Socket(path.into()))
    }

    /// Where it connects.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn call(
        &self,
        method: axum::http::Method,
        path: &str,
        json: &str,
    ) -> Result<String, ClientError> {
        let endpoint = self.endpoint.to_string();
        let unreachable = |message: String| ClientError::Unreachable {
            endpoint: endpoint.clone(),
            message,
        };
        let post = method == axum::http::Method::POST;
        let (status, body) = match &self.endpoint {
            Endpoint::Tcp { addr, token } => {
                let mut request = self.http.request(method, format!("http://{addr}{path}"));
                if let Some(token) = token {
                    request = request.bearer_auth(token.0.as_str());
                }
                if post {
                    request = request
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(json.to_owned());
                }
                let response = request.send().await.map_err(|e| {
                    unreachable(format!(
                        "{e} (is the daemon running, and is admin.listen right?)"
                    ))
                })?;
                let status = response.status().as_u16();
                let body = response
                    .text()
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                (status, body)
            }
            Endpoint::Socket(socket) => {
                let request = async {
                    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
                        let hint = match e.kind() {
                            std::io::ErrorKind::PermissionDenied => "run as root, as the daemon's user, or as a member of admin.socket_group",
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => "is the daemon running, and is this its config (--config)?",
                            _ => "is the daemon running?",
                        };
                        format!("{e} ({hint})")
                    })?;
                    let (mut sender, connection) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                            .map_err(|e| e.to_string())?;
                    tokio::spawn(connection);
                    let mut request = axum::http::Request::builder()
                        .method(method)
                        .uri(path)
                        .header(header::HOST, "localhost");
                    let body = if post {
                        request = request.header(header::CONTENT_TYPE, "application/json");
                        axum::body::Body::from(json.to_owned())
                    } else {
                        axum::body::Body::empty()
                    };
                    let request = request.body(body).map_err(|e| e.to_string())?;
                    let response = sender
                        .send_request(request)
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = response.status().as_u16();
                    let bytes =
                        axum::body::to_bytes(axum::body::Body::new(response.into_body()), 16 << 20)
                            .await
                            .map_err(|e| e.to_string())?;
                    Ok::<_, String>((status, String::from_utf8_lossy(&bytes).into_owned()))
                };
                tokio::time::timeout(CLIENT_TIMEOUT, request)
                    .await
                    .map_err(|_| unreachable("no answer within 20 s".into()))?
                    .map_err(unreachable)?
            }
        };
        if !(200..300).contains(&status) {
            return Err(ClientError::Refused {
                endpoint,
                status,
                body,
            });
        }
        Ok(body)
    }

    /// `GET /status`, raw JSON.
    pub async fn status_json(&self) -> Result<String, ClientError> {
        self.call(axum::http::Method::GET, "/status", "").await
    }

    /// `POST path` (e.g. `/step-down`) with `Content-Type: application/json`, raw JSON.
    pub async fn post(&self, path: &str) -> Result<String, ClientError> {
        self.call(axum::http::Method::POST, path, "{}").await
    }

    /// `POST path` with this JSON body, raw JSON.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<String, ClientError> {
        self.call(axum::http::Method::POST, path, &body.to_string())
            .await
    }

    /// `GET path` (e.g. `/leader`), raw JSON.
    pub async fn get(&self, path: &str) -> Result<String, ClientError> {
        self.call(axum::http::Method::GET, path, "").await
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.call(axum::http::Method::GET, "/metrics", "").await
    }
}
