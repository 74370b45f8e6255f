//! The JSON API under `/api/v1` (documented in `openapi.json`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use detectors::metrics::FeatureWindowMetrics;
use serde::{Deserialize, Serialize};
use store::{MetricsQuery, WindowMetrics};

use super::{ApiError, AppState, DEFAULT_LIMIT, MAX_LIMIT};

/// Most metric rows read to summarise windows in one request.
const MAX_SUMMARY_ROWS: u64 = 50_000;

/// Every API route: the router is built from this table, and a test checks
/// that the OpenAPI document describes exactly these paths.
fn table() -> Vec<(&'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        ("/api/v1/health", get(health)),
        ("/api/v1/ready", get(ready)),
        ("/api/v1/models", get(models)),
        ("/api/v1/models/{model}/windows", get(windows)),
        ("/api/v1/models/{model}/metrics", get(metrics)),
        ("/api/v1/models/{model}/timeline", get(timeline)),
        ("/api/v1/models/{model}/training-data", get(training_data)),
        ("/api/v1/references", get(references)),
        (
            "/api/v1/references/{model}/{version}",
            get(reference).put(put_reference),
        ),
        ("/api/v1/alerts", get(alerts)),
        ("/api/v1/alerts/{id}", get(alert)),
    ]
}

pub(super) fn routes() -> Router<Arc<AppState>> {
    table()
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when the store answers and the pipeline reports no problem (no
/// store operation being retried, a broker up, the consumer not stalled).
async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.model_versions().await?;
    let problems = state.telemetry.pipeline.health().problems();
    if !problems.is_empty() {
        let names: Vec<&str> = problems.iter().map(|p| p.as_str()).collect();
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("not ready: {}", names.join(", ")),
        ));
    }
    Ok(Json(serde_json::json!({"status": "ready"})))
}

/// A time given as RFC 3339 or as milliseconds since the epoch.
fn parse_time(name: &str, value: &Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    if let Ok(millis) = value.parse::<i64>() {
        return Ok(Some(millis));
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|time| Some(time.timestamp_millis()))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "`{name}`: `{value}` is neither RFC 3339 nor milliseconds since the epoch"
            ))
        })
}

fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// An `offset` the stores can take (a signed 64-bit integer in SQL).
fn page_offset(offset: u64) -> Result<u64, ApiError> {
    if offset > i64::MAX as u64 {
        return Err(ApiError::bad_request(format!(
            "`offset`: {offset} is larger than {}",
            i64::MAX
        )));
    }
    Ok(offset)
}

fn page_limit(limit: Option<u64>) -> Result<u64, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(ApiError::bad_request("`limit` must be at least 1")),
        limit if limit > MAX_LIMIT => Err(ApiError::bad_request(format!(
            "`limit` must be at most {MAX_LIMIT}"
        ))),
        limit => Ok(limit),
    }
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(value)| value)
        .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}

fn known_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    if state.models.iter().any(|spec| spec.name() == model) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no model named `{model}`")))
    }
}

#[derive(Serialize)]
struct VersionView {
    version: String,
    first_window: Option<String>,
    last_window: Option<String>,
    /// The last window with predictions or feature rows (not only labels).
    last_input_window: Option<String>,
    windows: u64,
    reference: Option<ReferenceView>,
}

#[derive(Serialize)]
struct ModelView {
    name: String,
    task: &'static str,
    features: Vec<FeatureView>,
    segment_keys: Vec<String>,
    versions: Vec<VersionView>,
}

#[derive(Serialize)]
struct FeatureView {
    name: String,
    kind: &'static str,
}

#[derive(Serialize, Clone)]
struct ReferenceView {
    model: String,
    version: String,
    source: String,
    row_count: u64,
    created_at: String,
}

impl From<store::ReferenceSummary> for ReferenceView {
    fn from(summary: store::ReferenceSummary) -> Self {
        Self {
            model: summary.model,
            version: summary.model_version,
            source: summary.source,
            row_count: summary.row_count,
            created_at: rfc3339(summary.created_at as i64),
        }
    }
}

