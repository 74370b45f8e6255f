//! The reference trainer: answers `io.tidewatch.retrain.requested` with a
//! new model version, registered with its training data and set as the
//! challenger.
//!
//! ```text
//!  request (model, version, train_window)
//!    ─▶ training set: the training sample's predictions in the window
//!       (one per request id, the requested version's when it has one)
//!       joined with their labels        [waits up to label_wait for min_rows]
//!    ─▶ trainer::fit (logistic regression / least squares, numeric features)
//!    ─▶ model_dir/<model>/<request id>/model.json      (tidewatch.linear.v1)
//!       model_dir/<model>/<request id>/training.jsonl  (the training set)
//!    ─▶ registry (MLflow API): model-versions/create with source = the model,
//!       tags tidewatch.reference = the training set (its reference profile
//!       is built from it), tidewatch.runtime = linear,
//!       tidewatch.retrain_request = the request id, tidewatch.train_window
//!    ─▶ alias `challenger` → the new version
//!    ─▶ io.tidewatch.retrain.completed (or .failed, with the reason)
//! ```
//!
//! Why the training sample (see the `ingest` crate) rather than reading
//! the bus back by timestamp: it holds the features, outputs and labels
//! already joined, it works without a broker (the demo's in-process bus),
//! and the same rows serve the promotion policy's comparison of versions
//! on the same requests. Its price: only `windows.sample_rate` of the
//! traffic trains (10 % by default), and only within its retention.
//!
//! Idempotent: a request whose version is already registered (found by
//! its `tidewatch.retrain_request` tag) is answered with that version
//! again, so a request read twice registers one version; its alias is set
//! again only if the first answer stopped before setting it (the tag
//! `tidewatch.retrain_aliased` records that it did), so a version promoted
//! since is not made the challenger again.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use detectors::spec::{FeatureKind, ModelSpec, Task};
use registry::client::MlflowClient;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use store::Store;

/// `[trainer]` as written.
///
/// ```toml
/// [trainer]                                # answer retrain requests (needs [kafka] and [alerts.retrain] topic)
/// registry_url = "http://127.0.0.1:8080"   # the MLflow-compatible registry to register in
/// token_env = "TIDEWATCH_API_TOKEN"        # its bearer token (optional)
/// model_dir = "models"                     # where models and training sets go (relative to this file)
/// min_rows = 200                           # labelled rows needed
/// max_rows = 100000                        # sampled predictions read at most
/// label_wait = "1h"                        # how long to wait for min_rows labelled rows
/// alias = "challenger"                     # set on the new version
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrainer {
    pub registry_url: String,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default = "default_model_dir")]
    pub model_dir: PathBuf,
    #[serde(default = "default_min_rows")]
    pub min_rows: usize,
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    #[serde(default = "default_label_wait", with = "humantime_serde")]
    pub label_wait: Duration,
    #[serde(default = "default_alias")]
    pub alias: String,
}

fn default_model_dir() -> PathBuf {
    PathBuf::from("models")
}
fn default_min_rows() -> usize {
    200
}
fn default_max_rows() -> u64 {
    100_000
}
fn default_label_wait() -> Duration {
    Duration::from_secs(3600)
}
fn default_alias() -> String {
    "challenger".into()
}

/// A `[trainer]` setting that is not valid: its key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSetting {
    pub key: String,
    pub message: String,
}

/// Validated `[trainer]`: how to train, where requests come from and
/// acknowledgements go.
#[derive(Debug, Clone)]
pub struct TrainerConfig {
    pub settings: TrainerSettings,
    /// `[alerts.retrain] topic`.
    pub request_topic: String,
    /// `[alerts.retrain] ack_topic`.
    pub ack_topic: String,
}

impl RawTrainer {
    /// Validates the section against the retrain topics it serves
    /// (`request_topic` and `ack_topic` of `[alerts.retrain]`); relative
    /// paths are resolved against `base_dir`.
    pub fn validate(
        self,
        base_dir: &Path,
        request_topic: Option<&str>,
        ack_topic: Option<&str>,
    ) -> Result<TrainerConfig, InvalidSetting> {
        let invalid = |key: &str, message: String| InvalidSetting {
            key: key.into(),
            message,
        };
        let (Some(request_topic), Some(ack_topic)) = (request_topic, ack_topic) else {
            return Err(invalid(
                "registry_url",
                "the trainer answers [alerts.retrain] topic on [kafka] and acknowledges on its ack_topic: set both"
                    .into(),
            ));
        };
        let registry = MlflowClient::from_settings(&self.registry_url, self.token_env.as_deref())
            .map_err(|(key, message)| invalid(key, message))?;
        if self.min_rows < 2 {
            return Err(invalid("min_rows", "at least 2".into()));
        }
        if self.max_rows < self.min_rows as u64 {
            return Err(invalid("max_rows", "at least min_rows".into()));
        }
        registry::names::alias(&self.alias).map_err(|e| invalid("alias", e.to_string()))?;
        Ok(TrainerConfig {
            settings: TrainerSettings {
                registry,
                model_dir: base_dir.join(self.model_dir),
                min_rows: self.min_rows,
                max_rows: self.max_rows,
                label_wait: self.label_wait,
                poll: Duration::from_secs(10).min(self.label_wait.max(Duration::from_millis(100))),
                alias: self.alias,
            },
            request_topic: request_topic.to_owned(),
            ack_topic: ack_topic.to_owned(),
        })
    }
}

