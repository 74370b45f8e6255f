//! # store — where Tidewatch keeps windows, sketches and references
//!
//! One API, [`Store`] (a handle to a [`Backend`]), over two backends:
//! - [`clickhouse_store::ClickHouseStore`]: the production store. Tables are
//!   created at start-up (`CREATE TABLE IF NOT EXISTS`), in SQL that runs on
//!   ClickHouse 18.16 and on current releases alike: `ReplacingMergeTree`
//!   with an explicit version column for idempotency, read back with `FINAL`;
//!   daily partitions (`toYYYYMMDD(window_start)`) for retention; no `Map`,
//!   `DateTime64`, `TTL` or codecs. The client's schema validation is off, so
//!   every `SELECT` casts its columns explicitly and every row struct has a
//!   round-trip test against a real server.
//! - [`embedded::EmbeddedStore`]: SQLite (bundled), used when no ClickHouse
//!   is configured (the demo, a laptop). Same tables, same semantics, upserts
//!   that keep the highest version.
//!
//! ## Layout
//! | module | what it holds |
//! |---|---|
//! | [`config`] | `[store]`: raw section, validation, [`config::StoreConfig::open`] (where backends are registered) |
//! | [`backend`] | the [`Backend`] trait both backends implement |
//! | [`schema`] | how a table is declared once: column types, DDL, migrations, statements |
//! | `rows` | every table's row struct (declared with `schema::table!`) and its conversions |
//! | [`clickhouse_store`], [`embedded`] | the two backends |
//!
//! Adding a backend: a module implementing [`Backend`] over `rows::TABLES`,
//! a variant in [`config`], and a line in `store/tests/` running the
//! conformance suite (`store/tests/common`) against it.
//!
//! ## Tables
//! | table | one row per | version (highest wins) |
//! |---|---|---|
//! | `window_partials` | (series, window, source, offset range start) | `range_end` |
//! | `window_sketches` | (series, window): the merged sketch | `computed_at` (the result's version, derived from its partials) |
//! | `window_metrics` | (series, window): counts, moments, quantiles, drift | `computed_at` (as `window_sketches`) |
//! | `reference_profiles` | (model, version) | `created_at` |
//! | `alerts` | notification (alert id, status, window) | `created_at` |
//! | `alert_deliveries` | (notification, channel): the outbox | `updated_at` |
//! | `alert_progress` | model: the latest window whose alerts are recorded | `window_start` |
//! | `source_progress` | source: the windows it recorded into that are not finalized since its last commit | `next_offset` |
//! | `range_fingerprints` | (partition, incarnation, offset range start): the first message read there | none (rows of one key are equal) |
//! | `sample_predictions` | (model, version, prediction id): a sampled prediction's features and output | none (rows of one key are equal) |
//! | `sample_labels` | (model, prediction id): the label of a sampled prediction id | none (rows of one key are equal) |
//! | `pending_predictions` | (model, join key, version): a prediction waiting for its label (the durable join) | none (rows of one key are equal) |
//! | `pending_labels` | (source, offset): a label whose prediction was not found when its range was stored | none (rows of one key are equal) |
//! | `late_matches` | (model, window, label source and offset, version): a pending label joined later | none (rows of one key are equal) |
//! | `version_events` | (model, time, registry sequence): a model version registered, its reference attached, an alias set or deleted | none (rows of one key are equal) |
//!
//! A *series* is (model, model_version, segment, feature). `window_partials`
//! is the ingest checkpoint: each consumer writes, per Kafka partition and
//! per fixed range of offsets, the sketches of what it read in that range.
//! Re-reading a range after a crash rewrites the same rows with the same or a
//! larger `range_end`, so replays never double count (see the `ingest` crate).
//!
//! Calls into SQLite run on tokio's blocking pool; none blocks the runtime.

pub mod backend;
pub mod clickhouse_store;
pub mod config;
pub mod embedded;
mod rows;
pub mod schema;

use std::sync::Arc;

use detectors::{FeatureWindowMetrics, SeriesKey};

pub use backend::Backend;