fn kind_name(kind: detectors::spec::FeatureKind) -> &'static str {
    kind.as_str()
}

/// Models with their versions: what the store holds, by version.
pub(super) async fn model_views(state: &AppState) -> Result<Vec<serde_json::Value>, ApiError> {
    let versions = state.store.model_versions().await?;
    let references = state.store.references().await?;
    let mut views = Vec::new();
    for spec in &state.models {
        let mut by_version: BTreeMap<String, VersionView> = BTreeMap::new();
        for summary in versions.iter().filter(|v| v.model == spec.name()) {
            by_version.insert(
                summary.model_version.clone(),
                VersionView {
                    version: summary.model_version.clone(),
                    first_window: Some(rfc3339(summary.first_window)),
                    last_window: Some(rfc3339(summary.last_window)),
                    last_input_window: summary.last_input_window.map(rfc3339),
                    windows: summary.windows,
                    reference: None,
                },
            );
        }
        for reference in references.iter().filter(|r| r.model == spec.name()) {
            by_version
                .entry(reference.model_version.clone())
                .or_insert_with(|| VersionView {
                    version: reference.model_version.clone(),
                    first_window: None,
                    last_window: None,
                    last_input_window: None,
                    windows: 0,
                    reference: None,
                })
                .reference = Some(reference.clone().into());
        }
        let view = ModelView {
            name: spec.name().to_owned(),
            task: match spec.task() {
                detectors::spec::Task::Classification => "classification",
                detectors::spec::Task::Regression => "regression",
            },
            features: spec
                .series()
                .map(|s| FeatureView {
                    name: s.name.clone(),
                    kind: kind_name(s.kind),
                })
                .collect(),
            segment_keys: spec.segment_keys().to_vec(),
            versions: by_version.into_values().collect(),
        };
        views.push(serde_json::to_value(view).expect("views serialize"));
    }
    Ok(views)
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({"models": model_views(&state).await?}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsParams {
    version: Option<String>,
    segment: Option<String>,
    feature: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u64>,
    #[serde(default)]
    offset: u64,
}

#[derive(Serialize)]
struct MetricsRowView {
    version: String,
    segment: String,
    feature: String,
    window_start: String,
    window_end: String,
    window_start_ms: i64,
    reference_source: Option<String>,
    metrics: FeatureWindowMetrics,
}

impl From<WindowMetrics> for MetricsRowView {
    fn from(row: WindowMetrics) -> Self {
        Self {
            version: row.key.model_version,
            segment: row.key.segment,
            feature: row.key.feature,
            window_start: rfc3339(row.key.window_start),
            window_end: rfc3339(row.window_end),
            window_start_ms: row.key.window_start,
            reference_source: row.reference_source,
            metrics: row.metrics,
        }
    }
}

async fn metrics(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    params: Result<Query<MetricsParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let params = query(params)?;
    known_model(&state, &model)?;
    let limit = page_limit(params.limit)?;
    let offset = page_offset(params.offset)?;
    let mut rows = state
        .store
        .window_metrics(MetricsQuery {
            model: Some(model),
            model_version: params.version,
            segment: params.segment,
            feature: params.feature,
            from_ms: parse_time("from", &params.from)?,
            to_ms: parse_time("to", &params.to)?,
            limit: Some(limit + 1),
            offset,
        })
        .await?;
    let next_offset = (rows.len() as u64 > limit).then(|| offset + limit);
    rows.truncate(limit as usize);
    let rows: Vec<MetricsRowView> = rows.into_iter().map(Into::into).collect();
    Ok(Json(
        serde_json::json!({"metrics": rows, "next_offset": next_offset}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowParams {
    version: Option<String>,
    segment: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u64>,
    #[serde(default)]
    offset: u64,
}

/// One window of a model version and segment, summarised.
#[derive(Serialize)]
pub(super) struct WindowView {
    pub version: String,
    pub segment: String,
    pub window_start: String,
    pub window_end: String,
    pub window_start_ms: i64,
    pub series: usize,
    pub drifted: Vec<String>,
    pub predictions: Option<u64>,
    pub quality: Option<detectors::quality::QualityMetrics>,
    /// Performance estimated from the scores (before the labels).
    pub estimated: Vec<detectors::estimation::EstimatedMetric>,
    /// Multivariate drift: the mean reconstruction error and its band.
    pub multivariate: Option<MultivariateView>,
}

/// A window's mean reconstruction error (the `multivariate` series).
#[derive(Serialize)]
pub(super) struct MultivariateView {
    pub mean_error: f64,
    pub rows: u64,
    pub sampling_error: Option<f64>,
    pub lower_threshold: Option<f64>,
    pub upper_threshold: Option<f64>,
    /// Outside the band; `None` without a reference or with too few rows.
    pub alert: Option<bool>,
}

impl MultivariateView {
    fn of(metrics: &FeatureWindowMetrics) -> Option<Self> {
        Some(Self {
            mean_error: metrics.mean?,
            rows: metrics.count,
            sampling_error: metrics.reconstruction_sampling_error,
            lower_threshold: metrics.reconstruction_lower,
            upper_threshold: metrics.reconstruction_upper,
            alert: metrics.drifted,
        })
    }
}

/// Groups metric rows into window summaries, oldest first.
pub(super) fn summarise(rows: Vec<WindowMetrics>) -> Vec<WindowView> {
    let mut windows: BTreeMap<(i64, String, String), WindowView> = BTreeMap::new();
    for row in rows {
        let view = windows
            .entry((
                row.key.window_start,
                row.key.model_version.clone(),
                row.key.segment.clone(),
            ))
            .or_insert_with(|| WindowView {
                version: row.key.model_version.clone(),
                segment: row.key.segment.clone(),
                window_start: rfc3339(row.key.window_start),
                window_end: rfc3339(row.window_end),
                window_start_ms: row.key.window_start,
                series: 0,
                drifted: Vec::new(),
                predictions: None,
                quality: None,
                estimated: Vec::new(),
                multivariate: None,
            });
        view.series += 1;
        match row.key.feature.as_str() {
            "quality" => view.quality = row.metrics.quality,
            "estimated_quality" => view.estimated = row.metrics.estimated,
            detectors::spec::MULTIVARIATE => view.multivariate = MultivariateView::of(&row.metrics),
            "operations" => view.predictions = Some(row.metrics.count),
            feature => {
                if row.metrics.drifted == Some(true) {
                    view.drifted.push(feature.to_owned());
                }
            }
        }
    }
    windows.into_values().collect()
}

async fn windows(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    params: Result<Query<WindowParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let params = query(params)?;
    known_model(&state, &model)?;
    let limit = page_limit(params.limit)?;
    let offset = page_offset(params.offset)?;
    let rows = state
        .store
        .window_metrics(MetricsQuery {
            model: Some(model),
            model_version: params.version,
            segment: Some(params.segment.unwrap_or_else(|| "all".into())),
            from_ms: parse_time("from", &params.from)?,
            to_ms: parse_time("to", &params.to)?,
            limit: Some(MAX_SUMMARY_ROWS + 1),
            ..Default::default()
        })
        .await?;
    let truncated = rows.len() as u64 > MAX_SUMMARY_ROWS;
    let all = summarise(rows);
    let total = all.len() as u64;
    let page: Vec<WindowView> = all
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(limit as usize)
        .collect();
    let next_offset = (offset.saturating_add(limit) < total).then(|| offset + limit);
    Ok(Json(serde_json::json!({
        "windows": page,
        "next_offset": next_offset,
        "truncated": truncated,
    })))
}

/// RFC 3339 with milliseconds (registry changes are ms apart).
fn rfc3339_millis(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[derive(Serialize)]
struct LiveView {
    from: String,
    until: Option<String>,
}

#[derive(Serialize)]
struct VersionLifeView {
    version: String,
    registered_at: Option<String>,
    source: Option<String>,
    run_id: Option<String>,
    reference_attached_at: Option<String>,
    reference_source: Option<String>,
    aliases: Vec<String>,
    live: Vec<LiveView>,
}

#[derive(Serialize)]
struct TimelineEntryView {
    time: String,
    kind: crate::lifecycle::EntryKind,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    other_version: Option<String>,
    detail: serde_json::Value,
}

/// The lifecycle of a model's versions from the registry's events: when
/// each was registered, got its reference, went live and was retired.
async fn timeline(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (timeline, truncated) = crate::lifecycle::load(&state.store, &model).await?;
    let versions: Vec<VersionLifeView> = timeline
        .versions
        .into_iter()
        .map(|life| VersionLifeView {
            version: life.version,
            registered_at: life.registered_ms.map(rfc3339_millis),
            source: life.source,
            run_id: life.run_id,
            reference_attached_at: life.reference_attached_ms.map(rfc3339_millis),
            reference_source: life.reference_source,
            aliases: life.aliases,
            live: life
                .live
                .into_iter()
                .map(|period| LiveView {
                    from: rfc3339_millis(period.from_ms),
                    until: period.until_ms.map(rfc3339_millis),
                })
                .collect(),
        })
        .collect();
    let entries: Vec<TimelineEntryView> = timeline
        .entries
        .into_iter()
        .map(|entry| TimelineEntryView {
            time: rfc3339_millis(entry.time_ms),
            kind: entry.kind,
            version: entry.version,
            alias: entry.alias,
            other_version: entry.other_version,
            detail: entry.detail,
        })
        .collect();
    Ok(Json(serde_json::json!({
        "model": model,
        "versions": versions,
        "events": entries,
        "truncated": truncated,
    })))
}

async fn references(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let references: Vec<ReferenceView> = state
        .store
        .references()
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(serde_json::json!({"references": references})))
}

async fn reference(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<detectors::ReferenceProfile>, ApiError> {
    state
        .store
        .reference(&model, &version)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no reference profile for {model} v{version}")))
}

/// Most rows `training-data` answers at once.
pub const MAX_TRAINING_ROWS: u64 = 100_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainingDataQuery {
    from: Option<String>,
    to: Option<String>,
    version: Option<String>,
    limit: Option<u64>,
}

/// The labelled rows of the training sample between `from` and `to`:
/// what the reference trainer trains on, for one's own trainer. JSON
/// lines, one object per request id (the `version`'s answer when it has
/// one): the configured features, `prediction.score`, `prediction.class`
/// and `actual.label`; the header `Tidewatch-Features` lists the
/// features in their configured order (the order a registered ONNX
/// version's input columns must have). Needs the API token (the rows are
/// users' data).
async fn training_data(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    query: Result<Query<TrainingDataQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let spec = state
        .models
        .iter()
        .find(|spec| spec.name() == model)
        .ok_or_else(|| ApiError::not_found(format!("no model named `{model}` is configured")))?;
    let (Some(start_ms), Some(end_ms)) = (
        parse_time("from", &query.from)?,
        parse_time("to", &query.to)?,
    ) else {
        return Err(ApiError::bad_request("`from` and `to` are required"));
    };
    let limit = query.limit.unwrap_or(10_000);
    if limit == 0 || limit > MAX_TRAINING_ROWS {
        return Err(ApiError::bad_request(format!(
            "`limit`: from 1 to {MAX_TRAINING_ROWS}"
        )));
    }
    let request = crate::retrainer::RetrainRequest {
        request_id: String::new(),
        model: model.clone(),
        version: query.version.unwrap_or_default(),
        start_ms,
        end_ms,
    };
    let (_, records) = crate::retrainer::training_set(&state.store, spec, &request, limit).await?;
    let mut body = String::new();
    for record in records {
        body.push_str(&serde_json::Value::Object(record).to_string());
        body.push('\n');
    }
    // JSON objects do not keep an order: the configured one is here.
    let features: Vec<&str> = spec
        .series()
        .take(spec.configured_feature_count())
        .map(|f| f.name.as_str())
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (
                header::HeaderName::from_static("tidewatch-features"),
                features.join(","),
            ),
        ],
        body,
    )
        .into_response())
}

/// Checks `Authorization: Bearer <token>` in constant time.
pub(super) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "writes_disabled",
            "no API token is configured ([http] token_env), so writes are disabled",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let matches = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        ))
    }
}

