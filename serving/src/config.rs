//! `[serving]`: the gateway's settings, validated once into a
//! [`ServingSettings`] whose route table holds loaded models.
//!
//! ```toml
//! [serving]
//! listen = "127.0.0.1:8090"
//! request_timeout = "5s"
//!
//! [serving.log]
//! topic = "predictions"          # default: the first prediction topic of [kafka]
//! buffer = 100000                # events; beyond it they are dropped and counted
//!
//! [[serving.models]]
//! name = "churn"                 # the [[models]] entry it logs for
//! input = "columns"              # or "per_feature"
//! champion = "7"
//! challenger = "8"
//! challenger_mode = "shadow"     # or "canary" with canary_share = 0.1
//! versions = [
//!   { version = "6", runtime = "onnx", path = "models/churn-6.onnx" },
//!   { version = "7", runtime = "linear", path = "models/churn-7.json" },
//!   { version = "8", runtime = "proxy", url = "http://127.0.0.1:8080", upstream_model = "churn" },
//! ]
//!
//! [serving.registry]             # optional: routes follow the registry's aliases
//! url = "http://127.0.0.1:8080"  # Tidewatch's HTTP API serving the registry
//! topic = "tidewatch.registry"   # its events
//! route_topic = "tidewatch.serving"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use detectors::spec::Task;
use serde::Deserialize;

use crate::features::InputLayout;
use crate::load::{FileRuntime, LoadContext, LoadError};
use crate::model::{Runtime, ServedModel, ServedVersion};
use crate::outputs::OutputMapping;
use crate::proxy::Proxy;
use crate::routes::{Aliases, ChallengerMode, RouteTable};

/// A setting that is not valid: its key within `[serving]` and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSetting {
    /// The key within `[serving]` (`models[0].versions[1].url`).
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        key: key.into(),
        message: message.into(),
    }
}

/// `[serving]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServing {
    /// Address the gateway listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Longest a request may take end to end (upstream calls included), and
    /// the longest a client may take to send its headers.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connections served at once; more are closed as they arrive.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request body accepted.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Shadow calls in flight at once; a request finding none free skips its
    /// shadow call (counted in `tidewatch_serving_shadow_skipped_total`).
    #[serde(default = "default_max_shadow_in_flight")]
    pub max_shadow_in_flight: usize,
    /// The inference log.
    #[serde(default)]
    pub log: RawLog,
    /// The models served.
    #[serde(default)]
    pub models: Vec<RawServedModel>,
    /// KServe's payload logger, read at an endpoint of the gateway.
    #[serde(default)]
    pub kserve: Option<RawKserve>,
    /// Seldon Core 2's topics, read from the broker of `[kafka]`.
    #[serde(default)]
    pub seldon: Option<RawSeldon>,
    /// The registry whose aliases the routes follow.
    #[serde(default)]
    pub registry: Option<RawFollowRegistry>,
}

/// `[serving.seldon]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSeldon {
    /// The Seldon namespace (in the topic names).
    pub namespace: String,
    /// Consumer group of the adapter.
    #[serde(default = "default_seldon_group")]
    pub group_id: String,
    /// Halves waiting for the other; beyond it the oldest is dropped.
    #[serde(default = "default_kserve_max_pending")]
    pub max_pending: usize,
    /// How long a half waits before it is dropped.
    #[serde(default = "default_kserve_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// How often offsets are committed.
    #[serde(default = "default_seldon_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// The Seldon models read.
    pub models: Vec<RawSeldonModel>,
}

fn default_seldon_group() -> String {
    "tidewatch-seldon".into()
}
fn default_seldon_commit_interval() -> Duration {
    Duration::from_secs(5)
}

/// `[[serving.seldon.models]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSeldonModel {
    /// The model's name in Seldon.
    pub seldon_model: String,
    /// The `[[models]]` entry its predictions are logged for (default: the
    /// same name).
    #[serde(default)]
    pub model: Option<String>,
    /// How requests carry the features.
    #[serde(default)]
    pub input: RawInput,
    /// `columns`: the input tensor's name.
    #[serde(default)]
    pub input_tensor: Option<String>,
    /// The output with class probabilities.
    #[serde(default)]
    pub probabilities_output: Option<String>,
    /// The output with labels or values.
    #[serde(default)]
    pub label_output: Option<String>,
    /// Class names in probability-column order.
    #[serde(default)]
    pub classes: Vec<String>,
    /// The version when a response names none.
    #[serde(default)]
    pub version: Option<String>,
}

