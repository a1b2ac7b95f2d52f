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

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};

use crate::runtime::{Command, Handle};
use crate::status::Status;

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: Handle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(handle))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The routes, for embedding or testing.
pub fn router(handle: Handle) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/step-down", post(step_down))
        .route("/maintenance/on", post(maintenance_on))
        .route("/maintenance/off", post(maintenance_off))
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
