//! `tidewatch.toml`: the raw file format, and its validation into settings
//! that cannot be invalid.
//!
//! [`RawConfig`] mirrors the file (`deny_unknown_fields` everywhere, so a typo
//! is an error, not a silently ignored key). [`Config::load`] parses and
//! validates once; every error names the file and the key at fault.
//! See `fixtures/tidewatch.example.toml` for a documented example.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use detectors::metrics::{Correction, DriftThresholds};
use detectors::spec::{FeatureKind, FeatureSpec, ModelSpec, Task};
use detectors::window::WindowSize;
use events::EventKind;
use ingest::engine::EngineSettings;
use ingest::kafka::{KafkaSettings, LoopSettings, TopicSpec};
use serde::Deserialize;

/// The config format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// A config error, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type.
    #[error("{file}: {message}")]
    Parse {
        /// The config file.
        file: PathBuf,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// A key has a value that breaks a rule.
    #[error("{file}: `{key}`: {message}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Dotted path of the key.
        key: String,
        /// The rule broken.
        message: String,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Format version; must be 1.
    pub version: u32,
    /// Kafka source; optional for the demo and offline commands.
    #[serde(default)]
    pub kafka: Option<RawKafka>,
    /// Where results go.
    #[serde(default)]
    pub store: RawStore,
    /// Event-time windows.
    #[serde(default)]
    pub windows: RawWindows,
    /// Drift thresholds.
    #[serde(default)]
    pub drift: RawDrift,
    /// Reference profiles.
    #[serde(default)]
    pub reference: RawReference,
    /// Monitored models.
    pub models: Vec<RawModel>,
    /// Alert rules.
    #[serde(default)]
    pub alerts: RawAlerts,
    /// The HTTP server (API, pages, metrics); none without this section.
    #[serde(default)]
    pub http: Option<RawHttp>,
}

/// `[http]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address to listen on.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// Environment variable holding the bearer token of mutating endpoints
    /// (unset: writes are disabled).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Largest request body accepted (reference uploads), bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Connections served at once; more are closed as they arrive.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and at most between
    /// two parts of its body.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_max_connections() -> usize {
    256
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_http_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_max_body_bytes() -> usize {
    256 * 1024 * 1024
}

/// Validated `[http]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// Address to listen on.
    pub listen: std::net::SocketAddr,
    /// Bearer token of mutating endpoints.
    pub token: Option<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Header read timeout, and the longest pause inside a body.
    pub request_timeout: Duration,
}

/// `[alerts]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// `[[alerts.rules]]`; none configured means the default rules.
    #[serde(default)]
    pub rules: Vec<alerting::rules::RawRule>,
    /// `[[alerts.channels]]`.
    #[serde(default)]
    pub channels: Vec<RawChannel>,
    /// `[alerts.retrain]`: where retrain requests go.
    #[serde(default)]
    pub retrain: Option<RawRetrain>,
}

/// `[alerts.retrain]`: the retrain endpoint and/or bus topic, and the
/// debounce.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetrain {
    /// Endpoint POSTed the request's CloudEvent (http:// or https://).
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the signing secret for `url`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Extra CA certificate (PEM) to trust for `url`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Kafka topic the request's CloudEvent is published to (needs `[kafka]`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Kafka topic read for acknowledgements (needs `[kafka]`).
    #[serde(default)]
    pub ack_topic: Option<String>,
    /// How long a request blocks the next one for the same model version.
    #[serde(default = "default_retrain_debounce", with = "humantime_serde")]
    pub debounce: Duration,
}

fn default_retrain_debounce() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// `[[alerts.channels]]`: `type = "webhook"`, `"slack"` or `"email"`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawChannel {
    /// A generic webhook, signed with the secret from `secret_env`.
    Webhook {
        /// Name referenced by rules.
        name: String,
        /// Endpoint (http:// or https://).
        url: String,
        /// Environment variable holding the signing secret.
        #[serde(default)]
        secret_env: Option<String>,
        /// Extra CA certificate (PEM) to trust for `url`.
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// Name referenced by rules.
        name: String,
        /// Incoming-webhook URL.
        url: String,
        /// Dashboard link put in messages.
        #[serde(default)]
        dashboard_url: Option<String>,
    },
    /// Email over SMTP.
    Email {
        /// Name referenced by rules.
        name: String,
        /// SMTP server.
        smtp_host: String,
        /// SMTP port (default: 587 for starttls, 465 for tls, 25 for none).
        #[serde(default)]
        smtp_port: Option<u16>,
        /// `starttls` (default), `tls` or `none`.
        #[serde(default = "default_smtp_security")]
        security: String,
        /// Environment variable holding the SMTP user name.
        #[serde(default)]
        username_env: Option<String>,
        /// Environment variable holding the SMTP password.
        #[serde(default)]
        password_env: Option<String>,
        /// Extra CA certificate (PEM) to trust for the SMTP server.
        #[serde(default)]
        ca_file: Option<PathBuf>,
        /// Sender, e.g. `"Tidewatch <tidewatch@example.org>"`.
        from: String,
        /// Recipients.
        to: Vec<String>,
        /// Dashboard link put in messages.
        #[serde(default)]
        dashboard_url: Option<String>,
    },
}

