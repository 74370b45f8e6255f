//! A client of MLflow-compatible registry APIs (MLflow's, Tidewatch's):
//! JSON over HTTP under `/api/2.0/mlflow/`, with an optional bearer token
//! (what the `mlflow` client sends from `MLFLOW_TRACKING_TOKEN`). Used by
//! the bridge (polling MLflow), the gateway (reading aliases and versions)
//! and the reference trainer (registering versions).
//!
//! Every call answers the status and the JSON body whatever the status
//! (an error answer is `{"error_code", "message"}`); the `*_ok` forms turn
//! a non-2xx status into [`Error::Upstream`]. Calls time out after
//! [`CALL_TIMEOUT`]; answers are read up to [`MAX_ANSWER_BYTES`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::{Error, Result};

/// Largest answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Longest a call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of the registry API at one URL (`http://host:port`).
#[derive(Clone)]
pub struct MlflowClient {
    http: Client<HttpConnector, Full<Bytes>>,
    url: String,
    token: Option<String>,
}

impl std::fmt::Debug for MlflowClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowClient")
            .field("url", &self.url)
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl MlflowClient {
    /// A client of the API at `url` (`http://host:port`, no trailing slash).
    pub fn new(url: &str) -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            url: url.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// The same, sending `Authorization: Bearer {token}`.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// A client of the registry at `url` (`http://host:port`, no path)
    /// sending the token held by the environment variable `token_env`, for
    /// components configured with both. `Err((setting, why))` names the
    /// setting at fault: `registry_url` or `token_env`.
    pub fn from_settings(
        url: &str,
        token_env: Option<&str>,
    ) -> std::result::Result<Self, (&'static str, String)> {
        let url = url.trim_end_matches('/');
        let rest = url.strip_prefix("http://").unwrap_or_default();
        if rest.is_empty() || rest.contains('/') {
            return Err(("registry_url", format!("`{url}` must be http://host:port")));
        }
        let token = match token_env {
            Some(name) => Some(std::env::var(name).map_err(|_| {
                (
                    "token_env",
                    format!("the environment variable `{name}` is not set"),
                )
            })?),
            None => None,
        };
        Ok(Self::new(url).with_token(token))
    }

    /// The API's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The aliases of registered model `model` as (alias, version); `None`
    /// when the registry does not have the model.
    pub async fn aliases(&self, model: &str) -> Result<Option<Vec<(String, String)>>> {
        let (status, answer) = self
            .get("registered-models/get", &[("name", model)])
            .await?;
        if status == 404 && answer["error_code"] == "RESOURCE_DOES_NOT_EXIST" {
            return Ok(None);
        }
        let answer = self.ok("registered-models/get", status, answer)?;
        Ok(Some(
            answer["registered_model"]["aliases"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|alias| {
                    Some((
                        alias["alias"].as_str()?.to_owned(),
                        alias["version"].as_str()?.to_owned(),
                    ))
                })
                .collect(),
        ))
    }

    /// GETs `path` with `query`.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<(u16, Value)> {
        let query = {
            let mut encoded = form_urlencoded::Serializer::new(String::new());
            for (key, value) in query {
                encoded.append_pair(key, value);
            }
            encoded.finish()
        };
        self.call(Method::GET, &format!("{path}?{query}"), None)
            .await
    }

    /// POSTs `body` (JSON) to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// DELETEs `path` with `body` (JSON), as MLflow's client does.
    pub async fn delete(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.call(Method::DELETE, path, Some(body)).await
    }

    /// [`MlflowClient::get`], a non-2xx status being an error.
    pub async fn get_ok(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let (status, answer) = self.get(path, query).await?;
        self.ok(path, status, answer)
    }

    /// [`MlflowClient::post`], a non-2xx status being an error.
    pub async fn post_ok(&self, path: &str, body: &Value) -> Result<Value> {
        let (status, answer) = self.post(path, body).await?;
        self.ok(path, status, answer)
    }

    fn ok(&self, path: &str, status: u16, answer: Value) -> Result<Value> {
        if (200..300).contains(&status) {
            Ok(answer)
        } else {
            Err(Error::Upstream(format!(
                "{}/api/2.0/mlflow/{path}: {status}: {answer}",
                self.url
            )))
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let uri = format!("{}/api/2.0/mlflow/{path}", self.url);
        let exchange = async {
            let mut request = hyper::Request::builder()
                .method(method)
                .uri(&uri)
                .header("accept", "application/json");
            if let Some(token) = &self.token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let body = match body {
                Some(body) => {
                    request = request.header("content-type", "application/json");
                    Full::new(Bytes::from(body.to_string()))
                }
                None => Full::new(Bytes::new()),
            };
            let request = request
                .body(body)
                .map_err(|e| Error::InvalidParameter(format!("{uri}: {e}")))?;
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| Error::Upstream(format!("{uri}: {e}")))?;
            let status = response.status().as_u16();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| Error::Upstream(format!("{uri}: reading the answer: {e}")))?
                .to_bytes();
            let answer = serde_json::from_slice(&body).map_err(|e| {
                Error::Upstream(format!(
                    "{uri}: {status}, not JSON ({e}): {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ))
            })?;
            Ok((status, answer))
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| Error::Upstream(format!("{uri}: no answer within {CALL_TIMEOUT:?}")))?
    }
}
