//! The ClickHouse backend.
//!
//! SQL written for ClickHouse 18.16 and current releases alike (see the crate
//! docs). Reads use `FINAL` so that rows replaced by a newer version are never
//! seen twice, even before ClickHouse merges the parts in the background.

use clickhouse::Client;
use detectors::ReferenceProfile;

use crate::rows::{
    lower_bound_seconds, to_seconds, upper_bound_seconds, MetricsRow, PartialRow, ReferenceRow,
    SketchRow, ADDED_METRICS_COLUMNS, METRICS_COLUMNS,
};
use crate::rows::{AlertRow, DeliveryRow};
use crate::{
    latest_by, Error, MetricsQuery, PartialSketch, ReferenceSummary, Result, WindowMetrics,
    WindowSketch,
};

/// Schema migrations, applied in order at start-up; each is idempotent.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS window_partials (
        model String, model_version String, segment String, feature String,
        window_start DateTime,
        source String, range_start UInt64, range_end UInt64,
        sketch String
    ) ENGINE = ReplacingMergeTree(range_end)
    PARTITION BY toYYYYMMDD(window_start)
    ORDER BY (model, window_start, model_version, segment, feature, source, range_start)",
    "CREATE TABLE IF NOT EXISTS window_sketches (
        model String, model_version String, segment String, feature String,
        window_start DateTime, window_end DateTime,
        sketch String, computed_at UInt64
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMMDD(window_start)
    ORDER BY (model, model_version, segment, feature, window_start)",
    "CREATE TABLE IF NOT EXISTS window_metrics (
        model String, model_version String, segment String, feature String, kind String,
        window_start DateTime, window_end DateTime,
        count UInt64, missing UInt64, type_mismatch UInt64,
        missing_rate Nullable(Float64),
        mean Nullable(Float64), std_dev Nullable(Float64), min Nullable(Float64), max Nullable(Float64),
        p05 Nullable(Float64), p25 Nullable(Float64), p50 Nullable(Float64), p75 Nullable(Float64), p95 Nullable(Float64),
        distinct_categories Nullable(UInt64), unseen_categories Nullable(UInt64),
        psi Nullable(Float64), ks_statistic Nullable(Float64), ks_p_value Nullable(Float64),
        chi_square Nullable(Float64), chi_square_p_value Nullable(Float64),
        psi_threshold Float64, drifted Nullable(UInt8),
        reference_source String, computed_at UInt64,
        js_distance Nullable(Float64), hellinger Nullable(Float64), kl_divergence Nullable(Float64),
        l_infinity Nullable(Float64), wasserstein Nullable(Float64), wasserstein_normalized Nullable(Float64),
        out_of_range Nullable(UInt64), constant Nullable(UInt8),
        latency_p50 Nullable(Float64), latency_p95 Nullable(Float64), latency_p99 Nullable(Float64), latency_max Nullable(Float64), error_rate Nullable(Float64), null_prediction_rate Nullable(Float64),
        test_names Array(String), test_values Array(Float64), test_thresholds Array(Float64),
        test_drifted Array(UInt8), warnings Array(String),
        accuracy Nullable(Float64), precision Nullable(Float64), recall Nullable(Float64), f1 Nullable(Float64), roc_auc Nullable(Float64), log_loss Nullable(Float64), brier Nullable(Float64), calibration_error Nullable(Float64), mae Nullable(Float64), rmse Nullable(Float64), mape Nullable(Float64), r2 Nullable(Float64),
        ref_p05 Nullable(Float64), ref_p25 Nullable(Float64), ref_p50 Nullable(Float64), ref_p75 Nullable(Float64), ref_p95 Nullable(Float64)
    ) ENGINE = ReplacingMergeTree(computed_at)
    PARTITION BY toYYYYMMDD(window_start)
    ORDER BY (model, model_version, segment, feature, window_start)",
    "CREATE TABLE IF NOT EXISTS reference_profiles (
        model String, model_version String, source String, row_count UInt64,
        profile String, created_at UInt64
    ) ENGINE = ReplacingMergeTree(created_at)
    ORDER BY (model, model_version)",
    "CREATE TABLE IF NOT EXISTS alerts (
        id String, status String, window_start DateTime, window_end DateTime,
        rule String, model String, model_version String, segment String,
        severity String, repeat UInt8, summary String, payload String, created_at UInt64
    ) ENGINE = ReplacingMergeTree(created_at)
    PARTITION BY toYYYYMMDD(window_start)
    ORDER BY (id, status, window_start)",
    "CREATE TABLE IF NOT EXISTS pipeline_stats (
        at DateTime, instance String, topic String,
        consumed UInt64, dead_lettered UInt64, late UInt64, lag Int64
    ) ENGINE = MergeTree
    PARTITION BY toYYYYMMDD(at)
    ORDER BY (topic, at, instance)",
    "CREATE TABLE IF NOT EXISTS alert_deliveries (
        alert_id String, status String, window_start DateTime, channel String,
        state String, attempts UInt32, next_attempt_at UInt64, last_error String, updated_at UInt64
    ) ENGINE = ReplacingMergeTree(updated_at)
    ORDER BY (alert_id, status, window_start, channel)",
    "CREATE TABLE IF NOT EXISTS range_fingerprints (
        partition String, incarnation UInt32, range_start UInt64, first_offset UInt64,
        fingerprint UInt64
    ) ENGINE = ReplacingMergeTree
    ORDER BY (partition, incarnation, range_start)",
    "CREATE TABLE IF NOT EXISTS alert_progress (
        model String, window_start UInt64
    ) ENGINE = ReplacingMergeTree(window_start)
    ORDER BY model",
];

