//! Reference profiles: what a model's inputs and outputs looked like in
//! training data.
//!
//! A [`ReferenceProfile`] holds, per series:
//! - numeric: quantile bins (edges at the empirical quantiles k/100 and,
//!   in the tails, at 0.1, 0.2, 0.5 % and their mirrors:
//!   [`EDGE_LEVELS_PER_MILLE`]; duplicates removed), the exact count of reference values
//!   in each, which of the edges are the deciles used for PSI, and moments;
//! - categorical: category counts (bounded like window sketches).
//!
//! Two ways to build one:
//! - [`ReferenceBuilder`] from training rows: exact (every value is seen and
//!   sorted once).
//! - [`ReferenceProfile::from_windows`] from the merged sketches of a model's
//!   first windows, when no training data was supplied: edges come from the
//!   DDSketch quantiles (1 % relative accuracy) and each bin's count is its
//!   quantile share of the total, so this profile is approximate.
//!
//! Empirical quantile used for edges: the smallest value `x` with at least
//! `k/100` of the values `<= x` (`sorted[ceil(k·n/100) − 1]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::categorical::{format_category, CategoricalSketch};
use crate::moments::Moments;
use crate::numeric::BinEdges;
use crate::sketch::FeatureSketch;
use crate::spec::{FeatureKind, ModelSpec};
use crate::Error;

/// Number of quantile bins a profile built from warm-up windows aims for
/// (fewer with ties).
pub const REFERENCE_BINS: usize = 100;

/// Quantile levels, in thousandths, of the inner edges of a profile built
/// from values: every percentile, and finer cuts in both tails (0.1, 0.2,
/// 0.5 % and their mirrors), where a heavy tail spreads one percent of the
/// values over a long range and a distance taken as linear inside a bin
/// (the binned Wasserstein) would be coarse. 105 edges, 106 bins.
pub const EDGE_LEVELS_PER_MILLE: [usize; 105] = {
    let mut levels = [0; 105];
    levels[0] = 1;
    levels[1] = 2;
    levels[2] = 5;
    let mut k = 1;
    while k < 100 {
        levels[2 + k] = k * 10;
        k += 1;
    }
    levels[102] = 995;
    levels[103] = 998;
    levels[104] = 999;
    levels
};
/// Number of quantile bins PSI is computed over (deciles).
pub const PSI_BINS: usize = 10;

/// Reference summary of one numeric series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericReference {
    /// Strictly increasing bin edges (right-closed bins).
    pub edges: Vec<f64>,
    /// Reference values per bin (`edges.len() + 1` entries).
    pub counts: Vec<u64>,
    /// Indices into `edges` of the decile edges used for PSI.
    pub psi_edge_indices: Vec<usize>,
    /// Exact moments of the reference values.
    pub moments: Moments,
    /// Missing values in the reference.
    pub missing: u64,
    /// True when the first edge lies just below the reference minimum and
    /// the last edge is the maximum, so the first and last bins count the
    /// values outside the reference range.
    #[serde(default)]
    pub range_bins: bool,
    /// Quantiles at the [`WASSERSTEIN_LEVELS`] midpoint levels
    /// (`sorted[floor(u·n)]`), for the Wasserstein distance. Empty in
    /// profiles stored before they existed.
    #[serde(default)]
    pub quantiles: Vec<f64>,
}

/// Number of quantile levels kept for the Wasserstein distance.
pub const WASSERSTEIN_LEVELS: usize = 100;

impl NumericReference {
    /// Builds exactly from values (non-finite values count as missing).
    pub fn from_values(mut values: Vec<f64>, mut missing: u64) -> Result<Self, Error> {
        let before = values.len();
        values.retain(|v| v.is_finite());
        missing += (before - values.len()) as u64;
        if values.is_empty() {
            return Err(Error::InvalidReference(
                "numeric series has no finite values".into(),
            ));
        }
        let n = values.len();
        let quantile_rank = |level: usize, of: usize| (level * n).div_ceil(of).max(1) - 1;
        let wasserstein_levels = crate::drift::wasserstein_levels(WASSERSTEIN_LEVELS);
        let wasserstein_rank = |level: f64| ((level * n as f64) as usize).min(n - 1);
        // Only these order statistics are needed: select them (a partial
        // quicksort that recurses only into the parts holding a wanted
        // rank) instead of sorting every value.
        let mut ranks: Vec<usize> = [0, n - 1]
            .into_iter()
            .chain(
                EDGE_LEVELS_PER_MILLE
                    .iter()
                    .map(|k| quantile_rank(*k, 1000)),
            )
            .chain((1..PSI_BINS).map(|k| quantile_rank(k, PSI_BINS)))
            .chain(
                wasserstein_levels
                    .iter()
                    .map(|level| wasserstein_rank(*level)),
            )
            .collect();
        ranks.sort_unstable();
        ranks.dedup();
        select_ranks(&mut values, &ranks);
        let quantile = |level: usize, of: usize| values[quantile_rank(level, of)];
        // Edges: just below the minimum, the percentiles, the maximum. The
        // first and last bins then hold exactly the out-of-range values.
        let mut edges: Vec<f64> = std::iter::once(values[0].next_down())
            .chain(EDGE_LEVELS_PER_MILLE.iter().map(|k| quantile(*k, 1000)))
            .chain(std::iter::once(values[n - 1]))
            .collect();
        edges.dedup();
        let psi_edges: Vec<f64> = (1..PSI_BINS).map(|k| quantile(k, PSI_BINS)).collect();
        let psi_edge_indices = psi_edge_positions(&edges, &psi_edges);
        let bin_edges = BinEdges::new(edges)?;
        let mut counts = vec![0u64; bin_edges.bin_count()];
        let mut moments = Moments::default();
        for value in &values {
            counts[bin_edges.bin_of(*value)] += 1;
            moments.add(*value);
        }
        let quantiles = wasserstein_levels
            .iter()
            .map(|level| values[wasserstein_rank(*level)])
            .collect();
        Ok(Self {
            edges: bin_edges.edges().to_vec(),
            counts,
            psi_edge_indices,
            moments,
            missing,
            range_bins: true,
            quantiles,
        })
    }