fn default_smtp_security() -> String {
    "starttls".into()
}

/// Validated `[alerts.retrain]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrainSettings {
    /// Debounce, ms.
    pub debounce_ms: u64,
    /// The reserved retrain channels configured (endpoint and/or bus).
    pub channels: Vec<String>,
    /// Topic of acknowledgements, if any.
    pub ack_topic: Option<String>,
}

/// `[kafka]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// `bootstrap.servers`, e.g. `"127.0.0.1:9092"`.
    pub brokers: String,
    /// Consumer group id.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Topics to read.
    pub topics: Vec<RawTopic>,
    /// Where undecodable payloads go.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Payload bytes a dead letter keeps; the rest is cut (headers say so).
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: usize,
    /// Readiness turns false when the consumer has lag and has read nothing
    /// for this long.
    #[serde(default = "default_stall_after", with = "humantime_serde")]
    pub stall_after: Duration,
    /// Any librdkafka property (`security.protocol`, `sasl.*`…), passed through.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group_id() -> String {
    "tidewatch".into()
}

fn default_dead_letter_topic() -> String {
    "tidewatch.dead-letter".into()
}

fn default_dead_letter_max_bytes() -> usize {
    ingest::dead_letter::DEFAULT_MAX_PAYLOAD_BYTES
}

fn default_stall_after() -> Duration {
    Duration::from_secs(60)
}

fn default_store_retry_max_delay() -> Duration {
    Duration::from_secs(5)
}

/// `[[kafka.topics]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopic {
    /// Topic name.
    pub name: String,
    /// Kind of event for payloads without a `schema` field.
    pub kind: EventKind,
}

/// `[store]`: `type = "embedded"` (default) or `type = "clickhouse"`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawStore {
    /// SQLite file.
    Embedded(RawEmbedded),
    /// ClickHouse server.
    #[serde(rename = "clickhouse")]
    ClickHouse(RawClickHouse),
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore::Embedded(RawEmbedded {
            path: default_embedded_path(),
            retry_max_delay: default_store_retry_max_delay(),
        })
    }
}

/// `[store] type = "embedded"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmbedded {
    /// SQLite file; relative paths are relative to the config file.
    #[serde(default = "default_embedded_path")]
    pub path: PathBuf,
    /// Longest wait between attempts of a failing store operation (retried
    /// without limit; consumption waits).
    #[serde(default = "default_store_retry_max_delay", with = "humantime_serde")]
    pub retry_max_delay: Duration,
}

fn default_embedded_path() -> PathBuf {
    PathBuf::from(".tidewatch/tidewatch.db")
}

/// `[store] type = "clickhouse"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClickHouse {
    /// HTTP endpoint, e.g. `"http://127.0.0.1:8123"`.
    pub url: String,
    /// Database (created if missing).
    #[serde(default = "default_database")]
    pub database: String,
    /// User, if not `default`.
    #[serde(default)]
    pub user: Option<String>,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Longest wait between attempts of a failing store operation (retried
    /// without limit; consumption waits).
    #[serde(default = "default_store_retry_max_delay", with = "humantime_serde")]
    pub retry_max_delay: Duration,
}

fn default_database() -> String {
    "tidewatch".into()
}

/// `[windows]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindows {
    /// Tumbling window size, 1 minute to 1 day, whole seconds (`"1h"`).
    #[serde(default = "default_window_size", with = "humantime_serde")]
    pub size: Duration,
    /// How late an event may arrive behind the largest event time seen.
    #[serde(default = "default_lateness", with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Close all windows when no event arrived for this long (`"0s"`: never).
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_close_after: Duration,
    /// How often to store a checkpoint and commit offsets.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Offsets per checkpoint range (the most a restart re-reads per partition).
    #[serde(default = "default_range_size")]
    pub range_size: u64,
    /// Bound on (window × model × version × segment) groups per range.
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
    /// How long a prediction waits for its actual (event time).
    #[serde(default = "default_join_window", with = "humantime_serde")]
    pub join_window: Duration,
    /// Predictions held for the join; the oldest is dropped when full.
    #[serde(default = "default_max_pending_predictions")]
    pub max_pending_predictions: usize,
    /// How far ahead of the wall clock an event time may be; events further
    /// ahead are dead-lettered (they would make later events late).
    #[serde(default = "default_max_future_skew", with = "humantime_serde")]
    pub max_future_skew: Duration,
}

fn default_max_future_skew() -> Duration {
    Duration::from_secs(3600)
}

fn default_join_window() -> Duration {
    Duration::from_secs(7 * 86_400)
}

fn default_max_pending_predictions() -> usize {
    1_000_000
}

