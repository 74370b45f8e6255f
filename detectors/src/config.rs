//! The sections this crate owns, as the TOML file spells them: `[drift]`
//! ([`RawDrift`], validated once into [`DriftThresholds`]) and `[[models]]`
//! ([`RawModel`], validated into a [`ModelSpec`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::metrics::{Correction, DriftThresholds, VerdictPolicy};
use crate::spec::{FeatureKind, FeatureSpec, ModelSpec, Multivariate, Task};
use crate::Error;

/// A `[drift]` setting that is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSetting {
    /// The key within `[drift]`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// `[drift]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrift {
    /// PSI at or above which a series is flagged as drifted.
    #[serde(default = "default_psi_threshold")]
    pub psi_threshold: f64,
    /// Fewest values a window needs before a series can be flagged.
    #[serde(default = "default_min_window_count")]
    pub min_window_count: u64,
    /// Significance level of the KS and chi-square tests.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// `none`, `bonferroni` or `benjamini_hochberg` across a window's series.
    #[serde(default = "default_correction")]
    pub correction: Correction,
    /// Jensen–Shannon distance threshold.
    #[serde(default = "default_distance_threshold")]
    pub jensen_shannon_threshold: f64,
    /// Hellinger distance threshold.
    #[serde(default = "default_distance_threshold")]
    pub hellinger_threshold: f64,
    /// KL divergence threshold.
    #[serde(default = "default_distance_threshold")]
    pub kl_divergence_threshold: f64,
    /// Normalized Wasserstein threshold.
    #[serde(default = "default_wasserstein_threshold")]
    pub wasserstein_normalized_threshold: f64,
    /// Cap on each sample size in the KS p-value (unset: no cap).
    #[serde(default)]
    pub ks_sample_cap: Option<u64>,
    /// Which test decides a series' `drifted` flag: `auto` (a p-value on
    /// small windows, a distance on large ones) or a test's name.
    #[serde(default = "default_verdict")]
    pub verdict: VerdictPolicy,
    /// Effective sample size above which `auto` decides by a distance.
    #[serde(default = "default_auto_cutover")]
    pub auto_cutover: f64,
}

fn default_verdict() -> VerdictPolicy {
    DriftThresholds::default().verdict
}

fn default_auto_cutover() -> f64 {
    DriftThresholds::default().auto_cutover
}

fn default_wasserstein_threshold() -> f64 {
    DriftThresholds::default().wasserstein_normalized
}

fn default_alpha() -> f64 {
    DriftThresholds::default().alpha
}

fn default_correction() -> Correction {
    DriftThresholds::default().correction
}

fn default_distance_threshold() -> f64 {
    DriftThresholds::default().jensen_shannon
}

fn default_min_window_count() -> u64 {
    DriftThresholds::default().min_count
}

fn default_psi_threshold() -> f64 {
    DriftThresholds::default().psi
}

impl Default for RawDrift {
    fn default() -> Self {
        Self {
            psi_threshold: default_psi_threshold(),
            min_window_count: default_min_window_count(),
            alpha: default_alpha(),
            correction: default_correction(),
            jensen_shannon_threshold: default_distance_threshold(),
            hellinger_threshold: default_distance_threshold(),
            kl_divergence_threshold: default_distance_threshold(),
            wasserstein_normalized_threshold: default_wasserstein_threshold(),
            ks_sample_cap: None,
            verdict: default_verdict(),
            auto_cutover: default_auto_cutover(),
        }
    }
}

impl RawDrift {
    /// Validates the section.
    pub fn validate(self) -> Result<DriftThresholds, InvalidSetting> {
        let invalid = |key, message: &str| InvalidSetting {
            key,
            message: message.to_owned(),
        };
        for (key, value) in [
            ("psi_threshold", self.psi_threshold),
            ("jensen_shannon_threshold", self.jensen_shannon_threshold),
            ("hellinger_threshold", self.hellinger_threshold),
            ("kl_divergence_threshold", self.kl_divergence_threshold),
            (
                "wasserstein_normalized_threshold",
                self.wasserstein_normalized_threshold,
            ),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(invalid(key, "must be a positive number"));
            }
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(invalid("alpha", "must be between 0 and 1"));
        }
        if !(self.auto_cutover.is_finite() && self.auto_cutover >= 0.0) {
            return Err(invalid("auto_cutover", "must be a number, 0 or more"));
        }
        if self.ks_sample_cap == Some(0) {
            return Err(invalid("ks_sample_cap", "must be at least 1"));
        }
        Ok(DriftThresholds {
            psi: self.psi_threshold,
            min_count: self.min_window_count,
            alpha: self.alpha,
            correction: self.correction,
            jensen_shannon: self.jensen_shannon_threshold,
            hellinger: self.hellinger_threshold,
            kl_divergence: self.kl_divergence_threshold,
            wasserstein_normalized: self.wasserstein_normalized_threshold,
            ks_sample_cap: self.ks_sample_cap,
            verdict: self.verdict,
            auto_cutover: self.auto_cutover,
        })
    }
}

