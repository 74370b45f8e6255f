//! Alert rules: what to watch, when to fire, how loud, whom to tell.
//!
//! [`RawRule`] is the `[[alerts.rules]]` table of `tidewatch.toml`
//! (`deny_unknown_fields`); [`Rule::from_raw`] validates it once, with
//! errors naming the rule's key. [`default_rules`] gives every model "drift
//! on ≥ 3 features" and "quality dropped" alerts when no rule is configured.

use serde::{Deserialize, Serialize};

pub use crate::notification::Severity;
use crate::Error;
use detectors::estimation::PerformanceMetric;
use detectors::metrics::DriftTest;

/// When a rule's condition holds for one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// At least `min_features` series drifted (by the named `test`'s
    /// verdict, or the series' own verdict, `[drift] verdict`, when no test
    /// is named).
    Drift {
        /// Fewest drifted series that make the condition hold.
        #[serde(default = "default_min_features")]
        min_features: usize,
        /// Test whose verdict counts (`psi`, `ks`, `jensen_shannon`…).
        #[serde(default)]
        test: Option<DriftTest>,
    },
    /// A metric of one series is above or below a static value.
    Threshold {
        /// The series (`monthly_charges`, `quality`, `operations`…).
        feature: String,
        /// The metric (`missing_rate`, `accuracy`, `latency_p99`, `psi`…).
        metric: String,
        /// Holds when the metric is above this.
        #[serde(default)]
        above: Option<f64>,
        /// Holds when the metric is below this.
        #[serde(default)]
        below: Option<f64>,
    },
    /// A quality metric fell by more than `max_drop` below its baseline, the
    /// mean of the first `baseline_windows` windows that had it. Windows
    /// with fewer than `min_labels` predictions joined with their actuals
    /// are not judged (nor taken into the baseline): a window is evaluated
    /// again as its labels arrive, and its first labels alone are too few
    /// to tell a drop from chance.
    QualityDrop {
        /// `accuracy`, `f1`, `roc_auc` or `r2` (higher is better).
        #[serde(default = "default_quality_metric")]
        metric: String,
        /// Largest tolerated drop (absolute).
        #[serde(default = "default_max_drop")]
        max_drop: f64,
        /// Windows averaged into the baseline.
        #[serde(default = "default_baseline_windows")]
        baseline_windows: usize,
        /// Labelled predictions a window needs before it is judged.
        #[serde(default = "default_min_labels")]
        min_labels: u64,
    },
    /// A metric of one series is outside the band mean ± `k`·σ of its values
    /// over the first `baseline_windows` windows that had it (NannyML's
    /// thresholds over reference chunks, with the first windows as chunks).
    Band {
        /// The series.
        feature: String,
        /// The metric.
        metric: String,
        /// Band half-width in standard deviations.
        #[serde(default = "default_band_k")]
        k: f64,
        /// Windows the band is computed from (at least 2).
        #[serde(default = "default_band_windows")]
        baseline_windows: usize,
    },
    /// A performance metric estimated without labels (the
    /// `estimated_quality` series of a classifier with a positive class, or
    /// of a regression model with loss estimation) left its band: the
    /// metric realized on the reference ± 3 sampling errors of the window's
    /// size.
    EstimatedPerformance {
        /// `accuracy`, `precision`, `recall`, `f1` or `roc_auc`
        /// (classifiers); `mae` or `rmse` (regression).
        #[serde(default = "default_estimated_metric")]
        metric: PerformanceMetric,
    },
    /// The rows' mean reconstruction error (the `multivariate` series of a
    /// model with `[models.multivariate]`) left its band: the reference
    /// rows' mean ± 3 standard errors of the window's size. Catches changes
    /// in how the features move together that no single feature shows.
    MultivariateDrift {},
    /// A change detector over a metric's per-window values fired at this
    /// window. `detector` is `page_hinkley` or `adwin`; unset parameters take
    /// River's defaults except `min_instances` (Page-Hinkley) and
    /// `grace_period` (ADWIN), which default to 5 windows because a series
    /// of windows is short.
    Change {
        /// The series.
        feature: String,
        /// The metric.
        metric: String,
        /// `page_hinkley` or `adwin`.
        detector: ChangeDetector,
        /// Page-Hinkley: tolerated change; ADWIN: confidence.
        #[serde(default)]
        delta: Option<f64>,
        /// Page-Hinkley: alarm threshold on the cumulative deviation.
        #[serde(default)]
        threshold: Option<f64>,
        /// Windows before the detector may fire.
        #[serde(default)]
        min_windows: Option<u64>,
    },
}

/// The change detectors a `change` condition can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeDetector {
    /// Page-Hinkley (both directions).
    PageHinkley,
    /// ADWIN.
    Adwin,
}