fn default_window_size() -> Duration {
    Duration::from_secs(3600)
}
fn default_lateness() -> Duration {
    Duration::from_secs(300)
}
fn default_idle() -> Duration {
    Duration::from_secs(600)
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_range_size() -> u64 {
    100_000
}
fn default_max_groups() -> usize {
    50_000
}

impl Default for RawWindows {
    fn default() -> Self {
        Self {
            size: default_window_size(),
            allowed_lateness: default_lateness(),
            idle_close_after: default_idle(),
            checkpoint_interval: default_checkpoint_interval(),
            range_size: default_range_size(),
            max_groups: default_max_groups(),
            join_window: default_join_window(),
            max_pending_predictions: default_max_pending_predictions(),
            max_future_skew: default_max_future_skew(),
        }
    }
}

/// `[drift]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrift {
    /// PSI at or above which a series is flagged as drifted.
    #[serde(default = "default_psi_threshold")]
    pub psi_threshold: f64,
    /// Fewest values a window needs before a series can be flagged.
    #[serde(default = "default_min_window_count")]
    pub min_window_count: u64,
    /// Significance level of the KS and chi-square tests.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// `none`, `bonferroni` or `benjamini_hochberg` across a window's series.
    #[serde(default = "default_correction")]
    pub correction: Correction,
    /// Jensen–Shannon distance threshold.
    #[serde(default = "default_distance_threshold")]
    pub jensen_shannon_threshold: f64,
    /// Hellinger distance threshold.
    #[serde(default = "default_distance_threshold")]
    pub hellinger_threshold: f64,
    /// KL divergence threshold.
    #[serde(default = "default_distance_threshold")]
    pub kl_divergence_threshold: f64,
    /// Normalized Wasserstein threshold.
    #[serde(default = "default_distance_threshold")]
    pub wasserstein_normalized_threshold: f64,
    /// Cap on each sample size in the KS p-value (unset: no cap).
    #[serde(default)]
    pub ks_sample_cap: Option<u64>,
}

fn default_alpha() -> f64 {
    DriftThresholds::default().alpha
}

fn default_correction() -> Correction {
    DriftThresholds::default().correction
}

fn default_distance_threshold() -> f64 {
    DriftThresholds::default().jensen_shannon
}

fn default_min_window_count() -> u64 {
    DriftThresholds::default().min_count
}

fn default_psi_threshold() -> f64 {
    DriftThresholds::default().psi
}

impl Default for RawDrift {
    fn default() -> Self {
        Self {
            psi_threshold: default_psi_threshold(),
            min_window_count: default_min_window_count(),
            alpha: default_alpha(),
            correction: default_correction(),
            jensen_shannon_threshold: default_distance_threshold(),
            hellinger_threshold: default_distance_threshold(),
            kl_divergence_threshold: default_distance_threshold(),
            wasserstein_normalized_threshold: default_distance_threshold(),
            ks_sample_cap: None,
        }
    }
}

/// `[reference]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawReference {
    /// For a model version with no stored profile: build one from its first
    /// this-many windows (0: never; such versions get no drift scores).
    #[serde(default)]
    pub warmup_windows: usize,
}

/// `[[models]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Model name, as in events' `model`.
    pub name: String,
    /// `classification` or `regression`.
    pub task: Task,
    /// Segment keys, as in events' `segments`.
    #[serde(default)]
    pub segment_keys: Vec<String>,
    /// Distinct values per segment key and window before `__other__`: the
    /// pinned `segment_values` first, then the values with the smallest
    /// stable hash (the same choice in every partition and instance).
    #[serde(default = "default_max_segment_values")]
    pub max_segment_values: usize,
    /// Segment values always admitted, per segment key.
    #[serde(default)]
    pub segment_values: BTreeMap<String, Vec<String>>,
    /// Distinct categories per categorical sketch before the overflow bucket.
    #[serde(default = "default_max_categories")]
    pub max_categories: usize,
    /// Monitored features.
    pub features: Vec<RawFeature>,
    /// The positive class of a binary classifier: enables ROC AUC, log
    /// loss, Brier and calibration from the prediction score.
    #[serde(default)]
    pub positive_class: Option<String>,
}

fn default_max_segment_values() -> usize {
    50
}
fn default_max_categories() -> usize {
    100
}

/// `[[models.features]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeature {
    /// Feature name, as in events' `features`.
    pub name: String,
    /// `numeric` or `categorical`.
    pub kind: FeatureKind,
}

