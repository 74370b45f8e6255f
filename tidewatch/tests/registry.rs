//! The model registry against the official `mlflow` client (installed by
//! `scripts/test.sh`): Tidewatch's HTTP server as `tidewatch run` starts it
//! with `[http]` and `[registry]`, driven by scripts/mlflow_client.py, which
//! makes the `MlflowClient` calls a team's scripts and CI make. Checks what
//! the client saw, and that every change reached the registry's outbox as
//! the documented CloudEvent, in order.
//!
//! A second test publishes the outbox to the real broker: with the broker
//! unreachable the events wait (none marked, none lost), and after a
//! restart against the broker they all arrive, in order, once each.
//!
//! Without `TIDEWATCH_TEST_MLFLOW_PYTHON` or the broker the tests fail and
//! say why.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use registry::events::ChangeKind;
use serde_json::{json, Value};
use tidewatch::config::Config;

fn mlflow_python() -> String {
    std::env::var("TIDEWATCH_TEST_MLFLOW_PYTHON").expect(
        "TIDEWATCH_TEST_MLFLOW_PYTHON is not set: run the integration suite through scripts/test.sh, \
         which installs the mlflow client",
    )
}

/// A test's own names, folder and API token (in an environment variable
/// named after the test); the folder and the variable go when it ends
/// (the folder stays after a failure, for its logs).
struct Scenario {
    name: String,
    directory: std::path::PathBuf,
    token_env: String,
}

/// The API token of every scenario.
const TOKEN: &str = "registry-test-token-8c1f";

impl Scenario {
    fn new(label: &str) -> Self {
        let name = format!("{label}_{}", std::process::id());
        let directory = std::env::temp_dir().join(format!("tidewatch-{name}"));
        std::fs::create_dir_all(&directory).unwrap();
        let token_env = format!("TIDEWATCH_TEST_TOKEN_{}", name.to_ascii_uppercase());
        std::env::set_var(&token_env, TOKEN);
        Self {
            name,
            directory,
            token_env,
        }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        std::env::remove_var(&self.token_env);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.directory);
        }
    }
}

/// `[kafka]` on `brokers` for scenario `name` (its group, dead-letter and
/// predictions topics), with `properties` lines appended.
fn kafka_section(brokers: &str, name: &str, properties: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"tw-{name}\"\n\
         dead_letter_topic = \"dead-letters-{name}\"\n\
         topics = [{{ name = \"predictions-{name}\", kind = \"prediction\" }}]\n{properties}\n"
    )
}

