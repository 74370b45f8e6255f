//! The embedded backend: SQLite through `rusqlite` (bundled, so no system
//! library is needed).
//!
//! The same tables as ClickHouse, with primary keys instead of sorting keys;
//! an upsert replaces a row only when the new version is at least the stored
//! one, which gives `ReplacingMergeTree` semantics. Every call runs on
//! tokio's blocking pool behind one connection mutex (SQLite allows a single
//! writer anyway); WAL mode lets readers in other processes proceed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use detectors::ReferenceProfile;
use rusqlite::{params, Connection};

use crate::rows::{
    lower_bound_seconds, to_seconds, upper_bound_seconds, AlertProgressRow, AlertRow, DeliveryRow,
    FilterValue, JoinLabelRow, JoinPredictionRow, LateMatchRow, MetricsFilter, MetricsRow,
    PartialRow, PipelineStatsRow, RangeFingerprintRow, ReferenceRow, SampleLabelRow,
    SamplePredictionRow, SketchRow, SourceProgressRow, VersionEventRow, TABLES,
};
use crate::schema::{
    missing_columns, sqlite_create, sqlite_insert_or_ignore, sqlite_select, sqlite_upsert, Table,
};
use crate::{
    AlertRecord, Backend, Delivery, Error, JoinLabel, JoinPrediction, LateMatch, MetricsQuery,
    ModelVersionSummary, PartialSketch, PipelineStats, RangeFingerprint, ReferenceSummary, Result,
    SampledLabel, SampledPrediction, SourceProgress, VersionEvent, WindowMetrics, WindowSketch,
};

/// The columns of `table` in the file.
fn stored_columns(connection: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    connection
        .prepare("SELECT name FROM pragma_table_info(?1)")?
        .query_map([table], |row| row.get(0))?
        .collect()
}

/// Creates the tables and adds the columns an older file lacks.
fn migrate(connection: &Connection) -> Result<()> {
    for table in &TABLES {
        connection.execute_batch(&sqlite_create(table))?;
        let existing = stored_columns(connection, table.spec.name)?;
        for column in missing_columns(table, &existing)? {
            connection.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                table.spec.name,
                column.name,
                column.sql.sqlite()
            ))?;
        }
    }
    Ok(())
}

/// Writes `rows` with the table's upsert, in one transaction.
fn upsert<T: Table>(connection: &mut Connection, rows: &[T]) -> Result<()> {
    write_with::<T>(connection, &sqlite_upsert(&T::DEF), rows)
}

fn write_with<T: Table>(connection: &mut Connection, sql: &str, rows: &[T]) -> Result<()> {
    let transaction = connection.transaction()?;
    {
        let mut statement = transaction.prepare_cached(sql)?;
        for row in rows {
            statement.execute(rusqlite::params_from_iter(row.to_sqlite()))?;
        }
    }
    transaction.commit()?;
    Ok(())
}

/// Rows of `T` matching `condition` (with `?N` placeholders for `values`).
fn select<T: Table>(
    connection: &Connection,
    condition: &str,
    values: Vec<rusqlite::types::Value>,
) -> Result<Vec<T>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {} FROM {} WHERE {condition}",
        sqlite_select::<T>(),
        T::SPEC.name
    ))?;
    let rows = statement
        .query_map(rusqlite::params_from_iter(values), T::from_sqlite)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// A SQLite-backed store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    connection: Arc<Mutex<Connection>>,
}

