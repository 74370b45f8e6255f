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

use detectors::ReferenceProfile;
use rusqlite::{params, Connection, OptionalExtension};

use crate::rows::{
    lower_bound_seconds, to_seconds, upper_bound_seconds, MetricsRow, PartialRow, SketchRow,
    ADDED_METRICS_COLUMNS, METRICS_COLUMNS,
};
use crate::rows::{AlertRow, DeliveryRow};
use crate::{
    Error, MetricsQuery, PartialSketch, ReferenceSummary, Result, WindowMetrics, WindowSketch,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS window_partials (
    model TEXT NOT NULL, model_version TEXT NOT NULL, segment TEXT NOT NULL, feature TEXT NOT NULL,
    window_start INTEGER NOT NULL, source TEXT NOT NULL, range_start INTEGER NOT NULL,
    range_end INTEGER NOT NULL, sketch BLOB NOT NULL,
    PRIMARY KEY (model, window_start, model_version, segment, feature, source, range_start)
);
CREATE TABLE IF NOT EXISTS window_sketches (
    model TEXT NOT NULL, model_version TEXT NOT NULL, segment TEXT NOT NULL, feature TEXT NOT NULL,
    window_start INTEGER NOT NULL, window_end INTEGER NOT NULL, sketch BLOB NOT NULL,
    computed_at INTEGER NOT NULL,
    PRIMARY KEY (model, model_version, segment, feature, window_start)
);
CREATE TABLE IF NOT EXISTS window_metrics (
    model TEXT NOT NULL, model_version TEXT NOT NULL, segment TEXT NOT NULL, feature TEXT NOT NULL,
    kind TEXT NOT NULL, window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
    count INTEGER NOT NULL, missing INTEGER NOT NULL, type_mismatch INTEGER NOT NULL,
    missing_rate REAL, mean REAL, std_dev REAL, min REAL, max REAL,
    p05 REAL, p25 REAL, p50 REAL, p75 REAL, p95 REAL,
    distinct_categories INTEGER, unseen_categories INTEGER,
    psi REAL, ks_statistic REAL, ks_p_value REAL, chi_square REAL, chi_square_p_value REAL,
    psi_threshold REAL NOT NULL, drifted INTEGER, reference_source TEXT NOT NULL,
    computed_at INTEGER NOT NULL,
    js_distance REAL, hellinger REAL, kl_divergence REAL, l_infinity REAL,
    wasserstein REAL, wasserstein_normalized REAL, out_of_range INTEGER, constant INTEGER,
    latency_p50 REAL, latency_p95 REAL, latency_p99 REAL, latency_max REAL, error_rate REAL, null_prediction_rate REAL,
    test_names TEXT, test_values TEXT, test_thresholds TEXT, test_drifted TEXT, warnings TEXT,
    accuracy REAL, precision REAL, recall REAL, f1 REAL, roc_auc REAL, log_loss REAL, brier REAL, calibration_error REAL, mae REAL, rmse REAL, mape REAL, r2 REAL,
    ref_p05 REAL, ref_p25 REAL, ref_p50 REAL, ref_p75 REAL, ref_p95 REAL,
    PRIMARY KEY (model, model_version, segment, feature, window_start)
);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT NOT NULL, status TEXT NOT NULL, window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
    rule TEXT NOT NULL, model TEXT NOT NULL, model_version TEXT NOT NULL, segment TEXT NOT NULL,
    severity TEXT NOT NULL, repeat INTEGER NOT NULL, summary TEXT NOT NULL, payload TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (id, status, window_start)
);
CREATE TABLE IF NOT EXISTS pipeline_stats (
    at INTEGER NOT NULL, instance TEXT NOT NULL, topic TEXT NOT NULL,
    consumed INTEGER NOT NULL, dead_lettered INTEGER NOT NULL, late INTEGER NOT NULL, lag INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pipeline_stats_at ON pipeline_stats (at);
CREATE TABLE IF NOT EXISTS alert_deliveries (
    alert_id TEXT NOT NULL, status TEXT NOT NULL, window_start INTEGER NOT NULL, channel TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_at INTEGER NOT NULL,
    last_error TEXT NOT NULL, updated_at INTEGER NOT NULL,
    PRIMARY KEY (alert_id, status, window_start, channel)
);
CREATE TABLE IF NOT EXISTS range_fingerprints (
    partition TEXT NOT NULL, incarnation INTEGER NOT NULL, range_start INTEGER NOT NULL,
    first_offset INTEGER NOT NULL, fingerprint INTEGER NOT NULL,
    PRIMARY KEY (partition, incarnation, range_start)
);
CREATE TABLE IF NOT EXISTS alert_progress (
    model TEXT NOT NULL PRIMARY KEY, window_start INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reference_profiles (
    model TEXT NOT NULL, model_version TEXT NOT NULL, source TEXT NOT NULL,
    row_count INTEGER NOT NULL, profile TEXT NOT NULL, created_at INTEGER NOT NULL,
    PRIMARY KEY (model, model_version)
);
";

/// Arrays are stored as JSON text in SQLite.
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain arrays serialize")
}

/// Reads a JSON array column; NULL (a row written before the column existed) is empty.
fn from_json<T: serde::de::DeserializeOwned + Default>(
    row: &rusqlite::Row<'_>,
    index: usize,
) -> rusqlite::Result<T> {
    let text: Option<String> = row.get(index)?;
    match text {
        None => Ok(T::default()),
        Some(text) => serde_json::from_str(&text).map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                rusqlite::types::Type::Text,
                Box::new(error),
            )
        }),
    }
}

