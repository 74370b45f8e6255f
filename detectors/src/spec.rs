//! Validated description of a monitored model.
//!
//! A [`ModelSpec`] lists the model's features with their kind, its segment
//! keys and its bounds. Besides the configured features, every model has
//! *derived series* that the aggregator fills from the event envelope:
//!
//! | series | kind | from |
//! |---|---|---|
//! | `prediction.score` | numeric | `prediction.score`, or the highest class probability |
//! | `prediction.class` | categorical (classification only) | `prediction.class`, or the most probable class |
//! | `latency_ms` | numeric | `latency_ms` |
//! | `actual.label` | categorical for classification, numeric for regression | actual events' `label` |
//! | `operations` | operational | every prediction event: count, `error`, missing output, `latency_ms` |
//! | `quality` | quality | predictions joined with their actuals (in the prediction's window) |
//! | `estimated_quality` | estimated quality (classification with `positive_class` or `classes`, regression with `loss_estimation`) | binary classifiers: every prediction's score of the positive class and predicted class (CBPE); multiclass: its calibrated class probabilities (multiclass CBPE); regressors: its expected absolute and squared error (direct loss estimation) |
//! | `multivariate` | multivariate (models with `[models.multivariate]` only) | every prediction or feature row's reconstruction error from the reference's principal components ([`crate::reconstruction`]) |

use serde::{Deserialize, Serialize};

use crate::Error;

/// Name of the derived prediction-score series.
pub const PREDICTION_SCORE: &str = "prediction.score";
/// Name of the derived predicted-class series.
pub const PREDICTION_CLASS: &str = "prediction.class";
/// Name of the derived latency series.
pub const LATENCY_MS: &str = "latency_ms";
/// Name of the derived label series (from actual events).
pub const ACTUAL_LABEL: &str = "actual.label";
/// Name of the derived operational series.
pub const OPERATIONS: &str = "operations";
/// Name of the derived model-quality series.
pub const QUALITY: &str = "quality";
/// Name of the derived estimated-quality series.
pub const ESTIMATED_QUALITY: &str = "estimated_quality";
/// Name of the derived multivariate-drift series.
pub const MULTIVARIATE: &str = "multivariate";
/// Segment that every event belongs to.
pub const ALL_SEGMENT: &str = "all";
/// Segment value used once a key has `max_segment_values` distinct values.
pub const OTHER_SEGMENT_VALUE: &str = "__other__";
/// Segment value used when an event lacks a segment key.
pub const MISSING_SEGMENT_VALUE: &str = "__missing__";

/// How a feature's values are summarised and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// Real numbers: moments, quantiles, reference-bin counts; PSI and KS.
    Numeric,
    /// Labels: category counts; PSI and chi-square.
    Categorical,
    /// Operational health (the derived `operations` series only): prediction
    /// count, errors, null predictions, latency percentiles.
    Operational,
    /// Model quality (the derived `quality` series only), from predictions
    /// joined with their actuals.
    Quality,
    /// Performance estimated without labels (the derived
    /// `estimated_quality` series only), from the scores.
    EstimatedQuality,
    /// Multivariate drift (the derived `multivariate` series only): the
    /// rows' reconstruction error from the reference's principal components.
    Multivariate,
}

impl FeatureKind {
    /// The snake_case name used in config, storage and output.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Numeric => "numeric",
            FeatureKind::Categorical => "categorical",
            FeatureKind::Operational => "operational",
            FeatureKind::Quality => "quality",
            FeatureKind::EstimatedQuality => "estimated_quality",
            FeatureKind::Multivariate => "multivariate",
        }
    }
}

/// What the model predicts, which decides the kinds of its derived series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Predicts a class (binary or multiclass).
    Classification,
    /// Predicts a number.
    Regression,
}

/// One monitored series of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Feature name as it appears in events' `features` object.
    pub name: String,
    /// How the feature is summarised.
    pub kind: FeatureKind,
}

/// Where a series' values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesSource {
    /// A configured feature.
    Feature,
    /// The prediction score.
    PredictionScore,
    /// The predicted class.
    PredictionClass,
    /// Serving latency.
    Latency,
    /// The actual label.
    ActualLabel,
    /// Operational health.
    Operations,
    /// Model quality.
    Quality,
    /// Estimated model quality.
    EstimatedQuality,
    /// Reconstruction error of the feature rows.
    Multivariate,
}

