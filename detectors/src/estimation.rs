//! Performance before the labels arrive: confidence-based performance
//! estimation (CBPE) for binary classifiers.
//!
//! A model's calibrated score is the probability that the row is positive,
//! so a window's expected confusion matrix follows from its scores alone:
//! with `p` the calibrated probability and `ŷ` the predicted class,
//! `E[TP] = Σ_{ŷ=1} p`, `E[FP] = Σ_{ŷ=1} (1 − p)`, `E[FN] = Σ_{ŷ=0} p`,
//! `E[TN] = Σ_{ŷ=0} (1 − p)`, and from it accuracy, precision, recall and
//! F1. The expected ROC curve walks the scores from the highest down, adding
//! `p` to the true positives and `1 − p` to the false ones; its area is the
//! estimated ROC AUC. This is NannyML's CBPE; the calibrator
//! ([`crate::calibration`]) is fitted on the reference, which has scores and
//! labels.
//!
//! **Valid under covariate shift only**: the estimate assumes that the
//! probability of the positive class given the score is the reference's.
//! When the relation between inputs and labels changes (concept shift), the
//! scores no longer say how often the model is right and the estimate is
//! wrong, typically too optimistic.
//!
//! A window keeps a [`ScoreHistogram`]: per predicted class and per score
//! bin of width 1/[`SCORE_BINS`], the count and the sum of scores (mergeable
//! exactly, at most 2 × 1,000 entries). The calibrator is applied at each
//! bin's mean score when the window is estimated, so windows opened before
//! their reference can still be estimated, and the error against applying it
//! row by row is the calibrator's curvature within a thousandth of the score
//! range.
//!
//! Each estimate comes with its sampling error (NannyML's: the reference's
//! observation-level standard deviation over `√(n · fraction)`, the Mann–Whitney
//! form for ROC AUC) and a band from the reference: the metric *realized* on
//! reference chunks of the window's size, `mean ± 3σ` ([`Band`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::calibration::{needs_calibration, IsotonicCalibrator};

/// Score bins of a [`ScoreHistogram`] over `[0, 1]`.
pub const SCORE_BINS: u16 = 1000;

/// The metrics CBPE estimates.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PerformanceMetric {
    /// Share of rows predicted right.
    Accuracy,
    /// Share of positive predictions that are positive.
    Precision,
    /// Share of positives predicted positive.
    Recall,
    /// Harmonic mean of precision and recall.
    F1,
    /// Area under the ROC curve.
    RocAuc,
    /// Mean absolute error (regression, direct loss estimation).
    Mae,
    /// Root mean squared error (regression, direct loss estimation).
    Rmse,
}

impl PerformanceMetric {
    /// Every metric.
    pub const ALL: [PerformanceMetric; 7] = [
        PerformanceMetric::Accuracy,
        PerformanceMetric::Precision,
        PerformanceMetric::Recall,
        PerformanceMetric::F1,
        PerformanceMetric::RocAuc,
        PerformanceMetric::Mae,
        PerformanceMetric::Rmse,
    ];

    /// The metrics CBPE estimates for a binary classifier, in report order.
    pub const CLASSIFICATION: [PerformanceMetric; 5] = [
        PerformanceMetric::Accuracy,
        PerformanceMetric::Precision,
        PerformanceMetric::Recall,
        PerformanceMetric::F1,
        PerformanceMetric::RocAuc,
    ];

    /// The name as configured and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            PerformanceMetric::Accuracy => "accuracy",
            PerformanceMetric::Precision => "precision",
            PerformanceMetric::Recall => "recall",
            PerformanceMetric::F1 => "f1",
            PerformanceMetric::RocAuc => "roc_auc",
            PerformanceMetric::Mae => "mae",
            PerformanceMetric::Rmse => "rmse",
        }
    }

    /// The metric named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|metric| metric.as_str() == name)
    }
}

