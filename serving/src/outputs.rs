//! From a model's output tensors to Tidewatch predictions (score, class,
//! class probabilities), one per row.
//!
//! Which outputs hold what is configured per model ([`OutputMapping`]);
//! when it is not, the outputs are recognised by shape: for a classifier a
//! 2-D output `[N, C]` (C ≥ 2) holds class probabilities (the class is the
//! most probable one), and only without it a 1-D one the predicted labels;
//! for a regressor the first numeric output with one value per row is the
//! prediction.

use detectors::spec::Task;

use crate::protocol::{InferResponse, Tensor, TensorData};

/// Where a model's predictions are in its outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputMapping {
    /// Classification or regression.
    pub task: Task,
    /// The output holding class probabilities `[N, C]`.
    pub probabilities: Option<String>,
    /// The output holding predicted labels `[N]` (classification) or
    /// values (regression).
    pub label: Option<String>,
    /// Class names in probability-column order (`"0"`, `"1"`, … when empty).
    pub classes: Vec<String>,
}

/// One row's prediction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prediction {
    /// The regression value, or the positive class's probability (binary).
    pub score: Option<f64>,
    /// The predicted class.
    pub class: Option<String>,
    /// (class, probability).
    pub probabilities: Vec<(String, f64)>,
}

impl OutputMapping {
    /// One prediction per row of `response`; `Err` names what does not fit.
    pub fn predictions(
        &self,
        response: &InferResponse,
        rows: usize,
    ) -> Result<Vec<Prediction>, String> {
        let find = |name: &Option<String>| -> Result<Option<&Tensor>, String> {
            match name {
                Some(name) => response
                    .outputs
                    .iter()
                    .find(|output| &output.name == name)
                    .map(Some)
                    .ok_or_else(|| format!("the model answered no output `{name}`")),
                None => Ok(None),
            }
        };
        let mut predictions = vec![Prediction::default(); rows];
        match self.task {
            Task::Classification => {
                let probabilities = match find(&self.probabilities)? {
                    Some(tensor) => Some(tensor),
                    None if self.label.is_none() => response.outputs.iter().find(|o| {
                        o.shape.len() == 2
                            && o.row_width() >= 2
                            && matches!(o.data, TensorData::Numbers(_))
                    }),
                    None => None,
                };
                // Recognised by shape, labels only count without
                // probabilities: their class names are the configured
                // `classes`, a label output may hold class indices.
                let labels = match find(&self.label)? {
                    Some(tensor) => Some(tensor),
                    None if self.probabilities.is_none() && probabilities.is_none() => {
                        response.outputs.iter().find(|o| o.row_width() == 1)
                    }
                    None => None,
                };
                if probabilities.is_none() && labels.is_none() {
                    return Err("the model answered neither class probabilities nor labels".into());
                }
                if let Some(tensor) = probabilities {
                    self.read_probabilities(tensor, &mut predictions)?;
                }
                if let Some(tensor) = labels {
                    check_rows(tensor, rows)?;
                    for (row, prediction) in predictions.iter_mut().enumerate() {
                        prediction.class = tensor.data.element(row).map(|value| match value {
                            serde_json::Value::String(text) => text,
                            other => other.to_string(),
                        });
                    }
                }
            }
            Task::Regression => {
                let tensor = match find(&self.label)? {
                    Some(tensor) => tensor,
                    None => response
                        .outputs
                        .iter()
                        .find(|o| o.row_width() == 1 && matches!(o.data, TensorData::Numbers(_)))
                        .ok_or("the model answered no numeric output with one value per row")?,
                };
                check_rows(tensor, rows)?;
                let TensorData::Numbers(values) = &tensor.data else {
                    return Err(format!("output `{}` is not numeric", tensor.name));
                };
                for (prediction, value) in predictions.iter_mut().zip(values) {
                    prediction.score = Some(*value);
                }
            }
        }
        Ok(predictions)
    }