/// `[[models]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Model name, as in events' `model`.
    pub name: String,
    /// `classification` or `regression`.
    pub task: Task,
    /// Segment keys, as in events' `segments`.
    #[serde(default)]
    pub segment_keys: Vec<String>,
    /// Distinct values per segment key and window before `__other__`: the
    /// pinned `segment_values` first, then the values with the smallest
    /// stable hash (the same choice in every partition and instance).
    #[serde(default = "default_max_segment_values")]
    pub max_segment_values: usize,
    /// Segment values always admitted, per segment key.
    #[serde(default)]
    pub segment_values: BTreeMap<String, Vec<String>>,
    /// Distinct categories per categorical sketch before the overflow bucket.
    #[serde(default = "default_max_categories")]
    pub max_categories: usize,
    /// Monitored features.
    pub features: Vec<RawFeature>,
    /// The positive class of a binary classifier: enables ROC AUC, log
    /// loss, Brier and calibration from the prediction score.
    #[serde(default)]
    pub positive_class: Option<String>,
    /// `[models.multivariate]`: multivariate drift by data reconstruction
    /// (off when absent; needs a reference built from training data).
    #[serde(default)]
    pub multivariate: Option<RawMultivariate>,
    /// Regression models: estimate MAE and RMSE before the targets arrive
    /// (direct loss estimation; needs a reference built from training data
    /// with `prediction.score` and `actual.label`).
    #[serde(default)]
    pub loss_estimation: bool,
    /// Multiclass classifiers: the classes (at least three). Performance is
    /// then estimated from each prediction's class probabilities (needs a
    /// reference built from training data with `prediction.class`,
    /// `actual.label` and `prediction.probability.<class>` columns).
    #[serde(default)]
    pub classes: Option<Vec<String>>,
}

/// `[models.multivariate]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMultivariate {
    /// Share of the variance the kept principal components explain.
    #[serde(default = "default_variance_share")]
    pub variance_share: f64,
}

fn default_variance_share() -> f64 {
    crate::reconstruction::DEFAULT_VARIANCE_SHARE
}

fn default_max_segment_values() -> usize {
    50
}
fn default_max_categories() -> usize {
    100
}

/// `[[models.features]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeature {
    /// Feature name, as in events' `features`.
    pub name: String,
    /// `numeric` or `categorical`.
    pub kind: FeatureKind,
}

impl RawModel {
    /// Validates one model (names, bounds, pinned segment values).
    pub fn validate(self) -> Result<ModelSpec, Error> {
        let features = self
            .features
            .into_iter()
            .map(|feature| FeatureSpec {
                name: feature.name,
                kind: feature.kind,
            })
            .collect();
        let multivariate = self
            .multivariate
            .map(|raw| Multivariate::new(raw.variance_share))
            .transpose()?;
        ModelSpec::new(
            self.name,
            self.task,
            features,
            self.segment_keys,
            self.max_segment_values,
            self.max_categories,
        )?
        .with_segment_values(self.segment_values)?
        .with_positive_class(self.positive_class)
        .with_loss_estimation(self.loss_estimation)?
        .with_classes(self.classes)?
        .with_multivariate(multivariate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_default_thresholds_and_bad_values_name_their_key() {
        assert_eq!(
            RawDrift::default().validate().unwrap(),
            DriftThresholds::default()
        );
        let raw = RawDrift {
            alpha: 1.5,
            ..RawDrift::default()
        };
        assert_eq!(raw.validate().unwrap_err().key, "alpha");
        let raw = RawDrift {
            hellinger_threshold: f64::NAN,
            ..RawDrift::default()
        };
        assert_eq!(raw.validate().unwrap_err().key, "hellinger_threshold");
    }

    #[test]
    fn a_model_is_validated_into_its_spec() {
        let model = |features: Vec<RawFeature>| RawModel {
            name: "churn".into(),
            task: Task::Classification,
            segment_keys: vec!["country".into()],
            max_segment_values: default_max_segment_values(),
            segment_values: BTreeMap::from([("country".into(), vec!["DE".into()])]),
            max_categories: default_max_categories(),
            features,
            positive_class: Some("1".into()),
            multivariate: None,
            loss_estimation: false,
            classes: None,
        };
        let age = || RawFeature {
            name: "age".into(),
            kind: FeatureKind::Numeric,
        };
        let spec = model(vec![age()]).validate().unwrap();
        assert_eq!(spec.name(), "churn");
        assert!(
            model(vec![age(), age()]).validate().is_err(),
            "a feature listed twice"
        );
    }
}
