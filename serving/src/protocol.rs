//! The Open Inference Protocol's REST messages (KServe V2): inference
//! request and response, tensors, model metadata.
//!
//! Tensor `data` is row-major and may be sent flat or nested; it is read
//! flat and checked against `shape` and `datatype` once, in
//! [`Tensor::validate`], so code after that never meets a tensor whose data
//! and shape disagree.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A tensor's element type, as the protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Datatype {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    Uint8,
    #[serde(rename = "UINT16")]
    Uint16,
    #[serde(rename = "UINT32")]
    Uint32,
    #[serde(rename = "UINT64")]
    Uint64,
    #[serde(rename = "INT8")]
    Int8,
    #[serde(rename = "INT16")]
    Int16,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "FP16")]
    Fp16,
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
    #[serde(rename = "BYTES")]
    Bytes,
}

impl Datatype {
    /// Whether elements are JSON numbers.
    pub fn is_numeric(self) -> bool {
        !matches!(self, Datatype::Bool | Datatype::Bytes)
    }

    /// Whether elements are whole numbers.
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Datatype::Uint8
                | Datatype::Uint16
                | Datatype::Uint32
                | Datatype::Uint64
                | Datatype::Int8
                | Datatype::Int16
                | Datatype::Int32
                | Datatype::Int64
        )
    }

    /// The protocol's name (`FP32`, `BYTES`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }
}

/// A tensor's elements, flat and row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Numeric datatypes.
    Numbers(Vec<f64>),
    /// `BYTES` (UTF-8 strings).
    Text(Vec<String>),
    /// `BOOL`.
    Bools(Vec<bool>),
}

impl TensorData {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Numbers(values) => values.len(),
            TensorData::Text(values) => values.len(),
            TensorData::Bools(values) => values.len(),
        }
    }

    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `index` as JSON.
    pub fn element(&self, index: usize) -> Option<Value> {
        Some(match self {
            TensorData::Numbers(values) => number(*values.get(index)?),
            TensorData::Text(values) => Value::String(values.get(index)?.clone()),
            TensorData::Bools(values) => Value::Bool(*values.get(index)?),
        })
    }
}

/// A JSON number; integral values within ±2⁵³ as integers, so that an
/// `INT64` class label reads `1`, not `1.0`.
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() <= 9_007_199_254_740_992.0 {
        Value::from(value as i64)
    } else {
        serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
    }
}

impl Serialize for TensorData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut sequence = serializer.serialize_seq(Some(self.len()))?;
        match self {
            TensorData::Numbers(values) => {
                for value in values {
                    sequence.serialize_element(&number(*value))?;
                }
            }
            TensorData::Text(values) => {
                for value in values {
                    sequence.serialize_element(value)?;
                }
            }
            TensorData::Bools(values) => {
                for value in values {
                    sequence.serialize_element(value)?;
                }
            }
        }
        sequence.end()
    }
}

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let mut flat = Vec::new();
        flatten(value, &mut flat);
        let data = match flat.first() {
            None | Some(Value::Number(_)) => TensorData::Numbers(
                flat.iter()
                    .map(|v| v.as_f64().ok_or("mixes numbers with other values"))
                    .collect::<Result<_, _>>()
                    .map_err(serde::de::Error::custom)?,
            ),
            Some(Value::String(_)) => TensorData::Text(
                flat.into_iter()
                    .map(|v| match v {
                        Value::String(text) => Ok(text),
                        _ => Err("mixes strings with other values"),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(serde::de::Error::custom)?,
            ),
            Some(Value::Bool(_)) => TensorData::Bools(
                flat.iter()
                    .map(|v| v.as_bool().ok_or("mixes booleans with other values"))
                    .collect::<Result<_, _>>()
                    .map_err(serde::de::Error::custom)?,
            ),
            Some(other) => {
                return Err(serde::de::Error::custom(format!(
                    "tensor elements must be numbers, strings or booleans, not {other}"
                )))
            }
        };
        Ok(data)
    }
}

fn flatten(value: Value, into: &mut Vec<Value>) {
    match value {
        Value::Array(items) => {
            for item in items {
                flatten(item, into);
            }
        }
        other => into.push(other),
    }
}