    /// Builds approximately from a merged window sketch (see module docs).
    fn from_sketch(sketch: &crate::numeric::NumericSketch) -> Result<Self, Error> {
        let n = sketch.moments().count();
        if n == 0 {
            return Err(Error::InvalidReference(
                "warm-up windows have no values".into(),
            ));
        }
        // (edge value, cumulative share) for each quantile level, deduplicated
        // by keeping the highest level reaching the same value.
        let mut cuts: Vec<(f64, f64)> = Vec::with_capacity(REFERENCE_BINS);
        for k in 1..REFERENCE_BINS {
            let level = k as f64 / REFERENCE_BINS as f64;
            let Some(value) = sketch.quantile(level) else {
                continue;
            };
            match cuts.last_mut() {
                Some(last) if last.0 >= value => last.1 = level,
                _ => cuts.push((value, level)),
            }
        }
        let edges: Vec<f64> = cuts.iter().map(|(value, _)| *value).collect();
        let mut counts = Vec::with_capacity(edges.len() + 1);
        let mut previous_level = 0.0;
        for (_, level) in &cuts {
            counts.push(((level - previous_level) * n as f64).round() as u64);
            previous_level = *level;
        }
        counts.push(((1.0 - previous_level) * n as f64).round() as u64);
        let psi_edges: Vec<f64> = (1..PSI_BINS)
            .filter_map(|k| {
                let level = k as f64 / PSI_BINS as f64;
                cuts.iter()
                    .find(|(_, cut_level)| *cut_level >= level - 1e-12)
                    .map(|(v, _)| *v)
            })
            .collect();
        let psi_edge_indices = psi_edge_positions(&edges, &psi_edges);
        BinEdges::new(edges.clone())?;
        let quantiles = crate::drift::wasserstein_levels(WASSERSTEIN_LEVELS)
            .iter()
            .filter_map(|level| sketch.quantile(*level))
            .collect();
        Ok(Self {
            edges,
            counts,
            psi_edge_indices,
            moments: sketch.moments().clone(),
            missing: sketch.missing(),
            range_bins: false,
            quantiles,
        })
    }

    /// Groups fine-bin counts into the PSI (decile) bins.
    pub fn group_for_psi(&self, fine_counts: &[u64]) -> Vec<u64> {
        let mut grouped = vec![0u64; self.psi_edge_indices.len() + 1];
        for (bin, count) in fine_counts.iter().enumerate() {
            // Fine bin `bin` lies above edge `bin - 1`; its PSI bin is the
            // number of PSI edges strictly below its upper edge index.
            let psi_bin = self.psi_edge_indices.partition_point(|index| *index < bin);
            grouped[psi_bin] += count;
        }
        grouped
    }
}

fn psi_edge_positions(edges: &[f64], psi_edges: &[f64]) -> Vec<usize> {
    let mut positions: Vec<usize> = psi_edges
        .iter()
        .filter_map(|value| edges.iter().position(|edge| edge == value))
        .collect();
    positions.dedup();
    positions
}

/// Reference summary of one categorical series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalReference {
    /// Reference counts by category.
    pub counts: BTreeMap<String, u64>,
    /// Reference values beyond the category bound.
    pub other: u64,
    /// Missing values in the reference.
    pub missing: u64,
}

/// Reference summary of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureReference {
    /// A numeric series.
    Numeric(NumericReference),
    /// A categorical series.
    Categorical(CategoricalReference),
    /// The `estimated_quality` series: the performance estimator fitted on
    /// the reference's scores, predicted classes and labels.
    Performance(crate::estimation::CbpeModel),
    /// The `multivariate` series: principal components of the configured
    /// features, fitted on (a bounded sample of) the training rows.
    Multivariate(crate::reconstruction::ReconstructionModel),
    /// The `estimated_quality` series of a regression model: the models of
    /// the expected absolute and squared error (direct loss estimation).
    Loss(Box<crate::loss_estimation::LossModel>),
    /// The `estimated_quality` series of a multiclass classifier: the
    /// per-class calibrators and sampling-error components.
    Multiclass(Box<crate::multiclass::MulticlassCbpe>),
}

/// A model version's reference profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceProfile {
    /// Model name.
    pub model: String,
    /// Model version the profile describes.
    pub model_version: String,
    /// Where it came from (`file:train.csv`, `warmup:3 windows`…).
    pub source: String,
    /// Rows it was built from.
    pub row_count: u64,
    /// Reference per series name.
    pub features: BTreeMap<String, FeatureReference>,
}