/// The version tag naming the retrain request a version answers.
pub const REQUEST_TAG: &str = "tidewatch.retrain_request";
/// The version tag with the training window (`start_ms/end_ms`).
pub const WINDOW_TAG: &str = "tidewatch.train_window";
/// The version tag saying which alias the trainer set on it (once set, a
/// request read again leaves the aliases alone).
pub const ALIASED_TAG: &str = "tidewatch.retrain_aliased";

/// How the trainer works (`[trainer]`).
#[derive(Debug, Clone)]
pub struct TrainerSettings {
    /// The registry versions are registered in.
    pub registry: MlflowClient,
    /// Where models and training sets are written.
    pub model_dir: PathBuf,
    /// Labelled rows needed to train.
    pub min_rows: usize,
    /// Sampled predictions read at most.
    pub max_rows: u64,
    /// How long to wait for `min_rows` labelled rows.
    pub label_wait: Duration,
    /// How often to look again while waiting.
    pub poll: Duration,
    /// The alias set on the new version.
    pub alias: String,
}

/// A retrain request, as the monitor emits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrainRequest {
    pub request_id: String,
    pub model: String,
    /// The version whose alert asked for retraining.
    pub version: String,
    /// The window to train on, ms.
    pub start_ms: i64,
    pub end_ms: i64,
}

impl RetrainRequest {
    /// Reads a `io.tidewatch.retrain.requested` CloudEvent; `None` for
    /// another type or a malformed one.
    pub fn from_cloud_event(document: &Value) -> Option<Self> {
        if document.get("type")?.as_str()? != alerting::notification::RETRAIN_REQUESTED {
            return None;
        }
        let data = document.get("data")?;
        let window = data.get("train_window")?;
        Some(Self {
            request_id: data.get("request_id")?.as_str()?.to_owned(),
            model: data.get("model")?.as_str()?.to_owned(),
            version: data.get("version")?.as_str()?.to_owned(),
            start_ms: window.get("start_ms")?.as_i64()?,
            end_ms: window.get("end_ms")?.as_i64()?,
        })
    }
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Version `version` was registered (now or before) and set as the
    /// challenger.
    Completed {
        version: String,
        rows: usize,
        source: String,
    },
    /// No version: why.
    Failed { reason: String },
}

impl Outcome {
    /// The acknowledgement: `io.tidewatch.retrain.completed` or `.failed`
    /// (the retrain events' envelope; `data.request_id` clears the
    /// monitor's debounce).
    pub fn ack_event(&self, request: &RetrainRequest, time_ms: i64) -> Value {
        let (kind, data) = match self {
            Outcome::Completed {
                version,
                rows,
                source,
            } => (
                "io.tidewatch.retrain.completed",
                json!({
                    "request_id": request.request_id, "model": request.model,
                    "version": version, "trained_from": request.version,
                    "rows": rows, "source": source,
                    "train_window": {"start_ms": request.start_ms, "end_ms": request.end_ms},
                }),
            ),
            Outcome::Failed { reason } => (
                "io.tidewatch.retrain.failed",
                json!({
                    "request_id": request.request_id, "model": request.model,
                    "version": request.version, "reason": reason,
                }),
            ),
        };
        registry::events::cloud_event(
            kind,
            "tidewatch/trainer",
            &format!(
                "{}-{}",
                request.request_id,
                kind.rsplit('.').next().unwrap_or("")
            ),
            time_ms,
            &format!("{}/{}", request.model, request.version),
            data,
        )
    }
}

