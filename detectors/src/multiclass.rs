//! CBPE for multiclass classifiers (NannyML's method): macro-averaged
//! accuracy, precision, recall, F1 and ROC AUC estimated from the class
//! probabilities alone.
//!
//! Fitted on the reference ([`MulticlassCbpe::fit`]): per class, one
//! against the rest, an isotonic calibrator of that class's probability,
//! kept only when it lowers the held-out calibration error
//! ([`crate::calibration::needs_calibration`], as for binary CBPE).
//!
//! Estimated per chunk ([`MulticlassCbpe::estimate`]): each row's class
//! probabilities are calibrated and divided by their sum (uniform when the
//! sum is 0); accuracy is the mean calibrated probability of the predicted
//! class; per class `c`, with `q` the calibrated probability of `c`,
//! `TP = Σ_{ŷ=c} q`, `FP = Σ_{ŷ=c} (1 − q)`, `FN = Σ_{ŷ≠c} q` give
//! precision, recall and F1, and the expected ROC curve walks the rows by
//! the *uncalibrated* probability of `c` (descending), adding `q` to the
//! true and `1 − q` to the false positives; each metric is the mean over
//! the classes (macro average).
//!
//! Sampling errors are NannyML's: accuracy `σ(correct) / √n`; precision,
//! recall and F1 `√(Σ_c v_c / (n · f_c)) / k` over the classes' reference
//! variance `v_c` of the observation-level metric and the share `f_c` of
//! relevant rows; ROC AUC the same from the Mann–Whitney components, times
//! 1.2 (NannyML's empirical correction).

use serde::{Deserialize, Serialize};

use crate::calibration::{needs_calibration, IsotonicCalibrator};
use crate::estimation::{Estimate, PerformanceMetric};

/// Why a multiclass model could not be fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MulticlassError {
    /// Fewer than three classes (two: use binary CBPE).
    #[error("multiclass CBPE needs at least three classes")]
    TooFewClasses,
    /// Rows, predictions and labels differ in length, or a row has another
    /// number of probabilities than there are classes.
    #[error("every row needs one probability per class, a predicted class and a label")]
    Shape,
    /// A class never occurs among the reference labels.
    #[error("class `{0}` never occurs in the reference's labels")]
    AbsentClass(String),
}

/// Per class: the variance of the observation-level metric and the share
/// of rows it is taken over.
type ClassComponents = Vec<(f64, f64)>;

/// Multiclass CBPE fitted on a reference (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MulticlassCbpe {
    /// The classes, sorted; probabilities and class indices follow this order.
    pub classes: Vec<String>,
    /// Per class, its calibrator (`None`: used as it is).
    pub calibrators: Vec<Option<IsotonicCalibrator>>,
    accuracy_std: f64,
    precision: ClassComponents,
    recall: ClassComponents,
    f1: ClassComponents,
    roc_auc: ClassComponents,
    /// Each metric realized on the reference rows (the centre of a
    /// window's band).
    #[serde(default)]
    pub reference: std::collections::BTreeMap<PerformanceMetric, f64>,
}

/// One class's part of a window's [`ClassSums`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassSum {
    /// Rows predicted as this class.
    pub predicted: u64,
    /// Σ of its calibrated probability over those rows.
    pub predicted_probability: f64,
    /// Σ of its calibrated probability over every row.
    pub probability: f64,
    /// By bin of its uncalibrated probability (1/1,000 wide): rows and Σ
    /// of its calibrated probability, for the expected ROC curve.
    pub bins: std::collections::BTreeMap<u16, (u64, f64)>,
}

/// A window's multiclass outputs, calibrated at ingest: what multiclass
/// CBPE needs, as sums that merge exactly (each class at most 1,000 bins).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassSums {
    /// Rows.
    pub count: u64,
    /// Σ of the calibrated probability of each row's predicted class.
    pub correct: f64,
    /// Per class, in the model's (sorted) class order.
    pub classes: Vec<ClassSum>,
}