impl ReferenceProfile {
    /// Builds an approximate profile from merged warm-up window sketches,
    /// one per series name.
    pub fn from_windows(
        model: &str,
        model_version: &str,
        window_count: usize,
        sketches: &BTreeMap<String, FeatureSketch>,
    ) -> Result<Self, Error> {
        let mut features = BTreeMap::new();
        let mut row_count = 0;
        for (name, sketch) in sketches {
            let reference = match sketch {
                // No rows in a sketch: multivariate drift needs a
                // reference built from training data.
                FeatureSketch::Operational(_)
                | FeatureSketch::Quality(_)
                | FeatureSketch::EstimatedQuality(_)
                | FeatureSketch::EstimatedLoss(_)
                | FeatureSketch::EstimatedClasses(_)
                | FeatureSketch::Multivariate(_) => continue,
                FeatureSketch::Numeric(numeric) => {
                    if numeric.moments().count() == 0 {
                        continue;
                    }
                    row_count = row_count.max(numeric.moments().count() + numeric.missing());
                    FeatureReference::Numeric(NumericReference::from_sketch(numeric)?)
                }
                FeatureSketch::Categorical(categorical) => {
                    if categorical.total() == 0 {
                        continue;
                    }
                    row_count = row_count.max(categorical.total() + categorical.missing());
                    FeatureReference::Categorical(CategoricalReference {
                        counts: categorical.counts().clone(),
                        other: categorical.other(),
                        missing: categorical.missing(),
                    })
                }
            };
            features.insert(name.clone(), reference);
        }
        Ok(Self {
            model: model.to_owned(),
            model_version: model_version.to_owned(),
            source: format!("warmup:{window_count} windows"),
            row_count,
            features,
        })
    }

    /// Serializes for storage.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("reference profiles always serialize")
    }

    /// Reads a stored profile.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        serde_json::from_str(text).map_err(|error| Error::Corrupt(error.to_string()))
    }
}

/// Collects training rows, then builds an exact [`ReferenceProfile`].
#[derive(Debug)]
pub struct ReferenceBuilder {
    model: String,
    model_version: String,
    source: String,
    rows: u64,
    numeric: BTreeMap<String, (Vec<f64>, u64)>,
    categorical: BTreeMap<String, CategoricalSketch>,
    /// With a positive class: every row's score, predicted class and label,
    /// in row order, to fit the performance estimator.
    outputs: Option<TrainingOutputs>,
    /// With multivariate drift: a bounded sample of the configured
    /// features' rows and the share of variance to keep.
    inputs: Option<(crate::reconstruction::RowSample, f64)>,
    /// With loss estimation: a bounded sample of the configured features'
    /// rows with their prediction and target (the last two columns).
    loss: Option<crate::reconstruction::RowSample>,
    /// With classes: a bounded sample of the class probabilities, the
    /// predicted class and the label.
    classes: Option<(Vec<String>, crate::reconstruction::RowSample)>,
}

/// The model outputs of the training rows, column by column in row order
/// (a missing value is `None`, so the three stay aligned).
#[derive(Debug, Default)]
struct TrainingOutputs {
    positive_class: String,
    scores: Vec<Option<f64>>,
    classes: Vec<Option<bool>>,
    labels: Vec<Option<bool>>,
}

impl TrainingOutputs {
    fn add(&mut self, name: &str, value: TrainingValue<'_>) {
        let class = |value: TrainingValue<'_>| match value {
            TrainingValue::Text(text) => Some(text.trim() == self.positive_class),
            TrainingValue::Number(number) => Some(format_category(number) == self.positive_class),
            TrainingValue::Missing => None,
        };
        match name {
            crate::spec::PREDICTION_SCORE => self.scores.push(match value {
                TrainingValue::Number(number) => Some(number).filter(|n| n.is_finite()),
                TrainingValue::Text(text) => text.trim().parse().ok(),
                TrainingValue::Missing => None,
            }),
            crate::spec::PREDICTION_CLASS => {
                let class = class(value);
                self.classes.push(class);
            }
            crate::spec::ACTUAL_LABEL => {
                let label = class(value);
                self.labels.push(label);
            }
            _ => {}
        }
    }

    /// The estimator, when the three columns are complete enough to fit it.
    fn fit(&self) -> Option<crate::estimation::CbpeModel> {
        if self.scores.len() != self.labels.len() {
            return None;
        }
        let mut scores = Vec::with_capacity(self.scores.len());
        let (mut predicted, mut labels) = (Vec::new(), Vec::new());
        for (row, (score, label)) in self.scores.iter().zip(&self.labels).enumerate() {
            let (Some(score), Some(label)) = (score, label) else {
                continue;
            };
            // Without a predicted-class column, a score of ½ or more is positive.
            let class = match self.classes.get(row) {
                Some(class) => *class,
                None if self.classes.is_empty() => Some(*score >= 0.5),
                None => None,
            };
            if let Some(class) = class {
                scores.push(*score);
                predicted.push(class);
                labels.push(*label);
            }
        }
        crate::estimation::CbpeModel::fit(&scores, &predicted, &labels).ok()
    }
}

/// Multiclass CBPE fitted on the sampled rows that have every class's
/// probability, a predicted class and a label among the classes; `None`
/// when no row has them all.
fn fit_multiclass(
    classes: &[String],
    sample: &crate::reconstruction::RowSample,
) -> Result<Option<crate::multiclass::MulticlassCbpe>, Error> {
    use crate::reconstruction::Input;
    let k = classes.len();
    let class_of = |input: &Input<'_>| match input {
        Input::Category(text) => classes.iter().position(|c| c == text.trim()),
        Input::Number(number) => {
            let text = format_category(*number);
            classes.iter().position(|c| *c == text)
        }
        Input::Missing => None,
    };
    let (mut probabilities, mut predicted, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for row in sample.table() {
        let probs: Option<Vec<f64>> = row[..k]
            .iter()
            .map(|input| match input {
                Input::Number(p) if p.is_finite() => Some(*p),
                _ => None,
            })
            .collect();
        if let (Some(probs), Some(p), Some(l)) = (probs, class_of(&row[k]), class_of(&row[k + 1])) {
            probabilities.push(probs);
            predicted.push(p);
            labels.push(l);
        }
    }
    if labels.is_empty() {
        return Ok(None);
    }
    crate::multiclass::MulticlassCbpe::fit(classes.to_vec(), &probabilities, &predicted, &labels)
        .map(Some)
        .map_err(|error| {
            Error::InvalidReference(format!("multiclass performance estimation: {error}"))
        })
}

