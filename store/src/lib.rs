//! # store — where Tidewatch keeps windows, sketches and references
//!
//! One API, [`Store`], over two backends:
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
//! ## Tables
//! | table | one row per | version (highest wins) |
//! |---|---|---|
//! | `window_partials` | (series, window, source, offset range start) | `range_end` |
//! | `window_sketches` | (series, window): the merged sketch | `computed_at` |
//! | `window_metrics` | (series, window): counts, moments, quantiles, drift | `computed_at` |
//! | `reference_profiles` | (model, version) | `created_at` |
//! | `alerts` | notification (alert id, status, window) | `created_at` |
//! | `alert_deliveries` | (notification, channel): the outbox | `updated_at` |
//! | `alert_progress` | model: the latest window whose alerts are recorded | `window_start` |
//! | `range_fingerprints` | (partition, incarnation, offset range start): the first message read there | none (rows of one key are equal) |
//!
//! A *series* is (model, model_version, segment, feature). `window_partials`
//! is the ingest checkpoint: each consumer writes, per Kafka partition and
//! per fixed range of offsets, the sketches of what it read in that range.
//! Re-reading a range after a crash rewrites the same rows with the same or a
//! larger `range_end`, so replays never double count (see the `ingest` crate).
//!
//! Calls into SQLite run on tokio's blocking pool; none blocks the runtime.

pub mod clickhouse_store;
pub mod embedded;
mod rows;

use detectors::{FeatureWindowMetrics, ReferenceProfile, SeriesKey};

pub use rows::MetricsRow;

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
    /// When it was computed, ms (the row's version).
    pub computed_at: u64,
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
    /// When it was computed, ms (the row's version).
    pub computed_at: u64,
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

/// One alert notification (firing, repeat or resolved), as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    /// Stable id of the alert episode.
    pub id: String,
    /// `firing` or `resolved`.
    pub status: String,
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
    /// `info`, `warning` or `critical`.
    pub severity: String,
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
    /// Notification status (`firing` / `resolved`).
    pub status: String,
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

/// The store, ClickHouse or embedded. One per process, cloned rarely, so
/// the ClickHouse client is boxed only to keep the enum small.
#[derive(Clone)]
pub enum Store {
    /// A ClickHouse server.
    ClickHouse(Box<clickhouse_store::ClickHouseStore>),
    /// A local SQLite file.
    Embedded(embedded::EmbeddedStore),
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
    /// Records range fingerprints (idempotent).
    pub async fn write_range_fingerprints(&self, rows: Vec<RangeFingerprint>) -> Result<()> {
        match self {
            Store::ClickHouse(store) => store.write_range_fingerprints(rows).await,
            Store::Embedded(store) => store.write_range_fingerprints(rows).await,
        }
    }

    /// The fingerprint of a range of an incarnation of a partition, if recorded.
    pub async fn range_fingerprint(
        &self,
        partition: &str,
        incarnation: u32,
        range_start: u64,
    ) -> Result<Option<RangeFingerprint>> {
        match self {
            Store::ClickHouse(store) => {
                store
                    .range_fingerprint(partition, incarnation, range_start)
                    .await
            }
            Store::Embedded(store) => {
                store
                    .range_fingerprint(partition.to_owned(), incarnation, range_start)
                    .await
            }
        }
    }

    /// The latest incarnation of a partition with a recorded fingerprint.
    pub async fn latest_incarnation(&self, partition: &str) -> Result<Option<u32>> {
        match self {
            Store::ClickHouse(store) => store.latest_incarnation(partition).await,
            Store::Embedded(store) => store.latest_incarnation(partition.to_owned()).await,
        }
    }

    /// Writes checkpoint partials (idempotent per source range).
    pub async fn write_partials(&self, rows: Vec<PartialSketch>) -> Result<()> {
        match self {
            Store::ClickHouse(store) => store.write_partials(rows).await,
            Store::Embedded(store) => store.write_partials(rows).await,
        }
    }

    /// The latest partials of every series of `model` in the window starting at `window_start`.
    pub async fn partials_for_window(
        &self,
        model: &str,
        window_start: i64,
    ) -> Result<Vec<PartialSketch>> {
        match self {
            Store::ClickHouse(store) => store.partials_for_window(model, window_start).await,
            Store::Embedded(store) => {
                store
                    .partials_for_window(model.to_owned(), window_start)
                    .await
            }
        }
    }

    /// Every window start with partials for `model` in `[from_ms, to_ms)`.
    pub async fn partial_windows(&self, model: &str, from_ms: i64, to_ms: i64) -> Result<Vec<i64>> {
        match self {
            Store::ClickHouse(store) => store.partial_windows(model, from_ms, to_ms).await,
            Store::Embedded(store) => {
                store
                    .partial_windows(model.to_owned(), from_ms, to_ms)
                    .await
            }
        }
    }

    /// Writes the results of closed windows.
    pub async fn write_window_results(
        &self,
        metrics: Vec<WindowMetrics>,
        sketches: Vec<WindowSketch>,
    ) -> Result<()> {
        match self {
            Store::ClickHouse(store) => store.write_window_results(metrics, sketches).await,
            Store::Embedded(store) => store.write_window_results(metrics, sketches).await,
        }
    }

    /// Reads window metrics (latest computation of each).
    pub async fn window_metrics(&self, query: MetricsQuery) -> Result<Vec<WindowMetrics>> {
        match self {
            Store::ClickHouse(store) => store.window_metrics(&query).await,
            Store::Embedded(store) => store.window_metrics(query).await,
        }
    }