fn default_band_k() -> f64 {
    3.0
}
fn default_band_windows() -> usize {
    10
}

fn default_estimated_metric() -> PerformanceMetric {
    PerformanceMetric::Accuracy
}

fn default_min_features() -> usize {
    3
}
fn default_quality_metric() -> String {
    "accuracy".into()
}
fn default_max_drop() -> f64 {
    0.05
}
fn default_min_labels() -> u64 {
    100
}
fn default_baseline_windows() -> usize {
    3
}
fn default_for_windows() -> u32 {
    1
}
fn default_resolve_after() -> u32 {
    2
}
fn default_cooldown_windows() -> u32 {
    6
}
fn default_severity() -> Severity {
    Severity::Warning
}

/// `[[alerts.rules]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique rule name (part of the alert id).
    pub name: String,
    /// Only this model (default: every model).
    #[serde(default)]
    pub model: Option<String>,
    /// Only this model version.
    #[serde(default)]
    pub version: Option<String>,
    /// Only this segment (default: `all`).
    #[serde(default)]
    pub segment: Option<String>,
    /// The condition.
    pub condition: Condition,
    /// Consecutive windows the condition must hold before firing.
    #[serde(default = "default_for_windows")]
    pub for_windows: u32,
    /// Consecutive clear windows before the alert resolves.
    #[serde(default = "default_resolve_after")]
    pub resolve_after: u32,
    /// While firing, windows between repeat notifications.
    #[serde(default = "default_cooldown_windows")]
    pub cooldown_windows: u32,
    /// Severity.
    #[serde(default = "default_severity")]
    pub severity: Severity,
    /// Channels to notify (names of `[[alerts.channels]]`).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Also request retraining when this rule fires.
    #[serde(default)]
    pub retrain: bool,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// Model filter.
    pub model: Option<String>,
    /// Version filter.
    pub version: Option<String>,
    /// Segment watched.
    pub segment: String,
    /// Condition.
    pub condition: Condition,
    /// Windows before firing (≥ 1).
    pub for_windows: u32,
    /// Clear windows before resolving (≥ 1).
    pub resolve_after: u32,
    /// Windows between repeats while firing (≥ 1).
    pub cooldown_windows: u32,
    /// Severity.
    pub severity: Severity,
    /// Channel names.
    pub channels: Vec<String>,
    /// Request retraining on firing.
    pub retrain: bool,
}

const HIGHER_IS_BETTER: [&str; 4] = ["accuracy", "f1", "roc_auc", "r2"];