/// Creates the tables and adds the columns an older file lacks.
fn migrate(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(SCHEMA)?;
    let existing: Vec<String> = connection
        .prepare("SELECT name FROM pragma_table_info('window_metrics')")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (column, _, column_type) in ADDED_METRICS_COLUMNS {
        if !existing.iter().any(|name| name == column) {
            connection.execute_batch(&format!(
                "ALTER TABLE window_metrics ADD COLUMN {column} {column_type}"
            ))?;
        }
    }
    Ok(())
}

/// A SQLite-backed store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    connection: Arc<Mutex<Connection>>,
}

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
            let connection = Connection::open(&path)?;
            connection.pragma_update(None, "journal_mode", "WAL")?;
            connection.pragma_update(None, "synchronous", "NORMAL")?;
            migrate(&connection)?;
            Ok(connection)
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

    pub(crate) async fn write_partials(&self, rows: Vec<PartialSketch>) -> Result<()> {
        let rows: Vec<PartialRow> = rows
            .into_iter()
            .map(PartialRow::from_record)
            .collect::<Result<_>>()?;
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            {
                let mut statement = transaction.prepare_cached(
                    "INSERT INTO window_partials VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT DO UPDATE SET range_end = excluded.range_end, sketch = excluded.sketch
                     WHERE excluded.range_end >= window_partials.range_end",
                )?;
                for row in &rows {
                    statement.execute(params![
                        row.model,
                        row.model_version,
                        row.segment,
                        row.feature,
                        row.window_start,
                        row.source,
                        row.range_start as i64,
                        row.range_end as i64,
                        row.sketch
                    ])?;
                }
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn partials_for_window(
        &self,
        model: String,
        window_start: i64,
    ) -> Result<Vec<PartialSketch>> {
        let start = to_seconds(window_start)?;
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT model, model_version, segment, feature, window_start, source, range_start, range_end, sketch
                 FROM window_partials WHERE model = ?1 AND window_start = ?2
                 ORDER BY model_version, segment, feature, source, range_start",
            )?;
            let rows = statement
                .query_map(params![model, start], |row| {
                    Ok(PartialRow {
                        model: row.get(0)?,
                        model_version: row.get(1)?,
                        segment: row.get(2)?,
                        feature: row.get(3)?,
                        window_start: row.get(4)?,
                        source: row.get(5)?,
                        range_start: row.get::<_, i64>(6)? as u64,
                        range_end: row.get::<_, i64>(7)? as u64,
                        sketch: row.get(8)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows.into_iter().map(PartialRow::into_record).collect())
        })
        .await
    }

    pub(crate) async fn partial_windows(
        &self,
        model: String,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<i64>> {
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

    pub(crate) async fn write_window_results(
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
            let transaction = connection.transaction()?;
            {
                let mut statement = transaction.prepare_cached(
                    "INSERT INTO window_sketches VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT DO UPDATE SET window_end = excluded.window_end, sketch = excluded.sketch,
                       computed_at = excluded.computed_at
                     WHERE excluded.computed_at >= window_sketches.computed_at",
                )?;
                for row in &sketches {
                    statement.execute(params![
                        row.model,
                        row.model_version,
                        row.segment,
                        row.feature,
                        row.window_start,
                        row.window_end,
                        row.sketch,
                        row.computed_at as i64
                    ])?;
                }
                let placeholders = (1..=METRICS_COLUMNS.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                let updates = METRICS_COLUMNS[5..]
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut statement = transaction.prepare_cached(&format!(
                    "INSERT INTO window_metrics VALUES ({placeholders})
                     ON CONFLICT DO UPDATE SET {updates}
                     WHERE excluded.computed_at >= window_metrics.computed_at"
                ))?;
                for row in &metrics {
                    statement.execute(params![
                        row.model,
                        row.model_version,
                        row.segment,
                        row.feature,
                        row.kind,
                        row.window_start,
                        row.window_end,
                        row.count as i64,
                        row.missing as i64,
                        row.type_mismatch as i64,
                        row.missing_rate,
                        row.mean,
                        row.std_dev,
                        row.min,
                        row.max,
                        row.p05,
                        row.p25,
                        row.p50,
                        row.p75,
                        row.p95,
                        row.distinct_categories.map(|v| v as i64),
                        row.unseen_categories.map(|v| v as i64),
                        row.psi,
                        row.ks_statistic,
                        row.ks_p_value,
                        row.chi_square,
                        row.chi_square_p_value,
                        row.psi_threshold,
                        row.drifted,
                        row.reference_source,
                        row.computed_at as i64,
                        row.js_distance,
                        row.hellinger,
                        row.kl_divergence,
                        row.l_infinity,
                        row.wasserstein,
                        row.wasserstein_normalized,
                        row.out_of_range.map(|v| v as i64),
                        row.constant,
                        row.latency_p50,
                        row.latency_p95,
                        row.latency_p99,
                        row.latency_max,
                        row.error_rate,
                        row.null_prediction_rate,
                        json(&row.test_names),
                        json(&row.test_values),
                        json(&row.test_thresholds),
                        json(&row.test_drifted),
                        json(&row.warnings),
                        row.accuracy,
                        row.precision,
                        row.recall,
                        row.f1,
                        row.roc_auc,
                        row.log_loss,
                        row.brier,
                        row.calibration_error,
                        row.mae,
                        row.rmse,
                        row.mape,
                        row.r2,
                        row.ref_p05,
                        row.ref_p25,
                        row.ref_p50,
                        row.ref_p75,
                        row.ref_p95
                    ])?;
                }
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn model_versions(&self) -> Result<Vec<crate::ModelVersionSummary>> {
        self.with(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT model, model_version, MIN(window_start), MAX(window_start),
                        COUNT(DISTINCT window_start),
                        MAX(CASE WHEN feature NOT IN ('actual.label', 'quality') THEN window_start END)
                 FROM window_metrics GROUP BY model, model_version ORDER BY model, model_version",
            )?;
            let rows = statement
                .query_map([], |row| {
                    Ok(crate::ModelVersionSummary {
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

    pub(crate) async fn window_metrics(&self, query: MetricsQuery) -> Result<Vec<WindowMetrics>> {
        self.with(move |connection| {
            let mut sql = format!(
                "SELECT {} FROM window_metrics WHERE 1 = 1",
                METRICS_COLUMNS.join(", ")
            );
            let mut values: Vec<rusqlite::types::Value> = Vec::new();
            for (column, value) in [
                ("model", &query.model),
                ("model_version", &query.model_version),
                ("segment", &query.segment),
                ("feature", &query.feature),
            ] {
                if let Some(value) = value {
                    values.push(value.clone().into());
                    sql.push_str(&format!(" AND {column} = ?{}", values.len()));
                }
            }
            if let Some(from) = query.from_ms {
                values.push(i64::from(lower_bound_seconds(from)).into());
                sql.push_str(&format!(" AND window_start >= ?{}", values.len()));
            }
            if let Some(to) = query.to_ms {
                values.push(i64::from(upper_bound_seconds(to)).into());
                sql.push_str(&format!(" AND window_start < ?{}", values.len()));
            }
            sql.push_str(" ORDER BY model, model_version, segment, feature, window_start");
            match (query.limit, query.offset) {
                (Some(limit), offset) => sql.push_str(&format!(" LIMIT {limit} OFFSET {offset}")),
                (None, 0) => {}
                (None, offset) => sql.push_str(&format!(" LIMIT -1 OFFSET {offset}")),
            }
            let mut statement = connection.prepare(&sql)?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(values), |row| {
                    Ok(MetricsRow {
                        model: row.get(0)?,
                        model_version: row.get(1)?,
                        segment: row.get(2)?,
                        feature: row.get(3)?,
                        kind: row.get(4)?,
                        window_start: row.get(5)?,
                        window_end: row.get(6)?,
                        count: row.get::<_, i64>(7)? as u64,
                        missing: row.get::<_, i64>(8)? as u64,
                        type_mismatch: row.get::<_, i64>(9)? as u64,
                        missing_rate: row.get(10)?,
                        mean: row.get(11)?,
                        std_dev: row.get(12)?,
                        min: row.get(13)?,
                        max: row.get(14)?,
                        p05: row.get(15)?,
                        p25: row.get(16)?,
                        p50: row.get(17)?,
                        p75: row.get(18)?,
                        p95: row.get(19)?,
                        distinct_categories: row.get::<_, Option<i64>>(20)?.map(|v| v as u64),
                        unseen_categories: row.get::<_, Option<i64>>(21)?.map(|v| v as u64),
                        psi: row.get(22)?,
                        ks_statistic: row.get(23)?,
                        ks_p_value: row.get(24)?,
                        chi_square: row.get(25)?,
                        chi_square_p_value: row.get(26)?,
                        psi_threshold: row.get(27)?,
                        drifted: row.get(28)?,
                        reference_source: row.get(29)?,
                        computed_at: row.get::<_, i64>(30)? as u64,
                        js_distance: row.get(31)?,
                        hellinger: row.get(32)?,
                        kl_divergence: row.get(33)?,
                        l_infinity: row.get(34)?,
                        wasserstein: row.get(35)?,
                        wasserstein_normalized: row.get(36)?,
                        out_of_range: row.get::<_, Option<i64>>(37)?.map(|v| v as u64),
                        constant: row.get(38)?,
                        latency_p50: row.get(39)?,
                        latency_p95: row.get(40)?,
                        latency_p99: row.get(41)?,
                        latency_max: row.get(42)?,
                        error_rate: row.get(43)?,
                        null_prediction_rate: row.get(44)?,
                        test_names: from_json(row, 45)?,
                        test_values: from_json(row, 46)?,
                        test_thresholds: from_json(row, 47)?,
                        test_drifted: from_json(row, 48)?,
                        warnings: from_json(row, 49)?,
                        accuracy: row.get(50)?,
                        precision: row.get(51)?,
                        recall: row.get(52)?,
                        f1: row.get(53)?,
                        roc_auc: row.get(54)?,
                        log_loss: row.get(55)?,
                        brier: row.get(56)?,
                        calibration_error: row.get(57)?,
                        mae: row.get(58)?,
                        rmse: row.get(59)?,
                        mape: row.get(60)?,
                        r2: row.get(61)?,
                        ref_p05: row.get(62)?,
                        ref_p25: row.get(63)?,
                        ref_p50: row.get(64)?,
                        ref_p75: row.get(65)?,
                        ref_p95: row.get(66)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter().map(MetricsRow::into_record).collect()
        })
        .await
    }

    pub(crate) async fn window_sketches(
        &self,
        model: String,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<WindowSketch>> {
        let (from, to) = (lower_bound_seconds(from_ms), upper_bound_seconds(to_ms));
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT model, model_version, segment, feature, window_start, window_end, sketch, computed_at
                 FROM window_sketches WHERE model = ?1 AND window_start >= ?2 AND window_start < ?3
                 ORDER BY model_version, segment, feature, window_start",
            )?;
            let rows = statement
                .query_map(params![model, from, to], |row| {
                    Ok(SketchRow {
                        model: row.get(0)?,
                        model_version: row.get(1)?,
                        segment: row.get(2)?,
                        feature: row.get(3)?,
                        window_start: row.get(4)?,
                        window_end: row.get(5)?,
                        sketch: row.get(6)?,
                        computed_at: row.get::<_, i64>(7)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows.into_iter().map(SketchRow::into_record).collect())
        })
        .await
    }

    pub(crate) async fn put_reference(
        &self,
        profile: ReferenceProfile,
        created_at: u64,
    ) -> Result<()> {
        self.with(move |connection| {
            connection.execute(
                "INSERT INTO reference_profiles VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT DO UPDATE SET source = excluded.source, row_count = excluded.row_count,
                   profile = excluded.profile, created_at = excluded.created_at
                 WHERE excluded.created_at >= reference_profiles.created_at",
                params![
                    profile.model,
                    profile.model_version,
                    profile.source,
                    profile.row_count as i64,
                    profile.to_json(),
                    created_at as i64
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn reference(
        &self,
        model: String,
        model_version: String,
    ) -> Result<Option<ReferenceProfile>> {
        self.with(move |connection| {
            let text: Option<String> = connection
                .query_row(
                    "SELECT profile FROM reference_profiles WHERE model = ?1 AND model_version = ?2",
                    params![model, model_version],
                    |row| row.get(0),
                )
                .optional()?;
            text.map(|text| ReferenceProfile::from_json(&text).map_err(|e| Error::Corrupt(e.to_string())))
                .transpose()
        })
        .await
    }

    pub(crate) async fn references(&self) -> Result<Vec<ReferenceSummary>> {
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

    pub(crate) async fn record_alerts(
        &self,
        alerts: Vec<crate::AlertRecord>,
        deliveries: Vec<crate::Delivery>,
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
            let transaction = connection.transaction()?;
            for row in &alerts {
                transaction.execute(
                    "INSERT INTO alerts VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT DO UPDATE SET window_end = excluded.window_end, summary = excluded.summary,
                       payload = excluded.payload, created_at = excluded.created_at
                     WHERE excluded.created_at >= alerts.created_at",
                    params![
                        row.id, row.status, row.window_start, row.window_end, row.rule, row.model,
                        row.model_version, row.segment, row.severity, row.repeat, row.summary, row.payload,
                        row.created_at as i64
                    ],
                )?;
            }
            // A delivery already recorded keeps its state.
            for row in &deliveries {
                transaction.execute(
                    "INSERT OR IGNORE INTO alert_deliveries VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        row.alert_id, row.status, row.window_start, row.channel, row.state, row.attempts,
                        row.next_attempt_at as i64, row.last_error, row.updated_at as i64
                    ],
                )?;
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn write_pipeline_stats(&self, rows: Vec<crate::PipelineStats>) -> Result<()> {
        let rows: Vec<crate::rows::PipelineStatsRow> = rows
            .into_iter()
            .map(crate::rows::PipelineStatsRow::from_record)
            .collect::<Result<_>>()?;
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            for row in &rows {
                transaction.execute(
                    "INSERT INTO pipeline_stats VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        row.at,
                        row.instance,
                        row.topic,
                        row.consumed as i64,
                        row.dead_lettered as i64,
                        row.late as i64,
                        row.lag
                    ],
                )?;
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn write_range_fingerprints(
        &self,
        rows: Vec<crate::RangeFingerprint>,
    ) -> Result<()> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            {
                let mut statement = transaction.prepare_cached(
                    "INSERT OR REPLACE INTO range_fingerprints VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for row in &rows {
                    statement.execute(params![
                        row.partition,
                        row.incarnation,
                        row.range_start as i64,
                        row.first_offset as i64,
                        // SQLite integers are signed: the bits, reinterpreted.
                        row.fingerprint as i64
                    ])?;
                }
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn range_fingerprint(
        &self,
        partition: String,
        incarnation: u32,
        range_start: u64,
    ) -> Result<Option<crate::RangeFingerprint>> {
        self.with(move |connection| {
            Ok(connection
                .query_row(
                    "SELECT first_offset, fingerprint FROM range_fingerprints
                     WHERE partition = ?1 AND incarnation = ?2 AND range_start = ?3",
                    params![partition, incarnation, range_start as i64],
                    |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
                )
                .optional()?
                .map(|(first_offset, fingerprint)| crate::RangeFingerprint {
                    partition,
                    incarnation,
                    range_start,
                    first_offset: first_offset as u64,
                    fingerprint: fingerprint as u64,
                }))
        })
        .await
    }

    pub(crate) async fn latest_incarnation(&self, partition: String) -> Result<Option<u32>> {
        self.with(move |connection| {
            Ok(connection.query_row(
                "SELECT max(incarnation) FROM range_fingerprints WHERE partition = ?1",
                params![partition],
                |row| row.get::<_, Option<u32>>(0),
            )?)
        })
        .await
    }

    pub(crate) async fn alert_progress(&self, model: String) -> Result<Option<i64>> {
        self.with(move |connection| {
            Ok(connection
                .query_row(
                    "SELECT window_start FROM alert_progress WHERE model = ?1",
                    params![model],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    pub(crate) async fn record_alert_progress(
        &self,
        model: String,
        window_start: i64,
    ) -> Result<()> {
        self.with(move |connection| {
            connection.execute(
                "INSERT INTO alert_progress VALUES (?1, ?2)
                 ON CONFLICT(model) DO UPDATE SET window_start = max(window_start, excluded.window_start)",
                params![model, window_start],
            )?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn pipeline_stats(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<crate::PipelineStats>> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT at, instance, topic, consumed, dead_lettered, late, lag FROM pipeline_stats
                 WHERE at >= ?1 AND at < ?2 ORDER BY at, topic, instance",
            )?;
            let rows = statement
                .query_map(
                    params![
                        i64::from(lower_bound_seconds(from_ms)),
                        i64::from(upper_bound_seconds(to_ms))
                    ],
                    |row| {
                        Ok(crate::rows::PipelineStatsRow {
                            at: row.get(0)?,
                            instance: row.get(1)?,
                            topic: row.get(2)?,
                            consumed: row.get::<_, i64>(3)? as u64,
                            dead_lettered: row.get::<_, i64>(4)? as u64,
                            late: row.get::<_, i64>(5)? as u64,
                            lag: row.get(6)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows
                .into_iter()
                .map(crate::rows::PipelineStatsRow::into_record)
                .collect())
        })
        .await
    }

    pub(crate) async fn update_deliveries(&self, deliveries: Vec<crate::Delivery>) -> Result<()> {
        let rows: Vec<DeliveryRow> = deliveries
            .into_iter()
            .map(DeliveryRow::from_record)
            .collect::<Result<_>>()?;
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            for row in &rows {
                transaction.execute(
                    "INSERT INTO alert_deliveries VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT DO UPDATE SET state = excluded.state, attempts = excluded.attempts,
                       next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,
                       updated_at = excluded.updated_at
                     WHERE excluded.updated_at >= alert_deliveries.updated_at",
                    params![
                        row.alert_id,
                        row.status,
                        row.window_start,
                        row.channel,
                        row.state,
                        row.attempts,
                        row.next_attempt_at as i64,
                        row.last_error,
                        row.updated_at as i64
                    ],
                )?;
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn alerts(
        &self,
        model: Option<String>,
        limit: u64,
    ) -> Result<Vec<crate::AlertRecord>> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT id, status, window_start, window_end, rule, model, model_version, segment, severity,
                        repeat, summary, payload, created_at
                 FROM alerts WHERE (?1 IS NULL OR model = ?1)
                 ORDER BY window_start DESC, created_at DESC LIMIT ?2",
            )?;
            let rows = statement
                .query_map(params![model, limit as i64], alert_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows.into_iter().map(AlertRow::into_record).collect())
        })
        .await
    }

    pub(crate) async fn due_deliveries(
        &self,
        now: u64,
        limit: u64,
    ) -> Result<Vec<crate::Delivery>> {
        self.deliveries_where(
            "state = 'pending' AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2",
            vec![(now as i64).into(), (limit as i64).into()],
        )
        .await
    }

    pub(crate) async fn deliveries(&self, alert_id: String) -> Result<Vec<crate::Delivery>> {
        self.deliveries_where(
            "alert_id = ?1 ORDER BY window_start, status, channel",
            vec![alert_id.into()],
        )
        .await
    }

    async fn deliveries_where(
        &self,
        condition: &'static str,
        values: Vec<rusqlite::types::Value>,
    ) -> Result<Vec<crate::Delivery>> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT alert_id, status, window_start, channel, state, attempts, next_attempt_at, last_error, updated_at
                 FROM alert_deliveries WHERE {condition}"
            ))?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(values), |row| {
                    Ok(DeliveryRow {
                        alert_id: row.get(0)?,
                        status: row.get(1)?,
                        window_start: row.get(2)?,
                        channel: row.get(3)?,
                        state: row.get(4)?,
                        attempts: row.get(5)?,
                        next_attempt_at: row.get::<_, i64>(6)? as u64,
                        last_error: row.get(7)?,
                        updated_at: row.get::<_, i64>(8)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter().map(DeliveryRow::into_record).collect()
        })
        .await
    }

    pub(crate) async fn alerts_by_id(&self, id: String) -> Result<Vec<crate::AlertRecord>> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT id, status, window_start, window_end, rule, model, model_version, segment, severity,
                        repeat, summary, payload, created_at
                 FROM alerts WHERE id = ?1",
            )?;
            let rows = statement
                .query_map(params![id], alert_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows.into_iter().map(AlertRow::into_record).collect())
        })
        .await
    }
}

fn alert_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    Ok(AlertRow {
        id: row.get(0)?,
        status: row.get(1)?,
        window_start: row.get(2)?,
        window_end: row.get(3)?,
        rule: row.get(4)?,
        model: row.get(5)?,
        model_version: row.get(6)?,
        segment: row.get(7)?,
        severity: row.get(8)?,
        repeat: row.get(9)?,
        summary: row.get(10)?,
        payload: row.get(11)?,
        created_at: row.get::<_, i64>(12)? as u64,
    })
}
