//! The gateway's HTTP API: the Open Inference Protocol's health, metadata
//! and inference endpoints, and `/metrics`.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v2/health/live` | `200 {"live": true}` |
//! | `GET /v2/health/ready` | `200 {"ready": true}` when every champion is ready, else `503` |
//! | `GET /v2/models/{m}[/versions/{v}]` | model metadata (the champion's without a version) |
//! | `GET /v2/models/{m}[/versions/{v}]/ready` | `{"name", "ready"}`, `200` or `503` |
//! | `POST /v2/models/{m}[/versions/{v}]/infer` | the inference response, with `model_version` and `id` |
//! | `GET /metrics` | `tidewatch_serving_*` in Prometheus text format |
//!
//! Errors answer `{"error": "…"}` with the status of [`crate::Error::status`].
//!
//! The request id is the request's `id`, else its `X-Request-Id` header,
//! else a generated one; it is returned in `id` and `X-Request-Id`, and is
//! the logged events' `prediction_id` (for a request of N > 1 rows, row i
//! is `{id}/{i}`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::features::FeatureBatch;
use crate::log::{InferenceLog, PredictionRecord};
use crate::model::{ServedModel, ServedVersion};
use crate::protocol::{InferRequest, InferResponse};
use crate::routes::{Role, RouteTable};
use crate::telemetry::Telemetry;
use crate::Error;

/// Longest request id accepted (longer ones are refused: they become
/// message keys and event fields).
pub const MAX_REQUEST_ID_BYTES: usize = 256;

/// What the handlers share.
pub struct Gateway {
    routes: Arc<RouteTable>,
    log: InferenceLog,
    telemetry: Telemetry,
    shadow_slots: Arc<Semaphore>,
    max_shadow_in_flight: usize,
    /// Wall clock, ms (the events' timestamp); see [`Gateway::with_clock`].
    clock: Clock,
}

/// A clock, ms since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

use crate::log::now_ms;

impl Gateway {
    /// A gateway over `routes`, logging to `log`.
    pub fn new(
        routes: Arc<RouteTable>,
        log: InferenceLog,
        telemetry: Telemetry,
        max_shadow_in_flight: usize,
    ) -> Self {
        Self {
            routes,
            log,
            telemetry,
            shadow_slots: Arc::new(Semaphore::new(max_shadow_in_flight)),
            max_shadow_in_flight,
            clock: Arc::new(now_ms),
        }
    }

    /// The gateway with `clock` giving the events' time instead of the wall
    /// clock (a simulation that replays hours in seconds; tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The route table (to move aliases at run time).
    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
    }

    /// The metrics.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Waits (at most `deadline`) for the shadow calls in flight, so that
    /// their events reach the log before it closes; true if none is left.
    pub async fn drain_shadows(&self, deadline: std::time::Duration) -> bool {
        let slots = self.max_shadow_in_flight as u32;
        tokio::time::timeout(deadline, self.shadow_slots.acquire_many(slots))
            .await
            .is_ok_and(|permits| permits.is_ok())
    }
}

/// The gateway's router.
pub fn router(gateway: Arc<Gateway>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(version_metadata),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(version_ready),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(version_infer),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { error_response(&Error::NotFound("no such endpoint".into())) })
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(gateway)
}

fn error_response(error: &Error) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({ "error": error.to_string() }))).into_response()
}

async fn live() -> Response {
    Json(json!({"live": true})).into_response()
}

async fn ready(State(gateway): State<Arc<Gateway>>) -> Response {
    let mut all = true;
    for model in gateway.routes.models() {
        let Ok((_, aliases)) = gateway.routes.get(&model.name) else {
            continue;
        };
        if let Ok(version) = model.version(&aliases.champion) {
            all &= version.runtime.ready().await;
        }
    }
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": all}))).into_response()
}

async fn metadata(State(gateway): State<Arc<Gateway>>, Path(model): Path<String>) -> Response {
    answer_metadata(&gateway, &model, None)
}

async fn version_metadata(
    State(gateway): State<Arc<Gateway>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    answer_metadata(&gateway, &model, Some(version))
}

fn answer_metadata(gateway: &Gateway, model: &str, version: Option<String>) -> Response {
    let result = gateway.routes.get(model).and_then(|(model, aliases)| {
        model.metadata(version.as_deref().unwrap_or(&aliases.champion))
    });
    match result {
        Ok(metadata) => Json(metadata).into_response(),
        Err(error) => error_response(&error),
    }
}

async fn model_ready(State(gateway): State<Arc<Gateway>>, Path(model): Path<String>) -> Response {
    answer_ready(&gateway, &model, None).await
}

