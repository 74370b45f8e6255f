//! # trainer — a labelled sample in, a linear model out
//!
//! The model Tidewatch's reference trainer fits when the monitor asks for
//! retraining: logistic regression for classification (two classes:
//! binomial; more: multinomial, softmax) and ordinary least squares for
//! regression, with [linfa](https://crates.io/crates/linfa). Pure: no I/O;
//! the caller assembles the [`Sample`] and writes the [`Fitted`] model
//! (the `tidewatch` crate writes it as `tidewatch.linear.v1`, which the
//! gateway serves in process).
//!
//! ```text
//!  Sample (feature columns, labels) ─▶ impute missing values (column means)
//!        ─▶ standardize ─▶ fit (L-BFGS on the L2-penalised log-loss, or
//!        least squares) ─▶ coefficients back on the original scale ─▶ Fitted
//! ```
//!
//! Features are standardized before fitting (the optimizer converges on
//! any scale) and the coefficients are mapped back, so the fitted model
//! reads raw feature values. Missing values (`NaN`) are replaced by their
//! column's mean over the sample; a column missing everywhere is refused.

use linfa::prelude::*;
use ndarray::{Array1, Array2, Axis};

/// What can go wrong fitting a sample. None is worth retrying with the
/// same sample.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Fewer rows than [`Settings::min_rows`].
    #[error("{rows} labelled rows, at least {min} are needed")]
    TooFewRows { rows: usize, min: usize },
    /// Every label is the same class.
    #[error("every label is `{0}`: a classifier needs two classes")]
    OneClass(String),
    /// The sample's shape is inconsistent (a defect of the caller).
    #[error("invalid sample: {0}")]
    Invalid(String),
    /// A feature has no value in any row.
    #[error("feature `{0}` has no value in the sample")]
    EmptyFeature(String),
    /// The solver failed.
    #[error("fitting failed: {0}")]
    Fit(String),
}

/// Labels of a sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    /// Class names (classification).
    Classes(Vec<String>),
    /// Values (regression).
    Values(Vec<f64>),
}

impl Labels {
    fn len(&self) -> usize {
        match self {
            Labels::Classes(classes) => classes.len(),
            Labels::Values(values) => values.len(),
        }
    }
}

/// A labelled sample: `rows[i][j]` is feature `features[j]` of row `i`
/// (`NaN` when missing), `labels` one per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub features: Vec<String>,
    pub rows: Vec<Vec<f64>>,
    pub labels: Labels,
}

/// How to fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Fewer labelled rows than this are refused.
    pub min_rows: usize,
    /// L2 penalty of the logistic regression, on standardized features.
    pub alpha: f64,
    /// Optimizer iterations at most.
    pub max_iterations: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_rows: 50,
            alpha: 1e-4,
            max_iterations: 200,
        }
    }
}

/// A fitted linear model on the original feature scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    pub features: Vec<String>,
    /// Class names (empty for regression). Two classes: `p(classes[1]) =
    /// σ(coefficients[0]·x + intercepts[0])`; more: softmax over one row
    /// per class.
    pub classes: Vec<String>,
    pub coefficients: Vec<Vec<f64>>,
    pub intercepts: Vec<f64>,
    /// Rows it was fitted on.
    pub rows: usize,
}