/// The labelled training set of `request`: the sample for the model
/// (numeric features) and every row as a JSON object (all features, the
/// output and `actual.label`) for the training-data file.
pub async fn training_set(
    store: &Store,
    spec: &ModelSpec,
    request: &RetrainRequest,
    max_rows: u64,
) -> store::Result<(trainer::Sample, Vec<Map<String, Value>>)> {
    let predictions = store
        .sampled_predictions(
            &request.model,
            None,
            request.start_ms,
            request.end_ms,
            max_rows,
        )
        .await?;
    // One row per request id: the requested version's when it has one.
    let mut by_id: std::collections::BTreeMap<String, store::SampledPrediction> =
        Default::default();
    for prediction in predictions {
        let replace = by_id.get(&prediction.prediction_id).is_none_or(|held| {
            held.model_version != request.version && prediction.model_version == request.version
        });
        if replace {
            by_id.insert(prediction.prediction_id.clone(), prediction);
        }
    }
    let ids: Vec<String> = by_id.keys().cloned().collect();
    let labels: std::collections::BTreeMap<String, store::SampledLabel> = store
        .sampled_labels(&request.model, &ids)
        .await?
        .into_iter()
        .map(|label| (label.prediction_id.clone(), label))
        .collect();
    let configured: Vec<&detectors::spec::FeatureSpec> = spec
        .series()
        .take(spec.configured_feature_count())
        .collect();
    let numeric: Vec<String> = configured
        .iter()
        .filter(|f| f.kind == FeatureKind::Numeric)
        .map(|f| f.name.clone())
        .collect();
    let mut rows = Vec::new();
    let mut records = Vec::new();
    let mut classes = Vec::new();
    let mut values = Vec::new();
    for (id, prediction) in &by_id {
        let Some(label) = labels.get(id) else {
            continue;
        };
        let features: Map<String, Value> = serde_json::from_str(&prediction.features)
            .ok()
            .and_then(|value: Value| value.as_object().cloned())
            .unwrap_or_default();
        match spec.task() {
            Task::Classification => classes.push(label.label.clone()),
            Task::Regression => match label.value.or_else(|| label.label.parse().ok()) {
                Some(value) => values.push(value),
                None => continue,
            },
        }
        rows.push(
            numeric
                .iter()
                .map(|name| {
                    features
                        .get(name)
                        .and_then(Value::as_f64)
                        .unwrap_or(f64::NAN)
                })
                .collect(),
        );
        let mut record = Map::new();
        for feature in &configured {
            record.insert(
                feature.name.clone(),
                features.get(&feature.name).cloned().unwrap_or(Value::Null),
            );
        }
        if let Some(score) = prediction.score {
            record.insert("prediction.score".into(), json!(score));
        }
        if !prediction.class.is_empty() {
            record.insert("prediction.class".into(), json!(prediction.class));
        }
        record.insert(
            "actual.label".into(),
            match label.value {
                Some(value) if spec.task() == Task::Regression => json!(value),
                _ => json!(label.label),
            },
        );
        records.push(record);
    }
    let labels = match spec.task() {
        Task::Classification => trainer::Labels::Classes(classes),
        Task::Regression => trainer::Labels::Values(values),
    };
    Ok((
        trainer::Sample {
            features: numeric,
            rows,
            labels,
        },
        records,
    ))
}

/// Answers `request` (see the module docs). Registry and store failures
/// other than a missing answer end in [`Outcome::Failed`] with the reason.
pub async fn handle(
    store: &Store,
    spec: &ModelSpec,
    settings: &TrainerSettings,
    request: &RetrainRequest,
) -> Outcome {
    match answer(store, spec, settings, request).await {
        Ok(outcome) => outcome,
        Err(reason) => Outcome::Failed { reason },
    }
}