/// Validated `[serving.seldon]`.
#[derive(Debug, Clone)]
pub struct SeldonSettings {
    /// The Seldon namespace.
    pub namespace: String,
    /// Consumer group.
    pub group_id: String,
    /// Halves waiting at most.
    pub max_pending: usize,
    /// How long a half waits.
    pub max_wait: Duration,
    /// How often offsets are committed.
    pub commit_interval: Duration,
    /// The models read.
    pub models: Vec<crate::seldon::SeldonModel>,
}

/// `[serving.kserve]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKserve {
    /// Where the logger posts (the InferenceService's `logger.url` path).
    #[serde(default = "default_kserve_path")]
    pub path: String,
    /// Halves of exchanges waiting for the other; beyond it the oldest is
    /// dropped and counted.
    #[serde(default = "default_kserve_max_pending")]
    pub max_pending: usize,
    /// How long a half waits for the other before it is dropped and counted.
    #[serde(default = "default_kserve_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// The InferenceServices read.
    pub services: Vec<RawKserveService>,
}

fn default_kserve_path() -> String {
    "/kserve/events".into()
}
fn default_kserve_max_pending() -> usize {
    10_000
}
fn default_kserve_max_wait() -> Duration {
    Duration::from_secs(60)
}

/// `[[serving.kserve.services]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKserveService {
    /// `ce-inferenceservicename` of its events.
    pub inference_service: String,
    /// Only events of this namespace (`ce-namespace`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The `[[models]]` entry its predictions are logged for.
    pub model: String,
    /// How V2 requests carry the features.
    #[serde(default)]
    pub input: RawInput,
    /// `columns`: the input tensor's name.
    #[serde(default)]
    pub input_tensor: Option<String>,
    /// The output with class probabilities.
    #[serde(default)]
    pub probabilities_output: Option<String>,
    /// The output with labels or values.
    #[serde(default)]
    pub label_output: Option<String>,
    /// Class names in probability-column order.
    #[serde(default)]
    pub classes: Vec<String>,
    /// `ce-endpoint` (`default`, `canary`) → version; without one, the
    /// response's `model_version`.
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
}

/// Validated `[serving.kserve]`.
#[derive(Debug, Clone)]
pub struct KserveSettings {
    /// The endpoint's path.
    pub path: String,
    /// Halves waiting at most.
    pub max_pending: usize,
    /// How long a half waits.
    pub max_wait: Duration,
    /// The services read.
    pub services: Vec<crate::kserve::KserveService>,
}

fn default_listen() -> String {
    "127.0.0.1:8090".into()
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_body_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_max_shadow_in_flight() -> usize {
    256
}

/// `[serving.log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// The predictions topic (default: the first prediction topic read by
    /// `[kafka]`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Events buffered for the broker (the channel; librdkafka's queue holds
    /// as many again). Beyond it, events are dropped and counted.
    #[serde(default = "default_log_buffer")]
    pub buffer: usize,
    /// How long librdkafka retries an event before dropping it.
    #[serde(default = "default_message_timeout", with = "humantime_serde")]
    pub message_timeout: Duration,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            topic: None,
            buffer: default_log_buffer(),
            message_timeout: default_message_timeout(),
        }
    }
}

fn default_log_buffer() -> usize {
    100_000
}
fn default_message_timeout() -> Duration {
    Duration::from_secs(30)
}

/// How a model's requests carry its features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawInput {
    /// One 2-D tensor, the features as columns in order.
    #[default]
    Columns,
    /// One tensor per feature, named like it.
    PerFeature,
}

/// How a challenger takes part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawChallengerMode {
    /// Called beside the champion, answer logged only.
    #[default]
    Shadow,
    /// Answers `canary_share` of requests.
    Canary,
}

