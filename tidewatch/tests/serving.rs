//! The model gateway (`tidewatch serve`) against the real broker started by
//! `scripts/test.sh`:
//!
//! - a request through the gateway to an in-process model returns the
//!   model's answer with the version and the request id; with a shadow
//!   challenger, both versions' predictions land on the predictions topic,
//!   keyed by request id;
//! - `tidewatch run` consumes them into windows under each version, and one
//!   actual per request joins both versions' predictions;
//! - with the broker unreachable, every request still succeeds and the
//!   undelivered events are dropped and counted;
//! - the `tidewatch serve` binary serves the committed ONNX models
//!   (fixtures/onnx) in process and answers what ONNX Runtime answers;
//! - an MLServer upstream answers through the gateway like the same model
//!   in process; KServe's logger events and Seldon's topics become
//!   prediction events.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::{json, Value};
use serving::linear::LinearModel;
use store::MetricsQuery;
use tidewatch::config::Config;

const FEATURES: [&str; 3] = ["usage", "tenure", "tickets"];

/// (weights, intercept) of versions 1 and 2.
const VERSIONS: [([f64; 3], f64); 2] = [([0.8, -0.05, 0.6], -0.4), ([0.3, -0.02, 1.1], 0.2)];

fn write_models(directory: &Path) {
    for (index, (weights, intercept)) in VERSIONS.iter().enumerate() {
        let model = LinearModel::classifier(
            FEATURES.iter().map(|f| f.to_string()).collect(),
            vec!["no".into(), "yes".into()],
            vec![weights.to_vec()],
            vec![*intercept],
        )
        .unwrap();
        std::fs::write(
            directory.join(format!("v{}.json", index + 1)),
            model.to_json(),
        )
        .unwrap();
    }
}

fn probability(version: usize, row: &[f64; 3]) -> f64 {
    let (weights, intercept) = VERSIONS[version - 1];
    let margin = intercept + weights.iter().zip(row).map(|(w, x)| w * x).sum::<f64>();
    1.0 / (1.0 + (-margin).exp())
}

/// A champion (1) and a shadow challenger (2), both in process.
const SHADOWED: &str = r#"
[[serving.models]]
name = "gw"
champion = "1"
challenger = "2"
challenger_mode = "shadow"
versions = [
  { version = "1", runtime = "linear", path = "v1.json" },
  { version = "2", runtime = "linear", path = "v2.json" },
]
"#;

