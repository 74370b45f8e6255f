//! Helpers shared by the integration tests that need the broker and
//! ClickHouse started by `scripts/test.sh`: a scenario (its own topics,
//! group, database and files), the in-process expectation, a field-by-field
//! comparison, an independent count/mean oracle, a `tidewatch run` child
//! process and a TCP proxy that can cut a connection on demand.
//!
//! Without `TIDEWATCH_TEST_KAFKA_BROKERS` / `TIDEWATCH_TEST_CLICKHOUSE_URL`
//! the tests fail and say why.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use detectors::SeriesKey;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use store::{MetricsQuery, Store, WindowMetrics};
use tidewatch::config::Config;
use tidewatch::fixtures::{self, DemoShape, DEMO_MODEL, DEMO_VERSION};

pub mod broker;
pub mod child;
pub mod gateway;
pub mod http;
pub mod proxy;

/// Creates `topics` on `brokers`, one partition each.
pub async fn create_topics(brokers: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, 1, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        result.unwrap_or_else(|(topic, code)| panic!("creating topic {topic}: {code:?}"));
    }
}

/// A free port of 127.0.0.1 (free when asked; for a server started next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn brokers() -> String {
    std::env::var("TIDEWATCH_TEST_KAFKA_BROKERS").expect(
        "TIDEWATCH_TEST_KAFKA_BROKERS is not set: run the integration suite through scripts/test.sh, \
         which builds and starts the broker",
    )
}

pub fn clickhouse_url() -> String {
    std::env::var("TIDEWATCH_TEST_CLICKHOUSE_URL").expect(
        "TIDEWATCH_TEST_CLICKHOUSE_URL is not set: run the integration suite through scripts/test.sh, \
         which installs and starts ClickHouse",
    )
}

/// A test's private topic, dead-letter topic, group, database and files.
pub struct Scenario {
    pub name: String,
    pub directory: PathBuf,
    pub stream: PathBuf,
    pub training: PathBuf,
    pub predictions: u64,
    pub actuals: u64,
    /// The broker the scenario's clients use (the shared one unless a test
    /// starts its own).
    pub brokers: String,
}

/// What differs between the scenarios' configs.
pub struct ConfigOptions {
    /// ClickHouse URL (a proxy's), when not the test server's.
    pub clickhouse_url: Option<String>,
    /// `[http] listen`, when the scenario reads `/ready` or `/metrics`.
    pub http_listen: Option<String>,
    /// librdkafka `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// `windows.idle_close_after`.
    pub idle_close_after: &'static str,
    /// Lines added to the model's section (segment bounds…).
    pub model_extra: &'static str,
    /// The topic's `encoding` (`json`, `protobuf`).
    pub encoding: &'static str,
    /// Partitions of a second topic for the labels (`kind = "actual"`):
    /// with it, predictions and labels go to separate topics.
    pub label_topic_partitions: Option<i32>,
}

impl ConfigOptions {
    /// Serving `/ready` and `/metrics` on 127.0.0.1:`port`, with a 6 s
    /// session timeout (a killed member's partitions move on quickly).
    pub fn observed(port: u16) -> Self {
        Self {
            http_listen: Some(format!("127.0.0.1:{port}")),
            ..Self::fast_takeover()
        }
    }

    /// A 6 s session timeout: a killed member's partitions move on quickly.
    pub fn fast_takeover() -> Self {
        Self {
            session_timeout_ms: 6_000,
            ..Default::default()
        }
    }
}

impl Default for ConfigOptions {
    fn default() -> Self {
        Self {
            clickhouse_url: None,
            http_listen: None,
            session_timeout_ms: 10_000,
            idle_close_after: "3s",
            model_extra: "",
            encoding: "json",
            label_topic_partitions: None,
        }
    }
}

