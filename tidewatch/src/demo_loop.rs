//! `tidewatch demo --loop`: the closed loop in one process — drift →
//! retrain request → trained challenger → shadow → promotion → served →
//! monitored against its own reference — on simulated hours.
//!
//! ```text
//!  traffic generator ──HTTP (OIP infer)──▶ gateway ──inference log──▶ bus: predictions ─┐
//!        └──labels, one hour later──────────────────────────────────▶ bus: actuals ─────┤
//!                                                                                       ▼
//!   tidewatch run (the same service as on Kafka): windows ─▶ store ─▶ alert rules ─▶ bus: retrain
//!        ▲                                                                               │
//!        │ bus: registry (aliases) ◀── registry (HTTP, MLflow API) ◀── reference trainer ◀┘
//!        │        │                                        ▲        (bus: retrain-acks)
//!        │        └─▶ gateway routes (challenger in shadow) │
//!        └── promotion policy: champion vs challenger on the same requests ─▶ alias champion,
//!                                                                         bus: promotions
//! ```
//!
//! Every part is the one `tidewatch run` and `tidewatch serve` use; only
//! the bus differs: the in-process bus ([`crate::bus`]) and the embedded
//! store for the demo, Kafka and any store for [`Transport::Kafka`] (the
//! integration test). Event time is simulated: the gateway dates its events
//! by the generator's clock, which moves one hour per step, starting
//! [`HOURS`] + 2 hours before the wall clock (events are never in the
//! future). After each hour the generator waits until the monitor has
//! read what it sent and the parts the hour set in motion have finished
//! (see [`Loop::settle`]): the promotion policy's judgement of the
//! finalized windows, the trainer's answer once its window's labels are
//! all sent, a new version's reference, the gateway's routes once the
//! registry moved an alias. In one process the run repeats for a seed
//! (over Kafka the monitor's progress is seen through the store, and a
//! decision can land an hour later).
//!
//! The world: a churn classifier on four numeric features. Before
//! [`DRIFT_HOUR`], churn follows one relation; from it, three features
//! shift (covariate drift) and two of them change sign in the relation
//! (concept drift), so the serving version's accuracy drops and a version
//! trained on post-drift labels does better.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alerting::delivery::Bus;
use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use registry::client::MlflowClient;
use serde_json::{json, Map, Value};
use store::Store;

use crate::bus::{Feed, InProcessBus};
use crate::config::Config;

/// The model's name.
pub const MODEL: &str = "churn";
/// Simulated hours of traffic.
pub const HOURS: i64 = 22;
/// The first hour with drifted traffic.
pub const DRIFT_HOUR: i64 = 8;
/// Requests per simulated hour.
pub const REQUESTS_PER_HOUR: usize = 600;
/// Rows per inference request.
const ROWS_PER_REQUEST: usize = 10;
/// Requests in flight at once.
const IN_FLIGHT: usize = 8;
/// Rows v1 is trained on.
const V1_ROWS: usize = 4000;
const HOUR_MS: i64 = 3_600_000;
/// Longest wait for one settle condition.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const FEATURES: [&str; 4] = [
    "tenure_months",
    "monthly_charges",
    "support_calls",
    "usage_hours",
];
/// Means and standard deviations before the drift.
const MEANS: [f64; 4] = [30.0, 70.0, 2.0, 20.0];
const SDS: [f64; 4] = [12.0, 20.0, 1.2, 6.0];
/// Mean shifts from the drift, in standard deviations.
const SHIFT: [f64; 4] = [0.0, 1.25, 1.25, -1.0];
/// The relation (on standardized features) before and after the drift.
const WEIGHTS_BEFORE: [f64; 4] = [-1.8, 1.2, 1.0, -0.6];
const WEIGHTS_AFTER: [f64; 4] = [-1.8, 0.0, 1.0, 0.6];

/// Where the loop's bus and store are.
pub enum Transport {
    /// Everything in this process: the in-process bus, the embedded store
    /// in the work directory.
    InProcess,
    /// A Kafka broker (topics named with `prefix`) and the `[store]`
    /// section given (e.g. ClickHouse).
    Kafka {
        brokers: String,
        prefix: String,
        store_section: String,
    },
}

/// Who answers retrain requests.
pub enum Trainer {
    /// Tidewatch's reference trainer (`[trainer]`).
    Reference,
    /// A deliberately bad trainer plugged into the bus as a user's own
    /// would be (requests in, MLflow API, acknowledgement out): it
    /// registers v1 with its coefficients negated. The promotion policy
    /// must reject it.
    Bad,
    /// A trainer outside the process taking the requests by webhook
    /// (`[alerts.retrain] url`) and acknowledging on the bus, e.g.
    /// `examples/python-trainer` (Kafka transport only).
    Webhook { url: String },
}

/// What to run.
pub struct Options {
    pub workdir: PathBuf,
    pub seed: u64,
    pub transport: Transport,
    pub trainer: Trainer,
    /// Where the HTTP API (registry, pages) listens; any free port of
    /// 127.0.0.1 when `None`.
    pub listen: Option<std::net::SocketAddr>,
    /// The API token (registry writes, training data); a random one when
    /// `None`.
    pub token: Option<String>,
    /// Run the challenger as a canary answering this share of requests
    /// instead of in shadow (the policy then compares each version on its
    /// own requests).
    pub canary_share: Option<f64>,
}

/// One event seen on the bus, with the simulated hour it was seen in.
#[derive(Debug, Clone)]
pub struct Observed {
    pub topic: Topic,
    pub hour: i64,
    pub event: Value,
}

/// The loop's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topic {
    Retrain,
    Acks,
    Registry,
    Promotions,
    Routes,
}

