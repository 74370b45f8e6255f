//! An adapter for KServe's payload logger: KServe posts every request and
//! every response of an InferenceService as a binary-mode CloudEvent; this
//! endpoint joins the two halves of each exchange and writes the prediction
//! events, so a team on KServe gets Tidewatch's version-aware monitoring
//! without changing its serving path.
//!
//! - `ce-type` is `org.kubeflow.serving.inference.request` or
//!   `org.kubeflow.serving.inference.response`; both halves share `ce-id`
//!   (the request id, the events' `prediction_id`); `ce-inferenceservicename`
//!   picks the configured service, `ce-namespace` may restrict it,
//!   `ce-endpoint` (`default` or `canary`) may name the version, `ce-time`
//!   is the event time.
//! - Bodies are V2 (`inputs` / `outputs`, the response's `model_version`) or
//!   V1 (`instances` / `predictions`).
//! - The version is the one configured for the endpoint, else the
//!   response's `model_version`; an exchange with neither is dropped and
//!   counted.
//! - A half waits for the other at most `max_wait`, and at most
//!   `max_pending` halves wait (the oldest is dropped first when full):
//!   both dropped and counted in `tidewatch_serving_adapter_events_total`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::features::{FeatureBatch, InputLayout};
use crate::log::{Exchange, InferenceLog};
use crate::outputs::OutputMapping;
use crate::pairing::{Half, Paired, Pairing};
use crate::protocol::{Datatype, InferRequest, InferResponse, Tensor, TensorData};
use crate::telemetry::Telemetry;

/// `ce-type` of a logged request.
pub const REQUEST_TYPE: &str = "org.kubeflow.serving.inference.request";
/// `ce-type` of a logged response.
pub const RESPONSE_TYPE: &str = "org.kubeflow.serving.inference.response";

/// One InferenceService whose logs are read.
#[derive(Debug, Clone)]
pub struct KserveService {
    /// `ce-inferenceservicename`.
    pub inference_service: String,
    /// Only events of this namespace, when set.
    pub namespace: Option<String>,
    /// The Tidewatch model its predictions are logged for.
    pub model: String,
    /// Its features, in the `columns` layout's order.
    pub features: Vec<String>,
    /// How V2 requests carry them.
    pub layout: InputLayout,
    /// Where its predictions are in the outputs.
    pub outputs: OutputMapping,
    /// `ce-endpoint` → version.
    pub versions: BTreeMap<String, String>,
}

/// One half of an exchange, waiting or just arrived.
#[derive(Debug)]
struct Waiting {
    body: Bytes,
    service: usize,
    endpoint: Option<String>,
    time_ms: Option<i64>,
}

/// The adapter's state.
pub struct KserveAdapter {
    services: Vec<KserveService>,
    pending: Mutex<Pairing<Waiting>>,
    log: InferenceLog,
    telemetry: Telemetry,
}

impl KserveAdapter {
    /// Reads the logs of `services`, writing to `log`.
    pub fn new(
        services: Vec<KserveService>,
        max_pending: usize,
        max_wait: Duration,
        log: InferenceLog,
        telemetry: Telemetry,
    ) -> Self {
        Self {
            services,
            pending: Mutex::new(Pairing::new(max_pending, max_wait)),
            log,
            telemetry,
        }
    }