impl Scenario {
    pub fn new(name: &str, shape: DemoShape) -> Self {
        let name = format!("{name}_{}", std::process::id());
        let directory = std::env::temp_dir().join(format!("tidewatch-it-{name}"));
        std::fs::create_dir_all(&directory).unwrap();
        let generated = fixtures::generate(shape, 1234);
        let stream = directory.join("stream.jsonl");
        let training = directory.join("train.csv");
        std::fs::write(&stream, &generated.stream).unwrap();
        std::fs::write(&training, &generated.training_csv).unwrap();
        Self {
            name,
            directory,
            stream,
            training,
            predictions: generated.predictions,
            actuals: generated.actuals,
            brokers: brokers(),
        }
    }

    pub fn topic(&self) -> String {
        format!("predictions-{}", self.name)
    }

    /// The labels' topic, when they have their own
    /// ([`ConfigOptions::label_topic_partitions`]).
    pub fn label_topic(&self) -> String {
        format!("labels-{}", self.name)
    }

    /// The stream cut in two files by kind: (predictions and whatever
    /// else, labels), each in stream order.
    pub fn split_by_kind(&self) -> (PathBuf, Vec<String>) {
        let (mut predictions, mut labels) = (String::new(), Vec::new());
        for line in std::fs::read_to_string(&self.stream).unwrap().lines() {
            if line.contains(r#""schema":"tidewatch.actual.v1""#) {
                labels.push(line.to_owned());
            } else {
                predictions.push_str(line);
                predictions.push('\n');
            }
        }
        let path = self.directory.join("predictions-only.jsonl");
        std::fs::write(&path, predictions).unwrap();
        (path, labels)
    }

    /// Writes `lines` to a file of the scenario's directory.
    pub fn write_lines(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.directory.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("dead-letters-{}", self.name)
    }

    pub fn config(&self, range_size: u64) -> Config {
        self.config_with(range_size, &ConfigOptions::default()).0
    }

    /// Writes `tidewatch.toml` with `options` and loads it; returns the
    /// config and its path (for a `tidewatch run` child).
    pub fn config_with(&self, range_size: u64, options: &ConfigOptions) -> (Config, PathBuf) {
        let label_topic = match options.label_topic_partitions {
            Some(_) => format!(
                r#", {{ name = "{}", kind = "actual", encoding = "{}" }}"#,
                self.label_topic(),
                options.encoding
            ),
            None => String::new(),
        };
        let http = options
            .http_listen
            .as_ref()
            .map(|listen| format!("[http]\nlisten = \"{listen}\"\n"))
            .unwrap_or_default();
        let text = format!(
            r#"
version = 1
[kafka]
brokers = "{brokers}"
group_id = "tidewatch-{name}"
dead_letter_topic = "{dead_letters}"
topics = [{{ name = "{topic}", kind = "prediction", encoding = "{encoding}" }}{label_topic}]
stall_after = "20s"
[kafka.properties]
"session.timeout.ms" = "{session_timeout_ms}"
"heartbeat.interval.ms" = "1000"
[store]
type = "clickhouse"
url = "{url}"
database = "tw_{name}"
retry_max_delay = "1s"
[windows]
size = "1h"
allowed_lateness = "5m"
idle_close_after = "{idle_close_after}"
checkpoint_interval = "500ms"
range_size = {range_size}
max_future_skew = "1h"
{http}
[[models]]
name = "{DEMO_MODEL}"
task = "classification"
segment_keys = ["country"]
{model_extra}
features = [
  {{ name = "age", kind = "numeric" }},
  {{ name = "tenure_months", kind = "numeric" }},
  {{ name = "monthly_charges", kind = "numeric" }},
  {{ name = "support_calls", kind = "numeric" }},
  {{ name = "contract", kind = "categorical" }},
  {{ name = "payment_method", kind = "categorical" }},
]
"#,
            brokers = self.brokers,
            name = self.name,
            dead_letters = self.dead_letter_topic(),
            topic = self.topic(),
            url = options
                .clickhouse_url
                .clone()
                .unwrap_or_else(clickhouse_url),
            session_timeout_ms = options.session_timeout_ms,
            idle_close_after = options.idle_close_after,
            model_extra = options.model_extra,
            encoding = options.encoding,
        );
        let path = self.directory.join("tidewatch.toml");
        std::fs::write(&path, text).unwrap();
        (Config::load(&path).unwrap(), path)
    }