    /// Every model version with finalized windows, by model and version.
    pub async fn model_versions(&self) -> Result<Vec<ModelVersionSummary>> {
        match self {
            Store::ClickHouse(store) => store.model_versions().await,
            Store::Embedded(store) => store.model_versions().await,
        }
    }

    /// Appends pipeline statistics.
    pub async fn write_pipeline_stats(&self, rows: Vec<PipelineStats>) -> Result<()> {
        match self {
            Store::ClickHouse(store) => store.write_pipeline_stats(rows).await,
            Store::Embedded(store) => store.write_pipeline_stats(rows).await,
        }
    }

    /// Pipeline statistics with `time` in `[from_ms, to_ms)`, by time.
    pub async fn pipeline_stats(&self, from_ms: i64, to_ms: i64) -> Result<Vec<PipelineStats>> {
        match self {
            Store::ClickHouse(store) => store.pipeline_stats(from_ms, to_ms).await,
            Store::Embedded(store) => store.pipeline_stats(from_ms, to_ms).await,
        }
    }

    /// Reads merged window sketches of `model` with windows starting in `[from_ms, to_ms)`.
    pub async fn window_sketches(
        &self,
        model: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<WindowSketch>> {
        match self {
            Store::ClickHouse(store) => store.window_sketches(model, from_ms, to_ms).await,
            Store::Embedded(store) => {
                store
                    .window_sketches(model.to_owned(), from_ms, to_ms)
                    .await
            }
        }
    }

    /// Stores a reference profile (replacing the model version's previous one).
    pub async fn put_reference(&self, profile: &ReferenceProfile, created_at: u64) -> Result<()> {
        match self {
            Store::ClickHouse(store) => store.put_reference(profile, created_at).await,
            Store::Embedded(store) => store.put_reference(profile.clone(), created_at).await,
        }
    }

    /// The reference profile of a model version.
    pub async fn reference(
        &self,
        model: &str,
        model_version: &str,
    ) -> Result<Option<ReferenceProfile>> {
        match self {
            Store::ClickHouse(store) => store.reference(model, model_version).await,
            Store::Embedded(store) => {
                store
                    .reference(model.to_owned(), model_version.to_owned())
                    .await
            }
        }
    }

    /// Every stored reference profile's header.
    pub async fn references(&self) -> Result<Vec<ReferenceSummary>> {
        match self {
            Store::ClickHouse(store) => store.references().await,
            Store::Embedded(store) => store.references().await,
        }
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
                    status: alert.status.clone(),
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
        match self {
            Store::ClickHouse(store) => store.record_alerts(records, deliveries).await,
            Store::Embedded(store) => store.record_alerts(records, deliveries).await,
        }
    }

    /// The start of the latest window of `model` whose alert notifications
    /// are all recorded (`None` before the first).
    pub async fn alert_progress(&self, model: &str) -> Result<Option<i64>> {
        match self {
            Store::ClickHouse(store) => store.alert_progress(model).await,
            Store::Embedded(store) => store.alert_progress(model.to_owned()).await,
        }
    }

    /// Notes that every notification raised up to the window starting at
    /// `window_start` of `model` is recorded (the progress only moves forward).
    pub async fn record_alert_progress(&self, model: &str, window_start: i64) -> Result<()> {
        match self {
            Store::ClickHouse(store) => store.record_alert_progress(model, window_start).await,
            Store::Embedded(store) => {
                store
                    .record_alert_progress(model.to_owned(), window_start)
                    .await
            }
        }
    }

    /// Notifications of `model` (all when `None`), newest first, at most `limit`.
    pub async fn alerts(&self, model: Option<&str>, limit: u64) -> Result<Vec<AlertRecord>> {
        match self {
            Store::ClickHouse(store) => store.alerts(model, limit).await,
            Store::Embedded(store) => store.alerts(model.map(str::to_owned), limit).await,
        }
    }

    /// Every notification of alert `id` (firing, repeats, resolved).
    pub async fn alert_notifications(&self, id: &str) -> Result<Vec<AlertRecord>> {
        match self {
            Store::ClickHouse(store) => store.alerts_by_id(id).await,
            Store::Embedded(store) => store.alerts_by_id(id.to_owned()).await,
        }
    }

    /// One notification: alert `id`, `status`, `window_start` (ms).
    pub async fn alert_notification(
        &self,
        id: &str,
        status: &str,
        window_start: i64,
    ) -> Result<Option<AlertRecord>> {
        let candidates = self.alert_notifications(id).await?;
        Ok(candidates
            .into_iter()
            .find(|alert| alert.status == status && alert.window_start == window_start))
    }

    /// Every delivery of alert `alert_id` (each notification × channel, in
    /// its latest state), by window, status and channel.
    pub async fn deliveries(&self, alert_id: &str) -> Result<Vec<Delivery>> {
        match self {
            Store::ClickHouse(store) => store.deliveries(alert_id).await,
            Store::Embedded(store) => store.deliveries(alert_id.to_owned()).await,
        }
    }

    /// Pending deliveries due at `now` (ms), oldest first, at most `limit`.
    pub async fn due_deliveries(&self, now: u64, limit: u64) -> Result<Vec<Delivery>> {
        match self {
            Store::ClickHouse(store) => store.due_deliveries(now, limit).await,
            Store::Embedded(store) => store.due_deliveries(now, limit).await,
        }
    }

    /// Writes a delivery's new state (versioned by `updated_at`).
    pub async fn update_delivery(&self, delivery: Delivery) -> Result<()> {
        match self {
            Store::ClickHouse(store) => store.update_deliveries(vec![delivery]).await,
            Store::Embedded(store) => store.update_deliveries(vec![delivery]).await,
        }
    }
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