/// One input or output tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// The tensor's name.
    pub name: String,
    /// Its shape; the product of the dimensions is the element count.
    pub shape: Vec<u64>,
    /// Its element type.
    pub datatype: Datatype,
    /// Protocol parameters, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// The elements, row-major.
    pub data: TensorData,
}

impl Tensor {
    /// Checks that `data` has `shape`'s element count and `datatype`'s kind.
    pub fn validate(&self) -> Result<(), String> {
        let expected = self
            .shape
            .iter()
            .try_fold(1u64, |product, dimension| product.checked_mul(*dimension))
            .ok_or_else(|| format!("input `{}`: shape {:?} is too large", self.name, self.shape))?;
        if expected != self.data.len() as u64 {
            return Err(format!(
                "input `{}`: shape {:?} holds {expected} elements, data has {}",
                self.name,
                self.shape,
                self.data.len()
            ));
        }
        let fits = match (&self.data, self.datatype) {
            (TensorData::Numbers(values), datatype) if datatype.is_numeric() => {
                !datatype.is_integer() || values.iter().all(|v| v.fract() == 0.0)
            }
            // An empty tensor reads as numbers whatever its datatype.
            (TensorData::Numbers(values), _) => values.is_empty(),
            (TensorData::Text(_), Datatype::Bytes) => true,
            (TensorData::Bools(_), Datatype::Bool) => true,
            _ => false,
        };
        if !fits {
            return Err(format!(
                "input `{}`: data does not match datatype {}",
                self.name,
                self.datatype.as_str()
            ));
        }
        Ok(())
    }

    /// Rows: the first dimension (1 for a scalar).
    pub fn rows(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row.
    pub fn row_width(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }
}

/// An output the client asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// Protocol parameters, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
}

/// `POST /v2/models/{model}[/versions/{version}]/infer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response; Tidewatch's prediction id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Protocol parameters, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// The inputs.
    pub inputs: Vec<Tensor>,
    /// The outputs wanted (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// The answer to an [`InferRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// The model.
    pub model_name: String,
    /// The version that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// The request's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Protocol parameters, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// The outputs.
    pub outputs: Vec<Tensor>,
}

/// A tensor's name, type and shape (`-1`: any size) in model metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMetadata {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub datatype: Datatype,
    /// Its shape, `-1` for a variable dimension.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{model}[/versions/{version}]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// The model.
    pub name: String,
    /// Versions that can be asked for.
    pub versions: Vec<String>,
    /// Which runtime serves it.
    pub platform: String,
    /// Inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs.
    pub outputs: Vec<TensorMetadata>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_data_read_alike_and_are_checked_against_the_shape() {
        let nested: Tensor = serde_json::from_str(
            r#"{"name":"x","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5,6.5]]}"#,
        )
        .unwrap();
        let flat: Tensor = serde_json::from_str(
            r#"{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6.5]}"#,
        )
        .unwrap();
        assert_eq!(nested, flat);
        assert!(flat.validate().is_ok());
        assert_eq!((flat.rows(), flat.row_width()), (2, 3));
        let short: Tensor =
            serde_json::from_str(r#"{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3]}"#)
                .unwrap();
        assert!(short
            .validate()
            .unwrap_err()
            .contains("holds 6 elements, data has 3"));
        let fractional: Tensor =
            serde_json::from_str(r#"{"name":"x","shape":[1],"datatype":"INT64","data":[1.5]}"#)
                .unwrap();
        assert!(fractional.validate().is_err());
        let text: Tensor =
            serde_json::from_str(r#"{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}"#)
                .unwrap();
        assert!(text.validate().is_err());
        assert!(serde_json::from_str::<Tensor>(
            r#"{"name":"x","shape":[2],"datatype":"FP32","data":[1,"a"]}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Tensor>(
            r#"{"name":"x","shape":[1],"datatype":"FP8","data":[1]}"#
        )
        .is_err());
    }

    #[test]
    fn integral_outputs_are_written_as_integers() {
        let tensor = Tensor {
            name: "label".into(),
            shape: vec![3],
            datatype: Datatype::Int64,
            parameters: None,
            data: TensorData::Numbers(vec![1.0, 0.0, 0.25]),
        };
        assert_eq!(
            serde_json::to_string(&tensor).unwrap(),
            r#"{"name":"label","shape":[3],"datatype":"INT64","data":[1,0,0.25]}"#
        );
    }
}