/// A training value as a row sample's input: text parsed as a number in a
/// numeric column.
fn training_input<'a>(
    sample: &crate::reconstruction::RowSample,
    name: &str,
    value: TrainingValue<'a>,
) -> crate::reconstruction::Input<'a> {
    use crate::reconstruction::Input;
    match value {
        TrainingValue::Number(number) => Input::Number(number),
        TrainingValue::Text(text) => match text.trim().parse::<f64>() {
            Ok(number) if !sample.is_categorical(name) => Input::Number(number),
            _ => Input::Category(text),
        },
        TrainingValue::Missing => Input::Missing,
    }
}

/// One training value handed to the [`ReferenceBuilder`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainingValue<'a> {
    /// A number.
    Number(f64),
    /// A string.
    Text(&'a str),
    /// Missing.
    Missing,
}

impl ReferenceBuilder {
    /// A builder for the series of `spec` (configured features and derived series).
    pub fn new(spec: &ModelSpec, model_version: &str, source: &str) -> Self {
        let mut numeric = BTreeMap::new();
        let mut categorical = BTreeMap::new();
        for series in spec.series() {
            match series.kind {
                FeatureKind::Numeric => {
                    numeric.insert(series.name.clone(), (Vec::new(), 0));
                }
                FeatureKind::Categorical => {
                    categorical.insert(
                        series.name.clone(),
                        CategoricalSketch::new(spec.max_categories()),
                    );
                }
                // Operational health has no training-data reference; the
                // estimator is fitted from the outputs below.
                FeatureKind::Operational
                | FeatureKind::Quality
                | FeatureKind::EstimatedQuality
                | FeatureKind::Multivariate => {}
            }
        }
        let inputs = spec.multivariate().map(|multivariate| {
            let configured: Vec<&crate::spec::FeatureSpec> = spec
                .series()
                .take(spec.configured_feature_count())
                .collect();
            let sample = crate::reconstruction::RowSample::new(
                configured.iter().map(|s| s.name.clone()).collect(),
                configured
                    .iter()
                    .map(|s| s.kind == FeatureKind::Categorical)
                    .collect(),
                crate::reconstruction::MAX_SAMPLE_ROWS,
            );
            (sample, multivariate.variance_share())
        });
        let classes = spec.classes().map(|classes| {
            let mut columns: Vec<String> = classes
                .iter()
                .map(|class| format!("{}{class}", crate::spec::CLASS_PROBABILITY_PREFIX))
                .collect();
            columns.extend([
                crate::spec::PREDICTION_CLASS.to_owned(),
                crate::spec::ACTUAL_LABEL.to_owned(),
            ]);
            let mut categorical = vec![false; classes.len()];
            categorical.extend([true, true]);
            (
                classes.to_vec(),
                crate::reconstruction::RowSample::new(
                    columns,
                    categorical,
                    crate::reconstruction::MAX_SAMPLE_ROWS,
                ),
            )
        });
        let loss = spec.loss_estimation().then(|| {
            let configured: Vec<&crate::spec::FeatureSpec> = spec
                .series()
                .take(spec.configured_feature_count())
                .collect();
            let mut columns: Vec<String> = configured.iter().map(|s| s.name.clone()).collect();
            let mut categorical: Vec<bool> = configured
                .iter()
                .map(|s| s.kind == FeatureKind::Categorical)
                .collect();
            columns.extend([
                crate::spec::PREDICTION_SCORE.to_owned(),
                crate::spec::ACTUAL_LABEL.to_owned(),
            ]);
            categorical.extend([false, false]);
            crate::reconstruction::RowSample::new(
                columns,
                categorical,
                crate::reconstruction::MAX_SAMPLE_ROWS,
            )
        });
        let estimated = spec
            .series()
            .any(|series| series.kind == FeatureKind::EstimatedQuality);
        Self {
            model: spec.name().to_owned(),
            model_version: model_version.to_owned(),
            source: source.to_owned(),
            rows: 0,
            numeric,
            categorical,
            outputs: spec
                .positive_class()
                .filter(|_| estimated)
                .map(|positive| TrainingOutputs {
                    positive_class: positive.to_owned(),
                    ..TrainingOutputs::default()
                }),
            inputs,
            loss,
            classes,
        }
    }

    /// Counts one more training row (call once per row).
    pub fn add_row(&mut self) {
        self.rows += 1;
        if let Some((sample, _)) = &mut self.inputs {
            sample.add_row();
        }
        if let Some(sample) = &mut self.loss {
            sample.add_row();
        }
        if let Some((_, sample)) = &mut self.classes {
            sample.add_row();
        }
    }

