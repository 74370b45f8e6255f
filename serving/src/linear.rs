//! Tidewatch's native format for linear models (`tidewatch.linear.v1`), and
//! its in-process runtime.
//!
//! A JSON document small enough to read, which Tidewatch's own trainer
//! writes and any script can produce from scikit-learn's `coef_` and
//! `intercept_`:
//!
//! ```json
//! {"format": "tidewatch.linear.v1", "task": "classification",
//!  "features": ["age", "tenure"], "classes": ["stay", "churn"],
//!  "coefficients": [[0.03, -0.1]], "intercepts": [-1.2]}
//! ```
//!
//! - regression: one coefficient row, `prediction = x·w + b`; output
//!   `prediction` `[N]` (FP64);
//! - binary classification: two classes and one row, `p(classes[1]) =
//!   σ(x·w + b)` (scikit-learn's `LogisticRegression`); multiclass: one row
//!   per class and a softmax. Outputs `probabilities` `[N, C]` (FP64) and
//!   `label` `[N]` (BYTES, the most probable class).

use detectors::spec::Task;
use serde::{Deserialize, Serialize};

use crate::features::FeatureBatch;
use crate::protocol::{Datatype, Tensor, TensorData, TensorMetadata};

/// The format's identifier.
pub const LINEAR_FORMAT: &str = "tidewatch.linear.v1";
/// A classifier's class probabilities `[N, C]`.
pub const PROBABILITIES_OUTPUT: &str = "probabilities";
/// A classifier's most probable class `[N]`.
pub const LABEL_OUTPUT: &str = "label";
/// A regressor's prediction `[N]`.
pub const PREDICTION_OUTPUT: &str = "prediction";

/// The document as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinearDocument {
    format: String,
    task: Task,
    features: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    classes: Vec<String>,
    coefficients: Vec<Vec<f64>>,
    intercepts: Vec<f64>,
}

/// A validated linear model.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearModel {
    document: LinearDocument,
}

impl LinearModel {
    /// A regression model.
    pub fn regression(
        features: Vec<String>,
        coefficients: Vec<f64>,
        intercept: f64,
    ) -> Result<Self, String> {
        Self::validate(LinearDocument {
            format: LINEAR_FORMAT.into(),
            task: Task::Regression,
            features,
            classes: Vec::new(),
            coefficients: vec![coefficients],
            intercepts: vec![intercept],
        })
    }

    /// A classifier: one row of coefficients for two classes (logistic),
    /// one per class otherwise (softmax).
    pub fn classifier(
        features: Vec<String>,
        classes: Vec<String>,
        coefficients: Vec<Vec<f64>>,
        intercepts: Vec<f64>,
    ) -> Result<Self, String> {
        Self::validate(LinearDocument {
            format: LINEAR_FORMAT.into(),
            task: Task::Classification,
            features,
            classes,
            coefficients,
            intercepts,
        })
    }

    /// Reads and checks a `tidewatch.linear.v1` document.
    pub fn from_json(text: &[u8]) -> Result<Self, String> {
        let document: LinearDocument = serde_json::from_slice(text)
            .map_err(|e| format!("not a {LINEAR_FORMAT} document: {e}"))?;
        Self::validate(document)
    }