/// Builds (from training data) or takes (a profile document) a reference
/// and stores it.
async fn put_reference(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // Nothing of the body is read before the token is checked.
    authorize(&state, &headers)?;
    let spec = state
        .models
        .iter()
        .find(|spec| spec.name() == model)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no model named `{model}`")))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let extension = match content_type.as_str() {
        "application/json" => None,
        "text/csv" => Some("csv"),
        "application/x-ndjson" | "application/jsonl" => Some("jsonl"),
        "application/vnd.apache.parquet" => Some("parquet"),
        "application/vnd.apache.arrow.file" => Some("arrow"),
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "`{other}`: send training data as text/csv, application/x-ndjson, \
                     application/vnd.apache.parquet or application/vnd.apache.arrow.file, \
                     or a profile as application/json"
                ),
            ))
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > state.max_body_bytes as u64) {
        return Err(too_large(state.max_body_bytes));
    }
    let upload = receive(body, &state, extension).await?;
    let profile = match (extension, upload) {
        (None, Upload::Memory(body)) => {
            let profile: detectors::ReferenceProfile = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("not a reference profile: {e}")))?;
            if profile.model != model || profile.model_version != version {
                return Err(ApiError::bad_request(format!(
                    "the profile is for {} v{}, not {model} v{version}",
                    profile.model, profile.model_version
                )));
            }
            profile
        }
        (_, Upload::File(file)) => {
            let version = version.clone();
            tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
                let built = crate::training::build_reference(&spec, &version, file.path())
                    .map_err(|e| {
                        ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "invalid_training_data",
                            format!("{e:#}"),
                        )
                    })?;
                Ok(built.profile)
            })
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "task", e.to_string())
            })??
        }
        (Some(_), Upload::Memory(_)) => unreachable!("training data is received into a file"),
    };
    let created_at = ingest::finalize::now_millis();
    state.store.put_reference(&profile, created_at).await?;
    // A registered version's reference is an event of the registry too.
    if let Some(registry) = &state.registry {
        if let Err(error) = registry
            .reference_uploaded(
                profile.model.clone(),
                profile.model_version.clone(),
                profile.source.clone(),
                profile.row_count,
            )
            .await
        {
            tracing::warn!(%error, "the registry did not record the uploaded reference");
        }
    }
    let view = ReferenceView {
        model: profile.model,
        version: profile.model_version,
        source: profile.source,
        row_count: profile.row_count,
        created_at: rfc3339(created_at as i64),
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// A temporary file holding `bytes`, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_path(extension: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "tidewatch-upload-{}-{}.{extension}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A received upload: a profile document in memory, or training data in a
/// temporary file.
enum Upload {
    Memory(Vec<u8>),
    File(TempFile),
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is larger than [http] max_body_bytes ({limit} bytes)"),
    )
}