async fn version_ready(
    State(gateway): State<Arc<Gateway>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    answer_ready(&gateway, &model, Some(version)).await
}

async fn answer_ready(gateway: &Gateway, model: &str, version: Option<String>) -> Response {
    let runtime = gateway.routes.get(model).and_then(|(served, aliases)| {
        served
            .version(version.as_deref().unwrap_or(&aliases.champion))
            .cloned()
    });
    match runtime {
        Ok(runtime) => {
            let ready = runtime.runtime.ready().await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, Json(json!({"name": model, "ready": ready}))).into_response()
        }
        Err(error) => error_response(&error),
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gateway.telemetry.encode(),
    )
        .into_response()
}

async fn infer(
    State(gateway): State<Arc<Gateway>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve_inference(gateway, model, None, headers, body).await
}

async fn version_infer(
    State(gateway): State<Arc<Gateway>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve_inference(gateway, model, Some(version), headers, body).await
}

/// A new request id: 128 random bits, hex.
fn generated_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

async fn serve_inference(
    gateway: Arc<Gateway>,
    model: String,
    pinned: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived_ms = (gateway.clock)();
    let mut request: InferRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return error_response(&Error::BadRequest(format!(
                "not an inference request: {error}"
            )))
        }
    };
    let id = request
        .id
        .clone()
        .or_else(|| {
            headers
                .get("x-request-id")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        })
        .filter(|id| !id.is_empty())
        .unwrap_or_else(generated_id);
    if id.len() > MAX_REQUEST_ID_BYTES {
        return error_response(&Error::BadRequest(format!(
            "the request id is longer than {MAX_REQUEST_ID_BYTES} bytes"
        )));
    }
    request.id = Some(id.clone());
    let (served, aliases) = match gateway.routes.get(&model) {
        Ok(found) => found,
        Err(error) => return error_response(&error),
    };
    let (answer, shadow) = match pinned {
        Some(version) => ((version, Role::Pinned), None),
        None => {
            let decision = aliases.decide(&id);
            (decision.answer, decision.shadow)
        }
    };
    let runtime = match served.version(&answer.0) {
        Ok(runtime) => runtime.clone(),
        Err(error) => return error_response(&error),
    };
    let batch = match FeatureBatch::from_request(&request, &served.layout, &served.features) {
        Ok(batch) => Arc::new(batch),
        Err(message) => {
            let error = Error::BadRequest(message);
            gateway
                .telemetry
                .error(&served.name, &answer.0, answer.1, error.kind());
            return error_response(&error);
        }
    };
    let request = Arc::new(request);
    let result = call(
        &gateway, &served, &answer.0, answer.1, &runtime, &request, &batch, &id, arrived_ms,
    )
    .await;

    if let Some(version) = shadow {
        match (
            served.version(&version),
            gateway.shadow_slots.clone().try_acquire_owned(),
        ) {
            (Ok(shadow_runtime), Ok(slot)) => {
                let (gateway, served, shadow_runtime) =
                    (gateway.clone(), served.clone(), shadow_runtime.clone());
                let (request, batch, id) = (request.clone(), batch.clone(), id.clone());
                tokio::spawn(async move {
                    let _ = call(
                        &gateway,
                        &served,
                        &version,
                        Role::Shadow,
                        &shadow_runtime,
                        &request,
                        &batch,
                        &id,
                        arrived_ms,
                    )
                    .await;
                    drop(slot);
                });
            }
            (Ok(_), Err(_)) => gateway.telemetry.shadow_skipped(&served.name),
            (Err(error), _) => tracing::warn!(%error, "the shadow version is gone"),
        }
    }

    match result {
        Ok(response) => {
            let mut response = Json(response).into_response();
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert("x-request-id", value);
            }
            response
        }
        Err(error) => error_response(&error),
    }
}