/// Count and score sum of one bin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BinSum {
    /// Rows.
    pub count: u64,
    /// Sum of their scores.
    pub score_sum: f64,
}

/// A window's scores by predicted class (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreHistogram {
    /// Rows predicted negative, by score bin.
    negative: BTreeMap<u16, BinSum>,
    /// Rows predicted positive, by score bin.
    positive: BTreeMap<u16, BinSum>,
}

pub(crate) fn score_bin(score: f64) -> u16 {
    ((score * f64::from(SCORE_BINS)).floor().max(0.0) as u16).min(SCORE_BINS - 1)
}

impl ScoreHistogram {
    /// Adds one row; a non-finite score is not counted.
    pub fn add(&mut self, score: f64, predicted_positive: bool) {
        if !score.is_finite() {
            return;
        }
        let side = if predicted_positive {
            &mut self.positive
        } else {
            &mut self.negative
        };
        let bin = side.entry(score_bin(score)).or_default();
        bin.count += 1;
        bin.score_sum += score;
    }

    /// Adds every row of `other`.
    pub fn merge(&mut self, other: &ScoreHistogram) {
        for (mine, theirs) in [
            (&mut self.negative, &other.negative),
            (&mut self.positive, &other.positive),
        ] {
            for (bin, sum) in theirs {
                let entry = mine.entry(*bin).or_default();
                entry.count += sum.count;
                entry.score_sum += sum.score_sum;
            }
        }
    }

    /// Approximate heap size in bytes (at most 2 × 1,000 bins).
    pub fn heap_bytes(&self) -> usize {
        // A B-tree entry: key, value and about a third of node overhead.
        (self.negative.len() + self.positive.len()) * 40
    }

    /// Rows counted.
    pub fn count(&self) -> u64 {
        self.negative
            .values()
            .chain(self.positive.values())
            .map(|bin| bin.count)
            .sum()
    }
}

/// An expected (or realized) confusion matrix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    /// True positives.
    pub tp: f64,
    /// False positives.
    pub fp: f64,
    /// False negatives.
    pub fn_: f64,
    /// True negatives.
    pub tn: f64,
}

impl Confusion {
    /// The metric from the matrix (`None` for ROC AUC, or when undefined).
    pub fn metric(&self, metric: PerformanceMetric) -> Option<f64> {
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        let Confusion { tp, fp, fn_, tn } = *self;
        match metric {
            PerformanceMetric::Accuracy => ratio(tp + tn, tp + fp + fn_ + tn),
            PerformanceMetric::Precision => ratio(tp, tp + fp),
            PerformanceMetric::Recall => ratio(tp, tp + fn_),
            PerformanceMetric::F1 => ratio(tp, tp + 0.5 * (fp + fn_)),
            PerformanceMetric::RocAuc | PerformanceMetric::Mae | PerformanceMetric::Rmse => None,
        }
    }

    /// The matrix of rows with their predicted and true classes.
    pub fn realized(predicted: &[bool], labels: &[bool]) -> Confusion {
        let mut confusion = Confusion::default();
        for (predicted, label) in predicted.iter().zip(labels) {
            match (predicted, label) {
                (true, true) => confusion.tp += 1.0,
                (true, false) => confusion.fp += 1.0,
                (false, true) => confusion.fn_ += 1.0,
                (false, false) => confusion.tn += 1.0,
            }
        }
        confusion
    }
}

/// ROC AUC of scores against labels, exactly (the Mann–Whitney statistic,
/// tied scores counting ½: scikit-learn's `roc_auc_score`). `None` without
/// both classes.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let (mut negatives_below, mut pairs) = (0.0f64, 0.0f64);
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let positives = order[start..end].iter().filter(|i| labels[**i]).count() as f64;
        let negatives = (end - start) as f64 - positives;
        pairs += positives * (negatives_below + 0.5 * negatives);
        negatives_below += negatives;
        start = end;
    }
    let positives = labels.iter().filter(|label| **label).count() as f64;
    let negatives = labels.len() as f64 - positives;
    (positives > 0.0 && negatives > 0.0).then(|| pairs / (positives * negatives))
}

