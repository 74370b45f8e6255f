//! From a request's input tensors to Tidewatch's named features.
//!
//! A model's inputs carry its features in one of two layouts, configured per
//! model ([`InputLayout`]):
//! - `per_feature`: one tensor per feature, named like it, of shape `[N]`
//!   or `[N, 1]`;
//! - `columns`: one 2-D tensor `[N, F]` whose columns are the configured
//!   features in order (what scikit-learn models served by MLServer take).
//!
//! Either way the result is a [`FeatureBatch`]: `N` rows, one column per
//! feature, which the in-process runtimes compute on and the inference log
//! writes into each prediction event.

use crate::protocol::{InferRequest, Tensor, TensorData};

/// How a model's inputs carry its features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputLayout {
    /// One tensor per feature, named like it.
    PerFeature,
    /// One 2-D tensor whose columns are the features in order; `tensor`
    /// names it (any single input when `None`).
    Columns { tensor: Option<String> },
}

/// One value of one row, as logged.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue<'a> {
    Number(f64),
    Text(&'a str),
    Bool(bool),
}

/// The features of a request: `rows` rows, one column per feature.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureBatch {
    rows: usize,
    /// (feature, its `rows` values).
    columns: Vec<(String, TensorData)>,
}

impl FeatureBatch {
    /// Rows (instances) in the request.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The features in configured order with their values.
    pub fn columns(&self) -> &[(String, TensorData)] {
        &self.columns
    }

    /// The numbers of feature `name` (booleans as 0/1); `Err` when it is
    /// missing or holds text.
    pub fn numbers(&self, name: &str) -> Result<std::borrow::Cow<'_, [f64]>, String> {
        let (_, data) = self
            .columns
            .iter()
            .find(|(feature, _)| feature == name)
            .ok_or_else(|| format!("the request has no feature `{name}`"))?;
        match data {
            TensorData::Numbers(values) => Ok(std::borrow::Cow::Borrowed(values)),
            TensorData::Bools(values) => {
                Ok(values.iter().map(|b| f64::from(u8::from(*b))).collect())
            }
            TensorData::Text(_) => Err(format!(
                "feature `{name}` holds text, the model takes numbers"
            )),
        }
    }

    /// The value of every feature in row `row`.
    pub fn row(&self, row: usize) -> impl Iterator<Item = (&str, FeatureValue<'_>)> {
        self.columns.iter().map(move |(name, data)| {
            let value = match data {
                TensorData::Numbers(values) => FeatureValue::Number(values[row]),
                TensorData::Text(values) => FeatureValue::Text(&values[row]),
                TensorData::Bools(values) => FeatureValue::Bool(values[row]),
            };
            (name.as_str(), value)
        })
    }

    /// Reads the features of `request` laid out as `layout`.
    pub fn from_request(
        request: &InferRequest,
        layout: &InputLayout,
        features: &[String],
    ) -> Result<Self, String> {
        for input in &request.inputs {
            input.validate()?;
        }
        match layout {
            InputLayout::PerFeature => per_feature(&request.inputs, features),
            InputLayout::Columns { tensor } => {
                let input = match tensor {
                    Some(name) => request
                        .inputs
                        .iter()
                        .find(|input| &input.name == name)
                        .ok_or_else(|| format!("the request has no input `{name}`"))?,
                    None => match request.inputs.as_slice() {
                        [input] => input,
                        inputs => {
                            return Err(format!(
                            "the model takes one input tensor of {} columns, the request has {}",
                            features.len(),
                            inputs.len()
                        ))
                        }
                    },
                };
                columns(input, features)
            }
        }
    }
}