/// `[[serving.models]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServedModel {
    /// The model's name: the `[[models]]` entry whose features it logs.
    pub name: String,
    /// Input layout.
    #[serde(default)]
    pub input: RawInput,
    /// `columns`: the input tensor's name (any single input when absent).
    #[serde(default)]
    pub input_tensor: Option<String>,
    /// Proxied and ONNX versions: the output with class probabilities
    /// `[N, C]` (recognised by shape when absent; `tidewatch.linear.v1`
    /// versions name their own outputs).
    #[serde(default)]
    pub probabilities_output: Option<String>,
    /// Proxied and ONNX versions: the output with labels (classification)
    /// or values (regression).
    #[serde(default)]
    pub label_output: Option<String>,
    /// Class names in probability-column order (ONNX classifiers: default
    /// their own class labels).
    #[serde(default)]
    pub classes: Vec<String>,
    /// The version that answers.
    pub champion: String,
    /// A version tried beside it.
    #[serde(default)]
    pub challenger: Option<String>,
    /// How the challenger takes part.
    #[serde(default)]
    pub challenger_mode: RawChallengerMode,
    /// `canary`: the share of requests it answers, in (0, 1].
    #[serde(default)]
    pub canary_share: Option<f64>,
    /// The versions and their runtimes.
    pub versions: Vec<RawVersion>,
}

/// One version and its runtime.
#[derive(Debug, Deserialize)]
#[serde(tag = "runtime", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawVersion {
    /// A `tidewatch.linear.v1` file, in process.
    Linear {
        version: String,
        /// Relative to the config file.
        path: PathBuf,
    },
    /// An ONNX file, in process (tract).
    Onnx {
        version: String,
        /// Relative to the config file.
        path: PathBuf,
        /// The features its input columns hold, in order (default: the
        /// model's features in configured order).
        #[serde(default)]
        features: Option<Vec<String>>,
    },
    /// An upstream Open Inference Protocol server.
    Proxy {
        version: String,
        /// `http://host:port`.
        url: String,
        /// The model's name upstream (default: the model's name).
        #[serde(default)]
        upstream_model: Option<String>,
        /// The version asked for upstream (default: the upstream's choice).
        #[serde(default)]
        upstream_version: Option<String>,
        /// Outputs asked for upstream when the client asks for none
        /// (e.g. `["predict_proba", "predict"]` for MLServer's scikit-learn
        /// runtime, which answers only `predict` otherwise).
        #[serde(default)]
        request_outputs: Vec<String>,
        /// Requests in flight upstream at once.
        #[serde(default = "default_upstream_in_flight")]
        max_in_flight: usize,
    },
}

/// Reads the model file `path` (relative to `base`) of version `key`.
fn read_model(base: &Path, path: &Path, key: &str) -> Result<(PathBuf, Vec<u8>), InvalidSetting> {
    let path = base.join(path);
    let bytes = std::fs::read(&path)
        .map_err(|e| invalid(format!("{key}.path"), format!("{}: {e}", path.display())))?;
    Ok((path, bytes))
}

fn default_upstream_in_flight() -> usize {
    64
}

/// What the gateway needs to know of a monitored model.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitoredModel {
    /// Its configured features, in order.
    pub features: Vec<String>,
    /// Classification or regression.
    pub task: Task,
}

/// Validated `[serving.log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    topic: String,
    buffer: usize,
    message_timeout: Duration,
}

impl LogSettings {
    /// The predictions topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Events buffered (channel; librdkafka holds as many again).
    pub fn buffer(&self) -> usize {
        self.buffer
    }

    /// How long librdkafka retries an event.
    pub fn message_timeout(&self) -> Duration {
        self.message_timeout
    }
}

/// Validated `[serving]`, models loaded.
#[derive(Clone)]
pub struct ServingSettings {
    listen: SocketAddr,
    request_timeout: Duration,
    max_connections: usize,
    max_body_bytes: usize,
    max_shadow_in_flight: usize,
    log: LogSettings,
    routes: Arc<RouteTable>,
    kserve: Option<KserveSettings>,
    seldon: Option<SeldonSettings>,
    registry: Option<FollowRegistry>,
}