/// The realized value of `metric` on labelled rows.
pub fn realized(
    metric: PerformanceMetric,
    scores: &[f64],
    predicted: &[bool],
    labels: &[bool],
) -> Option<f64> {
    match metric {
        PerformanceMetric::RocAuc => roc_auc(scores, labels),
        other => Confusion::realized(predicted, labels).metric(other),
    }
}

/// NannyML's sampling-error components: the observation-level standard
/// deviation on the reference and the share of rows it applies to; the
/// error for `n` rows is `std / √(n · fraction)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingComponents {
    /// Observation-level standard deviation.
    pub std: f64,
    /// Share of rows it is over.
    pub fraction: f64,
}

impl SamplingComponents {
    /// The sampling error of a window of `n` rows.
    pub fn error(&self, n: u64) -> Option<f64> {
        let rows = n as f64 * self.fraction;
        (rows > 0.0 && self.std.is_finite()).then(|| self.std / rows.sqrt())
    }

    /// Components of a Bernoulli observation with share `share` over
    /// `fraction` of the rows.
    fn bernoulli(share: f64, fraction: f64) -> Self {
        Self {
            std: (share * (1.0 - share)).sqrt(),
            fraction,
        }
    }
}

fn sampling_components(
    metric: PerformanceMetric,
    scores: &[f64],
    labels: &[bool],
    confusion: &Confusion,
) -> Option<SamplingComponents> {
    let Confusion { tp, fp, fn_, tn } = *confusion;
    let n = tp + fp + fn_ + tn;
    if n == 0.0 {
        return None;
    }
    Some(match metric {
        PerformanceMetric::Accuracy => SamplingComponents::bernoulli((tp + tn) / n, 1.0),
        PerformanceMetric::Precision => {
            SamplingComponents::bernoulli(tp / (tp + fp), (tp + fp) / n)
        }
        PerformanceMetric::Recall => SamplingComponents::bernoulli(tp / (tp + fn_), (tp + fn_) / n),
        PerformanceMetric::F1 => {
            // Observations 1 (TP) and 0 (FP, FN), scaled so their mean is F1.
            let relevant = tp + fp + fn_;
            let scale = relevant / (0.5 * (fp + fn_) + tp);
            let bernoulli = SamplingComponents::bernoulli(tp / relevant, relevant / n);
            SamplingComponents {
                std: bernoulli.std * scale,
                ..bernoulli
            }
        }
        PerformanceMetric::RocAuc => roc_auc_components(scores, labels)?,
        PerformanceMetric::Mae | PerformanceMetric::Rmse => return None,
    })
}

/// NannyML's ROC AUC components: with the minority class as positive, the
/// share of negatives ranked below each positive (the Mann–Whitney terms),
/// their standard deviation, and the positives' share.
fn roc_auc_components(scores: &[f64], labels: &[bool]) -> Option<SamplingComponents> {
    let n = labels.len();
    let positives = labels.iter().filter(|label| **label).count();
    let flip = positives * 2 > n;
    let (positive, scores): (Vec<bool>, Vec<f64>) = if flip {
        (
            labels.iter().map(|label| !label).collect(),
            scores.iter().map(|score| 1.0 - score).collect(),
        )
    } else {
        (labels.to_vec(), scores.to_vec())
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let n_positive = positive.iter().filter(|label| **label).count();
    let n_negative = n - n_positive;
    if n_positive == 0 || n_negative == 0 {
        return None;
    }
    // NannyML drops a positive ranked first (its rank, 0, is taken for a negative's).
    let terms: Vec<f64> = order
        .iter()
        .enumerate()
        .filter(|(rank, row)| positive[**row] && *rank > 0)
        .enumerate()
        .map(|(i, (rank, _))| (rank - i) as f64 / n_negative as f64)
        .collect();
    if terms.is_empty() {
        return None;
    }
    let mean = terms.iter().sum::<f64>() / terms.len() as f64;
    let variance = terms.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / terms.len() as f64;
    Some(SamplingComponents {
        std: variance.sqrt(),
        fraction: n_positive as f64 / n as f64,
    })
}

/// Mean and standard deviation (divisor n, as NannyML's thresholds) of
/// per-chunk values, ignoring non-finite ones; `None` with fewer than two.
pub fn chunk_spread(values: &[f64]) -> Option<(f64, f64)> {
    let values: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if values.len() < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    Some((mean, variance.sqrt()))
}

/// An alert band: a value below `lower` or above `upper` is flagged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Band {
    /// Lower threshold (`None`: none).
    pub lower: Option<f64>,
    /// Upper threshold.
    pub upper: Option<f64>,
}

