//! Tidewatch's own pages: server-rendered HTML with the chart data inlined
//! as JSON, drawn by the embedded uPlot (`assets/vendor`) through
//! `assets/tidewatch.js`. No build step, no network.
//!
//! - `/`: every model, its latest window, drifted series there, the latest
//!   quality, and open alerts.
//! - `/models/{model}?version=&segment=&score=`: the drift heatmap (series ×
//!   window, coloured by score / threshold), per series its score against
//!   the threshold over time and its reference vs latest-window
//!   distribution, quality and label coverage over time, the versions'
//!   lifecycle from the registry (registered, reference, live periods,
//!   every alias change), and the alerts.

use detectors::metrics::{DriftTest, FeatureWindowMetrics};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use store::NotificationStatus;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use detectors::estimation::PerformanceMetric;
use detectors::reference::FeatureReference;
use detectors::sketch::FeatureSketch;
use detectors::spec::{FeatureKind, Task, ESTIMATED_QUALITY, MULTIVARIATE};
use serde::Deserialize;
use serde_json::{json, Value};
use store::{MetricsQuery, WindowMetrics};

use super::api::summarise;
use super::{ApiError, AppState};
use crate::report::format_time as time;
use alerting::payload::escape_html as escape;

/// Windows shown on a model page.
const PAGE_WINDOWS: i64 = 48;
/// Scores the heatmap can show (distances against the reference).
const SCORES: [DriftTest; 5] = [
    DriftTest::Psi,
    DriftTest::JensenShannon,
    DriftTest::Hellinger,
    DriftTest::WassersteinNormalized,
    DriftTest::KlDivergence,
];
/// Categories shown in a categorical distribution chart.
const TOP_CATEGORIES: usize = 12;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(overview))
        .route("/models/{model}", get(model_page))
        .route("/assets/{file}", get(asset))
}

const UPLOT_JS: &str = include_str!("../../assets/vendor/uplot-1.6.32/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/vendor/uplot-1.6.32/uPlot.min.css");
const TIDEWATCH_JS: &str = include_str!("../../assets/tidewatch.js");
const TIDEWATCH_CSS: &str = include_str!("../../assets/tidewatch.css");

