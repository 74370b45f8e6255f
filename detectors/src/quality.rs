//! Model quality from predictions joined with their actuals, as mergeable
//! sufficient statistics.
//!
//! [`QualitySketch`] keeps, for the predictions of one window whose actual
//! arrived:
//! - classification: per-class true positives, false positives and false
//!   negatives (accuracy, macro precision / recall / F1), and, for scores
//!   of a binary model, a 1,000-bin score histogram per outcome (ROC AUC),
//!   the log-loss and Brier sums, and 10 calibration bins (expected
//!   calibration error);
//! - regression: counts and sums of absolute, squared and relative errors,
//!   and the moments of the actuals (MAE, RMSE, MAPE, R²).
//!
//! Every field adds under merge, so merge(q(a), q(b)) = q(a ∪ b) exactly
//! (R²'s moments within floating-point rounding). ROC AUC from the binned
//! histogram treats scores in the same bin as ties (counted one half): the
//! error against the exact AUC is at most the share of positive–negative
//! pairs falling in one bin.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::moments::Moments;
use crate::Error;

/// Bins of the score histograms over [0, 1].
pub const SCORE_BINS: usize = 1_000;
/// Calibration bins over [0, 1].
pub const CALIBRATION_BINS: usize = 10;
/// Probabilities are clipped to `[ε, 1 − ε]` in the log loss.
pub const LOG_LOSS_EPSILON: f64 = 1e-15;

/// Per-class confusion counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassCounts {
    /// Predicted this class, and it was.
    pub true_positive: u64,
    /// Predicted this class, and it was not.
    pub false_positive: u64,
    /// Did not predict this class, and it was.
    pub false_negative: u64,
}

/// One joined classification outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassificationOutcome<'a> {
    /// The predicted class, if the prediction had one.
    pub predicted: Option<&'a str>,
    /// The actual class.
    pub actual: &'a str,
    /// Score of the positive class, with whether the actual is positive.
    pub scored: Option<(f64, bool)>,
}

/// Quality statistics of a classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationQuality {
    matched: u64,
    correct: u64,
    max_classes: usize,
    classes: BTreeMap<String, ClassCounts>,
    scored: u64,
    positives: Vec<u64>,
    negatives: Vec<u64>,
    log_loss_sum: f64,
    brier_sum: f64,
    /// (count, sum of scores, positives) per calibration bin.
    calibration: Vec<(u64, f64, u64)>,
}

/// Quality statistics of a regressor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegressionQuality {
    matched: u64,
    absolute_error_sum: f64,
    squared_error_sum: f64,
    relative_error_sum: f64,
    /// Outcomes with a non-zero actual (the MAPE denominator).
    relative_count: u64,
    actuals: Moments,
}

/// Quality of one (model, version, segment) window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QualitySketch {
    /// A classifier.
    Classification(ClassificationQuality),
    /// A regressor.
    Regression(RegressionQuality),
}

/// The numbers derived from a [`QualitySketch`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QualityMetrics {
    /// Predictions joined with an actual.
    pub matched: u64,
    /// Share of correct predicted classes.
    pub accuracy: Option<f64>,
    /// Macro-averaged precision over classes that were predicted.
    pub precision: Option<f64>,
    /// Macro-averaged recall over classes that occurred.
    pub recall: Option<f64>,
    /// Macro-averaged F1 over classes that were predicted or occurred.
    pub f1: Option<f64>,
    /// ROC AUC of the scores (binary).
    pub roc_auc: Option<f64>,
    /// Mean log loss of the scores (binary).
    pub log_loss: Option<f64>,
    /// Mean Brier score (binary).
    pub brier: Option<f64>,
    /// Expected calibration error over 10 bins (binary).
    pub calibration_error: Option<f64>,
    /// Mean absolute error (regression).
    pub mae: Option<f64>,
    /// Root mean squared error (regression).
    pub rmse: Option<f64>,
    /// Mean absolute percentage error over non-zero actuals, as a share.
    pub mape: Option<f64>,
    /// Coefficient of determination (regression).
    pub r2: Option<f64>,
}

impl ClassificationQuality {
    /// Empty statistics naming at most `max_classes` classes.
    pub fn new(max_classes: usize) -> Self {
        Self {
            matched: 0,
            correct: 0,
            max_classes,
            classes: BTreeMap::new(),
            scored: 0,
            positives: vec![0; SCORE_BINS],
            negatives: vec![0; SCORE_BINS],
            log_loss_sum: 0.0,
            brier_sum: 0.0,
            calibration: vec![(0, 0.0, 0); CALIBRATION_BINS],
        }
    }

    fn class_mut(&mut self, class: &str) -> Option<&mut ClassCounts> {
        if !self.classes.contains_key(class) {
            if self.classes.len() >= self.max_classes {
                return None;
            }
            self.classes
                .insert(class.to_owned(), ClassCounts::default());
        }
        self.classes.get_mut(class)
    }