/// Validated `[models.multivariate]`: multivariate drift by data
/// reconstruction is on, keeping components up to this share of variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Multivariate {
    variance_share: f64,
}

impl Multivariate {
    /// Validates the share of variance the kept components explain (in (0, 1)).
    pub fn new(variance_share: f64) -> Result<Self, Error> {
        if variance_share > 0.0 && variance_share < 1.0 {
            Ok(Self { variance_share })
        } else {
            Err(Error::InvalidSpec(format!(
                "multivariate variance_share must be between 0 and 1 (exclusive), not {variance_share}"
            )))
        }
    }

    /// The share of variance the kept components explain.
    pub fn variance_share(self) -> f64 {
        self.variance_share
    }
}

impl Default for Multivariate {
    fn default() -> Self {
        Self {
            variance_share: crate::reconstruction::DEFAULT_VARIANCE_SHARE,
        }
    }
}

/// A validated model description. Construct with [`ModelSpec::new`].
#[derive(Debug, Clone)]
pub struct ModelSpec {
    name: String,
    task: Task,
    /// Configured features first, derived series after.
    series: Vec<(FeatureSpec, SeriesSource)>,
    configured_features: usize,
    segment_keys: Vec<String>,
    /// Per segment key (in key order): values always admitted.
    pinned_segment_values: Vec<Vec<String>>,
    max_segment_values: usize,
    max_categories: usize,
    index: rustc_hash::FxHashMap<String, usize>,
    /// The positive class of a binary classifier (enables score-based
    /// quality: ROC AUC, log loss, Brier, calibration).
    positive_class: Option<String>,
    /// Multivariate drift by data reconstruction, when configured.
    multivariate: Option<Multivariate>,
    /// Direct loss estimation of a regression model, when configured.
    loss_estimation: bool,
    /// The classes of a multiclass classifier (sorted), when configured:
    /// performance is then estimated from the class probabilities.
    classes: Option<Vec<String>>,
}

/// Prefix of the training-file columns holding a multiclass classifier's
/// probability of one class (`prediction.probability.<class>`).
pub const CLASS_PROBABILITY_PREFIX: &str = "prediction.probability.";

