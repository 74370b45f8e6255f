//! `tidewatch.toml`: the raw file format, and its validation into settings
//! that cannot be invalid.
//!
//! [`RawConfig`] mirrors the file (`deny_unknown_fields` everywhere, so a typo
//! is an error, not a silently ignored key). [`Config::load`] parses and
//! validates once; every error names the file and the key at fault.
//! See `fixtures/tidewatch.example.toml` for a documented example.

use std::path::{Path, PathBuf};
use std::time::Duration;

use detectors::metrics::DriftThresholds;
use detectors::spec::ModelSpec;
use ingest::config::KafkaSettings;
use ingest::engine::EngineSettings;
use ingest::kafka::LoopSettings;
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
    pub kafka: Option<ingest::config::RawKafka>,
    /// Where results go.
    #[serde(default)]
    pub store: store::config::RawStoreConfig,
    /// Event-time windows.
    #[serde(default)]
    pub windows: ingest::config::RawWindows,
    /// Drift thresholds.
    #[serde(default)]
    pub drift: detectors::config::RawDrift,
    /// Reference profiles.
    #[serde(default)]
    pub reference: ingest::config::RawReference,
    /// Monitored models.
    pub models: Vec<detectors::config::RawModel>,
    /// Alert rules.
    #[serde(default)]
    pub alerts: alerting::config::RawAlerts,
    /// The HTTP server (API, pages, metrics); none without this section.
    #[serde(default)]
    pub http: Option<crate::http::config::RawHttp>,
    /// The model gateway (`tidewatch serve`); none without this section.
    #[serde(default)]
    pub serving: Option<serving::config::RawServing>,
    /// The model registry, served with the HTTP API (on by default).
    #[serde(default)]
    pub registry: registry::config::RawRegistry,
    /// The reference trainer (answers retrain requests); none without
    /// this section.
    #[serde(default)]
    pub trainer: Option<crate::retrainer::RawTrainer>,
    /// The promotion policy (challengers against champions); none
    /// without this section.
    #[serde(default)]
    pub promotion: Option<crate::promotion::RawPromotion>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// Kafka, if configured.
    pub kafka: Option<KafkaSettings>,
    /// Store.
    pub store: store::config::StoreConfig,
    /// Engine settings.
    pub engine: EngineSettings,
    /// Consumer loop timing.
    pub loop_settings: LoopSettings,
    /// Drift thresholds.
    pub thresholds: DriftThresholds,
    /// Warm-up windows for references.
    pub warmup_windows: usize,
    /// How long the training sample is kept (`windows.sample_retention`).
    pub sample_retention: std::time::Duration,
    /// Model specs.
    pub models: Vec<ModelSpec>,
    /// Alert rules (the defaults when none is configured).
    pub alert_rules: Vec<alerting::rules::Rule>,
    /// Alert channels (with the retrain endpoint and bus, if configured).
    pub alert_channels: Vec<alerting::delivery::Channel>,
    /// Retraining triggers, if configured.
    pub retrain: Option<alerting::config::RetrainSettings>,
    /// How failed deliveries are retried (`[alerts.delivery]`).
    pub delivery_retry: alerting::delivery::RetryPolicy,
    /// The HTTP server, if configured.
    pub http: Option<crate::http::config::HttpSettings>,
    /// The model gateway, if configured (its models loaded).
    pub serving: Option<serving::config::ServingSettings>,
    /// The model registry, unless disabled.
    pub registry: Option<registry::config::RegistrySettings>,
    /// The reference trainer, if configured.
    pub trainer: Option<crate::retrainer::TrainerConfig>,
    /// The promotion policy, if configured.
    pub promotion: Option<crate::promotion::PromotionConfig>,
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

    /// [`Config::parse`] for a process whose parts share the in-process
    /// bus ([`crate::bus::InProcessBus`], `tidewatch demo --loop`): the
    /// bus topics (retrain requests and acknowledgements, promotion
    /// decisions, the gateway's log) are valid without `[kafka]`.
    pub fn parse_in_process(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError::Parse {
            file: file.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        raw.validate_with_bus(file, true)
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
        self.validate_with_bus(file, false)
    }

    /// [`RawConfig::validate`]; `in_process_bus`: the bus is in the
    /// process, not `[kafka]`.
    fn validate_with_bus(self, file: &Path, in_process_bus: bool) -> Result<Config, ConfigError> {
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
            .map_or(Duration::from_secs(60), |kafka| kafka.stall_after);
        let kafka = self
            .kafka
            .map(ingest::config::RawKafka::validate)
            .transpose()
            .map_err(|error| invalid(&format!("kafka.{}", error.key), error.message))?;

        let config_dir = file.parent().unwrap_or(Path::new("."));
        let store = self
            .store
            .validate(config_dir)
            .map_err(|error| invalid(&format!("store.{}", error.key), error.message))?;

        let windows = self
            .windows
            .validate()
            .map_err(|error| invalid(&format!("windows.{}", error.key), error.message))?;
        if self.reference.refresh_interval.is_zero() {
            return Err(invalid(
                "reference.refresh_interval",
                "must be positive".into(),
            ));
        }

        let thresholds = self
            .drift
            .validate()
            .map_err(|error| invalid(&format!("drift.{}", error.key), error.message))?;

        if self.models.is_empty() {
            return Err(invalid("models", "must list at least one model".into()));
        }
        let mut models: Vec<ModelSpec> = Vec::with_capacity(self.models.len());
        for (index, model) in self.models.into_iter().enumerate() {
            let key = format!("models[{index}]");
            if models.iter().any(|m| m.name() == model.name) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("model `{}` is listed twice", model.name),
                ));
            }
            models.push(
                model
                    .validate()
                    .map_err(|error| invalid(&key, error.to_string()))?,
            );
        }

        let base_dir = file.parent().unwrap_or(Path::new("."));
        let alerting = self
            .alerts
            .validate(base_dir, kafka.is_some() || in_process_bus)
            .map_err(|error| match error {
                alerting::Error::InvalidSetting { key, message } => ConfigError::Invalid {
                    file: file.to_owned(),
                    key,
                    message,
                },
                other => invalid("alerts", other.to_string()),
            })?;
        let http = self
            .http
            .map(|raw| raw.validate())
            .transpose()
            .map_err(|error| invalid(&format!("http.{}", error.key), error.message))?;

        let monitored: std::collections::BTreeMap<String, serving::config::MonitoredModel> = models
            .iter()
            .map(|spec| {
                let features = (0..spec.configured_feature_count())
                    .map(|position| spec.series_at(position).name.clone())
                    .collect();
                (
                    spec.name().to_owned(),
                    serving::config::MonitoredModel {
                        features,
                        task: spec.task(),
                    },
                )
            })
            .collect();
        let prediction_topic = kafka.as_ref().and_then(|kafka| {
            kafka
                .topics()
                .iter()
                .find(|topic| topic.kind == events::EventKind::Prediction)
                .map(|topic| topic.name.as_str())
        });
        let serving = self
            .serving
            .map(|raw| raw.validate(&monitored, prediction_topic, base_dir))
            .transpose()
            .map_err(|error| invalid(&format!("serving.{}", error.key), error.message))?;
        let registry = self
            .registry
            .validate(base_dir)
            .map_err(|error| invalid(&format!("registry.{}", error.key), error.message))?;

        let trainer = match self.trainer {
            Some(raw) => {
                let retrain = alerting.retrain.as_ref();
                let topics = (
                    retrain.and_then(|r| r.request_topic.as_deref()),
                    retrain.and_then(|r| r.ack_topic.as_deref()),
                );
                Some(
                    raw.validate(base_dir, topics.0, topics.1)
                        .map_err(|error| {
                            invalid(&format!("trainer.{}", error.key), error.message)
                        })?,
                )
            }
            None => None,
        };

        let promotion = self
            .promotion
            .map(|raw| raw.validate(&models))
            .transpose()
            .map_err(|error| invalid(&format!("promotion.{}", error.key), error.message))?;
        if promotion.as_ref().is_some_and(|p| p.topic.is_some())
            && kafka.is_none()
            && !in_process_bus
        {
            return Err(invalid(
                "promotion.topic",
                "decisions go to the bus: needs [kafka]".into(),
            ));
        }

        Ok(Config {
            file: file.to_owned(),
            kafka,
            store,
            engine: windows.engine().clone(),
            loop_settings: LoopSettings {
                checkpoint_interval: windows.checkpoint_interval(),
                idle_close_after: windows.idle_close_after(),
                reference_refresh: self.reference.refresh_interval,
                stall_after,
            },
            thresholds,
            warmup_windows: self.reference.warmup_windows,
            sample_retention: windows.sample_retention(),
            models,
            delivery_retry: alerting.retry,
            alert_rules: alerting.rules,
            alert_channels: alerting.channels,
            retrain: alerting.retrain,
            http,
            serving,
            registry,
            trainer,
            promotion,
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
        assert!(config.models[0].multivariate().is_some());
        assert_eq!(config.engine.window_size().millis(), 3_600_000);
        let kafka = config.kafka.unwrap();
        assert_eq!(kafka.topics().len(), 2);
        assert!(config.store.is_clickhouse());
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
            config.store.embedded_path(),
            Some(Path::new("/etc/tidewatch/.tidewatch/tidewatch.db"))
        );
    }
}