impl std::fmt::Debug for ServingSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingSettings")
            .field("listen", &self.listen)
            .field(
                "models",
                &self
                    .routes
                    .models()
                    .iter()
                    .map(|m| m.name.clone())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ServingSettings {
    /// Where the gateway listens.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
    /// End-to-end request bound.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
    /// Connections served at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
    /// Largest request body.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
    /// Shadow calls in flight at once.
    pub fn max_shadow_in_flight(&self) -> usize {
        self.max_shadow_in_flight
    }
    /// The inference log.
    pub fn log(&self) -> &LogSettings {
        &self.log
    }
    /// The served models and their aliases.
    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
    }
    /// The KServe adapter, if configured.
    pub fn kserve(&self) -> Option<&KserveSettings> {
        self.kserve.as_ref()
    }
    /// The Seldon adapter, if configured.
    pub fn seldon(&self) -> Option<&SeldonSettings> {
        self.seldon.as_ref()
    }
    /// The registry the routes follow, if configured.
    pub fn registry(&self) -> Option<&FollowRegistry> {
        self.registry.as_ref()
    }
}

/// `[serving.registry]`: the routes follow the registry's aliases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFollowRegistry {
    /// Where Tidewatch's HTTP API serves the registry (`http://host:port`):
    /// the aliases are read there at start.
    pub url: String,
    /// The registry's events (`[registry] topic` of the instance serving
    /// it).
    #[serde(default = "default_registry_topic")]
    pub topic: String,
    /// Where route changes are published as
    /// `io.tidewatch.serving.route.updated`.
    #[serde(default = "default_route_topic")]
    pub route_topic: String,
}

fn default_registry_topic() -> String {
    "tidewatch.registry".into()
}

fn default_route_topic() -> String {
    "tidewatch.serving".into()
}

/// Validated `[serving.registry]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowRegistry {
    url: String,
    topic: String,
    route_topic: String,
}

impl FollowRegistry {
    /// The registry API's base URL (no trailing `/`).
    pub fn url(&self) -> &str {
        &self.url
    }
    /// The registry's event topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// Where route changes go.
    pub fn route_topic(&self) -> &str {
        &self.route_topic
    }
}

impl RawFollowRegistry {
    fn validate(self) -> Result<FollowRegistry, InvalidSetting> {
        let url = self.url.trim_end_matches('/').to_owned();
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            invalid(
                "registry.url",
                format!("`{}` is not an http:// URL", self.url),
            )
        })?;
        if rest.is_empty() || rest.contains('/') {
            return Err(invalid(
                "registry.url",
                format!("`{}` must be http://host:port, without a path", self.url),
            ));
        }
        for (key, topic) in [
            ("registry.topic", &self.topic),
            ("registry.route_topic", &self.route_topic),
        ] {
            if topic.trim().is_empty() {
                return Err(invalid(key, "must name a topic"));
            }
        }
        Ok(FollowRegistry {
            url,
            topic: self.topic,
            route_topic: self.route_topic,
        })
    }
}

impl RawServing {
    /// Validates the section and loads the models: `monitored` gives the
    /// features and task of each `[[models]]` entry, `default_topic` the
    /// predictions topic when `[serving.log]` names none, `base` the folder
    /// model paths are relative to.
    pub fn validate(
        self,
        monitored: &BTreeMap<String, MonitoredModel>,
        default_topic: Option<&str>,
        base: &Path,
    ) -> Result<ServingSettings, InvalidSetting> {
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            invalid(
                "listen",
                format!("`{}` is not an address:port: {e}", self.listen),
            )
        })?;
        if self.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be positive"));
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            ("max_body_bytes", self.max_body_bytes),
            ("max_shadow_in_flight", self.max_shadow_in_flight),
            ("log.buffer", self.log.buffer),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.log.message_timeout.is_zero() {
            return Err(invalid("log.message_timeout", "must be positive"));
        }
        let topic = self
            .log
            .topic
            .or_else(|| default_topic.map(str::to_owned))
            .ok_or_else(|| {
                invalid(
                    "log.topic",
                    "no topic given and [kafka] reads no prediction topic",
                )
            })?;
        if topic.trim().is_empty() {
            return Err(invalid("log.topic", "must not be empty"));
        }
        if self.models.is_empty() && self.kserve.is_none() && self.seldon.is_none() {
            return Err(invalid(
                "models",
                "must list at least one model (or configure [serving.kserve] or [serving.seldon])",
            ));
        }
        let seldon = self.seldon.map(|raw| raw.validate(monitored)).transpose()?;
        let kserve = self.kserve.map(|raw| raw.validate(monitored)).transpose()?;
        let mut served = Vec::with_capacity(self.models.len());
        let mut policies = Vec::with_capacity(self.models.len());
        for (index, model) in self.models.into_iter().enumerate() {
            let (model, aliases, policy, context) = model.validate(
                &format!("models[{index}]"),
                monitored,
                self.request_timeout,
                base,
            )?;
            policies.push((model.name.clone(), policy, context));
            served.push((model, aliases));
        }
        let routes = RouteTable::new(served).map_err(|e| invalid("models", e.to_string()))?;
        for (model, policy, context) in policies {
            routes
                .set_challenger_policy(&model, policy)
                .and_then(|()| routes.set_loader(&model, context))
                .map_err(|e| invalid("models", e.to_string()))?;
        }
        let registry = self.registry.map(|raw| raw.validate()).transpose()?;
        if registry.is_some() && routes.models().is_empty() {
            return Err(invalid(
                "registry",
                "routes follow the registry only for [[serving.models]]; none is configured",
            ));
        }
        Ok(ServingSettings {
            listen,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections,
            max_body_bytes: self.max_body_bytes,
            max_shadow_in_flight: self.max_shadow_in_flight,
            log: LogSettings {
                topic,
                buffer: self.log.buffer,
                message_timeout: self.log.message_timeout,
            },
            routes: Arc::new(routes),
            kserve,
            seldon,
            registry,
        })
    }
}

