//! The sections this crate owns: `[kafka]` ([`RawKafka`] → [`KafkaSettings`]),
//! `[windows]` ([`RawWindows`] → [`WindowSettings`]) and `[reference]`
//! ([`RawReference`]), each validated once into a type that cannot be
//! invalid. Errors name the key within the section; the binary prefixes the
//! section and the file.

use std::collections::BTreeMap;
use std::time::Duration;

use detectors::window::WindowSize;
use events::{Encoding, EventKind, Format};
use serde::Deserialize;

use crate::engine::{defaults, EngineSettings};

/// A setting that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct InvalidSetting {
    /// The key within its section (`topics[0].name`).
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
    crate::dead_letter::DEFAULT_MAX_PAYLOAD_BYTES
}

fn default_stall_after() -> Duration {
    Duration::from_secs(60)
}

/// `[[kafka.topics]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopic {
    /// Topic name.
    pub name: String,
    /// Kind of event for payloads without a `schema` field.
    pub kind: EventKind,
    /// How the payloads are encoded: `json` (default) or `protobuf`
    /// (`tidewatch.v1.Event`).
    #[serde(default)]
    pub encoding: Encoding,
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
    /// Predictions held in memory for the join (a cache in front of the
    /// store); the oldest leaves memory when full. 0 turns the join off.
    #[serde(default = "default_max_pending_predictions")]
    pub max_pending_predictions: usize,
    /// Labels whose prediction was not found yet that an instance looks up
    /// again; beyond, the oldest are left to the store (their source's next
    /// owner loads them).
    #[serde(default = "default_max_pending_labels")]
    pub max_pending_labels: usize,
    /// Whether the join is durable (predictions stored with each
    /// checkpoint, labels looked up in the store: exact across restarts,
    /// rebalances and instances) or in memory only (faster; a label whose
    /// prediction this process does not hold is unmatched).
    #[serde(default = "default_durable_join")]
    pub durable_join: bool,
    /// How far ahead of the wall clock an event time may be; events further
    /// ahead are dead-lettered (they would make later events late).
    #[serde(default = "default_max_future_skew", with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Share of prediction ids whose predictions (every version) and labels
    /// are kept as the training sample, in [0, 1] (0: none).
    #[serde(default = "default_sample_rate")]
    pub sample_rate: f64,
    /// Sampled predictions (and labels) kept per range at most; more are
    /// counted and not kept.
    #[serde(default = "default_max_samples_per_range")]
    pub max_samples_per_range: usize,
    /// How long the training sample is kept (by window start; labels by
    /// their time).
    #[serde(default = "default_sample_retention", with = "humantime_serde")]
    pub sample_retention: Duration,
}

fn default_sample_rate() -> f64 {
    defaults::SAMPLE_RATE
}

fn default_max_samples_per_range() -> usize {
    defaults::MAX_SAMPLES_PER_RANGE
}

fn default_sample_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_max_future_skew() -> Duration {
    defaults::MAX_FUTURE_SKEW
}

fn default_join_window() -> Duration {
    defaults::JOIN_WINDOW
}

fn default_max_pending_predictions() -> usize {
    defaults::MAX_PENDING_PREDICTIONS
}

fn default_durable_join() -> bool {
    true
}

fn default_max_pending_labels() -> usize {
    defaults::MAX_PENDING_LABELS
}

fn default_window_size() -> Duration {
    Duration::from_secs(3600)
}
fn default_lateness() -> Duration {
    defaults::ALLOWED_LATENESS
}
fn default_idle() -> Duration {
    Duration::from_secs(600)
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_range_size() -> u64 {
    defaults::RANGE_SIZE
}
fn default_max_groups() -> usize {
    defaults::MAX_GROUPS
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
            max_pending_labels: default_max_pending_labels(),
            durable_join: default_durable_join(),
            max_future_skew: default_max_future_skew(),
            sample_rate: default_sample_rate(),
            max_samples_per_range: default_max_samples_per_range(),
            sample_retention: default_sample_retention(),
        }
    }
}