async fn asset(Path(file): Path<String>) -> Response {
    let (content_type, body) = match file.as_str() {
        "uplot.min.js" => ("text/javascript; charset=utf-8", UPLOT_JS),
        "uplot.min.css" => ("text/css; charset=utf-8", UPLOT_CSS),
        "tidewatch.js" => ("text/javascript; charset=utf-8", TIDEWATCH_JS),
        "tidewatch.css" => ("text/css; charset=utf-8", TIDEWATCH_CSS),
        _ => return ApiError::not_found(format!("no asset `{file}`")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// A page with the common head (error capture before anything else runs,
/// so the browser test sees every error) and navigation.
fn page(title: &str, body: &str, data: Option<&Value>) -> Html<String> {
    let data = data
        .map(|data| {
            // `</` cannot close the script element inside a JSON string.
            let text = data.to_string().replace("</", "<\\/");
            format!("<script id=\"tw-data\" type=\"application/json\">{text}</script>")
        })
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · Tidewatch</title>\
<script>window.twErrors=[];window.addEventListener('error',function(e){{window.twErrors.push(String(e.message))}});\
(function(){{var o=console.error;console.error=function(){{window.twErrors.push(Array.prototype.join.call(arguments,' '));o.apply(console,arguments)}}}})();</script>\
<link rel=\"stylesheet\" href=\"/assets/uplot.min.css\"><link rel=\"stylesheet\" href=\"/assets/tidewatch.css\">\
</head><body><header><a class=\"brand\" href=\"/\">Tidewatch</a><span>{title}</span></header><main>{body}</main>{data}\
<script src=\"/assets/uplot.min.js\"></script><script src=\"/assets/tidewatch.js\"></script></body></html>",
        title = escape(title),
    ))
}

async fn overview(State(state): State<Arc<AppState>>) -> Result<Html<String>, ApiError> {
    let versions = state.store.model_versions().await?;
    let mut body = String::from(
        "<h1>Models</h1><table class=\"list\"><thead><tr><th>Model</th><th>Version</th>\
<th>Latest window (UTC)</th><th>Windows</th><th>Drifted series (latest)</th><th>Quality (latest)</th>\
<th>Open alerts</th></tr></thead><tbody>",
    );
    for spec in &state.models {
        let alerts = state.store.alerts(Some(spec.name()), 200).await?;
        let open = open_alerts(&alerts);
        let mine: Vec<&store::ModelVersionSummary> =
            versions.iter().filter(|v| v.model == spec.name()).collect();
        if mine.is_empty() {
            let _ = write!(
                body,
                "<tr><td><a href=\"/models/{m}\">{m}</a></td><td colspan=\"5\">no finalized window yet</td><td>{open}</td></tr>",
                m = escape(spec.name()),
            );
            continue;
        }
        for version in mine {
            let shown = version.last_input_window.unwrap_or(version.last_window);
            let rows = state
                .store
                .window_metrics(MetricsQuery {
                    model: Some(spec.name().to_owned()),
                    model_version: Some(version.model_version.clone()),
                    segment: Some("all".into()),
                    // A window holding only late labels is not the model's
                    // latest state: show the last one with predictions.
                    from_ms: Some(shown),
                    to_ms: Some(shown + 1),
                    ..Default::default()
                })
                .await?;
            let latest = summarise(rows).pop();
            let drifted = latest
                .as_ref()
                .map(|w| {
                    if w.drifted.is_empty() {
                        "none".to_owned()
                    } else {
                        format!(
                            "<span class=\"bad\">{}</span>: {}",
                            w.drifted.len(),
                            escape(&w.drifted.join(", "))
                        )
                    }
                })
                .unwrap_or_default();
            let quality = latest
                .as_ref()
                .and_then(|w| w.quality.as_ref())
                .map(|q| quality_line(spec.task(), q))
                .unwrap_or_else(|| "–".into());
            let _ = write!(
                body,
                "<tr><td><a href=\"/models/{m}?version={v}\">{m}</a></td><td>{v}</td><td>{t}</td><td>{n}</td><td>{drifted}</td><td>{quality}</td><td>{open}</td></tr>",
                m = escape(spec.name()),
                v = escape(&version.model_version),
                t = time(shown),
                n = version.windows,
            );
        }
    }
    body.push_str("</tbody></table>");
    Ok(page("Models", &body, None))
}

/// Alert ids whose latest notification is not a resolution.
fn open_alerts(alerts: &[store::AlertRecord]) -> usize {
    let mut latest: BTreeMap<&str, (i64, NotificationStatus)> = BTreeMap::new();
    for alert in alerts
        .iter()
        .filter(|a| a.status != NotificationStatus::Retrain)
    {
        let entry = latest
            .entry(&alert.id)
            .or_insert((alert.window_start, alert.status));
        if alert.window_start > entry.0 {
            *entry = (alert.window_start, alert.status);
        }
    }
    latest
        .values()
        .filter(|(_, status)| *status != NotificationStatus::Resolved)
        .count()
}

fn quality_line(task: Task, quality: &detectors::quality::QualityMetrics) -> String {
    let pairs: Vec<(&str, Option<f64>)> = match task {
        Task::Classification => vec![
            ("accuracy", quality.accuracy),
            ("F1", quality.f1),
            ("AUC", quality.roc_auc),
        ],
        Task::Regression => vec![("MAE", quality.mae), ("RMSE", quality.rmse)],
    };
    pairs
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name} {v:.3}")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Deserialize)]
struct ModelParams {
    version: Option<String>,
    segment: Option<String>,
    score: Option<String>,
}

/// Test `score` in `metrics`.
fn score_of(metrics: &detectors::FeatureWindowMetrics, score: DriftTest) -> Option<ScoreCell> {
    metrics
        .tests
        .iter()
        .find(|t| t.test == score)
        .map(|t| ScoreCell {
            value: t.value,
            threshold: t.threshold,
            drifted: t.drifted,
        })
}

/// Heat colour of `value / threshold`: green below half, amber to the
/// threshold, red beyond (darker up to three times the threshold).
fn heat(ratio: f64) -> String {
    let ratio = ratio.max(0.0);
    if ratio < 0.5 {
        "#d8f0dc".into()
    } else if ratio < 1.0 {
        "#fbe7a1".into()
    } else {
        let t = ((ratio - 1.0) / 2.0).min(1.0);
        let lightness = 72.0 - 32.0 * t;
        format!("hsl(4, 75%, {lightness:.0}%)")
    }
}

/// What a model page shows, loaded from the store; rendered by the
/// `render_*` functions below, each one section of the page.
struct ModelView {
    model: String,
    version: String,
    segment: String,
    /// Every version of the model with a finalized window.
    versions: Vec<String>,
    score: DriftTest,
    /// Window starts shown, ascending.
    windows: Vec<i64>,
    series: Vec<SeriesView>,
    /// Per quality metric its value in each window, then label coverage.
    quality: Option<QualityView>,
    /// Estimated against realized performance (classifiers with a positive
    /// class and a reference with scores and labels).
    estimated: Option<EstimatedView>,
    /// The mean reconstruction error and its band (models with
    /// multivariate drift).
    multivariate: Option<MultivariateView>,
    alerts: Vec<store::AlertRecord>,
    /// The registry's history of the model's versions.
    timeline: crate::lifecycle::Timeline,
}

/// One series of a model page.
struct SeriesView {
    name: String,
    /// The score in each of [`ModelView::windows`].
    cells: Vec<Option<ScoreCell>>,
    /// The score's threshold (the first window that has one).
    threshold: Option<f64>,
    /// Reference vs the latest window with data.
    distribution: Option<Value>,
}

/// The score of one series in one window.
#[derive(Clone, Copy)]
struct ScoreCell {
    value: f64,
    threshold: f64,
    drifted: bool,
}

struct QualityView {
    /// (metric, value per window).
    metrics: Vec<(&'static str, Vec<Option<f64>>)>,
    /// Matched labels / predictions per window.
    coverage: Vec<Option<f64>>,
    /// With several versions in these windows (a champion and its
    /// challenger): the first metric of each version per window.
    by_version: Vec<(String, Vec<Option<f64>>)>,
}

/// Per estimated metric: the estimate, its band and the realized value in
/// each window.
struct EstimatedView {
    metrics: Vec<EstimatedSeries>,
}

struct EstimatedSeries {
    metric: PerformanceMetric,
    estimated: Vec<Option<f64>>,
    lower: Vec<Option<f64>>,
    upper: Vec<Option<f64>>,
    realized: Vec<Option<f64>>,
    /// Windows whose estimate left the band.
    alerts: usize,
}

/// The mean reconstruction error per window with its band.
struct MultivariateView {
    mean: Vec<Option<f64>>,
    lower: Vec<Option<f64>>,
    upper: Vec<Option<f64>>,
    /// Windows whose mean left the band.
    alerts: usize,
}

/// Charts inlined as JSON; each is drawn into the element that names its
/// index.
#[derive(Default)]
struct Charts(Vec<Value>);

impl Charts {
    /// Adds `chart`; returns the element it is drawn into.
    fn add(&mut self, chart: Value) -> String {
        self.0.push(chart);
        format!(
            "<div class=\"chart\" data-chart=\"{}\"></div>",
            self.0.len() - 1
        )
    }
}

/// Why a model page has nothing to draw.
enum Empty {
    NoWindow { version: Option<String> },
    NoSegment { segment: String },
}

async fn model_page(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    Query(params): Query<ModelParams>,
) -> Result<Response, ApiError> {
    let view = match load_model_view(&state, model, params).await? {
        Ok(view) => view,
        Err((model, empty)) => {
            let body = match empty {
                Empty::NoWindow { version } => format!(
                    "<h1>{}</h1><p>No finalized window yet{}.</p>",
                    escape(&model),
                    version
                        .map(|v| format!(" for version {}", escape(&v)))
                        .unwrap_or_default()
                ),
                Empty::NoSegment { segment } => format!(
                    "<h1>{}</h1><p>No window for segment <code>{}</code>.</p>",
                    escape(&model),
                    escape(&segment)
                ),
            };
            return Ok(page(&model, &body, None).into_response());
        }
    };
    let mut charts = Charts::default();
    let mut body = format!(
        "<h1>{m} <small>v{v} · segment {s}</small></h1>",
        m = escape(&view.model),
        v = escape(&view.version),
        s = escape(&view.segment)
    );
    body.push_str(&render_controls(&view));
    body.push_str(&render_heatmap(&view));
    body.push_str(&render_series(&view, &mut charts));
    body.push_str(&render_multivariate(&view, &mut charts));
    body.push_str(&render_estimated(&view, &mut charts));
    body.push_str(&render_quality(&view, &mut charts));
    body.push_str(&render_versions(&view.timeline));
    body.push_str(&render_alerts(&view.alerts));
    let data = json!({"charts": charts.0});
    Ok(page(&view.model, &body, Some(&data)).into_response())
}

/// Loads what the page of `model` shows; `Err((model, why))` when there is
/// nothing to draw.
async fn load_model_view(
    state: &AppState,
    model: String,
    params: ModelParams,
) -> Result<Result<ModelView, (String, Empty)>, ApiError> {
    let Some(spec) = state.models.iter().find(|s| s.name() == model).cloned() else {
        return Err(ApiError::not_found(format!("no model named `{model}`")));
    };
    let score_name = params
        .score
        .unwrap_or_else(|| DriftTest::Psi.as_str().into());
    let Some(score) = DriftTest::parse(&score_name).filter(|test| SCORES.contains(test)) else {
        return Err(ApiError::bad_request(format!(
            "`score` must be one of {}",
            SCORES.map(DriftTest::as_str).join(", ")
        )));
    };
    let segment = params.segment.unwrap_or_else(|| "all".into());
    let versions = state.store.model_versions().await?;
    let mine: Vec<&store::ModelVersionSummary> =
        versions.iter().filter(|v| v.model == model).collect();
    let chosen = match &params.version {
        Some(version) => mine.iter().find(|v| &v.model_version == version).copied(),
        None => mine.iter().max_by_key(|v| v.last_window).copied(),
    };
    let Some(chosen) = chosen else {
        let version = params.version;
        return Ok(Err((model, Empty::NoWindow { version })));
    };
    let version = chosen.model_version.clone();
    let from = chosen.last_window - (PAGE_WINDOWS - 1) * state.window_ms;
    let rows = state
        .store
        .window_metrics(MetricsQuery {
            model: Some(model.clone()),
            model_version: Some(version.clone()),
            segment: Some(segment.clone()),
            from_ms: Some(from),
            ..Default::default()
        })
        .await?;
    if rows.is_empty() {
        return Ok(Err((model, Empty::NoSegment { segment })));
    }
    let windows: Vec<i64> = rows
        .iter()
        .map(|r| r.key.window_start)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut by_series: BTreeMap<&str, BTreeMap<i64, &WindowMetrics>> = BTreeMap::new();
    for row in &rows {
        by_series
            .entry(row.key.feature.as_str())
            .or_default()
            .insert(row.key.window_start, row);
    }

    // Per series: its score in each window, and its distribution in the
    // latest window that has data against the reference.
    let reference = state.store.reference(&model, &version).await?;
    let drawn: Vec<(String, FeatureKind)> = spec
        .series()
        .filter(|s| matches!(s.kind, FeatureKind::Numeric | FeatureKind::Categorical))
        .map(|s| (s.name.clone(), s.kind))
        .collect();
    let latest_of: BTreeMap<&str, i64> = drawn
        .iter()
        .filter_map(|(name, _)| {
            let points = by_series.get(name.as_str())?;
            let (window, _) = points.iter().rev().find(|(_, row)| row.metrics.count > 0)?;
            Some((name.as_str(), *window))
        })
        .collect();
    let mut sketches: BTreeMap<(String, i64), FeatureSketch> = BTreeMap::new();
    for window in latest_of.values().collect::<BTreeSet<_>>() {
        for sketch in state
            .store
            .window_sketches(&model, *window, *window + 1)
            .await?
        {
            if sketch.key.segment == segment && sketch.key.model_version == version {
                if let Ok(decoded) = FeatureSketch::from_bytes(&sketch.sketch) {
                    sketches.insert((sketch.key.feature.clone(), *window), decoded);
                }
            }
        }
    }
    let series = drawn
        .iter()
        .map(|(name, kind)| {
            let points = by_series.get(name.as_str());
            let cells = windows
                .iter()
                .map(|w| {
                    points
                        .and_then(|p| p.get(w))
                        .and_then(|row| score_of(&row.metrics, score))
                })
                .collect();
            let threshold = points
                .and_then(|p| p.values().find_map(|row| score_of(&row.metrics, score)))
                .map(|cell| cell.threshold);
            let distribution = latest_of.get(name.as_str()).and_then(|window| {
                distribution_chart(
                    *kind,
                    reference.as_ref().and_then(|r| r.features.get(name)),
                    sketches.get(&(name.clone(), *window)),
                    &time(*window),
                )
            });
            SeriesView {
                name: name.clone(),
                cells,
                threshold,
                distribution,
            }
        })
        .collect();

    let quality = by_series.get("quality").map(|quality_rows| {
        let metric_names: &[&'static str] = match spec.task() {
            Task::Classification => &["accuracy", "f1", "roc_auc"],
            Task::Regression => &["mae", "rmse", "r2"],
        };
        let metrics = metric_names
            .iter()
            .map(|metric| {
                let values = windows
                    .iter()
                    .map(|w| {
                        quality_rows
                            .get(w)
                            .and_then(|row| alerting::lifecycle::metric_value(&row.metrics, metric))
                    })
                    .collect();
                (*metric, values)
            })
            .collect();
        let operations = by_series.get("operations");
        let coverage = windows
            .iter()
            .map(|w| {
                let matched = quality_rows.get(w)?.metrics.quality.as_ref()?.matched;
                let predictions = operations?.get(w)?.metrics.count;
                (predictions > 0).then(|| matched as f64 / predictions as f64)
            })
            .collect();
        QualityView {
            metrics,
            coverage,
            by_version: Vec::new(),
        }
    });
    let estimated = by_series.get(ESTIMATED_QUALITY).map(|estimated_rows| {
        let shown = match spec.task() {
            Task::Classification => [PerformanceMetric::Accuracy, PerformanceMetric::RocAuc],
            Task::Regression => [PerformanceMetric::Mae, PerformanceMetric::Rmse],
        };
        let metrics = shown
            .into_iter()
            .map(|metric| {
                let of = |w: &i64| {
                    estimated_rows
                        .get(w)?
                        .metrics
                        .estimated
                        .iter()
                        .find(|e| e.metric == metric)
                        .copied()
                };
                let column = |pick: fn(&detectors::estimation::EstimatedMetric) -> Option<f64>| {
                    windows
                        .iter()
                        .map(|w| of(w).and_then(|e| pick(&e)))
                        .collect()
                };
                EstimatedSeries {
                    metric,
                    estimated: column(|e| Some(e.value)),
                    lower: column(|e| e.lower_threshold),
                    upper: column(|e| e.upper_threshold),
                    realized: windows
                        .iter()
                        .map(|w| {
                            let row = by_series.get("quality")?.get(w)?;
                            alerting::lifecycle::metric_value(&row.metrics, metric.as_str())
                        })
                        .collect(),
                    alerts: windows
                        .iter()
                        .filter(|w| of(w).is_some_and(|e| e.alert))
                        .count(),
                }
            })
            .collect();
        EstimatedView { metrics }
    });
    let multivariate = by_series.get(MULTIVARIATE).map(|rows| {
        let column = |pick: fn(&FeatureWindowMetrics) -> Option<f64>| {
            windows
                .iter()
                .map(|w| rows.get(w).and_then(|row| pick(&row.metrics)))
                .collect()
        };
        MultivariateView {
            mean: column(|m| m.mean),
            lower: column(|m| m.reconstruction_lower),
            upper: column(|m| m.reconstruction_upper),
            alerts: rows
                .values()
                .filter(|row| row.metrics.drifted == Some(true))
                .count(),
        }
    });
    // Champion against challenger: every version's first quality metric
    // over the same windows.
    let mut quality = quality;
    if let (Some(quality), true) = (&mut quality, mine.len() > 1) {
        let metric = match spec.task() {
            Task::Classification => "accuracy",
            Task::Regression => "mae",
        };
        let rows = state
            .store
            .window_metrics(MetricsQuery {
                model: Some(model.clone()),
                segment: Some(segment.clone()),
                feature: Some("quality".into()),
                from_ms: Some(from),
                ..Default::default()
            })
            .await?;
        let mut by_version: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
        for row in &rows {
            if let Some(value) = alerting::lifecycle::metric_value(&row.metrics, metric) {
                by_version
                    .entry(row.key.model_version.clone())
                    .or_default()
                    .insert(row.key.window_start, value);
            }
        }
        if by_version.len() > 1 {
            quality.by_version = by_version
                .into_iter()
                .map(|(version, values)| {
                    let per_window = windows.iter().map(|w| values.get(w).copied()).collect();
                    (version, per_window)
                })
                .collect();
        }
    }

    let alerts = state.store.alerts(Some(&model), 50).await?;
    let (timeline, _) = crate::lifecycle::load(&state.store, &model).await?;
    Ok(Ok(ModelView {
        versions: mine.iter().map(|v| v.model_version.clone()).collect(),
        model,
        version,
        segment,
        score,
        windows,
        series,
        quality,
        estimated,
        multivariate,
        alerts,
        timeline,
    }))
}

/// The version, segment and score pickers.
fn render_controls(view: &ModelView) -> String {
    let mut body = String::from("<form class=\"controls\" method=\"get\">");
    let _ = write!(
        body,
        "<label>Version <select name=\"version\">{}</select></label>",
        view.versions
            .iter()
            .map(|v| format!(
                "<option{sel}>{v}</option>",
                sel = if *v == view.version { " selected" } else { "" },
                v = escape(v)
            ))
            .collect::<String>()
    );
    let _ = write!(
        body,
        "<label>Segment <input name=\"segment\" value=\"{}\"></label>",
        escape(&view.segment)
    );
    let _ = write!(
        body,
        "<label>Score <select name=\"score\">{}</select></label><button>Show</button></form>",
        SCORES
            .iter()
            .map(|test| format!(
                "<option value=\"{name}\"{sel}>{label}</option>",
                name = test.as_str(),
                label = test.display_name(),
                sel = if *test == view.score { " selected" } else { "" }
            ))
            .collect::<String>()
    );
    body
}

/// Series × window, coloured by score / threshold.
fn render_heatmap(view: &ModelView) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h2>Drift: {score_label} per series and window (UTC)</h2><p class=\"legend\">\
<span style=\"background:#d8f0dc\">below half the threshold</span> \
<span style=\"background:#fbe7a1\">below the threshold</span> \
<span style=\"background:hsl(4,75%,56%)\">drifted</span> · ● = the test's drift verdict</p>\
<div class=\"scroll\"><table class=\"heatmap\" id=\"heatmap\"><thead><tr><th></th>",
        score_label = view.score.display_name()
    );
    for window in &view.windows {
        let _ = write!(
            body,
            "<th title=\"{}\">{}</th>",
            time(*window),
            chrono::DateTime::from_timestamp_millis(*window)
                .map(|t| t.format("%d %Hh").to_string())
                .unwrap_or_default()
        );
    }
    body.push_str("</tr></thead><tbody>");
    for series in &view.series {
        let _ = write!(body, "<tr><th>{}</th>", escape(&series.name));
        for (window, cell) in view.windows.iter().zip(&series.cells) {
            match cell {
                Some(cell) => {
                    let ratio = if cell.threshold > 0.0 {
                        cell.value / cell.threshold
                    } else {
                        0.0
                    };
                    let _ = write!(
                        body,
                        "<td class=\"cell{d}\" style=\"background:{c}\" title=\"{n} {t}: {v:.4} (threshold {th:.4})\">{mark}</td>",
                        d = if cell.drifted { " drifted" } else { "" },
                        c = heat(ratio),
                        n = escape(&series.name),
                        t = time(*window),
                        v = cell.value,
                        th = cell.threshold,
                        mark = if cell.drifted { "●" } else { "" },
                    );
                }
                None => body.push_str("<td class=\"cell empty\"></td>"),
            }
        }
        body.push_str("</tr>");
    }
    body.push_str("</tbody></table></div>");
    body
}