    /// Adds a value of the series `name`; unknown names are ignored and
    /// reported as `false`.
    pub fn add(&mut self, name: &str, value: TrainingValue<'_>) -> bool {
        if let Some(outputs) = &mut self.outputs {
            outputs.add(name, value);
        }
        if let Some(sample) = &mut self.loss {
            sample.add(name, training_input(sample, name, value));
        }
        if let Some((_, sample)) = &mut self.classes {
            if sample.add(name, training_input(sample, name, value))
                && name.starts_with(crate::spec::CLASS_PROBABILITY_PREFIX)
            {
                return true;
            }
        }
        if let Some((sample, _)) = &mut self.inputs {
            sample.add(name, training_input(sample, name, value));
        }
        if let Some((values, missing)) = self.numeric.get_mut(name) {
            match value {
                TrainingValue::Number(number) => values.push(number),
                TrainingValue::Text(text) => match text.trim().parse::<f64>() {
                    Ok(number) => values.push(number),
                    Err(_) => *missing += 1,
                },
                TrainingValue::Missing => *missing += 1,
            }
            return true;
        }
        if let Some(sketch) = self.categorical.get_mut(name) {
            match value {
                TrainingValue::Text(text) => sketch.add(text),
                TrainingValue::Number(number) => sketch.add(&format_category(number)),
                TrainingValue::Missing => sketch.add_missing(),
            }
            return true;
        }
        false
    }

    /// Builds the profile. Series without any value are left out.
    pub fn build(self) -> Result<ReferenceProfile, Error> {
        let mut features = BTreeMap::new();
        for (name, (values, missing)) in self.numeric {
            if values.is_empty() {
                continue;
            }
            let reference = NumericReference::from_values(values, missing)
                .map_err(|error| Error::InvalidReference(format!("series `{name}`: {error}")))?;
            features.insert(name, FeatureReference::Numeric(reference));
        }
        for (name, sketch) in self.categorical {
            if sketch.total() == 0 {
                continue;
            }
            features.insert(
                name,
                FeatureReference::Categorical(CategoricalReference {
                    counts: sketch.counts().clone(),
                    other: sketch.other(),
                    missing: sketch.missing(),
                }),
            );
        }
        if features.is_empty() {
            return Err(Error::InvalidReference(
                "no configured feature has a value in the training data".into(),
            ));
        }
        if let Some(model) = self.outputs.as_ref().and_then(TrainingOutputs::fit) {
            features.insert(
                crate::spec::ESTIMATED_QUALITY.to_owned(),
                FeatureReference::Performance(model),
            );
        }
        if let Some(sample) = &self.loss {
            use crate::reconstruction::Input;
            let table = sample.table();
            let inputs = sample.columns().len() - 2;
            let number = |input: &Input<'_>| match input {
                Input::Number(number) if number.is_finite() => Some(*number),
                _ => None,
            };
            let rows: Vec<Vec<Input<'_>>> =
                table.iter().map(|row| row[..inputs].to_vec()).collect();
            let predictions: Vec<Option<f64>> =
                table.iter().map(|row| number(&row[inputs])).collect();
            let targets: Vec<Option<f64>> =
                table.iter().map(|row| number(&row[inputs + 1])).collect();
            let categorical: Vec<bool> = sample.columns()[..inputs]
                .iter()
                .map(|name| sample.is_categorical(name))
                .collect();
            match crate::loss_estimation::LossModel::fit(
                sample.columns()[..inputs].to_vec(),
                &categorical,
                &rows,
                &predictions,
                &targets,
            ) {
                Ok(model) => {
                    features.insert(
                        crate::spec::ESTIMATED_QUALITY.to_owned(),
                        FeatureReference::Loss(Box::new(model)),
                    );
                }
                // Too few rows with a prediction and a target: no estimate.
                Err(crate::loss_estimation::LossError::TooSmall(_)) => {}
                Err(error) => {
                    return Err(Error::InvalidReference(format!("loss estimation: {error}")))
                }
            }
        }
        if let Some((classes, sample)) = &self.classes {
            if let Some(model) = fit_multiclass(classes, sample)? {
                features.insert(
                    crate::spec::ESTIMATED_QUALITY.to_owned(),
                    FeatureReference::Multiclass(Box::new(model)),
                );
            }
        }
        if let Some((sample, variance_share)) = self.inputs {
            use crate::reconstruction::ReconstructionError;
            match sample.fit(variance_share) {
                Ok(model) => {
                    features.insert(
                        crate::spec::MULTIVARIATE.to_owned(),
                        FeatureReference::Multivariate(model),
                    );
                }
                // Too few rows: the series is reported without a band.
                Err(ReconstructionError::TooSmall) => {}
                Err(error) => {
                    return Err(Error::InvalidReference(format!(
                        "multivariate drift: {error}"
                    )))
                }
            }
        }
        Ok(ReferenceProfile {
            model: self.model,
            model_version: self.model_version,
            source: self.source,
            row_count: self.rows,
            features,
        })
    }
}

/// A reference profile resolved against a model spec for the hot path:
/// the bin edges of each numeric series by series position.
#[derive(Debug, Clone)]
pub struct CompiledReference {
    profile: ReferenceProfile,
    edges_by_position: Vec<Option<BinEdges>>,
    reconstruction: Option<CompiledReconstruction>,
    loss: Option<CompiledLoss>,
    multiclass: Option<crate::multiclass::MulticlassCbpe>,
}

/// The loss model resolved against a spec: which model column each
/// configured feature feeds.
#[derive(Debug, Clone)]
pub struct CompiledLoss {
    model: crate::loss_estimation::LossModel,
    column_of_position: Vec<Option<usize>>,
    imputed: Vec<f64>,
}

