//! Calibration of a binary classifier's scores into probabilities, for
//! label-free performance estimation ([`crate::estimation`]).
//!
//! [`IsotonicCalibrator`] is isotonic regression of the labels on the scores
//! (the pool-adjacent-violators algorithm over the distinct scores, each
//! weighted by its count), read as a piecewise-linear function through the
//! fitted points and clipped to the reference's score range: scikit-learn's
//! `IsotonicRegression(out_of_bounds="clip")`, which NannyML uses.
//!
//! [`needs_calibration`] decides whether calibrating helps, as NannyML does:
//! not when the labels hold one class or the scores already separate them
//! (ROC AUC > 0.999); otherwise calibrators fitted on nine tenths of the
//! reference calibrate the remaining tenth, ten times over, and calibration
//! is used when it lowers the expected calibration error ([`expected_calibration_error`],
//! ten equal-count bins) of those held-out scores. NannyML draws its ten
//! splits at random (stratified); here row `i` is held out in split `i mod 10`,
//! so the decision is the same at every run.

use serde::{Deserialize, Serialize};

/// Scores mapped to probabilities by isotonic regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsotonicCalibrator {
    /// Distinct reference scores, increasing.
    x: Vec<f64>,
    /// The fitted (non-decreasing) probability at each of them.
    y: Vec<f64>,
}

