//! A served model: its features, how its inputs and outputs map to them,
//! and the runtime of each version.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::features::{FeatureBatch, InputLayout};
use crate::linear::LinearModel;
use crate::onnx::OnnxModel;
use crate::outputs::OutputMapping;
use crate::protocol::{Datatype, InferRequest, InferResponse, ModelMetadata, TensorMetadata};
use crate::proxy::Proxy;
use crate::Error;

/// What computes a version's answers.
#[derive(Debug)]
pub enum Runtime {
    /// A `tidewatch.linear.v1` model, in process.
    Linear(LinearModel),
    /// An ONNX model, in process (tract).
    Onnx(OnnxModel),
    /// An upstream Open Inference Protocol server.
    Proxy(Proxy),
}

impl Runtime {
    /// The runtime's name in model metadata.
    pub fn platform(&self) -> &'static str {
        match self {
            Runtime::Linear(_) => "tidewatch_linear",
            Runtime::Onnx(_) => "onnx",
            Runtime::Proxy(_) => "proxy",
        }
    }

    /// Computes the answer to `request`, whose features are `batch`.
    pub async fn infer(
        &self,
        request: &InferRequest,
        batch: &FeatureBatch,
    ) -> Result<InferResponse, Error> {
        match self {
            Runtime::Linear(model) => {
                in_process(request, model.infer(batch).map_err(Error::BadRequest)?)
            }
            Runtime::Onnx(model) => {
                in_process(request, model.infer(batch).map_err(Error::BadRequest)?)
            }
            Runtime::Proxy(proxy) => proxy.infer(request).await,
        }
    }

    /// Whether the version can answer now.
    pub async fn ready(&self) -> bool {
        match self {
            Runtime::Linear(_) | Runtime::Onnx(_) => true,
            Runtime::Proxy(proxy) => proxy.ready().await,
        }
    }
}

/// An in-process runtime's answer: its outputs, those the request names
/// when it names some.
fn in_process(
    request: &InferRequest,
    mut outputs: Vec<crate::protocol::Tensor>,
) -> Result<InferResponse, Error> {
    if let Some(wanted) = &request.outputs {
        outputs.retain(|output| wanted.iter().any(|w| w.name == output.name));
    }
    Ok(InferResponse {
        model_name: String::new(),
        model_version: None,
        id: None,
        parameters: None,
        outputs,
    })
}

/// One version: what computes its answers and how to read them.
#[derive(Debug)]
pub struct ServedVersion {
    /// Its runtime.
    pub runtime: Runtime,
    /// Where its predictions are in its outputs.
    pub outputs: OutputMapping,
}

/// A model the gateway serves.
#[derive(Debug)]
pub struct ServedModel {
    /// Its name (the monitored model's name).
    pub name: String,
    /// Its features, in the order of the `columns` layout.
    pub features: Vec<String>,
    /// How requests carry the features.
    pub layout: InputLayout,
    /// version → its runtime and output mapping.
    pub versions: BTreeMap<String, Arc<ServedVersion>>,
}

impl ServedModel {
    /// The runtime of `version`.
    pub fn version(&self, version: &str) -> Result<&Arc<ServedVersion>, Error> {
        self.versions.get(version).ok_or_else(|| {
            Error::NotFound(format!("model `{}` has no version `{version}`", self.name))
        })
    }

    /// Protocol metadata, as answered for `version`.
    pub fn metadata(&self, version: &str) -> Result<ModelMetadata, Error> {
        let runtime = &self.version(version)?.runtime;
        let inputs = match &self.layout {
            InputLayout::PerFeature => self
                .features
                .iter()
                .map(|feature| TensorMetadata {
                    name: feature.clone(),
                    datatype: Datatype::Fp64,
                    shape: vec![-1],
                })
                .collect(),
            InputLayout::Columns { tensor } => vec![TensorMetadata {
                name: tensor.clone().unwrap_or_else(|| "input".into()),
                datatype: Datatype::Fp64,
                shape: vec![-1, self.features.len() as i64],
            }],
        };
        let outputs = match runtime {
            Runtime::Linear(model) => model.outputs(),
            Runtime::Onnx(model) => model.outputs(),
            Runtime::Proxy(_) => Vec::new(),
        };
        Ok(ModelMetadata {
            name: self.name.clone(),
            versions: self.versions.keys().cloned().collect(),
            platform: runtime.platform().into(),
            inputs,
            outputs,
        })
    }
}