    /// Writes the config ([`Scenario::config_with`]), creates the topics
    /// with `partitions`, stores the reference and computes the in-process
    /// expectation: (the config file for a `tidewatch run` child, the
    /// store, the in-process computation over the whole stream).
    pub async fn prepare(
        &self,
        range_size: u64,
        options: &ConfigOptions,
        partitions: i32,
    ) -> (PathBuf, Store, Vec<WindowMetrics>) {
        let (config, path) = self.config_with(range_size, options);
        self.create_topics(partitions).await;
        if let Some(label_partitions) = options.label_topic_partitions {
            self.create_topic(&self.label_topic(), label_partitions)
                .await;
        }
        let store = self.store_reference(&config).await;
        let expected = self.expected(&config).await;
        (path, store, expected)
    }

    /// A consumer of the scenario's dead-letter topic, from its start.
    pub fn dead_letter_reader(&self) -> rdkafka::consumer::StreamConsumer {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("dead-letter-reader-{}", self.name))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[&self.dead_letter_topic()]).unwrap();
        consumer
    }

    /// Creates one more topic of `partitions`.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("admin client");
        let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
        for result in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("create topics")
        {
            result.unwrap_or_else(|(topic, code)| panic!("creating topic {topic}: {code:?}"));
        }
    }

    pub async fn create_topics(&self, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("admin client");
        let topic = self.topic();
        let dead_letters = self.dead_letter_topic();
        let topics = [
            NewTopic::new(&topic, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&dead_letters, 1, TopicReplication::Fixed(1)),
        ];
        let results = admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("create topics");
        for result in results {
            result.unwrap_or_else(|(topic, code)| panic!("creating topic {topic}: {code:?}"));
        }
    }

    /// Stores the reference profile built from the training CSV.
    pub async fn store_reference(&self, config: &Config) -> Store {
        let store = config.store.open().await.unwrap();
        let spec = config.models[0].clone();
        let profile = tidewatch::training::build_reference(&spec, DEMO_VERSION, &self.training)
            .unwrap()
            .profile;
        store.put_reference(&profile, 1).await.unwrap();
        store
    }

    /// Runs `tidewatch replay` on the stream.
    pub fn replay(&self, rate: Option<u32>) -> std::process::Child {
        self.replay_file(&self.stream, rate)
    }

    /// Runs `tidewatch replay` on `file` to the scenario's topic.
    pub fn replay_file(&self, file: &Path, rate: Option<u32>) -> std::process::Child {
        self.replay_encoded(file, rate, "json")
    }

    /// Runs `tidewatch replay --encoding <encoding>` on `file` to the
    /// scenario's topic.
    pub fn replay_encoded(
        &self,
        file: &Path,
        rate: Option<u32>,
        encoding: &str,
    ) -> std::process::Child {
        self.replay_to(file, &self.topic(), rate, encoding)
    }

    /// Runs `tidewatch replay --encoding <encoding>` on `file` to `topic`.
    pub fn replay_to(
        &self,
        file: &Path,
        topic: &str,
        rate: Option<u32>,
        encoding: &str,
    ) -> std::process::Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidewatch"));
        command
            .arg("replay")
            .arg("--encoding")
            .arg(encoding)
            .arg(file)
            .arg("--to")
            .arg(&self.brokers)
            .arg("--topic")
            .arg(topic);
        if let Some(rate) = rate {
            command.arg("--rate").arg(rate.to_string());
        }
        command.spawn().expect("starting tidewatch replay")
    }

    /// The in-process computation: the same events through the file replay
    /// into an in-memory embedded store.
    pub async fn expected(&self, config: &Config) -> Vec<WindowMetrics> {
        let store = Store::in_memory().unwrap();
        let spec = config.models[0].clone();
        let profile = tidewatch::training::build_reference(&spec, DEMO_VERSION, &self.training)
            .unwrap()
            .profile;
        store.put_reference(&profile, 1).await.unwrap();
        let mut driver = tidewatch::service::driver(config, store.clone(), Default::default())
            .await
            .unwrap();
        let mut dead_letters =
            ingest::dead_letter::DeadLetterSink::file(&self.directory.join("expected-dead.jsonl"))
                .unwrap();
        ingest::file::replay_into(
            &mut driver,
            &self.stream,
            events::EventKind::Prediction,
            &mut dead_letters,
        )
        .await
        .unwrap();
        store.window_metrics(MetricsQuery::default()).await.unwrap()
    }
}

