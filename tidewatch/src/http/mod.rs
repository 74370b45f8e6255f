//! Tidewatch's HTTP server (axum): the JSON API under `/api/v1`, its
//! OpenAPI document at `/openapi.json`, Prometheus metrics at `/metrics`,
//! and Tidewatch's own pages (`/`, `/models/{model}`) with their assets.
//!
//! ```text
//! Router ─┬─ /api/v1/…        api.rs    JSON; errors {"error": {"code", "message"}}
//!         ├─ /openapi.json    openapi.json (embedded)
//!         ├─ /metrics         telemetry.rs (Prometheus text format)
//!         ├─ /, /models/{m}   pages.rs  server-rendered HTML
//!         └─ /assets/…        embedded uPlot + tidewatch.js / .css
//! ```
//!
//! Everything reads the [`store::Store`]; the server holds no state of its
//! own besides the metrics. Mutating endpoints need `Authorization: Bearer
//! <token>` with the token from `[http] token_env`; without a configured
//! token they answer 403. Result sizes are bounded: list endpoints take
//! `limit` (at most [`MAX_LIMIT`]) and `offset`, and say where the next page
//! starts. Request bodies are limited to `[http] max_body_bytes`.

mod api;
mod pages;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use detectors::spec::ModelSpec;
use store::Store;

pub use telemetry::Telemetry;

/// Largest page any list endpoint returns.
pub const MAX_LIMIT: u64 = 1_000;
/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: u64 = 100;

/// What the handlers share.
pub struct AppState {
    /// Where everything is read from.
    pub store: Store,
    /// The configured models.
    pub models: Vec<ModelSpec>,
    /// Window size, ms (how far back the pages look).
    pub window_ms: i64,
    /// Bearer token of mutating endpoints; `None` disables them.
    pub token: Option<String>,
    /// Metrics served at `/metrics`.
    pub telemetry: Telemetry,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

/// The whole router.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.max_body_bytes;
    Router::new()
        .merge(api::routes())
        .merge(pages::routes())
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The OpenAPI 3.1 document describing `/api/v1`.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.telemetry.encode(),
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", uri.path()),
    )
    .into_response()
}

/// An error as the API reports it: a status and `{"error": {"code",
/// "message"}}`, where `code` is stable and `message` is for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with `status`, stable `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `invalid_parameter`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<store::Error> for ApiError {
    fn from(error: store::Error) -> Self {
        tracing::warn!(%error, "store error while serving a request");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            error.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({
                "error": {"code": self.code, "message": self.message}
            })),
        )
            .into_response()
    }
}