impl ModelSpec {
    /// Validates a model description.
    pub fn new(
        name: impl Into<String>,
        task: Task,
        features: Vec<FeatureSpec>,
        segment_keys: Vec<String>,
        max_segment_values: usize,
        max_categories: usize,
    ) -> Result<Self, Error> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(Error::InvalidSpec("model name is empty".into()));
        }
        if max_segment_values == 0 || max_categories == 0 {
            return Err(Error::InvalidSpec(format!(
                "model `{name}`: max_segment_values and max_categories must be at least 1"
            )));
        }
        let derived = derived_series(task);
        let mut index = rustc_hash::FxHashMap::default();
        for (position, feature) in features.iter().enumerate() {
            if feature.name.is_empty() {
                return Err(Error::InvalidSpec(format!(
                    "model `{name}`: a feature has an empty name"
                )));
            }
            if matches!(
                feature.kind,
                FeatureKind::Operational
                    | FeatureKind::Quality
                    | FeatureKind::EstimatedQuality
                    | FeatureKind::Multivariate
            ) {
                return Err(Error::InvalidSpec(format!(
                    "model `{name}`: feature `{}` cannot be operational (that kind is reserved for the `operations` series)",
                    feature.name
                )));
            }
            if derived.iter().any(|(spec, _)| spec.name == feature.name)
                || feature.name == ESTIMATED_QUALITY
                || feature.name == MULTIVARIATE
            {
                return Err(Error::InvalidSpec(format!(
                    "model `{name}`: feature name `{}` is reserved for a derived series",
                    feature.name
                )));
            }
            if index.insert(feature.name.clone(), position).is_some() {
                return Err(Error::InvalidSpec(format!(
                    "model `{name}`: feature `{}` is listed twice",
                    feature.name
                )));
            }
        }
        let configured_features = features.len();
        let mut series: Vec<(FeatureSpec, SeriesSource)> = features
            .into_iter()
            .map(|feature| (feature, SeriesSource::Feature))
            .collect();
        series.extend(derived);
        let mut seen_keys = std::collections::HashSet::new();
        for key in &segment_keys {
            if key.is_empty() || !seen_keys.insert(key) {
                return Err(Error::InvalidSpec(format!(
                    "model `{name}`: segment key `{key}` is empty or repeated"
                )));
            }
            // Segments are labelled `key=value`: a key with `=` would make
            // one key's labels look like another's.
            if key.contains('=') {
                return Err(Error::InvalidSpec(format!(
                    "model `{name}`: segment key `{key}` contains `=`"
                )));
            }
        }
        Ok(Self {
            name,
            task,
            series,
            configured_features,
            pinned_segment_values: vec![Vec::new(); segment_keys.len()],
            segment_keys,
            max_segment_values,
            max_categories,
            index,
            positive_class: None,
            multivariate: None,
            loss_estimation: false,
            classes: None,
        })
    }

    /// Names the classes of a multiclass classifier (at least three,
    /// distinct): adds the `estimated_quality` series, whose performance is
    /// estimated from each prediction's class probabilities (multiclass
    /// CBPE). A binary classifier names its `positive_class` instead.
    pub fn with_classes(mut self, classes: Option<Vec<String>>) -> Result<Self, Error> {
        let Some(mut classes) = classes else {
            return Ok(self);
        };
        let name = &self.name;
        if self.task != Task::Classification || self.positive_class.is_some() {
            return Err(Error::InvalidSpec(format!(
                "model `{name}`: `classes` is for multiclass classifiers without a positive_class"
            )));
        }
        classes.sort();
        let before = classes.len();
        classes.dedup();
        if classes.len() < 3 || classes.len() != before || classes.iter().any(String::is_empty) {
            return Err(Error::InvalidSpec(format!(
                "model `{name}`: `classes` needs at least three distinct, non-empty names"
            )));
        }
        if self
            .derived_position(SeriesSource::EstimatedQuality)
            .is_none()
        {
            self.series.push((
                FeatureSpec {
                    name: ESTIMATED_QUALITY.to_owned(),
                    kind: FeatureKind::EstimatedQuality,
                },
                SeriesSource::EstimatedQuality,
            ));
        }
        self.classes = Some(classes);
        Ok(self)
    }

    /// The classes of a multiclass classifier, sorted, when configured.
    pub fn classes(&self) -> Option<&[String]> {
        self.classes.as_deref()
    }

    /// Whether a training-file column feeds the reference: a series, or a
    /// configured class's `prediction.probability.<class>`.
    pub fn reads_training_column(&self, name: &str) -> bool {
        self.series_position(name).is_some()
            || name
                .strip_prefix(CLASS_PROBABILITY_PREFIX)
                .is_some_and(|class| self.classes().is_some_and(|c| c.iter().any(|x| x == class)))
    }

    /// Turns direct loss estimation on for a regression model (adds the
    /// `estimated_quality` series: MAE and RMSE estimated before the
    /// targets arrive) or off. Classifiers estimate from their scores
    /// instead ([`Self::with_positive_class`]).
    pub fn with_loss_estimation(mut self, on: bool) -> Result<Self, Error> {
        if self.task != Task::Regression {
            if on {
                return Err(Error::InvalidSpec(format!(
                    "model `{}`: loss estimation is for regression models (a classifier estimates from its scores with `positive_class`)",
                    self.name
                )));
            }
            return Ok(self);
        }
        match (on, self.derived_position(SeriesSource::EstimatedQuality)) {
            (true, None) => self.series.push((
                FeatureSpec {
                    name: ESTIMATED_QUALITY.to_owned(),
                    kind: FeatureKind::EstimatedQuality,
                },
                SeriesSource::EstimatedQuality,
            )),
            (false, Some(position)) => {
                self.series.remove(position);
            }
            _ => {}
        }
        self.loss_estimation = on;
        Ok(self)
    }

    /// Whether direct loss estimation is on (regression models).
    pub fn loss_estimation(&self) -> bool {
        self.loss_estimation
    }

    /// Turns multivariate drift on (adds the `multivariate` series) or off.
    /// It needs at least two configured features.
    pub fn with_multivariate(mut self, multivariate: Option<Multivariate>) -> Result<Self, Error> {
        if multivariate.is_some() && self.configured_features < 2 {
            return Err(Error::InvalidSpec(format!(
                "model `{}`: multivariate drift needs at least two features",
                self.name
            )));
        }
        match (
            multivariate,
            self.derived_position(SeriesSource::Multivariate),
        ) {
            (Some(_), None) => self.series.push((
                FeatureSpec {
                    name: MULTIVARIATE.to_owned(),
                    kind: FeatureKind::Multivariate,
                },
                SeriesSource::Multivariate,
            )),
            (None, Some(position)) => {
                self.series.remove(position);
            }
            _ => {}
        }
        self.multivariate = multivariate;
        Ok(self)
    }

    /// Multivariate drift settings, when it is on.
    pub fn multivariate(&self) -> Option<Multivariate> {
        self.multivariate
    }

    /// Names the positive class of a binary classifier, which adds the
    /// `estimated_quality` series (performance estimated from the scores).
    pub fn with_positive_class(mut self, positive_class: Option<String>) -> Self {
        let estimated = self.derived_position(SeriesSource::EstimatedQuality);
        match (&positive_class, estimated, self.task) {
            (Some(_), None, Task::Classification) => self.series.push((
                FeatureSpec {
                    name: ESTIMATED_QUALITY.to_owned(),
                    kind: FeatureKind::EstimatedQuality,
                },
                SeriesSource::EstimatedQuality,
            )),
            (None, Some(position), _) => {
                self.series.remove(position);
            }
            _ => {}
        }
        self.positive_class = positive_class;
        self
    }

    /// Pins segment values: each listed value of a key is always admitted
    /// (see [`crate::segments`]), and counts towards `max_segment_values`.
    pub fn with_segment_values(
        mut self,
        pinned: impl IntoIterator<Item = (String, Vec<String>)>,
    ) -> Result<Self, Error> {
        for (key, values) in pinned {
            let name = &self.name;
            let Some(index) = self.segment_keys.iter().position(|k| *k == key) else {
                return Err(Error::InvalidSpec(format!(
                    "model `{name}`: segment values are pinned for `{key}`, which is not a segment key"
                )));
            };
            if values.len() > self.max_segment_values {
                return Err(Error::InvalidSpec(format!(
                    "model `{name}`: {} values pinned for `{key}`, more than max_segment_values ({})",
                    values.len(),
                    self.max_segment_values
                )));
            }
            let mut seen = std::collections::HashSet::new();
            for value in &values {
                if value.is_empty()
                    || value == OTHER_SEGMENT_VALUE
                    || value == MISSING_SEGMENT_VALUE
                    || !seen.insert(value)
                {
                    return Err(Error::InvalidSpec(format!(
                        "model `{name}`: pinned value `{value}` of `{key}` is empty, reserved or repeated"
                    )));
                }
            }
            self.pinned_segment_values[index] = values;
        }
        Ok(self)
    }

    /// The pinned values of the `key_index`-th segment key.
    pub fn pinned_segment_values(&self, key_index: usize) -> &[String] {
        &self.pinned_segment_values[key_index]
    }

    /// How many values of the `key_index`-th segment key are admitted by
    /// hash: `max_segment_values` minus the pinned ones.
    pub fn hashed_segment_slots(&self, key_index: usize) -> usize {
        self.max_segment_values - self.pinned_segment_values[key_index].len()
    }

    /// The positive class of a binary classifier, if configured.
    pub fn positive_class(&self) -> Option<&str> {
        self.positive_class.as_deref()
    }

    /// Model name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the model predicts.
    pub fn task(&self) -> Task {
        self.task
    }

    /// All series: configured features first, then derived ones.
    pub fn series(&self) -> impl ExactSizeIterator<Item = &FeatureSpec> {
        self.series.iter().map(|(spec, _)| spec)
    }

    /// Number of series (configured + derived).
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Position of a series by name.
    pub fn series_position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied().or_else(|| {
            self.series[self.configured_features..]
                .iter()
                .position(|(spec, _)| spec.name == name)
                .map(|offset| self.configured_features + offset)
        })
    }

    /// Position of a configured feature by name (hot path: one hash lookup).
    #[inline]
    pub fn feature_position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Position of a configured feature, trying `hint` first: producers
    /// usually log features in a fixed order, so the guess "the next one"
    /// saves the hash lookup.
    #[inline]
    pub fn feature_position_hinted(&self, name: &str, hint: usize) -> Option<usize> {
        match self.series.get(hint) {
            Some((spec, SeriesSource::Feature)) if same_name(&spec.name, name) => Some(hint),
            _ => self.feature_position(name),
        }
    }

    /// Number of configured features.
    pub fn configured_feature_count(&self) -> usize {
        self.configured_features
    }

    /// Position of the series fed by `source` (derived series only).
    pub fn derived_position(&self, source: SeriesSource) -> Option<usize> {
        self.series
            .iter()
            .position(|(_, series_source)| *series_source == source)
    }

    /// The series at `position`.
    pub fn series_at(&self, position: usize) -> &FeatureSpec {
        &self.series[position].0
    }

    /// Segment keys, in configured order.
    pub fn segment_keys(&self) -> &[String] {
        &self.segment_keys
    }

    /// Distinct values kept per segment key before values go to `__other__`.
    pub fn max_segment_values(&self) -> usize {
        self.max_segment_values
    }

    /// Distinct categories named per categorical sketch.
    pub fn max_categories(&self) -> usize {
        self.max_categories
    }
}

