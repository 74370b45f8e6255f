//! Direct loss estimation (DLE, NannyML's method) for regression models:
//! the expected error of each prediction, learned on the reference, so a
//! window's MAE and RMSE are estimated before its targets arrive.
//!
//! Fitted on the reference ([`LossModel::fit`]), which has the inputs, the
//! predictions and the targets: two gradient-boosted regression tree
//! ensembles (the `forust-ml` crate, XGBoost's algorithm), one learning the
//! absolute error `|y − ŷ|` and one the squared error `(y − ŷ)²` from the
//! inputs and the prediction. NannyML fits LightGBM's defaults; the
//! ensembles here are set alike: 100 trees, learning rate 0.1, grown leaf
//! by leaf up to 31 leaves, at least 20 rows per leaf, no L2 penalty, 255
//! histogram bins, starting from the mean error. Numbers are used as they
//! are (a missing value is `NaN`, which the trees route to a learned side);
//! a category is its code in the reference's sorted categories (1, 2, …;
//! a missing or unseen one 0).
//!
//! A window keeps the count and the sums of the predicted absolute and
//! squared errors ([`LossSum`], mergeable exactly; negative predictions
//! count as 0): estimated MAE = mean predicted absolute error, estimated
//! RMSE = √(mean predicted squared error). Sampling errors are NannyML's:
//! `σ(|e|) / √n` for MAE and `√(σ(e²)² / (4 n · mean(e²)))` for RMSE, with
//! σ and the mean over the reference rows (divisor n).

use std::collections::BTreeMap;

use forust_ml::gradientbooster::GrowPolicy;
use forust_ml::objective::ObjectiveType;
use forust_ml::{GradientBooster, Matrix};
use serde::{Deserialize, Serialize};

use crate::estimation::PerformanceMetric;
use crate::reconstruction::Input;

/// Why a loss model could not be fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LossError {
    /// Too few reference rows with a prediction and a target.
    #[error(
        "direct loss estimation needs at least {0} reference rows with a prediction and a target"
    )]
    TooSmall(usize),
    /// Rows, predictions and targets differ in length.
    #[error("rows, predictions and targets must have one entry per row")]
    Lengths,
    /// The tree ensemble failed.
    #[error("gradient boosting failed: {0}")]
    Boosting(String),
}

/// Fewest reference rows a model is fitted on.
pub const MIN_ROWS: usize = 100;

/// One fitted tree ensemble, stored as forust's JSON.
struct Ensemble(GradientBooster);

impl Ensemble {
    fn fit(data: &[f64], rows: usize, columns: usize, target: &[f64]) -> Result<Self, LossError> {
        let mut booster = GradientBooster::default()
            .set_objective_type(ObjectiveType::SquaredLoss)
            .set_iterations(100)
            .set_learning_rate(0.1)
            .set_max_leaves(31)
            .set_max_depth(usize::MAX)
            .set_min_leaf_weight(20.0)
            .set_l2(0.0)
            .set_nbins(255)
            .set_parallel(false)
            .set_initialize_base_score(true);
        booster.grow_policy = GrowPolicy::LossGuide;
        let matrix = Matrix::new(data, rows, columns);
        booster
            .fit_unweighted(&matrix, target, None)
            .map_err(|error| LossError::Boosting(error.to_string()))?;
        Ok(Self(booster))
    }

    fn predict(&self, data: &[f64], rows: usize, columns: usize) -> Vec<f64> {
        self.0.predict(&Matrix::new(data, rows, columns), false)
    }

    /// One row's prediction (`row`: one value per column), walking the
    /// trees directly: the same sum in the same order as forust's
    /// `predict`, without its per-tree allocations (what the ingest path
    /// calls for every event).
    fn predict_one(&self, row: &[f64]) -> f64 {
        let booster = &self.0;
        let trees = booster
            .prediction_iteration
            .unwrap_or(booster.trees.len())
            .min(booster.trees.len());
        let mut total = booster.base_score;
        for tree in &booster.trees[..trees] {
            let mut index = 0;
            loop {
                let node = &tree.nodes[index];
                if node.is_leaf {
                    total += f64::from(node.weight_value);
                    break;
                }
                index = node.get_child_idx(&row[node.split_feature], &booster.missing);
            }
        }
        total
    }

    fn json(&self) -> String {
        self.0
            .json_dump()
            .expect("a fitted ensemble always serializes")
    }
}

impl Clone for Ensemble {
    fn clone(&self) -> Self {
        Self(GradientBooster::from_json(&self.json()).expect("its own JSON reads back"))
    }
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ensemble({} trees)", self.0.trees.len())
    }
}

impl PartialEq for Ensemble {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl Serialize for Ensemble {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.json())
    }
}

