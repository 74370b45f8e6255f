//! The one trait every store backend implements.
//!
//! A backend is a module with a type implementing [`Backend`], its tables
//! taken from [`crate::rows::TABLES`] (see [`crate::schema`]), one variant in
//! [`crate::config::StoreConfig`] that opens it, and one line in
//! `store/tests/` that runs the conformance suite against it.

use async_trait::async_trait;
use detectors::ReferenceProfile;

use crate::{
    AlertRecord, Delivery, JoinLabel, JoinPrediction, LateMatch, MetricsQuery, ModelVersionSummary,
    PartialSketch, PipelineStats, RangeFingerprint, ReferenceSummary, Result, SampledLabel,
    SampledPrediction, SourceProgress, VersionEvent, WindowMetrics, WindowSketch,
};

/// A store backend. Every write is idempotent as the table's versioning
/// says ([`crate::schema::Versioning`]); every error says whether a retry
/// may help ([`crate::Error::is_retryable`]).
#[async_trait]
pub trait Backend: Send + Sync {
    /// Short name for logs (`clickhouse`, `sqlite`).
    fn name(&self) -> &'static str;

    /// The columns a table has in the database, in its order (to compare
    /// the backends' schemas, and for migrations).
    async fn stored_columns(&self, table: &str) -> Result<Vec<String>>;

    /// Writes checkpoint partials (idempotent per source range).
    async fn write_partials(&self, rows: Vec<PartialSketch>) -> Result<()>;

    /// The latest partials of every series of `model` in the window starting at `window_start`.
    async fn partials_for_window(
        &self,
        model: &str,
        window_start: i64,
    ) -> Result<Vec<PartialSketch>>;

    /// Every window start with partials for `model` in `[from_ms, to_ms)`.
    async fn partial_windows(&self, model: &str, from_ms: i64, to_ms: i64) -> Result<Vec<i64>>;

    /// Writes the results of closed windows.
    async fn write_window_results(
        &self,
        metrics: Vec<WindowMetrics>,
        sketches: Vec<WindowSketch>,
    ) -> Result<()>;

    /// Reads window metrics (latest computation of each).
    async fn window_metrics(&self, query: MetricsQuery) -> Result<Vec<WindowMetrics>>;

    /// Every model version with finalized windows, by model and version.
    async fn model_versions(&self) -> Result<Vec<ModelVersionSummary>>;