/// Store errors. [`Error::is_retryable`] tells whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ClickHouse answered with an error or could not be reached.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// SQLite failed.
    #[error("embedded store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Stored data could not be decoded (a bug or a corrupted row).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A blocking task panicked or was cancelled.
    #[error("embedded store task failed: {0}")]
    Task(String),
    /// The store configuration is invalid.
    #[error("store configuration: {0}")]
    Config(String),
}

impl Error {
    /// True for failures of the server or network, which a retry may fix.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::ClickHouse(clickhouse::error::Error::Network(_))
                | Error::ClickHouse(clickhouse::error::Error::TimedOut)
                | Error::Sqlite(rusqlite::Error::SqliteFailure(_, _))
        )
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Sketches of one series read from one range of a source (a Kafka
/// partition, a replayed file), written at every checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialSketch {
    /// Where the events came from: `topic/partition` or `file:NAME`.
    pub source: String,
    /// First offset of the fixed offset range the sketch covers.
    pub range_start: u64,
    /// One past the last offset read in the range (the row's version).
    pub range_end: u64,
    /// Series and window.
    pub key: SeriesKey,
    /// `FeatureSketch::to_bytes`.
    pub sketch: Vec<u8>,
}

/// The merged sketch of a closed window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSketch {
    /// Series and window.
    pub key: SeriesKey,
    /// Exclusive window end, ms.
    pub window_end: i64,
    /// `FeatureSketch::to_bytes`.
    pub sketch: Vec<u8>,
    /// The row's version: derived from the partials it was merged from
    /// (see `ingest::finalize::result_version`), so that the result of the
    /// larger set of partials wins whoever writes last.
    pub version: u64,
}

/// The metrics of a closed window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowMetrics {
    /// Series and window.
    pub key: SeriesKey,
    /// Exclusive window end, ms.
    pub window_end: i64,
    /// The numbers.
    pub metrics: FeatureWindowMetrics,
    /// `source` of the reference profile compared against, if any.
    pub reference_source: Option<String>,
    /// The row's version, as [`WindowSketch::version`].
    pub version: u64,
}

/// Which window metrics to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsQuery {
    /// Only this model.
    pub model: Option<String>,
    /// Only this model version.
    pub model_version: Option<String>,
    /// Only this segment.
    pub segment: Option<String>,
    /// Only this series.
    pub feature: Option<String>,
    /// Windows starting at or after this time, ms.
    pub from_ms: Option<i64>,
    /// Windows starting before this time, ms.
    pub to_ms: Option<i64>,
    /// At most this many rows (newest windows first are *not* implied; rows
    /// are ordered by model, version, segment, feature, window).
    pub limit: Option<u64>,
    /// Rows skipped first, in that order (pagination).
    pub offset: u64,
}

/// What one consumer instance did with one topic over one interval (the
/// `pipeline_stats` table behind the Operations dashboard).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineStats {
    /// End of the interval, ms (stored with second precision).
    pub time: i64,
    /// The consumer instance (host and process).
    pub instance: String,
    /// Topic.
    pub topic: String,
    /// Messages read in the interval.
    pub consumed: u64,
    /// Messages dead-lettered in the interval.
    pub dead_lettered: u64,
    /// Events dropped as late in the interval.
    pub late: u64,
    /// Lag at the end of the interval (messages).
    pub lag: i64,
}

/// What the store holds for one model version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelVersionSummary {
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Start of its first finalized window, ms.
    pub first_window: i64,
    /// Start of its last finalized window, ms.
    pub last_window: i64,
    /// Start of its last finalized window with predictions or feature rows
    /// (not only late labels), ms; `None` if it has none.
    pub last_input_window: Option<i64>,
    /// Finalized windows.
    pub windows: u64,
}

/// A stored reference profile's header.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceSummary {
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Where it came from.
    pub source: String,
    /// Rows it was built from.
    pub row_count: u64,
    /// When it was stored, ms.
    pub created_at: u64,
}

/// What a recorded notification is (the `status` column of `alerts` and
/// `alert_deliveries`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    /// The alert fires (or, with `repeat`, still fires).
    Firing,
    /// The alert resolved.
    Resolved,
    /// A retraining request for a firing alert.
    Retrain,
}