impl ClassSums {
    /// Adds one prediction: its uncalibrated and calibrated (normalized)
    /// probability per class, in the model's class order, and its
    /// predicted class.
    pub fn add_calibrated(&mut self, probabilities: &[f64], calibrated: &[f64], predicted: usize) {
        let k = probabilities.len();
        if calibrated.len() != k || predicted >= k {
            return;
        }
        if self.classes.len() < k {
            self.classes.resize(k, ClassSum::default());
        }
        self.count += 1;
        self.correct += calibrated[predicted];
        for (c, (class, q)) in self.classes.iter_mut().zip(calibrated).enumerate() {
            class.probability += q;
            if c == predicted {
                class.predicted += 1;
                class.predicted_probability += q;
            }
            let bin = class
                .bins
                .entry(crate::estimation::score_bin(probabilities[c]))
                .or_default();
            bin.0 += 1;
            bin.1 += q;
        }
    }

    /// Adds another window part.
    pub fn merge(&mut self, other: &ClassSums) {
        self.count += other.count;
        self.correct += other.correct;
        if self.classes.len() < other.classes.len() {
            self.classes
                .resize(other.classes.len(), ClassSum::default());
        }
        for (mine, theirs) in self.classes.iter_mut().zip(&other.classes) {
            mine.predicted += theirs.predicted;
            mine.predicted_probability += theirs.predicted_probability;
            mine.probability += theirs.probability;
            for (bin, (count, sum)) in &theirs.bins {
                let entry = mine.bins.entry(*bin).or_default();
                entry.0 += count;
                entry.1 += sum;
            }
        }
    }

    /// Approximate heap size in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.classes
            .iter()
            .map(|class| std::mem::size_of::<ClassSum>() + class.bins.len() * 40)
            .sum()
    }
}

/// Population variance (divisor n).
fn variance(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64
}

/// NannyML's Mann–Whitney components of one class's ROC AUC.
fn auc_components(labels: &[bool], scores: &[f64]) -> (f64, f64) {
    let positives = labels.iter().filter(|l| **l).count();
    let (labels, scores): (Vec<bool>, Vec<f64>) = if positives * 2 > labels.len() {
        (
            labels.iter().map(|l| !l).collect(),
            scores.iter().map(|s| 1.0 - s).collect(),
        )
    } else {
        (labels.to_vec(), scores.to_vec())
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let n_pos = labels.iter().filter(|l| **l).count();
    let n_neg = labels.len() - n_pos;
    // As NannyML: the ranks of the positives, leaving out rank 0 (its
    // rank vector cannot tell a positive there from the negatives), each
    // minus its place among them, over the negatives.
    let ranks: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(rank, index)| *rank > 0 && labels[**index])
        .map(|(rank, _)| rank)
        .collect();
    let ser: Vec<f64> = ranks
        .iter()
        .enumerate()
        .map(|(i, rank)| (rank - i) as f64 / n_neg as f64)
        .collect();
    (variance(&ser), n_pos as f64 / labels.len() as f64)
}

