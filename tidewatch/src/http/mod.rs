//! Tidewatch's HTTP server (axum): the JSON API under `/api/v1`, its
//! OpenAPI document at `/openapi.json`, Prometheus metrics at `/metrics`,
//! and Tidewatch's own pages (`/`, `/models/{model}`) with their assets.
//!
//! ```text
//! Router ─┬─ /api/v1/…        api.rs    JSON; errors {"error": {"code", "message"}}
//!         ├─ /openapi.json    openapi.json (embedded)
//!         ├─ /metrics         telemetry.rs (Prometheus text format)
//!         ├─ /, /models/{m}   pages.rs  server-rendered HTML
//!         ├─ /assets/…        embedded uPlot + tidewatch.js / .css
//!         ├─ /api/2.0/mlflow/ registry::api (MLflow's registry API), when
//!         │                   a registry is configured
//!         └─ /api/v1/registry/mlflow-webhook  registry::bridge (MLflow's
//!                             signed webhooks), when the bridge receives them
//! ```
//!
//! Everything reads the [`store::Store`]; the server holds no state of its
//! own besides the metrics. Mutating endpoints need `Authorization: Bearer
//! <token>` with the token from `[http] token_env`; without a configured
//! token they answer 403. Result sizes are bounded: list endpoints take
//! `limit` (at most [`MAX_LIMIT`]) and `offset`, and say where the next page
//! starts. Request bodies are limited to `[http] max_body_bytes`.

mod api;
pub mod config;
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
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Time a client has to send its headers, and the longest pause inside
    /// a request body.
    pub request_timeout: std::time::Duration,
    /// The model registry served under `/api/2.0/mlflow/`, if any.
    pub registry: Option<registry::Registry>,
    /// The secret of the MLflow webhooks the registry's bridge receives at
    /// [`registry::bridge::WEBHOOK_PATH`], if it does.
    pub mlflow_webhook_secret: Option<String>,
}

/// The whole router.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.max_body_bytes;
    let registry = state.registry.clone().map(|registry| {
        let mut routes =
            registry::api::router(registry.clone()).layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                registry_writes_need_the_token,
            ));
        // MLflow's webhooks authenticate with their signature.
        if let Some(secret) = &state.mlflow_webhook_secret {
            routes = routes.merge(registry::bridge::webhook_router(registry, secret.clone()));
        }
        routes.layer(axum::extract::DefaultBodyLimit::max(body_limit))
    });
    let app = Router::new()
        .merge(api::routes())
        .merge(pages::routes())
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state);
    match registry {
        Some(registry) => app.merge(registry),
        None => app,
    }
}

/// The registry's writes need the API token (the `mlflow` client sends
/// `MLFLOW_TRACKING_TOKEN` as a bearer token); reads are open like the rest
/// of the API. Refusals use MLflow's error shape, which its client reports.
async fn registry_writes_need_the_token(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method();
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        return next.run(request).await;
    }
    match api::authorize(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            let code = if error.status() == StatusCode::FORBIDDEN {
                "PERMISSION_DENIED"
            } else {
                "UNAUTHENTICATED"
            };
            (
                error.status(),
                axum::Json(serde_json::json!({"error_code": code, "message": error.message()})),
            )
                .into_response()
        }
    }
}

/// Serves `state` on `listener` until `shutdown` resolves (see
/// [`serve_router`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = ServerLimits {
        max_connections: state.max_connections,
        request_timeout: state.request_timeout,
    };
    serve_router(listener, router(state), limits, shutdown).await
}

/// Bounds of an HTTP server's accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Time a client has to send its headers.
    pub request_timeout: std::time::Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves: Tidewatch's HTTP
/// server and the model gateway share this loop.
///
/// At most `max_connections` connections are served at once (a semaphore
/// per connection); one more is closed as soon as it is accepted, and
/// counted in the log. A client must send its headers within
/// `request_timeout` (slow clients are disconnected); bodies are read by the
/// handlers with the same bound between parts. On shutdown no connection is
/// accepted any more; open ones finish their request in flight and close
/// (idle keep-alive connections at once), within [`DRAIN_DEADLINE`].
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let limit = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections, closing a new one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = graceful.watch(
            http1.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone())),
        );
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(deadline = ?DRAIN_DEADLINE, "stopped waiting for connections still open at shutdown");
    }
    Ok(())
}

/// How long open connections may take to finish after shutdown.
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The hand-written part of the OpenAPI document: routes, parameters and
/// every schema but those derived from Rust types (see [`openapi_document`]).
const OPENAPI: &str = include_str!("openapi.json");

/// Schemas of the OpenAPI document derived from the types the API
/// serializes, so that a field added to them is documented with it:
/// `FeatureWindowMetrics` (the `metrics` of a metrics row).
fn derived_schemas() -> Vec<(&'static str, serde_json::Value)> {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    let generator = settings.into_generator();
    let mut metrics = generator
        .into_root_schema_for::<detectors::FeatureWindowMetrics>()
        .to_value();
    if let Some(object) = metrics.as_object_mut() {
        object.remove("$schema");
    }
    vec![("FeatureWindowMetrics", metrics)]
}

/// The OpenAPI 3.1 document describing `/api/v1`: `openapi.json` with the
/// derived schemas filled in.
pub fn openapi_document() -> &'static serde_json::Value {
    static DOCUMENT: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| {
        let mut document: serde_json::Value =
            serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON (tested)");
        let schemas = document
            .pointer_mut("/components/schemas")
            .and_then(serde_json::Value::as_object_mut)
            .expect("openapi.json has components.schemas (tested)");
        for (name, schema) in derived_schemas() {
            schemas.insert(name.to_owned(), schema);
        }
        document
    });
    &DOCUMENT
}

async fn openapi() -> Response {
    axum::Json(openapi_document()).into_response()
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

    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.message
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