impl Band {
    /// `mean ± k·σ` of `values` (σ with divisor n, as NannyML), limited to
    /// `[0, 1]`; `None` with fewer than two values.
    pub fn from_chunks(values: &[f64], k: f64) -> Option<Band> {
        let (mean, std) = chunk_spread(values)?;
        Some(Band {
            lower: Some((mean - k * std).max(0.0)),
            upper: Some((mean + k * std).min(1.0)),
        })
    }

    /// `mean ± k·σ` of `values` for an error metric (MAE, RMSE): the lower
    /// end at least 0, no upper limit.
    pub fn from_error_chunks(values: &[f64], k: f64) -> Option<Band> {
        let (mean, std) = chunk_spread(values)?;
        Some(Band {
            lower: Some((mean - k * std).max(0.0)),
            upper: Some(mean + k * std),
        })
    }

    /// Whether `value` is outside the band.
    pub fn flags(&self, value: f64) -> bool {
        self.lower.is_some_and(|lower| value < lower)
            || self.upper.is_some_and(|upper| value > upper)
    }
}

/// Why a CBPE model could not be fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EstimationError {
    /// Scores, predictions and labels differ in length.
    #[error("scores, predictions and labels must have one value per row")]
    Lengths,
    /// The reference lacks a class.
    #[error("the reference's labels must hold both classes")]
    OneClass,
}

/// CBPE fitted on a reference: the calibrator (when calibrating helps) and
/// the sampling-error components of each metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CbpeModel {
    /// The calibrator; `None` when the scores are used as they are.
    pub calibrator: Option<IsotonicCalibrator>,
    /// Sampling-error components per metric.
    pub components: BTreeMap<PerformanceMetric, SamplingComponents>,
    /// Each metric realized on the whole reference.
    pub reference: BTreeMap<PerformanceMetric, f64>,
}

/// One metric estimated for a window, with its band: what a window reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EstimatedMetric {
    /// Which metric.
    pub metric: PerformanceMetric,
    /// The estimated value.
    pub value: f64,
    /// Its sampling error (one standard deviation).
    pub sampling_error: Option<f64>,
    /// Lower threshold.
    pub lower_threshold: Option<f64>,
    /// Upper threshold.
    pub upper_threshold: Option<f64>,
    /// Whether the value is outside the band.
    pub alert: bool,
}

impl EstimatedMetric {
    /// An estimate with its band (none: no thresholds, no alert).
    pub fn banded(estimate: Estimate, band: Option<Band>) -> Self {
        Self {
            metric: estimate.metric,
            value: estimate.value,
            sampling_error: estimate.sampling_error,
            lower_threshold: band.and_then(|b| b.lower),
            upper_threshold: band.and_then(|b| b.upper),
            alert: band.is_some_and(|b| b.flags(estimate.value)),
        }
    }
}

/// Half-width of the band in sampling errors (NannyML's 3σ over reference chunks).
pub const BAND_K: f64 = 3.0;

