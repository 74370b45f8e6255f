//! # registry — model versions, aliases and references, MLflow-compatible
//!
//! Tidewatch's model registry: registered models, their numbered versions
//! (with the `source` and `run_id` that produced them), tags, and aliases
//! (`champion`, `challenger`, …) that the serving gateway routes by. It
//! speaks the registry half of MLflow's REST API, so the `mlflow` client,
//! CI jobs and scripts written for MLflow work against Tidewatch unchanged,
//! and every change becomes a CloudEvent for the bus.
//!
//! ```text
//!  mlflow client / curl
//!        │  /api/2.0/mlflow/registered-models/*, model-versions/*
//!   api.rs ── MLflow's JSON in and out, its error shape and codes
//!        │
//!   store.rs: SQLite, one transaction per change; the change and its
//!        │    events (events.rs) are written together (an outbox), so an
//!        │    event is never lost nor emitted for a change that failed
//!        ▼
//!   outbox ── drained by the caller onto the bus (at least once; each
//!             event has a stable id)
//! ```
//!
//! - [`names`]: what a model name, tag key or alias may be.
//! - [`filter`]: the `filter` strings of MLflow's search calls.
//! - [`entities`]: registered models and versions as MLflow writes them.
//! - [`bridge`]: an existing MLflow server's changes (webhooks or polling)
//!   turned into the same events.
//! - [`client`]: a client of MLflow-compatible registry APIs (the bridge's,
//!   the gateway's and the reference trainer's).
//!
//! Errors are one [`Error`] enum; each variant has MLflow's error code, its
//! HTTP status, and says whether a retry may succeed.

pub mod api;
pub mod bridge;
pub mod client;
pub mod config;
pub mod entities;
pub mod events;
pub mod filter;
pub mod names;
pub mod store;

pub use store::Registry;

/// What went wrong in a registry call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such model, version or alias (404 `RESOURCE_DOES_NOT_EXIST`; do
    /// not retry).
    #[error("{0}")]
    NotFound(String),
    /// The name is taken (400 `RESOURCE_ALREADY_EXISTS`; do not retry).
    #[error("{0}")]
    AlreadyExists(String),
    /// A parameter is missing or invalid (400 `INVALID_PARAMETER_VALUE`;
    /// do not retry as is).
    #[error("{0}")]
    InvalidParameter(String),
    /// The MLflow server the bridge follows failed or could not be reached
    /// (retry).
    #[error("MLflow: {0}")]
    Upstream(String),
    /// No such API call (404 `ENDPOINT_NOT_FOUND`; do not retry).
    #[error("{0}")]
    EndpointNotFound(String),
    /// The database failed (500 `INTERNAL_ERROR`; retry when it was busy).
    #[error("registry database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The blocking task running a call failed (500; a defect).
    #[error("registry task: {0}")]
    Task(String),
}

impl Error {
    /// MLflow's `error_code`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "RESOURCE_DOES_NOT_EXIST",
            Error::AlreadyExists(_) => "RESOURCE_ALREADY_EXISTS",
            Error::InvalidParameter(_) => "INVALID_PARAMETER_VALUE",
            Error::EndpointNotFound(_) => "ENDPOINT_NOT_FOUND",
            Error::Database(_) | Error::Task(_) => "INTERNAL_ERROR",
            Error::Upstream(_) => "TEMPORARILY_UNAVAILABLE",
        }
    }

    /// The HTTP status MLflow answers with for the code.
    pub fn status(&self) -> u16 {
        match self {
            Error::NotFound(_) | Error::EndpointNotFound(_) => 404,
            Error::AlreadyExists(_) | Error::InvalidParameter(_) => 400,
            Error::Database(_) | Error::Task(_) => 500,
            Error::Upstream(_) => 503,
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Upstream(_) => true,
            Error::Database(rusqlite::Error::SqliteFailure(failure, _)) => matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }
}

/// Shorthand for the registry's results.
pub type Result<T> = std::result::Result<T, Error>;