/// Per series, its score against the threshold over time and its
/// distribution against the reference.
fn render_series(view: &ModelView, charts: &mut Charts) -> String {
    let score_label = view.score.display_name();
    let x: Vec<i64> = view.windows.iter().map(|w| w / 1000).collect();
    let mut body = String::from("<h2>Per series</h2><div class=\"grid\">");
    for series in &view.series {
        let _ = write!(
            body,
            "<section class=\"card\"><h3>{}</h3>",
            escape(&series.name)
        );
        let values: Vec<Option<f64>> = series
            .cells
            .iter()
            .map(|cell| cell.map(|cell| cell.value))
            .collect();
        if values.iter().any(Option::is_some) {
            body.push_str(&charts.add(json!({
                "kind": "time",
                "title": format!("{score_label} vs threshold"),
                "x": x,
                "series": [
                    {"label": score_label, "values": values, "color": "#1f6feb"},
                    {"label": "threshold", "values": vec![series.threshold; x.len()], "color": "#d1242f", "dash": true},
                ],
            })));
        } else {
            body.push_str(
                "<p class=\"note\">No score: the reference profile has no such series.</p>",
            );
        }
        if let Some(chart) = &series.distribution {
            body.push_str(&charts.add(chart.clone()));
        }
        body.push_str("</section>");
    }
    body.push_str("</div>");
    body
}