    /// Adds one joined outcome.
    pub fn add(&mut self, outcome: ClassificationOutcome<'_>) {
        self.matched += 1;
        if let Some(predicted) = outcome.predicted {
            if predicted == outcome.actual {
                self.correct += 1;
                if let Some(counts) = self.class_mut(predicted) {
                    counts.true_positive += 1;
                }
            } else {
                if let Some(counts) = self.class_mut(predicted) {
                    counts.false_positive += 1;
                }
                if let Some(counts) = self.class_mut(outcome.actual) {
                    counts.false_negative += 1;
                }
            }
        } else if let Some(counts) = self.class_mut(outcome.actual) {
            counts.false_negative += 1;
        }
        if let Some((score, positive)) = outcome.scored {
            if score.is_finite() {
                let score = score.clamp(0.0, 1.0);
                self.scored += 1;
                let bin = ((score * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1);
                if positive {
                    self.positives[bin] += 1;
                } else {
                    self.negatives[bin] += 1;
                }
                let clipped = score.clamp(LOG_LOSS_EPSILON, 1.0 - LOG_LOSS_EPSILON);
                let y = f64::from(u8::from(positive));
                self.log_loss_sum -= y * clipped.ln() + (1.0 - y) * (1.0 - clipped).ln();
                self.brier_sum += (score - y).powi(2);
                let calibration_bin =
                    ((score * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
                let entry = &mut self.calibration[calibration_bin];
                entry.0 += 1;
                entry.1 += score;
                entry.2 += u64::from(positive);
            }
        }
    }

    fn merge(&mut self, other: &ClassificationQuality) {
        self.matched += other.matched;
        self.correct += other.correct;
        for (class, counts) in &other.classes {
            if let Some(mine) = self.class_mut(class) {
                mine.true_positive += counts.true_positive;
                mine.false_positive += counts.false_positive;
                mine.false_negative += counts.false_negative;
            }
        }
        self.scored += other.scored;
        self.positives
            .iter_mut()
            .zip(&other.positives)
            .for_each(|(a, b)| *a += b);
        self.negatives
            .iter_mut()
            .zip(&other.negatives)
            .for_each(|(a, b)| *a += b);
        self.log_loss_sum += other.log_loss_sum;
        self.brier_sum += other.brier_sum;
        for (mine, theirs) in self.calibration.iter_mut().zip(&other.calibration) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
            mine.2 += theirs.2;
        }
    }

    fn metrics(&self) -> QualityMetrics {
        let matched = self.matched;
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let mut precision = Vec::new();
        let mut recall = Vec::new();
        let mut f1 = Vec::new();
        for counts in self.classes.values() {
            let p = ratio(
                counts.true_positive,
                counts.true_positive + counts.false_positive,
            );
            let r = ratio(
                counts.true_positive,
                counts.true_positive + counts.false_negative,
            );
            precision.extend(p);
            recall.extend(r);
            f1.push(match (p, r) {
                (Some(p), Some(r)) if p + r > 0.0 => 2.0 * p * r / (p + r),
                _ => 0.0,
            });
        }
        let mean = |values: &[f64]| {
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        let positives: u64 = self.positives.iter().sum();
        let negatives: u64 = self.negatives.iter().sum();
        let roc_auc = (positives > 0 && negatives > 0).then(|| {
            // P(score_pos > score_neg) + ½ P(same bin), bin by bin.
            let mut negatives_below = 0u64;
            let mut wins = 0.0;
            for bin in 0..SCORE_BINS {
                wins += self.positives[bin] as f64
                    * (negatives_below as f64 + 0.5 * self.negatives[bin] as f64);
                negatives_below += self.negatives[bin];
            }
            wins / (positives as f64 * negatives as f64)
        });
        let calibration_error = (self.scored > 0).then(|| {
            self.calibration
                .iter()
                .filter(|(count, _, _)| *count > 0)
                .map(|(count, score_sum, positive)| {
                    let share = *count as f64 / self.scored as f64;
                    share * (score_sum / *count as f64 - *positive as f64 / *count as f64).abs()
                })
                .sum()
        });
        QualityMetrics {
            matched,
            accuracy: ratio(self.correct, matched),
            precision: mean(&precision),
            recall: mean(&recall),
            f1: mean(&f1),
            roc_auc,
            log_loss: (self.scored > 0).then(|| self.log_loss_sum / self.scored as f64),
            brier: (self.scored > 0).then(|| self.brier_sum / self.scored as f64),
            calibration_error,
            ..QualityMetrics::default()
        }
    }
}

impl RegressionQuality {
    /// Adds one joined outcome.
    pub fn add(&mut self, predicted: f64, actual: f64) {
        if !(predicted.is_finite() && actual.is_finite()) {
            return;
        }
        self.matched += 1;
        let error = predicted - actual;
        self.absolute_error_sum += error.abs();
        self.squared_error_sum += error * error;
        if actual != 0.0 {
            self.relative_error_sum += (error / actual).abs();
            self.relative_count += 1;
        }
        self.actuals.add(actual);
    }

    fn merge(&mut self, other: &RegressionQuality) {
        self.matched += other.matched;
        self.absolute_error_sum += other.absolute_error_sum;
        self.squared_error_sum += other.squared_error_sum;
        self.relative_error_sum += other.relative_error_sum;
        self.relative_count += other.relative_count;
        self.actuals.merge(&other.actuals);
    }

    fn metrics(&self) -> QualityMetrics {
        let n = self.matched as f64;
        let total_sum_of_squares = self.actuals.std_dev().map(|std| std * std * (n - 1.0));
        QualityMetrics {
            matched: self.matched,
            mae: (self.matched > 0).then(|| self.absolute_error_sum / n),
            rmse: (self.matched > 0).then(|| (self.squared_error_sum / n).sqrt()),
            mape: (self.relative_count > 0)
                .then(|| self.relative_error_sum / self.relative_count as f64),
            r2: total_sum_of_squares
                .filter(|sst| *sst > 0.0)
                .map(|sst| 1.0 - self.squared_error_sum / sst),
            ..QualityMetrics::default()
        }
    }
}

impl QualitySketch {
    /// Merges another window's statistics of the same model.
    pub fn merge(&mut self, other: &QualitySketch) -> Result<(), Error> {
        match (self, other) {
            (QualitySketch::Classification(a), QualitySketch::Classification(b)) => a.merge(b),
            (QualitySketch::Regression(a), QualitySketch::Regression(b)) => a.merge(b),
            _ => {
                return Err(Error::IncompatibleMerge(
                    "classification and regression quality".into(),
                ))
            }
        }
        Ok(())
    }

    /// Joined outcomes.
    pub fn matched(&self) -> u64 {
        match self {
            QualitySketch::Classification(q) => q.matched,
            QualitySketch::Regression(q) => q.matched,
        }
    }

    /// The derived metrics.
    pub fn metrics(&self) -> QualityMetrics {
        match self {
            QualitySketch::Classification(q) => q.metrics(),
            QualitySketch::Regression(q) => q.metrics(),
        }
    }
}

/// Whether a label names the positive class of a binary model: the
/// configured `positive_class`, or else `1`, `true` or `yes` (any case).
pub fn is_positive(label: &str, positive_class: Option<&str>) -> bool {
    match positive_class {
        Some(positive) => label == positive,
        None => matches!(
            label.to_ascii_lowercase().as_str(),
            "1" | "1.0" | "true" | "yes"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Exact ROC AUC: the share of (positive, negative) pairs ranked right, ties ½.
    fn exact_auc(scores: &[(f64, bool)]) -> f64 {
        let positives: Vec<f64> = scores.iter().filter(|s| s.1).map(|s| s.0).collect();
        let negatives: Vec<f64> = scores.iter().filter(|s| !s.1).map(|s| s.0).collect();
        let mut wins = 0.0;
        for p in &positives {
            for n in &negatives {
                wins += if p > n {
                    1.0
                } else if p == n {
                    0.5
                } else {
                    0.0
                };
            }
        }
        wins / (positives.len() * negatives.len()) as f64
    }

    fn outcomes(seed: u64, n: usize) -> Vec<(f64, bool, &'static str, &'static str)> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let positive = rng.random::<f64>() < 0.3;
                let center: f64 = if positive { 0.65 } else { 0.35 };
                let score = (center + rng.random_range(-0.3..0.3)).clamp(0.0, 1.0);
                let predicted = if score >= 0.5 { "yes" } else { "no" };
                (
                    score,
                    positive,
                    predicted,
                    if positive { "yes" } else { "no" },
                )
            })
            .collect()
    }

    fn sketch_of(outcomes: &[(f64, bool, &str, &str)]) -> QualitySketch {
        let mut quality = ClassificationQuality::new(10);
        for (score, positive, predicted, actual) in outcomes {
            quality.add(ClassificationOutcome {
                predicted: Some(predicted),
                actual,
                scored: Some((*score, *positive)),
            });
        }
        QualitySketch::Classification(quality)
    }

    #[test]
    fn classification_metrics_match_exact_computation() {
        let outcomes = outcomes(1, 4_000);
        let metrics = sketch_of(&outcomes).metrics();
        let n = outcomes.len() as f64;
        let correct = outcomes.iter().filter(|o| o.2 == o.3).count() as f64;
        assert!((metrics.accuracy.unwrap() - correct / n).abs() < 1e-12);
        // Macro precision/recall/F1 over {yes, no}, by direct counting.
        let mut precision = 0.0;
        let mut recall = 0.0;
        let mut f1 = 0.0;
        for class in ["yes", "no"] {
            let tp = outcomes
                .iter()
                .filter(|o| o.2 == class && o.3 == class)
                .count() as f64;
            let fp = outcomes
                .iter()
                .filter(|o| o.2 == class && o.3 != class)
                .count() as f64;
            let fn_ = outcomes
                .iter()
                .filter(|o| o.2 != class && o.3 == class)
                .count() as f64;
            let (p, r) = (tp / (tp + fp), tp / (tp + fn_));
            precision += p / 2.0;
            recall += r / 2.0;
            f1 += 2.0 * p * r / (p + r) / 2.0;
        }
        assert!((metrics.precision.unwrap() - precision).abs() < 1e-12);
        assert!((metrics.recall.unwrap() - recall).abs() < 1e-12);
        assert!((metrics.f1.unwrap() - f1).abs() < 1e-12);
        let scored: Vec<(f64, bool)> = outcomes.iter().map(|o| (o.0, o.1)).collect();
        assert!(
            (metrics.roc_auc.unwrap() - exact_auc(&scored)).abs() < 0.002,
            "{:?}",
            metrics.roc_auc
        );
        let log_loss = scored
            .iter()
            .map(|(p, y)| {
                let p = p.clamp(LOG_LOSS_EPSILON, 1.0 - LOG_LOSS_EPSILON);
                if *y {
                    -p.ln()
                } else {
                    -(1.0 - p).ln()
                }
            })
            .sum::<f64>()
            / n;
        assert!((metrics.log_loss.unwrap() - log_loss).abs() < 1e-9);
        let brier = scored
            .iter()
            .map(|(p, y)| (p - f64::from(u8::from(*y))).powi(2))
            .sum::<f64>()
            / n;
        assert!((metrics.brier.unwrap() - brier).abs() < 1e-12);
        assert!(
            metrics.calibration_error.unwrap() >= 0.0 && metrics.calibration_error.unwrap() < 0.5
        );
    }

    #[test]
    fn merge_equals_the_sketch_of_the_union() {
        let all = outcomes(2, 3_000);
        let (left, right) = all.split_at(1_234);
        let mut merged = sketch_of(left);
        merged.merge(&sketch_of(right)).unwrap();
        let whole = sketch_of(&all);
        let (a, b) = (merged.metrics(), whole.metrics());
        assert_eq!(a.matched, b.matched);
        assert_eq!(a.accuracy, b.accuracy);
        assert_eq!(a.roc_auc, b.roc_auc);
        assert!((a.log_loss.unwrap() - b.log_loss.unwrap()).abs() < 1e-12);
    }

    #[test]
    fn regression_metrics_match_exact_computation() {
        let pairs: Vec<(f64, f64)> = (0..500)
            .map(|i| {
                let actual = (i as f64 * 0.37).sin() * 10.0 + 20.0;
                (actual + ((i * 7) % 11) as f64 / 5.0 - 1.0, actual)
            })
            .collect();
        let (left, right) = pairs.split_at(200);
        let build = |part: &[(f64, f64)]| {
            let mut quality = RegressionQuality::default();
            part.iter().for_each(|(p, a)| quality.add(*p, *a));
            QualitySketch::Regression(quality)
        };
        let mut merged = build(left);
        merged.merge(&build(right)).unwrap();
        let metrics = merged.metrics();
        let n = pairs.len() as f64;
        let mae = pairs.iter().map(|(p, a)| (p - a).abs()).sum::<f64>() / n;
        let sse = pairs.iter().map(|(p, a)| (p - a).powi(2)).sum::<f64>();
        let mean = pairs.iter().map(|(_, a)| a).sum::<f64>() / n;
        let sst = pairs.iter().map(|(_, a)| (a - mean).powi(2)).sum::<f64>();
        let mape = pairs.iter().map(|(p, a)| ((p - a) / a).abs()).sum::<f64>() / n;
        assert!((metrics.mae.unwrap() - mae).abs() < 1e-12);
        assert!((metrics.rmse.unwrap() - (sse / n).sqrt()).abs() < 1e-12);
        assert!((metrics.mape.unwrap() - mape).abs() < 1e-12);
        assert!((metrics.r2.unwrap() - (1.0 - sse / sst)).abs() < 1e-9);
    }

    #[test]
    fn positive_labels() {
        assert!(is_positive("yes", None) && is_positive("1", None) && is_positive("True", None));
        assert!(!is_positive("no", None));
        assert!(is_positive("churned", Some("churned")) && !is_positive("yes", Some("churned")));
    }
}
