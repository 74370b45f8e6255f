//! ONNX models in process, run by tract (pure Rust).
//!
//! What it runs: a graph with one input, a 2-D tensor `[N, F]` of `float`
//! or `double` whose columns are the version's features in order — what
//! `skl2onnx` writes for a scikit-learn model (`FloatTensorType([None, F])`).
//! tract covers the classic-ML operators scikit-learn models export to:
//! `LinearClassifier`, `LinearRegressor`, `TreeEnsembleClassifier`,
//! `Normalizer`, `CategoryMapper`, and the standard ONNX operators (so
//! pipelines with scalers, and neural networks, load too). It does not run
//! `ZipMap` (export classifiers with `zipmap=False`) nor
//! `TreeEnsembleRegressor`; such a model is refused when the config is
//! validated, naming the operator.
//!
//! Outputs keep their ONNX names (`label` and `probabilities` for a
//! skl2onnx classifier, `variable` for a regressor). A classifier's class
//! names are read from its `classlabels_strings` / `classlabels_int64s`
//! attribute, in probability-column order.
//!
//! A classifier node's label output is recomputed from its scores (the
//! class of the highest score, the first on a tie, as ONNX Runtime does)
//! rather than taken from tract, for two defects of tract 0.23 found
//! against ONNX Runtime on the committed models: a binary
//! `TreeEnsembleClassifier` answers label 0 for rows whose class-1
//! probability is above one half, and a `LinearClassifier` with string
//! labels does not plan at all. Such a node is handed to tract with
//! integer labels `0..C` and the names are put back here.
//!
//! The plan is optimized once at load with a symbolic batch size, so one
//! loaded model answers requests of any number of rows; it runs on the
//! request's task (a linear model or a forest of tens of trees takes
//! microseconds).

use std::sync::Arc;

use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::features::FeatureBatch;
use crate::protocol::{Datatype, Tensor as ProtocolTensor, TensorData, TensorMetadata};

/// Operators the runtime is known not to run, with what to do instead.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "ZipMap",
        "export the classifier with skl2onnx's option zipmap=False",
    ),
    (
        "TreeEnsembleRegressor",
        "tract has no TreeEnsembleRegressor; serve this model through a proxy (MLServer)",
    ),
];

/// The element type of the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputType {
    F32,
    F64,
}

/// A loaded, optimized ONNX model.
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    input_type: InputType,
    /// The features in column order.
    features: Vec<String>,
    outputs: Vec<TensorMetadata>,
    classes: Vec<String>,
    /// Where the label output is recomputed from the scores.
    relabel: Option<Relabel>,
    operators: Vec<String>,
}

/// A classifier node whose label and scores are both graph outputs.
#[derive(Debug, Clone)]
struct Relabel {
    /// Index of the label output among the graph's outputs.
    label: usize,
    /// Index of the scores output `[N, C]`.
    scores: usize,
    /// The class labels, in score-column order.
    classes: ClassLabels,
}