/// Performance estimated from the scores against the realized one, with
/// the estimate's band (nothing without an estimator in the reference).
fn render_estimated(view: &ModelView, charts: &mut Charts) -> String {
    let Some(estimated) = &view.estimated else {
        return String::new();
    };
    let x: Vec<i64> = view.windows.iter().map(|w| w / 1000).collect();
    let mut body = String::from(
        "<h2>Estimated performance</h2><p class=\"note\">Estimated before the labels arrive \
         (classifiers: from the scores, CBPE; regression: from the inputs and the prediction, direct \
         loss estimation); realized once they have. Valid while the relation between inputs and \
         labels holds (covariate shift), not under concept shift.</p>",
    );
    for series in &estimated.metrics {
        let name = series.metric.as_str();
        let lines = vec![
            json!({"label": format!("estimated {name}"), "values": series.estimated, "color": "#1f6feb"}),
            json!({"label": format!("realized {name}"), "values": series.realized, "color": "#1a7f37"}),
            json!({"label": "lower threshold", "values": series.lower, "color": "#cf222e", "dash": true}),
            json!({"label": "upper threshold", "values": series.upper, "color": "#cf222e", "dash": true}),
        ];
        let _ = write!(
            body,
            "<section class=\"card wide\" id=\"estimated-{name}\" data-alerts=\"{}\">{}</section>",
            series.alerts,
            charts.add(json!({"kind": "time", "title": format!("{name}: estimated and realized ({} windows outside the band)", series.alerts), "x": x, "series": lines}))
        );
    }
    body
}