impl NotificationStatus {
    /// `firing`, `resolved` or `retrain` (as stored and sent).
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Firing => "firing",
            NotificationStatus::Resolved => "resolved",
            NotificationStatus::Retrain => "retrain",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self> {
        match text {
            "firing" => Ok(NotificationStatus::Firing),
            "resolved" => Ok(NotificationStatus::Resolved),
            "retrain" => Ok(NotificationStatus::Retrain),
            other => Err(Error::Corrupt(format!(
                "unknown notification status `{other}`"
            ))),
        }
    }
}

impl std::fmt::Display for NotificationStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// How urgent an alert is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Info,
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// `info`, `warning` or `critical` (as stored and sent).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self> {
        match text {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            other => Err(Error::Corrupt(format!("unknown severity `{other}`"))),
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One alert notification (firing, repeat or resolved), as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    /// Stable id of the alert episode.
    pub id: String,
    /// What the notification is.
    pub status: NotificationStatus,
    /// Start of the window that caused the notification, ms.
    pub window_start: i64,
    /// End of that window, ms.
    pub window_end: i64,
    /// Rule name.
    pub rule: String,
    /// Model.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Segment.
    pub segment: String,
    /// How urgent.
    pub severity: Severity,
    /// A reminder of an alert already firing.
    pub repeat: bool,
    /// One line for humans.
    pub summary: String,
    /// The whole notification as JSON (what channels are sent).
    pub payload: String,
    /// When it was recorded, ms.
    pub created_at: u64,
}

/// State of one notification's delivery to one channel (the outbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet; due at `next_attempt_at`.
    Pending,
    /// Delivered.
    Sent,
    /// Given up after the retry budget.
    Failed,
}

impl DeliveryState {
    /// `pending`, `sent` or `failed` (as stored).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Sent => "sent",
            DeliveryState::Failed => "failed",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self> {
        match text {
            "pending" => Ok(DeliveryState::Pending),
            "sent" => Ok(DeliveryState::Sent),
            "failed" => Ok(DeliveryState::Failed),
            other => Err(Error::Corrupt(format!("unknown delivery state `{other}`"))),
        }
    }
}

/// One notification for one channel, in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Alert id.
    pub alert_id: String,
    /// Notification status.
    pub status: NotificationStatus,
    /// Notification window start, ms (with id and status: the notification).
    pub window_start: i64,
    /// Channel name.
    pub channel: String,
    /// Where the delivery stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due, ms.
    pub next_attempt_at: u64,
    /// The last failure, empty if none.
    pub last_error: String,
    /// When this state was written, ms (the row's version).
    pub updated_at: u64,
}

/// A sampled prediction, kept for retraining and for comparing versions
/// on the same requests (the `sample_predictions` table; see the `ingest`
/// crate for how ids are sampled).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledPrediction {
    pub model: String,
    pub model_version: String,
    pub prediction_id: String,
    /// Start of the window the prediction falls in, ms.
    pub window_start: i64,
    /// Its event time, ms.
    pub time_ms: i64,
    /// The model's features as a JSON object (name → number, string or
    /// null), as logged.
    pub features: String,
    /// The score (regression value, or probability of the positive class).
    pub score: Option<f64>,
    /// The predicted class (empty when none).
    pub class: String,
}

/// The label of a sampled prediction id (the `sample_labels` table).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledLabel {
    pub model: String,
    pub prediction_id: String,
    /// The actual's event time, ms.
    pub time_ms: i64,
    /// The label as text (a class, or a number written as text).
    pub label: String,
    /// The label as a number, when it is one.
    pub value: Option<f64>,
}

/// What happened to a model version in the registry (the `kind` column
/// of `version_events`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum VersionEventKind {
    /// The version was created.
    Registered,
    /// Its reference profile was attached.
    ReferenceAttached,
    /// An alias was set on it (or moved to it).
    AliasSet,
    /// An alias was deleted (the event names no version).
    AliasDeleted,
    /// The reference trainer answered a retrain request with this version
    /// (`detail`: the acknowledgement's data).
    Trained,
    /// The promotion policy decided on this version as challenger
    /// (`detail`: the decision and its evidence).
    PromotionDecided,
}