async fn answer(
    store: &Store,
    spec: &ModelSpec,
    settings: &TrainerSettings,
    request: &RetrainRequest,
) -> Result<Outcome, String> {
    let registry = &settings.registry;
    if let Some(found) = registered_for(registry, request).await? {
        // Read again: the alias is set only if the first answer did not
        // get that far (the version may have been promoted since).
        if !found.aliased {
            set_alias(registry, request, &settings.alias, &found.version).await?;
        }
        return Ok(Outcome::Completed {
            version: found.version,
            rows: 0,
            source: found.source,
        });
    }
    let started = std::time::Instant::now();
    let (sample, records) = loop {
        let (sample, records) = training_set(store, spec, request, settings.max_rows)
            .await
            .map_err(|e| format!("reading the training sample: {e}"))?;
        if sample.rows.len() >= settings.min_rows {
            break (sample, records);
        }
        if started.elapsed() >= settings.label_wait {
            return Ok(Outcome::Failed {
                reason: format!(
                    "{} labelled rows in the training sample between {} and {} (ms), at least {} are needed (waited {:?} for labels)",
                    sample.rows.len(),
                    request.start_ms,
                    request.end_ms,
                    settings.min_rows,
                    settings.label_wait
                ),
            });
        }
        tokio::time::sleep(settings.poll).await;
    };
    let rows = sample.rows.len();
    let fit_settings = trainer::Settings {
        min_rows: settings.min_rows,
        ..trainer::Settings::default()
    };
    let fitted = match tokio::task::spawn_blocking(move || trainer::fit(&sample, &fit_settings))
        .await
        .map_err(|e| format!("training task: {e}"))?
    {
        Ok(fitted) => fitted,
        Err(error) => {
            return Ok(Outcome::Failed {
                reason: error.to_string(),
            })
        }
    };
    let model = match spec.task() {
        Task::Classification => serving::linear::LinearModel::classifier(
            fitted.features.clone(),
            fitted.classes.clone(),
            fitted.coefficients.clone(),
            fitted.intercepts.clone(),
        ),
        Task::Regression => serving::linear::LinearModel::regression(
            fitted.features.clone(),
            fitted.coefficients[0].clone(),
            fitted.intercepts[0],
        ),
    }?;
    // The reference describes the new version: its outputs on its own
    // training rows replace the serving version's recorded ones.
    let mut records = records;
    for record in &mut records {
        let row: Vec<f64> = model
            .features()
            .iter()
            .map(|name| record.get(name).and_then(Value::as_f64).unwrap_or(f64::NAN))
            .collect();
        let (score, class) = model.predict_row(&row);
        record.remove("prediction.score");
        record.remove("prediction.class");
        if let Some(score) = score.filter(|s| s.is_finite()) {
            record.insert("prediction.score".into(), json!(score));
        }
        if let Some(class) = class.filter(|_| row.iter().all(|v| v.is_finite())) {
            record.insert("prediction.class".into(), json!(class));
        }
    }
    let directory = settings
        .model_dir
        .join(&request.model)
        .join(file_name(&request.request_id));
    let (model_path, data_path) = write_files(&directory, &model.to_json(), &records)
        .await
        .map_err(|e| format!("writing {}: {e}", directory.display()))?;
    let source = format!("file://{}", model_path.display());
    let version = register(registry, request, &source, &data_path, rows).await?;
    set_alias(registry, request, &settings.alias, &version).await?;
    tracing::info!(request = %request.request_id, model = %request.model, version, rows, "retrained and registered");
    Ok(Outcome::Completed {
        version,
        rows,
        source,
    })
}

/// A request id as a file name (ids are hex, but any is made safe).
fn file_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes the model and the training set; their absolute paths.
async fn write_files(
    directory: &Path,
    model: &str,
    records: &[Map<String, Value>],
) -> std::io::Result<(PathBuf, PathBuf)> {
    tokio::fs::create_dir_all(directory).await?;
    let directory = tokio::fs::canonicalize(directory).await?;
    let model_path = directory.join("model.json");
    let data_path = directory.join("training.jsonl");
    let mut lines = String::new();
    for record in records {
        lines.push_str(&Value::Object(record.clone()).to_string());
        lines.push('\n');
    }
    // Written to temporary names first: a crash leaves no half file under
    // the names the registry points at.
    for (path, text) in [(&model_path, model), (&data_path, lines.as_str())] {
        let partial = path.with_extension("partial");
        tokio::fs::write(&partial, text).await?;
        tokio::fs::rename(&partial, path).await?;
    }
    Ok((model_path, data_path))
}

/// A version already registered for a request.
struct Registered {
    version: String,
    source: String,
    /// Whether its alias was set (its [`ALIASED_TAG`]).
    aliased: bool,
}

/// The version already registered for `request`.
async fn registered_for(
    registry: &MlflowClient,
    request: &RetrainRequest,
) -> Result<Option<Registered>, String> {
    let filter = format!(
        "name = '{}' and tags.`{REQUEST_TAG}` = '{}'",
        request.model.replace('\'', "\\'"),
        request.request_id.replace('\'', "\\'")
    );
    let answer = registry
        .get_ok("model-versions/search", &[("filter", filter.as_str())])
        .await
        .map_err(|e| format!("searching the registry: {e}"))?;
    Ok(answer["model_versions"]
        .as_array()
        .and_then(|versions| versions.first())
        .and_then(|version| {
            Some(Registered {
                version: version["version"].as_str()?.to_owned(),
                source: version["source"].as_str().unwrap_or_default().to_owned(),
                aliased: version["tags"]
                    .as_array()
                    .is_some_and(|tags| tags.iter().any(|tag| tag["key"] == ALIASED_TAG)),
            })
        }))
}