/// The mean reconstruction error against its band (nothing without
/// multivariate drift).
fn render_multivariate(view: &ModelView, charts: &mut Charts) -> String {
    let Some(multivariate) = &view.multivariate else {
        return String::new();
    };
    let x: Vec<i64> = view.windows.iter().map(|w| w / 1000).collect();
    let lines = vec![
        json!({"label": "mean reconstruction error", "values": multivariate.mean, "color": "#8250df"}),
        json!({"label": "lower threshold", "values": multivariate.lower, "color": "#cf222e", "dash": true}),
        json!({"label": "upper threshold", "values": multivariate.upper, "color": "#cf222e", "dash": true}),
    ];
    format!(
        "<h2>Multivariate drift</h2><p class=\"note\">The rows' mean error of reconstruction from the \
         reference's principal components: it rises when the features stop moving together as they did \
         in the reference, which no single feature's drift shows.</p>\
         <section class=\"card wide\" id=\"multivariate\" data-alerts=\"{alerts}\">{chart}</section>",
        alerts = multivariate.alerts,
        chart = charts.add(json!({"kind": "time", "title": format!("reconstruction error ({} windows outside the band)", multivariate.alerts), "x": x, "series": lines}))
    )
}

/// Quality metrics and label coverage over time (nothing without labels).
fn render_quality(view: &ModelView, charts: &mut Charts) -> String {
    let Some(quality) = &view.quality else {
        return String::new();
    };
    let colors = ["#1f6feb", "#8250df", "#1a7f37"];
    let mut chart_series: Vec<Value> = quality
        .metrics
        .iter()
        .zip(colors)
        .map(|((metric, values), color)| json!({"label": metric, "values": values, "color": color}))
        .collect();
    chart_series.push(json!({"label": "label coverage", "values": quality.coverage, "color": "#9a6700", "dash": true}));
    let x: Vec<i64> = view.windows.iter().map(|w| w / 1000).collect();
    let mut body = format!(
        "<h2>Model quality</h2><section class=\"card wide\">{}</section>",
        charts.add(json!({"kind": "time", "title": "quality and label coverage", "x": x, "series": chart_series}))
    );
    if !quality.by_version.is_empty() {
        let palette = ["#1f6feb", "#cf222e", "#1a7f37", "#8250df", "#9a6700"];
        let metric = quality.metrics.first().map_or("quality", |(name, _)| *name);
        let series: Vec<Value> = quality
            .by_version
            .iter()
            .zip(palette.iter().cycle())
            .map(|((version, values), color)| {
                json!({"label": format!("v{version}"), "values": values, "color": color})
            })
            .collect();
        let _ = write!(
            body,
            "<section class=\"card wide\" id=\"versions-compared\">{}</section>",
            charts.add(json!({"kind": "time", "title": format!("{metric} by version, same windows (champion and challenger)"), "x": x, "series": series}))
        );
    }
    body
}