/// Fits `sample` (see the crate docs).
pub fn fit(sample: &Sample, settings: &Settings) -> Result<Fitted, Error> {
    let rows = sample.rows.len();
    if sample.labels.len() != rows {
        return Err(Error::Invalid(format!(
            "{rows} rows and {} labels",
            sample.labels.len()
        )));
    }
    if rows < settings.min_rows.max(2) {
        return Err(Error::TooFewRows {
            rows,
            min: settings.min_rows.max(2),
        });
    }
    let width = sample.features.len();
    if width == 0 {
        return Err(Error::Invalid("no feature".into()));
    }
    if let Some(row) = sample.rows.iter().find(|row| row.len() != width) {
        return Err(Error::Invalid(format!(
            "a row of {} values for {width} features",
            row.len()
        )));
    }
    let (x, scale) = standardized(sample)?;
    match &sample.labels {
        Labels::Values(values) => {
            let y = Array1::from(values.clone());
            let model = linfa_linear::LinearRegression::new()
                .fit(&Dataset::new(x, y))
                .map_err(|e| Error::Fit(e.to_string()))?;
            let (coefficients, intercept) = scale.restore(
                model.params().as_slice().unwrap_or_default(),
                model.intercept(),
            );
            Ok(Fitted {
                features: sample.features.clone(),
                classes: Vec::new(),
                coefficients: vec![coefficients],
                intercepts: vec![intercept],
                rows,
            })
        }
        Labels::Classes(labels) => {
            let mut classes: Vec<String> = labels.clone();
            classes.sort();
            classes.dedup();
            if classes.len() < 2 {
                return Err(Error::OneClass(classes.pop().unwrap_or_default()));
            }
            if classes.len() == 2 {
                // 1.0 for classes[1], so the positive class is known.
                let y: Array1<usize> = labels
                    .iter()
                    .map(|label| usize::from(*label == classes[1]))
                    .collect();
                let model = linfa_logistic::LogisticRegression::default()
                    .alpha(settings.alpha)
                    .max_iterations(settings.max_iterations)
                    .fit(&Dataset::new(x, y))
                    .map_err(|e| Error::Fit(e.to_string()))?;
                let positive_is_one = model.labels().pos.class == 1;
                let sign = if positive_is_one { 1.0 } else { -1.0 };
                let params: Vec<f64> = model.params().iter().map(|w| sign * w).collect();
                let (coefficients, intercept) = scale.restore(&params, sign * model.intercept());
                Ok(Fitted {
                    features: sample.features.clone(),
                    classes,
                    coefficients: vec![coefficients],
                    intercepts: vec![intercept],
                    rows,
                })
            } else {
                let y: Array1<usize> = labels
                    .iter()
                    .map(|label| classes.binary_search(label).expect("a class of the sample"))
                    .collect();
                let model = linfa_logistic::MultiLogisticRegression::default()
                    .alpha(settings.alpha)
                    .max_iterations(settings.max_iterations)
                    .fit(&Dataset::new(x, y))
                    .map_err(|e| Error::Fit(e.to_string()))?;
                // params: features × classes, in the order of `classes()`.
                let order: Vec<usize> = model.classes().to_vec();
                let mut coefficients = vec![Vec::new(); classes.len()];
                let mut intercepts = vec![0.0; classes.len()];
                for (column, class) in order.iter().enumerate() {
                    let params: Vec<f64> = model.params().column(column).to_vec();
                    let (restored, intercept) = scale.restore(&params, model.intercept()[column]);
                    coefficients[*class] = restored;
                    intercepts[*class] = intercept;
                }
                Ok(Fitted {
                    features: sample.features.clone(),
                    classes,
                    coefficients,
                    intercepts,
                    rows,
                })
            }
        }
    }
}

/// Per-feature mean and standard deviation of the sample.
struct Scale {
    means: Vec<f64>,
    stds: Vec<f64>,
}

impl Scale {
    /// Coefficients on standardized features → on raw features.
    fn restore(&self, params: &[f64], intercept: f64) -> (Vec<f64>, f64) {
        let coefficients: Vec<f64> = params
            .iter()
            .zip(&self.stds)
            .map(|(w, std)| w / std)
            .collect();
        let shift: f64 = coefficients
            .iter()
            .zip(&self.means)
            .map(|(w, mean)| w * mean)
            .sum();
        (coefficients, intercept - shift)
    }
}