impl Topic {
    const ALL: [Topic; 5] = [
        Topic::Retrain,
        Topic::Acks,
        Topic::Registry,
        Topic::Promotions,
        Topic::Routes,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Topic::Retrain => "retrain",
            Topic::Acks => "retrain-acks",
            Topic::Registry => "registry",
            Topic::Promotions => "promotions",
            Topic::Routes => "routes",
        }
    }
}

/// The topic names of one loop.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// The name of `topic`.
    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.suffix())
    }
    /// The predictions topic.
    pub fn predictions(&self) -> String {
        format!("{}predictions", self.prefix)
    }
    /// The actuals topic.
    pub fn actuals(&self) -> String {
        format!("{}actuals", self.prefix)
    }
}

/// Drifted series in one window that make the loop's drift rule fire (and
/// request retraining). A single drifted input is what the p-value tests
/// of the default verdict give in about α of unchanged windows; the rule
/// asks for more.
pub const DRIFT_RULE_MIN_FEATURES: usize = 2;

/// What the loop did.
pub struct Outcome {
    /// The printed report.
    pub report: String,
    /// Every event seen on the loop's topics, in order.
    pub observed: Vec<Observed>,
    /// Accuracy per (window hour, version) on joined labels.
    pub accuracy: BTreeMap<(i64, String), (f64, u64)>,
    /// Drifted input features per (window hour, version).
    pub drifted: BTreeMap<(i64, String), usize>,
    /// The store (still open).
    pub store: Store,
    /// The simulated start (ms; hour 0).
    pub start_ms: i64,
    /// The registry API's address.
    pub http: std::net::SocketAddr,
}

impl Outcome {
    /// Whether enough inputs of `version` drifted in the window of `hour`
    /// for the drift rule ([`DRIFT_RULE_MIN_FEATURES`]).
    pub fn drift_alerting(&self, hour: i64, version: &str) -> bool {
        self.drifted
            .get(&(hour, version.to_owned()))
            .is_some_and(|count| *count >= DRIFT_RULE_MIN_FEATURES)
    }
}

/// One inference request of the generator, with its rows' true labels.
struct Request {
    id: String,
    rows: Vec<[f64; 4]>,
    labels: Vec<&'static str>,
}

/// The seeded world.
struct World {
    rng: ChaCha8Rng,
}