impl VersionEventKind {
    /// Every kind.
    pub const ALL: [VersionEventKind; 6] = [
        VersionEventKind::Registered,
        VersionEventKind::ReferenceAttached,
        VersionEventKind::AliasSet,
        VersionEventKind::AliasDeleted,
        VersionEventKind::Trained,
        VersionEventKind::PromotionDecided,
    ];

    /// `registered`, `reference_attached`, `alias_set`, `alias_deleted`,
    /// `trained` or `promotion_decided` (as stored).
    pub fn as_str(self) -> &'static str {
        match self {
            VersionEventKind::Registered => "registered",
            VersionEventKind::ReferenceAttached => "reference_attached",
            VersionEventKind::AliasSet => "alias_set",
            VersionEventKind::AliasDeleted => "alias_deleted",
            VersionEventKind::Trained => "trained",
            VersionEventKind::PromotionDecided => "promotion_decided",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| Error::Corrupt(format!("unknown version event kind `{text}`")))
    }
}

/// A change to one model version: a registry event as `tidewatch run`
/// records it, or a training or promotion decision recorded by the
/// component that made it (the `version_events` table).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionEvent {
    /// Model name.
    pub model: String,
    /// Model version; empty for [`VersionEventKind::AliasDeleted`] (the
    /// registry's event names only the alias).
    pub model_version: String,
    /// What happened.
    pub kind: VersionEventKind,
    /// The alias set or deleted; empty for other kinds.
    pub alias: String,
    /// When the registry made the change, ms.
    pub time_ms: i64,
    /// The registry's sequence number of the change (the CloudEvent id);
    /// for trainings and decisions, a hash of their event id (see
    /// [`VersionEvent::sequence_of`]).
    pub sequence: u64,
    /// The event's `data` as JSON (source, run id, tags, reference source).
    pub detail: String,
}

impl VersionEvent {
    /// The `sequence` of an event that is not the registry's: a stable
    /// hash of its id, above the registry's sequence numbers' range
    /// (2⁶³ and up), so it never collides with one.
    pub fn sequence_of(event_id: &str) -> u64 {
        (1u64 << 63) | (xxhash_rust::xxh3::xxh3_64(event_id.as_bytes()) >> 1)
    }
}

/// The store: a cheap-to-clone handle to one [`Backend`], whose methods it
/// exposes (it dereferences to `dyn Backend`), plus the few operations
/// built on top of them.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Store")
            .field("backend", &self.backend.name())
            .finish()
    }
}

/// A window of a model, named in a source's progress.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WindowRef {
    /// Model name.
    pub model: String,
    /// Window start, ms.
    pub window_start: i64,
}

/// What a source's reader left for its next owner with a commit: the
/// windows the source recorded into that are not finalized since (the
/// `source_progress` table; see the `ingest` crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceProgress {
    /// The source (`topic/partition`, with its incarnation).
    pub source: String,
    /// The offset committed with it (the row's version).
    pub next_offset: u64,
    /// Windows still to finalize, oldest first.
    pub unfinalized: Vec<WindowRef>,
}

/// A prediction as the durable join keeps it until its label arrives (the
/// `pending_predictions` table): what the quality series need of it.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinPrediction {
    /// Model name.
    pub model: String,
    /// The join key: a hash of (model, prediction id), 32 hex digits.
    pub key: String,
    /// Model version.
    pub model_version: String,
    /// Start of the prediction's window, ms.
    pub window_start: i64,
    /// The prediction's event time, ms.
    pub time_ms: i64,
    /// Segment labels of the prediction (`all`, `key=value`…).
    pub segments: Vec<String>,
    /// Score, if any.
    pub score: Option<f64>,
    /// Predicted class, if any.
    pub class: Option<String>,
}

/// A label's value.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinLabelValue {
    /// A numeric label (regression targets, 0/1).
    Number(f64),
    /// A class name.
    Class(String),
}