    /// The document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.document).expect("a linear model serializes")
    }

    fn validate(document: LinearDocument) -> Result<Self, String> {
        if document.format != LINEAR_FORMAT {
            return Err(format!(
                "`format` is `{}`, not `{LINEAR_FORMAT}`",
                document.format
            ));
        }
        if document.features.is_empty() {
            return Err("`features` is empty".into());
        }
        let rows = document.coefficients.len();
        if rows == 0 || rows != document.intercepts.len() {
            return Err(format!(
                "{rows} coefficient rows and {} intercepts: one intercept per row expected",
                document.intercepts.len()
            ));
        }
        if let Some(row) = document
            .coefficients
            .iter()
            .find(|row| row.len() != document.features.len())
        {
            return Err(format!(
                "a coefficient row has {} values for {} features",
                row.len(),
                document.features.len()
            ));
        }
        if document
            .coefficients
            .iter()
            .flatten()
            .chain(&document.intercepts)
            .any(|value| !value.is_finite())
        {
            return Err("coefficients and intercepts must be finite".into());
        }
        match document.task {
            Task::Regression if rows != 1 || !document.classes.is_empty() => {
                return Err("a regression model has one coefficient row and no classes".into())
            }
            Task::Classification => {
                let classes = document.classes.len();
                let fits = (classes == 2 && rows == 1) || (classes > 2 && rows == classes);
                if !fits {
                    return Err(format!(
                        "{classes} classes and {rows} coefficient rows: two classes take one row, more take one row each"
                    ));
                }
            }
            Task::Regression => {}
        }
        Ok(Self { document })
    }

    /// What the gateway logs for one row of feature values (in
    /// [`LinearModel::features`] order): the score (a regression's value,
    /// a binary classifier's probability of its second class, none for
    /// more classes) and the class (classifiers). Used to give a training
    /// set the outputs of the model trained on it.
    pub fn predict_row(&self, row: &[f64]) -> (Option<f64>, Option<String>) {
        let margins: Vec<f64> = self
            .document
            .coefficients
            .iter()
            .zip(&self.document.intercepts)
            .map(|(weights, intercept)| {
                weights
                    .iter()
                    .zip(row)
                    .fold(*intercept, |sum, (weight, value)| sum + weight * value)
            })
            .collect();
        match self.document.task {
            Task::Regression => (margins.first().copied(), None),
            Task::Classification => {
                let classes = &self.document.classes;
                if margins.len() == 1 {
                    let positive = sigmoid(margins[0]);
                    let class = classes[usize::from(positive > 0.5)].clone();
                    (Some(positive), Some(class))
                } else {
                    let best = margins
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map(|(index, _)| index)
                        .unwrap_or(0);
                    (None, Some(classes[best].clone()))
                }
            }
        }
    }

    /// Classification or regression.
    pub fn task(&self) -> Task {
        self.document.task
    }

    /// The features the model reads, in coefficient order.
    pub fn features(&self) -> &[String] {
        &self.document.features
    }

    /// The classes (classification).
    pub fn classes(&self) -> &[String] {
        &self.document.classes
    }

    /// The outputs it answers.
    pub fn outputs(&self) -> Vec<TensorMetadata> {
        match self.document.task {
            Task::Regression => vec![TensorMetadata {
                name: PREDICTION_OUTPUT.into(),
                datatype: Datatype::Fp64,
                shape: vec![-1],
            }],
            Task::Classification => vec![
                TensorMetadata {
                    name: PROBABILITIES_OUTPUT.into(),
                    datatype: Datatype::Fp64,
                    shape: vec![-1, self.document.classes.len() as i64],
                },
                TensorMetadata {
                    name: LABEL_OUTPUT.into(),
                    datatype: Datatype::Bytes,
                    shape: vec![-1],
                },
            ],
        }
    }

    /// Computes the outputs for `batch`.
    pub fn infer(&self, batch: &FeatureBatch) -> Result<Vec<Tensor>, String> {
        let rows = batch.rows();
        let columns = self
            .document
            .features
            .iter()
            .map(|feature| batch.numbers(feature))
            .collect::<Result<Vec<_>, _>>()?;
        let margins: Vec<Vec<f64>> = self
            .document
            .coefficients
            .iter()
            .zip(&self.document.intercepts)
            .map(|(weights, intercept)| {
                (0..rows)
                    .map(|row| {
                        weights
                            .iter()
                            .zip(&columns)
                            .fold(*intercept, |sum, (weight, column)| {
                                sum + weight * column[row]
                            })
                    })
                    .collect()
            })
            .collect();
        let rows_u64 = rows as u64;
        Ok(match self.document.task {
            Task::Regression => vec![Tensor {
                name: PREDICTION_OUTPUT.into(),
                shape: vec![rows_u64],
                datatype: Datatype::Fp64,
                parameters: None,
                data: TensorData::Numbers(margins.into_iter().next().unwrap_or_default()),
            }],
            Task::Classification => {
                let classes = self.document.classes.len();
                let mut probabilities = Vec::with_capacity(rows * classes);
                let mut labels = Vec::with_capacity(rows);
                for row in 0..rows {
                    let start = probabilities.len();
                    if margins.len() == 1 {
                        let positive = sigmoid(margins[0][row]);
                        probabilities.extend([1.0 - positive, positive]);
                    } else {
                        let largest = margins
                            .iter()
                            .map(|m| m[row])
                            .fold(f64::NEG_INFINITY, f64::max);
                        let exps: Vec<f64> =
                            margins.iter().map(|m| (m[row] - largest).exp()).collect();
                        let total: f64 = exps.iter().sum();
                        probabilities.extend(exps.iter().map(|e| e / total));
                    }
                    let best = probabilities[start..]
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map(|(index, _)| index)
                        .unwrap_or(0);
                    labels.push(self.document.classes[best].clone());
                }
                vec![
                    Tensor {
                        name: PROBABILITIES_OUTPUT.into(),
                        shape: vec![rows_u64, classes as u64],
                        datatype: Datatype::Fp64,
                        parameters: None,
                        data: TensorData::Numbers(probabilities),
                    },
                    Tensor {
                        name: LABEL_OUTPUT.into(),
                        shape: vec![rows_u64],
                        datatype: Datatype::Bytes,
                        parameters: None,
                        data: TensorData::Text(labels),
                    },
                ]
            }
        })
    }
}