/// A classifier's class labels as the model declares them.
#[derive(Debug, Clone)]
enum ClassLabels {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

impl ClassLabels {
    fn names(&self) -> Vec<String> {
        match self {
            ClassLabels::Ints(labels) => labels.iter().map(i64::to_string).collect(),
            ClassLabels::Strings(labels) => labels.clone(),
        }
    }
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("features", &self.features)
            .field("operators", &self.operators)
            .field("outputs", &self.outputs)
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

impl OnnxModel {
    /// Loads the model in `bytes`, whose input columns are `features` in
    /// order; `Err` says why it cannot be served.
    pub fn from_bytes(bytes: &[u8], features: Vec<String>) -> Result<Self, String> {
        let onnx = tract_onnx::onnx();
        let mut proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| format!("not an ONNX model: {e:#}"))?;
        let graph = proto.graph.as_ref().ok_or("the ONNX model has no graph")?;
        let operators = {
            let mut ops: Vec<String> = graph.node.iter().map(|n| n.op_type.clone()).collect();
            ops.sort();
            ops.dedup();
            ops
        };
        if let Some((op, advice)) = UNSUPPORTED
            .iter()
            .find(|(op, _)| operators.iter().any(|o| o == op))
        {
            return Err(format!("the model uses the operator {op}: {advice}"));
        }
        let initializers: Vec<&str> = graph.initializer.iter().map(|i| i.name.as_str()).collect();
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|input| !initializers.contains(&input.name.as_str()))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(format!(
                "the model has {} inputs; the runtime feeds one [N, features] tensor",
                inputs.len()
            ));
        };
        let (elem_type, dims) =
            tensor_type(input).ok_or_else(|| format!("input `{}` is not a tensor", input.name))?;
        let input_type = match pb::tensor_proto::DataType::try_from(elem_type) {
            Ok(pb::tensor_proto::DataType::Float) => InputType::F32,
            Ok(pb::tensor_proto::DataType::Double) => InputType::F64,
            _ => {
                return Err(format!(
                "input `{}` has ONNX element type {elem_type}; the runtime feeds float or double",
                input.name
            ))
            }
        };
        let width = match dims.as_slice() {
            [_, Some(width)] => *width,
            _ => {
                return Err(format!(
                    "input `{}` is not of shape [N, features] with a fixed number of features",
                    input.name
                ))
            }
        };
        if features.len() as i64 != width {
            return Err(format!(
                "the model takes {width} columns, {} features are configured for it",
                features.len()
            ));
        }
        let outputs = graph
            .output
            .iter()
            .map(|output| {
                let (elem_type, dims) = tensor_type(output)
                    .ok_or_else(|| format!("output `{}` is not a tensor", output.name))?;
                Ok(TensorMetadata {
                    name: output.name.clone(),
                    datatype: datatype(elem_type).ok_or_else(|| {
                        format!(
                            "output `{}` has ONNX element type {elem_type}, not one the protocol carries",
                            output.name
                        )
                    })?,
                    shape: dims.iter().map(|d| d.unwrap_or(-1)).collect(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let classifier = classifier(graph);
        let classes = classifier
            .as_ref()
            .map(|(_, relabel)| relabel.classes.names())
            .unwrap_or_default();
        let relabel = match classifier {
            Some((node, relabel)) => {
                if let Some(graph) = proto.graph.as_mut() {
                    integer_labels(graph, node, &relabel);
                }
                Some(relabel)
            }
            None => None,
        };

        let mut model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| format!("tract cannot load the model: {e:#}"))?;
        let batch = model.sym("N");
        let datum = match input_type {
            InputType::F32 => f32::datum_type(),
            InputType::F64 => f64::datum_type(),
        };
        model = model
            .with_input_fact(
                0,
                InferenceFact::dt_shape(datum, tvec![batch.to_dim(), (width as usize).to_dim()]),
            )
            .map_err(|e| format!("tract cannot set the input shape: {e:#}"))?;
        let plan = model
            .into_optimized()
            .and_then(|typed| typed.into_runnable())
            .map_err(|e| format!("tract cannot plan the model: {e:#}"))?;
        Ok(Self {
            plan,
            input_type,
            features,
            outputs,
            classes,
            relabel,
            operators,
        })
    }

    /// The features the model reads, in column order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// A classifier's class names in probability-column order (empty for a
    /// regressor).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The graph's operators (sorted, once each).
    pub fn operators(&self) -> &[String] {
        &self.operators
    }

    /// The outputs it answers.
    pub fn outputs(&self) -> Vec<TensorMetadata> {
        self.outputs.clone()
    }

    /// Computes the outputs for `batch`.
    pub fn infer(&self, batch: &FeatureBatch) -> Result<Vec<ProtocolTensor>, String> {
        let rows = batch.rows();
        let columns = self
            .features
            .iter()
            .map(|feature| batch.numbers(feature))
            .collect::<Result<Vec<_>, _>>()?;
        let shape = [rows, self.features.len()];
        let input = match self.input_type {
            InputType::F32 => row_major(rows, &columns, |v| v as f32, &shape),
            InputType::F64 => row_major(rows, &columns, |v| v, &shape),
        }
        .map_err(|e| format!("building the input tensor: {e:#}"))?;
        let results = self
            .plan
            .run(tvec![input.into_tvalue()])
            .map_err(|e| format!("the ONNX model failed: {e:#}"))?;
        let mut outputs = results
            .iter()
            .zip(&self.outputs)
            .map(|(value, metadata)| protocol_tensor(&metadata.name, value))
            .collect::<Result<Vec<_>, String>>()?;
        if let Some(relabel) = &self.relabel {
            let scores = &outputs[relabel.scores];
            let (datatype, data) = relabel.labels_of(scores, rows)?;
            let label = &mut outputs[relabel.label];
            label.datatype = datatype;
            label.shape = vec![rows as u64];
            label.data = data;
        }
        Ok(outputs)
    }
}

impl Relabel {
    /// The class of the highest score of each row (the first on a tie).
    fn labels_of(
        &self,
        scores: &ProtocolTensor,
        rows: usize,
    ) -> Result<(Datatype, TensorData), String> {
        let TensorData::Numbers(values) = &scores.data else {
            return Err(format!(
                "the classifier's scores `{}` are not numbers",
                scores.name
            ));
        };
        let width = match &self.classes {
            ClassLabels::Ints(labels) => labels.len(),
            ClassLabels::Strings(labels) => labels.len(),
        };
        if values.len() != rows * width {
            return Err(format!(
                "the classifier's scores `{}` hold {} values for {rows} rows of {width} classes",
                scores.name,
                values.len()
            ));
        }
        let best = values.chunks_exact(width).map(|row| {
            let mut best = 0;
            for (index, value) in row.iter().enumerate() {
                if *value > row[best] {
                    best = index;
                }
            }
            best
        });
        Ok(match &self.classes {
            ClassLabels::Ints(labels) => (
                Datatype::Int64,
                TensorData::Numbers(best.map(|index| labels[index] as f64).collect()),
            ),
            ClassLabels::Strings(labels) => (
                Datatype::Bytes,
                TensorData::Text(best.map(|index| labels[index].clone()).collect()),
            ),
        })
    }
}

/// `columns` (one slice per feature) as a row-major `[rows, F]` tensor.
fn row_major<T: Datum + Copy>(
    rows: usize,
    columns: &[std::borrow::Cow<'_, [f64]>],
    convert: impl Fn(f64) -> T,
    shape: &[usize],
) -> TractResult<Tensor> {
    let mut data = Vec::with_capacity(rows * columns.len());
    for row in 0..rows {
        data.extend(columns.iter().map(|column| convert(column[row])));
    }
    Tensor::from_shape(shape, &data)
}

/// A tract output as a protocol tensor.
fn protocol_tensor(name: &str, value: &Tensor) -> Result<ProtocolTensor, String> {
    fn numbers<T: Datum + Copy>(
        value: &Tensor,
        widen: impl Fn(T) -> f64,
    ) -> Result<TensorData, String> {
        let view = value
            .to_plain_array_view::<T>()
            .map_err(|e| format!("reading an output: {e:#}"))?;
        Ok(TensorData::Numbers(
            view.iter().map(|v| widen(*v)).collect(),
        ))
    }
    let (datatype, data) = match value.datum_type() {
        DatumType::F32 => (Datatype::Fp32, numbers::<f32>(value, f64::from)?),
        DatumType::F64 => (Datatype::Fp64, numbers::<f64>(value, |v| v)?),
        DatumType::I64 => (Datatype::Int64, numbers::<i64>(value, |v| v as f64)?),
        DatumType::I32 => (Datatype::Int32, numbers::<i32>(value, f64::from)?),
        DatumType::String => {
            let view = value
                .to_plain_array_view::<String>()
                .map_err(|e| format!("reading an output: {e:#}"))?;
            (
                Datatype::Bytes,
                TensorData::Text(view.iter().cloned().collect()),
            )
        }
        DatumType::Bool => {
            let view = value
                .to_plain_array_view::<bool>()
                .map_err(|e| format!("reading an output: {e:#}"))?;
            (
                Datatype::Bool,
                TensorData::Bools(view.iter().copied().collect()),
            )
        }
        other => {
            return Err(format!(
                "output `{name}` is of type {other:?}, not one the runtime answers"
            ))
        }
    };
    Ok(ProtocolTensor {
        name: name.to_owned(),
        shape: value.shape().iter().map(|d| *d as u64).collect(),
        datatype,
        parameters: None,
        data,
    })
}

/// A value's tensor element type and dimensions (`None` where symbolic).
fn tensor_type(value: &pb::ValueInfoProto) -> Option<(i32, Vec<Option<i64>>)> {
    let pb::type_proto::Value::TensorType(tensor) = value.r#type.as_ref()?.value.as_ref()?;
    let dims = tensor
        .shape
        .as_ref()
        .map(|shape| {
            shape
                .dim
                .iter()
                .map(|dim| match dim.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => Some(v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some((tensor.elem_type, dims))
}

/// The protocol datatype of an ONNX element type.
fn datatype(elem_type: i32) -> Option<Datatype> {
    use pb::tensor_proto::DataType;
    Some(match DataType::try_from(elem_type).ok()? {
        DataType::Float => Datatype::Fp32,
        DataType::Double => Datatype::Fp64,
        DataType::Int64 => Datatype::Int64,
        DataType::Int32 => Datatype::Int32,
        DataType::String => Datatype::Bytes,
        DataType::Bool => Datatype::Bool,
        _ => return None,
    })
}

/// The graph's classifier node (its index) with its class labels, when its
/// label and scores outputs are both graph outputs.
fn classifier(graph: &pb::GraphProto) -> Option<(usize, Relabel)> {
    let position = |name: &str| graph.output.iter().position(|output| output.name == name);
    graph.node.iter().enumerate().find_map(|(index, node)| {
        let classes =
            node.attribute
                .iter()
                .find_map(|attribute| match attribute.name.as_str() {
                    "classlabels_strings" if !attribute.strings.is_empty() => {
                        Some(ClassLabels::Strings(
                            attribute
                                .strings
                                .iter()
                                .map(|s| String::from_utf8_lossy(s).into_owned())
                                .collect(),
                        ))
                    }
                    "classlabels_int64s" | "classlabels_ints" if !attribute.ints.is_empty() => {
                        Some(ClassLabels::Ints(attribute.ints.clone()))
                    }
                    _ => None,
                })?;
        let [label, scores] = node.output.as_slice() else {
            return None;
        };
        Some((
            index,
            Relabel {
                label: position(label)?,
                scores: position(scores)?,
                classes,
            },
        ))
    })
}

/// Gives classifier `node` the labels `0..C` (its label output recomputed
/// from the scores afterwards), so that tract never computes with strings.
fn integer_labels(graph: &mut pb::GraphProto, node: usize, relabel: &Relabel) {
    let ClassLabels::Strings(labels) = &relabel.classes else {
        return;
    };
    let node = &mut graph.node[node];
    node.attribute
        .retain(|attribute| attribute.name != "classlabels_strings");
    // The ONNX-ML spelling differs per operator.
    let name = if node.op_type == "LinearClassifier" {
        "classlabels_ints"
    } else {
        "classlabels_int64s"
    };
    node.attribute.push(pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: (0..labels.len() as i64).collect(),
        ..Default::default()
    });
    if let Some(pb::type_proto::Value::TensorType(tensor)) = graph.output[relabel.label]
        .r#type
        .as_mut()
        .and_then(|t| t.value.as_mut())
    {
        tensor.elem_type = pb::tensor_proto::DataType::Int64 as i32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::InputLayout;
    use crate::protocol::InferRequest;
    use serde_json::Value;

    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/onnx")
    }

    fn expected() -> Value {
        serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
    }

    fn load(name: &str, features: &[String]) -> OnnxModel {
        let bytes = std::fs::read(fixtures().join(format!("{name}.onnx"))).unwrap();
        OnnxModel::from_bytes(&bytes, features.to_vec()).unwrap()
    }

    fn strings(value: &Value) -> Vec<String> {
        serde_json::from_value(value.clone()).unwrap()
    }

    fn numbers(value: &Value) -> Vec<f64> {
        serde_json::from_value(value.clone()).unwrap()
    }

    /// The committed rows as one `[N, F]` FP64 request.
    fn batch(expected: &Value, features: &[String]) -> FeatureBatch {
        let rows = expected["rows"].as_array().unwrap();
        let request: InferRequest = serde_json::from_value(serde_json::json!({
            "inputs": [{"name": "float_input", "shape": [rows.len(), features.len()],
                        "datatype": "FP64", "data": rows}]
        }))
        .unwrap();
        FeatureBatch::from_request(&request, &InputLayout::Columns { tensor: None }, features)
            .unwrap()
    }

    /// Every output of every committed model equals what ONNX Runtime
    /// computed for the same rows (float32 arithmetic, so within 1e-6), and
    /// the classes, labels and probabilities equal scikit-learn's.
    #[test]
    fn tract_answers_what_onnx_runtime_and_scikit_learn_answer() {
        let expected = expected();
        let features = strings(&expected["features"]);
        let batch = batch(&expected, &features);
        for (name, entry) in expected["models"].as_object().unwrap() {
            let model = load(name, &features);
            let outputs = model.infer(&batch).unwrap();
            let reference = entry["onnxruntime"].as_object().unwrap();
            assert_eq!(outputs.len(), reference.len(), "{name}");
            for output in &outputs {
                let want = &reference[&output.name];
                let shape: Vec<u64> = serde_json::from_value(want["shape"].clone()).unwrap();
                assert_eq!(output.shape, shape, "{name}/{}", output.name);
                match &output.data {
                    TensorData::Numbers(got) => {
                        let want = numbers(&want["data"]);
                        assert_eq!(got.len(), want.len());
                        for (g, w) in got.iter().zip(&want) {
                            assert!((g - w).abs() <= 1e-6, "{name}/{}: {g} vs {w}", output.name);
                        }
                    }
                    TensorData::Text(got) => assert_eq!(got, &strings(&want["data"])),
                    TensorData::Bools(_) => panic!("{name}: no boolean output expected"),
                }
            }
            if let Some(classes) = entry.get("classes") {
                let classes: Vec<String> = classes
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
                    .collect();
                assert_eq!(model.classes(), classes, "{name}");
                let probabilities = outputs.iter().find(|o| o.name == "probabilities").unwrap();
                let TensorData::Numbers(got) = &probabilities.data else {
                    panic!()
                };
                for (g, w) in got.iter().zip(numbers(&entry["sklearn"]["probabilities"])) {
                    assert!((g - w).abs() <= 1e-5, "{name}: {g} vs scikit-learn {w}");
                }
                let labels = outputs.iter().find(|o| o.name == "label").unwrap();
                let got: Vec<String> = (0..batch.rows())
                    .map(|row| match labels.data.element(row).unwrap() {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect();
                let want: Vec<String> = entry["sklearn"]["label"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
                    .collect();
                assert_eq!(got, want, "{name}");
            } else {
                assert!(model.classes().is_empty());
                let TensorData::Numbers(got) = &outputs[0].data else {
                    panic!()
                };
                for (g, w) in got.iter().zip(numbers(&entry["sklearn"]["prediction"])) {
                    assert!(
                        (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                        "{name}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_plan_answers_any_number_of_rows_and_features_are_read_by_name() {
        let expected = expected();
        let features = strings(&expected["features"]);
        let model = load("gw-logistic", &features);
        // The request's columns in another order than the model's.
        let request: InferRequest = serde_json::from_value(serde_json::json!({
            "inputs": [
                {"name": "tickets", "shape": [1], "datatype": "FP64", "data": [expected["rows"][5][2]]},
                {"name": "usage", "shape": [1], "datatype": "FP64", "data": [expected["rows"][5][0]]},
                {"name": "tenure", "shape": [1], "datatype": "FP64", "data": [expected["rows"][5][1]]},
            ]
        }))
        .unwrap();
        let batch =
            FeatureBatch::from_request(&request, &InputLayout::PerFeature, &features).unwrap();
        let outputs = model.infer(&batch).unwrap();
        let probabilities = outputs.iter().find(|o| o.name == "probabilities").unwrap();
        assert_eq!(probabilities.shape, vec![1, 2]);
        let want =
            numbers(&expected["models"]["gw-logistic"]["onnxruntime"]["probabilities"]["data"]);
        let TensorData::Numbers(got) = &probabilities.data else {
            panic!()
        };
        assert!((got[1] - want[11]).abs() <= 1e-6);
        // Metadata: the ONNX names, datatypes and shapes.
        let metadata = model.outputs();
        assert_eq!(metadata[0].name, "label");
        assert_eq!(metadata[0].datatype, Datatype::Bytes);
        assert_eq!(metadata[1].shape, vec![-1, 2]);
        assert_eq!(model.operators(), ["LinearClassifier"]);
    }

    #[test]
    fn models_it_cannot_serve_are_refused_with_the_reason() {
        let expected = expected();
        let features = strings(&expected["features"]);
        let bytes = std::fs::read(fixtures().join("gw-forest.onnx")).unwrap();
        let wrong_width = OnnxModel::from_bytes(&bytes, features[..2].to_vec()).unwrap_err();
        assert!(
            wrong_width.contains("takes 3 columns, 2 features"),
            "{wrong_width}"
        );
        let garbage = OnnxModel::from_bytes(b"not a model", features.clone()).unwrap_err();
        assert!(garbage.contains("not an ONNX model"), "{garbage}");
        // The same graph with its classifier node renamed ZipMap.
        let mut proto = tract_onnx::onnx()
            .proto_model_for_read(&mut &bytes[..])
            .unwrap();
        proto.graph.as_mut().unwrap().node[0].op_type = "ZipMap".into();
        let encoded = prost::Message::encode_to_vec(&proto);
        let zipmap = OnnxModel::from_bytes(&encoded, features).unwrap_err();
        assert!(zipmap.contains("zipmap=False"), "{zipmap}");
    }
}
