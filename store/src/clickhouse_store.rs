//! The ClickHouse backend.
//!
//! SQL written for ClickHouse 18.16 and current releases alike (see the crate
//! docs). Reads use `FINAL` so that rows replaced by a newer version are never
//! seen twice, even before ClickHouse merges the parts in the background.

use async_trait::async_trait;
use clickhouse::Client;
use detectors::ReferenceProfile;

use crate::rows::{
    lower_bound_seconds, to_seconds, upper_bound_seconds, AlertProgressRow, AlertRow, DeliveryRow,
    FilterValue, JoinLabelRow, JoinPredictionRow, LateMatchRow, MetricsFilter, MetricsRow,
    PartialRow, PipelineStatsRow, RangeFingerprintRow, ReferenceRow, SampleLabelRow,
    SamplePredictionRow, SketchRow, SourceProgressRow, VersionEventRow, TABLES,
};
use crate::schema::{clickhouse_create, clickhouse_select, missing_columns, Table};
use crate::{
    latest_by, AlertRecord, Backend, Delivery, Error, JoinLabel, JoinPrediction, LateMatch,
    MetricsQuery, ModelVersionSummary, PartialSketch, PipelineStats, RangeFingerprint,
    ReferenceSummary, Result, SampledLabel, SampledPrediction, SourceProgress, VersionEvent,
    WindowMetrics, WindowSketch,
};

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
        if !crate::config::valid_database_name(database) {
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
        for table in &TABLES {
            client.query(&clickhouse_create(table)).execute().await?;
        }
        // Columns declared since a table was created are added to it.
        // ClickHouse 18.16 has no `ADD COLUMN IF NOT EXISTS`: look first.
        let store = Self { client };
        for table in &TABLES {
            let existing = store.stored_columns(table.spec.name).await?;
            for column in missing_columns(table, &existing)? {
                store
                    .client
                    .query(&format!(
                        "ALTER TABLE {} ADD COLUMN {} {}",
                        table.spec.name,
                        column.name,
                        column.sql.clickhouse()
                    ))
                    .execute()
                    .await?;
            }
        }
        Ok(store)
    }

    /// The underlying client (for tests and ad-hoc queries).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Inserts `rows` in one `INSERT` (nothing when empty).
    async fn insert<T: Table + clickhouse::RowOwned + clickhouse::RowWrite>(
        &self,
        rows: &[T],
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<T>(T::SPEC.name).await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        Ok(())
    }
}

/// `SELECT <every column of T> FROM <its table> FINAL` (no `FINAL` for a log).
fn select<T: Table>() -> String {
    let final_ = match T::SPEC.versioning {
        crate::schema::Versioning::Append => "",
        _ => " FINAL",
    };
    format!(
        "SELECT {} FROM {}{final_}",
        clickhouse_select::<T>(&[]),
        T::SPEC.name
    )
}

#[async_trait]
impl Backend for ClickHouseStore {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    async fn stored_columns(&self, table: &str) -> Result<Vec<String>> {
        Ok(self
            .client
            .query(
                "SELECT toString(name) FROM system.columns
                 WHERE database = currentDatabase() AND table = ?",
            )
            .bind(table)
            .fetch_all::<String>()
            .await?)
    }

