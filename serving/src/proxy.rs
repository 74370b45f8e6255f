//! Forwarding to an upstream Open Inference Protocol server (MLServer,
//! Triton, KServe) by URL.
//!
//! Each upstream has a bound on requests in flight: a request waits for a
//! slot at most the request timeout, then fails as overloaded (503) without
//! being sent. A request sent and not answered within the timeout fails as
//! timed out (504); the upstream's own errors come back with its message
//! (502). Plain HTTP/1.1 with keep-alive (an upstream on the same host or
//! cluster network); no TLS.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use crate::protocol::{InferRequest, InferResponse, RequestedOutput};
use crate::Error;

/// Largest upstream answer read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// One upstream model.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// `http://host:port`, no trailing slash.
    base_url: String,
    /// The model's name upstream.
    model: String,
    /// The version asked for upstream (its default when `None`).
    version: Option<String>,
    /// Outputs asked for when the client asks for none (MLServer's
    /// scikit-learn runtime answers only `predict` unless asked for
    /// `predict_proba`).
    request_outputs: Vec<String>,
    timeout: Duration,
    max_in_flight: usize,
    in_flight: Arc<Semaphore>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Proxy {
    /// An upstream at `base_url` serving `model` (and `version`).
    pub fn new(
        base_url: &str,
        model: String,
        version: Option<String>,
        request_outputs: Vec<String>,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Result<Self, String> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let uri: hyper::Uri = base_url
            .parse()
            .map_err(|e| format!("`{base_url}` is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!("`{base_url}`: an http:// URL with a host expected"));
        }
        if max_in_flight == 0 {
            return Err("at least one request in flight must be allowed".into());
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        Ok(Self {
            base_url,
            model,
            version,
            request_outputs,
            timeout,
            max_in_flight,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(max_in_flight)
                .build(connector),
        })
    }

    /// The upstream, for metadata.
    pub fn describe(&self) -> String {
        format!("{}/v2/models/{}", self.base_url, self.model)
    }

    fn model_path(&self) -> String {
        match &self.version {
            Some(version) => format!(
                "{}/v2/models/{}/versions/{version}",
                self.base_url, self.model
            ),
            None => format!("{}/v2/models/{}", self.base_url, self.model),
        }
    }

    /// Sends `request` upstream.
    pub async fn infer(&self, request: &InferRequest) -> Result<InferResponse, Error> {
        let body = if request.outputs.is_none() && !self.request_outputs.is_empty() {
            let mut asking = request.clone();
            asking.outputs = Some(
                self.request_outputs
                    .iter()
                    .map(|name| RequestedOutput {
                        name: name.clone(),
                        parameters: None,
                    })
                    .collect(),
            );
            serde_json::to_vec(&asking)
        } else {
            serde_json::to_vec(request)
        }
        .map_err(|e| Error::Internal(e.to_string()))?;
        let (status, bytes) = self
            .call(
                hyper::Method::POST,
                format!("{}/infer", self.model_path()),
                body,
            )
            .await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(500).collect());
            return Err(Error::Upstream {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Upstream {
            status: status.as_u16(),
            message: format!("not an inference response: {e}"),
        })
    }

    /// Whether the upstream says the model is ready.
    pub async fn ready(&self) -> bool {
        matches!(
            self.call(hyper::Method::GET, format!("{}/ready", self.model_path()), Vec::new())
                .await,
            Ok((status, _)) if status.is_success()
        )
    }

    async fn call(
        &self,
        method: hyper::Method,
        url: String,
        body: Vec<u8>,
    ) -> Result<(hyper::StatusCode, Bytes), Error> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let _slot = tokio::time::timeout_at(deadline, self.in_flight.acquire())
            .await
            .map_err(|_| {
                Error::Overloaded(format!(
                    "{} requests already in flight upstream",
                    self.max_in_flight
                ))
            })?
            .map_err(|_| Error::Internal("the upstream's slots were closed".into()))?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::Internal(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| Error::Unreachable(format!("{url}: {e}")))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| Error::Unreachable(format!("{url}: reading the answer: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
    }
}
