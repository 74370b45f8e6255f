//! Tidewatch's HTTP server over a demo store (drift injected at hour 3):
//!
//! - the JSON API answers as its OpenAPI document says (required fields,
//!   pagination, errors with stable codes, bearer token on writes, reference
//!   upload from CSV);
//! - `/metrics` is Prometheus text with `tidewatch_*` names;
//! - the pages load in a real headless browser (Debian's Chromium, path in
//!   `TIDEWATCH_TEST_CHROMIUM`, installed by `scripts/test.sh`) with no
//!   console error, every chart drawn with data, and the heatmap showing the
//!   injected drift.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::request;
use serde_json::Value;
use tidewatch::fixtures::{DemoShape, DEMO_MODEL, DEMO_VERSION};

const TOKEN: &str = "a-test-token-of-some-length";

struct Server {
    address: SocketAddr,
    directory: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// A small demo (six hours, drift from hour 3) served on 127.0.0.1.
async fn serve(name: &str, token: Option<&str>) -> Server {
    serve_with(name, token, |_| {}).await
}

/// [`serve`] with the server state adjusted by `adjust`.
async fn serve_with(
    name: &str,
    token: Option<&str>,
    adjust: impl FnOnce(&mut tidewatch::http::AppState),
) -> Server {
    let directory =
        std::env::temp_dir().join(format!("tidewatch-http-{name}-{}", std::process::id()));
    let shape = DemoShape {
        hours: 6,
        predictions_per_hour: 600,
        drift_onset_hour: 3,
        drift_end_hour: None,
        training_rows: 3_000,
    };
    let outcome = tidewatch::demo::run(&directory, 7, shape).await.unwrap();
    record_registry_history(&outcome.store).await;
    let mut state = tidewatch::demo::http_state(outcome.store);
    state.token = token.map(str::to_owned);
    adjust(&mut state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tidewatch::http::serve(listener, Arc::new(state), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server {
        address,
        directory,
        _stop: stop,
    }
}

/// The demo model's history in a registry (versions 1 and 2; 1 champion,
/// then 2 challenger, then 2 champion), carried into `store` by the
/// in-process bus (the registry's outbox drained into the store, as
/// without a broker).
async fn record_registry_history(store: &store::Store) {
    let registry = registry::Registry::in_memory().unwrap();
    registry
        .create_model(DEMO_MODEL.into(), vec![], String::new())
        .await
        .unwrap();
    for version in 1..=2 {
        registry
            .create_version(registry::store::NewVersion {
                name: DEMO_MODEL.into(),
                source: format!("file:///models/churn/{version}.onnx"),
                run_id: format!("run-{version}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for (alias, version) in [("champion", "1"), ("challenger", "2"), ("champion", "2")] {
        registry
            .set_alias(DEMO_MODEL.into(), alias.into(), version.into())
            .await
            .unwrap();
    }
    let drained = {
        let registry = registry.clone();
        async move {
            while registry.pending_count().await.unwrap() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    tidewatch::registry_bus::publish(
        registry,
        tidewatch::registry_bus::Sink::Store(store.clone()),
        drained,
    )
    .await;
    // What the pages read: the store's version events, one per version
    // registered and per alias set (the model's creation is not one). The
    // publisher's own count can miss the last batch when the drain check
    // wins the race against its bookkeeping.
    let recorded = store.version_events(DEMO_MODEL, 100).await.unwrap();
    assert_eq!(recorded.len(), 5, "2 versions, 3 aliases: {recorded:?}");
}

async fn get_json(address: SocketAddr, path: &str) -> (u16, Value) {
    let (status, content_type, body) = request(address, "GET", path, &[], b"").await;
    assert!(
        content_type.starts_with("application/json"),
        "{path}: {content_type}"
    );
    (status, serde_json::from_slice(&body).unwrap())
}

/// Checks `value` against `schema` of the OpenAPI document: types, constants,
/// required fields and no undocumented field, recursively.
fn conforms(document: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = document.pointer(reference.trim_start_matches('#')).unwrap();
        return conforms(document, target, value, at);
    }
    if let Some(options) = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        assert!(
            options.iter().any(|option| {
                std::panic::catch_unwind(|| conforms(document, option, value, at)).is_ok()
            }),
            "{at}: {value} matches no option"
        );
        return;
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        assert!(
            types.contains(&actual) || (actual == "integer" && types.contains(&"number")),
            "{at}: {actual} is not {types:?}"
        );
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        assert!(allowed.contains(value), "{at}: {value} not in {allowed:?}");
    }
    if let Some(constant) = schema.get("const") {
        assert_eq!(value, constant, "{at}");
    }
    // `required` constrains objects only (a nullable object may be null).
    if let (Some(required), true) = (
        schema.get("required").and_then(Value::as_array),
        value.is_object(),
    ) {
        for field in required {
            let field = field.as_str().unwrap();
            assert!(
                value.get(field).is_some(),
                "{at}: `{field}` missing in {value}"
            );
        }
    }
    if let (Some(properties), Some(object)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (name, property) in properties {
            if let Some(inner) = object.get(name) {
                conforms(document, property, inner, &format!("{at}.{name}"));
            }
        }
        for name in object.keys() {
            assert!(
                properties.contains_key(name),
                "{at}: `{name}` is not documented"
            );
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            conforms(document, items, item, &format!("{at}[{index}]"));
        }
    }
}

fn response_schema<'a>(document: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let response = &document["paths"][path][method]["responses"][status.to_string()];
    let response = match response.get("$ref").and_then(Value::as_str) {
        Some(reference) => document.pointer(reference.trim_start_matches('#')).unwrap(),
        None => response,
    };
    &response["content"]["application/json"]["schema"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says() {
    let server = serve("api", Some(TOKEN)).await;
    let address = server.address;
    let (status, document) = get_json(address, "/openapi.json").await;
    assert_eq!(status, 200);

    let alerts = get_json(address, "/api/v1/alerts").await.1;
    let alert_id = alerts["alerts"][0]["id"]
        .as_str()
        .expect("the demo drift raised an alert")
        .to_owned();
    let calls = [
        ("/api/v1/health", "/api/v1/health".to_owned()),
        ("/api/v1/ready", "/api/v1/ready".to_owned()),
        ("/api/v1/models", "/api/v1/models".to_owned()),
        (
            "/api/v1/models/{model}/windows",
            format!("/api/v1/models/{DEMO_MODEL}/windows"),
        ),
        (
            "/api/v1/models/{model}/metrics",
            format!("/api/v1/models/{DEMO_MODEL}/metrics?limit=50"),
        ),
        (
            "/api/v1/models/{model}/timeline",
            format!("/api/v1/models/{DEMO_MODEL}/timeline"),
        ),
        ("/api/v1/references", "/api/v1/references".to_owned()),
        (
            "/api/v1/references/{model}/{version}",
            format!("/api/v1/references/{DEMO_MODEL}/{DEMO_VERSION}"),
        ),
        ("/api/v1/alerts", "/api/v1/alerts?limit=5".to_owned()),
        ("/api/v1/alerts/{id}", format!("/api/v1/alerts/{alert_id}")),
    ];
    for (documented, path) in &calls {
        let (status, body) = get_json(address, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        conforms(
            &document,
            response_schema(&document, documented, "get", 200),
            &body,
            path,
        );
    }

    // The drift shows in the window summaries: none before hour 3, then the
    // drifted inputs.
    let windows = get_json(address, &format!("/api/v1/models/{DEMO_MODEL}/windows"))
        .await
        .1;
    let windows = windows["windows"].as_array().unwrap();
    assert!(windows.len() >= 6);
    assert!(windows[..3]
        .iter()
        .all(|w| w["drifted"].as_array().unwrap().is_empty()));
    let drifted: Vec<&str> = windows[4]["drifted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for feature in ["monthly_charges", "support_calls", "payment_method"] {
        assert!(drifted.contains(&feature), "{drifted:?}");
    }
    assert!(!drifted.contains(&"age"));
    // The multivariate series is reported apart from the drifted inputs.
    assert!(!drifted.contains(&"multivariate"));
    for (index, window) in windows[..5].iter().enumerate() {
        let multivariate = &window["multivariate"];
        assert!(
            multivariate["mean_error"].as_f64().unwrap() > 0.0,
            "{window}"
        );
        assert_eq!(multivariate["alert"], index >= 3, "{window}");
    }

    // Pagination walks every row once, in order, and stops.
    let all = get_json(
        address,
        &format!("/api/v1/models/{DEMO_MODEL}/metrics?limit=1000&segment=all"),
    )
    .await
    .1;
    let total = all["metrics"].as_array().unwrap().len();
    assert!(all["next_offset"].is_null());
    let mut walked = Vec::new();
    let mut offset = 0;
    loop {
        let page = get_json(
            address,
            &format!("/api/v1/models/{DEMO_MODEL}/metrics?limit=7&segment=all&offset={offset}"),
        )
        .await
        .1;
        walked.extend(page["metrics"].as_array().unwrap().iter().cloned());
        match page["next_offset"].as_u64() {
            Some(next) => offset = next,
            None => break,
        }
    }
    assert_eq!(walked.len(), total);
    assert_eq!(&walked, all["metrics"].as_array().unwrap());
    let only_age = get_json(address, &format!("/api/v1/models/{DEMO_MODEL}/metrics?feature=age&segment=all&from=2026-01-05T01:00:00Z&to=1767582000000")).await.1;
    let starts: Vec<&str> = only_age["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["window_start"].as_str().unwrap())
        .collect();
    assert_eq!(starts, ["2026-01-05T01:00:00Z", "2026-01-05T02:00:00Z"]);

    // The registry's history: v1 went live, then v2 replaced it.
    let timeline = get_json(address, &format!("/api/v1/models/{DEMO_MODEL}/timeline"))
        .await
        .1;
    let kinds: Vec<(&str, &str)> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["version"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("registered", "1"),
            ("registered", "2"),
            ("alias_set", "1"),
            ("promoted", "1"),
            ("alias_set", "2"),
            ("alias_set", "2"),
            ("promoted", "2"),
            ("retired", "1"),
        ]
    );
    let versions = timeline["versions"].as_array().unwrap();
    assert_eq!(versions[0]["run_id"], "run-1");
    assert_eq!(versions[0]["aliases"], serde_json::json!([]));
    assert!(versions[0]["live"][0]["until"].is_string());
    assert_eq!(
        versions[1]["aliases"],
        serde_json::json!(["challenger", "champion"])
    );
    assert!(versions[1]["live"][0]["until"].is_null());
    let none = get_json(address, "/api/v1/models/never-registered/timeline")
        .await
        .1;
    assert_eq!(none["events"], serde_json::json!([]));

    // Errors: JSON with stable codes.
    let error_schema = document.pointer("/components/schemas/Error").unwrap();
    for (path, status, code) in [
        ("/api/v1/models/nope/metrics", 404, "not_found"),
        (
            "/api/v1/models/churn/metrics?limit=100000",
            400,
            "invalid_parameter",
        ),
        (
            "/api/v1/models/churn/metrics?from=yesterday",
            400,
            "invalid_parameter",
        ),
        (
            "/api/v1/models/churn/metrics?colour=blue",
            400,
            "invalid_parameter",
        ),
        ("/api/v1/references/churn/404", 404, "not_found"),
        ("/api/v1/alerts/no-such-alert", 404, "not_found"),
        ("/api/v1/nothing-here", 404, "not_found"),
    ] {
        let (actual, body) = get_json(address, path).await;
        assert_eq!(actual, status, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}");
        conforms(&document, error_schema, &body, path);
    }

    // Writes need the bearer token; a CSV upload builds a reference.
    let csv = std::fs::read(server.directory.join("train.csv")).unwrap();
    let path = format!("/api/v1/references/{DEMO_MODEL}/8");
    let (status, _, body) =
        request(address, "PUT", &path, &[("Content-Type", "text/csv")], &csv).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let wrong = format!("Bearer {}x", &TOKEN[..TOKEN.len() - 1]);
    let (status, _, _) = request(
        address,
        "PUT",
        &path,
        &[("Content-Type", "text/csv"), ("Authorization", &wrong)],
        &csv,
    )
    .await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, body) = request(
        address,
        "PUT",
        &path,
        &[
            ("Content-Type", "application/xml"),
            ("Authorization", &bearer),
        ],
        &csv,
    )
    .await;
    assert_eq!(status, 415, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = request(
        address,
        "PUT",
        &path,
        &[("Content-Type", "text/csv"), ("Authorization", &bearer)],
        b"unrelated,columns\n1,2\n",
    )
    .await;
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = request(
        address,
        "PUT",
        &path,
        &[
            ("Content-Type", "text/csv; charset=utf-8"),
            ("Authorization", &bearer),
        ],
        &csv,
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let stored: Value = serde_json::from_slice(&body).unwrap();
    conforms(
        &document,
        response_schema(
            &document,
            "/api/v1/references/{model}/{version}",
            "put",
            201,
        ),
        &stored,
        "put",
    );
    assert_eq!(stored["version"], "8");
    assert_eq!(stored["row_count"], 3_000);
    let profile = get_json(address, &path).await.1;
    assert!(profile["features"]["monthly_charges"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_when_no_token_is_configured_and_metrics_are_prometheus_text() {
    let server = serve("readonly", None).await;
    let (status, _, body) = request(
        server.address,
        "PUT",
        &format!("/api/v1/references/{DEMO_MODEL}/9"),
        &[
            ("Content-Type", "text/csv"),
            ("Authorization", "Bearer anything"),
        ],
        b"age\n1\n",
    )
    .await;
    assert_eq!(status, 403);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "writes_disabled");

    let (status, content_type, body) = request(server.address, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"));
    let text = String::from_utf8(body).unwrap();
    // Labelled families appear once they have a sample (the Kafka test
    // scrapes those from `tidewatch run`).
    for family in [
        "# TYPE tidewatch_windows_closed counter",
        "tidewatch_windows_closed_total 0",
        "tidewatch_up 1",
    ] {
        assert!(text.contains(family), "{family} not in\n{text}");
    }
    assert!(text.trim_end().ends_with("# EOF"));
}

/// The training sample over the API: the token is needed, `from` and `to`
/// too, and the rows are exactly the sampled predictions that have a label
/// (computed here from the stream with the engine's sampling rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_training_data_needs_the_token_and_holds_the_labelled_sample() {
    let server = serve("training", Some(TOKEN)).await;
    let path = format!("/api/v1/models/{DEMO_MODEL}/training-data?from=0&to=4102444800000");
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, _) = request(server.address, "GET", &path, &[], b"").await;
    assert_eq!(status, 401);
    let (status, _, body) = request(
        server.address,
        "GET",
        &format!("/api/v1/models/{DEMO_MODEL}/training-data?from=0"),
        &[("Authorization", &bearer)],
        b"",
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, content_type, body) = request(
        server.address,
        "GET",
        &path,
        &[("Authorization", &bearer)],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "application/x-ndjson");
    let rows: Vec<Value> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // The oracle: sampled ids (the engine's rule at the default rate) with
    // an actual in the stream.
    let stream = std::fs::read_to_string(server.directory.join("stream.jsonl")).unwrap();
    let mut labels = std::collections::BTreeMap::new();
    for line in stream.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event["schema"] == "tidewatch.actual.v1" {
            let id = event["prediction_id"].as_str().unwrap().to_owned();
            if ingest::engine::in_training_sample(0.1, DEMO_MODEL, &id) {
                labels.insert(id, event["label"].clone());
            }
        }
    }
    assert!(labels.len() > 100, "{} sampled labels", labels.len());
    assert_eq!(rows.len(), labels.len());
    let mut seen: Vec<Value> = rows.iter().map(|r| r["actual.label"].clone()).collect();
    let mut want: Vec<Value> = labels.into_values().collect();
    let key = |v: &Value| v.to_string();
    seen.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(seen, want);
    for row in &rows {
        for feature in ["age", "tenure_months", "contract", "prediction.class"] {
            assert!(row.get(feature).is_some(), "{feature} missing in {row}");
        }
    }
}

/// Runs headless Chromium on `url`: (DOM after scripts ran, stderr).
fn chromium(url: &str) -> (String, String) {
    let binary = std::env::var("TIDEWATCH_TEST_CHROMIUM").expect(
        "TIDEWATCH_TEST_CHROMIUM is not set: run the integration suite through scripts/test.sh, \
         which installs Debian's chromium",
    );
    let profile = std::env::temp_dir().join(format!("tidewatch-chromium-{}", std::process::id()));
    let output = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1400,1000",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("starting chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn body_attribute(dom: &str, name: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let start = body.find(&format!("{name}=\""))? + name.len() + 2;
    Some(body[start..start + body[start..].find('"')?].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_load_in_a_real_browser_with_charts_drawn_and_the_drift_visible() {
    let server = serve("pages", None).await;
    for path in [
        "/",
        &format!("/models/{DEMO_MODEL}"),
        &format!("/models/{DEMO_MODEL}?score=jensen_shannon"),
    ] {
        let url = format!("http://{}{path}", server.address);
        let (dom, stderr) = tokio::task::spawn_blocking({
            let url = url.clone();
            move || chromium(&url)
        })
        .await
        .unwrap();
        assert_eq!(
            body_attribute(&dom, "data-errors").as_deref(),
            Some("0"),
            "{path}: {:?}",
            body_attribute(&dom, "data-error-text")
        );
        let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
        assert!(console.is_empty(), "{path}: console output {console:?}");
        let charts = dom.matches("data-chart=\"").count();
        let drawn: usize = body_attribute(&dom, "data-charts-drawn")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(drawn, charts, "{path}: every chart drawn");
        assert_eq!(
            dom.matches("class=\"uplot").count(),
            charts,
            "{path}: uPlot built every chart"
        );
        if path.starts_with("/models/") {
            assert!(charts >= 10, "{path}: {charts} charts");
            let points: usize = body_attribute(&dom, "data-points")
                .unwrap()
                .parse()
                .unwrap();
            assert!(points > charts * 5, "{path}: {points} data points");
        }
        if path == format!("/models/{DEMO_MODEL}") {
            // The heatmap: drifted cells for the drifted inputs, none for age.
            let row = |feature: &str| {
                let start = dom.find(&format!("<tr><th>{feature}</th>")).unwrap();
                dom[start..start + dom[start..].find("</tr>").unwrap()].to_owned()
            };
            assert!(row("monthly_charges").matches("cell drifted").count() >= 2);
            assert_eq!(row("age").matches("cell drifted").count(), 0);
            // Estimated against realized performance: a chart per metric,
            // drawn, with the band (whether 600 predictions an hour leave
            // it is the CLI demo test's matter).
            for metric in ["accuracy", "roc_auc"] {
                let section = &dom[dom
                    .find(&format!("id=\"estimated-{metric}\""))
                    .unwrap_or_else(|| panic!("no estimated {metric} chart"))..];
                let section = &section[..section.find("</section>").unwrap()];
                assert!(section.contains("class=\"uplot"), "{section}");
                for line in [
                    format!("estimated {metric}"),
                    format!("realized {metric}"),
                    "lower threshold".to_owned(),
                ] {
                    assert!(section.contains(&line), "{line}: {section}");
                }
            }
            // Multivariate drift: the mean reconstruction error with its
            // band, drawn, and flagged from the drift onset.
            let section = &dom[dom
                .find("id=\"multivariate\"")
                .expect("no multivariate chart")..];
            let section = &section[..section.find("</section>").unwrap()];
            assert!(section.contains("class=\"uplot"), "{section}");
            for line in [
                "mean reconstruction error",
                "lower threshold",
                "upper threshold",
            ] {
                assert!(section.contains(line), "{line}: {section}");
            }
            let flagged: usize = section
                .split("data-alerts=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|count| count.parse().ok())
                .expect("the chart counts its flagged windows");
            assert!(flagged >= 2, "{flagged} windows flagged: {section}");
            // The versions' lifecycle from the registry.
            let versions = &dom[dom.find("id=\"versions\"").expect("the versions table")..];
            let versions = &versions[..versions.find("</table>").unwrap()];
            assert_eq!(versions.matches("<tr>").count(), 3, "{versions}");
            assert!(versions.contains("challenger, champion"), "{versions}");
            assert!(versions.contains("→ now"), "{versions}");
            assert!(dom.contains("<b>retired</b> (replaced by v2)"));
        } else if path == "/" {
            assert!(dom.contains(&format!(
                "href=\"/models/{DEMO_MODEL}?version={DEMO_VERSION}\""
            )));
        }
    }
}

/// Sends `head` (a request's first lines, without the blank line) and
/// reads what comes back within `wait`: (status, body), or `None` when the
/// server closed the connection without an answer.
async fn head_only(address: SocketAddr, head: &str, wait: Duration) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_clients_get_documented_errors_and_the_server_stays_up() {
    let server = serve_with("abuse", Some("s3cret"), |state| {
        state.max_body_bytes = 1 << 20;
        state.max_connections = 8;
        state.request_timeout = Duration::from_secs(1);
    })
    .await;
    let address = server.address;
    // A 1 GB upload without a token: refused before a byte of it is read.
    let started = Instant::now();
    let (status, body) = head_only(
        address,
        "PUT /api/v1/references/churn/8 HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 1000000000\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"code\":\"unauthorized\""), "{body}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // With the token, a declared size over the limit: 413 at once, as JSON.
    let (status, body) = head_only(
        address,
        "PUT /api/v1/references/churn/8 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: text/csv\r\nContent-Length: 1000000000\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"code\":\"payload_too_large\""), "{body}");
    // A chunked body that grows past the limit: refused while it streams.
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
    let mut chunked = String::from(
        "PUT /api/v1/references/churn/8 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for _ in 0..20 {
        chunked.push_str(&chunk);
    }
    chunked.push_str("0\r\n\r\n");
    let (status, body) = head_only(address, &chunked, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(status, 413, "{body}");
    // An offset beyond a signed 64-bit integer is the client's mistake.
    let (status, body) = get_json(
        address,
        "/api/v1/models/churn/metrics?offset=18446744073709551615",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_parameter");
    // Slow clients: eight connections that never finish their headers fill
    // the server; a ninth is closed at once; after the header timeout the
    // slow ones are dropped and the server answers again.
    let mut slow = Vec::new();
    for _ in 0..8 {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /api/v1/health HTTP/1.1\r\nHo")
            .await
            .unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = head_only(
        address,
        "GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(
        refused, None,
        "a connection over the limit is closed unanswered"
    );
    for stream in &mut slow {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "a slow client must be disconnected after the header timeout"
        );
    }
    let (status, _) = get_json(address, "/api/v1/health").await;
    assert_eq!(status, 200);
}