impl MulticlassCbpe {
    /// Fits on reference rows: each row's uncalibrated probability per
    /// class (in `classes` order, which must be sorted), its predicted class
    /// and its true class (indices into `classes`).
    pub fn fit(
        classes: Vec<String>,
        probabilities: &[Vec<f64>],
        predicted: &[usize],
        labels: &[usize],
    ) -> Result<Self, MulticlassError> {
        let k = classes.len();
        if k < 3 {
            return Err(MulticlassError::TooFewClasses);
        }
        if probabilities.len() != labels.len()
            || predicted.len() != labels.len()
            || probabilities.iter().any(|row| row.len() != k)
            || predicted.iter().chain(labels).any(|class| *class >= k)
        {
            return Err(MulticlassError::Shape);
        }
        let mut calibrators = Vec::with_capacity(k);
        let (mut precision, mut recall, mut f1, mut roc_auc) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let n = labels.len() as f64;
        for (c, class) in classes.iter().enumerate() {
            let truth: Vec<bool> = labels.iter().map(|label| *label == c).collect();
            if !truth.iter().any(|t| *t) {
                return Err(MulticlassError::AbsentClass(class.clone()));
            }
            let scores: Vec<f64> = probabilities.iter().map(|row| row[c]).collect();
            calibrators.push(if needs_calibration(&scores, &truth) {
                IsotonicCalibrator::fit(&scores, &truth)
            } else {
                None
            });
            let predicted_c: Vec<bool> = predicted.iter().map(|p| *p == c).collect();
            // Observation-level values: TP = 1, FP = FN = 0.
            let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
            for (p, t) in predicted_c.iter().zip(&truth) {
                match (p, t) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    (false, false) => {}
                }
            }
            let observations = |ones: usize, zeros: usize| -> Vec<f64> {
                std::iter::repeat_n(1.0, ones)
                    .chain(std::iter::repeat_n(0.0, zeros))
                    .collect()
            };
            precision.push((variance(&observations(tp, fp)), (tp + fp) as f64 / n));
            recall.push((variance(&observations(tp, fn_)), (tp + fn_) as f64 / n));
            f1.push((
                variance(&observations(tp, fp + fn_)),
                (tp + fp + fn_) as f64 / n,
            ));
            roc_auc.push(auc_components(&truth, &scores));
        }
        let correct: Vec<f64> = predicted
            .iter()
            .zip(labels)
            .map(|(p, l)| f64::from(u8::from(p == l)))
            .collect();
        let reference = PerformanceMetric::CLASSIFICATION
            .into_iter()
            .filter_map(|metric| {
                Some((
                    metric,
                    realized(metric, k, probabilities, predicted, labels)?,
                ))
            })
            .collect();
        Ok(Self {
            classes,
            calibrators,
            accuracy_std: variance(&correct).sqrt(),
            precision,
            recall,
            f1,
            roc_auc,
            reference,
        })
    }

    /// Adds one prediction to a window's sums: its uncalibrated probability
    /// per class (model class order) and its predicted class.
    pub fn add(&self, sums: &mut ClassSums, probabilities: &[f64], predicted: usize) {
        if probabilities.len() == self.classes.len() {
            sums.add_calibrated(probabilities, &self.calibrate(probabilities), predicted);
        }
    }

    /// The macro-averaged estimates of a window's sums (see the module
    /// docs; the ROC curve walks the 1/1,000 bins of the uncalibrated
    /// probability instead of the rows), with sampling errors.
    pub fn estimate_sums(&self, sums: &ClassSums) -> Vec<Estimate> {
        let n = sums.count;
        if n == 0 || sums.classes.len() != self.classes.len() {
            return Vec::new();
        }
        let k = self.classes.len() as f64;
        let ratio = |a: f64, b: f64| if b != 0.0 { a / b } else { 0.0 };
        let (mut precision, mut recall, mut f1, mut auc) = (0.0, 0.0, 0.0, 0.0);
        for class in &sums.classes {
            let tp = class.predicted_probability;
            let fp = class.predicted as f64 - tp;
            let fn_ = class.probability - tp;
            precision += ratio(tp, tp + fp);
            recall += ratio(tp, tp + fn_);
            f1 += ratio(tp, tp + 0.5 * (fp + fn_));
            auc += crate::estimation::expected_roc_auc(
                class
                    .bins
                    .values()
                    .rev()
                    .map(|(count, q)| (*q, *count as f64)),
            )
            .unwrap_or(f64::NAN);
        }
        self.with_errors(
            n as usize,
            [
                sums.correct / n as f64,
                precision / k,
                recall / k,
                f1 / k,
                auc / k,
            ],
        )
    }

    /// The window's estimates with their bands: the metric realized on the
    /// reference ± 3 sampling errors of the window's size, within [0, 1].
    pub fn estimate_with_bands(&self, sums: &ClassSums) -> Vec<crate::estimation::EstimatedMetric> {
        self.estimate_sums(sums)
            .into_iter()
            .filter(|estimate| estimate.value.is_finite())
            .map(|estimate| {
                let band = match (
                    self.reference.get(&estimate.metric),
                    estimate.sampling_error,
                ) {
                    (Some(reference), Some(error)) => Some(crate::estimation::Band {
                        lower: Some((reference - crate::estimation::BAND_K * error).max(0.0)),
                        upper: Some((reference + crate::estimation::BAND_K * error).min(1.0)),
                    }),
                    _ => None,
                };
                crate::estimation::EstimatedMetric::banded(estimate, band)
            })
            .collect()
    }

    /// The five estimates (accuracy, precision, recall, F1, ROC AUC) of `n`
    /// rows with their sampling errors.
    fn with_errors(&self, n: usize, values: [f64; 5]) -> Vec<Estimate> {
        let k = self.classes.len() as f64;
        let spread = |components: &ClassComponents, factor: f64| {
            let sum: f64 = components.iter().map(|(v, f)| v / (n as f64 * f)).sum();
            sum.sqrt() / k * factor
        };
        let errors = [
            self.accuracy_std / (n as f64).sqrt(),
            spread(&self.precision, 1.0),
            spread(&self.recall, 1.0),
            spread(&self.f1, 1.0),
            spread(&self.roc_auc, 1.2),
        ];
        PerformanceMetric::CLASSIFICATION
            .into_iter()
            .zip(values)
            .zip(errors)
            .map(|((metric, value), error)| Estimate {
                metric,
                value,
                sampling_error: Some(error),
            })
            .collect()
    }

    /// A row's calibrated probabilities, divided by their sum.
    pub fn calibrate(&self, row: &[f64]) -> Vec<f64> {
        let calibrated: Vec<f64> = row
            .iter()
            .zip(&self.calibrators)
            .map(|(p, calibrator)| match calibrator {
                Some(calibrator) => calibrator.calibrate(*p),
                None => *p,
            })
            .collect();
        let sum: f64 = calibrated.iter().sum();
        if sum != 0.0 {
            calibrated.iter().map(|p| p / sum).collect()
        } else {
            vec![1.0 / calibrated.len() as f64; calibrated.len()]
        }
    }

    /// The macro-averaged estimates of a chunk's rows (uncalibrated
    /// probabilities and predicted classes), with sampling errors; nothing
    /// for an empty chunk.
    pub fn estimate(&self, probabilities: &[Vec<f64>], predicted: &[usize]) -> Vec<Estimate> {
        let n = probabilities.len();
        if n == 0 {
            return Vec::new();
        }
        let calibrated: Vec<Vec<f64>> = probabilities
            .iter()
            .map(|row| self.calibrate(row))
            .collect();
        let k = self.classes.len();
        let accuracy = calibrated
            .iter()
            .zip(predicted)
            .map(|(row, p)| row[*p])
            .sum::<f64>()
            / n as f64;
        let (mut precision, mut recall, mut f1, mut auc) = (0.0, 0.0, 0.0, 0.0);
        for c in 0..k {
            let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
            for (row, p) in calibrated.iter().zip(predicted) {
                if *p == c {
                    tp += row[c];
                    fp += 1.0 - row[c];
                } else {
                    fn_ += row[c];
                }
            }
            let ratio = |a: f64, b: f64| if b != 0.0 { a / b } else { 0.0 };
            precision += ratio(tp, tp + fp);
            recall += ratio(tp, tp + fn_);
            f1 += ratio(tp, tp + 0.5 * (fp + fn_));
            auc += expected_roc_auc(
                &probabilities.iter().map(|row| row[c]).collect::<Vec<_>>(),
                &calibrated.iter().map(|row| row[c]).collect::<Vec<_>>(),
            );
        }
        let k_f = k as f64;
        self.with_errors(
            n,
            [accuracy, precision / k_f, recall / k_f, f1 / k_f, auc / k_f],
        )
    }
}