    /// Halves waiting for their other half.
    pub fn waiting(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Takes one CloudEvent; `Ok` with what became of it.
    pub fn receive(&self, headers: &HeaderMap, body: Bytes) -> Result<&'static str, String> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let half = match header("ce-type").as_deref() {
            Some(REQUEST_TYPE) => Half::Request,
            Some(RESPONSE_TYPE) => Half::Response,
            Some(other) => {
                return Err(format!(
                    "ce-type `{other}` is not an inference request or response"
                ))
            }
            None => return Err("no ce-type header: not a binary-mode CloudEvent".into()),
        };
        let id = header("ce-id")
            .filter(|id| !id.is_empty())
            .ok_or("no ce-id header")?;
        let name = header("ce-inferenceservicename").unwrap_or_default();
        let namespace = header("ce-namespace");
        let Some(service) = self.services.iter().position(|s| {
            s.inference_service == name
                && s.namespace
                    .as_ref()
                    .is_none_or(|n| Some(n) == namespace.as_ref())
        }) else {
            self.telemetry.adapter_event("kserve", "unknown_service");
            return Ok("unknown_service");
        };
        let time_ms = header("ce-time")
            .and_then(|time| chrono::DateTime::parse_from_rfc3339(&time).ok())
            .map(|time| time.timestamp_millis());
        let waiting = Waiting {
            body,
            service,
            endpoint: header("ce-endpoint"),
            time_ms,
        };
        let mut dropped = Vec::new();
        let paired = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .offer(id.clone(), half, waiting, Instant::now(), |why, _| {
                dropped.push(why)
            });
        for why in dropped {
            self.telemetry.adapter_event("kserve", why.as_str());
        }
        let (request, response) = match paired {
            Paired::Waiting => {
                self.telemetry.adapter_event("kserve", "waiting");
                return Ok("waiting");
            }
            Paired::Duplicate(_) => {
                // The same half twice (a redelivery): the newer is kept.
                self.telemetry.adapter_event("kserve", "duplicate");
                return Ok("duplicate");
            }
            Paired::Joined { request, response } => (request, response),
        };
        match self.log_exchange(&id, &request, &response) {
            Ok(()) => {
                self.telemetry.adapter_event("kserve", "joined");
                Ok("joined")
            }
            Err(message) => {
                self.telemetry.adapter_event("kserve", "undecodable");
                Err(message)
            }
        }
    }

    fn log_exchange(&self, id: &str, request: &Waiting, response: &Waiting) -> Result<(), String> {
        let service = &self.services[request.service];
        let request_body: Value =
            serde_json::from_slice(&request.body).map_err(|e| format!("request body: {e}"))?;
        let response_body: Value =
            serde_json::from_slice(&response.body).map_err(|e| format!("response body: {e}"))?;
        let features = if request_body.get("inputs").is_some() {
            let request: InferRequest =
                serde_json::from_value(request_body).map_err(|e| format!("V2 request: {e}"))?;
            FeatureBatch::from_request(&request, &service.layout, &service.features)?
        } else if let Some(Value::Array(instances)) = request_body.get("instances") {
            FeatureBatch::from_json_rows(instances, &service.features)?
        } else {
            return Err("the request has neither `inputs` (V2) nor `instances` (V1)".into());
        };
        let (answer, answered_version) = if response_body.get("outputs").is_some() {
            let response: InferResponse =
                serde_json::from_value(response_body).map_err(|e| format!("V2 response: {e}"))?;
            let version = response.model_version.clone();
            (response, version)
        } else if let Some(Value::Array(predictions)) = response_body.get("predictions") {
            (v1_response(predictions)?, None)
        } else {
            return Err("the response has neither `outputs` (V2) nor `predictions` (V1)".into());
        };
        let endpoint = request.endpoint.as_ref().or(response.endpoint.as_ref());
        let version = endpoint
            .and_then(|endpoint| service.versions.get(endpoint).cloned())
            .or(answered_version);
        let Some(version) = version else {
            self.telemetry.adapter_event("kserve", "no_version");
            return Err(format!(
                "no version: the response names no model_version and endpoint {endpoint:?} is not mapped"
            ));
        };
        let predictions = service.outputs.predictions(&answer, features.rows())?;
        self.log.record_exchange(&Exchange {
            model: &service.model,
            version: &version,
            id,
            features: &features,
            predictions: &predictions,
            request_ms: request.time_ms,
            response_ms: response.time_ms,
        });
        Ok(())
    }
}

/// A V1 `predictions` array as a one-output response: scalars `[N]`
/// (labels or values), arrays `[N, C]` (class probabilities).
fn v1_response(predictions: &[Value]) -> Result<InferResponse, String> {
    let rows = predictions.len() as u64;
    let output = match predictions.first() {
        Some(Value::Array(first)) => {
            let width = first.len();
            let mut data = Vec::with_capacity(predictions.len() * width);
            for row in predictions {
                let values = row
                    .as_array()
                    .filter(|v| v.len() == width)
                    .ok_or("ragged predictions")?;
                for value in values {
                    data.push(value.as_f64().ok_or("probabilities must be numbers")?);
                }
            }
            Tensor {
                name: "predictions".into(),
                shape: vec![rows, width as u64],
                datatype: Datatype::Fp64,
                parameters: None,
                data: TensorData::Numbers(data),
            }
        }
        Some(Value::String(_)) => Tensor {
            name: "predictions".into(),
            shape: vec![rows],
            datatype: Datatype::Bytes,
            parameters: None,
            data: TensorData::Text(
                predictions
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or("predictions mix strings with other values")?,
            ),
        },
        _ => Tensor {
            name: "predictions".into(),
            shape: vec![rows],
            datatype: Datatype::Fp64,
            parameters: None,
            data: TensorData::Numbers(
                predictions
                    .iter()
                    .map(Value::as_f64)
                    .collect::<Option<_>>()
                    .ok_or("predictions must be numbers, strings or arrays of numbers")?,
            ),
        },
    };
    Ok(InferResponse {
        model_name: String::new(),
        model_version: None,
        id: None,
        parameters: None,
        outputs: vec![output],
    })
}