/// Validated store settings.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSettings {
    /// SQLite at this path.
    Embedded {
        /// Database file.
        path: PathBuf,
    },
    /// ClickHouse.
    ClickHouse {
        /// HTTP endpoint.
        url: String,
        /// Database.
        database: String,
        /// User.
        user: Option<String>,
        /// Password read from the environment.
        password: Option<String>,
    },
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// Kafka, if configured.
    pub kafka: Option<KafkaSettings>,
    /// Store.
    pub store: StoreSettings,
    /// Engine settings.
    pub engine: EngineSettings,
    /// Consumer loop timing.
    pub loop_settings: LoopSettings,
    /// Longest wait between attempts of a failing store operation.
    pub store_retry_max_delay: Duration,
    /// Drift thresholds.
    pub thresholds: DriftThresholds,
    /// Warm-up windows for references.
    pub warmup_windows: usize,
    /// Model specs.
    pub models: Vec<ModelSpec>,
    /// Alert rules (the defaults when none is configured).
    pub alert_rules: Vec<alerting::rules::Rule>,
    /// Alert channels (with the retrain endpoint and bus, if configured).
    pub alert_channels: Vec<alerting::delivery::Channel>,
    /// Retraining triggers, if configured.
    pub retrain: Option<RetrainSettings>,
    /// The HTTP server, if configured.
    pub http: Option<HttpSettings>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(&text, file)
    }

    /// Validates config text; `file` is used in messages and to resolve relative paths.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError::Parse {
            file: file.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        raw.validate(file)
    }
}

impl Config {
    /// The spec of a configured model; the error names the file and `models`.
    pub fn model(&self, name: &str) -> Result<&ModelSpec, ConfigError> {
        self.models
            .iter()
            .find(|model| model.name() == name)
            .ok_or_else(|| ConfigError::Invalid {
                file: self.file.clone(),
                key: "models".into(),
                message: format!("no model named `{name}`"),
            })
    }
}