/// `[reference]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReference {
    /// Without a stored reference, the first N closed windows of a model
    /// version become its reference (0: never).
    #[serde(default)]
    pub warmup_windows: usize,
    /// How often a running consumer looks for new reference profiles in the
    /// store (a `tidewatch reference build` elsewhere, an upload).
    #[serde(default = "default_reference_refresh", with = "humantime_serde")]
    pub refresh_interval: Duration,
}

fn default_reference_refresh() -> Duration {
    Duration::from_secs(60)
}

impl Default for RawReference {
    fn default() -> Self {
        Self {
            warmup_windows: 0,
            refresh_interval: default_reference_refresh(),
        }
    }
}

/// Where the brokers are and how to talk to them (producers and consumers).
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConnection {
    brokers: String,
    properties: Vec<(String, String)>,
}

impl BrokerConnection {
    /// `bootstrap.servers` without extra properties.
    pub fn new(brokers: impl Into<String>) -> Result<Self, InvalidSetting> {
        let brokers = brokers.into();
        if brokers.trim().is_empty() {
            return Err(invalid("brokers", "must list at least one broker"));
        }
        Ok(Self {
            brokers,
            properties: Vec::new(),
        })
    }

    /// `bootstrap.servers`.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Extra librdkafka properties, passed through as they are.
    pub fn properties(&self) -> &[(String, String)] {
        &self.properties
    }
}

/// A topic to consume and the kind of event it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Kind assumed for payloads without a `schema` field.
    pub kind: EventKind,
    /// How the payloads are encoded.
    pub encoding: Encoding,
}

impl TopicSpec {
    /// How to decode this topic's payloads.
    pub fn format(&self) -> Format {
        Format {
            encoding: self.encoding,
            default_kind: self.kind,
        }
    }
}

/// Validated `[kafka]`.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    connection: BrokerConnection,
    group_id: String,
    topics: Vec<TopicSpec>,
    dead_letter_topic: String,
    dead_letter_max_bytes: usize,
    stall_after: Duration,
}

impl KafkaSettings {
    /// The brokers and client properties.
    pub fn connection(&self) -> &BrokerConnection {
        &self.connection
    }

    /// `group.id`.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// Topics to consume.
    pub fn topics(&self) -> &[TopicSpec] {
        &self.topics
    }

    /// Topic for undecodable payloads.
    pub fn dead_letter_topic(&self) -> &str {
        &self.dead_letter_topic
    }

    /// Payload bytes a dead letter keeps (the rest is cut; headers say so).
    pub fn dead_letter_max_bytes(&self) -> usize {
        self.dead_letter_max_bytes
    }

    /// Readiness turns false when the consumer has lag and has read nothing
    /// for this long.
    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }
}

impl RawKafka {
    /// Validates the section.
    pub fn validate(self) -> Result<KafkaSettings, InvalidSetting> {
        let mut connection = BrokerConnection::new(self.brokers)?;
        if self.group_id.trim().is_empty() {
            return Err(invalid("group_id", "must not be empty"));
        }
        if self.topics.is_empty() {
            return Err(invalid("topics", "must list at least one topic"));
        }
        for (index, topic) in self.topics.iter().enumerate() {
            if topic.name.trim().is_empty() {
                return Err(invalid(
                    format!("topics[{index}].name"),
                    "must not be empty",
                ));
            }
            if topic.name == self.dead_letter_topic {
                return Err(invalid(
                    "dead_letter_topic",
                    "must differ from the topics read",
                ));
            }
        }
        for reserved in ["group.id", "enable.auto.commit", "enable.auto.offset.store"] {
            if self.properties.contains_key(reserved) {
                return Err(invalid(
                    format!("properties.\"{reserved}\""),
                    "is set by Tidewatch (offsets are committed only after storage); remove it",
                ));
            }
        }
        if self.stall_after.is_zero() {
            return Err(invalid("stall_after", "must be positive"));
        }
        connection.properties = self.properties.into_iter().collect();
        Ok(KafkaSettings {
            connection,
            group_id: self.group_id,
            topics: self
                .topics
                .into_iter()
                .map(|topic| TopicSpec {
                    name: topic.name,
                    kind: topic.kind,
                    encoding: topic.encoding,
                })
                .collect(),
            dead_letter_topic: self.dead_letter_topic,
            dead_letter_max_bytes: self.dead_letter_max_bytes,
            stall_after: self.stall_after,
        })
    }
}