/// The sample as a standardized matrix (missing values at the column
/// mean, i.e. 0 after standardizing) and the scale that did it. A
/// constant column keeps a standard deviation of 1.
fn standardized(sample: &Sample) -> Result<(Array2<f64>, Scale), Error> {
    let rows = sample.rows.len();
    let width = sample.features.len();
    let mut x = Array2::<f64>::zeros((rows, width));
    for (i, row) in sample.rows.iter().enumerate() {
        for (j, value) in row.iter().enumerate() {
            x[[i, j]] = *value;
        }
    }
    let mut means = Vec::with_capacity(width);
    let mut stds = Vec::with_capacity(width);
    for (j, mut column) in x.axis_iter_mut(Axis(1)).enumerate() {
        let present: Vec<f64> = column.iter().copied().filter(|v| v.is_finite()).collect();
        if present.is_empty() {
            return Err(Error::EmptyFeature(sample.features[j].clone()));
        }
        let mean = present.iter().sum::<f64>() / present.len() as f64;
        let variance =
            present.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / present.len() as f64;
        let std = if variance > 0.0 { variance.sqrt() } else { 1.0 };
        for value in column.iter_mut() {
            *value = if value.is_finite() {
                (*value - mean) / std
            } else {
                0.0
            };
        }
        means.push(mean);
        stds.push(std);
    }
    Ok((x, Scale { means, stds }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (SplitMix64) for test data.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let (u, v) = (self.next().max(1e-300), self.next());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    fn features() -> Vec<String> {
        vec!["age".into(), "charges".into()]
    }

    #[test]
    fn least_squares_recovers_an_exact_linear_relation() {
        let mut random = Random(7);
        let rows: Vec<Vec<f64>> = (0..200)
            .map(|_| vec![20.0 + 50.0 * random.next(), 1000.0 * random.next()])
            .collect();
        let values = rows
            .iter()
            .map(|r| 2.5 * r[0] - 0.03 * r[1] + 7.0)
            .collect();
        let fitted = fit(
            &Sample {
                features: features(),
                rows,
                labels: Labels::Values(values),
            },
            &Settings::default(),
        )
        .unwrap();
        assert!((fitted.coefficients[0][0] - 2.5).abs() < 1e-9, "{fitted:?}");
        assert!(
            (fitted.coefficients[0][1] + 0.03).abs() < 1e-9,
            "{fitted:?}"
        );
        assert!((fitted.intercepts[0] - 7.0).abs() < 1e-7, "{fitted:?}");
        assert!(fitted.classes.is_empty());
    }

    /// The fitted binomial model satisfies the optimality condition of the
    /// penalised log-likelihood, computed here independently on the raw
    /// scale: the gradient Xᵀ(p − y) (and Σ(p − y) for the intercept)
    /// vanishes up to the penalty's share.
    #[test]
    fn the_binomial_fit_is_the_maximum_likelihood_and_recovers_the_truth() {
        let mut random = Random(11);
        let (w, b) = ([0.08, -0.004], -1.5);
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..20_000 {
            let row = vec![
                40.0 + 12.0 * random.normal(),
                500.0 + 200.0 * random.normal(),
            ];
            let p = 1.0 / (1.0 + (-(w[0] * row[0] + w[1] * row[1] + b)).exp());
            labels.push(if random.next() < p { "yes" } else { "no" }.to_owned());
            rows.push(row);
        }
        let sample = Sample {
            features: features(),
            rows: rows.clone(),
            labels: Labels::Classes(labels.clone()),
        };
        let settings = Settings {
            alpha: 1e-8,
            max_iterations: 500,
            ..Settings::default()
        };
        let fitted = fit(&sample, &settings).unwrap();
        assert_eq!(fitted.classes, ["no", "yes"]);
        // Optimality: the mean gradient of the log-loss is ~0.
        let (mut g0, mut g1, mut gb) = (0.0, 0.0, 0.0);
        for (row, label) in rows.iter().zip(&labels) {
            let c = &fitted.coefficients[0];
            let p = 1.0 / (1.0 + (-(c[0] * row[0] + c[1] * row[1] + fitted.intercepts[0])).exp());
            let residual = p - f64::from(u8::from(label == "yes"));
            // Standardized units, so the three are comparable.
            g0 += residual * (row[0] - 40.0) / 12.0;
            g1 += residual * (row[1] - 500.0) / 200.0;
            gb += residual;
        }
        let n = rows.len() as f64;
        for g in [g0 / n, g1 / n, gb / n] {
            assert!(g.abs() < 1e-4, "gradient {g}: {fitted:?}");
        }
        // And the truth, within sampling error (20,000 rows).
        let c = &fitted.coefficients[0];
        assert!((c[0] - w[0]).abs() < 0.01, "{c:?}");
        assert!((c[1] - w[1]).abs() < 0.0006, "{c:?}");
        assert!((fitted.intercepts[0] - b).abs() < 0.25, "{fitted:?}");
    }

    #[test]
    fn three_classes_get_one_row_each_in_class_order() {
        let mut random = Random(3);
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..3_000 {
            let class = (random.next() * 3.0) as usize;
            let centre = [(-2.0, 0.0), (2.0, 0.0), (0.0, 3.0)][class];
            rows.push(vec![centre.0 + random.normal(), centre.1 + random.normal()]);
            labels.push(["c", "a", "b"][class].to_owned());
        }
        let fitted = fit(
            &Sample {
                features: features(),
                rows: rows.clone(),
                labels: Labels::Classes(labels.clone()),
            },
            &Settings::default(),
        )
        .unwrap();
        assert_eq!(fitted.classes, ["a", "b", "c"]);
        assert_eq!(fitted.coefficients.len(), 3);
        // The softmax of the fitted rows classifies the clusters well.
        let correct = rows
            .iter()
            .zip(&labels)
            .filter(|(row, label)| {
                let scores: Vec<f64> = (0..3)
                    .map(|k| {
                        fitted.coefficients[k][0] * row[0]
                            + fitted.coefficients[k][1] * row[1]
                            + fitted.intercepts[k]
                    })
                    .collect();
                let best = (0..3)
                    .max_by(|a, b| scores[*a].total_cmp(&scores[*b]))
                    .unwrap();
                fitted.classes[best] == **label
            })
            .count();
        assert!(correct as f64 / rows.len() as f64 > 0.9, "{correct}");
    }

    #[test]
    fn missing_values_are_imputed_and_bad_samples_refused() {
        let rows: Vec<Vec<f64>> = (0..100)
            .map(|i| {
                vec![
                    i as f64,
                    if i % 10 == 0 {
                        f64::NAN
                    } else {
                        2.0 * i as f64
                    },
                ]
            })
            .collect();
        let values: Vec<f64> = (0..100).map(|i| 3.0 * i as f64 + 1.0).collect();
        let fitted = fit(
            &Sample {
                features: features(),
                rows: rows.clone(),
                labels: Labels::Values(values.clone()),
            },
            &Settings::default(),
        )
        .unwrap();
        assert!(fitted.coefficients[0].iter().all(|c| c.is_finite()));

        let sample = |rows: Vec<Vec<f64>>, labels| Sample {
            features: features(),
            rows,
            labels,
        };
        let few = sample(rows[..10].to_vec(), Labels::Values(values[..10].to_vec()));
        assert_eq!(
            fit(&few, &Settings::default()),
            Err(Error::TooFewRows { rows: 10, min: 50 })
        );
        let one = sample(rows.clone(), Labels::Classes(vec!["yes".into(); 100]));
        assert_eq!(
            fit(&one, &Settings::default()),
            Err(Error::OneClass("yes".into()))
        );
        let empty = sample(
            vec![vec![1.0, f64::NAN]; 100],
            Labels::Values(values.clone()),
        );
        assert_eq!(
            fit(&empty, &Settings::default()),
            Err(Error::EmptyFeature("charges".into()))
        );
        let ragged = sample(vec![vec![1.0]; 100], Labels::Values(values));
        assert!(matches!(
            fit(&ragged, &Settings::default()),
            Err(Error::Invalid(_))
        ));
    }
}