/// String equality without a `memcmp` call: feature names are short, and
/// this runs for every feature of every event.
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

fn derived_series(task: Task) -> Vec<(FeatureSpec, SeriesSource)> {
    let spec = |name: &str, kind| FeatureSpec {
        name: name.to_owned(),
        kind,
    };
    let label_kind = match task {
        Task::Classification => FeatureKind::Categorical,
        Task::Regression => FeatureKind::Numeric,
    };
    let mut derived = vec![(
        spec(PREDICTION_SCORE, FeatureKind::Numeric),
        SeriesSource::PredictionScore,
    )];
    if task == Task::Classification {
        derived.push((
            spec(PREDICTION_CLASS, FeatureKind::Categorical),
            SeriesSource::PredictionClass,
        ));
    }
    derived.push((
        spec(LATENCY_MS, FeatureKind::Numeric),
        SeriesSource::Latency,
    ));
    derived.push((spec(ACTUAL_LABEL, label_kind), SeriesSource::ActualLabel));
    derived.push((
        spec(OPERATIONS, FeatureKind::Operational),
        SeriesSource::Operations,
    ));
    derived.push((spec(QUALITY, FeatureKind::Quality), SeriesSource::Quality));
    derived
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(name: &str, kind: FeatureKind) -> FeatureSpec {
        FeatureSpec {
            name: name.into(),
            kind,
        }
    }

    #[test]
    fn derived_series_follow_the_configured_features() {
        let spec = ModelSpec::new(
            "churn",
            Task::Classification,
            vec![
                feature("age", FeatureKind::Numeric),
                feature("plan", FeatureKind::Categorical),
            ],
            vec!["country".into()],
            10,
            50,
        )
        .unwrap();
        let names: Vec<&str> = spec.series().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "age",
                "plan",
                "prediction.score",
                "prediction.class",
                "latency_ms",
                "actual.label",
                "operations",
                "quality"
            ]
        );
        assert_eq!(spec.feature_position("plan"), Some(1));
        assert_eq!(spec.series_position("latency_ms"), Some(4));
        assert_eq!(spec.derived_position(SeriesSource::ActualLabel), Some(5));
    }

    #[test]
    fn rejects_duplicates_reserved_names_and_zero_bounds() {
        let twice = vec![
            feature("a", FeatureKind::Numeric),
            feature("a", FeatureKind::Numeric),
        ];
        assert!(ModelSpec::new("m", Task::Regression, twice, vec![], 1, 1)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        let reserved = vec![feature("latency_ms", FeatureKind::Numeric)];
        assert!(ModelSpec::new("m", Task::Regression, reserved, vec![], 1, 1).is_err());
        assert!(ModelSpec::new("m", Task::Regression, vec![], vec![], 0, 1).is_err());
        assert!(ModelSpec::new("", Task::Regression, vec![], vec![], 1, 1).is_err());
    }
}