    fn read_probabilities(
        &self,
        tensor: &Tensor,
        predictions: &mut [Prediction],
    ) -> Result<(), String> {
        let width = tensor.row_width() as usize;
        if tensor.shape.len() != 2 || width < 2 {
            return Err(format!(
                "output `{}`: shape {:?}, [N, classes] expected",
                tensor.name, tensor.shape
            ));
        }
        check_rows(tensor, predictions.len())?;
        if !self.classes.is_empty() && self.classes.len() != width {
            return Err(format!(
                "output `{}` has {width} classes, {} configured",
                tensor.name,
                self.classes.len()
            ));
        }
        let TensorData::Numbers(values) = &tensor.data else {
            return Err(format!("output `{}` is not numeric", tensor.name));
        };
        let class = |index: usize| {
            self.classes
                .get(index)
                .cloned()
                .unwrap_or_else(|| index.to_string())
        };
        for (prediction, row) in predictions.iter_mut().zip(values.chunks_exact(width)) {
            prediction.probabilities = row
                .iter()
                .enumerate()
                .map(|(index, probability)| (class(index), *probability))
                .collect();
            if width == 2 {
                prediction.score = Some(row[1]);
            }
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(index, _)| index)
                .unwrap_or(0);
            prediction.class = Some(class(best));
        }
        Ok(())
    }
}

fn check_rows(tensor: &Tensor, rows: usize) -> Result<(), String> {
    if tensor.rows() as usize != rows {
        return Err(format!(
            "output `{}` has {} rows, the request {rows}",
            tensor.name,
            tensor.rows()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(outputs: &str) -> InferResponse {
        serde_json::from_str(&format!(r#"{{"model_name":"m","outputs":{outputs}}}"#)).unwrap()
    }

    fn classifier() -> OutputMapping {
        OutputMapping {
            task: Task::Classification,
            probabilities: None,
            label: None,
            classes: vec!["stay".into(), "churn".into()],
        }
    }

    #[test]
    fn probabilities_give_score_class_and_shares() {
        let answer = response(
            r#"[{"name":"probabilities","shape":[2,2],"datatype":"FP64","data":[[0.9,0.1],[0.3,0.7]]}]"#,
        );
        let predictions = classifier().predictions(&answer, 2).unwrap();
        assert_eq!(predictions[1].score, Some(0.7));
        assert_eq!(predictions[1].class.as_deref(), Some("churn"));
        assert_eq!(predictions[0].class.as_deref(), Some("stay"));
        assert_eq!(
            predictions[0].probabilities,
            [("stay".to_owned(), 0.9), ("churn".to_owned(), 0.1)]
        );
    }

    #[test]
    fn labels_alone_give_the_class_and_a_label_output_wins_over_argmax() {
        // What MLServer's scikit-learn runtime answers by default.
        let answer =
            response(r#"[{"name":"predict","shape":[2,1],"datatype":"INT64","data":[1,0]}]"#);
        let predictions = classifier().predictions(&answer, 2).unwrap();
        assert_eq!(predictions[0].class.as_deref(), Some("1"));
        assert_eq!(predictions[0].score, None);
        let mapping = OutputMapping {
            probabilities: Some("p".into()),
            label: Some("label".into()),
            ..classifier()
        };
        let both = response(
            r#"[{"name":"p","shape":[1,2],"datatype":"FP64","data":[0.4,0.6]},
                {"name":"label","shape":[1],"datatype":"BYTES","data":["stay"]}]"#,
        );
        let predictions = mapping.predictions(&both, 1).unwrap();
        assert_eq!(predictions[0].class.as_deref(), Some("stay"));
        assert_eq!(predictions[0].score, Some(0.6));
        assert!(mapping
            .predictions(&response("[]"), 1)
            .unwrap_err()
            .contains("no output `p`"));
    }

    #[test]
    fn regression_reads_one_value_per_row_and_checks_rows() {
        let mapping = OutputMapping {
            task: Task::Regression,
            probabilities: None,
            label: None,
            classes: vec![],
        };
        let answer = response(r#"[{"name":"y","shape":[2],"datatype":"FP32","data":[1.5,2.5]}]"#);
        let predictions = mapping.predictions(&answer, 2).unwrap();
        assert_eq!(predictions[1].score, Some(2.5));
        assert!(mapping
            .predictions(&answer, 3)
            .unwrap_err()
            .contains("rows"));
    }
}