    async fn write_partials(&self, rows: Vec<PartialSketch>) -> Result<()> {
        let rows = rows
            .into_iter()
            .map(PartialRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        self.insert(&rows).await
    }

    async fn partials_for_window(
        &self,
        model: &str,
        window_start: i64,
    ) -> Result<Vec<PartialSketch>> {
        let rows = self
            .client
            .query(&format!(
                "{} WHERE model = ? AND window_start = toDateTime(?)",
                select::<PartialRow>()
            ))
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

    async fn partial_windows(&self, model: &str, from_ms: i64, to_ms: i64) -> Result<Vec<i64>> {
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

    async fn write_window_results(
        &self,
        metrics: Vec<WindowMetrics>,
        sketches: Vec<WindowSketch>,
    ) -> Result<()> {
        let sketches = sketches
            .into_iter()
            .map(SketchRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        let metrics = metrics
            .iter()
            .map(MetricsRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        self.insert(&sketches).await?;
        self.insert(&metrics).await
    }

    async fn model_versions(&self) -> Result<Vec<ModelVersionSummary>> {
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
            .map(|row| ModelVersionSummary {
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

    async fn window_metrics(&self, query: MetricsQuery) -> Result<Vec<WindowMetrics>> {
        let filter = MetricsFilter::new(query);
        let mut sql = format!("{} WHERE 1 = 1", select::<MetricsRow>());
        for (column, operator, value) in &filter.conditions {
            match value {
                FilterValue::Text(_) => sql.push_str(&format!(" AND {column} {operator} ?")),
                FilterValue::Seconds(_) => {
                    sql.push_str(&format!(" AND {column} {operator} toDateTime(?)"))
                }
            }
        }
        sql.push_str(&format!(" ORDER BY {}", MetricsFilter::ORDER_BY));
        // `LIMIT offset, count`: the form every ClickHouse release reads.
        match (filter.limit, filter.offset) {
            (Some(limit), offset) => sql.push_str(&format!(" LIMIT {offset}, {limit}")),
            (None, 0) => {}
            (None, offset) => sql.push_str(&format!(" LIMIT {offset}, {}", u64::MAX >> 1)),
        }
        let mut statement = self.client.query(&sql);
        for (_, _, value) in filter.conditions {
            statement = match value {
                FilterValue::Text(text) => statement.bind(text),
                FilterValue::Seconds(seconds) => statement.bind(seconds),
            };
        }
        let rows = statement.fetch_all::<MetricsRow>().await?;
        rows.into_iter().map(MetricsRow::into_record).collect()
    }

    async fn window_sketches(
        &self,
        model: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<WindowSketch>> {
        let rows = self
            .client
            .query(&format!(
                "{} WHERE model = ? AND window_start >= toDateTime(?) AND window_start < toDateTime(?)
                 ORDER BY model_version, segment, feature, window_start",
                select::<SketchRow>()
            ))
            .bind(model)
            .bind(lower_bound_seconds(from_ms))
            .bind(upper_bound_seconds(to_ms))
            .fetch_all::<SketchRow>()
            .await?;
        Ok(rows.into_iter().map(SketchRow::into_record).collect())
    }

    async fn write_pipeline_stats(&self, rows: Vec<PipelineStats>) -> Result<()> {
        let rows = rows
            .into_iter()
            .map(PipelineStatsRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        self.insert(&rows).await
    }

    async fn pipeline_stats(&self, from_ms: i64, to_ms: i64) -> Result<Vec<PipelineStats>> {
        let rows = self
            .client
            .query(&format!(
                "{} WHERE at >= toDateTime(?) AND at < toDateTime(?) ORDER BY at, topic, instance",
                select::<PipelineStatsRow>()
            ))
            .bind(lower_bound_seconds(from_ms))
            .bind(upper_bound_seconds(to_ms))
            .fetch_all::<PipelineStatsRow>()
            .await?;
        Ok(rows
            .into_iter()
            .map(PipelineStatsRow::into_record)
            .collect())
    }

    async fn put_reference(&self, profile: &ReferenceProfile, created_at: u64) -> Result<()> {
        self.insert(&[ReferenceRow::from_profile(profile, created_at)])
            .await
    }

    async fn reference(
        &self,
        model: &str,
        model_version: &str,
    ) -> Result<Option<ReferenceProfile>> {
        let row = self
            .client
            .query(&format!(
                "{} WHERE model = ? AND model_version = ? ORDER BY created_at DESC LIMIT 1",
                select::<ReferenceRow>()
            ))
            .bind(model)
            .bind(model_version)
            .fetch_optional::<ReferenceRow>()
            .await?;
        row.map(ReferenceRow::into_profile).transpose()
    }

    async fn references(&self) -> Result<Vec<ReferenceSummary>> {
        // The profiles themselves are left out.
        let rows = self
            .client
            .query(&format!(
                "SELECT {} FROM reference_profiles FINAL ORDER BY model, model_version",
                clickhouse_select::<ReferenceRow>(&[("profile", "''")])
            ))
            .fetch_all::<ReferenceRow>()
            .await?;
        Ok(rows.into_iter().map(ReferenceRow::into_summary).collect())
    }

    async fn write_alerts(
        &self,
        alerts: Vec<AlertRecord>,
        deliveries: Vec<Delivery>,
    ) -> Result<()> {
        let alerts = alerts
            .into_iter()
            .map(AlertRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        self.insert(&alerts).await?;
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
                delivery.status.as_str().to_owned(),
                to_seconds(delivery.window_start)?,
                delivery.channel.clone(),
            );
            if !existing.contains(&key) {
                fresh.push(delivery);
            }
        }
        self.update_deliveries(fresh).await
    }

    async fn alerts(&self, model: Option<&str>, limit: u64) -> Result<Vec<AlertRecord>> {
        let filter = if model.is_some() {
            "WHERE model = ?"
        } else {
            ""
        };
        let sql = format!(
            "{} {filter} ORDER BY window_start DESC, created_at DESC LIMIT {limit}",
            select::<AlertRow>()
        );
        let mut query = self.client.query(&sql);
        if let Some(model) = model {
            query = query.bind(model);
        }
        let rows = query.fetch_all::<AlertRow>().await?;
        rows.into_iter().map(AlertRow::into_record).collect()
    }

    async fn alert_notifications(&self, id: &str) -> Result<Vec<AlertRecord>> {
        let rows = self
            .client
            .query(&format!("{} WHERE id = ?", select::<AlertRow>()))
            .bind(id)
            .fetch_all::<AlertRow>()
            .await?;
        rows.into_iter().map(AlertRow::into_record).collect()
    }

    async fn alert_progress(&self, model: &str) -> Result<Option<i64>> {
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

    async fn record_alert_progress(&self, model: &str, window_start: i64) -> Result<()> {
        self.insert(&[AlertProgressRow {
            model: model.to_owned(),
            window_start: window_start.max(0) as u64,
        }])
        .await
    }

    async fn deliveries(&self, alert_id: &str) -> Result<Vec<Delivery>> {
        let sql = format!(
            "{} WHERE alert_id = ? ORDER BY window_start, status, channel",
            select::<DeliveryRow>()
        );
        let rows = self
            .client
            .query(&sql)
            .bind(alert_id)
            .fetch_all::<DeliveryRow>()
            .await?;
        rows.into_iter().map(DeliveryRow::into_record).collect()
    }

    async fn due_deliveries(&self, now: u64, limit: u64) -> Result<Vec<Delivery>> {
        let sql = format!(
            "{} WHERE state = 'pending' AND next_attempt_at <= ?
             ORDER BY next_attempt_at LIMIT {limit}",
            select::<DeliveryRow>()
        );
        let rows = self
            .client
            .query(&sql)
            .bind(now)
            .fetch_all::<DeliveryRow>()
            .await?;
        rows.into_iter().map(DeliveryRow::into_record).collect()
    }

    async fn update_deliveries(&self, deliveries: Vec<Delivery>) -> Result<()> {
        let rows = deliveries
            .into_iter()
            .map(DeliveryRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        self.insert(&rows).await
    }

    async fn write_range_fingerprints(&self, rows: Vec<RangeFingerprint>) -> Result<()> {
        let rows: Vec<_> = rows
            .into_iter()
            .map(RangeFingerprintRow::from_record)
            .collect();
        self.insert(&rows).await
    }

    async fn range_fingerprint(
        &self,
        partition: &str,
        incarnation: u32,
        range_start: u64,
    ) -> Result<Option<RangeFingerprint>> {
        let row = self
            .client
            .query(&format!(
                "{} WHERE partition = ? AND incarnation = ? AND range_start = ? LIMIT 1",
                select::<RangeFingerprintRow>()
            ))
            .bind(partition)
            .bind(incarnation)
            .bind(range_start)
            .fetch_optional::<RangeFingerprintRow>()
            .await?;
        Ok(row.map(RangeFingerprintRow::into_record))
    }

    async fn latest_incarnation(&self, partition: &str) -> Result<Option<u32>> {
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

    async fn write_source_progress(&self, rows: Vec<SourceProgress>) -> Result<()> {
        let rows: Vec<_> = rows
            .into_iter()
            .map(SourceProgressRow::from_record)
            .collect();
        self.insert(&rows).await
    }

    async fn source_progress(&self, source: &str) -> Result<Option<SourceProgress>> {
        // FINAL keeps the highest next_offset; the ORDER BY guards against
        // a replica that has not merged yet.
        let row = self
            .client
            .query(&format!(
                "{} WHERE source = ? ORDER BY next_offset DESC LIMIT 1",
                select::<SourceProgressRow>()
            ))
            .bind(source)
            .fetch_optional::<SourceProgressRow>()
            .await?;
        row.map(SourceProgressRow::into_record).transpose()
    }

    async fn write_join_predictions(&self, rows: &[JoinPrediction]) -> Result<()> {
        let rows = rows
            .iter()
            .map(JoinPredictionRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        self.insert(&rows).await
    }

    async fn join_predictions(&self, model: &str, keys: &[String]) -> Result<Vec<JoinPrediction>> {
        let mut found = Vec::new();
        for chunk in keys.chunks(1_000) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "{} WHERE model = ? AND join_key IN ({placeholders}) ORDER BY join_key, model_version",
                select::<JoinPredictionRow>()
            );
            let mut query = self.client.query(&sql).bind(model);
            for key in chunk {
                query = query.bind(key.as_str());
            }
            let rows = query.fetch_all::<JoinPredictionRow>().await?;
            found.extend(rows.into_iter().map(JoinPredictionRow::into_record));
        }
        found.sort_by(|a, b| (&a.key, &a.model_version).cmp(&(&b.key, &b.model_version)));
        Ok(found)
    }

    async fn write_pending_labels(&self, rows: Vec<JoinLabel>) -> Result<()> {
        let rows = rows
            .into_iter()
            .map(JoinLabelRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        self.insert(&rows).await
    }

    async fn pending_labels(&self, source: &str) -> Result<Vec<JoinLabel>> {
        let rows = self
            .client
            .query(&format!(
                "{} WHERE source = ? ORDER BY label_offset",
                select::<JoinLabelRow>()
            ))
            .bind(source)
            .fetch_all::<JoinLabelRow>()
            .await?;
        Ok(rows.into_iter().map(JoinLabelRow::into_record).collect())
    }

    async fn write_late_matches(&self, rows: Vec<LateMatch>) -> Result<()> {
        let rows = rows
            .into_iter()
            .map(LateMatchRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        self.insert(&rows).await
    }

    async fn late_matches_for_window(
        &self,
        model: &str,
        window_start: i64,
    ) -> Result<Vec<LateMatch>> {
        let rows = self
            .client
            .query(&format!(
                "{} WHERE model = ? AND window_start = ? ORDER BY source, label_offset, model_version",
                select::<LateMatchRow>()
            ))
            .bind(model)
            .bind(window_start)
            .fetch_all::<LateMatchRow>()
            .await?;
        Ok(rows.into_iter().map(LateMatchRow::into_record).collect())
    }

    async fn late_matches_of_source(&self, source: &str, from_ms: i64) -> Result<Vec<LateMatch>> {
        let rows = self
            .client
            .query(&format!(
                "{} WHERE source = ? AND label_time_ms >= ? ORDER BY label_offset, model_version",
                select::<LateMatchRow>()
            ))
            .bind(source)
            .bind(from_ms.max(0) as u64)
            .fetch_all::<LateMatchRow>()
            .await?;
        Ok(rows.into_iter().map(LateMatchRow::into_record).collect())
    }

    async fn expire_join_state(&self, before_ms: i64) -> Result<()> {
        let before = lower_bound_seconds(before_ms);
        for table in ["pending_predictions", "pending_labels"] {
            self.client
                .query(&format!(
                    "ALTER TABLE {table} DELETE WHERE time < toDateTime(?)"
                ))
                .bind(before)
                .execute()
                .await?;
        }
        Ok(())
    }

    async fn write_version_events(&self, events: Vec<VersionEvent>) -> Result<()> {
        let rows = events
            .into_iter()
            .map(VersionEventRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        self.insert(&rows).await
    }

    async fn version_events(&self, model: &str, limit: u64) -> Result<Vec<VersionEvent>> {
        let sql = format!(
            "{} WHERE model = ? ORDER BY time_ms DESC, sequence DESC LIMIT {limit}",
            select::<VersionEventRow>()
        );
        let rows = self
            .client
            .query(&sql)
            .bind(model)
            .fetch_all::<VersionEventRow>()
            .await?;
        rows.into_iter()
            .rev()
            .map(VersionEventRow::into_record)
            .collect()
    }

    async fn write_samples(
        &self,
        predictions: Vec<SampledPrediction>,
        labels: Vec<SampledLabel>,
    ) -> Result<()> {
        let predictions = predictions
            .into_iter()
            .map(SamplePredictionRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        let labels = labels
            .into_iter()
            .map(SampleLabelRow::from_record)
            .collect::<Result<Vec<_>>>()?;
        if !predictions.is_empty() {
            self.insert(&predictions).await?;
        }
        if !labels.is_empty() {
            self.insert(&labels).await?;
        }
        Ok(())
    }

    async fn sampled_predictions(
        &self,
        model: &str,
        model_version: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        limit: u64,
    ) -> Result<Vec<SampledPrediction>> {
        let version = if model_version.is_some() {
            " AND model_version = ?"
        } else {
            ""
        };
        let sql = format!(
            "{} WHERE model = ?{version} AND window_start >= toDateTime(?) AND window_start < toDateTime(?)
             ORDER BY window_start, prediction_id, model_version LIMIT {limit}",
            select::<SamplePredictionRow>()
        );
        let mut query = self.client.query(&sql).bind(model);
        if let Some(version) = model_version {
            query = query.bind(version);
        }
        let rows = query
            .bind(lower_bound_seconds(from_ms))
            .bind(upper_bound_seconds(to_ms))
            .fetch_all::<SamplePredictionRow>()
            .await?;
        Ok(rows
            .into_iter()
            .map(SamplePredictionRow::into_record)
            .collect())
    }

    async fn sampled_labels(
        &self,
        model: &str,
        prediction_ids: &[String],
    ) -> Result<Vec<SampledLabel>> {
        let mut labels = Vec::new();
        // Bounded statements: ids in chunks.
        for chunk in prediction_ids.chunks(1_000) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "{} WHERE model = ? AND prediction_id IN ({placeholders}) ORDER BY prediction_id",
                select::<SampleLabelRow>()
            );
            let mut query = self.client.query(&sql).bind(model);
            for id in chunk {
                query = query.bind(id.as_str());
            }
            let rows = query.fetch_all::<SampleLabelRow>().await?;
            labels.extend(rows.into_iter().map(SampleLabelRow::into_record));
        }
        Ok(labels)
    }

    async fn delete_samples_before(&self, before_ms: i64) -> Result<()> {
        let before = lower_bound_seconds(before_ms);
        for (table, column) in [
            ("sample_predictions", "window_start"),
            ("sample_labels", "time"),
        ] {
            self.client
                .query(&format!(
                    "ALTER TABLE {table} DELETE WHERE {column} < toDateTime(?)"
                ))
                .bind(before)
                .execute()
                .await?;
        }
        Ok(())
    }

    async fn latest_sample_window(&self) -> Result<Option<i64>> {
        let (rows, latest) = self
            .client
            .query("SELECT count(), toUInt32(max(window_start)) FROM sample_predictions")
            .fetch_one::<(u64, u32)>()
            .await?;
        Ok((rows > 0).then(|| crate::rows::to_millis(latest)))
    }
}
