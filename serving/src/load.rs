//! Loading a version's model file into an in-process runtime: at start-up
//! from `[[serving.models]] versions` (see [`crate::config`]), and at run
//! time for a version the registry names by its `source` (see
//! [`crate::follow`]). Both go through [`LoadContext::load`], so a model
//! the registry hands over is checked exactly as a configured one.
//!
//! A registered version's runtime comes from its tag `tidewatch.runtime`
//! (`onnx` or `linear`) or else from its file's extension (`.onnx`,
//! `.json`); its `source` is an absolute path or a `file://` URI, or an
//! MLflow model directory holding one `model.onnx` (what
//! `mlflow.onnx.log_model` writes). Remote sources are refused, naming
//! the source.

use std::path::{Path, PathBuf};

use detectors::spec::Task;

use crate::linear::LinearModel;
use crate::model::{Runtime, ServedVersion};
use crate::onnx::OnnxModel;
use crate::outputs::OutputMapping;

/// The version tag naming a registered version's runtime.
pub const RUNTIME_TAG: &str = "tidewatch.runtime";

/// An in-process runtime a file is loaded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRuntime {
    /// `tidewatch.linear.v1` JSON.
    Linear,
    /// ONNX (tract).
    Onnx,
}

impl FileRuntime {
    /// `linear` or `onnx`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "linear" => Some(FileRuntime::Linear),
            "onnx" => Some(FileRuntime::Onnx),
            _ => None,
        }
    }
}

/// Why a model file was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The file is not a model of this runtime, or does not fit the model.
    #[error("{0}")]
    Model(String),
    /// The model's classes are not the configured ones.
    #[error("{configured} classes configured, the ONNX model has {model}")]
    ClassCount { configured: usize, model: usize },
}

/// What every version of one served model shares: the monitored model's
/// features and task, and how its outputs are read (as its
/// `[[serving.models]]` entry says).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadContext {
    /// The model's name.
    pub model: String,
    /// The `[[models]]` entry's features, in order.
    pub features: Vec<String>,
    /// Classification or regression.
    pub task: Task,
    /// The output holding class probabilities, if configured.
    pub probabilities_output: Option<String>,
    /// The output holding labels or values, if configured.
    pub label_output: Option<String>,
    /// Class names, if configured.
    pub classes: Vec<String>,
}

impl LoadContext {
    /// Loads `bytes` (read from `path`, named in errors) into `runtime`;
    /// `onnx_features`: the ONNX model's input columns (default: the
    /// model's features). Checks the task, the features and the classes
    /// against the model.
    pub fn load(
        &self,
        runtime: FileRuntime,
        bytes: &[u8],
        onnx_features: Option<Vec<String>>,
    ) -> Result<ServedVersion, LoadError> {
        let runtime = match runtime {
            FileRuntime::Linear => {
                let linear = LinearModel::from_json(bytes).map_err(LoadError::Model)?;
                if linear.task() != self.task {
                    return Err(LoadError::Model(format!(
                        "a {:?} model, the [[models]] entry is {:?}",
                        linear.task(),
                        self.task
                    )));
                }
                if let Some(missing) = linear
                    .features()
                    .iter()
                    .find(|f| !self.features.contains(f))
                {
                    return Err(LoadError::Model(format!(
                        "the model reads `{missing}`, not a feature of `{}`",
                        self.model
                    )));
                }
                Runtime::Linear(linear)
            }
            FileRuntime::Onnx => {
                let features = onnx_features.unwrap_or_else(|| self.features.clone());
                if let Some(missing) = features.iter().find(|f| !self.features.contains(f)) {
                    return Err(LoadError::Model(format!(
                        "`{missing}` is not a feature of `{}`",
                        self.model
                    )));
                }
                let onnx = OnnxModel::from_bytes(bytes, features).map_err(LoadError::Model)?;
                let is_classifier = !onnx.classes().is_empty();
                if is_classifier != (self.task == Task::Classification) {
                    return Err(LoadError::Model(format!(
                        "{} a classifier, the [[models]] entry is {:?}",
                        if is_classifier { "is" } else { "is not" },
                        self.task
                    )));
                }
                if !self.classes.is_empty() && self.classes.len() != onnx.classes().len() {
                    return Err(LoadError::ClassCount {
                        configured: self.classes.len(),
                        model: onnx.classes().len(),
                    });
                }
                Runtime::Onnx(onnx)
            }
        };
        let outputs = self.outputs(&runtime);
        Ok(ServedVersion { runtime, outputs })
    }

    /// How `runtime`'s outputs are read: in-process linear models name
    /// theirs; others as configured, else recognised by shape, with the
    /// configured class names, else the model's own.
    pub fn outputs(&self, runtime: &Runtime) -> OutputMapping {
        match runtime {
            Runtime::Linear(linear) => OutputMapping {
                task: self.task,
                probabilities: (self.task == Task::Classification)
                    .then(|| "probabilities".to_owned()),
                label: Some(
                    match self.task {
                        Task::Classification => crate::linear::LABEL_OUTPUT,
                        Task::Regression => crate::linear::PREDICTION_OUTPUT,
                    }
                    .to_owned(),
                ),
                classes: linear.classes().to_vec(),
            },
            Runtime::Onnx(onnx) => OutputMapping {
                task: self.task,
                probabilities: self.probabilities_output.clone(),
                label: self.label_output.clone(),
                classes: if self.classes.is_empty() {
                    onnx.classes().to_vec()
                } else {
                    self.classes.clone()
                },
            },
            Runtime::Proxy(_) => OutputMapping {
                task: self.task,
                probabilities: self.probabilities_output.clone(),
                label: self.label_output.clone(),
                classes: self.classes.clone(),
            },
        }
    }