/// NannyML's expected ROC AUC of one class: rows by uncalibrated score
/// (descending), the calibrated probability counted as a true positive and
/// its complement as a false one; cumulative counts rounded to 5 decimals
/// as NannyML does; trapezoidal area.
fn expected_roc_auc(uncalibrated: &[f64], calibrated: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..uncalibrated.len()).collect();
    order.sort_by(|a, b| uncalibrated[*b].total_cmp(&uncalibrated[*a]));
    let round = |v: f64| (v * 1e5).round() / 1e5;
    let mut tps = vec![0.0];
    let mut fps = vec![0.0];
    let mut cumulative = 0.0;
    for (i, index) in order.iter().enumerate() {
        cumulative += calibrated[*index];
        tps.push(round(cumulative));
        fps.push(round(1.0 + i as f64 - cumulative));
    }
    let (tp_total, fp_total) = (*tps.last().unwrap(), *fps.last().unwrap());
    if tp_total == 0.0 || fp_total == 0.0 {
        return f64::NAN;
    }
    let mut area = 0.0;
    for i in 1..tps.len() {
        let (x0, x1) = (fps[i - 1] / fp_total, fps[i] / fp_total);
        let (y0, y1) = (tps[i - 1] / tp_total, tps[i] / tp_total);
        area += (x1 - x0) * (y0 + y1) / 2.0;
    }
    area
}