/// Reads `body` part by part, refusing it as soon as it passes
/// `max_body_bytes` or pauses longer than `request_timeout`: training data
/// (`extension`) goes to a temporary file as it arrives, a profile document
/// to memory; neither is ever held whole beyond the limit.
async fn receive(
    body: axum::body::Body,
    state: &AppState,
    extension: Option<&str>,
) -> Result<Upload, ApiError> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let io =
        |e: std::io::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string());
    let mut body = body;
    let mut memory = Vec::new();
    let mut file = match extension {
        Some(extension) => {
            let path = temp_path(extension);
            let handle = tokio::fs::File::create(&path).await.map_err(io)?;
            Some((TempFile(path), handle))
        }
        None => None,
    };
    let mut received = 0usize;
    loop {
        let frame = tokio::time::timeout(state.request_timeout, body.frame())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!("the body paused longer than {:?}", state.request_timeout),
                )
            })?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len();
        if received > state.max_body_bytes {
            return Err(too_large(state.max_body_bytes));
        }
        match &mut file {
            Some((_, handle)) => handle.write_all(&data).await.map_err(io)?,
            None => memory.extend_from_slice(&data),
        }
    }
    Ok(match file {
        Some((path, mut handle)) => {
            handle.flush().await.map_err(io)?;
            Upload::File(path)
        }
        None => Upload::Memory(memory),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertParams {
    model: Option<String>,
    limit: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct AlertView {
    pub id: String,
    pub status: store::NotificationStatus,
    pub rule: String,
    pub model: String,
    pub version: String,
    pub segment: String,
    pub severity: store::Severity,
    pub repeat: bool,
    pub window_start: String,
    pub window_end: String,
    pub summary: String,
    pub recorded_at: String,
    pub notification: serde_json::Value,
}

impl From<store::AlertRecord> for AlertView {
    fn from(record: store::AlertRecord) -> Self {
        Self {
            notification: serde_json::from_str(&record.payload).unwrap_or_default(),
            id: record.id,
            status: record.status,
            rule: record.rule,
            model: record.model,
            version: record.model_version,
            segment: record.segment,
            severity: record.severity,
            repeat: record.repeat,
            window_start: rfc3339(record.window_start),
            window_end: rfc3339(record.window_end),
            summary: record.summary,
            recorded_at: rfc3339(record.created_at as i64),
        }
    }
}

async fn alerts(
    State(state): State<Arc<AppState>>,
    params: Result<Query<AlertParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let params = query(params)?;
    let limit = page_limit(params.limit)?;
    let alerts: Vec<AlertView> = state
        .store
        .alerts(params.model.as_deref(), limit)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(serde_json::json!({"alerts": alerts})))
}

async fn alert(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let notifications: Vec<AlertView> = state
        .store
        .alert_notifications(&id)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    if notifications.is_empty() {
        return Err(ApiError::not_found(format!("no alert with id `{id}`")));
    }
    let deliveries: Vec<serde_json::Value> = state
        .store
        .deliveries(&id)
        .await?
        .into_iter()
        .map(|d| {
            serde_json::json!({
                "status": d.status,
                "window_start": rfc3339(d.window_start),
                "channel": d.channel,
                "state": d.state.as_str(),
                "attempts": d.attempts,
                "next_attempt_at": rfc3339(d.next_attempt_at as i64),
                "last_error": d.last_error,
                "updated_at": rfc3339(d.updated_at as i64),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "id": id,
        "notifications": notifications,
        "deliveries": deliveries,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        let document = super::super::openapi_document();
        assert_eq!(document["openapi"], "3.1.0");
        let documented: Vec<&str> = document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut routed: Vec<&str> = table().iter().map(|(path, _)| *path).collect();
        routed.sort_unstable();
        assert_eq!(documented, routed);
        // Every $ref resolves.
        let text = document.to_string();
        for reference in text.split("\"$ref\":\"#/").skip(1) {
            let pointer = format!("/{}", &reference[..reference.find('"').unwrap()]);
            assert!(
                document.pointer(&pointer).is_some(),
                "{pointer} does not resolve"
            );
        }
    }

    #[test]
    fn times_are_rfc3339_or_milliseconds_and_limits_are_bounded() {
        assert_eq!(
            parse_time("from", &Some("1767571200000".into())).unwrap(),
            Some(1_767_571_200_000)
        );
        assert_eq!(
            parse_time("from", &Some("2026-01-05T00:00:00Z".into())).unwrap(),
            Some(1_767_571_200_000)
        );
        assert!(parse_time("to", &Some("yesterday".into()))
            .unwrap_err()
            .message
            .contains("`to`"));
        assert_eq!(page_limit(None).unwrap(), DEFAULT_LIMIT);
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(MAX_LIMIT + 1)).is_err());
    }
}