/// How long a statement waits for a lock another connection holds on the
/// file before failing (retried by the callers like any store failure).
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl EmbeddedStore {
    /// Opens (creating if needed) the database file at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_owned();
        let connection = tokio::task::spawn_blocking(move || -> Result<Connection> {
            if let Some(parent) = path.parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        Error::Config(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
            }
            // Another process (or connection) may be opening or writing the
            // same file (`tidewatch windows` beside `tidewatch run`): wait
            // for its locks rather than fail. Switching to WAL and creating
            // the tables can answer "busy" without waiting, so the whole
            // opening is retried within the same bound.
            let started = std::time::Instant::now();
            loop {
                let attempt = (|| -> Result<Connection> {
                    let connection = Connection::open(&path)?;
                    connection.busy_timeout(BUSY_TIMEOUT)?;
                    connection.pragma_update(None, "journal_mode", "WAL")?;
                    connection.pragma_update(None, "synchronous", "NORMAL")?;
                    migrate(&connection)?;
                    Ok(connection)
                })();
                match attempt {
                    Err(Error::Sqlite(rusqlite::Error::SqliteFailure(failure, _)))
                        if failure.code == rusqlite::ErrorCode::DatabaseBusy
                            && started.elapsed() < BUSY_TIMEOUT =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    other => return other,
                }
            }
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// An in-memory database (tests, throw-away demos).
    pub fn in_memory() -> Result<Self> {
        let connection = Connection::open_in_memory()?;
        migrate(&connection)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let mut guard = connection
                .lock()
                .map_err(|_| Error::Task("embedded store mutex poisoned".into()))?;
            work(&mut guard)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }
}

#[async_trait]
impl Backend for EmbeddedStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn stored_columns(&self, table: &str) -> Result<Vec<String>> {
        let table = table.to_owned();
        self.with(move |connection| Ok(stored_columns(connection, &table)?))
            .await
    }

    async fn write_partials(&self, rows: Vec<PartialSketch>) -> Result<()> {
        let rows = rows
            .into_iter()
            .map(PartialRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        self.with(move |connection| upsert(connection, &rows)).await
    }

    async fn partials_for_window(
        &self,
        model: &str,
        window_start: i64,
    ) -> Result<Vec<PartialSketch>> {
        let values = vec![
            model.to_owned().into(),
            i64::from(to_seconds(window_start)?).into(),
        ];
        self.with(move |connection| {
            let rows: Vec<PartialRow> = select(
                connection,
                "model = ?1 AND window_start = ?2
                 ORDER BY model_version, segment, feature, source, range_start",
                values,
            )?;
            Ok(rows.into_iter().map(PartialRow::into_record).collect())
        })
        .await
    }

    async fn partial_windows(&self, model: &str, from_ms: i64, to_ms: i64) -> Result<Vec<i64>> {
        let model = model.to_owned();
        let (from, to) = (lower_bound_seconds(from_ms), upper_bound_seconds(to_ms));
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT DISTINCT window_start FROM window_partials
                 WHERE model = ?1 AND window_start >= ?2 AND window_start < ?3 ORDER BY 1",
            )?;
            let starts = statement
                .query_map(params![model, from, to], |row| row.get::<_, i64>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(starts.into_iter().map(|s| s * 1000).collect())
        })
        .await
    }

    async fn write_window_results(
        &self,
        metrics: Vec<WindowMetrics>,
        sketches: Vec<WindowSketch>,
    ) -> Result<()> {
        let metrics: Vec<MetricsRow> = metrics
            .iter()
            .map(MetricsRow::from_record)
            .collect::<Result<_>>()?;
        let sketches: Vec<SketchRow> = sketches
            .into_iter()
            .map(SketchRow::from_record)
            .collect::<Result<_>>()?;
        self.with(move |connection| {
            upsert(connection, &sketches)?;
            upsert(connection, &metrics)
        })
        .await
    }

    async fn model_versions(&self) -> Result<Vec<ModelVersionSummary>> {
        self.with(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT model, model_version, MIN(window_start), MAX(window_start),
                        COUNT(DISTINCT window_start),
                        MAX(CASE WHEN feature NOT IN ('actual.label', 'quality') THEN window_start END)
                 FROM window_metrics GROUP BY model, model_version ORDER BY model, model_version",
            )?;
            let rows = statement
                .query_map([], |row| {
                    Ok(ModelVersionSummary {
                        model: row.get(0)?,
                        model_version: row.get(1)?,
                        first_window: row.get::<_, i64>(2)? * 1000,
                        last_window: row.get::<_, i64>(3)? * 1000,
                        windows: row.get::<_, i64>(4)? as u64,
                        last_input_window: row.get::<_, Option<i64>>(5)?.map(|s| s * 1000),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn window_metrics(&self, query: MetricsQuery) -> Result<Vec<WindowMetrics>> {
        let filter = MetricsFilter::new(query);
        self.with(move |connection| {
            let mut condition = "1 = 1".to_owned();
            let mut values: Vec<rusqlite::types::Value> = Vec::new();
            for (column, operator, value) in filter.conditions {
                values.push(match value {
                    FilterValue::Text(text) => text.into(),
                    FilterValue::Seconds(seconds) => i64::from(seconds).into(),
                });
                condition.push_str(&format!(" AND {column} {operator} ?{}", values.len()));
            }
            condition.push_str(&format!(" ORDER BY {}", MetricsFilter::ORDER_BY));
            match (filter.limit, filter.offset) {
                (Some(limit), offset) => {
                    condition.push_str(&format!(" LIMIT {limit} OFFSET {offset}"))
                }
                (None, 0) => {}
                (None, offset) => condition.push_str(&format!(" LIMIT -1 OFFSET {offset}")),
            }
            let rows: Vec<MetricsRow> = select(connection, &condition, values)?;
            rows.into_iter().map(MetricsRow::into_record).collect()
        })
        .await
    }

    async fn window_sketches(
        &self,
        model: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<WindowSketch>> {
        let values = vec![
            model.to_owned().into(),
            i64::from(lower_bound_seconds(from_ms)).into(),
            i64::from(upper_bound_seconds(to_ms)).into(),
        ];
        self.with(move |connection| {
            let rows: Vec<SketchRow> = select(
                connection,
                "model = ?1 AND window_start >= ?2 AND window_start < ?3
                 ORDER BY model_version, segment, feature, window_start",
                values,
            )?;
            Ok(rows.into_iter().map(SketchRow::into_record).collect())
        })
        .await
    }

    async fn write_pipeline_stats(&self, rows: Vec<PipelineStats>) -> Result<()> {
        let rows = rows
            .into_iter()
            .map(PipelineStatsRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        self.with(move |connection| upsert(connection, &rows)).await
    }

    async fn pipeline_stats(&self, from_ms: i64, to_ms: i64) -> Result<Vec<PipelineStats>> {
        let values = vec![
            i64::from(lower_bound_seconds(from_ms)).into(),
            i64::from(upper_bound_seconds(to_ms)).into(),
        ];
        self.with(move |connection| {
            let rows: Vec<PipelineStatsRow> = select(
                connection,
                "at >= ?1 AND at < ?2 ORDER BY at, topic, instance",
                values,
            )?;
            Ok(rows
                .into_iter()
                .map(PipelineStatsRow::into_record)
                .collect())
        })
        .await
    }

    async fn put_reference(&self, profile: &ReferenceProfile, created_at: u64) -> Result<()> {
        let row = ReferenceRow::from_profile(profile, created_at);
        self.with(move |connection| upsert(connection, &[row]))
            .await
    }

    async fn reference(
        &self,
        model: &str,
        model_version: &str,
    ) -> Result<Option<ReferenceProfile>> {
        let values = vec![model.to_owned().into(), model_version.to_owned().into()];
        self.with(move |connection| {
            let rows: Vec<ReferenceRow> =
                select(connection, "model = ?1 AND model_version = ?2", values)?;
            rows.into_iter()
                .next()
                .map(ReferenceRow::into_profile)
                .transpose()
        })
        .await
    }

    async fn references(&self) -> Result<Vec<ReferenceSummary>> {
        self.with(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT model, model_version, source, row_count, created_at FROM reference_profiles
                 ORDER BY model, model_version",
            )?;
            let rows = statement
                .query_map([], |row| {
                    Ok(ReferenceSummary {
                        model: row.get(0)?,
                        model_version: row.get(1)?,
                        source: row.get(2)?,
                        row_count: row.get::<_, i64>(3)? as u64,
                        created_at: row.get::<_, i64>(4)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn write_alerts(
        &self,
        alerts: Vec<AlertRecord>,
        deliveries: Vec<Delivery>,
    ) -> Result<()> {
        let alerts: Vec<AlertRow> = alerts
            .into_iter()
            .map(AlertRow::from_record)
            .collect::<Result<_>>()?;
        let deliveries: Vec<DeliveryRow> = deliveries
            .into_iter()
            .map(DeliveryRow::from_record)
            .collect::<Result<_>>()?;
        self.with(move |connection| {
            upsert(connection, &alerts)?;
            // A delivery already recorded keeps its state.
            write_with(
                connection,
                &sqlite_insert_or_ignore(&DeliveryRow::DEF),
                &deliveries,
            )
        })
        .await
    }

    async fn alerts(&self, model: Option<&str>, limit: u64) -> Result<Vec<AlertRecord>> {
        let values = vec![model.map(str::to_owned).into(), (limit as i64).into()];
        self.with(move |connection| {
            let rows: Vec<AlertRow> = select(
                connection,
                "(?1 IS NULL OR model = ?1) ORDER BY window_start DESC, created_at DESC LIMIT ?2",
                values,
            )?;
            rows.into_iter().map(AlertRow::into_record).collect()
        })
        .await
    }

    async fn alert_notifications(&self, id: &str) -> Result<Vec<AlertRecord>> {
        let values = vec![id.to_owned().into()];
        self.with(move |connection| {
            let rows: Vec<AlertRow> = select(connection, "id = ?1", values)?;
            rows.into_iter().map(AlertRow::into_record).collect()
        })
        .await
    }

    async fn alert_progress(&self, model: &str) -> Result<Option<i64>> {
        let values = vec![model.to_owned().into()];
        self.with(move |connection| {
            let rows: Vec<AlertProgressRow> = select(connection, "model = ?1", values)?;
            Ok(rows.first().map(|row| row.window_start as i64))
        })
        .await
    }

    async fn record_alert_progress(&self, model: &str, window_start: i64) -> Result<()> {
        let row = AlertProgressRow {
            model: model.to_owned(),
            window_start: window_start.max(0) as u64,
        };
        self.with(move |connection| upsert(connection, &[row]))
            .await
    }

    async fn deliveries(&self, alert_id: &str) -> Result<Vec<Delivery>> {
        self.deliveries_where(
            "alert_id = ?1 ORDER BY window_start, status, channel",
            vec![alert_id.to_owned().into()],
        )
        .await
    }

    async fn due_deliveries(&self, now: u64, limit: u64) -> Result<Vec<Delivery>> {
        self.deliveries_where(
            "state = 'pending' AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2",
            vec![(now as i64).into(), (limit as i64).into()],
        )
        .await
    }

    async fn update_deliveries(&self, deliveries: Vec<Delivery>) -> Result<()> {
        let rows: Vec<DeliveryRow> = deliveries
            .into_iter()
            .map(DeliveryRow::from_record)
            .collect::<Result<_>>()?;
        self.with(move |connection| upsert(connection, &rows)).await
    }

    async fn write_range_fingerprints(&self, rows: Vec<RangeFingerprint>) -> Result<()> {
        let rows: Vec<RangeFingerprintRow> = rows
            .into_iter()
            .map(RangeFingerprintRow::from_record)
            .collect();
        self.with(move |connection| upsert(connection, &rows)).await
    }

    async fn range_fingerprint(
        &self,
        partition: &str,
        incarnation: u32,
        range_start: u64,
    ) -> Result<Option<RangeFingerprint>> {
        let values = vec![
            partition.to_owned().into(),
            i64::from(incarnation).into(),
            (range_start as i64).into(),
        ];
        self.with(move |connection| {
            let rows: Vec<RangeFingerprintRow> = select(
                connection,
                "partition = ?1 AND incarnation = ?2 AND range_start = ?3",
                values,
            )?;
            Ok(rows
                .into_iter()
                .next()
                .map(RangeFingerprintRow::into_record))
        })
        .await
    }

    async fn latest_incarnation(&self, partition: &str) -> Result<Option<u32>> {
        let partition = partition.to_owned();
        self.with(move |connection| {
            Ok(connection.query_row(
                "SELECT max(incarnation) FROM range_fingerprints WHERE partition = ?1",
                params![partition],
                |row| row.get::<_, Option<u32>>(0),
            )?)
        })
        .await
    }

    async fn write_source_progress(&self, rows: Vec<SourceProgress>) -> Result<()> {
        let rows: Vec<SourceProgressRow> = rows
            .into_iter()
            .map(SourceProgressRow::from_record)
            .collect();
        self.with(move |connection| upsert(connection, &rows)).await
    }

    async fn source_progress(&self, source: &str) -> Result<Option<SourceProgress>> {
        let values = vec![source.to_owned().into()];
        self.with(move |connection| {
            let rows: Vec<SourceProgressRow> = select(connection, "source = ?1", values)?;
            rows.into_iter()
                .next()
                .map(SourceProgressRow::into_record)
                .transpose()
        })
        .await
    }

    async fn write_join_predictions(&self, rows: &[JoinPrediction]) -> Result<()> {
        let mut rows: Vec<JoinPredictionRow> = rows
            .iter()
            .map(JoinPredictionRow::from_record)
            .collect::<Result<_>>()?;
        // In key order, the inserts walk the B-tree's pages once.
        rows.sort_unstable_by(|a, b| {
            (&a.model, &a.join_key, &a.model_version).cmp(&(
                &b.model,
                &b.join_key,
                &b.model_version,
            ))
        });
        self.with(move |connection| upsert(connection, &rows)).await
    }

    async fn join_predictions(&self, model: &str, keys: &[String]) -> Result<Vec<JoinPrediction>> {
        let model = model.to_owned();
        let keys = keys.to_vec();
        self.with(move |connection| {
            let mut found = Vec::new();
            for chunk in keys.chunks(500) {
                let placeholders: Vec<String> =
                    (0..chunk.len()).map(|i| format!("?{}", i + 2)).collect();
                let condition = format!(
                    "model = ?1 AND join_key IN ({}) ORDER BY join_key, model_version",
                    placeholders.join(", ")
                );
                let mut values: Vec<rusqlite::types::Value> = vec![model.clone().into()];
                values.extend(chunk.iter().map(|key| key.clone().into()));
                let rows: Vec<JoinPredictionRow> = select(connection, &condition, values)?;
                found.extend(rows.into_iter().map(JoinPredictionRow::into_record));
            }
            found.sort_by(|a, b| (&a.key, &a.model_version).cmp(&(&b.key, &b.model_version)));
            Ok(found)
        })
        .await
    }

    async fn write_pending_labels(&self, rows: Vec<JoinLabel>) -> Result<()> {
        let rows: Vec<JoinLabelRow> = rows
            .into_iter()
            .map(JoinLabelRow::from_record)
            .collect::<Result<_>>()?;
        self.with(move |connection| upsert(connection, &rows)).await
    }

    async fn pending_labels(&self, source: &str) -> Result<Vec<JoinLabel>> {
        let values = vec![source.to_owned().into()];
        self.with(move |connection| {
            let rows: Vec<JoinLabelRow> =
                select(connection, "source = ?1 ORDER BY label_offset", values)?;
            Ok(rows.into_iter().map(JoinLabelRow::into_record).collect())
        })
        .await
    }

    async fn write_late_matches(&self, rows: Vec<LateMatch>) -> Result<()> {
        let rows: Vec<LateMatchRow> = rows
            .into_iter()
            .map(LateMatchRow::from_record)
            .collect::<Result<_>>()?;
        self.with(move |connection| upsert(connection, &rows)).await
    }

    async fn late_matches_for_window(
        &self,
        model: &str,
        window_start: i64,
    ) -> Result<Vec<LateMatch>> {
        let values = vec![model.to_owned().into(), window_start.into()];
        self.with(move |connection| {
            let rows: Vec<LateMatchRow> = select(
                connection,
                "model = ?1 AND window_start = ?2 ORDER BY source, label_offset, model_version",
                values,
            )?;
            Ok(rows.into_iter().map(LateMatchRow::into_record).collect())
        })
        .await
    }

    async fn late_matches_of_source(&self, source: &str, from_ms: i64) -> Result<Vec<LateMatch>> {
        let values = vec![source.to_owned().into(), from_ms.max(0).into()];
        self.with(move |connection| {
            let rows: Vec<LateMatchRow> = select(
                connection,
                "source = ?1 AND label_time_ms >= ?2 ORDER BY label_offset, model_version",
                values,
            )?;
            Ok(rows.into_iter().map(LateMatchRow::into_record).collect())
        })
        .await
    }

    async fn expire_join_state(&self, before_ms: i64) -> Result<()> {
        let before = i64::from(lower_bound_seconds(before_ms));
        self.with(move |connection| {
            connection.execute(
                "DELETE FROM pending_predictions WHERE time < ?1",
                params![before],
            )?;
            connection.execute(
                "DELETE FROM pending_labels WHERE time < ?1",
                params![before],
            )?;
            Ok(())
        })
        .await
    }

    async fn write_version_events(&self, events: Vec<VersionEvent>) -> Result<()> {
        let rows: Vec<VersionEventRow> = events
            .into_iter()
            .map(VersionEventRow::from_record)
            .collect::<Result<_>>()?;
        self.with(move |connection| upsert(connection, &rows)).await
    }

    async fn version_events(&self, model: &str, limit: u64) -> Result<Vec<VersionEvent>> {
        let values = vec![
            model.to_owned().into(),
            (limit.min(i64::MAX as u64) as i64).into(),
        ];
        self.with(move |connection| {
            let rows: Vec<VersionEventRow> = select(
                connection,
                "model = ?1 ORDER BY time_ms DESC, sequence DESC LIMIT ?2",
                values,
            )?;
            rows.into_iter()
                .rev()
                .map(VersionEventRow::into_record)
                .collect()
        })
        .await
    }

    async fn write_samples(
        &self,
        predictions: Vec<SampledPrediction>,
        labels: Vec<SampledLabel>,
    ) -> Result<()> {
        let predictions: Vec<SamplePredictionRow> = predictions
            .into_iter()
            .map(SamplePredictionRow::from_record)
            .collect::<Result<_>>()?;
        let labels: Vec<SampleLabelRow> = labels
            .into_iter()
            .map(SampleLabelRow::from_record)
            .collect::<Result<_>>()?;
        self.with(move |connection| {
            upsert(connection, &predictions)?;
            upsert(connection, &labels)
        })
        .await
    }

    async fn sampled_predictions(
        &self,
        model: &str,
        model_version: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        limit: u64,
    ) -> Result<Vec<SampledPrediction>> {
        let values = vec![
            model.to_owned().into(),
            model_version.map(str::to_owned).into(),
            i64::from(lower_bound_seconds(from_ms)).into(),
            i64::from(upper_bound_seconds(to_ms)).into(),
            (limit.min(i64::MAX as u64) as i64).into(),
        ];
        self.with(move |connection| {
            let rows: Vec<SamplePredictionRow> = select(
                connection,
                "model = ?1 AND (?2 IS NULL OR model_version = ?2)
                 AND window_start >= ?3 AND window_start < ?4
                 ORDER BY window_start, prediction_id, model_version LIMIT ?5",
                values,
            )?;
            Ok(rows
                .into_iter()
                .map(SamplePredictionRow::into_record)
                .collect())
        })
        .await
    }

    async fn sampled_labels(
        &self,
        model: &str,
        prediction_ids: &[String],
    ) -> Result<Vec<SampledLabel>> {
        let model = model.to_owned();
        let ids = prediction_ids.to_vec();
        self.with(move |connection| {
            let mut labels = Vec::new();
            for chunk in ids.chunks(500) {
                let placeholders: Vec<String> =
                    (0..chunk.len()).map(|i| format!("?{}", i + 2)).collect();
                let condition = format!(
                    "model = ?1 AND prediction_id IN ({}) ORDER BY prediction_id",
                    placeholders.join(", ")
                );
                let mut values: Vec<rusqlite::types::Value> = vec![model.clone().into()];
                values.extend(chunk.iter().map(|id| id.clone().into()));
                let rows: Vec<SampleLabelRow> = select(connection, &condition, values)?;
                labels.extend(rows.into_iter().map(SampleLabelRow::into_record));
            }
            labels.sort_by(|a, b| a.prediction_id.cmp(&b.prediction_id));
            Ok(labels)
        })
        .await
    }

    async fn delete_samples_before(&self, before_ms: i64) -> Result<()> {
        let before = i64::from(lower_bound_seconds(before_ms));
        self.with(move |connection| {
            connection.execute(
                "DELETE FROM sample_predictions WHERE window_start < ?1",
                params![before],
            )?;
            connection.execute("DELETE FROM sample_labels WHERE time < ?1", params![before])?;
            Ok(())
        })
        .await
    }

    async fn latest_sample_window(&self) -> Result<Option<i64>> {
        self.with(|connection| {
            let latest = connection.query_row(
                "SELECT max(window_start) FROM sample_predictions",
                [],
                |row| row.get::<_, Option<i64>>(0),
            )?;
            Ok(latest.map(|seconds| seconds * 1000))
        })
        .await
    }
}

impl EmbeddedStore {
    async fn deliveries_where(
        &self,
        condition: &'static str,
        values: Vec<rusqlite::types::Value>,
    ) -> Result<Vec<Delivery>> {
        self.with(move |connection| {
            let rows: Vec<DeliveryRow> = select(connection, condition, values)?;
            rows.into_iter().map(DeliveryRow::into_record).collect()
        })
        .await
    }
}