/// The adapter's endpoint at `path`.
pub fn router(adapter: Arc<KserveAdapter>, path: &str) -> Router {
    Router::new().route(path, post(receive)).with_state(adapter)
}

async fn receive(
    State(adapter): State<Arc<KserveAdapter>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match adapter.receive(&headers, body) {
        Ok(outcome) => (StatusCode::ACCEPTED, Json(json!({ "outcome": outcome }))).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detectors::spec::Task;
    use tower::ServiceExt;

    const EXCHANGES: &str = include_str!("../../fixtures/kserve/exchanges.json");
    const EXPECTED: &str = include_str!("../../fixtures/kserve/expected.json");

    fn adapter(
        max_wait: Duration,
    ) -> (
        Arc<KserveAdapter>,
        tokio::sync::mpsc::Receiver<crate::log::LoggedEvent>,
        Telemetry,
    ) {
        let telemetry = Telemetry::default();
        let (log, events) = InferenceLog::bounded(64, telemetry.clone());
        let service = KserveService {
            inference_service: "churn".into(),
            namespace: Some("ml".into()),
            model: "churn".into(),
            features: vec!["usage".into(), "tenure".into(), "tickets".into()],
            layout: InputLayout::Columns { tensor: None },
            outputs: OutputMapping {
                task: Task::Classification,
                probabilities: None,
                label: None,
                classes: vec!["no".into(), "yes".into()],
            },
            versions: BTreeMap::from([("canary".to_owned(), "8".to_owned())]),
        };
        let adapter = Arc::new(KserveAdapter::new(
            vec![service],
            100,
            max_wait,
            log,
            telemetry.clone(),
        ));
        (adapter, events, telemetry)
    }

    async fn post(app: &Router, event: &Value) -> (StatusCode, Value) {
        let mut request = axum::http::Request::builder()
            .method("POST")
            .uri("/kserve/events");
        for (name, value) in event["headers"].as_object().unwrap() {
            request = request.header(name, value.as_str().unwrap());
        }
        let request = request
            .body(axum::body::Body::from(
                event["body"].as_str().unwrap().to_owned(),
            ))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn recorded_exchanges_become_the_expected_prediction_events() {
        let (adapter, mut events, telemetry) = adapter(Duration::from_secs(60));
        let app = router(adapter.clone(), "/kserve/events");
        let exchanges: Vec<Value> = serde_json::from_str(EXCHANGES).unwrap();
        let mut outcomes = Vec::new();
        for exchange in &exchanges {
            let (status, body) = post(&app, exchange).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            outcomes.push(body["outcome"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            outcomes,
            [
                "waiting",
                "joined",
                "waiting",
                "joined",
                "waiting",
                "joined",
                "unknown_service",
                "waiting"
            ]
        );
        assert_eq!(
            adapter.waiting(),
            1,
            "the request whose response never came"
        );
        let expected: Vec<Value> = serde_json::from_str(EXPECTED).unwrap();
        crate::log::assert_logged_as_expected(&mut events, &expected);
        assert_eq!(telemetry.adapter_events_total("kserve", "joined"), 3);
        assert_eq!(
            telemetry.adapter_events_total("kserve", "unknown_service"),
            1
        );
    }

    #[tokio::test]
    async fn halves_wait_a_bounded_time_and_bad_events_say_why() {
        let (adapter, _events, telemetry) = adapter(Duration::from_millis(50));
        let app = router(adapter.clone(), "/kserve/events");
        let exchanges: Vec<Value> = serde_json::from_str(EXCHANGES).unwrap();
        post(&app, &exchanges[0]).await;
        assert_eq!(adapter.waiting(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        // The response comes too late: its request expired; it waits alone.
        let (_, body) = post(&app, &exchanges[1]).await;
        assert_eq!(body["outcome"], "waiting");
        assert_eq!(telemetry.adapter_events_total("kserve", "expired"), 1);

        let mut no_type = exchanges[0].clone();
        no_type["headers"]
            .as_object_mut()
            .unwrap()
            .remove("ce-type");
        let (status, body) = post(&app, &no_type).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("ce-type"));
        let mut garbled = exchanges[2].clone();
        garbled["body"] = Value::String("{\"predictions\": [[0.5]".into());
        garbled["headers"]["ce-id"] = Value::String("garbled".into());
        let mut request = exchanges[3].clone();
        request["headers"]["ce-id"] = Value::String("garbled".into());
        post(&app, &garbled).await;
        let (status, body) = post(&app, &request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().unwrap().contains("response body"),
            "{body}"
        );
        assert_eq!(telemetry.adapter_events_total("kserve", "undecodable"), 1);
    }
}