/// A model's input layout from its raw settings.
fn layout(
    at: &str,
    input: RawInput,
    tensor: Option<String>,
) -> Result<InputLayout, InvalidSetting> {
    match input {
        RawInput::Columns => Ok(InputLayout::Columns { tensor }),
        RawInput::PerFeature if tensor.is_some() => Err(invalid(
            format!("{at}.input_tensor"),
            "only with input = \"columns\"",
        )),
        RawInput::PerFeature => Ok(InputLayout::PerFeature),
    }
}

impl RawKserve {
    fn validate(
        self,
        monitored: &BTreeMap<String, MonitoredModel>,
    ) -> Result<KserveSettings, InvalidSetting> {
        if !self.path.starts_with('/') || self.path.starts_with("/v2/") || self.path == "/metrics" {
            return Err(invalid(
                "kserve.path",
                "an absolute path outside /v2/ and /metrics expected",
            ));
        }
        if self.max_pending == 0 {
            return Err(invalid("kserve.max_pending", "must be at least 1"));
        }
        if self.max_wait.is_zero() {
            return Err(invalid("kserve.max_wait", "must be positive"));
        }
        if self.services.is_empty() {
            return Err(invalid("kserve.services", "must list at least one service"));
        }
        let mut services = Vec::with_capacity(self.services.len());
        for (index, raw) in self.services.into_iter().enumerate() {
            let at = format!("kserve.services[{index}]");
            let spec = monitored.get(&raw.model).ok_or_else(|| {
                invalid(
                    format!("{at}.model"),
                    format!("`{}` is not a [[models]] entry", raw.model),
                )
            })?;
            if raw.inference_service.trim().is_empty() {
                return Err(invalid(
                    format!("{at}.inference_service"),
                    "must not be empty",
                ));
            }
            services.push(crate::kserve::KserveService {
                layout: layout(&at, raw.input, raw.input_tensor)?,
                inference_service: raw.inference_service,
                namespace: raw.namespace,
                features: spec.features.clone(),
                outputs: OutputMapping {
                    task: spec.task,
                    probabilities: raw.probabilities_output,
                    label: raw.label_output,
                    classes: raw.classes,
                },
                versions: raw.versions,
                model: raw.model,
            });
        }
        Ok(KserveSettings {
            path: self.path,
            max_pending: self.max_pending,
            max_wait: self.max_wait,
            services,
        })
    }
}