impl FeatureBatch {
    /// Reads rows given as JSON (the V1 protocol's `instances`): each row an
    /// array of values in feature order, or an object of feature → value.
    /// Every value of a feature must have the same JSON type.
    pub fn from_json_rows(rows: &[serde_json::Value], features: &[String]) -> Result<Self, String> {
        use serde_json::Value;
        let mut columns: Vec<Vec<&Value>> = vec![Vec::with_capacity(rows.len()); features.len()];
        for (index, row) in rows.iter().enumerate() {
            match row {
                Value::Array(values) if values.len() == features.len() => {
                    for (column, value) in columns.iter_mut().zip(values) {
                        column.push(value);
                    }
                }
                Value::Object(values) => {
                    for (column, feature) in columns.iter_mut().zip(features) {
                        column.push(values.get(feature).ok_or_else(|| {
                            format!("instance {index} has no feature `{feature}`")
                        })?);
                    }
                }
                _ => {
                    return Err(format!(
                        "instance {index}: an array of {} values or an object of features expected",
                        features.len()
                    ))
                }
            }
        }
        let columns = features
            .iter()
            .zip(columns)
            .map(|(feature, values)| {
                let data = match values.first() {
                    None | Some(Value::Number(_)) => values
                        .iter()
                        .map(|v| v.as_f64())
                        .collect::<Option<Vec<f64>>>()
                        .map(TensorData::Numbers),
                    Some(Value::String(_)) => values
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<Vec<String>>>()
                        .map(TensorData::Text),
                    Some(Value::Bool(_)) => values
                        .iter()
                        .map(|v| v.as_bool())
                        .collect::<Option<Vec<bool>>>()
                        .map(TensorData::Bools),
                    Some(_) => None,
                };
                data.map(|data| (feature.clone(), data))
                    .ok_or_else(|| format!("feature `{feature}`: values of one type (number, string or boolean) expected"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(FeatureBatch {
            rows: rows.len(),
            columns,
        })
    }
}

fn per_feature(inputs: &[Tensor], features: &[String]) -> Result<FeatureBatch, String> {
    if let Some(unknown) = inputs.iter().find(|input| !features.contains(&input.name)) {
        return Err(format!(
            "input `{}` is not a feature of the model ({})",
            unknown.name,
            features.join(", ")
        ));
    }
    let mut rows = None;
    let mut columns = Vec::with_capacity(features.len());
    for feature in features {
        let input = inputs
            .iter()
            .find(|input| &input.name == feature)
            .ok_or_else(|| format!("the request has no input `{feature}`"))?;
        if input.shape.len() > 2 || input.row_width() != 1 {
            return Err(format!(
                "input `{feature}`: shape {:?}, one value per row expected ([N] or [N, 1])",
                input.shape
            ));
        }
        let count = input.data.len();
        if *rows.get_or_insert(count) != count {
            return Err(format!(
                "input `{feature}` has {count} rows, the others {}",
                rows.unwrap_or(0)
            ));
        }
        columns.push((feature.clone(), input.data.clone()));
    }
    Ok(FeatureBatch {
        rows: rows.unwrap_or(0),
        columns,
    })
}

fn columns(input: &Tensor, features: &[String]) -> Result<FeatureBatch, String> {
    if input.shape.len() != 2 || input.shape[1] != features.len() as u64 {
        return Err(format!(
            "input `{}`: shape {:?}, [N, {}] expected (columns: {})",
            input.name,
            input.shape,
            features.len(),
            features.join(", ")
        ));
    }
    let rows = input.shape[0] as usize;
    let width = features.len();
    let column = |index: usize| -> TensorData {
        match &input.data {
            TensorData::Numbers(values) => {
                TensorData::Numbers(values.iter().skip(index).step_by(width).copied().collect())
            }
            TensorData::Text(values) => {
                TensorData::Text(values.iter().skip(index).step_by(width).cloned().collect())
            }
            TensorData::Bools(values) => {
                TensorData::Bools(values.iter().skip(index).step_by(width).copied().collect())
            }
        }
    };
    Ok(FeatureBatch {
        rows,
        columns: features
            .iter()
            .enumerate()
            .map(|(index, feature)| (feature.clone(), column(index)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> InferRequest {
        serde_json::from_str(json).unwrap()
    }

    fn features() -> Vec<String> {
        vec!["age".into(), "plan".into()]
    }

    #[test]
    fn both_layouts_give_the_same_named_features() {
        let per_feature = request(
            r#"{"inputs":[{"name":"plan","shape":[2],"datatype":"BYTES","data":["a","b"]},
                          {"name":"age","shape":[2,1],"datatype":"FP64","data":[[31.5],[40]]}]}"#,
        );
        let batch = FeatureBatch::from_request(&per_feature, &InputLayout::PerFeature, &features())
            .unwrap();
        assert_eq!(batch.rows(), 2);
        let second: Vec<(&str, FeatureValue)> = batch.row(1).collect();
        assert_eq!(
            second,
            [
                ("age", FeatureValue::Number(40.0)),
                ("plan", FeatureValue::Text("b"))
            ]
        );

        let numeric = vec!["age".to_owned(), "tenure".to_owned()];
        let columns = request(
            r#"{"inputs":[{"name":"input-0","shape":[3,2],"datatype":"FP32","data":[[1,10],[2,20],[3,30]]}]}"#,
        );
        let batch =
            FeatureBatch::from_request(&columns, &InputLayout::Columns { tensor: None }, &numeric)
                .unwrap();
        assert_eq!(
            batch.numbers("tenure").unwrap().as_ref(),
            [10.0, 20.0, 30.0]
        );
        assert_eq!(batch.numbers("age").unwrap().as_ref(), [1.0, 2.0, 3.0]);
        let named = FeatureBatch::from_request(
            &columns,
            &InputLayout::Columns {
                tensor: Some("other".into()),
            },
            &numeric,
        );
        assert!(named.unwrap_err().contains("no input `other`"));
    }

    #[test]
    fn v1_instances_read_as_arrays_or_objects() {
        let arrays: Vec<serde_json::Value> =
            serde_json::from_str(r#"[[31.5, "a"], [40, "b"]]"#).unwrap();
        let objects: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"age": 31.5, "plan": "a", "other": 1}, {"plan": "b", "age": 40}]"#,
        )
        .unwrap();
        let from_arrays = FeatureBatch::from_json_rows(&arrays, &features()).unwrap();
        assert_eq!(
            from_arrays,
            FeatureBatch::from_json_rows(&objects, &features()).unwrap()
        );
        assert_eq!(from_arrays.numbers("age").unwrap().as_ref(), [31.5, 40.0]);
        let mixed: Vec<serde_json::Value> =
            serde_json::from_str(r#"[[1, "a"], ["x", "b"]]"#).unwrap();
        assert!(FeatureBatch::from_json_rows(&mixed, &features())
            .unwrap_err()
            .contains("feature `age`"));
        let short: Vec<serde_json::Value> = serde_json::from_str(r#"[[1]]"#).unwrap();
        assert!(FeatureBatch::from_json_rows(&short, &features()).is_err());
    }

    #[test]
    fn requests_that_do_not_fit_the_layout_say_why() {
        let layout = InputLayout::PerFeature;
        let missing =
            request(r#"{"inputs":[{"name":"age","shape":[1],"datatype":"FP64","data":[1]}]}"#);
        assert!(FeatureBatch::from_request(&missing, &layout, &features())
            .unwrap_err()
            .contains("no input `plan`"));
        let unknown = request(
            r#"{"inputs":[{"name":"age","shape":[1],"datatype":"FP64","data":[1]},
                          {"name":"plan","shape":[1],"datatype":"BYTES","data":["a"]},
                          {"name":"zip","shape":[1],"datatype":"BYTES","data":["1"]}]}"#,
        );
        assert!(FeatureBatch::from_request(&unknown, &layout, &features())
            .unwrap_err()
            .contains("`zip` is not a feature"));
        let ragged = request(
            r#"{"inputs":[{"name":"age","shape":[2],"datatype":"FP64","data":[1,2]},
                          {"name":"plan","shape":[1],"datatype":"BYTES","data":["a"]}]}"#,
        );
        assert!(FeatureBatch::from_request(&ragged, &layout, &features())
            .unwrap_err()
            .contains("rows"));
        let wide =
            request(r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64","data":[1,2,3]}]}"#);
        assert!(FeatureBatch::from_request(
            &wide,
            &InputLayout::Columns { tensor: None },
            &features()
        )
        .unwrap_err()
        .contains("[N, 2] expected"));
        let text = request(
            r#"{"inputs":[{"name":"age","shape":[1],"datatype":"BYTES","data":["x"]},
                          {"name":"plan","shape":[1],"datatype":"BYTES","data":["a"]}]}"#,
        );
        let batch = FeatureBatch::from_request(&text, &layout, &features()).unwrap();
        assert!(batch.numbers("age").unwrap_err().contains("holds text"));
    }
}