impl Rule {
    /// Validates a raw rule; `key` is its place in the config (`alerts.rules[2]`).
    pub fn from_raw(raw: RawRule, key: &str) -> Result<Self, Error> {
        let invalid = |field: &str, message: String| Error::InvalidSetting {
            key: format!("{key}.{field}"),
            message,
        };
        if raw.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        for (field, value) in [
            ("for_windows", raw.for_windows),
            ("resolve_after", raw.resolve_after),
            ("cooldown_windows", raw.cooldown_windows),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1".into()));
            }
        }
        match &raw.condition {
            Condition::Drift { min_features, .. } if *min_features == 0 => {
                return Err(invalid(
                    "condition.min_features",
                    "must be at least 1".into(),
                ));
            }
            Condition::Threshold {
                above: None,
                below: None,
                ..
            } => {
                return Err(invalid(
                    "condition",
                    "a threshold needs `above` or `below`".into(),
                ));
            }
            Condition::QualityDrop {
                metric,
                max_drop,
                baseline_windows,
                min_labels,
            } => {
                if *min_labels == 0 {
                    return Err(invalid("condition.min_labels", "must be at least 1".into()));
                }
                if !HIGHER_IS_BETTER.contains(&metric.as_str()) {
                    return Err(invalid(
                        "condition.metric",
                        format!("`{metric}` is not one of accuracy, f1, roc_auc, r2"),
                    ));
                }
                if !(max_drop.is_finite() && *max_drop > 0.0) {
                    return Err(invalid(
                        "condition.max_drop",
                        "must be a positive number".into(),
                    ));
                }
                if *baseline_windows == 0 {
                    return Err(invalid(
                        "condition.baseline_windows",
                        "must be at least 1".into(),
                    ));
                }
            }
            Condition::Band {
                k,
                baseline_windows,
                ..
            } => {
                if !(k.is_finite() && *k > 0.0) {
                    return Err(invalid("condition.k", "must be a positive number".into()));
                }
                if *baseline_windows < 2 {
                    return Err(invalid(
                        "condition.baseline_windows",
                        "must be at least 2 (a band needs a standard deviation)".into(),
                    ));
                }
            }
            Condition::Change {
                detector,
                delta,
                threshold,
                ..
            } => {
                if delta.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
                    return Err(invalid(
                        "condition.delta",
                        "must be a positive number".into(),
                    ));
                }
                if let Some(threshold) = threshold {
                    if *detector != ChangeDetector::PageHinkley {
                        return Err(invalid(
                            "condition.threshold",
                            "applies to page_hinkley only".into(),
                        ));
                    }
                    if !(threshold.is_finite() && *threshold > 0.0) {
                        return Err(invalid(
                            "condition.threshold",
                            "must be a positive number".into(),
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(Self {
            name: raw.name,
            model: raw.model,
            version: raw.version,
            segment: raw.segment.unwrap_or_else(|| "all".into()),
            condition: raw.condition,
            for_windows: raw.for_windows,
            resolve_after: raw.resolve_after,
            cooldown_windows: raw.cooldown_windows,
            severity: raw.severity,
            channels: raw.channels,
            retrain: raw.retrain,
        })
    }

    /// Whether the rule watches `model` / `version`.
    pub fn applies_to(&self, model: &str, version: &str) -> bool {
        self.model.as_deref().is_none_or(|m| m == model)
            && self.version.as_deref().is_none_or(|v| v == version)
    }
}

/// The rules every model gets when none is configured: drift on at least
/// three series (warning), and accuracy 0.05 below its first three windows
/// (critical), notifying `channels`.
pub fn default_rules(channels: &[String]) -> Vec<Rule> {
    let rule = |name: &str, condition: Condition, severity: Severity| Rule {
        name: name.into(),
        model: None,
        version: None,
        segment: "all".into(),
        condition,
        for_windows: 1,
        resolve_after: default_resolve_after(),
        cooldown_windows: default_cooldown_windows(),
        severity,
        channels: channels.to_vec(),
        retrain: false,
    };
    vec![
        rule(
            "drift_on_features",
            Condition::Drift {
                min_features: 3,
                test: None,
            },
            Severity::Warning,
        ),
        rule(
            "quality_dropped",
            Condition::QualityDrop {
                metric: "accuracy".into(),
                max_drop: 0.05,
                baseline_windows: 3,
                min_labels: default_min_labels(),
            },
            Severity::Critical,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Rule, Error> {
        let raw: RawRule = toml::from_str(text).map_err(|e| Error::InvalidSetting {
            key: "test".into(),
            message: e.to_string(),
        })?;
        Rule::from_raw(raw, "alerts.rules[0]")
    }

    #[test]
    fn a_rule_parses_with_defaults() {
        let rule =
            parse("name = \"drift\"\ncondition = { type = \"drift\" }\nchannels = [\"slack\"]")
                .unwrap();
        assert_eq!(rule.segment, "all");
        assert_eq!(
            rule.condition,
            Condition::Drift {
                min_features: 3,
                test: None
            }
        );
        assert_eq!(
            (rule.for_windows, rule.resolve_after, rule.cooldown_windows),
            (1, 2, 6)
        );
        assert_eq!(rule.severity, Severity::Warning);
    }

    #[test]
    fn invalid_rules_name_the_key() {
        let cases = [
            ("name = \"r\"\nfor_windows = 0\ncondition = { type = \"drift\" }", "alerts.rules[0].for_windows"),
            ("name = \"r\"\ncondition = { type = \"threshold\", feature = \"x\", metric = \"psi\" }", "alerts.rules[0].condition"),
            ("name = \"r\"\ncondition = { type = \"quality_drop\", metric = \"rmse\" }", "alerts.rules[0].condition.metric"),
            ("name = \"\"\ncondition = { type = \"drift\" }", "alerts.rules[0].name"),
            ("name = \"r\"\ncondition = { type = \"band\", feature = \"x\", metric = \"psi\", k = -1.0 }", "alerts.rules[0].condition.k"),
            ("name = \"r\"\ncondition = { type = \"band\", feature = \"x\", metric = \"psi\", baseline_windows = 1 }", "alerts.rules[0].condition.baseline_windows"),
            ("name = \"r\"\ncondition = { type = \"change\", feature = \"x\", metric = \"psi\", detector = \"adwin\", threshold = 3.0 }", "alerts.rules[0].condition.threshold"),
            ("name = \"r\"\ncondition = { type = \"change\", feature = \"x\", metric = \"psi\", detector = \"page_hinkley\", delta = 0.0 }", "alerts.rules[0].condition.delta"),
        ];
        for (text, key) in cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{error} should name {key}");
        }
        let unknown = parse("name = \"r\"\ncondition = { type = \"drift\", minimum = 2 }")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `minimum`"), "{unknown}");
    }

    #[test]
    fn defaults_cover_drift_and_quality() {
        let rules = default_rules(&["ops".to_owned()]);
        assert_eq!(rules.len(), 2);
        assert!(rules
            .iter()
            .all(|r| r.channels == ["ops"] && r.applies_to("any", "1")));
    }
}
