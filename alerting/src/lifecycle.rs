//! From window metrics to alert notifications: consecutive windows, firing,
//! cooldown, resolution.
//!
//! [`AlertEvaluator::evaluate`] takes every series' metrics of one model and
//! window (all versions and segments) and returns the notifications to send.
//! Per (rule, model, version, segment):
//!
//! ```text
//!   ok ──condition holds `for_windows` windows in a row──► firing  (notify: firing)
//!   firing ──still holds, `cooldown_windows` since last──► firing  (notify: repeat)
//!   firing ──clear for `resolve_after` windows in a row──► ok      (notify: resolved)
//! ```
//!
//! A window is evaluated once per key: a window finalized again (late labels
//! join its quality) is ignored when it is not newer than the last one seen,
//! unless it could not be judged yet (`quality_drop` waits for
//! `min_labels` labelled predictions in the window).
//! The alert id is stable for one firing episode (rule, model, version,
//! segment and the window it started in), so channels can deduplicate.

use std::collections::BTreeMap;

use detectors::metrics::{DriftTest, FeatureWindowMetrics};
use detectors::spec::{ESTIMATED_QUALITY, MULTIVARIATE};
use serde::{Deserialize, Serialize};
use store::WindowMetrics;

use crate::notification::{NotificationStatus, Severity};
use crate::rules::{ChangeDetector, Condition, Rule};

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// The condition holds.
    Firing,
    /// The condition cleared.
    Resolved,
}

impl AlertStatus {
    /// The status as stored and sent: `firing` or `resolved`.
    pub fn as_str(self) -> &'static str {
        NotificationStatus::from(self).as_str()
    }
}

impl From<AlertStatus> for NotificationStatus {
    fn from(status: AlertStatus) -> Self {
        match status {
            AlertStatus::Firing => NotificationStatus::Firing,
            AlertStatus::Resolved => NotificationStatus::Resolved,
        }
    }
}

/// One series behind an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Series name.
    pub feature: String,
    /// Test or metric.
    pub test: String,
    /// Its value.
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
}

/// A notification to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable id of the firing episode (idempotency key).
    pub id: String,
    /// Rule name.
    pub rule: String,
    /// Model.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Segment.
    pub segment: String,
    /// Severity.
    pub severity: Severity,
    /// Firing or resolved.
    pub status: AlertStatus,
    /// True for a reminder of an alert already firing.
    pub repeat: bool,
    /// Start of the window that caused this notification, ms.
    pub window_start: i64,
    /// End of that window, ms.
    pub window_end: i64,
    /// The series behind it, most severe first.
    pub findings: Vec<Finding>,
    /// One line for humans.
    pub summary: String,
    /// Channels to notify.
    pub channels: Vec<String>,
    /// Whether retraining should be requested.
    pub retrain: bool,
    /// Start of the first window of the run of windows that met the
    /// condition (for a resolution: of the window that resolved it), ms.
    #[serde(default)]
    pub onset: i64,
}