/// The logistic function, stable for large |x|.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::InputLayout;
    use crate::protocol::InferRequest;

    fn batch(features: &[&str], rows: &[&[f64]]) -> FeatureBatch {
        let names: Vec<String> = features.iter().map(|f| f.to_string()).collect();
        let request: InferRequest = serde_json::from_value(serde_json::json!({
            "inputs": [{"name": "x", "shape": [rows.len(), features.len()], "datatype": "FP64", "data": rows}]
        }))
        .unwrap();
        FeatureBatch::from_request(&request, &InputLayout::Columns { tensor: None }, &names)
            .unwrap()
    }

    #[test]
    fn one_row_predicts_what_a_batch_answers() {
        let binary = LinearModel::classifier(
            vec!["a".into(), "b".into()],
            vec!["no".into(), "yes".into()],
            vec![vec![0.5, -2.0]],
            vec![0.25],
        )
        .unwrap();
        // σ(0.25 + 0.5·3 − 2·1) = σ(−0.25) < ½: "no".
        let (score, class) = binary.predict_row(&[3.0, 1.0]);
        assert!((score.unwrap() - 1.0 / (1.0 + 0.25f64.exp())).abs() < 1e-12);
        assert_eq!(class.as_deref(), Some("no"));
        let outputs = binary.infer(&batch(&["a", "b"], &[&[3.0, 1.0]])).unwrap();
        let TensorData::Numbers(p) = &outputs[0].data else {
            panic!()
        };
        assert!((p[1] - score.unwrap()).abs() < 1e-12);
        let three = LinearModel::classifier(
            vec!["a".into()],
            vec!["x".into(), "y".into(), "z".into()],
            vec![vec![1.0], vec![0.0], vec![-1.0]],
            vec![0.0, 0.5, 0.0],
        )
        .unwrap();
        assert_eq!(three.predict_row(&[2.0]), (None, Some("x".into())));
        assert_eq!(three.predict_row(&[0.0]), (None, Some("y".into())));
        let regression = LinearModel::regression(vec!["a".into()], vec![2.0], 1.0).unwrap();
        assert_eq!(regression.predict_row(&[3.0]), (Some(7.0), None));
    }

    #[test]
    fn logistic_probabilities_match_the_closed_form() {
        let model = LinearModel::classifier(
            vec!["a".into(), "b".into()],
            vec!["no".into(), "yes".into()],
            vec![vec![0.5, -2.0]],
            vec![0.25],
        )
        .unwrap();
        // Features in another order than the model's: read by name.
        let outputs = model
            .infer(&batch(&["b", "a"], &[&[1.0, 3.0], &[-1.0, 0.0]]))
            .unwrap();
        let TensorData::Numbers(p) = &outputs[0].data else {
            panic!()
        };
        let expected = |margin: f64| 1.0 / (1.0 + (-margin).exp());
        assert!((p[1] - expected(0.25 + 1.5 - 2.0)).abs() < 1e-15);
        assert!((p[3] - expected(0.25 + 0.0 + 2.0)).abs() < 1e-15);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-15);
        assert_eq!(
            outputs[1].data,
            TensorData::Text(vec!["no".into(), "yes".into()])
        );
    }

    #[test]
    fn softmax_and_regression_match_the_closed_form() {
        let model = LinearModel::classifier(
            vec!["a".into()],
            vec!["x".into(), "y".into(), "z".into()],
            vec![vec![1.0], vec![2.0], vec![-1.0]],
            vec![0.0, -1.0, 0.5],
        )
        .unwrap();
        let outputs = model.infer(&batch(&["a"], &[&[2.0]])).unwrap();
        let TensorData::Numbers(p) = &outputs[0].data else {
            panic!()
        };
        let margins = [2.0f64, 3.0, -1.5];
        let total: f64 = margins.iter().map(|m| m.exp()).sum();
        for (probability, margin) in p.iter().zip(margins) {
            assert!((probability - margin.exp() / total).abs() < 1e-15);
        }
        assert_eq!(outputs[1].data, TensorData::Text(vec!["y".into()]));

        let regression =
            LinearModel::regression(vec!["a".into(), "b".into()], vec![2.0, -0.5], 1.0).unwrap();
        let outputs = regression
            .infer(&batch(&["a", "b"], &[&[3.0, 4.0]]))
            .unwrap();
        assert_eq!(outputs[0].data, TensorData::Numbers(vec![1.0 + 6.0 - 2.0]));
    }

    #[test]
    fn documents_round_trip_and_bad_ones_say_why() {
        let model = LinearModel::classifier(
            vec!["a".into()],
            vec!["0".into(), "1".into()],
            vec![vec![0.1]],
            vec![0.2],
        )
        .unwrap();
        assert_eq!(
            LinearModel::from_json(model.to_json().as_bytes()).unwrap(),
            model
        );
        let bad = |text: &str| LinearModel::from_json(text.as_bytes()).unwrap_err();
        assert!(bad(r#"{"format":"other","task":"regression","features":["a"],"coefficients":[[1]],"intercepts":[0]}"#)
            .contains("`format`"));
        assert!(bad(r#"{"format":"tidewatch.linear.v1","task":"regression","features":["a"],"coefficients":[[1,2]],"intercepts":[0]}"#)
            .contains("2 values for 1 features"));
        assert!(bad(r#"{"format":"tidewatch.linear.v1","task":"classification","features":["a"],"classes":["a","b","c"],"coefficients":[[1]],"intercepts":[0]}"#)
            .contains("3 classes and 1 coefficient rows"));
        assert!(bad(r#"{"format":"tidewatch.linear.v1","task":"regression","features":["a"],"coefficients":[[1]],"intercepts":[0],"extra":1}"#)
            .contains("unknown field"));
    }
}