impl RawSeldon {
    fn validate(
        self,
        monitored: &BTreeMap<String, MonitoredModel>,
    ) -> Result<SeldonSettings, InvalidSetting> {
        if self.namespace.trim().is_empty() {
            return Err(invalid("seldon.namespace", "must not be empty"));
        }
        if self.group_id.trim().is_empty() {
            return Err(invalid("seldon.group_id", "must not be empty"));
        }
        if self.max_pending == 0 {
            return Err(invalid("seldon.max_pending", "must be at least 1"));
        }
        if self.max_wait.is_zero() || self.commit_interval.is_zero() {
            return Err(invalid(
                "seldon.max_wait",
                "max_wait and commit_interval must be positive",
            ));
        }
        if self.models.is_empty() {
            return Err(invalid("seldon.models", "must list at least one model"));
        }
        let mut models = Vec::with_capacity(self.models.len());
        for (index, raw) in self.models.into_iter().enumerate() {
            let at = format!("seldon.models[{index}]");
            let name = raw.model.unwrap_or_else(|| raw.seldon_model.clone());
            let spec = monitored.get(&name).ok_or_else(|| {
                invalid(
                    format!("{at}.model"),
                    format!("`{name}` is not a [[models]] entry"),
                )
            })?;
            models.push(crate::seldon::SeldonModel {
                layout: layout(&at, raw.input, raw.input_tensor)?,
                seldon_model: raw.seldon_model,
                features: spec.features.clone(),
                outputs: OutputMapping {
                    task: spec.task,
                    probabilities: raw.probabilities_output,
                    label: raw.label_output,
                    classes: raw.classes,
                },
                version: raw.version,
                model: name,
            });
        }
        Ok(SeldonSettings {
            namespace: self.namespace,
            group_id: self.group_id,
            max_pending: self.max_pending,
            max_wait: self.max_wait,
            commit_interval: self.commit_interval,
            models,
        })
    }
}