/// Validated `[windows]`.
#[derive(Debug, Clone)]
pub struct WindowSettings {
    engine: EngineSettings,
    checkpoint_interval: Duration,
    idle_close_after: Option<Duration>,
    sample_retention: Duration,
}

impl WindowSettings {
    /// The engine's settings.
    pub fn engine(&self) -> &EngineSettings {
        &self.engine
    }

    /// How often to checkpoint, commit and finalize closed windows.
    pub fn checkpoint_interval(&self) -> Duration {
        self.checkpoint_interval
    }

    /// Close every window when no event arrived for this long (`None`: never).
    pub fn idle_close_after(&self) -> Option<Duration> {
        self.idle_close_after
    }

    /// How long the training sample is kept.
    pub fn sample_retention(&self) -> Duration {
        self.sample_retention
    }
}

impl RawWindows {
    /// Validates the section.
    pub fn validate(self) -> Result<WindowSettings, InvalidSetting> {
        let size_ms = self.size.as_millis() as i64;
        if !(60_000..=86_400_000).contains(&size_ms) || size_ms % 1000 != 0 {
            return Err(invalid("size", "must be whole seconds between 1m and 1d"));
        }
        let window_size =
            WindowSize::from_millis(size_ms).map_err(|e| invalid("size", e.to_string()))?;
        let range_size = std::num::NonZeroU64::new(self.range_size)
            .ok_or_else(|| invalid("range_size", "must be at least 1"))?;
        let max_groups = std::num::NonZeroUsize::new(self.max_groups)
            .ok_or_else(|| invalid("max_groups", "must be at least 1"))?;
        if self.checkpoint_interval.is_zero() {
            return Err(invalid("checkpoint_interval", "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Err(invalid("sample_rate", "must be in [0, 1]"));
        }
        if self.sample_retention < Duration::from_secs(3600) {
            return Err(invalid("sample_retention", "must be at least 1h"));
        }
        Ok(WindowSettings {
            engine: EngineSettings::new(window_size)
                .with_allowed_lateness(self.allowed_lateness)
                .with_range_size(range_size)
                .with_max_groups(max_groups)
                .with_join(self.join_window, self.max_pending_predictions)
                .with_max_pending_labels(self.max_pending_labels)
                .with_durable_join(self.durable_join)
                .with_max_future_skew(self.max_future_skew)
                .with_sample(self.sample_rate, self.max_samples_per_range),
            checkpoint_interval: self.checkpoint_interval,
            sample_retention: self.sample_retention,
            idle_close_after: (!self.idle_close_after.is_zero()).then_some(self.idle_close_after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(text: &str) -> Result<KafkaSettings, InvalidSetting> {
        toml::from_str::<RawKafka>(text).unwrap().validate()
    }

    #[test]
    fn kafka_settings_are_checked_once() {
        let settings =
            kafka("brokers = \"b:9092\"\ntopics = [{ name = \"p\", kind = \"prediction\" }]")
                .unwrap();
        assert_eq!(settings.connection().brokers(), "b:9092");
        assert_eq!(settings.group_id(), "tidewatch");
        assert_eq!(settings.stall_after(), Duration::from_secs(60));
        let error = kafka("brokers = \" \"\ntopics = []").unwrap_err();
        assert_eq!(error.key, "brokers");
        let error = kafka("brokers = \"b\"\ntopics = []").unwrap_err();
        assert_eq!(error.key, "topics");
        let error = kafka(
            "brokers = \"b\"\ndead_letter_topic = \"p\"\ntopics = [{ name = \"p\", kind = \"prediction\" }]",
        )
        .unwrap_err();
        assert_eq!(error.key, "dead_letter_topic");
        assert!(BrokerConnection::new("").is_err());
    }

    #[test]
    fn window_settings_are_checked_once() {
        let windows = RawWindows::default().validate().unwrap();
        assert_eq!(windows.engine().window_size.millis(), 3_600_000);
        assert_eq!(windows.idle_close_after(), Some(Duration::from_secs(600)));
        let error = toml::from_str::<RawWindows>("size = \"30s\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(error.key, "size");
        let never = toml::from_str::<RawWindows>("idle_close_after = \"0s\"")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(never.idle_close_after(), None);
    }
}