impl IsotonicCalibrator {
    /// Fits on `(score, label)` pairs; `None` without a finite score.
    pub fn fit(scores: &[f64], labels: &[bool]) -> Option<Self> {
        assert_eq!(scores.len(), labels.len(), "one label per score");
        let mut pairs: Vec<(f64, f64)> = scores
            .iter()
            .zip(labels)
            .filter(|(score, _)| score.is_finite())
            .map(|(score, label)| (*score, f64::from(u8::from(*label))))
            .collect();
        if pairs.is_empty() {
            return None;
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Distinct scores with the mean label and the count as weight.
        let mut x: Vec<f64> = Vec::new();
        let mut blocks: Vec<(f64, f64)> = Vec::new(); // (mean, weight)
        for (score, label) in pairs {
            match (x.last(), blocks.last_mut()) {
                (Some(last), Some(block)) if *last == score => {
                    block.0 += (label - block.0) / (block.1 + 1.0);
                    block.1 += 1.0;
                }
                _ => {
                    x.push(score);
                    blocks.push((label, 1.0));
                }
            }
        }
        // Pool adjacent violators: a stack of pooled blocks (mean, weight,
        // how many distinct scores it spans).
        let mut pooled: Vec<(f64, f64, usize)> = Vec::with_capacity(blocks.len());
        for (mean, weight) in blocks {
            let mut block = (mean, weight, 1usize);
            while let Some(top) = pooled.last() {
                if top.0 < block.0 {
                    break;
                }
                let top = pooled.pop().expect("checked above");
                let weight = top.1 + block.1;
                block = (
                    (top.0 * top.1 + block.0 * block.1) / weight,
                    weight,
                    top.2 + block.2,
                );
            }
            pooled.push(block);
        }
        // Keep only each pooled block's first and last score: inside a block
        // the fit is flat, so interpolating between its ends gives the same
        // values, and the calibrator (stored in every reference profile)
        // holds at most two points per block instead of one per distinct
        // training score (scikit-learn drops the same redundant points).
        let (mut knots_x, mut knots_y) = (Vec::new(), Vec::new());
        let mut start = 0;
        for (mean, _, span) in pooled {
            knots_x.push(x[start]);
            knots_y.push(mean);
            if span > 1 {
                knots_x.push(x[start + span - 1]);
                knots_y.push(mean);
            }
            start += span;
        }
        Some(Self {
            x: knots_x,
            y: knots_y,
        })
    }

    /// The probability for `score`: linear between fitted points, the end
    /// values outside the reference's range.
    pub fn calibrate(&self, score: f64) -> f64 {
        let last = self.x.len() - 1;
        // (NaN, which no caller should pass, reads as below the range.)
        if score <= self.x[0] || score.is_nan() {
            return self.y[0];
        }
        if score >= self.x[last] {
            return self.y[last];
        }
        // The first fitted point above the score (exists: score < x[last]).
        let right = self.x.partition_point(|x| *x <= score);
        let left = right - 1;
        let fraction = (score - self.x[left]) / (self.x[right] - self.x[left]);
        self.y[left] + (self.y[right] - self.y[left]) * fraction
    }
}

/// Expected calibration error over ten bins of equal count (by score):
/// `Σ_b (n_b / n)·|mean score_b − mean label_b|`, NannyML's definition
/// (with `n < 20` values, `n / 2` bins of two). `None` with fewer than four values.
pub fn expected_calibration_error(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n = scores.len();
    let mut bins = 10;
    if n <= 2 * bins {
        bins = n / 2;
        if bins < 2 {
            return None;
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let width = n / bins;
    let mut error = 0.0;
    for bin in 0..bins {
        let start = bin * width;
        let end = if bin + 1 == bins { n } else { start + width };
        let members = &order[start..end];
        let count = members.len() as f64;
        let mean_score = members.iter().map(|i| scores[*i]).sum::<f64>() / count;
        let mean_label = members.iter().filter(|i| labels[**i]).count() as f64 / count;
        error += count / n as f64 * (mean_score - mean_label).abs();
    }
    Some(error)
}

/// Held-out splits [`needs_calibration`] makes.
pub const CALIBRATION_SPLITS: usize = 10;

/// Whether isotonic calibration lowers the calibration error of held-out
/// scores (see the module docs).
pub fn needs_calibration(scores: &[f64], labels: &[bool]) -> bool {
    let positives = labels.iter().filter(|label| **label).count();
    if positives == 0 || positives == labels.len() {
        return false;
    }
    if crate::estimation::roc_auc(scores, labels).is_some_and(|auc| auc > 0.999) {
        return false;
    }
    let mut held_scores = Vec::with_capacity(scores.len());
    let mut held_labels = Vec::with_capacity(scores.len());
    let mut calibrated = Vec::with_capacity(scores.len());
    for split in 0..CALIBRATION_SPLITS {
        let (mut train_scores, mut train_labels) = (Vec::new(), Vec::new());
        let mut test = Vec::new();
        for (row, (score, label)) in scores.iter().zip(labels).enumerate() {
            if row % CALIBRATION_SPLITS == split {
                test.push(row);
            } else {
                train_scores.push(*score);
                train_labels.push(*label);
            }
        }
        let Some(calibrator) = IsotonicCalibrator::fit(&train_scores, &train_labels) else {
            continue;
        };
        for row in test {
            held_scores.push(scores[row]);
            held_labels.push(labels[row]);
            calibrated.push(calibrator.calibrate(scores[row]));
        }
    }
    match (
        expected_calibration_error(&held_scores, &held_labels),
        expected_calibration_error(&calibrated, &held_labels),
    ) {
        (Some(before), Some(after)) => before > after,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The isotonic fit by brute force: the non-decreasing sequence closest
    /// in squared error, found by the minimum-lower-set formula
    /// `y_i = max_{j ≤ i} min_{k ≥ i} mean(values[j..=k])` over distinct
    /// scores weighted by their counts.
    fn brute_force(points: &[(f64, f64, f64)]) -> Vec<f64> {
        let n = points.len();
        let mean = |j: usize, k: usize| {
            let weight: f64 = points[j..=k].iter().map(|p| p.2).sum();
            points[j..=k].iter().map(|p| p.1 * p.2).sum::<f64>() / weight
        };
        (0..n)
            .map(|i| {
                (0..=i)
                    .map(|j| (i..n).map(|k| mean(j, k)).fold(f64::INFINITY, f64::min))
                    .fold(f64::NEG_INFINITY, f64::max)
            })
            .collect()
    }

    #[test]
    fn the_fit_is_the_closest_non_decreasing_function() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let n = rng.random_range(1..40);
            // Few distinct scores, so ties are common.
            let scores: Vec<f64> = (0..n)
                .map(|_| f64::from(rng.random_range(0..12u8)) / 12.0)
                .collect();
            let labels: Vec<bool> = scores
                .iter()
                .map(|s| rng.random_bool((s * 0.8 + 0.1).clamp(0.0, 1.0)))
                .collect();
            let calibrator = IsotonicCalibrator::fit(&scores, &labels).unwrap();
            let mut distinct: Vec<(f64, f64, f64)> = Vec::new();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
            for i in order {
                let label = f64::from(u8::from(labels[i]));
                match distinct.last_mut() {
                    Some(last) if last.0 == scores[i] => {
                        last.1 = (last.1 * last.2 + label) / (last.2 + 1.0);
                        last.2 += 1.0;
                    }
                    _ => distinct.push((scores[i], label, 1.0)),
                }
            }
            let expected = brute_force(&distinct);
            for ((score, _, _), want) in distinct.iter().zip(expected) {
                let got = calibrator.calibrate(*score);
                assert!((got - want).abs() < 1e-12, "{score}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn between_fitted_scores_it_interpolates_and_outside_it_clips() {
        // Scores 0.2 (label 0), 0.4 (label 1), 0.6 (label 0), 0.8 (label 1):
        // 0.4 and 0.6 pool to ½.
        let calibrator =
            IsotonicCalibrator::fit(&[0.8, 0.2, 0.6, 0.4], &[true, false, false, true]).unwrap();
        assert_eq!(calibrator.calibrate(0.2), 0.0);
        assert_eq!(calibrator.calibrate(0.4), 0.5);
        assert_eq!(calibrator.calibrate(0.5), 0.5);
        assert!((calibrator.calibrate(0.3) - 0.25).abs() < 1e-15);
        assert!((calibrator.calibrate(0.7) - 0.75).abs() < 1e-15);
        assert_eq!(calibrator.calibrate(-1.0), 0.0);
        assert_eq!(calibrator.calibrate(2.0), 1.0);
        assert_eq!(calibrator.calibrate(f64::NAN), 0.0);
        assert_eq!(IsotonicCalibrator::fit(&[f64::NAN], &[true]), None);
        // A pooled block keeps its two ends only: 0.4 and 0.6 here.
        assert_eq!(calibrator.x, [0.2, 0.4, 0.6, 0.8]);
        let flat = IsotonicCalibrator::fit(&[0.1, 0.2, 0.3, 0.4, 0.5], &[true; 5]).unwrap();
        assert_eq!(
            (flat.x.as_slice(), flat.y.as_slice()),
            (&[0.1, 0.5][..], &[1.0, 1.0][..])
        );
    }

    #[test]
    fn calibration_error_and_the_decision() {
        // Two bins of two: scores ¼, ¼ (labels 0, 1) and ¾, ¾ (1, 1).
        let ece = expected_calibration_error(&[0.25, 0.75, 0.25, 0.75], &[false, true, true, true]);
        assert!((ece.unwrap() - (0.5 * 0.25 + 0.5 * 0.25)).abs() < 1e-15);
        assert_eq!(
            expected_calibration_error(&[0.1, 0.2, 0.3], &[true; 3]),
            None
        );

        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(8);
        let truth: Vec<f64> = (0..20_000).map(|_| rng.random::<f64>()).collect();
        let labels: Vec<bool> = truth.iter().map(|p| rng.random_bool(*p)).collect();
        // Overconfident scores need calibration; one class never does.
        let overconfident: Vec<f64> = truth
            .iter()
            .map(|p| if *p > 0.5 { p.sqrt() } else { p * p })
            .collect();
        assert!(needs_calibration(&overconfident, &labels));
        assert!(!needs_calibration(&truth, &vec![true; truth.len()]));
    }
}