impl RawServedModel {
    fn validate(
        self,
        at: &str,
        monitored: &BTreeMap<String, MonitoredModel>,
        timeout: Duration,
        base: &Path,
    ) -> Result<(ServedModel, Aliases, ChallengerMode, LoadContext), InvalidSetting> {
        let spec = monitored.get(&self.name).ok_or_else(|| {
            invalid(
                format!("{at}.name"),
                format!(
                    "`{}` is not a [[models]] entry: its features and task come from there",
                    self.name
                ),
            )
        })?;
        let layout = layout(at, self.input, self.input_tensor)?;
        if spec.task == Task::Regression
            && (self.probabilities_output.is_some() || !self.classes.is_empty())
        {
            return Err(invalid(
                format!("{at}.probabilities_output"),
                "a regression model has no class probabilities or classes",
            ));
        }
        let context = LoadContext {
            model: self.name.clone(),
            features: spec.features.clone(),
            task: spec.task,
            probabilities_output: self.probabilities_output.clone(),
            label_output: self.label_output.clone(),
            classes: self.classes.clone(),
        };
        let mut versions = BTreeMap::new();
        for (index, version) in self.versions.into_iter().enumerate() {
            let key = format!("{at}.versions[{index}]");
            let (name, served) = match version {
                RawVersion::Linear { version, path } => {
                    let (path, bytes) = read_model(base, &path, &key)?;
                    let served = context
                        .load(FileRuntime::Linear, &bytes, None)
                        .map_err(|e| {
                            invalid(format!("{key}.path"), format!("{}: {e}", path.display()))
                        })?;
                    (version, served)
                }
                RawVersion::Onnx {
                    version,
                    path,
                    features,
                } => {
                    if let Some(missing) = features
                        .iter()
                        .flatten()
                        .find(|f| !spec.features.contains(f))
                    {
                        return Err(invalid(
                            format!("{key}.features"),
                            format!("`{missing}` is not a feature of `{}`", self.name),
                        ));
                    }
                    let (path, bytes) = read_model(base, &path, &key)?;
                    let served =
                        context
                            .load(FileRuntime::Onnx, &bytes, features)
                            .map_err(|e| {
                                let key = match e {
                                    LoadError::ClassCount { .. } => format!("{at}.classes"),
                                    LoadError::Model(_) => format!("{key}.path"),
                                };
                                invalid(key, format!("{}: {e}", path.display()))
                            })?;
                    (version, served)
                }
                RawVersion::Proxy {
                    version,
                    url,
                    upstream_model,
                    upstream_version,
                    request_outputs,
                    max_in_flight,
                } => {
                    let proxy = Proxy::new(
                        &url,
                        upstream_model.unwrap_or_else(|| self.name.clone()),
                        upstream_version,
                        request_outputs,
                        timeout,
                        max_in_flight,
                    )
                    .map_err(|e| invalid(format!("{key}.url"), e))?;
                    let runtime = Runtime::Proxy(proxy);
                    let outputs = context.outputs(&runtime);
                    (version, ServedVersion { runtime, outputs })
                }
            };
            if name.trim().is_empty() {
                return Err(invalid(format!("{key}.version"), "must not be empty"));
            }
            if versions.insert(name.clone(), Arc::new(served)).is_some() {
                return Err(invalid(
                    format!("{key}.version"),
                    format!("version `{name}` is listed twice"),
                ));
            }
        }
        // How a challenger takes part: the configured one, and one the
        // registry's `challenger` alias names later.
        let policy = match (self.challenger_mode, self.canary_share) {
            (RawChallengerMode::Shadow, None) => ChallengerMode::Shadow,
            (RawChallengerMode::Shadow, Some(_)) => {
                return Err(invalid(
                    format!("{at}.canary_share"),
                    "only with challenger_mode = \"canary\"",
                ))
            }
            (RawChallengerMode::Canary, None) => {
                return Err(invalid(
                    format!("{at}.canary_share"),
                    "a canary needs its share",
                ))
            }
            (RawChallengerMode::Canary, Some(share)) => {
                if !(share > 0.0 && share <= 1.0) {
                    return Err(invalid(format!("{at}.canary_share"), "must be in (0, 1]"));
                }
                ChallengerMode::Canary {
                    per_million: (share * 1_000_000.0).round() as u32,
                }
            }
        };
        let challenger = self.challenger.map(|version| (version, policy));
        let model = ServedModel {
            name: self.name,
            features: spec.features.clone(),
            layout,
            versions,
        };
        let aliases = Aliases {
            champion: self.champion,
            challenger,
        };
        Ok((model, aliases, policy, context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::LinearModel;

    fn monitored() -> BTreeMap<String, MonitoredModel> {
        let gw = |task| MonitoredModel {
            features: vec!["usage".into(), "tenure".into(), "tickets".into()],
            task,
        };
        BTreeMap::from([
            (
                "churn".to_owned(),
                MonitoredModel {
                    features: vec!["age".into(), "tenure".into()],
                    task: Task::Classification,
                },
            ),
            ("gw".to_owned(), gw(Task::Classification)),
            ("gw_value".to_owned(), gw(Task::Regression)),
        ])
    }

    fn validate(text: &str) -> Result<ServingSettings, InvalidSetting> {
        // One folder per call: the tests run in parallel.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let directory = std::env::temp_dir().join(format!(
            "tidewatch-serving-config-{}-{call}",
            std::process::id()
        ));
        std::fs::create_dir_all(&directory).unwrap();
        let model = LinearModel::classifier(
            vec!["age".into(), "tenure".into()],
            vec!["0".into(), "1".into()],
            vec![vec![0.1, 0.2]],
            vec![0.0],
        )
        .unwrap();
        std::fs::write(directory.join("m.json"), model.to_json()).unwrap();
        let raw: RawServing = toml::from_str(text).map_err(|e| invalid("toml", e.to_string()))?;
        raw.validate(&monitored(), Some("predictions"), &directory)
    }

    const VERSIONS: &str = r#"versions = [
        { version = "1", runtime = "linear", path = "m.json" },
        { version = "2", runtime = "proxy", url = "http://127.0.0.1:9" },
    ]"#;

    #[test]
    fn a_valid_section_loads_its_models() {
        let settings = validate(&format!(
            "[[models]]\nname = \"churn\"\nchampion = \"1\"\nchallenger = \"2\"\nchallenger_mode = \"canary\"\ncanary_share = 0.25\n{VERSIONS}"
        ))
        .unwrap();
        assert_eq!(settings.log().topic(), "predictions");
        assert_eq!(settings.listen().to_string(), "127.0.0.1:8090");
        let (model, aliases) = settings.routes().get("churn").unwrap();
        assert_eq!(model.versions.len(), 2);
        assert_eq!(
            aliases.challenger,
            Some((
                "2".into(),
                ChallengerMode::Canary {
                    per_million: 250_000
                }
            ))
        );
    }