    /// Loads a registered version from its `source` and tags (blocking:
    /// reads the file and plans the model; call it off the async workers).
    pub fn load_registered(
        &self,
        source: &str,
        tags: &[(String, String)],
    ) -> Result<ServedVersion, String> {
        let (path, runtime) = registered_file(source, tags)?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.load(runtime, &bytes, None)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The file a registered version's `source` names and the runtime it is
/// loaded into (see the module docs).
pub fn registered_file(
    source: &str,
    tags: &[(String, String)],
) -> Result<(PathBuf, FileRuntime), String> {
    let path = match source.strip_prefix("file://") {
        Some(rest) => rest,
        None if source.contains("://") || source.contains(":/") => {
            return Err(format!(
                "source `{source}`: only local files (an absolute path or a file:// URI) are loaded"
            ))
        }
        None => source,
    };
    let mut path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(format!(
            "source `{source}`: a relative path is ambiguous; register an absolute path or a file:// URI"
        ));
    }
    if path.is_dir() {
        // An MLflow model directory (mlflow.onnx.log_model): its model.onnx.
        path = path.join("model.onnx");
    }
    let tagged = tags
        .iter()
        .find(|(key, _)| key == RUNTIME_TAG)
        .map(|(_, value)| {
            FileRuntime::parse(value).ok_or_else(|| {
                format!("tag {RUNTIME_TAG} = `{value}`: the runtime is `onnx` or `linear`")
            })
        })
        .transpose()?;
    let runtime = match tagged {
        Some(runtime) => runtime,
        None => by_extension(&path).ok_or_else(|| {
            format!(
                "source `{source}`: cannot tell its runtime from the extension; tag the version {RUNTIME_TAG} = onnx or linear"
            )
        })?,
    };
    Ok((path, runtime))
}

fn by_extension(path: &Path) -> Option<FileRuntime> {
    match path.extension()?.to_str()? {
        "onnx" => Some(FileRuntime::Onnx),
        "json" => Some(FileRuntime::Linear),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(task: Task) -> LoadContext {
        LoadContext {
            model: "churn".into(),
            features: vec!["usage".into(), "age".into()],
            task,
            probabilities_output: None,
            label_output: None,
            classes: vec![],
        }
    }

    #[test]
    fn a_registered_source_names_a_local_file_and_its_runtime() {
        let tags = |runtime: &str| vec![(RUNTIME_TAG.to_owned(), runtime.to_owned())];
        assert_eq!(
            registered_file("file:///m/churn.onnx", &[]).unwrap(),
            (PathBuf::from("/m/churn.onnx"), FileRuntime::Onnx)
        );
        assert_eq!(
            registered_file("/m/churn-3.json", &[]).unwrap(),
            (PathBuf::from("/m/churn-3.json"), FileRuntime::Linear)
        );
        assert_eq!(
            registered_file("/m/churn.bin", &tags("onnx")).unwrap().1,
            FileRuntime::Onnx
        );
        for (source, why) in [
            ("s3://bucket/churn.onnx", "only local files"),
            ("models:/churn/3", "only local files"),
            ("churn.onnx", "relative path"),
            ("/m/churn.bin", "cannot tell its runtime"),
        ] {
            let error = registered_file(source, &[]).unwrap_err();
            assert!(error.contains(why), "{source}: {error}");
        }
        let error = registered_file("/m/churn.onnx", &tags("pytorch")).unwrap_err();
        assert!(error.contains("`onnx` or `linear`"), "{error}");
    }

    #[test]
    fn an_mlflow_model_directory_is_loaded_from_its_model_onnx() {
        let directory = std::env::temp_dir().join(format!("tidewatch-load-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let (path, runtime) =
            registered_file(&format!("file://{}", directory.display()), &[]).unwrap();
        assert_eq!(path, directory.join("model.onnx"));
        assert_eq!(runtime, FileRuntime::Onnx);
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn a_registered_model_is_checked_like_a_configured_one() {
        let classifier = LinearModel::classifier(
            vec!["usage".into()],
            vec!["no".into(), "yes".into()],
            vec![vec![0.5]],
            vec![0.0],
        )
        .unwrap()
        .to_json();
        let loaded = context(Task::Classification)
            .load(FileRuntime::Linear, classifier.as_bytes(), None)
            .unwrap();
        assert_eq!(loaded.outputs.classes, ["no", "yes"]);
        assert_eq!(loaded.outputs.label.as_deref(), Some("label"));
        let error = context(Task::Regression)
            .load(FileRuntime::Linear, classifier.as_bytes(), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("Classification model"), "{error}");
        let mut other = context(Task::Classification);
        other.features = vec!["age".into()];
        let error = other
            .load(FileRuntime::Linear, classifier.as_bytes(), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("reads `usage`"), "{error}");
        assert!(matches!(
            context(Task::Classification).load(FileRuntime::Onnx, b"not onnx", None),
            Err(LoadError::Model(_))
        ));
    }
}
