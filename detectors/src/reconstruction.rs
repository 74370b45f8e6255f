//! Multivariate drift by data reconstruction (NannyML's method): a shift in
//! how the inputs move together, which no single feature's distribution
//! shows, raises the error of reconstructing a row from the reference's
//! principal components.
//!
//! Fitted on the reference ([`ReconstructionModel::fit`]):
//! 1. missing numeric values are imputed with the reference mean, missing
//!    categories with the most frequent one;
//! 2. each category is encoded as its share of the reference (a category
//!    the reference never saw encodes as 0);
//! 3. every column is standardized (reference mean and standard deviation,
//!    divisor n; a constant column stays 0);
//! 4. PCA keeps the fewest components whose explained variance reaches
//!    `variance_share` of the total (65 % by default).
//!
//! A row's reconstruction error ([`ReconstructionModel::error`]) is the
//! Euclidean distance between its standardized encoding and its projection
//! back from the kept components. A window keeps the count, sum and sum of
//! squares of its rows' errors ([`ErrorSum`], mergeable exactly); its mean
//! is flagged outside a band from the reference: in `tidewatch analyze`
//! NannyML's `mean ± 3σ` over reference chunks, in the service the
//! reference rows' mean error ± 3 standard errors of the window's size.
//! These are scikit-learn's `SimpleImputer`, `category_encoders`'
//! `CountEncoder(normalize=True)`, `StandardScaler` and
//! `PCA(n_components=0.65)`, which NannyML chains.

use std::collections::BTreeMap;

use linfa_linalg::eigh::{EigSort, Eigh};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

/// Share of variance the kept components explain, by default.
pub const DEFAULT_VARIANCE_SHARE: f64 = 0.65;

/// One input of a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    /// A number (numeric column).
    Number(f64),
    /// A category (categorical column).
    Category(&'a str),
    /// Missing.
    Missing,
}

/// How one column is encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ColumnEncoding {
    /// Numeric: the reference mean imputes a missing value.
    Numeric {
        /// Reference mean.
        mean: f64,
    },
    /// Categorical: each category's share of the reference; a missing value
    /// is the most frequent category.
    Categorical {
        /// Share per category.
        shares: BTreeMap<String, f64>,
        /// The most frequent category's share.
        mode_share: f64,
    },
}

/// PCA of a reference's encoded, standardized columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconstructionModel {
    /// Column names, in the order rows are given.
    pub columns: Vec<String>,
    /// Each column's encoding.
    pub encodings: Vec<ColumnEncoding>,
    /// Mean of each encoded column.
    pub means: Vec<f64>,
    /// Standard deviation of each encoded column (divisor n; 1 when 0).
    pub scales: Vec<f64>,
    /// The kept components, each a unit vector over the columns.
    pub components: Vec<Vec<f64>>,
    /// Share of the variance they explain.
    pub explained: f64,
    /// Mean reconstruction error of the reference rows.
    pub reference_mean: f64,
    /// Standard deviation of the reference rows' errors (divisor n − 1).
    pub reference_std: f64,
    /// Reference rows.
    pub reference_rows: u64,
}

/// Why a reconstruction model could not be fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconstructionError {
    /// Fewer than two rows or no column.
    #[error("multivariate drift needs at least two reference rows and one column")]
    TooSmall,
    /// A row has another number of values than there are columns.
    #[error("every row needs one value per column")]
    Shape,
    /// The eigendecomposition failed.
    #[error("PCA failed: {0}")]
    Pca(String),
}