/// One metric's estimate for a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Which metric.
    pub metric: PerformanceMetric,
    /// The estimated value.
    pub value: f64,
    /// Its sampling error (one standard deviation).
    pub sampling_error: Option<f64>,
}

impl CbpeModel {
    /// Fits on reference rows: scores (probability of the positive class),
    /// predicted classes and true labels (`true`: positive).
    pub fn fit(
        scores: &[f64],
        predicted: &[bool],
        labels: &[bool],
    ) -> Result<Self, EstimationError> {
        if scores.len() != labels.len() || predicted.len() != labels.len() {
            return Err(EstimationError::Lengths);
        }
        let positives = labels.iter().filter(|label| **label).count();
        if positives == 0 || positives == labels.len() {
            return Err(EstimationError::OneClass);
        }
        let calibrator = needs_calibration(scores, labels)
            .then(|| IsotonicCalibrator::fit(scores, labels))
            .flatten();
        let confusion = Confusion::realized(predicted, labels);
        let components = PerformanceMetric::CLASSIFICATION
            .into_iter()
            .filter_map(|metric| {
                sampling_components(metric, scores, labels, &confusion)
                    .map(|components| (metric, components))
            })
            .collect();
        let reference = PerformanceMetric::CLASSIFICATION
            .into_iter()
            .filter_map(|metric| {
                realized(metric, scores, predicted, labels).map(|value| (metric, value))
            })
            .collect();
        Ok(Self {
            calibrator,
            components,
            reference,
        })
    }

    /// The band of `metric` for a window of `n` rows: the metric realized
    /// on the whole reference ± [`BAND_K`] sampling errors of `n` rows,
    /// within [0, 1]. It is the spread NannyML measures over reference
    /// chunks of `n` rows, computed instead of sampled (the sampling error
    /// is the standard deviation of the metric over such chunks), so any
    /// window size has one.
    pub fn band(&self, metric: PerformanceMetric, n: u64) -> Option<Band> {
        let center = *self.reference.get(&metric)?;
        let spread = BAND_K * self.components.get(&metric)?.error(n)?;
        Some(Band {
            lower: Some((center - spread).max(0.0)),
            upper: Some((center + spread).min(1.0)),
        })
    }

    /// [`CbpeModel::estimate`] with each metric's [`CbpeModel::band`].
    pub fn estimate_with_bands(&self, window: &ScoreHistogram) -> Vec<EstimatedMetric> {
        let n = window.count();
        self.estimate(window)
            .into_iter()
            .map(|estimate| {
                let band = self.band(estimate.metric, n);
                EstimatedMetric::banded(estimate, band)
            })
            .collect()
    }

    /// The probability of the positive class for `score`.
    pub fn probability(&self, score: f64) -> f64 {
        match &self.calibrator {
            Some(calibrator) => calibrator.calibrate(score),
            None => score,
        }
    }

    /// Every metric estimated for a window (none for an empty window; a
    /// metric is left out when undefined, e.g. precision without a
    /// positive prediction).
    pub fn estimate(&self, window: &ScoreHistogram) -> Vec<Estimate> {
        let n = window.count();
        if n == 0 {
            return Vec::new();
        }
        let mut confusion = Confusion::default();
        // (bin, expected positives, rows) over both predicted classes.
        let mut by_bin: BTreeMap<u16, (f64, f64)> = BTreeMap::new();
        for (side, predicted_positive) in [(&window.negative, false), (&window.positive, true)] {
            for (bin, sum) in side {
                let count = sum.count as f64;
                let p = self.probability(sum.score_sum / count).clamp(0.0, 1.0);
                let (positives, negatives) = (count * p, count * (1.0 - p));
                if predicted_positive {
                    confusion.tp += positives;
                    confusion.fp += negatives;
                } else {
                    confusion.fn_ += positives;
                    confusion.tn += negatives;
                }
                let entry = by_bin.entry(*bin).or_default();
                entry.0 += positives;
                entry.1 += count;
            }
        }
        let auc = expected_roc_auc(by_bin.values().rev().copied());
        PerformanceMetric::CLASSIFICATION
            .into_iter()
            .filter_map(|metric| {
                let value = match metric {
                    PerformanceMetric::RocAuc => auc?,
                    other => confusion.metric(other)?,
                };
                Some(Estimate {
                    metric,
                    value,
                    sampling_error: self.components.get(&metric).and_then(|c| c.error(n)),
                })
            })
            .collect()
    }
}