/// Macro-averaged metrics of rows with known classes (for bands and
/// realized values): accuracy, precision, recall, F1 (classes never
/// predicted count 0, as scikit-learn's default) and one-vs-rest ROC AUC
/// from the uncalibrated probabilities.
pub fn realized(
    metric: PerformanceMetric,
    k: usize,
    probabilities: &[Vec<f64>],
    predicted: &[usize],
    labels: &[usize],
) -> Option<f64> {
    if labels.is_empty() {
        return None;
    }
    let n = labels.len() as f64;
    let per_class = |value: &dyn Fn(usize) -> f64| (0..k).map(value).sum::<f64>() / k as f64;
    let counts = |c: usize| {
        let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
        for (p, l) in predicted.iter().zip(labels) {
            match (*p == c, *l == c) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fn_ += 1.0,
                _ => {}
            }
        }
        (tp, fp, fn_)
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Some(match metric {
        PerformanceMetric::Accuracy => {
            predicted.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / n
        }
        PerformanceMetric::Precision => per_class(&|c| {
            let (tp, fp, _) = counts(c);
            ratio(tp, tp + fp)
        }),
        PerformanceMetric::Recall => per_class(&|c| {
            let (tp, _, fn_) = counts(c);
            ratio(tp, tp + fn_)
        }),
        PerformanceMetric::F1 => per_class(&|c| {
            let (tp, fp, fn_) = counts(c);
            ratio(tp, tp + 0.5 * (fp + fn_))
        }),
        PerformanceMetric::RocAuc => {
            let mut total = 0.0;
            for c in 0..k {
                let scores: Vec<f64> = probabilities.iter().map(|row| row[c]).collect();
                let truth: Vec<bool> = labels.iter().map(|l| *l == c).collect();
                total += crate::estimation::roc_auc(&scores, &truth)?;
            }
            total / k as f64
        }
        PerformanceMetric::Mae | PerformanceMetric::Rmse => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitting_refuses_two_classes_a_wrong_shape_and_an_absent_class() {
        let classes = |k: usize| (0..k).map(|c| format!("c{c}")).collect::<Vec<_>>();
        let rows = vec![
            vec![0.5, 0.3, 0.2],
            vec![0.2, 0.5, 0.3],
            vec![0.1, 0.2, 0.7],
        ];
        assert_eq!(
            MulticlassCbpe::fit(classes(2), &[vec![0.5, 0.5]], &[0], &[1]).unwrap_err(),
            MulticlassError::TooFewClasses
        );
        assert_eq!(
            MulticlassCbpe::fit(classes(3), &rows, &[0, 1], &[0, 1, 2]).unwrap_err(),
            MulticlassError::Shape
        );
        assert_eq!(
            MulticlassCbpe::fit(classes(3), &rows, &[0, 1, 2], &[0, 1, 1]).unwrap_err(),
            MulticlassError::AbsentClass("c2".into())
        );
    }

    #[test]
    fn calibrated_rows_sum_to_one_and_a_zero_row_is_uniform() {
        let model = MulticlassCbpe {
            classes: vec!["a".into(), "b".into(), "c".into()],
            calibrators: vec![None, None, None],
            accuracy_std: 0.0,
            precision: vec![],
            recall: vec![],
            f1: vec![],
            roc_auc: vec![],
            reference: Default::default(),
        };
        let row = model.calibrate(&[0.2, 0.2, 0.4]);
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(row[2], 0.5);
        assert_eq!(model.calibrate(&[0.0, 0.0, 0.0]), vec![1.0 / 3.0; 3]);
    }
}