/// Registers the new version (creating the model if needed); its number.
async fn register(
    registry: &MlflowClient,
    request: &RetrainRequest,
    source: &str,
    data: &Path,
    rows: usize,
) -> Result<String, String> {
    let (status, answer) = registry
        .post("registered-models/create", &json!({"name": request.model}))
        .await
        .map_err(|e| format!("registry: {e}"))?;
    if !(200..300).contains(&status) && answer["error_code"] != "RESOURCE_ALREADY_EXISTS" {
        return Err(format!(
            "registry: registered-models/create: {status}: {answer}"
        ));
    }
    let tag = |key: &str, value: String| json!({"key": key, "value": value});
    let answer = registry
        .post_ok(
            "model-versions/create",
            &json!({
                "name": request.model,
                "source": source,
                "description": format!(
                    "Trained by Tidewatch on {rows} labelled rows of the training sample, answering retrain request {} of version {}",
                    request.request_id, request.version
                ),
                "tags": [
                    tag(registry::store::REFERENCE_TAG, format!("file://{}", data.display())),
                    tag(serving::load::RUNTIME_TAG, "linear".into()),
                    tag(REQUEST_TAG, request.request_id.clone()),
                    tag(WINDOW_TAG, format!("{}/{}", request.start_ms, request.end_ms)),
                ],
            }),
        )
        .await
        .map_err(|e| format!("registry: {e}"))?;
    answer["model_version"]["version"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("registry: model-versions/create answered no version: {answer}"))
}

/// Sets `alias` on the new version, then tags it [`ALIASED_TAG`] so that
/// the request read again does not move the alias back.
async fn set_alias(
    registry: &MlflowClient,
    request: &RetrainRequest,
    alias: &str,
    version: &str,
) -> Result<(), String> {
    registry
        .post_ok(
            "registered-models/alias",
            &json!({"name": request.model, "alias": alias, "version": version}),
        )
        .await
        .map_err(|e| format!("registry: setting {alias}: {e}"))?;
    registry
        .post_ok(
            "model-versions/set-tag",
            &json!({"name": request.model, "version": version, "key": ALIASED_TAG, "value": alias}),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("registry: tagging version {version}: {e}"))
}

/// Requests read from the topic at once.
const REQUEST_BATCH: usize = 16;
/// Wait between two attempts to publish an acknowledgement.
const ACK_RETRY: Duration = Duration::from_secs(2);

/// Answers every request of `requests` (`config.request_topic`: on the
/// broker read from its beginning at each start, answered requests being
/// found in the registry and acknowledged again, which the monitor
/// ignores; or the in-process bus) one at a time, each acknowledged on
/// `config.ack_topic`, until `shutdown` resolves.
pub async fn run(
    requests: crate::bus::Feed,
    config: TrainerConfig,
    store: Store,
    models: Vec<ModelSpec>,
    bus: Arc<dyn alerting::delivery::Bus>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ingest::Error> {
    let on_batch = |payloads: Vec<Vec<u8>>| {
        let (store, models, bus, config) =
            (store.clone(), models.clone(), bus.clone(), config.clone());
        async move {
            for payload in payloads {
                let Some(request) = serde_json::from_slice::<Value>(&payload)
                    .ok()
                    .and_then(|document| RetrainRequest::from_cloud_event(&document))
                else {
                    continue;
                };
                let outcome = match models.iter().find(|spec| spec.name() == request.model) {
                    Some(spec) => handle(&store, spec, &config.settings, &request).await,
                    None => Outcome::Failed {
                        reason: format!("`{}` is not a [[models]] entry here", request.model),
                    },
                };
                if let Outcome::Failed { reason } = &outcome {
                    tracing::warn!(request = %request.request_id, model = %request.model, reason, "retraining failed");
                }
                let now = ingest::finalize::now_millis() as i64;
                let ack = outcome.ack_event(&request, now);
                if let Outcome::Completed { version, .. } = &outcome {
                    // For the timeline (recorded again on a replay: one row).
                    let recorded = crate::lifecycle::record_decision(
                        &store,
                        store::VersionEventKind::Trained,
                        &request.model,
                        version,
                        ack["id"].as_str().unwrap_or_default(),
                        now,
                        &ack["data"],
                    )
                    .await;
                    if let Err(error) = recorded {
                        tracing::warn!(%error, "the training was not recorded in the timeline");
                    }
                }
                alerting::delivery::publish_until_sent(
                    bus.as_ref(),
                    &config.ack_topic,
                    &request.model,
                    &ack,
                    ACK_RETRY,
                )
                .await;
            }
        }
    };
    requests.follow(REQUEST_BATCH, on_batch, shutdown).await
}