/// The area under the expected ROC curve from `(expected positives, rows)`
/// per score bin, highest scores first (trapezoids; a bin's rows move
/// along one straight segment).
pub(crate) fn expected_roc_auc(bins: impl Iterator<Item = (f64, f64)>) -> Option<f64> {
    let points: Vec<(f64, f64)> = bins.collect();
    let total_positive: f64 = points.iter().map(|(p, _)| p).sum();
    let total_negative: f64 = points.iter().map(|(p, n)| n - p).sum();
    if total_positive <= 0.0 || total_negative <= 0.0 {
        return None;
    }
    let (mut tpr, mut fpr, mut area) = (0.0, 0.0, 0.0);
    for (positives, rows) in points {
        let next_tpr = tpr + positives / total_positive;
        let next_fpr = fpr + (rows - positives) / total_negative;
        area += (next_fpr - fpr) * (tpr + next_tpr) / 2.0;
        (tpr, fpr) = (next_tpr, next_fpr);
    }
    Some(area)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Rows whose labels follow their scores exactly (calibrated scores),
    /// predicted positive at 0.5.
    fn calibrated_rows(rng: &mut StdRng, n: usize, skew: f64) -> (Vec<f64>, Vec<bool>, Vec<bool>) {
        let scores: Vec<f64> = (0..n).map(|_| rng.random::<f64>().powf(skew)).collect();
        let labels = scores.iter().map(|s| rng.random_bool(*s)).collect();
        let predicted = scores.iter().map(|s| *s >= 0.5).collect();
        (scores, predicted, labels)
    }

    #[test]
    fn exact_roc_auc_counts_ties_as_half() {
        // Pairs (positive, negative): (0.9, 0.1) 1, (0.9, 0.5) 1, (0.5, 0.1) 1, (0.5, 0.5) ½.
        let auc = roc_auc(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false]).unwrap();
        assert!((auc - 3.5 / 4.0).abs() < 1e-15);
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn the_expected_matrix_is_the_sum_of_probabilities() {
        let model = CbpeModel {
            calibrator: None,
            components: BTreeMap::new(),
            reference: BTreeMap::new(),
        };
        let mut window = ScoreHistogram::default();
        for (score, predicted) in [(0.9, true), (0.6, true), (0.3, false), (0.2, false)] {
            window.add(score, predicted);
        }
        let estimates = model.estimate(&window);
        let value = |metric| estimates.iter().find(|e| e.metric == metric).unwrap().value;
        // TP 1.5, FP 0.5, FN 0.5, TN 1.5.
        assert!((value(PerformanceMetric::Accuracy) - 0.75).abs() < 1e-12);
        assert!((value(PerformanceMetric::Precision) - 0.75).abs() < 1e-12);
        assert!((value(PerformanceMetric::Recall) - 0.75).abs() < 1e-12);
        assert!((value(PerformanceMetric::F1) - 0.75).abs() < 1e-12);
        // Expected ROC: walk 0.9, 0.6, 0.3, 0.2 adding p to TP and 1 − p to FP.
        let walk = [(0.9, 0.1), (0.6, 0.4), (0.3, 0.7), (0.2, 0.8)];
        let (mut tpr, mut fpr, mut area) = (0.0, 0.0, 0.0);
        for (p, q) in walk {
            let (t, f) = (tpr + p / 2.0, fpr + q / 2.0);
            area += (f - fpr) * (tpr + t) / 2.0;
            (tpr, fpr) = (t, f);
        }
        assert!((value(PerformanceMetric::RocAuc) - area).abs() < 1e-12);
    }

    #[test]
    fn on_calibrated_scores_the_estimate_tracks_the_realized_metrics() {
        let mut rng = StdRng::seed_from_u64(12);
        let (scores, predicted, labels) = calibrated_rows(&mut rng, 50_000, 1.0);
        let model = CbpeModel::fit(&scores, &predicted, &labels).unwrap();
        // A window with covariate shift: more confident scores.
        let (scores, predicted, labels) = calibrated_rows(&mut rng, 20_000, 2.5);
        let mut window = ScoreHistogram::default();
        for (score, predicted) in scores.iter().zip(&predicted) {
            window.add(*score, *predicted);
        }
        for estimate in model.estimate(&window) {
            let truth = realized(estimate.metric, &scores, &predicted, &labels).unwrap();
            let error = estimate.sampling_error.unwrap();
            assert!(
                (estimate.value - truth).abs() < 4.0 * error.max(0.002),
                "{:?}: estimated {} ± {error}, realized {truth}",
                estimate.metric,
                estimate.value
            );
        }
    }

    #[test]
    fn under_concept_shift_the_estimate_is_wrong() {
        // The documented limit: the labels stop following the scores (here
        // the relation weakens to p' = 0.5 + (p − 0.5)/4) while the scores
        // keep their distribution, so the estimate stays where it was and
        // the realized accuracy falls far below it.
        let mut rng = StdRng::seed_from_u64(21);
        let (scores, predicted, labels) = calibrated_rows(&mut rng, 50_000, 1.0);
        let model = CbpeModel::fit(&scores, &predicted, &labels).unwrap();
        let scores: Vec<f64> = (0..20_000).map(|_| rng.random::<f64>()).collect();
        let predicted: Vec<bool> = scores.iter().map(|s| *s >= 0.5).collect();
        let labels: Vec<bool> = scores
            .iter()
            .map(|s| rng.random_bool(0.5 + (s - 0.5) / 4.0))
            .collect();
        let mut window = ScoreHistogram::default();
        for (score, predicted) in scores.iter().zip(&predicted) {
            window.add(*score, *predicted);
        }
        let estimate = model.estimate(&window)[0];
        assert_eq!(estimate.metric, PerformanceMetric::Accuracy);
        let truth = realized(PerformanceMetric::Accuracy, &scores, &predicted, &labels).unwrap();
        assert!(
            estimate.value - truth > 0.15,
            "estimated {}, realized {truth}",
            estimate.value
        );
    }

    #[test]
    fn histograms_merge_exactly() {
        let mut rng = StdRng::seed_from_u64(4);
        let (scores, predicted, _) = calibrated_rows(&mut rng, 1_000, 1.0);
        let mut whole = ScoreHistogram::default();
        let mut parts = [ScoreHistogram::default(), ScoreHistogram::default()];
        for (i, (score, predicted)) in scores.iter().zip(&predicted).enumerate() {
            whole.add(*score, *predicted);
            parts[usize::from(i % 3 == 0)].add(*score, *predicted);
        }
        let [mut merged, other] = parts;
        merged.merge(&other);
        assert_eq!(merged.count(), 1_000);
        for (a, b) in merged
            .negative
            .values()
            .chain(merged.positive.values())
            .zip(whole.negative.values().chain(whole.positive.values()))
        {
            assert_eq!(a.count, b.count);
            assert!((a.score_sum - b.score_sum).abs() < 1e-9);
        }
    }

    #[test]
    fn bands_are_limited_to_the_unit_interval() {
        let band = Band::from_chunks(&[0.98, 1.0, 0.99], 3.0).unwrap();
        assert_eq!(band.upper, Some(1.0));
        assert!(band.flags(0.9));
        assert!(!band.flags(0.99));
        assert_eq!(Band::from_chunks(&[0.5], 3.0), None);
    }
}