impl Alert {
    /// The notification as the store records it (payload: the alert as JSON).
    pub fn to_record(&self, created_at: u64) -> store::AlertRecord {
        store::AlertRecord {
            id: self.id.clone(),
            status: self.status.into(),
            window_start: self.window_start,
            window_end: self.window_end,
            rule: self.rule.clone(),
            model: self.model.clone(),
            model_version: self.model_version.clone(),
            segment: self.segment.clone(),
            severity: self.severity,
            repeat: self.repeat,
            summary: self.summary.clone(),
            payload: serde_json::to_string(self).expect("alerts serialize"),
            created_at,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct RuleState {
    consecutive_true: u32,
    consecutive_false: u32,
    /// Start of the first window of the current run meeting the condition.
    streak_start: i64,
    /// (alert id, windows since the last notification).
    firing: Option<(String, u32)>,
    last_window: Option<i64>,
    /// Values of the metric in the first windows (quality-drop baseline,
    /// band).
    baseline: Vec<f64>,
    /// The change detector of a `change` condition.
    change: Option<ChangeState>,
}

/// A change detector's state.
#[derive(Debug, Clone)]
enum ChangeState {
    PageHinkley(detectors::change::PageHinkley),
    Adwin(detectors::change::Adwin),
}

impl ChangeState {
    fn new(
        detector: ChangeDetector,
        delta: Option<f64>,
        threshold: Option<f64>,
        min_windows: Option<u64>,
    ) -> Self {
        use detectors::change::{Adwin, AdwinConfig, PageHinkley, PageHinkleyConfig};
        match detector {
            ChangeDetector::PageHinkley => {
                let defaults = PageHinkleyConfig::default();
                Self::PageHinkley(PageHinkley::new(PageHinkleyConfig {
                    min_instances: min_windows.unwrap_or(CHANGE_MIN_WINDOWS),
                    delta: delta.unwrap_or(defaults.delta),
                    threshold: threshold.unwrap_or(defaults.threshold),
                    ..defaults
                }))
            }
            ChangeDetector::Adwin => {
                let defaults = AdwinConfig::default();
                Self::Adwin(Adwin::new(AdwinConfig {
                    delta: delta.unwrap_or(defaults.delta),
                    // One value per window: check at every window.
                    clock: 1,
                    grace_period: min_windows.unwrap_or(CHANGE_MIN_WINDOWS),
                    ..defaults
                }))
            }
        }
    }

    fn update(&mut self, value: f64) -> bool {
        match self {
            Self::PageHinkley(detector) => detector.update(value),
            Self::Adwin(detector) => detector.update(value),
        }
    }
}

/// Windows a change detector sees before it may fire, unless configured.
const CHANGE_MIN_WINDOWS: u64 = 5;

/// Evaluates rules window after window. See the module docs.
#[derive(Debug, Clone)]
pub struct AlertEvaluator {
    rules: Vec<Rule>,
    states: BTreeMap<(String, String, String, String), RuleState>,
}

/// Series that are not model inputs or outputs.
const NON_DRIFT_SERIES: [&str; 4] = ["operations", "quality", ESTIMATED_QUALITY, MULTIVARIATE];

impl AlertEvaluator {
    /// An evaluator of `rules`.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            states: BTreeMap::new(),
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Evaluates one closed window of `model` (every series, version and
    /// segment in `metrics`) and returns the notifications to send.
    pub fn evaluate(&mut self, model: &str, metrics: &[WindowMetrics]) -> Vec<Alert> {
        let mut by_group: BTreeMap<(&str, &str, i64), Vec<&WindowMetrics>> = BTreeMap::new();
        for record in metrics.iter().filter(|m| m.key.model == model) {
            by_group
                .entry((
                    record.key.model_version.as_str(),
                    record.key.segment.as_str(),
                    record.key.window_start,
                ))
                .or_default()
                .push(record);
        }
        let mut alerts = Vec::new();
        for ((version, segment, window_start), series) in by_group {
            let window_end = series.first().map_or(window_start, |m| m.window_end);
            for rule in &self.rules {
                if rule.segment != segment || !rule.applies_to(model, version) {
                    continue;
                }
                let key = (
                    rule.name.clone(),
                    model.to_owned(),
                    version.to_owned(),
                    segment.to_owned(),
                );
                let state = self.states.entry(key).or_default();
                if state.last_window.is_some_and(|last| window_start <= last) {
                    continue;
                }
                let verdict = condition_verdict(&rule.condition, &series, state);
                if matches!(verdict, Verdict::NotYet) {
                    continue;
                }
                state.last_window = Some(window_start);
                let findings = match verdict {
                    // Too little data for a verdict: neither fires nor clears.
                    Verdict::Undecided | Verdict::NotYet => continue,
                    Verdict::Holds(findings) => Some(findings),
                    Verdict::Clear => None,
                };
                if findings.is_some() && state.consecutive_true == 0 {
                    state.streak_start = window_start;
                }
                let onset = if findings.is_some() {
                    state.streak_start
                } else {
                    window_start
                };
                let alert =
                    |status: AlertStatus, id: &str, repeat: bool, findings: Vec<Finding>| Alert {
                        id: id.to_owned(),
                        rule: rule.name.clone(),
                        model: model.to_owned(),
                        model_version: version.to_owned(),
                        segment: segment.to_owned(),
                        severity: rule.severity,
                        status,
                        repeat,
                        window_start,
                        window_end,
                        summary: summary(rule, model, version, status, &findings),
                        findings,
                        channels: rule.channels.clone(),
                        retrain: rule.retrain && status == AlertStatus::Firing && !repeat,
                        onset,
                    };
                match findings {
                    Some(findings) => {
                        state.consecutive_true += 1;
                        state.consecutive_false = 0;
                        match &mut state.firing {
                            None if state.consecutive_true >= rule.for_windows => {
                                let id =
                                    alert_id(&rule.name, model, version, segment, window_start);
                                alerts.push(alert(AlertStatus::Firing, &id, false, findings));
                                state.firing = Some((id, 0));
                            }
                            None => {}
                            Some((id, since_notified)) => {
                                *since_notified += 1;
                                if *since_notified >= rule.cooldown_windows {
                                    *since_notified = 0;
                                    alerts.push(alert(AlertStatus::Firing, id, true, findings));
                                }
                            }
                        }
                    }
                    None => {
                        state.consecutive_false += 1;
                        state.consecutive_true = 0;
                        if let Some((id, since_notified)) = &mut state.firing {
                            *since_notified += 1;
                            if state.consecutive_false >= rule.resolve_after {
                                let id = id.clone();
                                alerts.push(alert(AlertStatus::Resolved, &id, false, Vec::new()));
                                state.firing = None;
                            }
                        }
                    }
                }
            }
        }
        alerts
    }
}

/// The value of `metric` of series `feature` in this window.
fn series_metric(series: &[&WindowMetrics], feature: &str, metric: &str) -> Option<f64> {
    let record = series.iter().find(|m| m.key.feature == feature)?;
    metric_value(&record.metrics, metric)
}

/// One finding: series `feature`'s `test` at `value` past `threshold`.
fn single(feature: &str, test: String, value: f64, threshold: f64) -> Vec<Finding> {
    vec![Finding {
        feature: feature.to_owned(),
        test,
        value,
        threshold,
    }]
}

/// Collects `value` into the baseline until it holds `windows` values;
/// `None` while collecting, then the baseline.
fn baseline(state: &mut RuleState, windows: usize, value: f64) -> Option<&[f64]> {
    if state.baseline.len() < windows {
        state.baseline.push(value);
        return None;
    }
    Some(&state.baseline)
}

/// What a window says about a rule's condition.
enum Verdict {
    /// The condition holds, for these reasons.
    Holds(Vec<Finding>),
    /// The condition does not hold.
    Clear,
    /// The window has too little data to tell (a series without a verdict,
    /// a metric that could not be computed, a baseline still filling): it
    /// neither fires nor clears the rule.
    Undecided,
    /// The window cannot be judged yet but may be when it is finalized
    /// again (too few labels joined so far): as `Undecided`, and the
    /// window is not counted as seen.
    NotYet,
}

impl Verdict {
    /// `Holds` with the findings, else `Clear`.
    fn from_findings(findings: Option<Vec<Finding>>) -> Self {
        findings.map_or(Verdict::Clear, Verdict::Holds)
    }
}

/// Unwraps a value the verdict needs, or returns `Undecided`.
macro_rules! or_undecided {
    ($value:expr) => {
        match $value {
            Some(value) => value,
            None => return Verdict::Undecided,
        }
    };
}

/// The verdict of `condition` on this window's series.
fn condition_verdict(
    condition: &Condition,
    series: &[&WindowMetrics],
    state: &mut RuleState,
) -> Verdict {
    match condition {
        Condition::Drift { min_features, test } => {
            let inputs = || {
                series
                    .iter()
                    .filter(|m| !NON_DRIFT_SERIES.contains(&m.key.feature.as_str()))
            };
            let mut findings: Vec<Finding> = inputs()
                .filter_map(|m| drift_finding(&m.key.feature, &m.metrics, *test))
                .collect();
            findings.sort_by(|a, b| severity_of(b).total_cmp(&severity_of(a)));
            // A series has a verdict with a reference and enough values.
            let decided = inputs().filter(|m| m.metrics.drifted.is_some()).count();
            if findings.len() >= *min_features {
                Verdict::Holds(findings)
            } else if decided < *min_features {
                Verdict::Undecided
            } else {
                Verdict::Clear
            }
        }
        Condition::Threshold {
            feature,
            metric,
            above,
            below,
        } => {
            let value = or_undecided!(series_metric(series, feature, metric));
            let crossed = match (above, below) {
                (Some(limit), _) if value > *limit => Some(*limit),
                (_, Some(limit)) if value < *limit => Some(*limit),
                _ => None,
            };
            Verdict::from_findings(
                crossed.map(|threshold| single(feature, metric.clone(), value, threshold)),
            )
        }
        Condition::QualityDrop {
            metric,
            max_drop,
            baseline_windows,
            min_labels,
        } => {
            let labelled = or_undecided!(series
                .iter()
                .find(|m| m.key.feature == "quality")
                .and_then(|m| m.metrics.quality.as_ref()))
            .matched;
            if labelled < *min_labels {
                return Verdict::NotYet;
            }
            let value = or_undecided!(series_metric(series, "quality", metric));
            let values = or_undecided!(baseline(state, *baseline_windows, value));
            let floor = values.iter().sum::<f64>() / values.len() as f64 - max_drop;
            Verdict::from_findings(
                (value < floor).then(|| single("quality", metric.clone(), value, floor)),
            )
        }
        Condition::Band {
            feature,
            metric,
            k,
            baseline_windows,
        } => {
            let value = or_undecided!(series_metric(series, feature, metric));
            let (lower, upper) = band(or_undecided!(baseline(state, *baseline_windows, value)), *k);
            let crossed = if value < lower {
                Some(lower)
            } else if value > upper {
                Some(upper)
            } else {
                None
            };
            Verdict::from_findings(
                crossed.map(|threshold| single(feature, metric.clone(), value, threshold)),
            )
        }
        Condition::EstimatedPerformance { metric } => {
            let estimated = or_undecided!(series
                .iter()
                .find(|m| m.key.feature == ESTIMATED_QUALITY)
                .and_then(|m| m.metrics.estimated.iter().find(|e| e.metric == *metric)));
            let crossed = match (estimated.lower_threshold, estimated.upper_threshold) {
                (Some(lower), _) if estimated.value < lower => Some(lower),
                (_, Some(upper)) if estimated.value > upper => Some(upper),
                _ => None,
            };
            Verdict::from_findings(crossed.map(|threshold| {
                single(
                    ESTIMATED_QUALITY,
                    format!("estimated {}", metric.as_str()),
                    estimated.value,
                    threshold,
                )
            }))
        }
        Condition::MultivariateDrift {} => {
            let metrics =
                &or_undecided!(series.iter().find(|m| m.key.feature == MULTIVARIATE)).metrics;
            let mean = or_undecided!(metrics.mean);
            let drifted = or_undecided!(metrics.drifted);
            let threshold = if mean < metrics.reconstruction_lower.unwrap_or(f64::NEG_INFINITY) {
                metrics.reconstruction_lower
            } else {
                metrics.reconstruction_upper
            };
            Verdict::from_findings(drifted.then(|| {
                single(
                    MULTIVARIATE,
                    "reconstruction error".to_owned(),
                    mean,
                    threshold.unwrap_or(f64::NAN),
                )
            }))
        }
        Condition::Change {
            feature,
            metric,
            detector,
            delta,
            threshold,
            min_windows,
        } => {
            let value = or_undecided!(series_metric(series, feature, metric));
            let change = state.change.get_or_insert_with(|| {
                ChangeState::new(*detector, *delta, *threshold, *min_windows)
            });
            let limit = match detector {
                ChangeDetector::PageHinkley => {
                    threshold.unwrap_or(detectors::change::PageHinkleyConfig::default().threshold)
                }
                ChangeDetector::Adwin => {
                    delta.unwrap_or(detectors::change::AdwinConfig::default().delta)
                }
            };
            Verdict::from_findings(change.update(value).then(|| {
                let test = format!("{metric} ({})", detector_name(*detector));
                single(feature, test, value, limit)
            }))
        }
    }
}

fn drift_finding(
    feature: &str,
    metrics: &FeatureWindowMetrics,
    test: Option<DriftTest>,
) -> Option<Finding> {
    // Without a named test, the series' own verdict and the test it names.
    let test = match test {
        Some(test) => Some(test),
        None if metrics.drifted == Some(true) => metrics.decided_by,
        None => return None,
    };
    match test {
        // Stored before the verdict named its test: the verdict was PSI's.
        None => Some(Finding {
            feature: feature.to_owned(),
            test: DriftTest::Psi.as_str().into(),
            value: metrics.psi?,
            threshold: metrics.psi_threshold,
        }),
        Some(name) => metrics
            .tests
            .iter()
            .find(|t| t.test == name && t.drifted)
            .map(|t| Finding {
                feature: feature.to_owned(),
                test: t.test.as_str().into(),
                value: t.value,
                threshold: t.threshold,
            }),
    }
}

/// How far past its threshold a finding is (p-values: below is worse).
fn severity_of(finding: &Finding) -> f64 {
    if DriftTest::parse(&finding.test).is_some_and(DriftTest::is_p_value) {
        finding.threshold / finding.value.max(f64::MIN_POSITIVE)
    } else {
        finding.value / finding.threshold.max(f64::MIN_POSITIVE)
    }
}

/// A metric of a series by name: summaries, quality, operations, or a test value.
pub fn metric_value(metrics: &FeatureWindowMetrics, name: &str) -> Option<f64> {
    let quality = metrics.quality.as_ref();
    match name {
        "count" => Some(metrics.count as f64),
        "missing_rate" => metrics.missing_rate,
        "mean" => metrics.mean,
        "std_dev" => metrics.std_dev,
        "min" => metrics.min,
        "max" => metrics.max,
        "out_of_range" => metrics.out_of_range.map(|v| v as f64),
        "unseen_categories" => metrics.unseen_categories.map(|v| v as f64),
        "latency_p50" => metrics.latency_p50,
        "latency_p95" => metrics.latency_p95,
        "latency_p99" => metrics.latency_p99,
        "latency_max" => metrics.latency_max,
        "error_rate" => metrics.error_rate,
        "null_prediction_rate" => metrics.null_prediction_rate,
        "accuracy" => quality.and_then(|q| q.accuracy),
        "precision" => quality.and_then(|q| q.precision),
        "recall" => quality.and_then(|q| q.recall),
        "f1" => quality.and_then(|q| q.f1),
        "roc_auc" => quality.and_then(|q| q.roc_auc),
        "log_loss" => quality.and_then(|q| q.log_loss),
        "brier" => quality.and_then(|q| q.brier),
        "mae" => quality.and_then(|q| q.mae),
        "rmse" => quality.and_then(|q| q.rmse),
        "mape" => quality.and_then(|q| q.mape),
        "r2" => quality.and_then(|q| q.r2),
        // The `estimated_quality` series: its estimates by metric name.
        estimated if quality.is_none() && !metrics.estimated.is_empty() => {
            let metric = detectors::estimation::PerformanceMetric::parse(estimated)?;
            metrics
                .estimated
                .iter()
                .find(|e| e.metric == metric)
                .map(|e| e.value)
        }
        test => metrics
            .tests
            .iter()
            .find(|t| t.test.as_str() == test)
            .map(|t| t.value),
    }
}

fn summary(
    rule: &Rule,
    model: &str,
    version: &str,
    status: AlertStatus,
    findings: &[Finding],
) -> String {
    if status == AlertStatus::Resolved {
        return format!("[resolved] {} on {model} v{version}", rule.name);
    }
    let listed: Vec<String> = findings
        .iter()
        .take(5)
        .map(|f| format!("{} {}={:.3}", f.feature, f.test, f.value))
        .collect();
    let more = findings.len().saturating_sub(5);
    let tail = if more > 0 {
        format!(" (+{more} more)")
    } else {
        String::new()
    };
    format!(
        "[{}] {} on {model} v{version}: {}{tail}",
        rule.severity.as_str(),
        rule.name,
        listed.join(", ")
    )
}

/// mean ± k·σ of `values` (σ with n − 1 in the denominator).
fn band(values: &[f64], k: f64) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let half = k * variance.sqrt();
    (mean - half, mean + half)
}

fn detector_name(detector: ChangeDetector) -> &'static str {
    match detector {
        ChangeDetector::PageHinkley => "page_hinkley",
        ChangeDetector::Adwin => "adwin",
    }
}

/// Stable id: FNV-1a of the episode's identity, hex.
fn alert_id(rule: &str, model: &str, version: &str, segment: &str, window_start: i64) -> String {
    let hash = fnv1a(&[rule, model, version, segment, &window_start.to_string()]);
    format!("tw-{hash:016x}")
}

/// FNV-1a over `parts`, each followed by a zero byte (so `["ab", "c"]` and
/// `["a", "bc"]` differ): stable across processes and versions.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0u8)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}