impl RawConfig {
    /// Checks every rule and builds the validated [`Config`].
    pub fn validate(self, file: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        if self.version != CONFIG_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "this build reads version {CONFIG_VERSION}, the file says {}",
                    self.version
                ),
            ));
        }

        let stall_after = self
            .kafka
            .as_ref()
            .map_or_else(default_stall_after, |kafka| kafka.stall_after);
        let kafka = match self.kafka {
            None => None,
            Some(kafka) => {
                if kafka.brokers.trim().is_empty() {
                    return Err(invalid(
                        "kafka.brokers",
                        "must list at least one broker".into(),
                    ));
                }
                if kafka.group_id.trim().is_empty() {
                    return Err(invalid("kafka.group_id", "must not be empty".into()));
                }
                if kafka.topics.is_empty() {
                    return Err(invalid(
                        "kafka.topics",
                        "must list at least one topic".into(),
                    ));
                }
                for (index, topic) in kafka.topics.iter().enumerate() {
                    if topic.name.trim().is_empty() {
                        return Err(invalid(
                            &format!("kafka.topics[{index}].name"),
                            "must not be empty".into(),
                        ));
                    }
                    if topic.name == kafka.dead_letter_topic {
                        return Err(invalid(
                            "kafka.dead_letter_topic",
                            "must differ from the topics read".into(),
                        ));
                    }
                }
                for reserved in ["group.id", "enable.auto.commit", "enable.auto.offset.store"] {
                    if kafka.properties.contains_key(reserved) {
                        return Err(invalid(
                            &format!("kafka.properties.\"{reserved}\""),
                            "is set by Tidewatch (offsets are committed only after storage); remove it".into(),
                        ));
                    }
                }
                Some(KafkaSettings {
                    brokers: kafka.brokers,
                    group_id: kafka.group_id,
                    topics: kafka
                        .topics
                        .into_iter()
                        .map(|t| TopicSpec {
                            name: t.name,
                            kind: t.kind,
                        })
                        .collect(),
                    dead_letter_topic: kafka.dead_letter_topic,
                    dead_letter_max_bytes: kafka.dead_letter_max_bytes,
                    properties: kafka.properties.into_iter().collect(),
                })
            }
        };

        let store_retry_max_delay = match &self.store {
            RawStore::Embedded(embedded) => embedded.retry_max_delay,
            RawStore::ClickHouse(clickhouse) => clickhouse.retry_max_delay,
        };
        if store_retry_max_delay.is_zero() {
            return Err(invalid("store.retry_max_delay", "must be positive".into()));
        }
        let store = match self.store {
            RawStore::Embedded(embedded) => {
                let path = if embedded.path.is_relative() {
                    file.parent().unwrap_or(Path::new(".")).join(&embedded.path)
                } else {
                    embedded.path
                };
                StoreSettings::Embedded { path }
            }
            RawStore::ClickHouse(clickhouse) => {
                if !(clickhouse.url.starts_with("http://")
                    || clickhouse.url.starts_with("https://"))
                {
                    return Err(invalid(
                        "store.url",
                        format!("`{}` must start with http:// or https://", clickhouse.url),
                    ));
                }
                if clickhouse.database.is_empty()
                    || !clickhouse
                        .database
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(invalid(
                        "store.database",
                        "must be ASCII letters, digits or `_`".into(),
                    ));
                }
                let password = match &clickhouse.password_env {
                    None => None,
                    Some(variable) => Some(std::env::var(variable).map_err(|_| {
                        invalid(
                            "store.password_env",
                            format!("environment variable `{variable}` is not set"),
                        )
                    })?),
                };
                StoreSettings::ClickHouse {
                    url: clickhouse.url,
                    database: clickhouse.database,
                    user: clickhouse.user,
                    password,
                }
            }
        };

        let windows = self.windows;
        let size_ms = windows.size.as_millis() as i64;
        if !(60_000..=86_400_000).contains(&size_ms) || size_ms % 1000 != 0 {
            return Err(invalid(
                "windows.size",
                "must be whole seconds between 1m and 1d".into(),
            ));
        }
        if windows.range_size == 0 {
            return Err(invalid("windows.range_size", "must be at least 1".into()));
        }
        if windows.max_groups == 0 {
            return Err(invalid("windows.max_groups", "must be at least 1".into()));
        }
        if windows.checkpoint_interval.is_zero() {
            return Err(invalid(
                "windows.checkpoint_interval",
                "must be positive".into(),
            ));
        }
        let window_size =
            WindowSize::from_millis(size_ms).map_err(|e| invalid("windows.size", e.to_string()))?;

        let drift = &self.drift;
        for (key, value) in [
            ("drift.psi_threshold", drift.psi_threshold),
            (
                "drift.jensen_shannon_threshold",
                drift.jensen_shannon_threshold,
            ),
            ("drift.hellinger_threshold", drift.hellinger_threshold),
            (
                "drift.kl_divergence_threshold",
                drift.kl_divergence_threshold,
            ),
            (
                "drift.wasserstein_normalized_threshold",
                drift.wasserstein_normalized_threshold,
            ),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(invalid(key, "must be a positive number".into()));
            }
        }
        if !(drift.alpha > 0.0 && drift.alpha < 1.0) {
            return Err(invalid("drift.alpha", "must be between 0 and 1".into()));
        }
        if drift.ks_sample_cap == Some(0) {
            return Err(invalid("drift.ks_sample_cap", "must be at least 1".into()));
        }

        if self.models.is_empty() {
            return Err(invalid("models", "must list at least one model".into()));
        }
        let mut models = Vec::with_capacity(self.models.len());
        for (index, model) in self.models.into_iter().enumerate() {
            let key = format!("models[{index}]");
            if models.iter().any(|m: &ModelSpec| m.name() == model.name) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("model `{}` is listed twice", model.name),
                ));
            }
            let positive_class = model.positive_class;
            let segment_values = model.segment_values;
            let features = model
                .features
                .into_iter()
                .map(|f| FeatureSpec {
                    name: f.name,
                    kind: f.kind,
                })
                .collect();
            let spec = ModelSpec::new(
                model.name,
                model.task,
                features,
                model.segment_keys,
                model.max_segment_values,
                model.max_categories,
            )
            .and_then(|spec| spec.with_segment_values(segment_values))
            .map_err(|error| invalid(&key, error.to_string()))?
            .with_positive_class(positive_class);
            models.push(spec);
        }

        let base_dir = file.parent().unwrap_or(Path::new("."));
        let from_env = |key: &str, variable: &str| {
            std::env::var(variable)
                .map_err(|_| invalid(key, format!("environment variable `{variable}` is not set")))
        };
        let read_ca = |key: &str, path: &Option<PathBuf>| -> Result<Option<Vec<u8>>, ConfigError> {
            path.as_ref()
                .map(|path| {
                    let path = base_dir.join(path);
                    std::fs::read(&path).map_err(|error| {
                        invalid(key, format!("cannot read `{}`: {error}", path.display()))
                    })
                })
                .transpose()
        };
        let channel_error = |key: &str, error: alerting::Error| match error {
            alerting::Error::InvalidRule { key, message } => ConfigError::Invalid {
                file: file.to_owned(),
                key,
                message,
            },
            other => invalid(key, other.to_string()),
        };
        let mut alert_channels: Vec<alerting::delivery::Channel> = Vec::new();
        for (index, raw) in self.alerts.channels.into_iter().enumerate() {
            let key = format!("alerts.channels[{index}]");
            let (name, kind) = match raw {
                RawChannel::Webhook {
                    name,
                    url,
                    secret_env,
                    ca_file,
                } => {
                    let secret = secret_env
                        .map(|variable| from_env(&format!("{key}.secret_env"), &variable))
                        .transpose()?
                        .map(String::into_bytes);
                    let ca_pem = read_ca(&format!("{key}.ca_file"), &ca_file)?;
                    (
                        name,
                        alerting::delivery::ChannelKind::Webhook(alerting::delivery::Endpoint {
                            url,
                            secret,
                            ca_pem,
                        }),
                    )
                }
                RawChannel::Slack {
                    name,
                    url,
                    dashboard_url,
                } => (
                    name,
                    alerting::delivery::ChannelKind::Slack { url, dashboard_url },
                ),
                RawChannel::Email {
                    name,
                    smtp_host,
                    smtp_port,
                    security,
                    username_env,
                    password_env,
                    ca_file,
                    from,
                    to,
                    dashboard_url,
                } => {
                    use alerting::email::{Secret, SmtpSecurity};
                    let (security, default_port) = match security.as_str() {
                        "starttls" => (SmtpSecurity::StartTls, 587),
                        "tls" => (SmtpSecurity::Tls, 465),
                        "none" => (SmtpSecurity::None, 25),
                        other => {
                            return Err(invalid(
                                &format!("{key}.security"),
                                format!("`{other}` is not one of starttls, tls, none"),
                            ))
                        }
                    };
                    let credentials = match (username_env, password_env) {
                        (None, None) => None,
                        (Some(user), Some(password)) => Some((
                            from_env(&format!("{key}.username_env"), &user)?,
                            Secret(from_env(&format!("{key}.password_env"), &password)?),
                        )),
                        (None, Some(_)) => {
                            return Err(invalid(
                                &format!("{key}.username_env"),
                                "is needed with `password_env`".into(),
                            ))
                        }
                        (Some(_), None) => {
                            return Err(invalid(
                                &format!("{key}.password_env"),
                                "is needed with `username_env`".into(),
                            ))
                        }
                    };
                    if credentials.is_some() && security == SmtpSecurity::None {
                        return Err(invalid(
                            &format!("{key}.security"),
                            "`none` would send the SMTP password in clear text: use starttls or tls".into(),
                        ));
                    }
                    let settings = alerting::email::EmailSettings {
                        host: smtp_host,
                        port: smtp_port.unwrap_or(default_port),
                        security,
                        credentials,
                        ca_pem: read_ca(&format!("{key}.ca_file"), &ca_file)?,
                        from,
                        to,
                        dashboard_url,
                    };
                    (
                        name,
                        alerting::delivery::ChannelKind::Email(Box::new(settings)),
                    )
                }
            };
            if name.trim().is_empty()
                || name.starts_with("retrain.")
                || alert_channels.iter().any(|channel| channel.name == name)
            {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("`{name}` is empty, listed twice or reserved (`retrain.*`)"),
                ));
            }
            let channel = alerting::delivery::Channel::new(name, kind, &key)
                .map_err(|error| channel_error(&key, error))?;
            alert_channels.push(channel);
        }

        let retrain = match self.alerts.retrain {
            None => None,
            Some(raw) => {
                let key = "alerts.retrain";
                let mut channels = Vec::new();
                if let Some(url) = raw.url {
                    let secret = raw
                        .secret_env
                        .map(|variable| from_env(&format!("{key}.secret_env"), &variable))
                        .transpose()?
                        .map(String::into_bytes);
                    let kind = alerting::delivery::ChannelKind::RetrainWebhook(
                        alerting::delivery::Endpoint {
                            url,
                            secret,
                            ca_pem: read_ca(&format!("{key}.ca_file"), &raw.ca_file)?,
                        },
                    );
                    alert_channels.push(
                        alerting::delivery::Channel::new(
                            alerting::retrain::WEBHOOK_CHANNEL.into(),
                            kind,
                            key,
                        )
                        .map_err(|error| channel_error(key, error))?,
                    );
                    channels.push(alerting::retrain::WEBHOOK_CHANNEL.to_owned());
                }
                for (field, topic) in [("topic", &raw.topic), ("ack_topic", &raw.ack_topic)] {
                    if topic.is_some() && kafka.is_none() {
                        return Err(invalid(
                            &format!("{key}.{field}"),
                            "needs a `[kafka]` section (the bus)".into(),
                        ));
                    }
                }
                if let Some(topic) = raw.topic {
                    alert_channels.push(
                        alerting::delivery::Channel::new(
                            alerting::retrain::BUS_CHANNEL.into(),
                            alerting::delivery::ChannelKind::Bus { topic },
                            key,
                        )
                        .map_err(|error| channel_error(key, error))?,
                    );
                    channels.push(alerting::retrain::BUS_CHANNEL.to_owned());
                }
                if channels.is_empty() {
                    return Err(invalid(key, "sets neither `url` nor `topic`".into()));
                }
                Some(RetrainSettings {
                    debounce_ms: raw.debounce.as_millis() as u64,
                    channels,
                    ack_topic: raw.ack_topic,
                })
            }
        };

        let mut alert_rules = Vec::with_capacity(self.alerts.rules.len());
        for (index, raw) in self.alerts.rules.into_iter().enumerate() {
            let key = format!("alerts.rules[{index}]");
            if alert_rules
                .iter()
                .any(|rule: &alerting::rules::Rule| rule.name == raw.name)
            {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("rule `{}` is listed twice", raw.name),
                ));
            }
            let rule = alerting::rules::Rule::from_raw(raw, &key)
                .map_err(|error| channel_error(&key, error))?;
            alert_rules.push(rule);
        }
        // Channels rules may name: the configured ones, not the retrain targets.
        let notify_channels: Vec<String> = alert_channels
            .iter()
            .map(|c| c.name.clone())
            .filter(|name| !name.starts_with("retrain."))
            .collect();
        for (index, rule) in alert_rules.iter().enumerate() {
            if let Some(unknown) = rule
                .channels
                .iter()
                .find(|name| !notify_channels.contains(name))
            {
                return Err(invalid(
                    &format!("alerts.rules[{index}].channels"),
                    format!("no channel named `{unknown}` in `alerts.channels`"),
                ));
            }
            if rule.retrain && retrain.is_none() {
                return Err(invalid(
                    &format!("alerts.rules[{index}].retrain"),
                    "needs an `[alerts.retrain]` section (an endpoint `url` and/or a bus `topic`)"
                        .into(),
                ));
            }
        }
        let http = match self.http {
            None => None,
            Some(raw) => {
                let listen = raw.listen.parse().map_err(|_| {
                    invalid(
                        "http.listen",
                        format!("`{}` is not an address like 127.0.0.1:8080", raw.listen),
                    )
                })?;
                let token = raw
                    .token_env
                    .map(|variable| from_env("http.token_env", &variable))
                    .transpose()?;
                if token.as_ref().is_some_and(|t| t.len() < 16) {
                    return Err(invalid(
                        "http.token_env",
                        "the token must be at least 16 characters".into(),
                    ));
                }
                if raw.max_body_bytes == 0 {
                    return Err(invalid("http.max_body_bytes", "must be positive".into()));
                }
                if raw.max_connections == 0 {
                    return Err(invalid("http.max_connections", "must be positive".into()));
                }
                if raw.request_timeout.is_zero() {
                    return Err(invalid("http.request_timeout", "must be positive".into()));
                }
                Some(HttpSettings {
                    listen,
                    token,
                    max_body_bytes: raw.max_body_bytes,
                    max_connections: raw.max_connections,
                    request_timeout: raw.request_timeout,
                })
            }
        };
        if alert_rules.is_empty() {
            let every_channel = notify_channels;
            alert_rules = alerting::rules::default_rules(&every_channel);
        }

        Ok(Config {
            file: file.to_owned(),
            kafka,
            store,
            engine: EngineSettings {
                window_size,
                allowed_lateness_ms: windows.allowed_lateness.as_millis() as i64,
                range_size: windows.range_size,
                max_groups: windows.max_groups,
                join_window_ms: windows.join_window.as_millis() as i64,
                max_pending_predictions: windows.max_pending_predictions,
                max_future_skew_ms: windows.max_future_skew.as_millis() as i64,
            },
            loop_settings: LoopSettings {
                checkpoint_interval: windows.checkpoint_interval,
                idle_close_after: (!windows.idle_close_after.is_zero())
                    .then_some(windows.idle_close_after),
                reference_refresh: Duration::from_secs(60),
                stall_after,
            },
            store_retry_max_delay,
            thresholds: DriftThresholds {
                psi: self.drift.psi_threshold,
                min_count: self.drift.min_window_count,
                alpha: self.drift.alpha,
                correction: self.drift.correction,
                jensen_shannon: self.drift.jensen_shannon_threshold,
                hellinger: self.drift.hellinger_threshold,
                kl_divergence: self.drift.kl_divergence_threshold,
                wasserstein_normalized: self.drift.wasserstein_normalized_threshold,
                ks_sample_cap: self.drift.ks_sample_cap,
            },
            warmup_windows: self.reference.warmup_windows,
            models,
            alert_rules,
            alert_channels,
            retrain,
            http,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("fixtures")
            .join(name)
    }

    #[test]
    fn the_example_config_is_valid() {
        let config = Config::load(&repo_file("tidewatch.example.toml")).unwrap();
        assert_eq!(config.models.len(), 1);
        assert_eq!(config.engine.window_size.millis(), 3_600_000);
        let kafka = config.kafka.unwrap();
        assert_eq!(kafka.topics.len(), 2);
        assert!(matches!(config.store, StoreSettings::ClickHouse { .. }));
        let rules: Vec<&str> = config
            .alert_rules
            .iter()
            .map(|rule| rule.name.as_str())
            .collect();
        assert_eq!(rules, ["payment_drift"]);
        let channels: Vec<&str> = config
            .alert_channels
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(channels, ["pipeline", "oncall-email", "retrain.webhook"]);
        let retrain = config.retrain.unwrap();
        assert_eq!(retrain.channels, ["retrain.webhook"]);
        assert_eq!(retrain.debounce_ms, 24 * 3_600_000);
        assert!(config.alert_rules[0].retrain);
    }

    #[test]
    fn the_broken_fixture_fails_naming_file_and_key() {
        let error = Config::load(&repo_file("broken.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("broken.toml"), "{error}");
        assert!(error.contains("`windows.size`"), "{error}");
        assert!(error.contains("between 1m and 1d"), "{error}");
    }

    #[test]
    fn unknown_keys_are_errors_with_their_name() {
        let text = "version = 1\n[windows]\nsise = \"1h\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []\n";
        let error = Config::parse(text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("t.toml:"), "{error}");
        assert!(error.contains("unknown field `sise`"), "{error}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            (
                "version = 1\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []\nsegment_keys = [\"country\"]\nsegment_values = { region = [\"EU\"] }",
                "`models[0]`: invalid model spec: model `m`: segment values are pinned for `region`, which is not a segment key",
            ),
            (
                "version = 1\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []\nsegment_keys = [\"country\"]\nmax_segment_values = 1\nsegment_values = { country = [\"DE\", \"FR\"] }",
                "2 values pinned for `country`, more than max_segment_values (1)",
            ),
            (
                "version = 1\n[[alerts.rules]]\nname = \"r\"\ncooldown_windows = 0\ncondition = { type = \"drift\" }\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`alerts.rules[0].cooldown_windows`",
            ),
            (
                "version = 1\n[[alerts.channels]]\ntype = \"slack\"\nname = \"s\"\nurl = \"hooks.slack.com/x\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`alerts.channels[0].url`",
            ),
            (
                "version = 1\n[[alerts.channels]]\ntype = \"email\"\nname = \"e\"\nsmtp_host = \"h\"\nsecurity = \"none\"\nusername_env = \"HOME\"\npassword_env = \"HOME\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`alerts.channels[0].security`: `none` would send the SMTP password in clear text",
            ),
            (
                "version = 1\n[[alerts.channels]]\ntype = \"email\"\nname = \"e\"\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\nto = [\"not an address\"]\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`alerts.channels[0].to`",
            ),
            (
                "version = 1\n[[alerts.channels]]\ntype = \"email\"\nname = \"e\"\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\nca_file = \"missing-ca.pem\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`alerts.channels[0].ca_file`: cannot read",
            ),
            (
                "version = 1\n[[alerts.channels]]\ntype = \"webhook\"\nname = \"retrain.x\"\nurl = \"http://h/x\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`alerts.channels[0].name`",
            ),
            (
                "version = 1\n[[alerts.rules]]\nname = \"r\"\nretrain = true\ncondition = { type = \"drift\" }\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`alerts.rules[0].retrain`: needs an `[alerts.retrain]` section",
            ),
            (
                "version = 1\n[alerts.retrain]\ntopic = \"t\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`alerts.retrain.topic`: needs a `[kafka]` section",
            ),
            (
                "version = 1\n[alerts.retrain]\ndebounce = \"1h\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`alerts.retrain`: sets neither",
            ),
            (
                "version = 1\n[[alerts.channels]]\ntype = \"slack\"\nname = \"s\"\nurl = \"http://h/x\"\nsmtp_host = \"h\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "unknown field `smtp_host`",
            ),
            (
                "version = 1\n[[alerts.rules]]\nname = \"r\"\nchannels = [\"nope\"]\ncondition = { type = \"drift\" }\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`alerts.rules[0].channels`: no channel named `nope`",
            ),
            (
                "version = 1\n[[alerts.channels]]\ntype = \"webhook\"\nname = \"w\"\nurl = \"http://127.0.0.1:9/x\"\nsecret_env = \"TIDEWATCH_TEST_UNSET_SECRET\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`alerts.channels[0].secret_env`",
            ),
            (
                "version = 1\n[http]\nlisten = \"localhost\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`http.listen`",
            ),
            (
                "version = 1\n[http]\ntoken_env = \"TIDEWATCH_TEST_UNSET_TOKEN\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`http.token_env`: environment variable",
            ),
            (
                "version = 1\n[drift]\nalpha = 2.0\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`drift.alpha`",
            ),
            (
                "version = 1\n[drift]\ncorrection = \"holm\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "unknown variant `holm`",
            ),
            ("version = 2\nmodels = []", "`version`"),
            ("version = 1\nmodels = []", "`models`"),
            (
                "version = 1\n[kafka]\nbrokers = \"b:9092\"\ntopics = [{name = \"p\", kind = \"prediction\"}]\n[kafka.properties]\n\"enable.auto.commit\" = \"true\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`kafka.properties.\"enable.auto.commit\"`",
            ),
            (
                "version = 1\n[store]\ntype = \"clickhouse\"\nurl = \"127.0.0.1:8123\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []",
                "`store.url`",
            ),
            (
                "version = 1\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = [{name = \"a\", kind = \"numeric\"}, {name = \"a\", kind = \"numeric\"}]",
                "`models[0]`",
            ),
        ];
        for (text, key) in cases {
            let error = Config::parse(text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{error} should name {key}");
        }
    }

    #[test]
    fn embedded_paths_are_relative_to_the_config_file() {
        let text = "version = 1\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []";
        let config = Config::parse(text, Path::new("/etc/tidewatch/tidewatch.toml")).unwrap();
        let defaults: Vec<&str> = config
            .alert_rules
            .iter()
            .map(|rule| rule.name.as_str())
            .collect();
        assert_eq!(
            defaults,
            ["drift_on_features", "quality_dropped"],
            "no rules: the defaults"
        );
        assert_eq!(
            config.store,
            StoreSettings::Embedded {
                path: PathBuf::from("/etc/tidewatch/.tidewatch/tidewatch.db")
            }
        );
    }
}