/// A label read at one offset of a source whose prediction was found
/// nowhere when its range was checkpointed (the `pending_labels` table):
/// the source's owner looks for the prediction again until it is found
/// or the label expires.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinLabel {
    /// The label's source (`topic/partition`, with its incarnation).
    pub source: String,
    /// Its offset there.
    pub offset: u64,
    /// Model name.
    pub model: String,
    /// The join key of its prediction id ([`JoinPrediction::key`]).
    pub key: String,
    /// The label's event time, ms.
    pub time_ms: i64,
    /// The label.
    pub value: JoinLabelValue,
}

/// A pending label matched with a prediction found later (the
/// `late_matches` table): added to the quality series of the
/// prediction's window when it is finalized.
#[derive(Debug, Clone, PartialEq)]
pub struct LateMatch {
    /// The label (its source and offset identify the row, with the
    /// prediction's version).
    pub label: JoinLabel,
    /// The prediction it joined.
    pub prediction: JoinPrediction,
}

/// The first message read in one offset range of one incarnation of a
/// Kafka partition: how the ingest tells a partition whose offsets were
/// reused (the topic recreated, the broker back empty) from the one it read
/// before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeFingerprint {
    /// `topic/partition`.
    pub partition: String,
    /// 1 for the partition as first read, then one more each time its
    /// offsets were found reused.
    pub incarnation: u32,
    /// Start of the offset range.
    pub range_start: u64,
    /// Offset of the first message read in the range.
    pub first_offset: u64,
    /// Hash of that message (timestamp and payload).
    pub fingerprint: u64,
}

impl Store {
    /// A store over `backend`.
    pub fn new(backend: impl Backend + 'static) -> Self {
        Self {
            backend: Arc::new(backend),
        }
    }

    /// An in-memory embedded store (tests, throw-away demos).
    pub fn in_memory() -> Result<Self> {
        Ok(Self::new(embedded::EmbeddedStore::in_memory()?))
    }

    /// Records notifications and, for each of their channels, a pending
    /// delivery due at `created_at` (idempotent: the same notification
    /// recorded twice is one row, and its deliveries keep their state only
    /// if they were written later).
    pub async fn record_alerts(&self, alerts: Vec<(AlertRecord, Vec<String>)>) -> Result<()> {
        let deliveries = alerts
            .iter()
            .flat_map(|(alert, channels)| {
                channels.iter().map(|channel| Delivery {
                    alert_id: alert.id.clone(),
                    status: alert.status,
                    window_start: alert.window_start,
                    channel: channel.clone(),
                    state: DeliveryState::Pending,
                    attempts: 0,
                    next_attempt_at: alert.created_at,
                    last_error: String::new(),
                    updated_at: alert.created_at,
                })
            })
            .collect::<Vec<_>>();
        let records = alerts
            .into_iter()
            .map(|(alert, _)| alert)
            .collect::<Vec<_>>();
        self.backend.write_alerts(records, deliveries).await
    }

    /// One notification: alert `id`, `status`, `window_start` (ms).
    pub async fn alert_notification(
        &self,
        id: &str,
        status: NotificationStatus,
        window_start: i64,
    ) -> Result<Option<AlertRecord>> {
        let candidates = self.backend.alert_notifications(id).await?;
        Ok(candidates
            .into_iter()
            .find(|alert| alert.status == status && alert.window_start == window_start))
    }

    /// Writes a delivery's new state (versioned by `updated_at`).
    pub async fn update_delivery(&self, delivery: Delivery) -> Result<()> {
        self.backend.update_deliveries(vec![delivery]).await
    }
}

/// Every table the store keeps, with its columns (both backends create
/// exactly these).
pub fn tables() -> &'static [schema::TableDef] {
    &rows::TABLES
}

/// Keeps the row with the highest version per key, in key order.
pub(crate) fn latest_by<T, K: Ord + Clone>(
    rows: Vec<T>,
    key: impl Fn(&T) -> K,
    version: impl Fn(&T) -> u64,
) -> Vec<T> {
    let mut latest: std::collections::BTreeMap<K, T> = std::collections::BTreeMap::new();
    for row in rows {
        let row_key = key(&row);
        match latest.get(&row_key) {
            Some(existing) if version(existing) >= version(&row) => {}
            _ => {
                latest.insert(row_key, row);
            }
        }
    }
    latest.into_values().collect()
}