/// Calls `version` in `role`, counts it and logs one event per row.
#[allow(clippy::too_many_arguments)]
async fn call(
    gateway: &Gateway,
    served: &ServedModel,
    version: &str,
    role: Role,
    served_version: &ServedVersion,
    request: &InferRequest,
    batch: &FeatureBatch,
    id: &str,
    arrived_ms: i64,
) -> Result<InferResponse, Error> {
    let started = Instant::now();
    let result = served_version.runtime.infer(request, batch).await;
    let seconds = started.elapsed().as_secs_f64();
    gateway.telemetry.call(&served.name, version, role, seconds);
    let rows = batch.rows();
    let prediction_id = |row: usize| crate::log::prediction_id(id, rows, row);
    let log = |row: usize, outcome: Result<&crate::outputs::Prediction, &str>| {
        gateway.log.record(&PredictionRecord {
            model: &served.name,
            version,
            prediction_id: &prediction_id(row),
            timestamp_ms: arrived_ms,
            features: batch,
            row,
            outcome,
            latency_ms: Some(seconds * 1000.0),
        });
    };
    match result {
        Ok(mut response) => {
            response.model_name = served.name.clone();
            response.model_version = Some(version.to_owned());
            response.id = Some(id.to_owned());
            match served_version.outputs.predictions(&response, rows) {
                Ok(predictions) => {
                    for (row, prediction) in predictions.iter().enumerate() {
                        log(row, Ok(prediction));
                    }
                }
                Err(message) => {
                    gateway
                        .telemetry
                        .error(&served.name, version, role, "unreadable_output");
                    let message = format!("the answer could not be read as predictions: {message}");
                    for row in 0..rows {
                        log(row, Err(&message));
                    }
                }
            }
            Ok(response)
        }
        Err(error) => {
            gateway
                .telemetry
                .error(&served.name, version, role, error.kind());
            let message = error.to_string();
            for row in 0..rows {
                log(row, Err(&message));
            }
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::InputLayout;
    use crate::linear::LinearModel;
    use crate::outputs::OutputMapping;
    use crate::routes::{Aliases, ChallengerMode};
    use axum::body::Body;
    use detectors::spec::Task;
    use tower::ServiceExt;

    fn linear(weight: f64) -> Arc<ServedVersion> {
        Arc::new(ServedVersion {
            runtime: crate::model::Runtime::Linear(
                LinearModel::classifier(
                    vec!["age".into(), "tenure".into()],
                    vec!["stay".into(), "churn".into()],
                    vec![vec![weight, -0.5]],
                    vec![0.1],
                )
                .unwrap(),
            ),
            outputs: OutputMapping {
                task: Task::Classification,
                probabilities: Some("probabilities".into()),
                label: Some("label".into()),
                classes: vec!["stay".into(), "churn".into()],
            },
        })
    }

    fn gateway(
        challenger: Option<ChallengerMode>,
        buffer: usize,
    ) -> (
        Router,
        Arc<Gateway>,
        tokio::sync::mpsc::Receiver<crate::log::LoggedEvent>,
    ) {
        let model = ServedModel {
            name: "churn".into(),
            features: vec!["age".into(), "tenure".into()],
            layout: InputLayout::Columns { tensor: None },
            versions: [
                ("1".to_owned(), linear(0.02)),
                ("2".to_owned(), linear(0.05)),
            ]
            .into(),
        };
        let aliases = Aliases {
            champion: "1".into(),
            challenger: challenger.map(|mode| ("2".to_owned(), mode)),
        };
        let routes = Arc::new(RouteTable::new(vec![(model, aliases)]).unwrap());
        let telemetry = Telemetry::default();
        let (log, events) = InferenceLog::bounded(buffer, telemetry.clone());
        let gateway =
            Gateway::new(routes, log, telemetry, 8).with_clock(Arc::new(|| 1_767_225_600_000));
        let gateway = Arc::new(gateway);
        (router(gateway.clone(), 1 << 20), gateway, events)
    }

    async fn send(
        app: &Router,
        method: &str,
        path: &str,
        body: &str,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, value)
    }

    const ONE_ROW: &str = r#"{"id":"r-1","inputs":[{"name":"x","shape":[1,2],"datatype":"FP64","data":[[40.0,3.5]]}]}"#;

    fn decode(event: &crate::log::LoggedEvent) -> events::Event<'_> {
        events::decode(&event.payload, events::EventKind::Prediction).unwrap()
    }

    #[tokio::test]
    async fn the_champion_answers_and_its_prediction_is_logged() {
        let (app, _, mut events) = gateway(None, 16);
        let (status, headers, body) = send(&app, "POST", "/v2/models/churn/infer", ONE_ROW).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["model_name"], "churn");
        assert_eq!(body["model_version"], "1");
        assert_eq!(body["id"], "r-1");
        assert_eq!(headers["x-request-id"], "r-1");
        let p = body["outputs"][0]["data"][1].as_f64().unwrap();
        let expected = 1.0 / (1.0 + (-(0.1 + 0.02 * 40.0 - 0.5 * 3.5f64)).exp());
        assert!((p - expected).abs() < 1e-12);

        let event = events.try_recv().unwrap();
        assert_eq!(event.key, "r-1");
        let decoded = decode(&event);
        assert_eq!(decoded.model, "churn");
        assert_eq!(decoded.model_version, "1");
        assert_eq!(decoded.prediction_id.as_deref(), Some("r-1"));
        assert_eq!(decoded.timestamp_ms, 1_767_225_600_000);
        assert_eq!(
            decoded.features,
            [
                ("age".into(), events::FeatureValue::Number(40.0)),
                ("tenure".into(), events::FeatureValue::Number(3.5))
            ]
        );
        let prediction = decoded.prediction.unwrap();
        assert_eq!(prediction.score, Some(p));
        assert_eq!(prediction.class.as_deref(), Some("stay"));
        assert!(decoded.latency_ms.is_some());
        assert!(events.try_recv().is_err(), "one event per row");
    }

    #[tokio::test]
    async fn a_shadow_challenger_is_logged_under_its_version_and_never_answers() {
        let (app, _, mut events) = gateway(Some(ChallengerMode::Shadow), 16);
        let (status, _, body) = send(&app, "POST", "/v2/models/churn/infer", ONE_ROW).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["model_version"], "1");
        let mut versions = Vec::new();
        for _ in 0..2 {
            let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
                .await
                .unwrap()
                .unwrap();
            let decoded = decode(&event);
            assert_eq!(decoded.prediction_id.as_deref(), Some("r-1"));
            versions.push(decoded.model_version.into_owned());
        }
        versions.sort();
        assert_eq!(versions, ["1", "2"]);
    }

    #[tokio::test]
    async fn rows_get_their_own_ids_and_a_generated_id_is_returned() {
        let (app, _, mut events) = gateway(None, 16);
        let (status, headers, body) = send(
            &app,
            "POST",
            "/v2/models/churn/versions/2/infer",
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP64","data":[1,2,3,4]}]}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["model_version"], "2", "a pinned version answers");
        let id = body["id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 32);
        assert_eq!(headers["x-request-id"], id.as_str());
        let first = events.try_recv().unwrap();
        let second = events.try_recv().unwrap();
        assert_eq!(decode(&first).prediction_id.unwrap(), format!("{id}/0"));
        assert_eq!(decode(&second).prediction_id.unwrap(), format!("{id}/1"));
    }

    #[tokio::test]
    async fn errors_answer_the_protocols_shape_and_status() {
        let (app, gateway, _events) = gateway(None, 16);
        let (status, _, body) = send(&app, "POST", "/v2/models/other/infer", ONE_ROW).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("no model named `other`"));
        let (status, _, body) =
            send(&app, "POST", "/v2/models/churn/versions/9/infer", ONE_ROW).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].as_str().unwrap().contains("no version `9`"));
        let (status, _, body) = send(
            &app,
            "POST",
            "/v2/models/churn/infer",
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64","data":[1,2,3]}]}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().unwrap().contains("[N, 2] expected"),
            "{body}"
        );
        let (status, _, body) = send(&app, "POST", "/v2/models/churn/infer", "{").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"]
            .as_str()
            .unwrap()
            .starts_with("not an inference request"));
        let metrics = gateway.telemetry().encode();
        assert!(metrics.contains(r#"tidewatch_serving_errors_total{model="churn",version="1",role="champion",kind="bad_request"} 1"#), "{metrics}");
    }

    #[tokio::test]
    async fn a_full_log_buffer_drops_and_counts_without_failing_requests() {
        let (app, gateway, mut events) = gateway(None, 2);
        for _ in 0..5 {
            let (status, _, _) = send(&app, "POST", "/v2/models/churn/infer", ONE_ROW).await;
            assert_eq!(status, StatusCode::OK);
        }
        assert_eq!(gateway.telemetry().dropped_total("buffer_full"), 3);
        assert!(
            events.try_recv().is_ok() && events.try_recv().is_ok() && events.try_recv().is_err()
        );
    }

    #[tokio::test]
    async fn health_and_metadata_describe_the_models() {
        let (app, _, _events) = gateway(None, 2);
        let (status, _, body) = send(&app, "GET", "/v2/health/live", "").await;
        assert_eq!((status, body), (StatusCode::OK, json!({"live": true})));
        let (status, _, body) = send(&app, "GET", "/v2/health/ready", "").await;
        assert_eq!((status, body), (StatusCode::OK, json!({"ready": true})));
        let (status, _, body) = send(&app, "GET", "/v2/models/churn/versions/2/ready", "").await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"name": "churn", "ready": true}))
        );
        let (status, _, body) = send(&app, "GET", "/v2/models/churn", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["versions"], json!(["1", "2"]));
        assert_eq!(body["platform"], "tidewatch_linear");
        assert_eq!(
            body["inputs"],
            json!([{"name": "input", "datatype": "FP64", "shape": [-1, 2]}])
        );
        assert_eq!(body["outputs"][0]["shape"], json!([-1, 2]));
        let (status, _, _) = send(&app, "GET", "/v2/models/churn/versions/7", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
