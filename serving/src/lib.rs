//! # serving — Tidewatch's model gateway
//!
//! Serves or fronts models through the Open Inference Protocol (KServe V2
//! REST) and logs every answer onto the bus as a `tidewatch.prediction.v1`
//! event, with the version that answered and the request id, so that the
//! monitor can compare versions on the same traffic and labels.
//!
//! ```text
//!  POST /v2/models/{m}/infer
//!        │
//!   gateway.rs ── routes.rs: champion answers; challenger as canary (sticky
//!        │        share by request id) or in shadow (after the answer)
//!        │
//!   features.rs: inputs → named features (one tensor per feature, or one
//!        │        2-D tensor of columns)
//!        │
//!   model.rs: the version's runtime ─┬─ linear.rs  tidewatch.linear.v1, in process
//!        │                           ├─ onnx.rs    an ONNX model, in process (tract)
//!        │                           └─ proxy.rs   an upstream OIP server (MLServer…)
//!        │
//!   outputs.rs: outputs → score / class / probabilities per row
//!        │
//!   log.rs: one event per row → bounded buffer → Kafka (drops counted)
//! ```
//!
//! - [`kserve`]: KServe's payload logger (CloudEvents over HTTP) joined
//!   into prediction events, for models KServe serves.
//! - [`seldon`]: Seldon Core 2's Kafka topics (protobuf requests and
//!   responses) joined into prediction events.
//! - [`protocol`]: the protocol's messages.
//! - [`config`]: `[serving]`, validated into a [`routes::RouteTable`] and
//!   log settings.
//! - [`load`]: model files into in-process runtimes, for configured
//!   versions and for versions the registry names by their `source`.
//! - [`follow`]: routes that follow the registry's aliases, loading the
//!   versions it names.
//! - [`telemetry`]: `tidewatch_serving_*` Prometheus metrics.
//!
//! Errors are one [`Error`] enum; each variant gives the HTTP status the
//! gateway answers and whether a client may retry.

pub mod config;
pub mod features;
pub mod follow;
pub mod gateway;
pub mod kserve;
pub mod linear;
pub mod load;
pub mod log;
pub mod model;
pub mod onnx;
pub mod outputs;
pub mod pairing;
pub mod protocol;
pub mod proxy;
pub mod routes;
pub mod seldon;
pub mod telemetry;

/// What went wrong serving a request or building the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request does not fit the model (400; do not retry as is).
    #[error("{0}")]
    BadRequest(String),
    /// No such model or version (404).
    #[error("{0}")]
    NotFound(String),
    /// The upstream server answered an error (502; retry only if its
    /// status is 5xx).
    #[error("upstream answered {status}: {message}")]
    Upstream { status: u16, message: String },
    /// The upstream could not be reached (502; retry).
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// No answer within the timeout (504; retry).
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// Too many requests in flight (503; retry later).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A setting is invalid (at startup, or a route change refused).
    #[error("{0}")]
    InvalidSetting(String),
    /// A defect (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status the gateway answers with.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) | Error::InvalidSetting(_) => 400,
            Error::NotFound(_) => 404,
            Error::Upstream { status, .. } if (400..500).contains(status) => 400,
            Error::Upstream { .. } | Error::Unreachable(_) => 502,
            Error::Overloaded(_) => 503,
            Error::Timeout(_) => 504,
            Error::Internal(_) => 500,
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Upstream { status, .. } => *status >= 500,
            Error::Unreachable(_) | Error::Timeout(_) | Error::Overloaded(_) => true,
            Error::BadRequest(_)
            | Error::NotFound(_)
            | Error::InvalidSetting(_)
            | Error::Internal(_) => false,
        }
    }

    /// The `kind` label of `tidewatch_serving_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::NotFound(_) => "not_found",
            Error::Upstream { .. } => "upstream",
            Error::Unreachable(_) => "unreachable",
            Error::Timeout(_) => "timeout",
            Error::Overloaded(_) => "overloaded",
            Error::InvalidSetting(_) => "invalid_setting",
            Error::Internal(_) => "internal",
        }
    }
}