    #[test]
    fn invalid_sections_name_the_key() {
        let key = |text: &str| validate(text).unwrap_err().key;
        assert_eq!(
            key(&format!(
                "[[models]]\nname = \"other\"\nchampion = \"1\"\n{VERSIONS}"
            )),
            "models[0].name"
        );
        assert_eq!(
            key(&format!(
                "[[models]]\nname = \"churn\"\nchampion = \"3\"\n{VERSIONS}"
            )),
            "models"
        );
        assert_eq!(
            key(&format!("[[models]]\nname = \"churn\"\nchampion = \"1\"\nchallenger = \"2\"\nchallenger_mode = \"canary\"\n{VERSIONS}")),
            "models[0].canary_share"
        );
        assert_eq!(
            key("[[models]]\nname = \"churn\"\nchampion = \"1\"\nversions = [{ version = \"1\", runtime = \"linear\", path = \"absent.json\" }]"),
            "models[0].versions[0].path"
        );
        assert_eq!(
            key("[[models]]\nname = \"churn\"\nchampion = \"1\"\nversions = [{ version = \"1\", runtime = \"proxy\", url = \"ftp://x\" }]"),
            "models[0].versions[0].url"
        );
        assert_eq!(
            key(&format!(
                "listen = \"nowhere\"\n[[models]]\nname = \"churn\"\nchampion = \"1\"\n{VERSIONS}"
            )),
            "listen"
        );
        assert_eq!(
            key("[[models]]\nname = \"churn\"\nchampion = \"1\"\nversions = [{ version = \"1\", runtime = \"linear\", path = \"m.json\", extra = 1 }]"),
            "toml"
        );
    }

    /// The committed ONNX models (fixtures/onnx), by absolute path.
    fn onnx(name: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../fixtures/onnx/{name}.onnx"))
            .display()
            .to_string()
    }

    #[test]
    fn onnx_versions_load_with_their_classes_and_mismatches_are_refused() {
        let section = |model: &str, extra: &str, file: &str, version_extra: &str| {
            format!(
                "[[models]]\nname = \"{model}\"\nchampion = \"1\"\n{extra}\nversions = [{{ version = \"1\", runtime = \"onnx\", path = \"{}\"{version_extra} }}]",
                onnx(file)
            )
        };
        let settings = validate(&section("gw", "", "gw-logistic", "")).unwrap();
        let (model, _) = settings.routes().get("gw").unwrap();
        let version = model.version("1").unwrap();
        assert_eq!(
            version.outputs.classes,
            ["no", "yes"],
            "the model's own classes"
        );
        assert_eq!(model.metadata("1").unwrap().platform, "onnx");
        // Configured class names replace the forest's 0 and 1.
        let settings = validate(&section(
            "gw",
            "classes = [\"no\", \"yes\"]",
            "gw-forest",
            "",
        ))
        .unwrap();
        let (model, _) = settings.routes().get("gw").unwrap();
        assert_eq!(model.version("1").unwrap().outputs.classes, ["no", "yes"]);
        assert!(validate(&section("gw_value", "", "gw-regression", "")).is_ok());

        let key = |text: String| validate(&text).unwrap_err();
        let error = key(section("gw_value", "", "gw-forest", ""));
        assert_eq!(error.key, "models[0].versions[0].path");
        assert!(error.to_string().contains("is a classifier"), "{error}");
        let error = key(section("gw", "", "gw-regression", ""));
        assert!(error.to_string().contains("is not a classifier"), "{error}");
        assert_eq!(
            key(section(
                "gw",
                "classes = [\"a\", \"b\", \"c\"]",
                "gw-forest",
                ""
            ))
            .key,
            "models[0].classes"
        );
        assert_eq!(
            key(section(
                "gw",
                "",
                "gw-forest",
                ", features = [\"usage\", \"age\", \"tickets\"]"
            ))
            .key,
            "models[0].versions[0].features"
        );
        let error = key(section(
            "gw",
            "",
            "gw-forest",
            ", features = [\"usage\", \"tenure\"]",
        ));
        assert_eq!(error.key, "models[0].versions[0].path");
        assert!(error.to_string().contains("takes 3 columns"), "{error}");
    }
}