/// A config with `[http]` on `port` (token from `token_env`) and the
/// registry in `directory`; `extra` adds sections (`[kafka]`) and
/// `registry_extra` lines of `[registry]`.
fn config(
    directory: &Path,
    port: u16,
    token_env: &str,
    extra: &str,
    registry_extra: &str,
) -> Config {
    let text = format!(
        r#"
version = 1
{extra}
[store]
type = "embedded"
path = "tidewatch.sqlite"
[windows]
size = "1h"
[[models]]
name = "churn"
task = "classification"
positive_class = "yes"
features = [{{ name = "usage", kind = "numeric" }}]
[http]
listen = "127.0.0.1:{port}"
token_env = "{token_env}"
[registry]
path = "registry.sqlite"
{registry_extra}
"#
    );
    let path = directory.join("tidewatch.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mlflow_client_registers_versions_and_moves_aliases_and_every_change_is_an_event() {
    let python = mlflow_python();
    let scenario = Scenario::new("registry");
    let (directory, token_env, token) = (
        scenario.directory.clone(),
        scenario.token_env.clone(),
        TOKEN,
    );
    let port = common::free_port();
    let config = config(&directory, port, &token_env, "", "");
    let store = config.store.open().await.unwrap();
    let (stop, server) = tidewatch::service::start_http(
        &config,
        config.http.as_ref().unwrap(),
        store,
        tidewatch::http::Telemetry::default(),
    )
    .await
    .unwrap();

    // Training data of churn v1, named by its `tidewatch.reference` tag.
    let training = directory.join("churn-train.csv");
    let mut csv = String::from("usage\n");
    for i in 0..500 {
        csv.push_str(&format!("{}\n", (i as f64 * 0.731).sin() * 4.2 + 10.125));
    }
    std::fs::write(&training, csv).unwrap();
    let training_uri = format!("file://{}", training.display());
    let uri = format!("http://127.0.0.1:{port}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mlflow_client.py");
    let training_env = training_uri.clone();
    let client = move || {
        std::process::Command::new(&python)
            .arg(&script)
            .arg(&uri)
            .env("MLFLOW_TRACKING_TOKEN", token)
            .env("TIDEWATCH_TEST_TRAINING_DATA", &training_env)
            .output()
    };
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::task::spawn_blocking(client),
    )
    .await
    .expect("the mlflow client finished within 180 s")
    .unwrap()
    .expect("running the mlflow client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the mlflow client failed:\n{stderr}"
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });

    // What the client saw.
    assert_eq!(
        seen["created"],
        json!({"name": "churn", "tags": {"team": "growth"}, "description": "Churn classifier"})
    );
    let first = &seen["versions"][0];
    assert_eq!(first["version"], "1");
    assert_eq!(first["source"], "s3://models/churn/1");
    assert_eq!(first["run_id"], "3f1c2a9e7b5d4c1a");
    assert_eq!(first["status"], "READY");
    assert_eq!(first["tags"]["tidewatch.reference"], training_uri.as_str());
    assert_eq!(seen["versions"][1]["version"], "2");
    assert_eq!(seen["champion"]["version"], "1");
    assert_eq!(seen["champion"]["aliases"], json!(["champion"]));
    assert_eq!(
        seen["aliases_after_set"],
        json!({"champion": "1", "challenger": "2"})
    );
    assert_eq!(seen["aliases_after_move"], json!({"champion": "2"}));
    assert_eq!(seen["v1_after"]["current_stage"], "Archived");
    assert_eq!(seen["v1_after"]["description"], "first, superseded");
    // Tidewatch's bookkeeping tags aside (the reference may be attached by
    // now), the user's tags.
    let mut v1_tags = seen["v1_after"]["tags"].as_object().unwrap().clone();
    v1_tags.remove("tidewatch.reference.attached");
    assert_eq!(
        Value::Object(v1_tags),
        json!({"tidewatch.reference": training_uri})
    );
    assert_eq!(seen["v2_after"]["current_stage"], "Production");
    assert_eq!(seen["v2_after"]["tags"], json!({"validated": "yes"}));
    assert_eq!(seen["latest_production"], json!(["2"]));
    assert_eq!(seen["download_uri"], "s3://models/churn/2");
    assert_eq!(seen["search_models"], json!(["churn"]));
    assert_eq!(seen["search_all_models"], json!(["fraud", "churn"]));
    assert_eq!(
        seen["search_versions"],
        json!([["churn", "1"], ["churn", "2"]])
    );
    assert_eq!(seen["search_by_run"], json!([["fraud", "1"]]));
    assert_eq!(seen["search_by_tag"], json!([["churn", "2"]]));
    assert_eq!(seen["paged_models"], json!(["churn", "fraud"]));
    assert_eq!(
        seen["concurrent_versions"],
        json!([2, 3, 4, 5, 6, 7, 8, 9]),
        "8 concurrent creates got distinct numbers"
    );
    assert_eq!(seen["renamed_versions"], 9);
    assert_eq!(
        seen["after_delete_version"],
        json!([2, 3, 4, 5, 6, 7, 8, 9])
    );
    assert_eq!(
        seen["errors"],
        json!({
            "missing_model": "RESOURCE_DOES_NOT_EXIST",
            "duplicate_model": "RESOURCE_ALREADY_EXISTS",
            "bad_name": "INVALID_PARAMETER_VALUE",
            "missing_version": "RESOURCE_DOES_NOT_EXIST",
            "missing_alias": "RESOURCE_DOES_NOT_EXIST",
            "reserved_alias": "INVALID_PARAMETER_VALUE",
            "deleted_model": "RESOURCE_DOES_NOT_EXIST",
        })
    );
    assert_eq!(seen["write_without_token"], "UNAUTHENTICATED");
    assert_eq!(seen["read_without_token"], "churn");

    // The version's reference profile, built from the tagged training data
    // with the code of `tidewatch reference build`.
    let registry = registry::Registry::open(&directory.join("registry.sqlite"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let attached = loop {
        let events = registry.recent_events(1_000).await.unwrap();
        if let Some(event) = events
            .iter()
            .find(|e| e.change.kind == ChangeKind::ReferenceProfileAttached)
        {
            break event.cloud_event();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reference was attached"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // No broker: the in-process bus drains the outbox into the store.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while registry.pending_count().await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox was not drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    server.await.unwrap();
    assert_eq!(attached["subject"], "churn/1");
    assert_eq!(
        attached["data"],
        json!({"name": "churn", "version": "1", "source": training_uri, "rows": 500})
    );
    let store = config.store.open().await.unwrap();
    let stored = store
        .reference("churn", "1")
        .await
        .unwrap()
        .expect("a stored profile");
    let spec = config.model("churn").unwrap();
    let expected_profile = tidewatch::training::build_reference(spec, "1", &training)
        .unwrap()
        .profile;
    assert_eq!(stored.row_count, 500);
    assert_eq!(stored.source, training_uri);
    assert_eq!(
        stored.features, expected_profile.features,
        "the same profile as `tidewatch reference build` makes"
    );
    assert!(store.reference("churn", "2").await.unwrap().is_none());

    // Every change in the outbox, in order, as its CloudEvent (the
    // attachment, made in the background, aside).
    let events: Vec<registry::events::RegistryEvent> = registry
        .recent_events(1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.change.kind != ChangeKind::ReferenceProfileAttached)
        .collect();
    let kinds: Vec<ChangeKind> = events.iter().map(|e| e.change.kind).collect();
    use ChangeKind::*;
    let mut expected = vec![
        RegisteredModelCreated,   // churn
        ModelVersionCreated,      // churn 1
        ModelVersionCreated,      // churn 2
        ModelVersionAliasCreated, // champion → 1
        ModelVersionAliasCreated, // challenger → 2
        ModelVersionAliasCreated, // champion → 2
        ModelVersionAliasDeleted, // challenger
        ModelVersionTagSet,       // validated on 2
        ModelVersionTagDeleted,   // tidewatch.reference on 1
        RegisteredModelCreated,   // fraud
        ModelVersionCreated,      // fraud 1
    ];
    expected.extend([ModelVersionCreated; 8]); // the concurrent creates
    assert_eq!(kinds, expected);
    let documents: Vec<Value> = events.iter().map(|e| e.cloud_event()).collect();
    assert_eq!(
        documents[1]["data"],
        json!({
            "name": "churn", "version": "1", "source": "s3://models/churn/1",
            "run_id": "3f1c2a9e7b5d4c1a", "description": "first",
            "tags": {"tidewatch.reference": training_uri, "note": "first try"},
        })
    );
    assert_eq!(
        documents[5]["type"],
        "io.tidewatch.registry.model_version_alias.created"
    );
    assert_eq!(documents[5]["subject"], "churn/2");
    assert_eq!(
        documents[5]["data"],
        json!({"name": "churn", "alias": "champion", "version": "2"})
    );
    assert_eq!(
        documents[6]["data"],
        json!({"name": "churn", "alias": "challenger"})
    );
    for document in &documents {
        assert_eq!(document["specversion"], "1.0");
        assert_eq!(document["source"], "tidewatch/registry");
    }
    let ids: std::collections::BTreeSet<&str> = documents
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), documents.len(), "event ids are unique");

    // The lifecycle events went into the store's version events (what the
    // pages and API show).
    let recorded: Vec<(store::VersionEventKind, String, String)> = store
        .version_events("churn", 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind != store::VersionEventKind::ReferenceAttached)
        .map(|e| (e.kind, e.model_version, e.alias))
        .collect();
    use store::VersionEventKind::{AliasDeleted, AliasSet, Registered};
    let owned = |kind, version: &str, alias: &str| (kind, version.to_owned(), alias.to_owned());
    assert_eq!(
        recorded,
        [
            owned(Registered, "1", ""),
            owned(Registered, "2", ""),
            owned(AliasSet, "1", "champion"),
            owned(AliasSet, "2", "challenger"),
            owned(AliasSet, "2", "champion"),
            owned(AliasDeleted, "", "challenger"),
        ]
    );
    println!(
        "the mlflow client made {} registry changes; {} events in the outbox, {} lifecycle events in the store",
        expected.len(),
        events.len(),
        recorded.len()
    );
}

/// Starts the HTTP server of `config` (registry and publisher included).
async fn start(
    config: &Config,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let store = config.store.open().await.unwrap();
    tidewatch::service::start_http(
        config,
        config.http.as_ref().unwrap(),
        store,
        tidewatch::http::Telemetry::default(),
    )
    .await
    .unwrap()
}

/// `tidewatch run` of `config`, once its HTTP server on `port` answers.
async fn start_run(
    config: &Config,
    port: u16,
) -> (
    tokio::task::JoinHandle<anyhow::Result<ingest::kafka::RunReport>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (pipeline, stop) = common::start_pipeline(config);
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(!pipeline.is_finished(), "tidewatch run stopped early");
        assert!(std::time::Instant::now() < deadline, "no HTTP server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (pipeline, stop)
}

/// A consumer of `topic` from its beginning, in group `group`.
fn reader(brokers: &str, group: &str, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// A registry write over HTTP with the token; the status.
async fn write(port: u16, token: &str, path: &str, body: Value) -> u16 {
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let authorization = format!("Bearer {token}");
    let (status, _, answer) = common::http::request(
        address,
        "POST",
        &format!("/api/2.0/mlflow/{path}"),
        &[
            ("content-type", "application/json"),
            ("authorization", &authorization),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&answer));
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_events_wait_out_a_broker_outage_and_a_restart_and_arrive_once_in_order() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::Message;

    let brokers = common::brokers();
    let scenario = Scenario::new("registry_bus");
    let (name, directory, token_env, token) = (
        scenario.name.clone(),
        scenario.directory.clone(),
        scenario.token_env.clone(),
        TOKEN,
    );
    let topic = format!("registry-{name}");
    let kafka = |brokers: &str| {
        kafka_section(
            brokers,
            &name,
            "properties = { \"message.timeout.ms\" = \"1500\" }",
        )
    };
    let registry_topic = format!("topic = \"{topic}\"");

    // The broker unreachable (nothing listens on port 1): changes succeed,
    // their events wait in the outbox.
    let port = common::free_port();
    let down = config(
        &directory,
        port,
        &token_env,
        &kafka("127.0.0.1:1"),
        &registry_topic,
    );
    let (stop, server) = start(&down).await;
    write(
        port,
        token,
        "registered-models/create",
        json!({"name": "churn"}),
    )
    .await;
    for i in 1..=3 {
        write(
            port,
            token,
            "model-versions/create",
            json!({"name": "churn", "source": format!("s3://models/churn/{i}"), "run_id": format!("run{i}")}),
        )
        .await;
    }
    write(
        port,
        token,
        "registered-models/alias",
        json!({"name": "churn", "alias": "champion", "version": "2"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop.send(());
    server.await.unwrap();
    let registry = registry::Registry::open(&directory.join("registry.sqlite"))
        .await
        .unwrap();
    assert_eq!(
        registry.pending_count().await.unwrap(),
        5,
        "every event waits while the broker is unreachable"
    );
    drop(registry);

    // Restarted against the broker: the waiting events go out, then a new
    // change's event follows.
    let port = common::free_port();
    let up = config(
        &directory,
        port,
        &token_env,
        &kafka(&brokers),
        &registry_topic,
    );
    let (stop, server) = start(&up).await;
    write(
        port,
        token,
        "registered-models/alias",
        json!({"name": "churn", "alias": "challenger", "version": "3"}),
    )
    .await;
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("reader-{name}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut received = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while received.len() < 6 && std::time::Instant::now() < deadline {
        // Until the publisher's first event creates the topic, the
        // consumer reports it unknown.
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let content_type = message
            .headers()
            .and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == "content-type")
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            })
            .unwrap_or_default();
        assert!(content_type.starts_with("application/cloudevents+json"));
        assert_eq!(message.key(), Some("churn".as_bytes()));
        received.push(serde_json::from_slice::<Value>(message.payload().unwrap()).unwrap());
    }
    // Nothing more arrives: each event was published once.
    let extra = consumer.poll(Duration::from_secs(3));
    assert!(extra.is_none(), "an event was published twice");
    let _ = stop.send(());
    server.await.unwrap();

    let ids: Vec<&str> = received.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6"], "all, in order, once");
    let types: Vec<&str> = received
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "io.tidewatch.registry.registered_model.created",
            "io.tidewatch.registry.model_version.created",
            "io.tidewatch.registry.model_version.created",
            "io.tidewatch.registry.model_version.created",
            "io.tidewatch.registry.model_version_alias.created",
            "io.tidewatch.registry.model_version_alias.created",
        ]
    );
    assert_eq!(received[3]["data"]["run_id"], "run3");
    assert_eq!(
        received[5]["data"],
        json!({"name": "churn", "alias": "challenger", "version": "3"})
    );
    let registry = registry::Registry::open(&directory.join("registry.sqlite"))
        .await
        .unwrap();
    assert_eq!(registry.pending_count().await.unwrap(), 0);
    println!(
        "6 registry events: 5 waited out the outage and a restart, all delivered once, in order"
    );
}

/// The registry and a gateway following it: moving `challenger` and
/// `champion` in the registry moves the gateway's routes within seconds,
/// each change is published as `io.tidewatch.serving.route.updated`, a
/// version the gateway was not configured with is loaded from its
/// registered source, and an alias naming a version whose source cannot be
/// loaded is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_following_the_registry_routes_by_its_aliases() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;

    let brokers = common::brokers();
    let scenario = Scenario::new("registry_routes");
    let (name, directory, token_env, token) = (
        scenario.name.clone(),
        scenario.directory.clone(),
        scenario.token_env.clone(),
        TOKEN,
    );
    for (version, weight) in [("1", 0.5), ("2", -0.5), ("4", 3.0)] {
        let model = serving::linear::LinearModel::classifier(
            vec!["usage".into()],
            vec!["no".into(), "yes".into()],
            vec![vec![weight]],
            vec![0.0],
        )
        .unwrap();
        std::fs::write(directory.join(format!("v{version}.json")), model.to_json()).unwrap();
    }
    let (http_port, registry_topic, route_topic) = (
        common::free_port(),
        format!("registry-{name}"),
        format!("routes-{name}"),
    );
    let extra = kafka_section(&brokers, &name, "")
        + &format!(
            r#"
[serving]
listen = "127.0.0.1:0"
[serving.registry]
url = "http://127.0.0.1:{http_port}"
topic = "{registry_topic}"
route_topic = "{route_topic}"
[[serving.models]]
name = "churn"
champion = "1"
versions = [
  {{ version = "1", runtime = "linear", path = "v1.json" }},
  {{ version = "2", runtime = "linear", path = "v2.json" }},
]
"#
        );
    let config = config(
        &directory,
        http_port,
        &token_env,
        &extra,
        &format!("topic = \"{registry_topic}\""),
    );

    // The registry: churn with versions 1–4 (3's file does not exist; 4 is
    // not in the gateway's configuration), champion → 1.
    let (stop_http, http) = start(&config).await;
    write(
        http_port,
        token,
        "registered-models/create",
        json!({"name": "churn"}),
    )
    .await;
    for i in 1..=4 {
        write(
            http_port,
            token,
            "model-versions/create",
            json!({"name": "churn", "source": format!("file://{}/v{i}.json", directory.display())}),
        )
        .await;
    }
    let alias =
        |alias: &str, version: &str| json!({"name": "churn", "alias": alias, "version": version});
    write(
        http_port,
        token,
        "registered-models/alias",
        alias("champion", "1"),
    )
    .await;

    // The gateway, following it.
    let gateway = common::gateway::start(&config).await;
    let gateway_address = gateway.address;
    let answered_by = |request: usize| async move {
        let body = json!({"id": format!("r{request}"), "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [[1.5]]}]});
        let (status, _, answer) = common::http::request(
            gateway_address,
            "POST",
            "/v2/models/churn/infer",
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        answer["model_version"].as_str().unwrap().to_owned()
    };
    let mut request = 0;
    let mut wait_for = |version: &'static str| {
        request += 1;
        let first = request;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut i = first * 1000;
            loop {
                i += 1;
                if answered_by(i).await == version {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the gateway never routed to version {version}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for("1").await;
    // The follower is assigned the topic's end once it exists; give it a
    // moment after the first published event before moving aliases.
    tokio::time::sleep(Duration::from_secs(3)).await;

    write(
        http_port,
        token,
        "registered-models/alias",
        alias("challenger", "2"),
    )
    .await;
    write(
        http_port,
        token,
        "registered-models/alias",
        alias("champion", "2"),
    )
    .await;
    wait_for("2").await;
    // Version 3 is registered but its file cannot be loaded: refused, the
    // route stays.
    write(
        http_port,
        token,
        "registered-models/alias",
        alias("champion", "3"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_for("2").await;
    // Version 4 is not configured: loaded from its registered source, then
    // it answers.
    write(
        http_port,
        token,
        "registered-models/alias",
        alias("champion", "4"),
    )
    .await;
    wait_for("4").await;

    let _ = gateway.stop.send(());
    let telemetry = gateway.handle.await.unwrap().unwrap();
    let _ = stop_http.send(());
    http.await.unwrap();
    assert_eq!(
        telemetry.adapter_events_total("registry", "route_refused"),
        1
    );

    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("reader-{name}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&route_topic]).unwrap();
    let mut updates = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while updates.len() < 3 && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            updates.push(serde_json::from_slice::<Value>(message.payload().unwrap()).unwrap());
        }
    }
    assert!(
        consumer.poll(Duration::from_secs(2)).is_none(),
        "three route changes only"
    );
    assert_eq!(updates.len(), 3, "{updates:?}");
    for update in &updates {
        assert_eq!(update["type"], "io.tidewatch.serving.route.updated");
        assert_eq!(update["specversion"], "1.0");
        assert_eq!(update["subject"], "churn");
    }
    assert_eq!(updates[0]["data"]["challenger"], "2");
    assert_eq!(updates[0]["data"]["challenger_mode"]["mode"], "shadow");
    assert_eq!(updates[1]["data"]["champion"], "2");
    assert_eq!(updates[1]["data"]["previous_champion"], "1");
    assert_eq!(
        updates[1]["data"]["challenger"],
        Value::Null,
        "promoted: no challenger left"
    );
    assert_eq!(updates[2]["data"]["champion"], "4");
    assert_eq!(updates[2]["data"]["previous_champion"], "2");
    println!("the gateway followed the registry: challenger → 2, champion → 2 (promoted), champion → 3 refused (no file), champion → 4 loaded from its registered source");
}

/// A real `mlflow server` (SQLite backend) on 127.0.0.1, stopped on drop
/// with the processes it starts (uvicorn, the job consumers): it runs in a
/// process group of its own, and the whole group is killed.
struct MlflowServer {
    child: std::process::Child,
    url: String,
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--"])
            .arg(format!("-{}", self.child.id()))
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mlflow server` in `directory`, allowed to deliver webhooks to
/// http:// loopback addresses (MLflow refuses both by default).
async fn start_mlflow(python: &str, directory: &Path) -> MlflowServer {
    let port = common::free_port();
    let log = std::fs::File::create(directory.join("mlflow-server.log")).unwrap();
    let child = std::process::Command::new(python)
        .args([
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--workers",
            "1",
        ])
        .arg("--port")
        .arg(port.to_string())
        .arg("--backend-store-uri")
        .arg(format!(
            "sqlite:///{}",
            directory.join("mlflow.db").display()
        ))
        .arg("--default-artifact-root")
        .arg(directory.join("artifacts"))
        .env("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
        .env("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("starting mlflow server");
    let server = MlflowServer {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            let (status, _, _) = common::http::request(address, "GET", "/health", &[], b"").await;
            if status == 200 {
                return server;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mlflow server did not start; see {}",
            directory.join("mlflow-server.log").display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A call to MLflow's REST API; the answer.
async fn mlflow_call(url: &str, method: &str, path: &str, body: Value) -> Value {
    let address: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let (status, _, answer) = common::http::request(
        address,
        method,
        &format!("/api/2.0/mlflow/{path}"),
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&answer));
    serde_json::from_slice(&answer).unwrap_or(Value::Null)
}

/// Waits until `registry`'s outbox holds `count` events (30 s at most).
async fn wait_for_events(registry: &registry::Registry, count: usize, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = registry.recent_events(1_000).await.unwrap().len();
        if found >= count {
            assert_eq!(found, count, "{what}: more events than changes");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {found} of {count} events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One MLflow server followed by two Tidewatch registries, one receiving
/// its webhooks and one polling it: each registration, tag and alias change
/// made on MLflow becomes the same event in both; a replayed, forged or
/// stale webhook delivery adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mlflow_servers_changes_are_bridged_by_webhooks_and_by_polling_into_the_same_events() {
    let python = mlflow_python();
    let scenario = Scenario::new("registry_bridge");
    let (directory, token_env) = (scenario.directory.clone(), scenario.token_env.clone());
    let mlflow = start_mlflow(&python, &directory).await;

    let secret_env = format!("TIDEWATCH_TEST_MLFLOW_SECRET_{}", std::process::id());
    let secret = "bridge-secret-0c3f9a51e27b";
    std::env::set_var(&secret_env, secret);
    let instance = |label: &str, bridge: String| {
        let folder = directory.join(label);
        std::fs::create_dir_all(&folder).unwrap();
        let port = common::free_port();
        (
            port,
            config(
                &folder,
                port,
                &token_env,
                "",
                &format!("[registry.bridge]\n{bridge}"),
            ),
        )
    };
    let (hook_port, hooked) =
        instance("webhooks", format!("webhook_secret_env = \"{secret_env}\""));
    let (_, polled) = instance(
        "polling",
        format!("mlflow_url = \"{}\"\npoll_interval = \"1s\"", mlflow.url),
    );
    let (stop_hooked, hooked_server) = start(&hooked).await;
    let (stop_polled, polled_server) = start(&polled).await;
    let hooked_registry = registry::Registry::open(&directory.join("webhooks/registry.sqlite"))
        .await
        .unwrap();
    let polled_registry = registry::Registry::open(&directory.join("polling/registry.sqlite"))
        .await
        .unwrap();

    // MLflow sends its webhooks to the first instance.
    let webhook_url = format!(
        "http://127.0.0.1:{hook_port}{}",
        registry::bridge::WEBHOOK_PATH
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mlflow_webhook.py");
    let (mlflow_url, python_for_hook) = (mlflow.url.clone(), python.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python_for_hook)
            .arg(script)
            .arg(mlflow_url)
            .arg(webhook_url)
            .env("MLFLOW_WEBHOOK_SECRET", secret)
            .env("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
            .env("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "creating the webhook failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Changes on MLflow, one at a time; each reaches both registries.
    let steps: Vec<(&str, &str, Value)> = vec![
        (
            "POST",
            "registered-models/create",
            json!({"name": "fraud", "tags": [{"key": "team", "value": "risk"}]}),
        ),
        (
            "POST",
            "model-versions/create",
            json!({"name": "fraud", "source": "s3://models/fraud/1", "run_id": "a1b2c3", "tags": [{"key": "data", "value": "2026-11"}]}),
        ),
        (
            "POST",
            "registered-models/alias",
            json!({"name": "fraud", "alias": "champion", "version": "1"}),
        ),
        (
            "POST",
            "model-versions/create",
            json!({"name": "fraud", "source": "s3://models/fraud/2"}),
        ),
        (
            "POST",
            "registered-models/alias",
            json!({"name": "fraud", "alias": "champion", "version": "2"}),
        ),
        (
            "POST",
            "model-versions/set-tag",
            json!({"name": "fraud", "version": "2", "key": "validated", "value": "yes"}),
        ),
        (
            "DELETE",
            "model-versions/delete-tag",
            json!({"name": "fraud", "version": "1", "key": "data"}),
        ),
        (
            "DELETE",
            "registered-models/alias",
            json!({"name": "fraud", "alias": "champion"}),
        ),
    ];
    for (count, (method, path, body)) in steps.into_iter().enumerate() {
        mlflow_call(&mlflow.url, method, path, body).await;
        wait_for_events(
            &hooked_registry,
            count + 1,
            &format!("webhooks after {path}"),
        )
        .await;
        wait_for_events(
            &polled_registry,
            count + 1,
            &format!("polling after {path}"),
        )
        .await;
    }
    let events = |registry: &registry::Registry| {
        let registry = registry.clone();
        async move {
            registry
                .recent_events(1_000)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.change.kind, e.change.data))
                .collect::<Vec<_>>()
        }
    };
    let (by_webhook, by_polling) = (
        events(&hooked_registry).await,
        events(&polled_registry).await,
    );
    assert_eq!(by_webhook, by_polling, "the same events either way");
    use ChangeKind::*;
    let kinds: Vec<ChangeKind> = by_webhook.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(
        kinds,
        [
            RegisteredModelCreated,
            ModelVersionCreated,
            ModelVersionAliasCreated,
            ModelVersionCreated,
            ModelVersionAliasCreated,
            ModelVersionTagSet,
            ModelVersionTagDeleted,
            ModelVersionAliasDeleted,
        ]
    );
    assert_eq!(
        by_webhook[1].1,
        json!({"name": "fraud", "version": "1", "source": "s3://models/fraud/1", "run_id": "a1b2c3",
               "tags": {"data": "2026-11"}, "description": null})
    );
    assert_eq!(
        by_webhook[4].1,
        json!({"name": "fraud", "alias": "champion", "version": "2"})
    );

    // A replayed delivery, a forged one and a stale one add nothing.
    let hook_address: std::net::SocketAddr = format!("127.0.0.1:{hook_port}").parse().unwrap();
    let deliver = |id: &str, timestamp: u64, key: &str| {
        let body = json!({"entity": "model_version_alias", "action": "created", "timestamp": "",
                          "data": {"name": "fraud", "alias": "champion", "version": "1"}})
        .to_string();
        let timestamp = timestamp.to_string();
        let signature = registry::bridge::sign(key.as_bytes(), id, &timestamp, body.as_bytes());
        let id = id.to_owned();
        async move {
            common::http::request(
                hook_address,
                "POST",
                registry::bridge::WEBHOOK_PATH,
                &[
                    ("content-type", "application/json"),
                    ("x-mlflow-delivery-id", &id),
                    ("x-mlflow-timestamp", &timestamp),
                    ("x-mlflow-signature", &signature),
                ],
                body.as_bytes(),
            )
            .await
            .0
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(deliver("replayed-1", now, secret).await, 200);
    assert_eq!(
        deliver("replayed-1", now, secret).await,
        200,
        "a replay is acknowledged"
    );
    assert_eq!(deliver("forged-1", now, "not-the-secret-000").await, 401);
    assert_eq!(deliver("stale-1", now - 3_600, secret).await, 401);
    wait_for_events(&hooked_registry, 9, "one delivery recorded once").await;

    let _ = stop_hooked.send(());
    hooked_server.await.unwrap();
    let _ = stop_polled.send(());
    polled_server.await.unwrap();
    println!("8 MLflow changes bridged into the same 8 events by webhooks and by polling");
    std::env::remove_var(&secret_env);
    drop(mlflow);
}

/// A version registered with a `tidewatch.reference` tag (through the
/// registry `tidewatch run` serves with `[http]`) gets its reference
/// profile, and `tidewatch run` picks it up and compares that version's
/// windows with it (the windows name the tag's source as their reference).
/// Its lifecycle (registered, reference attached, promoted, replaced,
/// rolled back) is recorded by `tidewatch run` from the registry topic,
/// once, across a restart that reads the topic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_versions_tagged_reference_is_what_tidewatch_run_compares_its_windows_with() {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let brokers = common::brokers();
    let scenario = Scenario::new("registry_reference");
    let (name, directory, token_env, token) = (
        scenario.name.clone(),
        scenario.directory.clone(),
        scenario.token_env.clone(),
        TOKEN,
    );
    let topic = format!("predictions-{name}");
    let extra = kafka_section(&brokers, &name, "[reference]\nrefresh_interval = \"1s\"");
    let port = common::free_port();
    // Written by `config`, then given windows that close 2 s after their
    // last event.
    config(
        &directory,
        port,
        &token_env,
        &extra,
        &format!("topic = \"registry-{name}\""),
    );
    let path = directory.join("tidewatch.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[windows]\nsize = \"1h\"",
        "[windows]\nsize = \"1h\"\nidle_close_after = \"2s\"\ncheckpoint_interval = \"300ms\"",
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();

    let training = directory.join("churn-v1-train.csv");
    let mut csv = String::from("usage\n");
    for i in 0..400 {
        csv.push_str(&format!("{}\n", (i as f64 * 0.377).cos() * 3.1 + 7.25));
    }
    std::fs::write(&training, csv).unwrap();
    let source = format!("file://{}", training.display());

    // `tidewatch run`, serving the registry on [http].
    common::create_topics(&brokers, &[&topic, &format!("dead-letters-{name}")]).await;
    let (pipeline, stop_pipeline) = start_run(&config, port).await;
    write(
        port,
        token,
        "registered-models/create",
        json!({"name": "churn"}),
    )
    .await;
    write(
        port,
        token,
        "model-versions/create",
        json!({"name": "churn", "source": "s3://models/churn/1",
               "tags": [{"key": "tidewatch.reference", "value": source}]}),
    )
    .await;
    let store = config.store.open().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.reference("churn", "1").await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no reference attached"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Predictions of version 1, an hour ago.
    let producer: FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    const EVENTS: usize = 200;
    for i in 0..EVENTS {
        let event = json!({
            "schema": "tidewatch.prediction.v1", "model": "churn", "model_version": "1",
            "prediction_id": format!("p{i}"), "timestamp": hour_ago + i as i64 * 1_000,
            "features": {"usage": (i as f64 * 0.211).sin() * 3.3 + 7.5},
            "prediction": {"score": 0.4, "class": "no"},
        });
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&format!("p{i}"))
                    .payload(&event.to_string()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let row = loop {
        let rows = store
            .window_metrics(store::MetricsQuery {
                model: Some("churn".into()),
                feature: Some("usage".into()),
                segment: Some("all".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let total: u64 = rows.iter().map(|r| r.metrics.count).sum();
        if total == EVENTS as u64 {
            break rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the windows never held the {EVENTS} events: {total}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for window in &row {
        assert_eq!(window.key.model_version, "1");
        assert_eq!(
            window.reference_source.as_deref(),
            Some(source.as_str()),
            "the version's windows are compared with its tagged training data"
        );
    }

    // Its lifecycle: v1 goes live, v2 is registered and replaces it;
    // `tidewatch run` records each change from the registry topic.
    let alias =
        |version: &'static str| json!({"name": "churn", "alias": "champion", "version": version});
    assert_eq!(
        write(port, token, "registered-models/alias", alias("1")).await,
        200
    );
    write(
        port,
        token,
        "model-versions/create",
        json!({"name": "churn", "source": "s3://models/churn/2", "run_id": "run-2"}),
    )
    .await;
    assert_eq!(
        write(port, token, "registered-models/alias", alias("2")).await,
        200
    );
    let wait_for_events = async |count: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let events = store.version_events("churn", 100).await.unwrap();
            if events.len() >= count {
                return events;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {count} version events recorded",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait_for_events(5).await;
    stop_pipeline.send(()).unwrap();
    pipeline.await.unwrap().unwrap();

    // A restart reads the topic from its beginning again; a rollback made
    // after it is recorded once, and nothing before it twice.
    let (pipeline, stop_pipeline) = start_run(&config, port).await;
    assert_eq!(
        write(port, token, "registered-models/alias", alias("1")).await,
        200
    );
    let events = wait_for_events(6).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(store.version_events("churn", 100).await.unwrap(), events);
    stop_pipeline.send(()).unwrap();
    pipeline.await.unwrap().unwrap();
    let timeline = tidewatch::lifecycle::timeline(&events);
    use tidewatch::lifecycle::EntryKind::*;
    let entries: Vec<(tidewatch::lifecycle::EntryKind, &str)> = timeline
        .entries
        .iter()
        .filter(|e| e.kind != AliasSet)
        .map(|e| (e.kind, e.version.as_str()))
        .collect();
    assert_eq!(
        entries,
        [
            (Registered, "1"),
            (ReferenceAttached, "1"),
            (Promoted, "1"),
            (Registered, "2"),
            (Promoted, "2"),
            (Retired, "1"),
            (Promoted, "1"),
            (Retired, "2"),
        ]
    );
    assert_eq!(timeline.versions[1].run_id.as_deref(), Some("run-2"));
    assert_eq!(timeline.versions[0].live.len(), 2);
    assert_eq!(
        timeline.versions[0].reference_source.as_deref(),
        Some(source.as_str())
    );
    println!(
        "churn v1 registered with its training data: {} window(s) compared with {source}; \
         its lifecycle ({} registry events) recorded once across a restart",
        row.len(),
        events.len()
    );
}

/// The registry is on wherever `[http]` is: a registry file that cannot be
/// opened stops the start with an error naming the setting and the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unopenable_registry_file_stops_the_start_and_names_the_setting() {
    let scenario = Scenario::new("registry_unopenable");
    let path = scenario.directory.join("tidewatch.toml");
    // /proc takes no new files, even for root.
    std::fs::write(
        &path,
        format!(
            "version = 1\n[store]\ntype = \"embedded\"\npath = \"tidewatch.sqlite\"\n\
             [[models]]\nname = \"churn\"\ntask = \"regression\"\n\
             features = [{{ name = \"usage\", kind = \"numeric\" }}]\n\
             [http]\nlisten = \"127.0.0.1:{}\"\n\
             [registry]\npath = \"/proc/tidewatch-registry.sqlite\"\n",
            common::free_port()
        ),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let store = config.store.open().await.unwrap();
    let error = tidewatch::service::start_http(
        &config,
        config.http.as_ref().unwrap(),
        store,
        tidewatch::http::Telemetry::default(),
    )
    .await
    .expect_err("the start fails");
    let message = error.to_string();
    assert!(message.contains("`registry.path`"), "{message}");
    assert!(message.contains("enabled = false"), "{message}");
}

/// The reference trainer against the registry Tidewatch serves: a retrain
/// request over a window of the training sample becomes version 1 of
/// `churn`, registered with its source, training window and training data
/// (whose reference profile gets attached), set as the challenger, and
/// able to classify; the same request again answers the same version;
/// a window without enough labels fails with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrain_request_becomes_a_registered_challenger_trained_on_the_sample() {
    use tidewatch::retrainer::{handle, Outcome, RetrainRequest, TrainerSettings};

    let scenario = Scenario::new("retrainer");
    let (directory, token_env, token) = (
        scenario.directory.clone(),
        scenario.token_env.clone(),
        TOKEN,
    );
    let port = common::free_port();
    let config = config(&directory, port, &token_env, "", "");
    let (stop, server) = start(&config).await;
    let store = config.store.open().await.unwrap();

    let start_ms: i64 = 1_767_225_600_000;
    let hour = 3_600_000;
    let truth = write_churn_sample(&store, start_ms).await;

    let settings = TrainerSettings {
        registry: registry::client::MlflowClient::new(&format!("http://127.0.0.1:{port}"))
            .with_token(Some(token.into())),
        model_dir: directory.join("models"),
        min_rows: 200,
        max_rows: 100_000,
        label_wait: Duration::from_millis(300),
        poll: Duration::from_millis(100),
        alias: "challenger".into(),
    };
    let spec = config.model("churn").unwrap();
    let request = RetrainRequest {
        request_id: "tw-req-1".into(),
        model: "churn".into(),
        version: "7".into(),
        start_ms,
        end_ms: start_ms + 2 * hour,
    };
    let outcome = handle(&store, spec, &settings, &request).await;
    let Outcome::Completed {
        version,
        rows,
        source,
    } = outcome.clone()
    else {
        panic!("{outcome:?}")
    };
    assert_eq!((version.as_str(), rows), ("1", 800));

    // In the registry: its source, tags and the challenger alias.
    let client = settings.registry.clone();
    let answer = client
        .get_ok("model-versions/get", &[("name", "churn"), ("version", "1")])
        .await
        .unwrap();
    let registered = &answer["model_version"];
    assert_eq!(registered["source"], source.as_str());
    let tags: std::collections::BTreeMap<&str, &str> = registered["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["key"].as_str().unwrap(), t["value"].as_str().unwrap()))
        .collect();
    assert_eq!(tags["tidewatch.runtime"], "linear");
    assert_eq!(tags["tidewatch.retrain_request"], "tw-req-1");
    assert_eq!(
        tags["tidewatch.train_window"],
        format!("{start_ms}/{}", start_ms + 2 * hour)
    );
    assert!(tags["tidewatch.reference"].ends_with("training.jsonl"));
    let model = client
        .get_ok("registered-models/get", &[("name", "churn")])
        .await
        .unwrap();
    assert_eq!(
        model["registered_model"]["aliases"],
        json!([{"alias": "challenger", "version": "1"}])
    );

    // The model file the gateway would load classifies the sample well
    // (the Bayes rate of this generator is about 85 %).
    let path = source.strip_prefix("file://").unwrap();
    let linear = serving::linear::LinearModel::from_json(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(linear.features(), ["usage"]);
    assert_eq!(linear.classes(), ["no", "yes"]);
    let document: Value = serde_json::from_str(&linear.to_json()).unwrap();
    let (w, b) = (
        document["coefficients"][0][0].as_f64().unwrap(),
        document["intercepts"][0].as_f64().unwrap(),
    );
    let correct = truth
        .iter()
        .filter(|(usage, label)| (w * usage + b > 0.0) == (*label == "yes"))
        .count();
    assert!(correct as f64 / truth.len() as f64 > 0.8, "{correct}");
    assert!((w - 1.5).abs() < 0.5, "slope {w}");
    assert!((-b / w - 5.0).abs() < 0.5, "boundary {}", -b / w);

    // Its reference profile, built from the training data it wrote.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reference = loop {
        if let Some(profile) = store.reference("churn", "1").await.unwrap() {
            break profile;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reference attached"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(reference.row_count, 800);

    // The same request again, after the challenger moved on to a version
    // 2 registered by hand: the same version answers, nothing new is
    // registered and the alias stays where it was moved.
    client
        .post_ok(
            "model-versions/create",
            &json!({"name": "churn", "source": "file:///models/churn-2.json"}),
        )
        .await
        .unwrap();
    client
        .post_ok(
            "registered-models/alias",
            &json!({"name": "churn", "alias": "challenger", "version": "2"}),
        )
        .await
        .unwrap();
    let again = handle(&store, spec, &settings, &request).await;
    assert!(
        matches!(&again, Outcome::Completed { version, .. } if version == "1"),
        "{again:?}"
    );
    let versions = client
        .get_ok("model-versions/search", &[("filter", "name = 'churn'")])
        .await
        .unwrap();
    assert_eq!(versions["model_versions"].as_array().unwrap().len(), 2);
    let model = client
        .get_ok("registered-models/get", &[("name", "churn")])
        .await
        .unwrap();
    assert_eq!(
        model["registered_model"]["aliases"],
        json!([{"alias": "challenger", "version": "2"}])
    );

    // A window with too few labels: failed, with the reason.
    let empty = RetrainRequest {
        request_id: "tw-req-2".into(),
        start_ms: start_ms + 10 * hour,
        end_ms: start_ms + 11 * hour,
        ..request.clone()
    };
    let failed = handle(&store, spec, &settings, &empty).await;
    let Outcome::Failed { reason } = &failed else {
        panic!("{failed:?}")
    };
    assert!(reason.contains("0 labelled rows"), "{reason}");
    let ack = failed.ack_event(&empty, 1_767_300_000_000);
    assert_eq!(ack["type"], "io.tidewatch.retrain.failed");
    assert_eq!(
        alerting::retrain::parse_ack(ack.to_string().as_bytes()).as_deref(),
        Some("tw-req-2")
    );
    let _ = stop.send(());
    server.await.unwrap();
    println!(
        "retrained churn on {rows} sampled rows: version 1, slope {w:.3}, boundary {:.3}, {:.1} % correct",
        -b / w,
        100.0 * correct as f64 / truth.len() as f64
    );
}

/// The training sample of `churn`: 800 requests over two hours from
/// `start_ms`, labelled by a logistic model of `usage` (p(yes) =
/// σ(1.5·(usage − 5))); half of them also answered by a shadow version 8
/// with other features. The (usage, label) pairs.
async fn write_churn_sample(store: &store::Store, start_ms: i64) -> Vec<(f64, &'static str)> {
    let hour = 3_600_000;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut predictions = Vec::new();
    let mut labels = Vec::new();
    let mut truth = Vec::new();
    for i in 0..800 {
        let usage = 10.0 * uniform();
        let p = 1.0 / (1.0 + (-1.5 * (usage - 5.0)).exp());
        let label = if uniform() < p { "yes" } else { "no" };
        let id = format!("r{i:04}");
        let time = start_ms + i as i64 * 9_000;
        for version in ["7", "8"].iter().take(1 + usize::from(i % 2 == 0)) {
            predictions.push(store::SampledPrediction {
                model: "churn".into(),
                model_version: (*version).into(),
                prediction_id: id.clone(),
                window_start: time - time % hour,
                time_ms: time,
                features: json!({"usage": if *version == "7" { usage } else { -1.0 }}).to_string(),
                score: Some(0.5),
                class: "no".into(),
            });
        }
        labels.push(store::SampledLabel {
            model: "churn".into(),
            prediction_id: id,
            time_ms: time + 60_000,
            label: label.into(),
            value: None,
        });
        truth.push((usage, label));
    }
    store.write_samples(predictions, labels).await.unwrap();
    truth
}

/// `tidewatch run` with `[trainer]`: a retrain request published on the
/// bus (as the monitor publishes it) is answered on the acknowledgement
/// topic with a version registered from the training sample and set as
/// the challenger, and the registry's events of it reach the version
/// lifecycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidewatch_run_answers_a_retrain_request_on_the_bus_with_a_registered_challenger() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::Message;

    let brokers = common::brokers();
    let scenario = Scenario::new("trainer_bus");
    let (name, directory, token_env) = (
        scenario.name.clone(),
        scenario.directory.clone(),
        scenario.token_env.clone(),
    );
    let port = common::free_port();
    let (request_topic, ack_topic, registry_topic) = (
        format!("retrain-{name}"),
        format!("retrain-acks-{name}"),
        format!("registry-{name}"),
    );
    let extra = kafka_section(&brokers, &name, "")
        + &format!(
            "[alerts.retrain]\ntopic = \"{request_topic}\"\nack_topic = \"{ack_topic}\"\n\
             [trainer]\nregistry_url = \"http://127.0.0.1:{port}\"\ntoken_env = \"{token_env}\"\n\
             min_rows = 200\nlabel_wait = \"5s\"\n"
        );
    let config = config(
        &directory,
        port,
        &token_env,
        &extra,
        &format!("topic = \"{registry_topic}\""),
    );
    common::create_topics(
        &brokers,
        &[
            &format!("predictions-{name}"),
            &format!("dead-letters-{name}"),
            &request_topic,
            &ack_topic,
            &registry_topic,
        ],
    )
    .await;
    let store = config.store.open().await.unwrap();
    let start_ms: i64 = 1_767_225_600_000;
    write_churn_sample(&store, start_ms).await;

    let (pipeline, stop_pipeline) = start_run(&config, port).await;

    // The request, as the monitor publishes it.
    let alert = alerting::lifecycle::Alert {
        id: "tw-drift-1".into(),
        rule: "drift".into(),
        model: "churn".into(),
        model_version: "7".into(),
        segment: "all".into(),
        severity: alerting::notification::Severity::Critical,
        status: alerting::lifecycle::AlertStatus::Firing,
        repeat: false,
        window_start: start_ms + 3_600_000,
        window_end: start_ms + 2 * 3_600_000,
        findings: Vec::new(),
        summary: "drift".into(),
        channels: Vec::new(),
        retrain: true,
        onset: start_ms,
    };
    let request = alerting::payload::retrain_event(&alert, "tw-bus-1", 1_767_300_000_000);
    let producer: FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&request_topic)
                .key("churn")
                .payload(&request.to_string()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    // Its acknowledgement.
    let consumer = reader(&brokers, &format!("acks-{name}"), &ack_topic);
    let ack: Value = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let message = consumer.recv().await.unwrap();
            let ack: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
            if ack["data"]["request_id"] == "tw-bus-1" {
                return ack;
            }
        }
    })
    .await
    .expect("no acknowledgement within 60 s");
    assert_eq!(ack["type"], "io.tidewatch.retrain.completed", "{ack}");
    assert_eq!(ack["data"]["version"], "1");
    assert_eq!(ack["data"]["rows"], 800);
    assert_eq!(ack["specversion"], "1.0");

    let client = registry::client::MlflowClient::new(&format!("http://127.0.0.1:{port}"));
    let model = client
        .get_ok("registered-models/get", &[("name", "churn")])
        .await
        .unwrap();
    assert_eq!(
        model["registered_model"]["aliases"],
        json!([{"alias": "challenger", "version": "1"}])
    );
    // The registry's events reached the lifecycle.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = store.version_events("churn", 100).await.unwrap();
        let kinds: Vec<(store::VersionEventKind, &str)> =
            events.iter().map(|e| (e.kind, e.alias.as_str())).collect();
        if kinds.contains(&(store::VersionEventKind::Registered, ""))
            && kinds.contains(&(store::VersionEventKind::AliasSet, "challenger"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{kinds:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let trained = store.version_events("churn", 100).await.unwrap();
    let trained: Vec<&store::VersionEvent> = trained
        .iter()
        .filter(|e| e.kind == store::VersionEventKind::Trained)
        .collect();
    assert_eq!(trained.len(), 1, "{trained:?}");
    assert_eq!(trained[0].model_version, "1");
    stop_pipeline.send(()).unwrap();
    pipeline.await.unwrap().unwrap();
    println!("tidewatch run answered retrain request tw-bus-1 on the bus: version 1 trained on 800 sampled rows, challenger, acknowledged");
}

/// `tidewatch run` with `[promotion]`, champion 1 and challenger 2 in the
/// registry, and three hours of traffic both answered (shadow) with labels:
/// the policy decides on the same requests and labels, moves the aliases
/// and publishes `io.tidewatch.promotion.decided` with its evidence. The
/// challenger right on 90 % of requests against 70 % is promoted; one
/// right on 60 % is rejected once it reached `max_windows`.
async fn promotion_scenario(name: &str, challenger_accuracy: f64) -> (Value, Value) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::Message;

    let brokers = common::brokers();
    let scenario = Scenario::new(name);
    let (name, directory, token_env, token) = (
        scenario.name.clone(),
        scenario.directory.clone(),
        scenario.token_env.clone(),
        TOKEN,
    );
    let port = common::free_port();
    let (topic, decisions, registry_topic) = (
        format!("predictions-{name}"),
        format!("promotions-{name}"),
        format!("registry-{name}"),
    );
    let extra = kafka_section(&brokers, &name, "")
        + &format!(
            "[promotion]\nregistry_url = \"http://127.0.0.1:{port}\"\ntoken_env = \"{token_env}\"\n\
             topic = \"{decisions}\"\nmin_windows = 2\nmax_windows = 3\nmin_pairs = 100\n"
        );
    config(
        &directory,
        port,
        &token_env,
        &extra,
        &format!("topic = \"{registry_topic}\""),
    );
    let path = directory.join("tidewatch.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[windows]\nsize = \"1h\"",
        "[reference]\nrefresh_interval = \"1s\"\n[windows]\nsize = \"1h\"\nidle_close_after = \"2s\"\ncheckpoint_interval = \"300ms\"\nsample_rate = 1.0",
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    common::create_topics(
        &brokers,
        &[
            &topic,
            &format!("dead-letters-{name}"),
            &decisions,
            &registry_topic,
        ],
    )
    .await;
    let (pipeline, stop_pipeline) = start_run(&config, port).await;
    write(
        port,
        token,
        "registered-models/create",
        json!({"name": "churn"}),
    )
    .await;
    // The challenger's training data: `usage` as the traffic has it (its
    // drift is checked against it before it may be promoted).
    let reference = directory.join("challenger-training.jsonl");
    let lines: String = (0..2000)
        .map(|i| {
            format!(
                "{{\"usage\": {}}}\n",
                5.0 + ((i * 7919) % 2000) as f64 / 2000.0
            )
        })
        .collect();
    std::fs::write(&reference, lines).unwrap();
    for version in 1..=2 {
        let tags = if version == 2 {
            json!([{"key": "tidewatch.reference", "value": format!("file://{}", reference.display())}])
        } else {
            json!([])
        };
        write(
            port,
            token,
            "model-versions/create",
            json!({"name": "churn", "source": format!("file:///models/churn-{version}.json"), "tags": tags}),
        )
        .await;
    }
    for (alias, version) in [("champion", "1"), ("challenger", "2")] {
        assert_eq!(
            write(
                port,
                token,
                "registered-models/alias",
                json!({"name": "churn", "alias": alias, "version": version}),
            )
            .await,
            200
        );
    }

    // The challenger is judged against its own reference: wait until it
    // is attached (the monitor installs it within its 1 s refresh).
    let reference_store = config.store.open().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reference_store
        .reference("churn", "2")
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "v2's reference was never attached"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Three hours of requests, five hours ago, answered by both versions,
    // each labelled a minute later.
    let producer: FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let hour = 3_600_000;
    let first = (now - 5 * hour) / hour * hour;
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (challenger_accuracy.to_bits());
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut sends = Vec::new();
    for i in 0..450i64 {
        let id = format!("q{i:04}");
        let time = first + (i / 150) * hour + (i % 150) * 20_000;
        let label = if uniform() < 0.5 { "yes" } else { "no" };
        let other = if label == "yes" { "no" } else { "yes" };
        for (version, accuracy) in [("1", 0.7), ("2", challenger_accuracy)] {
            let class = if uniform() < accuracy { label } else { other };
            sends.push(json!({
                "schema": "tidewatch.prediction.v1", "model": "churn", "model_version": version,
                "prediction_id": id, "timestamp": time,
                "features": {"usage": 5.0 + uniform()},
                "prediction": {"score": if class == "yes" { 0.8 } else { 0.2 }, "class": class},
            }));
        }
        sends.push(json!({
            "schema": "tidewatch.actual.v1", "model": "churn", "model_version": "1",
            "prediction_id": id, "timestamp": time + 60_000, "label": label,
        }));
    }
    for event in &sends {
        let key = event["prediction_id"].as_str().unwrap().to_owned();
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&event.to_string()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    let consumer = reader(&brokers, &format!("decisions-{name}"), &decisions);
    let decision: Value = tokio::time::timeout(Duration::from_secs(90), async {
        let message = consumer.recv().await.unwrap();
        serde_json::from_slice(message.payload().unwrap()).unwrap()
    })
    .await
    .expect("no promotion decision within 90 s");
    let client = registry::client::MlflowClient::new(&format!("http://127.0.0.1:{port}"));
    let model = client
        .get_ok("registered-models/get", &[("name", "churn")])
        .await
        .unwrap();
    // The lifecycle follower records the alias moves; the decision is
    // recorded by the policy. `tidewatch versions` prints them.
    let store = config.store.open().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let kinds: Vec<store::VersionEventKind> = store
            .version_events("churn", 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        if kinds.contains(&store::VersionEventKind::PromotionDecided)
            && kinds.contains(&store::VersionEventKind::AliasDeleted)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{kinds:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The model page compares both versions' accuracy on the same windows.
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, _, page) =
        common::http::request(address, "GET", "/models/churn?version=2", &[], b"").await;
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("id=\"versions-compared\""),
        "no comparison chart"
    );
    assert!(
        page.contains("accuracy by version") && page.contains("\"v1\"") && page.contains("\"v2\""),
        "both versions charted"
    );
    stop_pipeline.send(()).unwrap();
    pipeline.await.unwrap().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["versions", "--model", "churn", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    let mut decision = decision;
    decision["printed"] = Value::String(printed);
    (decision, model["registered_model"]["aliases"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_better_challenger_is_promoted_and_a_worse_one_rejected_on_the_same_requests() {
    let (decision, aliases) = promotion_scenario("promote", 0.9).await;
    assert_eq!(decision["type"], "io.tidewatch.promotion.decided");
    assert_eq!(decision["specversion"], "1.0");
    let data = &decision["data"];
    assert_eq!(data["verdict"], "promote", "{decision}");
    assert_eq!(
        (data["champion"].as_str(), data["challenger"].as_str()),
        (Some("1"), Some("2"))
    );
    let evidence = &data["evidence"];
    assert_eq!(evidence["test"], "mcnemar_exact");
    assert!(evidence["pairs"].as_u64().unwrap() >= 300, "{evidence}");
    assert!(evidence["challenger"].as_f64().unwrap() > evidence["champion"].as_f64().unwrap());
    assert!(evidence["p_value"].as_f64().unwrap() < 0.05);
    // McNemar's p-value is the one detectors::paired computes from the counts.
    let expected = detectors::paired::mcnemar(
        evidence["only_champion"].as_u64().unwrap(),
        evidence["only_challenger"].as_u64().unwrap(),
    );
    assert_eq!(evidence["p_value"].as_f64().unwrap(), expected.p_value);
    assert_eq!(aliases, json!([{"alias": "champion", "version": "2"}]));
    let printed = decision["printed"].as_str().unwrap();
    for line in [
        "v2     promotion decided: promote against v1 (accuracy",
        "v2     PROMOTED to champion (replacing v1)",
        "v1     retired (replaced by v2)",
    ] {
        assert!(printed.contains(line), "`{line}` not in:\n{printed}");
    }

    let (decision, aliases) = promotion_scenario("reject", 0.6).await;
    let data = &decision["data"];
    assert_eq!(data["verdict"], "reject", "{decision}");
    assert_eq!(data["windows"], 3);
    assert!(
        data["evidence"]["challenger"].as_f64().unwrap()
            < data["evidence"]["champion"].as_f64().unwrap()
    );
    assert_eq!(aliases, json!([{"alias": "champion", "version": "1"}]));
    let printed = decision["printed"].as_str().unwrap();
    assert!(
        printed.contains("v2     promotion decided: reject against v1"),
        "{printed}"
    );
    assert!(printed.contains("alias challenger deleted"), "{printed}");
    println!(
        "promotion: 90 % vs 70 % promoted (p = {:.2e}); 60 % vs 70 % rejected after 3 windows",
        expected.p_value
    );
}