impl<'de> Deserialize<'de> for Ensemble {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        GradientBooster::from_json(&text)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// How one input column is turned into a number for the trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LossColumn {
    /// A number as it is.
    Numeric,
    /// A category as its code (1-based, in sorted order; 0 otherwise).
    Categorical(BTreeMap<String, f64>),
}

/// DLE fitted on a reference (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossModel {
    /// Input column names, in the order rows are given (the prediction
    /// comes after them).
    pub columns: Vec<String>,
    /// Each input column's encoding.
    pub encodings: Vec<LossColumn>,
    absolute: Ensemble,
    squared: Ensemble,
    /// σ of the reference rows' absolute errors.
    pub absolute_std: f64,
    /// σ of the reference rows' squared errors.
    pub squared_std: f64,
    /// Mean of the reference rows' squared errors.
    pub squared_mean: f64,
    /// Mean of the reference rows' absolute errors.
    pub absolute_mean: f64,
    /// Reference rows fitted on.
    pub reference_rows: u64,
}

/// Count and sums of a window's predicted errors, merged exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossSum {
    /// Rows.
    pub count: u64,
    /// Sum of predicted absolute errors.
    pub absolute: f64,
    /// Sum of predicted squared errors.
    pub squared: f64,
}

impl LossSum {
    /// Adds one row's predicted errors (negative ones count as 0).
    pub fn add(&mut self, absolute: f64, squared: f64) {
        self.count += 1;
        self.absolute += absolute.max(0.0);
        self.squared += squared.max(0.0);
    }

    /// Adds another window part.
    pub fn merge(&mut self, other: &LossSum) {
        self.count += other.count;
        self.absolute += other.absolute;
        self.squared += other.squared;
    }
}

/// The standard deviation (divisor n) and mean of `values`.
fn spread(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let (count, sum) = values
        .clone()
        .fold((0usize, 0.0), |(n, s), v| (n + 1, s + v));
    let mean = sum / count.max(1) as f64;
    let variance = values.map(|v| (v - mean).powi(2)).sum::<f64>() / count.max(1) as f64;
    (variance.sqrt(), mean)
}