/// Columns of `alert_deliveries` in [`DeliveryRow`] order (latest state of each).
const DELIVERY_SELECT: &str =
    "SELECT toString(alert_id), toString(status), toUInt32(window_start), toString(channel),
            toString(state), toUInt32(attempts), toUInt64(next_attempt_at), toString(last_error),
            toUInt64(updated_at)
     FROM alert_deliveries FINAL";

/// A ClickHouse-backed store. Cheap to clone (the HTTP client is shared).
#[derive(Clone)]
pub struct ClickHouseStore {
    client: Client,
}

impl ClickHouseStore {
    /// Connects to `url` (e.g. `http://127.0.0.1:8123`), creates `database`
    /// and the tables if needed.
    pub async fn connect(
        url: &str,
        database: &str,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<Self> {
        if database.is_empty()
            || !database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::Config(format!(
                "database name `{database}` must be non-empty ASCII letters, digits or `_`"
            )));
        }
        let mut base = Client::default().with_url(url).with_validation(false);
        if let Some(user) = user {
            base = base.with_user(user);
        }
        if let Some(password) = password {
            base = base.with_password(password);
        }
        base.query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
            .execute()
            .await?;
        let client = base.with_database(database);
        for migration in MIGRATIONS {
            client.query(migration).execute().await?;
        }
        // ClickHouse 18.16 has no `ADD COLUMN IF NOT EXISTS`: look first.
        let existing = client
            .query("SELECT toString(name) FROM system.columns WHERE database = ? AND table = 'window_metrics'")
            .bind(database)
            .fetch_all::<String>()
            .await?;
        for (column, column_type, _) in ADDED_METRICS_COLUMNS {
            if !existing.iter().any(|name| name == column) {
                client
                    .query(&format!(
                        "ALTER TABLE window_metrics ADD COLUMN {column} {column_type}"
                    ))
                    .execute()
                    .await?;
            }
        }
        Ok(Self { client })
    }

    /// The underlying client (for tests and ad-hoc queries).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) async fn write_partials(&self, rows: Vec<PartialSketch>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<PartialRow>("window_partials").await?;
        for row in rows {
            insert.write(&PartialRow::from_record(row)?).await?;
        }
        insert.end().await?;
        Ok(())
    }

    pub(crate) async fn partials_for_window(
        &self,
        model: &str,
        window_start: i64,
    ) -> Result<Vec<PartialSketch>> {
        let rows = self
            .client
            .query(
                "SELECT toString(model), toString(model_version), toString(segment), toString(feature),
                        toUInt32(window_start), toString(source), toUInt64(range_start),
                        toUInt64(range_end), toString(sketch)
                 FROM window_partials FINAL
                 WHERE model = ? AND window_start = toDateTime(?)",
            )
            .bind(model)
            .bind(to_seconds(window_start)?)
            .fetch_all::<PartialRow>()
            .await?;
        // FINAL already keeps one row per key; this guards against a replica
        // or a table engine that does not.
        let rows = latest_by(
            rows,
            |r| {
                (
                    r.model_version.clone(),
                    r.segment.clone(),
                    r.feature.clone(),
                    r.source.clone(),
                    r.range_start,
                )
            },
            |r| r.range_end,
        );
        Ok(rows.into_iter().map(PartialRow::into_record).collect())
    }

    pub(crate) async fn partial_windows(
        &self,
        model: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<i64>> {
        let starts = self
            .client
            .query(
                "SELECT DISTINCT toUInt32(window_start) FROM window_partials
                 WHERE model = ? AND window_start >= toDateTime(?) AND window_start < toDateTime(?)
                 ORDER BY 1",
            )
            .bind(model)
            .bind(lower_bound_seconds(from_ms))
            .bind(upper_bound_seconds(to_ms))
            .fetch_all::<u32>()
            .await?;
        Ok(starts.into_iter().map(crate::rows::to_millis).collect())
    }

    pub(crate) async fn write_window_results(
        &self,
        metrics: Vec<WindowMetrics>,
        sketches: Vec<WindowSketch>,
    ) -> Result<()> {
        if !sketches.is_empty() {
            let mut insert = self.client.insert::<SketchRow>("window_sketches").await?;
            for sketch in sketches {
                insert.write(&SketchRow::from_record(sketch)?).await?;
            }
            insert.end().await?;
        }
        if !metrics.is_empty() {
            let mut insert = self.client.insert::<MetricsRow>("window_metrics").await?;
            for record in &metrics {
                insert.write(&MetricsRow::from_record(record)?).await?;
            }
            insert.end().await?;
        }
        Ok(())
    }

    pub(crate) async fn model_versions(&self) -> Result<Vec<crate::ModelVersionSummary>> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Row {
            model: String,
            model_version: String,
            first_window: u32,
            last_window: u32,
            last_input_window: u32,
            windows: u64,
        }
        let rows = self
            .client
            .query(
                "SELECT model, model_version, toUInt32(min(window_start)), toUInt32(max(window_start)),
                        toUInt32(max(if(feature NOT IN ('actual.label', 'quality'), window_start, toDateTime(0)))),
                        toUInt64(uniqExact(window_start))
                 FROM window_metrics FINAL GROUP BY model, model_version ORDER BY model, model_version",
            )
            .fetch_all::<Row>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| crate::ModelVersionSummary {
                model: row.model,
                model_version: row.model_version,
                first_window: i64::from(row.first_window) * 1000,
                last_window: i64::from(row.last_window) * 1000,
                last_input_window: (row.last_input_window > 0)
                    .then(|| i64::from(row.last_input_window) * 1000),
                windows: row.windows,
            })
            .collect())
    }

    pub(crate) async fn window_metrics(&self, query: &MetricsQuery) -> Result<Vec<WindowMetrics>> {
        let columns = METRICS_COLUMNS
            .iter()
            .map(|column| match *column {
                "window_start" | "window_end" => format!("toUInt32({column})"),
                other => other.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!("SELECT {columns} FROM window_metrics FINAL WHERE 1 = 1");
        let mut filters: Vec<&str> = Vec::new();
        if let Some(model) = &query.model {
            sql.push_str(" AND model = ?");
            filters.push(model);
        }
        if let Some(version) = &query.model_version {
            sql.push_str(" AND model_version = ?");
            filters.push(version);
        }
        if let Some(segment) = &query.segment {
            sql.push_str(" AND segment = ?");
            filters.push(segment);
        }
        if let Some(feature) = &query.feature {
            sql.push_str(" AND feature = ?");
            filters.push(feature);
        }
        if query.from_ms.is_some() {
            sql.push_str(" AND window_start >= toDateTime(?)");
        }
        if query.to_ms.is_some() {
            sql.push_str(" AND window_start < toDateTime(?)");
        }
        sql.push_str(" ORDER BY model, model_version, segment, feature, window_start");
        // `LIMIT offset, count`: the form every ClickHouse release reads.
        match (query.limit, query.offset) {
            (Some(limit), offset) => sql.push_str(&format!(" LIMIT {offset}, {limit}")),
            (None, 0) => {}
            (None, offset) => sql.push_str(&format!(" LIMIT {offset}, {}", u64::MAX >> 1)),
        }
        let mut statement = self.client.query(&sql);
        for filter in filters {
            statement = statement.bind(filter);
        }
        if let Some(from) = query.from_ms {
            statement = statement.bind(lower_bound_seconds(from));
        }
        if let Some(to) = query.to_ms {
            statement = statement.bind(upper_bound_seconds(to));
        }
        let rows = statement.fetch_all::<MetricsRow>().await?;
        rows.into_iter().map(MetricsRow::into_record).collect()
    }

    pub(crate) async fn window_sketches(
        &self,
        model: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<WindowSketch>> {
        let rows = self
            .client
            .query(
                "SELECT toString(model), toString(model_version), toString(segment), toString(feature),
                        toUInt32(window_start), toUInt32(window_end), toString(sketch), toUInt64(computed_at)
                 FROM window_sketches FINAL
                 WHERE model = ? AND window_start >= toDateTime(?) AND window_start < toDateTime(?)
                 ORDER BY model_version, segment, feature, window_start",
            )
            .bind(model)
            .bind(lower_bound_seconds(from_ms))
            .bind(upper_bound_seconds(to_ms))
            .fetch_all::<SketchRow>()
            .await?;
        Ok(rows.into_iter().map(SketchRow::into_record).collect())
    }

    pub(crate) async fn put_reference(
        &self,
        profile: &ReferenceProfile,
        created_at: u64,
    ) -> Result<()> {
        let mut insert = self
            .client
            .insert::<ReferenceRow>("reference_profiles")
            .await?;
        insert
            .write(&ReferenceRow {
                model: profile.model.clone(),
                model_version: profile.model_version.clone(),
                source: profile.source.clone(),
                row_count: profile.row_count,
                profile: profile.to_json(),
                created_at,
            })
            .await?;
        insert.end().await?;
        Ok(())
    }

    pub(crate) async fn reference(
        &self,
        model: &str,
        model_version: &str,
    ) -> Result<Option<ReferenceProfile>> {
        let row = self
            .client
            .query(
                "SELECT toString(model), toString(model_version), toString(source), toUInt64(row_count),
                        toString(profile), toUInt64(created_at)
                 FROM reference_profiles FINAL
                 WHERE model = ? AND model_version = ?
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(model)
            .bind(model_version)
            .fetch_optional::<ReferenceRow>()
            .await?;
        row.map(|row| {
            ReferenceProfile::from_json(&row.profile).map_err(|e| Error::Corrupt(e.to_string()))
        })
        .transpose()
    }

    pub(crate) async fn references(&self) -> Result<Vec<ReferenceSummary>> {
        let rows = self
            .client
            .query(
                "SELECT toString(model), toString(model_version), toString(source), toUInt64(row_count),
                        '' AS profile, toUInt64(created_at)
                 FROM reference_profiles FINAL ORDER BY model, model_version",
            )
            .fetch_all::<ReferenceRow>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| ReferenceSummary {
                model: row.model,
                model_version: row.model_version,
                source: row.source,
                row_count: row.row_count,
                created_at: row.created_at,
            })
            .collect())
    }

    pub(crate) async fn record_alerts(
        &self,
        alerts: Vec<crate::AlertRecord>,
        deliveries: Vec<crate::Delivery>,
    ) -> Result<()> {
        if !alerts.is_empty() {
            let mut insert = self.client.insert::<AlertRow>("alerts").await?;
            for alert in alerts {
                insert.write(&AlertRow::from_record(alert)?).await?;
            }
            insert.end().await?;
        }
        // A delivery already recorded (possibly further along) must not be
        // reset to pending when the same notification is recorded again.
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<&str> = deliveries.iter().map(|d| d.alert_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let existing: std::collections::HashSet<(String, String, u32, String)> = self
            .client
            .query(
                "SELECT toString(alert_id), toString(status), toUInt32(window_start), toString(channel)
                 FROM alert_deliveries WHERE has(?, alert_id)",
            )
            .bind(ids)
            .fetch_all::<(String, String, u32, String)>()
            .await?
            .into_iter()
            .collect();
        let mut fresh = Vec::new();
        for delivery in deliveries {
            let key = (
                delivery.alert_id.clone(),
                delivery.status.clone(),
                to_seconds(delivery.window_start)?,
                delivery.channel.clone(),
            );
            if !existing.contains(&key) {
                fresh.push(delivery);
            }
        }
        self.update_deliveries(fresh).await
    }

    pub(crate) async fn write_pipeline_stats(&self, rows: Vec<crate::PipelineStats>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<crate::rows::PipelineStatsRow>("pipeline_stats")
            .await?;
        for row in rows {
            insert
                .write(&crate::rows::PipelineStatsRow::from_record(row)?)
                .await?;
        }
        insert.end().await?;
        Ok(())
    }

    pub(crate) async fn write_range_fingerprints(
        &self,
        rows: Vec<crate::RangeFingerprint>,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<crate::rows::RangeFingerprintRow>("range_fingerprints")
            .await?;
        for row in rows {
            insert
                .write(&crate::rows::RangeFingerprintRow::from_record(row))
                .await?;
        }
        insert.end().await?;
        Ok(())
    }

    pub(crate) async fn range_fingerprint(
        &self,
        partition: &str,
        incarnation: u32,
        range_start: u64,
    ) -> Result<Option<crate::RangeFingerprint>> {
        let row = self
            .client
            .query(
                "SELECT toString(partition), toUInt32(incarnation), toUInt64(range_start),
                        toUInt64(first_offset), toUInt64(fingerprint)
                 FROM range_fingerprints FINAL
                 WHERE partition = ? AND incarnation = ? AND range_start = ?
                 LIMIT 1",
            )
            .bind(partition)
            .bind(incarnation)
            .bind(range_start)
            .fetch_optional::<crate::rows::RangeFingerprintRow>()
            .await?;
        Ok(row.map(crate::rows::RangeFingerprintRow::into_record))
    }

    pub(crate) async fn latest_incarnation(&self, partition: &str) -> Result<Option<u32>> {
        let (rows, latest) = self
            .client
            .query(
                "SELECT count(), toUInt32(max(incarnation)) FROM range_fingerprints WHERE partition = ?",
            )
            .bind(partition)
            .fetch_one::<(u64, u32)>()
            .await?;
        Ok((rows > 0).then_some(latest))
    }

    pub(crate) async fn alert_progress(&self, model: &str) -> Result<Option<i64>> {
        let (rows, latest) = self
            .client
            .query(
                "SELECT count(), toUInt64(max(window_start)) FROM alert_progress WHERE model = ?",
            )
            .bind(model)
            .fetch_one::<(u64, u64)>()
            .await?;
        Ok((rows > 0).then_some(latest as i64))
    }

    pub(crate) async fn record_alert_progress(&self, model: &str, window_start: i64) -> Result<()> {
        self.client
            .query("INSERT INTO alert_progress (model, window_start) VALUES (?, ?)")
            .bind(model)
            .bind(window_start.max(0) as u64)
            .execute()
            .await?;
        Ok(())
    }

    pub(crate) async fn pipeline_stats(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<crate::PipelineStats>> {
        let rows = self
            .client
            .query(
                "SELECT toUInt32(at), toString(instance), toString(topic), toUInt64(consumed),
                        toUInt64(dead_lettered), toUInt64(late), toInt64(lag)
                 FROM pipeline_stats
                 WHERE at >= toDateTime(?) AND at < toDateTime(?)
                 ORDER BY at, topic, instance",
            )
            .bind(lower_bound_seconds(from_ms))
            .bind(upper_bound_seconds(to_ms))
            .fetch_all::<crate::rows::PipelineStatsRow>()
            .await?;
        Ok(rows
            .into_iter()
            .map(crate::rows::PipelineStatsRow::into_record)
            .collect())
    }

    pub(crate) async fn update_deliveries(&self, deliveries: Vec<crate::Delivery>) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<DeliveryRow>("alert_deliveries")
            .await?;
        for delivery in deliveries {
            insert.write(&DeliveryRow::from_record(delivery)?).await?;
        }
        insert.end().await?;
        Ok(())
    }

    pub(crate) async fn alerts(
        &self,
        model: Option<&str>,
        limit: u64,
    ) -> Result<Vec<crate::AlertRecord>> {
        let filter = if model.is_some() {
            "WHERE model = ?"
        } else {
            ""
        };
        let sql = format!(
            "SELECT toString(id), toString(status), toUInt32(window_start), toUInt32(window_end), toString(rule),
                    toString(model), toString(model_version), toString(segment), toString(severity),
                    toUInt8(repeat), toString(summary), toString(payload), toUInt64(created_at)
             FROM alerts FINAL {filter}
             ORDER BY window_start DESC, created_at DESC LIMIT {limit}"
        );
        let mut query = self.client.query(&sql);
        if let Some(model) = model {
            query = query.bind(model);
        }
        let rows = query.fetch_all::<AlertRow>().await?;
        Ok(rows.into_iter().map(AlertRow::into_record).collect())
    }

    pub(crate) async fn due_deliveries(
        &self,
        now: u64,
        limit: u64,
    ) -> Result<Vec<crate::Delivery>> {
        let sql = format!(
            "{DELIVERY_SELECT} WHERE state = 'pending' AND next_attempt_at <= ?
             ORDER BY next_attempt_at LIMIT {limit}"
        );
        let rows = self
            .client
            .query(&sql)
            .bind(now)
            .fetch_all::<DeliveryRow>()
            .await?;
        rows.into_iter().map(DeliveryRow::into_record).collect()
    }

    pub(crate) async fn deliveries(&self, alert_id: &str) -> Result<Vec<crate::Delivery>> {
        let sql =
            format!("{DELIVERY_SELECT} WHERE alert_id = ? ORDER BY window_start, status, channel");
        let rows = self
            .client
            .query(&sql)
            .bind(alert_id)
            .fetch_all::<DeliveryRow>()
            .await?;
        rows.into_iter().map(DeliveryRow::into_record).collect()
    }

    pub(crate) async fn alerts_by_id(&self, id: &str) -> Result<Vec<crate::AlertRecord>> {
        let rows = self
            .client
            .query(
                "SELECT toString(id), toString(status), toUInt32(window_start), toUInt32(window_end), toString(rule),
                        toString(model), toString(model_version), toString(segment), toString(severity),
                        toUInt8(repeat), toString(summary), toString(payload), toUInt64(created_at)
                 FROM alerts FINAL WHERE id = ?",
            )
            .bind(id)
            .fetch_all::<AlertRow>()
            .await?;
        Ok(rows.into_iter().map(AlertRow::into_record).collect())
    }
}