impl CompiledLoss {
    fn new(spec: &ModelSpec, model: &crate::loss_estimation::LossModel) -> Self {
        use crate::reconstruction::Input;
        Self {
            column_of_position: spec
                .series()
                .take(spec.configured_feature_count())
                .map(|series| model.columns.iter().position(|c| *c == series.name))
                .collect(),
            imputed: (0..model.columns.len())
                .map(|column| model.encode(column, Input::Missing))
                .collect(),
            model: model.clone(),
        }
    }

    /// A prediction's expected absolute and squared error from its
    /// features (`row` is a reused buffer).
    pub fn errors(
        &self,
        spec: &ModelSpec,
        features: &[(std::borrow::Cow<'_, str>, events::FeatureValue<'_>)],
        prediction: f64,
        row: &mut Vec<f64>,
    ) -> (f64, f64) {
        encoded_row(
            spec,
            features,
            &self.column_of_position,
            &self.imputed,
            row,
            |column, input| self.model.encode(column, input),
        );
        row.push(prediction);
        self.model.predict_row(row)
    }
}

/// Fills `row` with an event's features encoded for a model: each
/// configured feature the model reads goes to its column through `encode`;
/// the columns no feature fills keep their `imputed` value.
fn encoded_row(
    spec: &ModelSpec,
    features: &[(std::borrow::Cow<'_, str>, events::FeatureValue<'_>)],
    column_of_position: &[Option<usize>],
    imputed: &[f64],
    row: &mut Vec<f64>,
    encode: impl Fn(usize, crate::reconstruction::Input<'_>) -> f64,
) {
    use crate::reconstruction::Input;
    use events::FeatureValue;
    row.clear();
    row.extend_from_slice(imputed);
    let mut hint = 0;
    for (name, value) in features {
        let Some(position) = spec.feature_position_hinted(name, hint) else {
            continue;
        };
        hint = position + 1;
        if let Some(Some(column)) = column_of_position.get(position) {
            let input = match value {
                FeatureValue::Number(number) => Input::Number(*number),
                FeatureValue::Text(text) => Input::Category(text),
                FeatureValue::Null => Input::Missing,
            };
            row[*column] = encode(*column, input);
        }
    }
}

/// The reconstruction model resolved against a spec: which model column
/// each configured feature feeds, and the encoded row of an event with no
/// value (every column imputed), which each event's values overwrite.
#[derive(Debug, Clone)]
pub struct CompiledReconstruction {
    model: crate::reconstruction::ReconstructionModel,
    column_of_position: Vec<Option<usize>>,
    imputed: Vec<f64>,
}

impl CompiledReconstruction {
    fn new(spec: &ModelSpec, model: &crate::reconstruction::ReconstructionModel) -> Self {
        use crate::reconstruction::Input;
        let column_of_position = spec
            .series()
            .take(spec.configured_feature_count())
            .map(|series| model.columns.iter().position(|c| *c == series.name))
            .collect();
        let imputed = (0..model.columns.len())
            .map(|column| model.encode(column, Input::Missing))
            .collect();
        Self {
            model: model.clone(),
            column_of_position,
            imputed,
        }
    }

    /// The reconstruction error of a feature row (`row` and `scratch` are
    /// reused buffers; no allocation once they have grown).
    pub fn error(
        &self,
        spec: &ModelSpec,
        features: &[(std::borrow::Cow<'_, str>, events::FeatureValue<'_>)],
        row: &mut Vec<f64>,
        scratch: &mut Vec<f64>,
    ) -> f64 {
        encoded_row(
            spec,
            features,
            &self.column_of_position,
            &self.imputed,
            row,
            |column, input| self.model.encode(column, input),
        );
        self.model.encoded_error(row, scratch)
    }
}

impl CompiledReference {
    /// Resolves `profile` against `spec`. Series the profile lacks, or whose
    /// kind differs from the spec, get no reference.
    pub fn new(spec: &ModelSpec, profile: ReferenceProfile) -> Result<Self, Error> {
        let mut edges_by_position = Vec::with_capacity(spec.series_count());
        for series in spec.series() {
            let edges = match (series.kind, profile.features.get(&series.name)) {
                (FeatureKind::Numeric, Some(FeatureReference::Numeric(numeric))) => {
                    Some(BinEdges::new(numeric.edges.clone())?)
                }
                _ => None,
            };
            edges_by_position.push(edges);
        }
        let reconstruction = match profile.features.get(crate::spec::MULTIVARIATE) {
            Some(FeatureReference::Multivariate(model)) if spec.multivariate().is_some() => {
                Some(CompiledReconstruction::new(spec, model))
            }
            _ => None,
        };
        let loss = match profile.features.get(crate::spec::ESTIMATED_QUALITY) {
            Some(FeatureReference::Loss(model)) if spec.loss_estimation() => {
                Some(CompiledLoss::new(spec, model))
            }
            _ => None,
        };
        let multiclass = match profile.features.get(crate::spec::ESTIMATED_QUALITY) {
            Some(FeatureReference::Multiclass(model))
                if spec.classes() == Some(model.classes.as_slice()) =>
            {
                Some((**model).clone())
            }
            _ => None,
        };
        Ok(Self {
            profile,
            edges_by_position,
            reconstruction,
            loss,
            multiclass,
        })
    }

    /// The profile.
    pub fn profile(&self) -> &ReferenceProfile {
        &self.profile
    }

    /// Bin edges of the series at `position`, if it is numeric and referenced.
    #[inline]
    pub fn edges(&self, position: usize) -> Option<&BinEdges> {
        self.edges_by_position
            .get(position)
            .and_then(Option::as_ref)
    }

    /// The reconstruction model, when the spec has multivariate drift on
    /// and the profile has a model.
    #[inline]
    pub fn reconstruction(&self) -> Option<&CompiledReconstruction> {
        self.reconstruction.as_ref()
    }

    /// The loss model, when the spec has loss estimation on and the
    /// profile has a model.
    #[inline]
    pub fn loss(&self) -> Option<&CompiledLoss> {
        self.loss.as_ref()
    }

    /// The multiclass estimator, when the spec names the same classes.
    #[inline]
    pub fn multiclass(&self) -> Option<&crate::multiclass::MulticlassCbpe> {
        self.multiclass.as_ref()
    }

    /// Reference of the series named `name`.
    pub fn feature(&self, name: &str) -> Option<&FeatureReference> {
        self.profile.features.get(name)
    }
}

/// Rearranges `values` so that each position in `ranks` (ascending,
/// distinct) holds the value a total-order sort would put there, every
/// value before it no greater and every value after it no smaller.
fn select_ranks(values: &mut [f64], ranks: &[usize]) {
    select_ranks_from(values, ranks, 0);
}

fn select_ranks_from(values: &mut [f64], ranks: &[usize], offset: usize) {
    if ranks.is_empty() || values.len() <= 1 {
        return;
    }
    let middle = ranks.len() / 2;
    let at = ranks[middle] - offset;
    values.select_nth_unstable_by(at, f64::total_cmp);
    let (below, rest) = values.split_at_mut(at);
    select_ranks_from(below, &ranks[..middle], offset);
    select_ranks_from(&mut rest[1..], &ranks[middle + 1..], offset + at + 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FeatureSpec, Task};

    #[test]
    fn selected_ranks_hold_what_a_sort_puts_there() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(3);
        for n in [1, 2, 5, 1_000, 20_011] {
            // Ties (integers) and full-precision values, signed zeros.
            let values: Vec<f64> = (0..n)
                .map(|i| match i % 3 {
                    0 => f64::from(rng.random_range(-5..5)),
                    1 => rng.random::<f64>() * 100.0 - 50.0,
                    _ => {
                        if rng.random() {
                            0.0
                        } else {
                            -0.0
                        }
                    }
                })
                .collect();
            let mut sorted = values.clone();
            sorted.sort_unstable_by(f64::total_cmp);
            let mut ranks: Vec<usize> = (0..n).filter(|_| rng.random_bool(0.05)).collect();
            ranks.push(n - 1);
            ranks.dedup();
            let mut selected = values.clone();
            select_ranks(&mut selected, &ranks);
            for rank in &ranks {
                assert_eq!(
                    selected[*rank].to_bits(),
                    sorted[*rank].to_bits(),
                    "n {n} rank {rank}"
                );
                assert!(selected[..*rank]
                    .iter()
                    .all(|v| v.total_cmp(&selected[*rank]).is_le()));
                assert!(selected[*rank..]
                    .iter()
                    .all(|v| v.total_cmp(&selected[*rank]).is_ge()));
            }
        }
    }

    #[test]
    fn numeric_reference_counts_every_value_in_its_bin() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(5);
        let values: Vec<f64> = (0..50_000)
            .map(|i| {
                if i % 4 == 0 {
                    f64::from(rng.random_range(0..20))
                } else {
                    rng.random::<f64>().powi(3) * 20.0
                }
            })
            .collect();
        let reference = NumericReference::from_values(values.clone(), 0).unwrap();
        let mut sorted = values.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        let n = sorted.len();
        // Oracle: right-closed bins over the edges, counted by brute force.
        let mut expected = vec![0u64; reference.edges.len() + 1];
        for value in &values {
            expected[reference
                .edges
                .iter()
                .filter(|edge| **edge < *value)
                .count()] += 1;
        }
        assert_eq!(reference.counts, expected);
        assert_eq!(reference.edges[0], sorted[0].next_down());
        assert_eq!(*reference.edges.last().unwrap(), sorted[n - 1]);
        for (quantile, level) in reference
            .quantiles
            .iter()
            .zip(crate::drift::wasserstein_levels(WASSERSTEIN_LEVELS))
        {
            assert_eq!(*quantile, sorted[((level * n as f64) as usize).min(n - 1)]);
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        assert!((reference.moments.mean().unwrap() - mean).abs() < 1e-12);
    }

    #[test]
    fn with_a_positive_class_the_training_outputs_fit_the_estimator() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let spec = ModelSpec::new(
            "churn",
            Task::Classification,
            vec![FeatureSpec {
                name: "age".into(),
                kind: FeatureKind::Numeric,
            }],
            vec![],
            10,
            10,
        )
        .unwrap()
        .with_positive_class(Some("yes".into()));
        let mut rng = StdRng::seed_from_u64(5);
        let scores: Vec<f64> = (0..5_000).map(|_| rng.random::<f64>()).collect();
        let mut builder = ReferenceBuilder::new(&spec, "1", "test");
        // Column by column, as files are read; one label is missing.
        for row in 0..scores.len() {
            builder.add_row();
            builder.add("age", TrainingValue::Number(30.0 + row as f64 % 40.0));
        }
        for score in &scores {
            builder.add(crate::spec::PREDICTION_SCORE, TrainingValue::Number(*score));
        }
        for score in &scores {
            let class = if *score >= 0.5 { "yes" } else { "no" };
            builder.add(crate::spec::PREDICTION_CLASS, TrainingValue::Text(class));
        }
        for (row, score) in scores.iter().enumerate() {
            let label = match row {
                7 => TrainingValue::Missing,
                _ if rng.random_bool(*score) => TrainingValue::Text("yes"),
                _ => TrainingValue::Text("no"),
            };
            builder.add(crate::spec::ACTUAL_LABEL, label);
        }
        let profile = builder.build().unwrap();
        let Some(FeatureReference::Performance(model)) =
            profile.features.get(crate::spec::ESTIMATED_QUALITY)
        else {
            panic!("no estimator in {:?}", profile.features.keys());
        };
        // Uniform calibrated scores predicted at ½: accuracy 0.75.
        let accuracy = model.reference[&crate::estimation::PerformanceMetric::Accuracy];
        assert!((accuracy - 0.75).abs() < 0.02, "{accuracy}");

        // A window of the series: estimated, with bands, through `compute`.
        let position = spec
            .derived_position(crate::spec::SeriesSource::EstimatedQuality)
            .unwrap();
        let mut sketch = FeatureSketch::new(spec.series_at(position).kind, &spec, None);
        let FeatureSketch::EstimatedQuality(histogram) = &mut sketch else {
            panic!("{sketch:?}");
        };
        for _ in 0..2_000 {
            let score: f64 = rng.random::<f64>().powi(3);
            histogram.add(score, score >= 0.5);
        }
        let metrics = crate::metrics::compute(
            &sketch,
            profile.features.get(crate::spec::ESTIMATED_QUALITY),
            crate::metrics::DriftThresholds::default(),
        );
        assert_eq!(metrics.count, 2_000);
        assert_eq!(metrics.estimated.len(), 5);
        let accuracy = &metrics.estimated[0];
        // Scores u³ predicted at ½: expected accuracy E[max(p, 1 − p)] ≈ 0.853,
        // well above the reference's band.
        assert!((accuracy.value - 0.853).abs() < 0.03, "{accuracy:?}");
        assert!(accuracy.alert, "{accuracy:?}");
        assert!(accuracy.upper_threshold.unwrap() < accuracy.value);
        assert_eq!(metrics.drifted, None);

        // Without a positive class there is no such series.
        let plain = spec.clone().with_positive_class(None);
        assert!(plain
            .series()
            .all(|s| s.name != crate::spec::ESTIMATED_QUALITY));
    }

    #[test]
    fn numeric_edges_are_empirical_percentiles_and_counts_are_exact() {
        let values: Vec<f64> = (1..=1000).map(f64::from).collect();
        let reference = NumericReference::from_values(values, 2).unwrap();
        assert_eq!(
            reference.edges.len(),
            107,
            "99 percentiles, three finer cuts in each tail, the range edges"
        );
        assert_eq!(reference.edges[0], 1.0f64.next_down());
        assert_eq!(reference.edges[1..5], [1.0, 2.0, 5.0, 10.0]);
        assert_eq!(reference.edges[102], 990.0);
        assert_eq!(reference.edges[103..], [995.0, 998.0, 999.0, 1000.0]);
        assert_eq!(reference.counts[0], 0, "nothing below the minimum");
        assert_eq!(reference.counts[107], 0, "nothing above the maximum");
        assert_eq!(reference.counts[1..5], [1, 1, 3, 5]);
        assert!(reference.counts[5..103].iter().all(|c| *c == 10));
        assert_eq!(reference.counts[103..], [5, 3, 1, 1, 0]);
        assert_eq!(reference.missing, 2);
        assert_eq!(
            reference.psi_edge_indices,
            vec![13, 23, 33, 43, 53, 63, 73, 83, 93]
        );
        let grouped = reference.group_for_psi(&reference.counts);
        assert_eq!(grouped, vec![100; 10]);
    }

    #[test]
    fn ties_collapse_edges() {
        let mut values = vec![0.0; 900];
        values.extend((1..=100).map(f64::from));
        let reference = NumericReference::from_values(values, 0).unwrap();
        assert_eq!(reference.edges[1], 0.0);
        assert_eq!(
            reference.counts[1], 900,
            "all zeros fall in the first in-range bin"
        );
        assert_eq!(reference.counts.iter().sum::<u64>(), 1000);
        assert_eq!(
            reference
                .group_for_psi(&reference.counts)
                .iter()
                .sum::<u64>(),
            1000
        );
    }

    #[test]
    fn builder_covers_configured_and_derived_series() {
        let spec = ModelSpec::new(
            "m",
            Task::Classification,
            vec![
                FeatureSpec {
                    name: "x".into(),
                    kind: FeatureKind::Numeric,
                },
                FeatureSpec {
                    name: "c".into(),
                    kind: FeatureKind::Categorical,
                },
            ],
            vec![],
            5,
            5,
        )
        .unwrap();
        let mut builder = ReferenceBuilder::new(&spec, "1", "file:test.csv");
        for i in 0..100 {
            builder.add_row();
            builder.add("x", TrainingValue::Number(i as f64));
            builder.add("c", TrainingValue::Number((i % 3) as f64));
            builder.add(
                "prediction.class",
                TrainingValue::Text(if i % 2 == 0 { "yes" } else { "no" }),
            );
        }
        assert!(!builder.add("unknown", TrainingValue::Missing));
        let profile = builder.build().unwrap();
        assert_eq!(profile.row_count, 100);
        let Some(FeatureReference::Categorical(c)) = profile.features.get("c") else {
            panic!()
        };
        assert_eq!(c.counts.get("0"), Some(&34));
        assert!(profile.features.contains_key("prediction.class"));
        assert!(
            !profile.features.contains_key("latency_ms"),
            "no values, no reference"
        );
        let round_trip = ReferenceProfile::from_json(&profile.to_json()).unwrap();
        assert_eq!(round_trip, profile);
    }
}