impl World {
    fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn normal(&mut self) -> f64 {
        // Box–Muller.
        let u1: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// One row and its label, before or after the drift.
    fn row(&mut self, drifted: bool) -> ([f64; 4], &'static str) {
        let mut row = [0.0; 4];
        let mut logit = -0.2;
        for i in 0..4 {
            let shift = if drifted { SHIFT[i] } else { 0.0 };
            let z = self.normal() + shift;
            row[i] = MEANS[i] + SDS[i] * z;
            let weight = if drifted {
                WEIGHTS_AFTER[i]
            } else {
                WEIGHTS_BEFORE[i]
            };
            logit += weight * z;
        }
        let p = 1.0 / (1.0 + (-2.5 * logit).exp());
        let label = if self.rng.random::<f64>() < p {
            "yes"
        } else {
            "no"
        };
        (row, label)
    }
}

/// Trains v1 on pre-drift rows and writes `model.json` and
/// `training.jsonl` (with v1's outputs, the reference's input) into
/// `directory`; their paths.
fn train_v1(world: &mut World, directory: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let rows: Vec<([f64; 4], &str)> = (0..V1_ROWS).map(|_| world.row(false)).collect();
    let sample = trainer::Sample {
        features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
        rows: rows.iter().map(|(row, _)| row.to_vec()).collect(),
        labels: trainer::Labels::Classes(rows.iter().map(|(_, l)| (*l).to_owned()).collect()),
    };
    let fitted = trainer::fit(&sample, &trainer::Settings::default())?;
    let model = serving::linear::LinearModel::classifier(
        fitted.features.clone(),
        fitted.classes.clone(),
        fitted.coefficients.clone(),
        fitted.intercepts.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(directory)?;
    let directory = directory.canonicalize()?;
    let (model_path, data_path) = (
        directory.join("model.json"),
        directory.join("training.jsonl"),
    );
    std::fs::write(&model_path, model.to_json())?;
    let mut lines = String::new();
    for (row, label) in &rows {
        let (score, class) = model.predict_row(row);
        let mut record = Map::new();
        for (name, value) in FEATURES.iter().zip(row) {
            record.insert((*name).to_owned(), json!(value));
        }
        record.insert("prediction.score".into(), json!(score));
        record.insert("prediction.class".into(), json!(class));
        record.insert("actual.label".into(), json!(label));
        lines.push_str(&Value::Object(record).to_string());
        lines.push('\n');
    }
    std::fs::write(&data_path, lines)?;
    Ok((model_path, data_path))
}

/// The loop's configuration.
fn config_text(
    options: &Options,
    topics: &Topics,
    http: std::net::SocketAddr,
    token_env: &str,
    v1_model: &Path,
) -> String {
    let (kafka, store) = match &options.transport {
        Transport::InProcess => (
            String::new(),
            "[store]\ntype = \"embedded\"\npath = \"tidewatch.db\"\n".to_owned(),
        ),
        Transport::Kafka {
            brokers,
            prefix,
            store_section,
        } => (
            format!(
                "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{prefix}tidewatch\"\n\
                 dead_letter_topic = \"{prefix}dead-letters\"\n\
                 topics = [{{ name = \"{}\", kind = \"prediction\" }}, {{ name = \"{}\", kind = \"actual\" }}]\n",
                topics.predictions(),
                topics.actuals()
            ),
            store_section.clone(),
        ),
    };
    let trainer = match options.trainer {
        Trainer::Reference => format!(
            "[trainer]\nregistry_url = \"http://{http}\"\ntoken_env = \"{token_env}\"\n\
             model_dir = \"models\"\nmin_rows = 150\nlabel_wait = \"30s\"\n"
        ),
        Trainer::Bad | Trainer::Webhook { .. } => String::new(),
    };
    let challenger_mode = match options.canary_share {
        Some(share) => format!("challenger_mode = \"canary\"\ncanary_share = {share}\n"),
        None => String::new(),
    };
    let webhook = match &options.trainer {
        Trainer::Webhook { url } => format!("url = \"{url}\"\n"),
        _ => String::new(),
    };
    let features = FEATURES
        .iter()
        .map(|f| format!("{{ name = \"{f}\", kind = \"numeric\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# Written by `tidewatch demo --loop`.
version = 1
{kafka}
{store}
[windows]
size = "1h"
allowed_lateness = "1m"
idle_close_after = "0s"
checkpoint_interval = "500ms"
sample_rate = 0.5
[reference]
refresh_interval = "1s"
[[models]]
name = "{MODEL}"
task = "classification"
positive_class = "yes"
features = [{features}]
[[alerts.rules]]
name = "input_drift"
model = "{MODEL}"
condition = {{ type = "drift", min_features = {DRIFT_RULE_MIN_FEATURES} }}
for_windows = 1
resolve_after = 2
severity = "warning"
retrain = true
[[alerts.rules]]
name = "accuracy_drop"
model = "{MODEL}"
condition = {{ type = "quality_drop", metric = "accuracy", max_drop = 0.1, baseline_windows = 3 }}
for_windows = 1
severity = "critical"
retrain = true
[alerts.retrain]
{webhook}topic = "{retrain}"
ack_topic = "{acks}"
debounce = "24h"
[http]
listen = "{http}"
token_env = "{token_env}"
[registry]
path = "registry.sqlite"
topic = "{registry}"
{trainer}
[promotion]
registry_url = "http://{http}"
token_env = "{token_env}"
topic = "{promotions}"
min_windows = 2
max_windows = 6
min_pairs = 150
margin = 0.02
alpha = 0.01
[serving]
listen = "127.0.0.1:0"
[serving.log]
topic = "{predictions}"
[serving.registry]
url = "http://{http}"
topic = "{registry}"
route_topic = "{routes}"
[[serving.models]]
name = "{MODEL}"
champion = "1"
{challenger_mode}versions = [{{ version = "1", runtime = "linear", path = "{v1}" }}]
"#,
        retrain = topics.name(Topic::Retrain),
        acks = topics.name(Topic::Acks),
        registry = topics.name(Topic::Registry),
        promotions = topics.name(Topic::Promotions),
        routes = topics.name(Topic::Routes),
        predictions = topics.predictions(),
        v1 = v1_model.display(),
    )
}

/// Distinguishes the token variables of loops run in one process.
static LOOPS: AtomicU64 = AtomicU64::new(0);

/// The running loop.
struct Loop {
    store: Store,
    registry: MlflowClient,
    routes: Arc<serving::routes::RouteTable>,
    observed: Arc<Mutex<Vec<Observed>>>,
    hour: Arc<AtomicI64>,
    /// Events sent to the monitor (in process: compared with what it read).
    sent: u64,
    processed: Option<Arc<AtomicU64>>,
    start_ms: i64,
    /// Labels sent for windows before this time.
    labels_through: i64,
    /// Versions whose reference the monitor has had time to install.
    installed: std::collections::BTreeSet<String>,
    /// The promotion policy's queue (idle: every finalized window judged).
    promotions: crate::promotion::Queue,
}

impl Loop {
    /// Waits until the monitor has read everything sent, every retrain
    /// request it recorded is on the bus, every request whose window's
    /// labels are all sent is answered, and the gateway routes as the
    /// registry says.
    async fn settle(&mut self) -> anyhow::Result<()> {
        match &self.processed {
            Some(processed) => {
                wait_until("the monitor to read the hour", || async {
                    Ok(processed.load(Ordering::SeqCst) >= self.sent)
                })
                .await?
            }
            None if self.hour.load(Ordering::SeqCst) == 0 => {}
            None => {
                // On a broker: the previous window is finalized once this
                // hour's events are read.
                let previous = self.start_ms + (self.hour.load(Ordering::SeqCst) - 1) * HOUR_MS;
                wait_until("the previous window to be finalized", || async {
                    Ok(!self
                        .store
                        .window_metrics(store::MetricsQuery {
                            model: Some(MODEL.into()),
                            from_ms: Some(previous),
                            to_ms: Some(previous + 1),
                            ..Default::default()
                        })
                        .await?
                        .is_empty())
                })
                .await?
            }
        }
        wait_until(
            "the promotion policy to judge the finalized windows",
            || async { Ok(self.promotions.is_idle()) },
        )
        .await?;
        wait_until("recorded retrain requests to reach the bus", || async {
            let recorded = self
                .store
                .alerts(Some(MODEL), 1000)
                .await?
                .iter()
                .filter(|a| a.status == store::NotificationStatus::Retrain)
                .count();
            Ok(self.seen(Topic::Retrain).len() >= recorded)
        })
        .await?;
        wait_until("retrain requests to be answered", || async {
            let acks: Vec<String> = self
                .seen(Topic::Acks)
                .iter()
                .filter_map(|ack| ack["data"]["request_id"].as_str().map(str::to_owned))
                .collect();
            Ok(self.seen(Topic::Retrain).iter().all(|request| {
                let answered = request["id"]
                    .as_str()
                    .is_some_and(|id| acks.iter().any(|a| a == id));
                let labelled =
                    request["data"]["train_window"]["end_ms"].as_i64() <= Some(self.labels_through);
                answered || !labelled
            }))
        })
        .await?;
        // A new version's windows are compared with its own reference from
        // its first window on: its profile is stored (the registry's tag
        // read), then the monitor's reference refresh (every second) runs.
        let answer = self
            .registry
            .get_ok(
                "model-versions/search",
                &[("filter", &format!("name = '{MODEL}'"))],
            )
            .await?;
        let versions: Vec<String> = answer["model_versions"]
            .as_array()
            .map(|versions| {
                versions
                    .iter()
                    .filter_map(|v| v["version"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut new = false;
        for version in versions {
            if self.installed.contains(&version) {
                continue;
            }
            wait_until("a new version's reference profile", || async {
                Ok(self.store.reference(MODEL, &version).await?.is_some())
            })
            .await?;
            self.installed.insert(version);
            new = true;
        }
        if new {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        wait_until("the gateway to route as the registry says", || async {
            let aliases: BTreeMap<String, String> = self
                .registry
                .aliases(MODEL)
                .await?
                .unwrap_or_default()
                .into_iter()
                .collect();
            let (_, routed) = self.routes.get(MODEL)?;
            let challenger = aliases
                .get("challenger")
                .or_else(|| aliases.get("shadow"))
                .filter(|v| aliases.get("champion") != Some(*v));
            Ok(aliases.get("champion") == Some(&routed.champion)
                && challenger == routed.challenger.as_ref().map(|(v, _)| v))
        })
        .await
    }

    fn seen(&self, topic: Topic) -> Vec<Value> {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|o| o.topic == topic)
            .map(|o| o.event.clone())
            .collect()
    }
}

/// Polls `condition` every 20 ms until it holds; an error after
/// [`SETTLE_TIMEOUT`] names `what`.
async fn wait_until<F, Fut>(what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match condition().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => {}
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "waited {SETTLE_TIMEOUT:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The deliberately bad trainer (see [`Trainer::Bad`]).
struct BadTrainer {
    registry: MlflowClient,
    bus: Arc<dyn Bus>,
    ack_topic: String,
    directory: PathBuf,
    v1_model: PathBuf,
    v1_data: PathBuf,
}

impl BadTrainer {
    /// Answers one request: v1 negated, registered as challenger, acknowledged.
    async fn answer(&self, payload: &[u8]) {
        let Some(request) = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|document| crate::retrainer::RetrainRequest::from_cloud_event(&document))
        else {
            return;
        };
        let outcome = match self.register(&request).await {
            Ok(version) => crate::retrainer::Outcome::Completed {
                version,
                rows: 0,
                source: "the bad trainer".into(),
            },
            Err(error) => crate::retrainer::Outcome::Failed {
                reason: error.to_string(),
            },
        };
        let ack = outcome.ack_event(&request, ingest::finalize::now_millis() as i64);
        alerting::delivery::publish_until_sent(
            self.bus.as_ref(),
            &self.ack_topic,
            &request.model,
            &ack,
            Duration::from_secs(1),
        )
        .await;
    }

    async fn register(&self, request: &crate::retrainer::RetrainRequest) -> anyhow::Result<String> {
        let v1: Value = serde_json::from_slice(&std::fs::read(&self.v1_model)?)?;
        let negate = |value: &Value| -> Value {
            match value {
                Value::Number(n) => json!(-n.as_f64().unwrap_or(0.0)),
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .map(|item| match item {
                            Value::Array(row) => Value::Array(
                                row.iter()
                                    .map(|w| json!(-w.as_f64().unwrap_or(0.0)))
                                    .collect(),
                            ),
                            other => json!(-other.as_f64().unwrap_or(0.0)),
                        })
                        .collect(),
                ),
                other => other.clone(),
            }
        };
        let mut bad = v1.clone();
        bad["coefficients"] = negate(&v1["coefficients"]);
        bad["intercepts"] = negate(&v1["intercepts"]);
        let directory = self.directory.join(format!(
            "bad-{}",
            request
                .request_id
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        std::fs::create_dir_all(&directory)?;
        let path = directory.join("model.json");
        std::fs::write(&path, bad.to_string())?;
        let tag = |key: &str, value: String| json!({"key": key, "value": value});
        let answer = self
            .registry
            .post_ok(
                "model-versions/create",
                &json!({
                    "name": request.model,
                    "source": format!("file://{}", path.display()),
                    "description": "A deliberately bad version: v1 with its coefficients negated",
                    "tags": [
                        tag(registry::store::REFERENCE_TAG, format!("file://{}", self.v1_data.display())),
                        tag(serving::load::RUNTIME_TAG, "linear".into()),
                    ],
                }),
            )
            .await?;
        let version = answer["model_version"]["version"]
            .as_str()
            .context("the registry answered no version")?
            .to_owned();
        self.registry
            .post_ok(
                "registered-models/alias",
                &json!({"name": request.model, "alias": "challenger", "version": version}),
            )
            .await?;
        Ok(version)
    }
}

/// A client of the gateway.
type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Sends one inference request of `rows` to the gateway.
async fn infer(
    client: &HttpClient,
    gateway: std::net::SocketAddr,
    id: &str,
    rows: &[[f64; 4]],
) -> anyhow::Result<()> {
    let body = json!({
        "id": id,
        "inputs": [{
            "name": "features",
            "shape": [rows.len(), 4],
            "datatype": "FP64",
            "data": rows,
        }],
    });
    let request = hyper::Request::post(format!("http://{gateway}/v2/models/{MODEL}/infer"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = client.request(request).await?;
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "the gateway answered {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// Runs the loop (see the module docs); `report` is called with the
/// printed report, then the servers keep running until `hold` resolves.
pub async fn run(
    options: Options,
    report: impl FnOnce(&Outcome),
    hold: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let workdir = &options.workdir;
    if workdir.exists() {
        for stale in [
            "tidewatch.db",
            "tidewatch.db-wal",
            "tidewatch.db-shm",
            "registry.sqlite",
            "registry.sqlite-wal",
            "registry.sqlite-shm",
            "dead-letters.jsonl",
        ] {
            let _ = std::fs::remove_file(workdir.join(stale));
        }
        let _ = std::fs::remove_dir_all(workdir.join("models"));
    }
    std::fs::create_dir_all(workdir)?;
    let workdir = workdir.canonicalize()?;
    let mut world = World::new(options.seed);
    let (v1_model, v1_data) = train_v1(&mut world, &workdir.join("models").join("v1"))?;

    let topics = Topics {
        prefix: match &options.transport {
            Transport::InProcess => String::new(),
            Transport::Kafka { prefix, .. } => prefix.clone(),
        },
    };
    let http_listener = tokio::net::TcpListener::bind(
        options
            .listen
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await
    .context("the loop's HTTP listener")?;
    let http = http_listener.local_addr()?;
    let gateway_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway = gateway_listener.local_addr()?;
    let token_env = format!(
        "TIDEWATCH_LOOP_TOKEN_{}_{}",
        std::process::id(),
        LOOPS.fetch_add(1, Ordering::SeqCst)
    );
    let token = options
        .token
        .clone()
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    std::env::set_var(&token_env, &token);
    let config_path = workdir.join("tidewatch.toml");
    let text = config_text(&options, &topics, http, &token_env, &v1_model);
    std::fs::write(&config_path, &text)?;
    let config = match options.transport {
        Transport::InProcess => Config::parse_in_process(&text, &config_path)?,
        Transport::Kafka { .. } => Config::parse(&text, &config_path)?,
    };
    let store = config.store.open().await?;

    // The bus, and what the loop watches on it (subscribed before anyone
    // publishes).
    let in_process = matches!(options.transport, Transport::InProcess).then(InProcessBus::new);
    let observed: Arc<Mutex<Vec<Observed>>> = Arc::default();
    let hour = Arc::new(AtomicI64::new(0));
    let (stop_watchers, watchers_stopped) = tokio::sync::watch::channel(false);
    let mut watchers = Vec::new();
    for topic in Topic::ALL {
        let name = topics.name(topic);
        let feed = match (&in_process, &config.kafka) {
            (Some(bus), _) => bus.feed(&name),
            (None, Some(kafka)) => Feed::kafka(kafka, &name),
            (None, None) => unreachable!("a Kafka loop has [kafka]"),
        };
        let (observed, hour) = (Arc::clone(&observed), Arc::clone(&hour));
        let mut stopped = watchers_stopped.clone();
        watchers.push(tokio::spawn(async move {
            let on_batch = |payloads: Vec<Vec<u8>>| {
                let mut observed = observed.lock().unwrap_or_else(|e| e.into_inner());
                for payload in payloads {
                    if let Ok(event) = serde_json::from_slice::<Value>(&payload) {
                        observed.push(Observed {
                            topic,
                            hour: hour.load(Ordering::SeqCst),
                            event,
                        });
                    }
                }
                std::future::ready(())
            };
            let stop = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(error) = feed.follow(64, on_batch, stop).await {
                tracing::warn!(%error, "watching the loop's topic failed");
            }
        }));
    }
    let bad_requests = match (&options.trainer, &in_process, &config.kafka) {
        (Trainer::Reference | Trainer::Webhook { .. }, _, _) => None,
        (Trainer::Bad, Some(bus), _) => Some(bus.feed(&topics.name(Topic::Retrain))),
        (Trainer::Bad, None, Some(kafka)) => Some(Feed::kafka(kafka, &topics.name(Topic::Retrain))),
        (Trainer::Bad, None, None) => unreachable!("a Kafka loop has [kafka]"),
    };
    let processed = Arc::new(AtomicU64::new(0));
    let promotions = crate::promotion::Queue::default();
    let wiring = crate::service::Wiring {
        promotion_queue: Some(promotions.clone()),
        in_process: in_process.clone().map(|bus| crate::service::InProcess {
            bus,
            topics: vec![
                (topics.predictions(), events::EventKind::Prediction),
                (topics.actuals(), events::EventKind::Actual),
            ],
            dead_letters: workdir.join("dead-letters.jsonl"),
            processed: Arc::clone(&processed),
        }),
        http_listener: Some(http_listener),
    };
    let (stop_service, service_stopped) = tokio::sync::oneshot::channel::<()>();
    let service = {
        let config = config.clone();
        tokio::spawn(async move {
            crate::service::run_wired(&config, wiring, async {
                let _ = service_stopped.await;
            })
            .await
        })
    };

    // v1: registered with its training data as reference, champion.
    let registry = MlflowClient::new(&format!("http://{http}")).with_token(Some(token));
    wait_until("the registry to answer", || async {
        Ok(registry
            .get("registered-models/search", &[])
            .await
            .is_ok_and(|(status, _)| status == 200))
    })
    .await?;
    registry
        .post_ok("registered-models/create", &json!({"name": MODEL}))
        .await?;
    let tag = |key: &str, value: String| json!({"key": key, "value": value});
    registry
        .post_ok(
            "model-versions/create",
            &json!({
                "name": MODEL,
                "source": format!("file://{}", v1_model.display()),
                "description": format!("Trained on {V1_ROWS} generated rows before the drift"),
                "tags": [
                    tag(registry::store::REFERENCE_TAG, format!("file://{}", v1_data.display())),
                    tag(serving::load::RUNTIME_TAG, "linear".into()),
                ],
            }),
        )
        .await?;
    registry
        .post_ok(
            "registered-models/alias",
            &json!({"name": MODEL, "alias": "champion", "version": "1"}),
        )
        .await?;
    let bad_trainer = match bad_requests {
        Some(requests) => {
            let bus: Arc<dyn Bus> = match (&in_process, &config.kafka) {
                (Some(bus), _) => Arc::new(bus.clone()),
                (None, Some(kafka)) => Arc::new(crate::service::KafkaBus::new(kafka)?),
                (None, None) => unreachable!("a Kafka loop has [kafka]"),
            };
            let trainer = BadTrainer {
                registry: registry.clone(),
                bus,
                ack_topic: topics.name(Topic::Acks),
                directory: workdir.join("models"),
                v1_model: v1_model.clone(),
                v1_data: v1_data.clone(),
            };
            let mut stopped = watchers_stopped.clone();
            Some(tokio::spawn(async move {
                let on_batch = |payloads: Vec<Vec<u8>>| {
                    let trainer = &trainer;
                    async move {
                        for payload in payloads {
                            trainer.answer(&payload).await;
                        }
                    }
                };
                let stop = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                if let Err(error) = requests.follow(16, on_batch, stop).await {
                    tracing::warn!(%error, "the bad trainer stopped");
                }
            }))
        }
        None => None,
    };

    // The gateway, dating its events by the simulated clock.
    let start_ms = (ingest::finalize::now_millis() as i64 / HOUR_MS - HOURS - 2) * HOUR_MS;
    let clock = Arc::new(AtomicI64::new(start_ms));
    let serving = config
        .serving
        .clone()
        .context("the loop's config has [serving]")?;
    let routes = serving.routes().clone();
    let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway_task = {
        let bus = in_process.clone();
        let kafka = config.kafka.clone();
        let clock = Arc::clone(&clock);
        tokio::spawn(async move {
            let bus = match (&bus, &kafka) {
                (Some(bus), _) => crate::gateway::GatewayBus::InProcess(bus.clone()),
                (None, Some(kafka)) => crate::gateway::GatewayBus::Kafka(kafka),
                (None, None) => unreachable!("a Kafka loop has [kafka]"),
            };
            crate::gateway::run_on(
                &serving,
                bus,
                gateway_listener,
                Some(Arc::new(move || clock.load(Ordering::SeqCst))),
                async {
                    let _ = gateway_stopped.await;
                },
            )
            .await
        })
    };
    let labels: Arc<dyn Bus> = match (&in_process, &config.kafka) {
        (Some(bus), _) => Arc::new(bus.clone()),
        (None, Some(kafka)) => Arc::new(crate::service::KafkaBus::new(kafka)?),
        (None, None) => unreachable!("a Kafka loop has [kafka]"),
    };

    let mut state = Loop {
        store: store.clone(),
        registry: registry.clone(),
        routes,
        observed: Arc::clone(&observed),
        hour: Arc::clone(&hour),
        sent: 0,
        processed: in_process.as_ref().map(|_| Arc::clone(&processed)),
        start_ms,
        labels_through: start_ms,
        installed: Default::default(),
        promotions: promotions.clone(),
    };
    state.settle().await?;
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let spacing = HOUR_MS / REQUESTS_PER_HOUR as i64;
    let mut pending_labels: Vec<(String, &'static str)> = Vec::new();
    for h in 0..HOURS {
        hour.store(h, Ordering::SeqCst);
        let hour_start = start_ms + h * HOUR_MS;
        let drifted = h >= DRIFT_HOUR;
        let requests: Vec<Request> = (0..REQUESTS_PER_HOUR / ROWS_PER_REQUEST)
            .map(|r| {
                let (rows, labels) = (0..ROWS_PER_REQUEST).map(|_| world.row(drifted)).unzip();
                Request {
                    id: format!("h{h:02}-r{r:03}"),
                    rows,
                    labels,
                }
            })
            .collect();
        let before = serving_logged(&client, gateway).await;
        for (chunk_index, chunk) in requests.chunks(IN_FLIGHT).enumerate() {
            clock.store(
                hour_start + (chunk_index * IN_FLIGHT * ROWS_PER_REQUEST) as i64 * spacing,
                Ordering::SeqCst,
            );
            let calls = chunk
                .iter()
                .map(|request| infer(&client, gateway, &request.id, &request.rows));
            for result in futures_util::future::join_all(calls).await {
                result?;
            }
        }
        // Labels of the previous hour arrive during this one.
        let actuals = topics.actuals();
        let sends = pending_labels
            .drain(..)
            .enumerate()
            .map(|(i, (id, label))| {
                let event = json!({
                    "schema": "tidewatch.actual.v1",
                    "model": MODEL,
                    "model_version": "1",
                    "prediction_id": id,
                    "timestamp": hour_start + HOUR_MS / 2 + i as i64 * (spacing / 2),
                    "label": label,
                });
                let (labels, actuals) = (&labels, &actuals);
                async move {
                    labels
                        .publish(actuals, &id, event.to_string().into_bytes(), Vec::new())
                        .await
                }
            });
        for sent in futures_util::future::join_all(sends).await {
            sent.map_err(|e| anyhow::anyhow!("publishing a label: {e}"))?;
            state.sent += 1;
        }
        state.labels_through = hour_start;
        for request in &requests {
            for (row, label) in request.labels.iter().enumerate() {
                pending_labels.push((format!("{}/{row}", request.id), label));
            }
        }
        // Every answer (shadow calls included) is logged once.
        let logged = wait_logged(&client, gateway, before).await?;
        state.sent += logged;
        state.settle().await?;
    }

    // The report: quality and drift per window and version, from the store.
    let metrics = store
        .window_metrics(store::MetricsQuery {
            model: Some(MODEL.into()),
            segment: Some("all".into()),
            ..Default::default()
        })
        .await?;
    let mut accuracy = BTreeMap::new();
    let mut drifted = BTreeMap::new();
    for record in &metrics {
        let key = (
            (record.key.window_start - start_ms) / HOUR_MS,
            record.key.model_version.clone(),
        );
        if FEATURES.contains(&record.key.feature.as_str()) && record.metrics.drifted == Some(true) {
            *drifted.entry(key.clone()).or_insert(0usize) += 1;
        }
        if let Some(quality) = &record.metrics.quality {
            if let Some(value) = quality.accuracy {
                accuracy.insert(key, (value, quality.matched));
            }
        }
    }
    let mut observed_events = observed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Each topic is watched by its own reader: within an hour, the events'
    // own times give the order.
    observed_events.sort_by_key(|o| {
        (
            o.hour,
            o.event["time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_micros()),
        )
    });
    let mut outcome = Outcome {
        report: String::new(),
        observed: observed_events,
        accuracy,
        drifted,
        store: store.clone(),
        start_ms,
        http,
    };
    outcome.report = render(&outcome, options.seed, started.elapsed(), &config);
    report(&outcome);
    hold.await;

    let _ = stop_gateway.send(());
    gateway_task.await??;
    let _ = stop_service.send(());
    service.await??;
    let _ = stop_watchers.send(true);
    for watcher in watchers.into_iter().chain(bad_trainer) {
        let _ = watcher.await;
    }
    std::env::remove_var(&token_env);
    Ok(outcome)
}

/// The gateway's count of logged events (`tidewatch_serving_log_events_total`).
async fn serving_logged(client: &HttpClient, gateway: std::net::SocketAddr) -> u64 {
    metric(client, gateway, "tidewatch_serving_log_events_total")
        .await
        .unwrap_or(0.0) as u64
}

/// Waits until the gateway's logged count stops growing past `before`
/// (shadow calls answer after their request); how many were logged.
async fn wait_logged(
    client: &HttpClient,
    gateway: std::net::SocketAddr,
    before: u64,
) -> anyhow::Result<u64> {
    let mut last = serving_logged(client, gateway).await;
    loop {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let now = serving_logged(client, gateway).await;
        if now == last {
            return Ok(now - before);
        }
        last = now;
    }
}

/// One counter of the gateway's `/metrics` (summed over labels).
async fn metric(
    client: &HttpClient,
    gateway: std::net::SocketAddr,
    name: &str,
) -> anyhow::Result<f64> {
    let response = client
        .get(format!("http://{gateway}/metrics").parse()?)
        .await?;
    let text = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&text);
    Ok(text
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// `+05h`.
fn hour_label(hour: i64) -> String {
    format!("+{hour:02}h")
}

/// One line of the timeline for an observed event.
fn describe(observed: &Observed, start_ms: i64) -> Option<String> {
    let at =
        |ms: Option<i64>| ms.map_or("?".to_owned(), |ms| hour_label((ms - start_ms) / HOUR_MS));
    let event = &observed.event;
    let data = &event["data"];
    let kind = event["type"].as_str().unwrap_or_default();
    let text = match observed.topic {
        Topic::Retrain => format!(
            "retrain requested for v{}: {} (train window {}..{})",
            data["version"].as_str().unwrap_or("?"),
            data["reason"].as_str().unwrap_or_default(),
            at(data["train_window"]["start_ms"].as_i64()),
            at(data["train_window"]["end_ms"].as_i64()),
        ),
        Topic::Acks => match kind.rsplit('.').next() {
            Some("completed") => format!(
                "trainer: v{} trained on {} labelled rows and registered as challenger",
                data["version"].as_str().unwrap_or("?"),
                data["rows"]
            ),
            _ => format!(
                "trainer: failed: {}",
                data["reason"].as_str().unwrap_or_default()
            ),
        },
        Topic::Registry => {
            let (alias, version) = (
                data["alias"].as_str(),
                event["subject"]
                    .as_str()
                    .and_then(|s| s.rsplit('/').next())
                    .unwrap_or("?"),
            );
            match kind.trim_start_matches("io.tidewatch.registry.") {
                "model_version.created" => format!("registry: version {version} registered"),
                "model_version_alias.created" => {
                    format!("registry: alias {} → v{version}", alias.unwrap_or("?"))
                }
                "model_version_alias.deleted" => {
                    format!("registry: alias {} removed", alias.unwrap_or("?"))
                }
                _ => return None,
            }
        }
        Topic::Promotions => {
            let evidence = &data["evidence"];
            let sample = match (
                evidence["champion_requests"].as_u64(),
                evidence["challenger_requests"].as_u64(),
            ) {
                (Some(a), Some(b)) => {
                    format!("on {a} and {b} labelled requests each answered alone")
                }
                _ => format!("on {} shared labelled requests", evidence["pairs"]),
            };
            format!(
                "promotion: v{} {} against v{} — {} {:.3} vs {:.3} {sample}, {} p = {:.2e}",
                data["challenger"].as_str().unwrap_or("?"),
                match data["verdict"].as_str() {
                    Some("promote") => "promoted",
                    Some("reject") => "rejected",
                    _ => "decided",
                },
                data["champion"].as_str().unwrap_or("?"),
                evidence["metric"].as_str().unwrap_or("accuracy"),
                evidence["challenger"].as_f64().unwrap_or(f64::NAN),
                evidence["champion"].as_f64().unwrap_or(f64::NAN),
                evidence["test"].as_str().unwrap_or("test"),
                evidence["p_value"].as_f64().unwrap_or(f64::NAN),
            )
        }
        Topic::Routes => format!(
            "gateway: routes now champion v{}{}",
            data["champion"].as_str().unwrap_or("?"),
            match data["challenger"].as_str() {
                Some(challenger) => match data["challenger_mode"]["mode"].as_str() {
                    Some("canary") => format!(
                        ", challenger v{challenger} (canary, {:.0} % of requests)",
                        data["challenger_mode"]["per_million"]
                            .as_f64()
                            .unwrap_or(0.0)
                            / 10_000.0
                    ),
                    _ => format!(", challenger v{challenger} (shadow)"),
                },
                None => String::new(),
            }
        ),
    };
    Some(format!("  {}  {text}", hour_label(observed.hour)))
}

/// The printed report.
fn render(outcome: &Outcome, seed: u64, elapsed: Duration, config: &Config) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Tidewatch closed loop: model {MODEL}, 1h windows, {HOURS} simulated hours from {} UTC (seed {seed}), drift injected at {}\n\
         bus: {}; store: {}\n\n",
        crate::report::format_time(outcome.start_ms),
        hour_label(DRIFT_HOUR),
        if config.kafka.is_some() { "Kafka" } else { "in process" },
        config.store.describe(),
    ));
    out.push_str("Timeline (the simulated hour each event was seen in)\n");
    for observed in &outcome.observed {
        if let Some(line) = describe(observed, outcome.start_ms) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    let versions: std::collections::BTreeSet<&String> =
        outcome.accuracy.keys().map(|(_, v)| v).collect();
    out.push_str(&format!(
        "\nAccuracy per window on joined labels (shadow answers included); against that version's reference \
         * = at least {DRIFT_RULE_MIN_FEATURES} inputs drifted (the drift rule fires), + = one did\n"
    ));
    out.push_str("  window");
    for version in &versions {
        out.push_str(&format!("  {:>9}", format!("v{version}")));
    }
    out.push('\n');
    let hours: std::collections::BTreeSet<i64> = outcome.accuracy.keys().map(|(h, _)| *h).collect();
    for hour in hours {
        out.push_str(&format!("  {}   ", hour_label(hour)));
        for version in &versions {
            let key = (hour, (*version).clone());
            match outcome.accuracy.get(&key) {
                Some((accuracy, _)) => out.push_str(&format!(
                    "  {:>8.3}{}",
                    accuracy,
                    match outcome.drifted.get(&key) {
                        Some(count) if *count >= DRIFT_RULE_MIN_FEATURES => "*",
                        Some(_) => "+",
                        None => " ",
                    }
                )),
                None => out.push_str(&format!("  {:>9}", "")),
            }
        }
        out.push('\n');
    }
    let summary = summarize(outcome);
    out.push_str(&format!("\n{summary}\n"));
    out.push_str(&format!("done in {:.1} s\n", elapsed.as_secs_f64()));
    out
}

/// Mean accuracy of `version` over `hours`, weighted by labels.
pub fn mean_accuracy(outcome: &Outcome, version: &str, hours: std::ops::Range<i64>) -> Option<f64> {
    let (mut sum, mut count) = (0.0, 0u64);
    for ((hour, v), (accuracy, labelled)) in &outcome.accuracy {
        if v == version && hours.contains(hour) {
            sum += accuracy * *labelled as f64;
            count += labelled;
        }
    }
    (count > 0).then(|| sum / count as f64)
}

/// The before/after lines.
fn summarize(outcome: &Outcome) -> String {
    let promoted = outcome
        .observed
        .iter()
        .find(|o| o.topic == Topic::Promotions && o.event["data"]["verdict"] == "promote");
    let fmt = |value: Option<f64>| value.map_or("–".to_owned(), |v| format!("{v:.3}"));
    let mut lines = vec![format!(
        "before the drift: v1 {}",
        fmt(mean_accuracy(outcome, "1", 0..DRIFT_HOUR))
    )];
    match promoted {
        Some(promoted) => {
            let version = promoted.event["data"]["challenger"].as_str().unwrap_or("2");
            let shadow = outcome
                .accuracy
                .keys()
                .filter(|(_, v)| v == version)
                .map(|(h, _)| *h)
                .min()
                .unwrap_or(promoted.hour);
            lines.push(format!(
                "after the drift, v{version} beside v1 ({}..{}): v1 {}, v{version} {}",
                hour_label(shadow),
                hour_label(promoted.hour),
                fmt(mean_accuracy(outcome, "1", shadow..promoted.hour + 1)),
                fmt(mean_accuracy(outcome, version, shadow..promoted.hour + 1)),
            ));
            lines.push(format!(
                "after the promotion ({}..): v{version} {}, windows of v{version} since with drift alerting: {}",
                hour_label(promoted.hour + 1),
                fmt(mean_accuracy(outcome, version, promoted.hour + 1..HOURS)),
                (promoted.hour + 1..HOURS)
                    .filter(|hour| outcome.drift_alerting(*hour, version))
                    .count()
            ));
        }
        None => lines.push(format!(
            "no version was promoted; after the drift: v1 {}",
            fmt(mean_accuracy(outcome, "1", DRIFT_HOUR..HOURS))
        )),
    }
    lines.join("\n")
}