impl ReconstructionModel {
    /// Fits on reference rows (`categorical[i]`: whether column `i` is
    /// categorical; each row one [`Input`] per column).
    pub fn fit(
        columns: Vec<String>,
        categorical: &[bool],
        rows: &[Vec<Input<'_>>],
        variance_share: f64,
    ) -> Result<Self, ReconstructionError> {
        let d = columns.len();
        if rows.len() < 2 || d == 0 || categorical.len() != d {
            return Err(ReconstructionError::TooSmall);
        }
        if rows.iter().any(|row| row.len() != d) {
            return Err(ReconstructionError::Shape);
        }
        let n = rows.len() as f64;
        let encodings: Vec<ColumnEncoding> = (0..d)
            .map(|column| {
                if categorical[column] {
                    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                    let mut missing = 0u64;
                    for row in rows {
                        match row[column] {
                            Input::Category(text) => {
                                *counts.entry(text.to_owned()).or_default() += 1
                            }
                            Input::Number(number) => {
                                *counts
                                    .entry(crate::categorical::format_category(number))
                                    .or_default() += 1
                            }
                            Input::Missing => missing += 1,
                        }
                    }
                    // The most frequent category (the first in order on a tie)
                    // takes the missing values.
                    let mode = counts
                        .iter()
                        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                        .map(|(category, _)| category.clone());
                    if let Some(mode) = &mode {
                        *counts.get_mut(mode).expect("a counted category") += missing;
                    }
                    let shares: BTreeMap<String, f64> = counts
                        .into_iter()
                        .map(|(category, count)| (category, count as f64 / n))
                        .collect();
                    let mode_share = mode.map_or(0.0, |mode| shares[&mode]);
                    ColumnEncoding::Categorical { shares, mode_share }
                } else {
                    let values: Vec<f64> = rows
                        .iter()
                        .filter_map(|row| match row[column] {
                            Input::Number(number) if number.is_finite() => Some(number),
                            _ => None,
                        })
                        .collect();
                    let mean = if values.is_empty() {
                        0.0
                    } else {
                        values.iter().sum::<f64>() / values.len() as f64
                    };
                    ColumnEncoding::Numeric { mean }
                }
            })
            .collect();
        let encoded: Vec<Vec<f64>> = rows.iter().map(|row| encode(&encodings, row)).collect();
        let means: Vec<f64> = (0..d)
            .map(|c| encoded.iter().map(|row| row[c]).sum::<f64>() / n)
            .collect();
        let scales: Vec<f64> = (0..d)
            .map(|c| {
                let variance = encoded
                    .iter()
                    .map(|row| (row[c] - means[c]).powi(2))
                    .sum::<f64>()
                    / n;
                if variance > 0.0 {
                    variance.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        let standardized: Vec<Vec<f64>> = encoded
            .iter()
            .map(|row| (0..d).map(|c| (row[c] - means[c]) / scales[c]).collect())
            .collect();
        // Covariance of the standardized columns (their means are 0).
        let mut covariance = Array2::<f64>::zeros((d, d));
        for row in &standardized {
            for i in 0..d {
                for j in i..d {
                    covariance[[i, j]] += row[i] * row[j];
                }
            }
        }
        for i in 0..d {
            for j in i..d {
                covariance[[i, j]] /= n - 1.0;
                covariance[[j, i]] = covariance[[i, j]];
            }
        }
        let (values, vectors) = covariance
            .eigh()
            .map_err(|error| ReconstructionError::Pca(error.to_string()))?
            .sort_eig_desc();
        let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
        let mut kept = 0;
        let mut cumulative = 0.0;
        // The fewest components whose share exceeds `variance_share`
        // (scikit-learn: searchsorted(cumulative, share, side="right") + 1).
        while kept < d {
            cumulative += values[kept].max(0.0) / total.max(f64::MIN_POSITIVE);
            kept += 1;
            if cumulative > variance_share {
                break;
            }
        }
        let components: Vec<Vec<f64>> = (0..kept)
            .map(|k| (0..d).map(|c| vectors[[c, k]]).collect())
            .collect();
        let mut model = Self {
            columns,
            encodings,
            means,
            scales,
            components,
            explained: cumulative.min(1.0),
            reference_mean: 0.0,
            reference_std: 0.0,
            reference_rows: rows.len() as u64,
        };
        let mut errors = ErrorSum::default();
        let mut scratch = Vec::with_capacity(d);
        for row in &standardized {
            errors.add(model.standardized_error(row, &mut scratch));
        }
        model.reference_mean = errors.mean().unwrap_or(0.0);
        model.reference_std = errors.std().unwrap_or(0.0);
        Ok(model)
    }

    /// The reconstruction error of one row (one [`Input`] per column).
    pub fn error(&self, row: &[Input<'_>]) -> f64 {
        let mut encoded = encode(&self.encodings, row);
        self.encoded_error(&mut encoded, &mut Vec::new())
    }

    /// Encodes one value of `column` ([`Self::encoded_error`] takes a row of
    /// these): a number as itself, a category as its reference share; a
    /// missing or mistyped value is imputed.
    #[inline]
    pub fn encode(&self, column: usize, input: Input<'_>) -> f64 {
        encode_one(&self.encodings[column], input)
    }

    /// The error of a row of [`Self::encode`]d values, standardized in
    /// place; `scratch` is reused between rows (no allocation once grown).
    pub fn encoded_error(&self, row: &mut [f64], scratch: &mut Vec<f64>) -> f64 {
        for ((value, mean), scale) in row.iter_mut().zip(&self.means).zip(&self.scales) {
            *value = (*value - mean) / scale;
        }
        self.standardized_error(row, scratch)
    }

    fn standardized_error(&self, x: &[f64], reconstructed: &mut Vec<f64>) -> f64 {
        reconstructed.clear();
        reconstructed.resize(x.len(), 0.0);
        for component in &self.components {
            let projection: f64 = component.iter().zip(x).map(|(w, v)| w * v).sum();
            for (out, w) in reconstructed.iter_mut().zip(component) {
                *out += projection * w;
            }
        }
        x.iter()
            .zip(reconstructed.iter())
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// The band of a window of `n` rows: the reference's mean error ±
    /// `k` standard errors (`σ / √n`), the lower end at least 0.
    pub fn band(&self, n: u64, k: f64) -> Option<(f64, f64)> {
        (n > 0).then(|| {
            let spread = k * self.reference_std / (n as f64).sqrt();
            (
                (self.reference_mean - spread).max(0.0),
                self.reference_mean + spread,
            )
        })
    }
}

fn encode(encodings: &[ColumnEncoding], row: &[Input<'_>]) -> Vec<f64> {
    encodings
        .iter()
        .zip(row)
        .map(|(encoding, input)| encode_one(encoding, *input))
        .collect()
}

#[inline]
fn encode_one(encoding: &ColumnEncoding, input: Input<'_>) -> f64 {
    match (encoding, input) {
        (ColumnEncoding::Numeric { .. }, Input::Number(number)) if number.is_finite() => number,
        (ColumnEncoding::Numeric { mean }, _) => *mean,
        (ColumnEncoding::Categorical { shares, .. }, Input::Category(text)) => {
            shares.get(text).copied().unwrap_or(0.0)
        }
        (ColumnEncoding::Categorical { shares, .. }, Input::Number(number)) => shares
            .get(&crate::categorical::format_category(number))
            .copied()
            .unwrap_or(0.0),
        (ColumnEncoding::Categorical { mode_share, .. }, Input::Missing) => *mode_share,
    }
}

/// Most rows a [`RowSample`] keeps by default: enough for the components
/// and the reference error to be stable, bounded whatever the training
/// file's size.
pub const MAX_SAMPLE_ROWS: usize = 100_000;

/// A sampled value (owned: the rows outlive the batch they came from).
#[derive(Debug, Clone, PartialEq)]
enum Sampled {
    Number(f64),
    Category(String),
    Missing,
}

/// A bounded, deterministic sample of training rows for
/// [`ReconstructionModel::fit`], fed column by column as record batches
/// arrive (each column's `k`-th value is row `k`).
///
/// Systematic: it keeps every `stride`-th row, the stride starting at 1 and
/// doubling (the sample halved, every other kept row dropped) whenever the
/// rows would exceed the bound; so it holds between half the bound and the
/// bound, spread evenly over the whole file (a file sorted by time is
/// sampled from its start to its end, not only its start).
#[derive(Debug)]
pub struct RowSample {
    columns: Vec<String>,
    categorical: Vec<bool>,
    index: BTreeMap<String, usize>,
    values: Vec<Vec<Sampled>>,
    received: Vec<u64>,
    rows: u64,
    stride: u64,
    max_rows: usize,
}

impl RowSample {
    /// An empty sample of `columns` (`categorical[i]`: column `i` is
    /// categorical) keeping at most `max_rows` rows (at least 2).
    pub fn new(columns: Vec<String>, categorical: Vec<bool>, max_rows: usize) -> Self {
        let index = columns
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i))
            .collect();
        Self {
            values: vec![Vec::new(); columns.len()],
            received: vec![0; columns.len()],
            columns,
            categorical,
            index,
            rows: 0,
            stride: 1,
            max_rows: max_rows.max(2),
        }
    }

    /// Counts one more row (before its values are added).
    pub fn add_row(&mut self) {
        self.rows += 1;
        if self.rows.div_ceil(self.stride) > self.max_rows as u64 {
            self.stride *= 2;
            for column in &mut self.values {
                let mut position = 0;
                column.retain(|_| {
                    position += 1;
                    (position - 1) % 2 == 0
                });
            }
        }
    }

    /// Adds the next value of the column `name`; `false` when it is not a
    /// column of the sample.
    pub fn add(&mut self, name: &str, input: Input<'_>) -> bool {
        let Some(&column) = self.index.get(name) else {
            return false;
        };
        let row = self.received[column];
        self.received[column] += 1;
        if row.is_multiple_of(self.stride) {
            self.values[column].push(match input {
                Input::Number(number) => Sampled::Number(number),
                Input::Category(text) => Sampled::Category(text.to_owned()),
                Input::Missing => Sampled::Missing,
            });
        }
        true
    }

    /// Whether the column `name` is categorical.
    pub fn is_categorical(&self, name: &str) -> bool {
        self.index
            .get(name)
            .is_some_and(|column| self.categorical[*column])
    }

    /// Rows kept.
    pub fn len(&self) -> usize {
        self.rows.div_ceil(self.stride) as usize
    }

    /// Whether no row was counted.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The kept rows, one [`Input`] per column (a value a column never
    /// received is missing).
    pub fn table(&self) -> Vec<Vec<Input<'_>>> {
        (0..self.len())
            .map(|row| {
                self.values
                    .iter()
                    .map(|column| match column.get(row) {
                        Some(Sampled::Number(number)) => Input::Number(*number),
                        Some(Sampled::Category(text)) => Input::Category(text),
                        Some(Sampled::Missing) | None => Input::Missing,
                    })
                    .collect()
            })
            .collect()
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Fits the reconstruction model on the kept rows.
    pub fn fit(self, variance_share: f64) -> Result<ReconstructionModel, ReconstructionError> {
        let table = self.table();
        ReconstructionModel::fit(
            self.columns.clone(),
            &self.categorical,
            &table,
            variance_share,
        )
    }
}

/// Count, sum and sum of squares of rows' reconstruction errors: a window's
/// state, merged exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorSum {
    /// Rows.
    pub count: u64,
    /// Sum of errors.
    pub sum: f64,
    /// Sum of squared errors.
    pub sum_squares: f64,
}

impl ErrorSum {
    /// Adds one row's error.
    pub fn add(&mut self, error: f64) {
        self.count += 1;
        self.sum += error;
        self.sum_squares += error * error;
    }

    /// Adds another window part.
    pub fn merge(&mut self, other: &ErrorSum) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum_squares += other.sum_squares;
    }

    /// Mean error.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// Standard deviation of the errors (divisor n − 1).
    pub fn std(&self) -> Option<f64> {
        (self.count > 1).then(|| {
            let n = self.count as f64;
            ((self.sum_squares - self.sum * self.sum / n) / (n - 1.0))
                .max(0.0)
                .sqrt()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    /// Rows of three numeric columns where x2 follows x1 (`sign` sets the
    /// direction of the relation) and a categorical column.
    fn rows(rng: &mut StdRng, n: usize, sign: f64) -> Vec<(f64, f64, f64, &'static str)> {
        let normal = Normal::new(0.0, 1.0).unwrap();
        (0..n)
            .map(|_| {
                let x1: f64 = normal.sample(rng);
                let x2 = sign * 0.9 * x1 + 0.436 * normal.sample(rng);
                let x3: f64 = normal.sample(rng);
                let plan = if rng.random::<f64>() < 0.6 {
                    "basic"
                } else {
                    "pro"
                };
                (x1, x2, x3, plan)
            })
            .collect()
    }

    fn inputs(rows: &[(f64, f64, f64, &'static str)]) -> Vec<Vec<Input<'static>>> {
        rows.iter()
            .map(|(a, b, c, plan)| {
                vec![
                    Input::Number(*a),
                    Input::Number(*b),
                    Input::Number(*c),
                    Input::Category(plan),
                ]
            })
            .collect()
    }

    #[test]
    fn a_flipped_correlation_raises_the_error_though_no_marginal_moves() {
        let mut rng = StdRng::seed_from_u64(14);
        let reference = inputs(&rows(&mut rng, 20_000, 1.0));
        let columns = ["x1", "x2", "x3", "plan"].map(String::from).to_vec();
        let model =
            ReconstructionModel::fit(columns, &[false, false, false, true], &reference, 0.65)
                .unwrap();
        // x1 and x2 share one strong component: it and one more reach 65 %.
        assert_eq!(model.components.len(), 2, "{model:?}");
        let window = |sign: f64, rng: &mut StdRng| {
            let mut sum = ErrorSum::default();
            for row in inputs(&rows(rng, 5_000, sign)) {
                sum.add(model.error(&row));
            }
            sum
        };
        let (lower, upper) = model.band(5_000, 3.0).unwrap();
        let same = window(1.0, &mut rng).mean().unwrap();
        assert!(lower < same && same < upper, "{lower} {same} {upper}");
        // The same marginals (x2 is still N(0, 1)), the relation reversed.
        let flipped = window(-1.0, &mut rng).mean().unwrap();
        assert!(flipped > upper + 0.2, "{flipped} vs {upper}");
    }

    #[test]
    fn errors_merge_and_missing_values_are_imputed() {
        let mut whole = ErrorSum::default();
        let mut parts = [ErrorSum::default(), ErrorSum::default()];
        for (i, value) in [0.5, 1.5, 2.0, 0.1].into_iter().enumerate() {
            whole.add(value);
            parts[i % 2].add(value);
        }
        let [mut merged, other] = parts;
        merged.merge(&other);
        assert_eq!(merged.count, whole.count);
        assert!((merged.std().unwrap() - whole.std().unwrap()).abs() < 1e-12);
        // A missing number is the mean, a missing category the most
        // frequent: a row of them encodes like the reference's means.
        let reference = vec![
            vec![Input::Number(1.0), Input::Category("a")],
            vec![Input::Number(3.0), Input::Category("a")],
            vec![Input::Number(2.0), Input::Category("b")],
        ];
        let model = ReconstructionModel::fit(
            vec!["x".into(), "c".into()],
            &[false, true],
            &reference,
            0.65,
        )
        .unwrap();
        let imputed = encode(&model.encodings, &[Input::Missing, Input::Missing]);
        assert_eq!(imputed, vec![2.0, 2.0 / 3.0]);
        assert_eq!(
            encode(
                &model.encodings,
                &[Input::Number(5.0), Input::Category("z")]
            )[1],
            0.0
        );
    }

    #[test]
    fn the_row_sample_keeps_every_stride_th_row_within_its_bound() {
        // Batches of 7 rows, fed column by column; bound 10 rows.
        let mut sample = RowSample::new(vec!["x".into(), "c".into()], vec![false, true], 10);
        let total = 53u64;
        let mut next = 0u64;
        while next < total {
            let batch: Vec<u64> = (next..(next + 7).min(total)).collect();
            for _ in &batch {
                sample.add_row();
            }
            for row in &batch {
                assert!(sample.add("x", Input::Number(*row as f64)));
            }
            for row in &batch {
                let category = if row % 3 == 0 { "a" } else { "b" };
                sample.add("c", Input::Category(category));
            }
            assert!(!sample.add("unknown", Input::Missing));
            next += batch.len() as u64;
        }
        // 53 rows over a bound of 10: stride 8, rows 0, 8, …, 48.
        assert_eq!(sample.len(), 7);
        let kept: Vec<f64> = sample.values[0]
            .iter()
            .map(|value| match value {
                Sampled::Number(number) => *number,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(kept, [0.0, 8.0, 16.0, 24.0, 32.0, 40.0, 48.0]);
        let categories: Vec<&Sampled> = sample.values[1].iter().collect();
        assert_eq!(categories.len(), 7);
        assert_eq!(categories[3], &Sampled::Category("a".into()), "row 24");
        assert_eq!(categories[1], &Sampled::Category("b".into()), "row 8");
    }
}