impl LossModel {
    /// Fits on reference rows (`categorical[i]`: column `i` is
    /// categorical), their predictions and their targets. Rows without a
    /// finite prediction or target are left out.
    pub fn fit(
        columns: Vec<String>,
        categorical: &[bool],
        rows: &[Vec<Input<'_>>],
        predictions: &[Option<f64>],
        targets: &[Option<f64>],
    ) -> Result<Self, LossError> {
        if rows.len() != predictions.len()
            || rows.len() != targets.len()
            || categorical.len() != columns.len()
            || rows.iter().any(|row| row.len() != columns.len())
        {
            return Err(LossError::Lengths);
        }
        let kept: Vec<usize> = (0..rows.len())
            .filter(|&row| {
                predictions[row].is_some_and(f64::is_finite)
                    && targets[row].is_some_and(f64::is_finite)
            })
            .collect();
        if kept.len() < MIN_ROWS {
            return Err(LossError::TooSmall(MIN_ROWS));
        }
        let encodings: Vec<LossColumn> = categorical
            .iter()
            .enumerate()
            .map(|(column, is_categorical)| {
                if !is_categorical {
                    return LossColumn::Numeric;
                }
                let mut categories: Vec<String> = kept
                    .iter()
                    .filter_map(|&row| match rows[row][column] {
                        Input::Category(text) => Some(text.to_owned()),
                        Input::Number(number) => Some(crate::categorical::format_category(number)),
                        Input::Missing => None,
                    })
                    .collect();
                categories.sort_unstable();
                categories.dedup();
                LossColumn::Categorical(
                    categories
                        .into_iter()
                        .enumerate()
                        .map(|(code, category)| (category, (code + 1) as f64))
                        .collect(),
                )
            })
            .collect();
        let mut model = Self {
            columns,
            encodings,
            absolute: Ensemble(GradientBooster::default()),
            squared: Ensemble(GradientBooster::default()),
            absolute_std: 0.0,
            squared_std: 0.0,
            squared_mean: 0.0,
            absolute_mean: 0.0,
            reference_rows: kept.len() as u64,
        };
        let selected: Vec<&[Input<'_>]> = kept.iter().map(|&row| rows[row].as_slice()).collect();
        let chosen_predictions: Vec<f64> = kept
            .iter()
            .map(|&row| predictions[row].expect("kept rows have one"))
            .collect();
        let data = model.matrix(&selected, &chosen_predictions);
        let errors: Vec<f64> = kept
            .iter()
            .map(|&row| targets[row].expect("kept rows have one") - predictions[row].expect("kept"))
            .collect();
        let absolute: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
        let squared: Vec<f64> = errors.iter().map(|e| e * e).collect();
        let width = model.columns.len() + 1;
        model.absolute = Ensemble::fit(&data, kept.len(), width, &absolute)?;
        model.squared = Ensemble::fit(&data, kept.len(), width, &squared)?;
        (model.absolute_std, model.absolute_mean) = spread(absolute.iter().copied());
        (model.squared_std, model.squared_mean) = spread(squared.iter().copied());
        Ok(model)
    }

    /// The column-major matrix of rows and their predictions the trees read.
    fn matrix(&self, rows: &[&[Input<'_>]], predictions: &[f64]) -> Vec<f64> {
        let mut data = Vec::with_capacity(rows.len() * (self.columns.len() + 1));
        for (column, encoding) in self.encodings.iter().enumerate() {
            data.extend(rows.iter().map(|row| encode(encoding, row[column])));
        }
        data.extend_from_slice(predictions);
        data
    }

    /// Each row's predicted absolute and squared error (rows with their
    /// predictions; negative predicted errors are kept as predicted).
    pub fn predict(&self, rows: &[&[Input<'_>]], predictions: &[f64]) -> Vec<(f64, f64)> {
        if rows.is_empty() {
            return Vec::new();
        }
        let data = self.matrix(rows, predictions);
        let width = self.columns.len() + 1;
        let absolute = self.absolute.predict(&data, rows.len(), width);
        let squared = self.squared.predict(&data, rows.len(), width);
        absolute.into_iter().zip(squared).collect()
    }

    /// The window's estimated MAE and RMSE with their sampling errors
    /// (nothing for an empty window).
    pub fn estimate(&self, sum: &LossSum) -> Vec<crate::estimation::Estimate> {
        if sum.count == 0 {
            return Vec::new();
        }
        let n = sum.count as f64;
        let rmse_error = (self.squared_mean > 0.0)
            .then(|| (self.squared_std.powi(2) / (4.0 * n * self.squared_mean)).sqrt());
        vec![
            crate::estimation::Estimate {
                metric: PerformanceMetric::Mae,
                value: sum.absolute / n,
                sampling_error: Some(self.absolute_std / n.sqrt()),
            },
            crate::estimation::Estimate {
                metric: PerformanceMetric::Rmse,
                value: (sum.squared / n).sqrt(),
                sampling_error: rmse_error,
            },
        ]
    }
}

impl LossModel {
    /// Encodes one value of input column `column` for [`Self::predict_row`].
    #[inline]
    pub fn encode(&self, column: usize, input: Input<'_>) -> f64 {
        encode(&self.encodings[column], input)
    }

    /// One row's predicted absolute and squared error: `row` holds the
    /// [`Self::encode`]d inputs followed by the prediction.
    pub fn predict_row(&self, row: &[f64]) -> (f64, f64) {
        (
            self.absolute.predict_one(row),
            self.squared.predict_one(row),
        )
    }

    /// The metric realized on the reference rows (MAE, RMSE).
    pub fn reference_value(&self, metric: PerformanceMetric) -> Option<f64> {
        match metric {
            PerformanceMetric::Mae => Some(self.absolute_mean),
            PerformanceMetric::Rmse => Some(self.squared_mean.sqrt()),
            _ => None,
        }
    }

    /// The window's estimates with their bands: the metric realized on the
    /// reference ± 3 sampling errors of the window's size (the lower end at
    /// least 0), the service's counterpart of NannyML's reference-chunk
    /// band, computed for any window size.
    pub fn estimate_with_bands(&self, sum: &LossSum) -> Vec<crate::estimation::EstimatedMetric> {
        self.estimate(sum)
            .into_iter()
            .map(|estimate| {
                let band = match (
                    self.reference_value(estimate.metric),
                    estimate.sampling_error,
                ) {
                    (Some(reference), Some(error)) => Some(crate::estimation::Band {
                        lower: Some((reference - crate::estimation::BAND_K * error).max(0.0)),
                        upper: Some(reference + crate::estimation::BAND_K * error),
                    }),
                    _ => None,
                };
                crate::estimation::EstimatedMetric::banded(estimate, band)
            })
            .collect()
    }
}

fn encode(encoding: &LossColumn, input: Input<'_>) -> f64 {
    match (encoding, input) {
        (LossColumn::Numeric, Input::Number(number)) => number,
        (LossColumn::Numeric, _) => f64::NAN,
        (LossColumn::Categorical(codes), Input::Category(text)) => {
            codes.get(text).copied().unwrap_or(0.0)
        }
        (LossColumn::Categorical(codes), Input::Number(number)) => codes
            .get(&crate::categorical::format_category(number))
            .copied()
            .unwrap_or(0.0),
        (LossColumn::Categorical(_), Input::Missing) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use rand_distr::{Distribution, StandardNormal};

    /// Rows whose error spread grows with |x|: (x, prediction, target).
    fn rows(rng: &mut StdRng, n: usize, x_mean: f64) -> Vec<(f64, f64, f64)> {
        (0..n)
            .map(|_| {
                let x: f64 = x_mean + Distribution::<f64>::sample(&StandardNormal, &mut *rng);
                let noise: f64 = StandardNormal.sample(&mut *rng);
                let prediction = 2.0 * x + rng.random::<f64>() * 0.01;
                (x, prediction, prediction + noise * (0.2 + x.abs()))
            })
            .collect()
    }

    fn fit(data: &[(f64, f64, f64)]) -> LossModel {
        let inputs: Vec<Vec<Input<'_>>> = data.iter().map(|r| vec![Input::Number(r.0)]).collect();
        LossModel::fit(
            vec!["x".into()],
            &[false],
            &inputs,
            &data.iter().map(|r| Some(r.1)).collect::<Vec<_>>(),
            &data.iter().map(|r| Some(r.2)).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn estimate(model: &LossModel, data: &[(f64, f64, f64)]) -> (f64, f64) {
        let inputs: Vec<Vec<Input<'_>>> = data.iter().map(|r| vec![Input::Number(r.0)]).collect();
        let refs: Vec<&[Input<'_>]> = inputs.iter().map(Vec::as_slice).collect();
        let predictions: Vec<f64> = data.iter().map(|r| r.1).collect();
        let mut sum = LossSum::default();
        for (absolute, squared) in model.predict(&refs, &predictions) {
            sum.add(absolute, squared);
        }
        let estimates = model.estimate(&sum);
        (estimates[0].value, estimates[1].value)
    }

    #[test]
    fn the_estimate_follows_the_inputs_to_where_errors_are_larger() {
        let mut rng = StdRng::seed_from_u64(3);
        let reference = rows(&mut rng, 20_000, 0.0);
        let model = fit(&reference);
        for x_mean in [0.0, 1.5] {
            let current = rows(&mut rng, 5_000, x_mean);
            let (mae, rmse) = estimate(&model, &current);
            let realized_mae =
                current.iter().map(|r| (r.2 - r.1).abs()).sum::<f64>() / current.len() as f64;
            let realized_rmse = (current.iter().map(|r| (r.2 - r.1).powi(2)).sum::<f64>()
                / current.len() as f64)
                .sqrt();
            assert!(
                (mae - realized_mae).abs() < 0.05 * realized_mae,
                "x around {x_mean}: MAE estimated {mae}, realized {realized_mae}"
            );
            assert!(
                (rmse - realized_rmse).abs() < 0.08 * realized_rmse,
                "x around {x_mean}: RMSE estimated {rmse}, realized {realized_rmse}"
            );
        }
    }

    #[test]
    fn one_row_at_a_time_predicts_what_the_batch_predicts() {
        let mut rng = StdRng::seed_from_u64(6);
        let reference = rows(&mut rng, 5_000, 0.0);
        let model = fit(&reference);
        let current = rows(&mut rng, 500, 0.7);
        let inputs: Vec<Vec<Input<'_>>> = current
            .iter()
            .map(|r| {
                // Every tenth value missing, so the missing branches are walked.
                if (r.0 * 1e6) as i64 % 10 == 0 {
                    vec![Input::Missing]
                } else {
                    vec![Input::Number(r.0)]
                }
            })
            .collect();
        let refs: Vec<&[Input<'_>]> = inputs.iter().map(Vec::as_slice).collect();
        let predictions: Vec<f64> = current.iter().map(|r| r.1).collect();
        let batch = model.predict(&refs, &predictions);
        for ((input, prediction), expected) in inputs.iter().zip(&predictions).zip(&batch) {
            let row = [model.encode(0, input[0]), *prediction];
            assert_eq!(model.predict_row(&row), *expected);
        }
    }

    #[test]
    fn a_model_survives_its_stored_form_and_sums_merge() {
        let mut rng = StdRng::seed_from_u64(4);
        let reference = rows(&mut rng, 2_000, 0.0);
        let model = fit(&reference);
        let stored = serde_json::to_string(&model).unwrap();
        let back: LossModel = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, model);
        let current = rows(&mut rng, 500, 0.5);
        assert_eq!(estimate(&back, &current), estimate(&model, &current));
        let (mut a, mut b, mut all) = (LossSum::default(), LossSum::default(), LossSum::default());
        for (i, (absolute, squared)) in [(1.0, 2.0), (-0.5, 0.25), (3.0, 9.0)].iter().enumerate() {
            all.add(*absolute, *squared);
            if i % 2 == 0 { &mut a } else { &mut b }.add(*absolute, *squared);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(all.absolute, 4.0, "a negative predicted error counts as 0");
    }
}