fn config(directory: &Path, brokers: &str, name: &str, log_extra: &str, served: &str) -> Config {
    write_models(directory);
    let text = format!(
        r#"
version = 1
[kafka]
brokers = "{brokers}"
group_id = "tidewatch-{name}"
dead_letter_topic = "dead-letters-{name}"
topics = [{{ name = "predictions-{name}", kind = "prediction" }}]
[store]
type = "embedded"
path = "tidewatch.sqlite"
[windows]
size = "1h"
idle_close_after = "2s"
checkpoint_interval = "300ms"
[[models]]
name = "gw"
task = "classification"
positive_class = "yes"
features = [
  {{ name = "usage", kind = "numeric" }},
  {{ name = "tenure", kind = "numeric" }},
  {{ name = "tickets", kind = "numeric" }},
]
[serving]
listen = "127.0.0.1:0"
[serving.log]
{log_extra}
{served}
"#
    );
    let path = directory.join("tidewatch.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

/// A JSON `POST` on its own connection: (status, JSON body).
async fn post(address: std::net::SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = common::http::request(
        address,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The first `count` messages of `topic` as (key, payload), read within
/// 60 s (fewer if they do not come).
fn read_messages(
    brokers: &str,
    name: &str,
    topic: &str,
    count: usize,
) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{name}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut messages = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while messages.len() < count && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        messages.push((
            message.key().map(<[u8]>::to_vec),
            message.payload().unwrap_or_default().to_vec(),
        ));
    }
    messages
}

/// The features of request `i`: full-precision values.
fn row(i: usize) -> [f64; 3] {
    let x = i as f64;
    [
        (x * 0.7391).sin() * 1.5 + 0.25,
        (x * 13.17) % 60.0 + 0.5,
        ((x * 0.31).cos() + 1.0) * 1.75,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadowed_model_is_served_logged_consumed_and_joined_per_version() {
    let brokers = common::brokers();
    let name = format!("serving_{}", std::process::id());
    let directory = std::env::temp_dir().join(format!("tidewatch-{name}"));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let topic = format!("predictions-{name}");
    common::create_topics(&brokers, &[&topic, &format!("dead-letters-{name}")]).await;
    let config = config(&directory, &brokers, &name, "", SHADOWED);
    let gateway = common::gateway::start(&config).await;

    const REQUESTS: usize = 120;
    let mut answered = BTreeMap::new();
    for i in 0..REQUESTS {
        let features = row(i);
        let body = json!({
            "id": format!("req-{i}"),
            "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [features]}],
        });
        let (status, answer) =
            post(gateway.address, "/v2/models/gw/infer", &body.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model_version"], "1", "the champion answers");
        assert_eq!(answer["id"], format!("req-{i}"));
        let p = answer["outputs"][0]["data"][1].as_f64().unwrap();
        assert!((p - probability(1, &features)).abs() < 1e-12);
        answered.insert(format!("req-{i}"), features);
    }
    gateway.stop.send(()).unwrap();
    let telemetry = gateway.handle.await.unwrap().unwrap();
    assert_eq!(
        telemetry.delivered_total(),
        2 * REQUESTS as u64,
        "champion and shadow, all delivered"
    );
    assert_eq!(
        telemetry.dropped_total("buffer_full") + telemetry.dropped_total("bus_error"),
        0
    );

    // The topic holds both versions' predictions, keyed by request id.
    let mut seen: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (key, payload) in read_messages(&brokers, &name, &topic, 2 * REQUESTS) {
        let event = events::decode(&payload, events::EventKind::Prediction).unwrap();
        let id = event.prediction_id.clone().unwrap().into_owned();
        assert_eq!(key.as_deref(), Some(id.as_bytes()), "keyed by request id");
        let features = answered[&id];
        let version: usize = event.model_version.parse().unwrap();
        let score = event.prediction.as_ref().unwrap().score.unwrap();
        assert!((score - probability(version, &features)).abs() < 1e-12);
        assert_eq!(
            event.features[0],
            ("usage".into(), events::FeatureValue::Number(features[0]))
        );
        seen.insert((event.model_version.into_owned(), id), score);
    }
    assert_eq!(
        seen.len(),
        2 * REQUESTS,
        "every answer logged once per version"
    );

    // Actuals for every request, after the predictions on the same partition.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut correct = [0usize; 2];
    for (id, features) in &answered {
        let label = if features[2] > 1.75 { "yes" } else { "no" };
        for version in [1, 2] {
            let predicted = if probability(version, features) >= 0.5 {
                "yes"
            } else {
                "no"
            };
            correct[version - 1] += usize::from(predicted == label);
        }
        let actual = json!({
            "schema": "tidewatch.actual.v1", "model": "gw", "model_version": "1",
            "prediction_id": id, "timestamp": now, "label": label,
        });
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(id)
                    .payload(&actual.to_string()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    // `tidewatch run` windows both versions and joins each actual to both.
    let (pipeline, stop) = common::start_pipeline(&config);
    let store = config.store.open().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let quality = loop {
        let rows = store
            .window_metrics(MetricsQuery {
                model: Some("gw".into()),
                feature: Some("quality".into()),
                segment: Some("all".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let matched: Vec<(String, u64, Option<f64>)> = rows
            .iter()
            .filter_map(|row| {
                let quality = row.metrics.quality.as_ref()?;
                Some((
                    row.key.model_version.clone(),
                    quality.matched,
                    quality.accuracy,
                ))
            })
            .collect();
        if matched.len() == 2 && matched.iter().all(|(_, n, _)| *n == REQUESTS as u64) {
            break matched;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "quality never joined for both versions: {matched:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (version, _, accuracy) in &quality {
        let index: usize = version.parse::<usize>().unwrap() - 1;
        let expected = correct[index] as f64 / REQUESTS as f64;
        assert!(
            (accuracy.unwrap() - expected).abs() < 1e-12,
            "version {version}: {accuracy:?} vs {expected}"
        );
    }
    let requests = REQUESTS as u64;
    wait_for_window_counts(&store, &[("1", requests), ("2", requests)]).await;
    stop.send(()).unwrap();
    pipeline.await.unwrap().unwrap();
    println!(
        "served {REQUESTS} requests (champion 1, shadow 2): {} events delivered, both versions windowed, \
         accuracy {:?} on the same {REQUESTS} labels",
        telemetry.delivered_total(),
        quality
    );
    let _ = std::fs::remove_dir_all(&directory);
}

/// Counts of feature `usage` of the versions named in `expected`, polled
/// until they equal `expected` (60 s at most).
async fn wait_for_window_counts(store: &store::Store, expected: &[(&str, u64)]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = store
            .window_metrics(MetricsQuery {
                model: Some("gw".into()),
                feature: Some("usage".into()),
                segment: Some("all".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut counts: Vec<(String, u64)> = rows
            .iter()
            .filter(|r| expected.iter().any(|(v, _)| *v == r.key.model_version))
            .map(|r| (r.key.model_version.clone(), r.metrics.count))
            .collect();
        counts.sort();
        let want: Vec<(String, u64)> = expected.iter().map(|(v, n)| (v.to_string(), *n)).collect();
        if counts == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "windows never held {want:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A logistic regression (champion) and a random forest (shadow), both
/// ONNX files exported from scikit-learn by scripts/onnx_models.py.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_models_served_by_the_tidewatch_serve_binary_answer_what_onnx_runtime_answers() {
    let brokers = common::brokers();
    let name = format!("serving_onnx_{}", std::process::id());
    let directory = std::env::temp_dir().join(format!("tidewatch-{name}"));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let topic = format!("predictions-{name}");
    common::create_topics(&brokers, &[&topic, &format!("dead-letters-{name}")]).await;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/onnx");
    let served = format!(
        r#"
[[serving.models]]
name = "gw"
classes = ["no", "yes"]
champion = "logistic"
challenger = "forest"
challenger_mode = "shadow"
versions = [
  {{ version = "logistic", runtime = "onnx", path = "{logistic}" }},
  {{ version = "forest", runtime = "onnx", path = "{forest}" }},
]
"#,
        logistic = fixtures.join("gw-logistic.onnx").display(),
        forest = fixtures.join("gw-forest.onnx").display(),
    );
    let config = config(&directory, &brokers, &name, "", &served);
    // The binary listens on a port of its own.
    let port = common::free_port();
    let path = directory.join("tidewatch.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&path, text).unwrap();
    let serve = common::child::TidewatchProcess::start_command(
        "serve",
        &path,
        &directory.join("serve.log"),
        &[],
    );
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(address),
        )
        .await
        {
            drop(stream);
            let (status, _, _) =
                common::http::request(address, "GET", "/v2/health/ready", &[], b"").await;
            if status == 200 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tidewatch serve never became ready; see {}",
            serve.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, _, metadata) =
        common::http::request(address, "GET", "/v2/models/gw", &[], b"").await;
    assert_eq!(status, 200);
    let metadata: Value = serde_json::from_slice(&metadata).unwrap();
    assert_eq!(metadata["platform"], "onnx");
    assert_eq!(metadata["outputs"][0]["name"], "label");
    assert_eq!(metadata["outputs"][0]["datatype"], "BYTES");
    assert_eq!(metadata["outputs"][1]["shape"], json!([-1, 2]));

    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("expected.json")).unwrap()).unwrap();
    let rows = expected["rows"].as_array().unwrap();
    let reference = |model: &str, output: &str| -> Vec<Value> {
        expected["models"][model]["onnxruntime"][output]["data"]
            .as_array()
            .unwrap()
            .clone()
    };
    let (labels, probabilities) = (
        reference("gw-logistic", "label"),
        reference("gw-logistic", "probabilities"),
    );
    let forest = reference("gw-forest", "probabilities");
    for (i, row) in rows.iter().enumerate() {
        let body = json!({
            "id": format!("onnx-{i}"),
            "inputs": [{"name": "float_input", "shape": [1, 3], "datatype": "FP64", "data": [row]}],
        });
        let (status, answer) = post(address, "/v2/models/gw/infer", &body.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model_version"], "logistic");
        assert_eq!(answer["id"], format!("onnx-{i}"));
        assert_eq!(answer["outputs"][0]["data"][0], labels[i], "row {i}");
        let p = answer["outputs"][1]["data"][1].as_f64().unwrap();
        let want = probabilities[2 * i + 1].as_f64().unwrap();
        assert!(
            (p - want).abs() <= 1e-6,
            "row {i}: {p} vs ONNX Runtime {want}"
        );
    }
    assert!(
        serve.terminate(),
        "tidewatch serve stops cleanly on SIGTERM"
    );

    // Both versions' predictions, keyed by request id, scores as ONNX
    // Runtime computes them.
    let mut seen = BTreeMap::new();
    for (key, payload) in read_messages(&brokers, &name, &topic, 2 * rows.len()) {
        let event = events::decode(&payload, events::EventKind::Prediction).unwrap();
        let id = event.prediction_id.clone().unwrap().into_owned();
        assert_eq!(key.as_deref(), Some(id.as_bytes()));
        let i: usize = id.strip_prefix("onnx-").unwrap().parse().unwrap();
        let want = match event.model_version.as_ref() {
            "logistic" => &probabilities,
            "forest" => &forest,
            other => panic!("unexpected version {other}"),
        }[2 * i + 1]
            .as_f64()
            .unwrap();
        let prediction = event.prediction.clone().unwrap();
        let score = prediction.score.unwrap();
        assert!((score - want).abs() <= 1e-6, "{id}: {score} vs {want}");
        let class = if score > 0.5 { "yes" } else { "no" };
        assert_eq!(prediction.class.as_deref(), Some(class), "{id}");
        seen.insert((event.model_version.into_owned(), id), score);
    }
    assert_eq!(
        seen.len(),
        2 * rows.len(),
        "every answer logged once per version"
    );

    // `tidewatch run` windows both versions.
    let (pipeline, stop) = common::start_pipeline(&config);
    let store = config.store.open().await.unwrap();
    let n = rows.len() as u64;
    wait_for_window_counts(&store, &[("forest", n), ("logistic", n)]).await;
    stop.send(()).unwrap();
    pipeline.await.unwrap().unwrap();
    println!(
        "tidewatch serve answered {} requests with the ONNX champion (within 1e-6 of ONNX Runtime); \
         {} prediction events of both versions windowed",
        rows.len(),
        seen.len()
    );
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_bus_down_requests_succeed_and_lost_events_are_counted() {
    let name = format!("serving_down_{}", std::process::id());
    let directory = std::env::temp_dir().join(format!("tidewatch-{name}"));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    // Nothing listens on port 1 of 127.0.0.1.
    let config = config(
        &directory,
        "127.0.0.1:1",
        &name,
        "buffer = 8\nmessage_timeout = \"1s\"",
        SHADOWED,
    );
    let gateway = common::gateway::start(&config).await;
    const REQUESTS: usize = 60;
    let started = std::time::Instant::now();
    for i in 0..REQUESTS {
        let body = json!({
            "id": format!("down-{i}"),
            "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [row(i)]}],
        });
        let (status, answer) =
            post(gateway.address, "/v2/models/gw/infer", &body.to_string()).await;
        assert_eq!(status, 200, "{answer}");
    }
    let serving_time = started.elapsed();
    gateway.stop.send(()).unwrap();
    let telemetry = gateway.handle.await.unwrap().unwrap();
    let full = telemetry.dropped_total("buffer_full");
    let bus = telemetry.dropped_total("bus_error");
    assert_eq!(telemetry.delivered_total(), 0);
    assert_eq!(
        full + bus,
        2 * REQUESTS as u64,
        "every event is accounted for: {full} + {bus}"
    );
    assert!(full > 0, "the bounded buffer filled");
    println!(
        "broker unreachable: {REQUESTS} requests answered in {serving_time:?}; of {} events, {full} dropped \
         with the buffer full and {bus} undelivered",
        2 * REQUESTS
    );
    let _ = std::fs::remove_dir_all(&directory);
}

/// MLServer's URL and the folder of the model it serves, from `scripts/test.sh`.
fn mlserver() -> (String, std::path::PathBuf) {
    let url = std::env::var("TIDEWATCH_TEST_MLSERVER_URL").expect(
        "TIDEWATCH_TEST_MLSERVER_URL is not set: run the integration suite through scripts/test.sh, \
         which installs and starts MLServer",
    );
    let models = std::env::var("TIDEWATCH_TEST_MLSERVER_MODELS")
        .expect("TIDEWATCH_TEST_MLSERVER_MODELS is not set");
    (url, models.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mlserver_upstream_answers_through_the_gateway_like_the_same_model_in_process() {
    let (url, models) = mlserver();
    let brokers = common::brokers();
    let name = format!("serving_mlserver_{}", std::process::id());
    let directory = std::env::temp_dir().join(format!("tidewatch-{name}"));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    // The coefficients MLServer's model was trained to, as a native model.
    std::fs::copy(models.join("gw-linear.json"), directory.join("same.json")).unwrap();
    let served = format!(
        r#"
[[serving.models]]
name = "gw"
probabilities_output = "predict_proba"
label_output = "predict"
classes = ["0", "1"]
champion = "mlserver"
challenger = "native"
challenger_mode = "shadow"
versions = [
  {{ version = "mlserver", runtime = "proxy", url = "{url}", request_outputs = ["predict_proba", "predict"] }},
  {{ version = "native", runtime = "linear", path = "same.json" }},
  {{ version = "gone", runtime = "proxy", url = "http://127.0.0.1:1" }},
]
"#
    );
    let topic = format!("predictions-{name}");
    common::create_topics(&brokers, &[&topic, &format!("dead-letters-{name}")]).await;
    let config = config(&directory, &brokers, &name, "", &served);
    let gateway = common::gateway::start(&config).await;

    const REQUESTS: usize = 40;
    for i in 0..REQUESTS {
        let body = json!({
            "id": format!("ml-{i}"),
            "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [row(i)]}],
        });
        let (status, answer) =
            post(gateway.address, "/v2/models/gw/infer", &body.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model_version"], "mlserver");
        assert_eq!(answer["id"], format!("ml-{i}"));
        let proba = answer["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "predict_proba")
            .unwrap_or_else(|| panic!("MLServer answered predict_proba: {answer}"));
        assert_eq!(proba["shape"], json!([1, 2]));
    }
    // A version whose upstream is gone: 502 with the protocol's error shape.
    let body = json!({"id": "to-gone", "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [row(0)]}]});
    let (status, answer) = post(
        gateway.address,
        "/v2/models/gw/versions/gone/infer",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 502, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("upstream unreachable"),
        "{answer}"
    );
    gateway.stop.send(()).unwrap();
    let telemetry = gateway.handle.await.unwrap().unwrap();
    assert_eq!(telemetry.delivered_total(), 2 * REQUESTS as u64 + 1);

    // MLServer's and the in-process runtime's scores agree, request by request.
    let mut scores: BTreeMap<String, BTreeMap<String, (f64, String)>> = BTreeMap::new();
    let mut errors = Vec::new();
    for (_, payload) in read_messages(&brokers, &name, &topic, 2 * REQUESTS + 1) {
        let event = events::decode(&payload, events::EventKind::Prediction).unwrap();
        if let Some(error) = &event.error {
            errors.push((event.model_version.to_string(), error.to_string()));
            continue;
        }
        let prediction = event.prediction.unwrap();
        scores
            .entry(event.prediction_id.unwrap().into_owned())
            .or_default()
            .insert(
                event.model_version.into_owned(),
                (
                    prediction.score.unwrap(),
                    prediction.class.unwrap().into_owned(),
                ),
            );
    }
    assert_eq!(scores.len(), REQUESTS);
    assert_eq!(
        errors.len(),
        1,
        "only the request to the gone upstream failed: {errors:?}"
    );
    for (id, by_version) in &scores {
        let (upstream, native) = (&by_version["mlserver"], &by_version["native"]);
        assert!(
            (upstream.0 - native.0).abs() < 1e-9,
            "{id}: MLServer {upstream:?}, in process {native:?}"
        );
        assert_eq!(upstream.1, native.1, "{id}: the same class");
    }
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "gone");

    // `tidewatch run` windows MLServer's answers under their version.
    let (pipeline, stop) = common::start_pipeline(&config);
    let store = config.store.open().await.unwrap();
    let requests = REQUESTS as u64;
    wait_for_window_counts(&store, &[("mlserver", requests), ("native", requests)]).await;
    stop.send(()).unwrap();
    pipeline.await.unwrap().unwrap();
    println!("{REQUESTS} requests through the gateway to MLServer: scores equal to the in-process runtime's within 1e-9, windowed under their versions");
    let _ = std::fs::remove_dir_all(&directory);
}

/// `POST` of a recorded KServe CloudEvent (headers and body).
async fn post_event(address: std::net::SocketAddr, path: &str, event: &Value) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = event["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str().unwrap()))
        .collect();
    let body = event["body"].as_str().unwrap();
    let (status, _, body) =
        common::http::request(address, "POST", path, &headers, body.as_bytes()).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_logger_events_posted_to_tidewatch_serve_reach_the_predictions_topic() {
    let brokers = common::brokers();
    let name = format!("serving_kserve_{}", std::process::id());
    let directory = std::env::temp_dir().join(format!("tidewatch-{name}"));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let topic = format!("predictions-{name}");
    common::create_topics(&brokers, &[&topic]).await;
    let kserve = r#"
[serving.kserve]
path = "/kserve/events"
[[serving.kserve.services]]
inference_service = "churn"
namespace = "ml"
model = "gw"
classes = ["no", "yes"]
versions = { canary = "8" }
"#;
    let config = config(&directory, &brokers, &name, "", kserve);
    let gateway = common::gateway::start(&config).await;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/kserve");
    let exchanges: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("exchanges.json")).unwrap())
            .unwrap();
    let expected: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).unwrap())
            .unwrap();
    for exchange in &exchanges {
        let (status, body) = post_event(gateway.address, "/kserve/events", exchange).await;
        assert_eq!(status, 202, "{body}");
    }
    gateway.stop.send(()).unwrap();
    let telemetry = gateway.handle.await.unwrap().unwrap();
    assert_eq!(telemetry.delivered_total(), expected.len() as u64);

    let mut got = BTreeMap::new();
    for (_, payload) in read_messages(&brokers, &name, &topic, expected.len()) {
        let event = events::decode(&payload, events::EventKind::Prediction).unwrap();
        let prediction = event.prediction.clone().unwrap();
        got.insert(
            event.prediction_id.clone().unwrap().into_owned(),
            (
                event.model.to_string(),
                event.model_version.to_string(),
                prediction.score,
                event.timestamp_ms,
            ),
        );
    }
    for want in &expected {
        let id = want["prediction_id"].as_str().unwrap();
        let (model, version, score, timestamp) = &got[id];
        assert_eq!(model, "gw");
        assert_eq!(version, want["model_version"].as_str().unwrap(), "{id}");
        assert_eq!(*score, want["score"].as_f64(), "{id}");
        assert_eq!(*timestamp, want["timestamp"].as_i64().unwrap(), "{id}");
    }
    println!(
        "{} KServe logger events posted to tidewatch serve: {} prediction events on the topic",
        exchanges.len(),
        got.len()
    );
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seldon_topics_are_joined_into_prediction_events_and_offsets_stay_below_open_exchanges() {
    use rdkafka::message::{Header, OwnedHeaders};
    let brokers = common::brokers();
    let name = format!("serving_seldon_{}", std::process::id());
    let namespace = format!("ns-{}", std::process::id());
    let directory = std::env::temp_dir().join(format!("tidewatch-{name}"));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let topic = format!("predictions-{name}");
    let inputs = format!("seldon.{namespace}.model.churn.inputs");
    let outputs = format!("seldon.{namespace}.model.churn.outputs");
    common::create_topics(&brokers, &[&topic, &inputs, &outputs]).await;
    // Seldon's messages, as recorded, with their request ids in headers.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/seldon");
    let messages: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("messages.json")).unwrap())
            .unwrap();
    let expected: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).unwrap())
            .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for message in &messages {
        let destination = if message["kind"] == "inputs" {
            &inputs
        } else {
            &outputs
        };
        let payload = std::fs::read(fixtures.join(message["file"].as_str().unwrap())).unwrap();
        let id = message["request_id"].as_str().unwrap();
        producer
            .send(
                FutureRecord::to(destination)
                    .key(id)
                    .payload(&payload)
                    .timestamp(message["timestamp"].as_i64().unwrap())
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "x-request-id",
                        value: Some(id),
                    })),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let seldon = format!(
        r#"
[serving.seldon]
namespace = "{namespace}"
group_id = "seldon-{name}"
commit_interval = "200ms"
[[serving.seldon.models]]
seldon_model = "churn"
model = "gw"
probabilities_output = "predict_proba"
classes = ["no", "yes"]
version = "fallback"
"#
    );
    let config = config(&directory, &brokers, &name, "", &seldon);
    let gateway = common::gateway::start(&config).await;

    let mut got = BTreeMap::new();
    for (_, payload) in read_messages(&brokers, &name, &topic, expected.len()) {
        let event = events::decode(&payload, events::EventKind::Prediction).unwrap();
        got.insert(
            event.prediction_id.clone().unwrap().into_owned(),
            (
                event.model_version.to_string(),
                event.prediction.clone().unwrap().score,
                event.timestamp_ms,
                event.latency_ms,
            ),
        );
    }
    for want in &expected {
        let id = want["prediction_id"].as_str().unwrap();
        let (version, score, timestamp, latency) = got
            .get(id)
            .unwrap_or_else(|| panic!("no event for {id}: {got:?}"));
        assert_eq!(version, want["model_version"].as_str().unwrap(), "{id}");
        assert_eq!(*score, want["score"].as_f64(), "{id}");
        assert_eq!(*timestamp, want["timestamp"].as_i64().unwrap(), "{id}");
        assert_eq!(*latency, want["latency_ms"].as_f64(), "{id}");
    }
    gateway.stop.send(()).unwrap();
    let telemetry = gateway.handle.await.unwrap().unwrap();
    assert_eq!(telemetry.adapter_events_total("seldon", "joined"), 3);

    // The request without a response (inputs offset 3) holds the inputs'
    // commit below it; the outputs are committed past their end.
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("seldon-{name}"))
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions.add_partition(&inputs, 0);
    partitions.add_partition(&outputs, 0);
    let committed = group
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    let offset = |topic: &str| committed.find_partition(topic, 0).unwrap().offset();
    assert_eq!(offset(&inputs), rdkafka::Offset::Offset(3));
    assert_eq!(offset(&outputs), rdkafka::Offset::Offset(3));
    println!(
        "{} Seldon messages joined into {} prediction events; committed inputs 3, outputs 3",
        messages.len(),
        got.len()
    );
    let _ = std::fs::remove_dir_all(&directory);
}