/// The versions' lifecycle from the registry: when each was registered,
/// got its reference, went live and was retired, then every change.
fn render_versions(timeline: &crate::lifecycle::Timeline) -> String {
    use crate::lifecycle::EntryKind;
    let mut body = String::from("<h2>Versions</h2>");
    if timeline.entries.is_empty() {
        body.push_str("<p>No registry event for this model (register its versions in Tidewatch's registry, or bridge MLflow).</p>");
        return body;
    }
    let optional = |value: Option<i64>| value.map(time).unwrap_or_else(|| "–".into());
    body.push_str("<table class=\"list\" id=\"versions\"><thead><tr><th>Version</th><th>Registered (UTC)</th>\
<th>Source</th><th>Run</th><th>Reference attached</th><th>Aliases</th><th>Live (UTC)</th></tr></thead><tbody>");
    for life in &timeline.versions {
        let live = life
            .live
            .iter()
            .map(|period| {
                format!(
                    "{} → {}",
                    time(period.from_ms),
                    period.until_ms.map(time).unwrap_or_else(|| "now".into())
                )
            })
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = write!(
            body,
            "<tr><td>{v}</td><td>{r}</td><td><code>{src}</code></td><td><code>{run}</code></td>\
<td>{refat}</td><td>{aliases}</td><td>{live}</td></tr>",
            v = escape(&life.version),
            r = optional(life.registered_ms),
            src = escape(life.source.as_deref().unwrap_or("")),
            run = escape(life.run_id.as_deref().unwrap_or("")),
            refat = optional(life.reference_attached_ms),
            aliases = escape(&life.aliases.join(", ")),
            live = if live.is_empty() { "–".into() } else { live },
        );
    }
    body.push_str("</tbody></table><details><summary>Timeline: registry changes, retraining, promotion decisions</summary><table class=\"list\" id=\"timeline\"><thead><tr><th>Time (UTC)</th><th>Version</th><th>What</th></tr></thead><tbody>");
    for entry in timeline.entries.iter().rev() {
        let what = match (entry.kind, &entry.alias, &entry.other_version) {
            (EntryKind::Registered, _, _) => "registered".to_owned(),
            (EntryKind::ReferenceAttached, _, _) => "reference profile attached".to_owned(),
            (EntryKind::AliasSet, Some(alias), Some(other)) => {
                format!(
                    "alias <b>{}</b> moved here from v{}",
                    escape(alias),
                    escape(other)
                )
            }
            (EntryKind::AliasSet, alias, _) => {
                format!(
                    "alias <b>{}</b> set",
                    escape(alias.as_deref().unwrap_or(""))
                )
            }
            (EntryKind::AliasDeleted, alias, _) => {
                format!(
                    "alias <b>{}</b> deleted",
                    escape(alias.as_deref().unwrap_or(""))
                )
            }
            (EntryKind::Promoted, _, Some(other)) => {
                format!("<b>promoted</b> to champion (replacing v{})", escape(other))
            }
            (EntryKind::Promoted, _, None) => "<b>promoted</b> to champion".to_owned(),
            (EntryKind::Retired, _, Some(other)) => {
                format!("<b>retired</b> (replaced by v{})", escape(other))
            }
            (EntryKind::Retired, _, None) => "<b>retired</b>".to_owned(),
            (EntryKind::RetrainRequested, _, _) => format!(
                "retraining requested: {}",
                escape(entry.detail["reason"].as_str().unwrap_or(""))
            ),
            (EntryKind::Trained, _, _) => format!(
                "trained on {} labelled rows (request <code>{}</code>)",
                entry.detail["rows"],
                escape(entry.detail["request_id"].as_str().unwrap_or(""))
            ),
            (EntryKind::PromotionDecided, _, _) => {
                let evidence = &entry.detail["evidence"];
                format!(
                    "promotion decided: <b>{}</b> against v{} ({} {:.4} vs {:.4} on {} shared requests, {} p = {:.2e})",
                    escape(entry.detail["verdict"].as_str().unwrap_or("")),
                    escape(entry.detail["champion"].as_str().unwrap_or("")),
                    escape(evidence["metric"].as_str().unwrap_or("")),
                    evidence["challenger"].as_f64().unwrap_or(f64::NAN),
                    evidence["champion"].as_f64().unwrap_or(f64::NAN),
                    evidence["pairs"],
                    escape(evidence["test"].as_str().unwrap_or("")),
                    evidence["p_value"].as_f64().unwrap_or(f64::NAN),
                )
            }
        };
        let _ = write!(
            body,
            "<tr class=\"{kind}\"><td>{t}</td><td>{v}</td><td>{what}</td></tr>",
            kind = serde_json::to_value(entry.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            t = time(entry.time_ms),
            v = escape(&entry.version),
        );
    }
    body.push_str("</tbody></table></details>");
    body
}

/// The model's latest alerts.
fn render_alerts(alerts: &[store::AlertRecord]) -> String {
    let mut body = String::from("<h2>Alerts</h2>");
    if alerts.is_empty() {
        body.push_str("<p>No alert.</p>");
        return body;
    }
    body.push_str("<table class=\"list\" id=\"alerts\"><thead><tr><th>Window (UTC)</th><th>Status</th><th>Severity</th><th>Summary</th><th>Id</th></tr></thead><tbody>");
    for alert in alerts {
        let _ = write!(
            body,
            "<tr class=\"{status}\"><td>{w}</td><td>{status}{repeat}</td><td>{sev}</td><td>{sum}</td><td><code>{id}</code></td></tr>",
            w = time(alert.window_start),
            status = alert.status.as_str(),
            repeat = if alert.repeat { " (repeat)" } else { "" },
            sev = alert.severity.as_str(),
            sum = escape(&alert.summary),
            id = escape(&alert.id),
        );
    }
    body.push_str("</tbody></table>");
    body
}

/// Reference vs current: quantile curves for numeric series, category
/// shares for categorical ones.
fn distribution_chart(
    kind: FeatureKind,
    reference: Option<&FeatureReference>,
    current: Option<&FeatureSketch>,
    window: &str,
) -> Option<Value> {
    match (kind, reference, current) {
        (FeatureKind::Numeric, reference, Some(FeatureSketch::Numeric(sketch))) => {
            let levels: Vec<f64> = (1..20).map(|i| i as f64 * 0.05).collect();
            let current: Vec<Option<f64>> = levels.iter().map(|q| sketch.quantile(*q)).collect();
            let reference: Vec<Option<f64>> = match reference {
                Some(FeatureReference::Numeric(r)) if !r.quantiles.is_empty() => levels
                    .iter()
                    .map(|q| {
                        let index =
                            ((q * r.quantiles.len() as f64) as usize).min(r.quantiles.len() - 1);
                        Some(r.quantiles[index])
                    })
                    .collect(),
                _ => vec![None; levels.len()],
            };
            Some(json!({
                "kind": "quantile",
                "title": "quantiles: reference vs latest window",
                "x": levels,
                "series": [
                    {"label": "reference", "values": reference, "color": "#57606a", "dash": true},
                    {"label": format!("window {window}"), "values": current, "color": "#1f6feb"},
                ],
            }))
        }
        (FeatureKind::Categorical, reference, Some(FeatureSketch::Categorical(sketch))) => {
            let total = sketch.total().max(1) as f64;
            let (reference_counts, reference_total) = match reference {
                Some(FeatureReference::Categorical(r)) => {
                    let total = (r.counts.values().sum::<u64>() + r.other).max(1) as f64;
                    (Some(&r.counts), total)
                }
                _ => (None, 1.0),
            };
            let mut categories: Vec<(&String, u64)> =
                sketch.counts().iter().map(|(c, n)| (c, *n)).collect();
            if let Some(counts) = reference_counts {
                // Categories the window lacks still show their reference share.
                for category in counts.keys() {
                    if !sketch.counts().contains_key(category) {
                        categories.push((category, 0));
                    }
                }
            }
            categories.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            categories.truncate(TOP_CATEGORIES);
            let labels: Vec<&String> = categories.iter().map(|(c, _)| *c).collect();
            let current: Vec<f64> = categories.iter().map(|(_, n)| *n as f64 / total).collect();
            let reference: Vec<Option<f64>> = categories
                .iter()
                .map(|(c, _)| {
                    reference_counts
                        .map(|counts| counts.get(*c).copied().unwrap_or(0) as f64 / reference_total)
                })
                .collect();
            Some(json!({
                "kind": "bars",
                "title": "category shares: reference vs latest window",
                "labels": labels,
                "x": (0..labels.len()).collect::<Vec<_>>(),
                "series": [
                    {"label": "reference", "values": reference, "color": "#8c959f"},
                    {"label": format!("window {window}"), "values": current, "color": "#1f6feb"},
                ],
            }))
        }
        _ => None,
    }
}