    /// Reads merged window sketches of `model` with windows starting in `[from_ms, to_ms)`.
    async fn window_sketches(
        &self,
        model: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<WindowSketch>>;

    /// Appends pipeline statistics.
    async fn write_pipeline_stats(&self, rows: Vec<PipelineStats>) -> Result<()>;

    /// Pipeline statistics with `time` in `[from_ms, to_ms)`, by time.
    async fn pipeline_stats(&self, from_ms: i64, to_ms: i64) -> Result<Vec<PipelineStats>>;

    /// Stores a reference profile (replacing the model version's previous one).
    async fn put_reference(&self, profile: &ReferenceProfile, created_at: u64) -> Result<()>;

    /// The reference profile of a model version.
    async fn reference(&self, model: &str, model_version: &str)
        -> Result<Option<ReferenceProfile>>;

    /// Every stored reference profile's header.
    async fn references(&self) -> Result<Vec<ReferenceSummary>>;

    /// Records notifications and their pending deliveries; a delivery
    /// already recorded keeps its state.
    async fn write_alerts(&self, alerts: Vec<AlertRecord>, deliveries: Vec<Delivery>)
        -> Result<()>;

    /// Notifications of `model` (all when `None`), newest first, at most `limit`.
    async fn alerts(&self, model: Option<&str>, limit: u64) -> Result<Vec<AlertRecord>>;

    /// Every notification of alert `id` (firing, repeats, resolved).
    async fn alert_notifications(&self, id: &str) -> Result<Vec<AlertRecord>>;

    /// The start of the latest window of `model` whose alert notifications
    /// are all recorded (`None` before the first).
    async fn alert_progress(&self, model: &str) -> Result<Option<i64>>;

    /// Notes that every notification raised up to the window starting at
    /// `window_start` of `model` is recorded (the progress only moves forward).
    async fn record_alert_progress(&self, model: &str, window_start: i64) -> Result<()>;

    /// Every delivery of alert `alert_id` (each notification × channel, in
    /// its latest state), by window, status and channel.
    async fn deliveries(&self, alert_id: &str) -> Result<Vec<Delivery>>;

    /// Pending deliveries due at `now` (ms), oldest first, at most `limit`.
    async fn due_deliveries(&self, now: u64, limit: u64) -> Result<Vec<Delivery>>;

    /// Writes deliveries' new states (versioned by `updated_at`).
    async fn update_deliveries(&self, deliveries: Vec<Delivery>) -> Result<()>;

    /// Records range fingerprints (idempotent).
    async fn write_range_fingerprints(&self, rows: Vec<RangeFingerprint>) -> Result<()>;

    /// The fingerprint of a range of an incarnation of a partition, if recorded.
    async fn range_fingerprint(
        &self,
        partition: &str,
        incarnation: u32,
        range_start: u64,
    ) -> Result<Option<RangeFingerprint>>;

    /// The latest incarnation of a partition with a recorded fingerprint.
    async fn latest_incarnation(&self, partition: &str) -> Result<Option<u32>>;

    /// Records sources' progress (the highest `next_offset` per source wins).
    async fn write_source_progress(&self, rows: Vec<SourceProgress>) -> Result<()>;

    /// The latest progress recorded for `source`.
    async fn source_progress(&self, source: &str) -> Result<Option<SourceProgress>>;

    /// Stores predictions for the durable join (idempotent: a prediction
    /// stored twice is one row). Taken by reference: a checkpoint holds up
    /// to two ranges of them per partition, and a failed write is retried
    /// with the same rows.
    async fn write_join_predictions(&self, rows: &[JoinPrediction]) -> Result<()>;

    /// The stored predictions of `model` under any of `keys` (every
    /// version's), in key order.
    async fn join_predictions(&self, model: &str, keys: &[String]) -> Result<Vec<JoinPrediction>>;

    /// Stores labels whose prediction was not found (idempotent by source
    /// and offset).
    async fn write_pending_labels(&self, rows: Vec<JoinLabel>) -> Result<()>;

    /// The pending labels of `source` (those not yet expired), by offset.
    async fn pending_labels(&self, source: &str) -> Result<Vec<JoinLabel>>;

    /// Stores pending labels matched later (idempotent by label and
    /// prediction version).
    async fn write_late_matches(&self, rows: Vec<LateMatch>) -> Result<()>;

    /// The late matches whose prediction is in `model`'s window starting
    /// at `window_start`.
    async fn late_matches_for_window(
        &self,
        model: &str,
        window_start: i64,
    ) -> Result<Vec<LateMatch>>;

    /// The late matches of labels read from `source` whose event time is
    /// `from_ms` or later.
    async fn late_matches_of_source(&self, source: &str, from_ms: i64) -> Result<Vec<LateMatch>>;

    /// Deletes pending predictions and labels whose event time is before
    /// `before_ms` (they can no longer join; late matches stay, as the
    /// windows they belong to).
    async fn expire_join_state(&self, before_ms: i64) -> Result<()>;

    /// Records model-version events from the registry (idempotent: an
    /// event recorded twice is one row).
    async fn write_version_events(&self, events: Vec<VersionEvent>) -> Result<()>;

    /// The newest `limit` version events of `model`, oldest first (by
    /// time, then registry sequence).
    async fn version_events(&self, model: &str, limit: u64) -> Result<Vec<VersionEvent>>;

    /// Records sampled predictions and labels (idempotent per key).
    async fn write_samples(
        &self,
        predictions: Vec<SampledPrediction>,
        labels: Vec<SampledLabel>,
    ) -> Result<()>;

    /// Sampled predictions of `model` (of `model_version` when given) with
    /// windows starting in `[from_ms, to_ms)`, by window then prediction id,
    /// at most `limit`.
    async fn sampled_predictions(
        &self,
        model: &str,
        model_version: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        limit: u64,
    ) -> Result<Vec<SampledPrediction>>;

    /// The labels of those of `prediction_ids` of `model` that have one.
    async fn sampled_labels(
        &self,
        model: &str,
        prediction_ids: &[String],
    ) -> Result<Vec<SampledLabel>>;

    /// Deletes sampled predictions with windows starting before
    /// `before_ms`, and labels older than it (retention).
    async fn delete_samples_before(&self, before_ms: i64) -> Result<()>;

    /// The start of the newest window with sampled predictions, ms.
    async fn latest_sample_window(&self) -> Result<Option<i64>>;
}