impl Drop for Scenario {
    /// Removes the scenario's files, unless the test failed: then its logs
    /// are kept and their place printed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "kept the files of the failed scenario in {}",
                self.directory.display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Starts the pipeline in a task; returns its handle and the shutdown sender.
pub fn start_pipeline(
    config: &Config,
) -> (
    tokio::task::JoinHandle<anyhow::Result<ingest::kafka::RunReport>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = config.clone();
    let handle = tokio::spawn(async move {
        tidewatch::service::run(&config, async move {
            let _ = stopped.await;
        })
        .await
    });
    (handle, stop)
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

pub fn close_option(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => close(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Compares stored metrics with the expected ones, field by field, the
/// `quality` series (labels joined, their accuracy, F1, AUC, log loss,
/// Brier score) included.
pub fn compare(actual: &[WindowMetrics], expected: &[WindowMetrics]) -> Result<(), String> {
    let actual: HashMap<&SeriesKey, &WindowMetrics> = actual.iter().map(|m| (&m.key, m)).collect();
    if actual.len() != expected.len() {
        let missing: Vec<String> = expected
            .iter()
            .filter(|m| !actual.contains_key(&m.key))
            .take(5)
            .map(|m| format!("{:?}", m.key))
            .collect();
        return Err(format!(
            "{} series-windows stored, {} expected; missing (first 5): {missing:?}",
            actual.len(),
            expected.len()
        ));
    }
    for expected in expected {
        let Some(stored) = actual.get(&expected.key) else {
            return Err(format!("missing {:?}", expected.key));
        };
        let (a, e) = (&stored.metrics, &expected.metrics);
        let exact = a.count == e.count
            && a.missing == e.missing
            && a.type_mismatch == e.type_mismatch
            && a.distinct_categories == e.distinct_categories
            && a.unseen_categories == e.unseen_categories
            && a.out_of_range == e.out_of_range
            && a.constant == e.constant
            && a.drifted == e.drifted;
        let floats = [
            (a.mean, e.mean),
            (a.std_dev, e.std_dev),
            (a.min, e.min),
            (a.max, e.max),
            (a.psi, e.psi),
            (a.ks_statistic, e.ks_statistic),
            (a.ks_p_value, e.ks_p_value),
            (a.chi_square, e.chi_square),
            (a.chi_square_p_value, e.chi_square_p_value),
            (a.missing_rate, e.missing_rate),
            (a.js_distance, e.js_distance),
            (a.hellinger, e.hellinger),
            (a.kl_divergence, e.kl_divergence),
            (a.l_infinity, e.l_infinity),
            (a.wasserstein, e.wasserstein),
            (a.wasserstein_normalized, e.wasserstein_normalized),
            (a.latency_p50, e.latency_p50),
            (a.latency_p95, e.latency_p95),
            (a.latency_p99, e.latency_p99),
            (a.latency_max, e.latency_max),
            (a.error_rate, e.error_rate),
            (a.null_prediction_rate, e.null_prediction_rate),
        ]
        .iter()
        .all(|(x, y)| close_option(*x, *y));
        let quantiles = match (a.quantiles, e.quantiles) {
            (Some(x), Some(y)) => x.iter().zip(y.iter()).all(|(p, q)| close(*p, *q)),
            (None, None) => true,
            _ => false,
        };
        let tests = a.tests.len() == e.tests.len()
            && a.tests.iter().zip(&e.tests).all(|(x, y)| {
                x.test == y.test
                    && x.drifted == y.drifted
                    && close(x.value, y.value)
                    && close(x.threshold, y.threshold)
            })
            && a.warnings == e.warnings;
        let quality = match (&a.quality, &e.quality) {
            (Some(x), Some(y)) => {
                x.matched == y.matched
                    && [
                        (x.accuracy, y.accuracy),
                        (x.f1, y.f1),
                        (x.roc_auc, y.roc_auc),
                        (x.log_loss, y.log_loss),
                        (x.brier, y.brier),
                    ]
                    .iter()
                    .all(|(p, q)| close_option(*p, *q))
            }
            (None, None) => true,
            _ => false,
        };
        if !(exact && floats && quantiles && tests && quality) {
            return Err(format!("{:?}: stored {a:?} expected {e:?}", expected.key));
        }
    }
    Ok(())
}

/// Polls ClickHouse until its metrics equal `expected` (windows are
/// finalized asynchronously), or fails with the last difference.
pub async fn wait_for_metrics(store: &Store, expected: &[WindowMetrics], timeout: Duration) {
    let started = Instant::now();
    loop {
        let stored = store.window_metrics(MetricsQuery::default()).await.unwrap();
        match compare(&stored, expected) {
            Ok(()) => return,
            Err(difference) if started.elapsed() > timeout => {
                panic!("ClickHouse never matched the in-process computation: {difference}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// What the independent oracle expects of one hourly window.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct WindowOracle {
    /// Predictions of the demo model.
    pub predictions: u64,
    /// Sum and count of `monthly_charges` over them.
    pub charges_sum: f64,
    pub charges_count: u64,
    /// Labels of those predictions (each joins its prediction once).
    pub labels: u64,
}

/// Independent oracle: predictions of the demo model per hourly window, the
/// mean of `monthly_charges` per window, and the labels of each window's
/// predictions, straight from the JSON lines.
pub fn oracle(stream: &Path) -> BTreeMap<i64, WindowOracle> {
    let mut windows: BTreeMap<i64, WindowOracle> = BTreeMap::new();
    let mut window_of: HashMap<String, i64> = HashMap::new();
    let mut labels: Vec<String> = Vec::new();
    for line in std::fs::read_to_string(stream).unwrap().lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if value["model"] != DEMO_MODEL {
            continue;
        }
        let Some(timestamp) = value["timestamp"].as_i64() else {
            continue;
        };
        let id = value["prediction_id"].as_str().map(str::to_owned);
        if value["schema"] == "tidewatch.actual.v1" {
            labels.extend(id);
            continue;
        }
        if value["schema"] != "tidewatch.prediction.v1" || !value["features"]["age"].is_number() {
            continue;
        }
        let window_start = timestamp.div_euclid(3_600_000) * 3_600_000;
        let entry = windows.entry(window_start).or_default();
        entry.predictions += 1;
        if let Some(charges) = value["features"]["monthly_charges"].as_f64() {
            entry.charges_sum += charges;
            entry.charges_count += 1;
        }
        if let Some(id) = id {
            window_of.insert(id, window_start);
        }
    }
    for id in labels {
        if let Some(window_start) = window_of.get(&id) {
            windows.entry(*window_start).or_default().labels += 1;
        }
    }
    windows
}

/// Stored totals against the oracle: (predictions stored, predictions
/// produced); panics on any window whose count or mean differs, or whose
/// `quality` series did not join each of its labels exactly once.
pub async fn check_oracle(store: &Store, scenario: &Scenario) -> (u64, u64) {
    let stored = store.window_metrics(MetricsQuery::default()).await.unwrap();
    let mut total = 0;
    for (window_start, expected) in oracle(&scenario.stream) {
        let find = |feature: &str| {
            stored.iter().find(|m| {
                m.key.window_start == window_start
                    && m.key.segment == "all"
                    && m.key.feature == feature
            })
        };
        let found = |feature: &str| {
            find(feature)
                .unwrap_or_else(|| panic!("no {feature} metrics for window {window_start}"))
        };
        let score = found("prediction.score");
        assert_eq!(
            score.metrics.count, expected.predictions,
            "window {window_start}"
        );
        total += score.metrics.count;
        let charges = found("monthly_charges");
        assert_eq!(charges.metrics.count, expected.charges_count);
        assert!(close(
            charges.metrics.mean.unwrap(),
            expected.charges_sum / expected.charges_count as f64
        ));
        let joined = find("quality")
            .and_then(|quality| quality.metrics.quality.as_ref())
            .map_or(0, |quality| quality.matched);
        assert_eq!(
            joined, expected.labels,
            "labels joined in window {window_start}"
        );
    }
    (total, scenario.predictions)
}

/// Header `name` of a message, as text.
pub fn header(message: &impl rdkafka::Message, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Three hours of 1,500 predictions, drift from hour 2.
pub fn small_shape() -> DemoShape {
    demo_hours(3, 1_500)
}

/// `hours` hours of `predictions_per_hour`, drift from hour 2, 2,000
/// training rows.
pub fn demo_hours(hours: u32, predictions_per_hour: u32) -> DemoShape {
    DemoShape {
        hours,
        predictions_per_hour,
        drift_onset_hour: 2,
        drift_end_hour: None,
        training_rows: 2_000,
    }
}

/// The training sample stored by a run over the scenario's stream (the
/// default rate, 0.1): exactly the stream's predictions whose id is in the
/// sample, each once, with the features and output logged, and the labels
/// of those ids, with the values logged; about a tenth of the stream.
pub async fn check_training_sample(store: &store::Store, scenario: &Scenario) {
    use std::collections::BTreeMap;
    const RATE: f64 = 0.1;
    let text = std::fs::read_to_string(&scenario.stream).unwrap();
    let mut predictions: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut ids = 0usize;
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(model), Some(id)) = (event["model"].as_str(), event["prediction_id"].as_str())
        else {
            continue;
        };
        if model != tidewatch::fixtures::DEMO_MODEL {
            continue;
        }
        if event.get("label").is_some() {
            if ingest::engine::in_training_sample(RATE, model, id) {
                let label = match &event["label"] {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                labels.insert(id.to_owned(), label);
            }
        } else if event.get("prediction").is_some() {
            ids += 1;
            if ingest::engine::in_training_sample(RATE, model, id) {
                predictions.insert(id.to_owned(), event);
            }
        }
    }
    let stored = store
        .sampled_predictions(
            tidewatch::fixtures::DEMO_MODEL,
            None,
            0,
            i64::MAX / 2,
            1_000_000,
        )
        .await
        .unwrap();
    let stored_ids: Vec<&str> = stored.iter().map(|p| p.prediction_id.as_str()).collect();
    let mut expected_ids: Vec<&str> = predictions.keys().map(String::as_str).collect();
    let mut sorted = stored_ids.clone();
    sorted.sort_unstable();
    expected_ids.sort_unstable();
    assert_eq!(sorted, expected_ids, "the sampled ids, each once");
    let share = stored.len() as f64 / ids as f64;
    assert!((0.07..0.13).contains(&share), "{} of {ids}", stored.len());
    for row in &stored {
        let event = &predictions[&row.prediction_id];
        let features: serde_json::Value = serde_json::from_str(&row.features).unwrap();
        for (name, value) in event["features"].as_object().unwrap() {
            match value.as_f64() {
                Some(number) => assert_eq!(features[name].as_f64(), Some(number), "{name}"),
                None => assert_eq!(&features[name], value, "{name}"),
            }
        }
        assert_eq!(row.score, event["prediction"]["score"].as_f64());
        assert_eq!(row.model_version, event["model_version"].as_str().unwrap());
    }
    let all_ids: Vec<String> = predictions.keys().cloned().collect();
    let stored_labels = store
        .sampled_labels(tidewatch::fixtures::DEMO_MODEL, &all_ids)
        .await
        .unwrap();
    let stored_labels: BTreeMap<String, String> = stored_labels
        .into_iter()
        .map(|label| (label.prediction_id, label.label))
        .collect();
    let expected_labels: BTreeMap<String, String> = labels
        .into_iter()
        .filter(|(id, _)| predictions.contains_key(id))
        .collect();
    assert_eq!(
        stored_labels, expected_labels,
        "the labels of the sampled ids"
    );
    println!(
        "training sample: {} of {ids} predictions ({:.1} %), {} with their labels",
        stored.len(),
        share * 100.0,
        stored_labels.len()
    );
}
