//! Alerting end to end through `tidewatch run` (the binary, as a process),
//! against the real broker, ClickHouse and SMTP server that
//! `scripts/test.sh` starts, and HTTP receivers on 127.0.0.1:
//!
//! - a drift episode (three drifted hours, then clear) gives exactly one
//!   grouped alert and one resolution on every channel (Slack, signed
//!   webhook, email), no repeat while the cooldown runs, and exactly one
//!   retrain request on the retrain endpoint and on the Kafka bus, as the
//!   same CloudEvent;
//! - the webhook is down and the SMTP server unreachable while the alert
//!   fires, and Tidewatch is killed (SIGKILL) after the window is finalized
//!   and the alert recorded but before either delivered; the restarted
//!   process delivers the alert once both are back, resolves it under the
//!   same id, and nothing is lost or sent twice;
//! - a bad channel in the config stops `tidewatch run` before it starts,
//!   naming the key;
//! - acknowledgements are read back from the start of their topic.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::NotificationStatus;

use alerting::payload::{verify, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use store::Store;
use tidewatch::config::Config;
use tidewatch::fixtures::{self, DemoShape, DEMO_MODEL, DEMO_VERSION};

#[path = "common/proxy.rs"]
mod proxy;

const SECRET: &str = "end-to-end-secret";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the integration suite through scripts/test.sh, \
             which starts the broker, ClickHouse and the SMTP server"
        )
    })
}

/// One request a receiver saw.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    body: Vec<u8>,
    signature_valid: bool,
    accepted: bool,
}

#[derive(Default)]
struct Receivers {
    hook_down: AtomicBool,
    seen: Mutex<BTreeMap<String, Vec<Seen>>>,
}

impl Receivers {
    fn seen(&self, route: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .get(route)
            .cloned()
            .unwrap_or_default()
    }

    fn accepted(&self, route: &str) -> Vec<Seen> {
        self.seen(route)
            .into_iter()
            .filter(|s| s.accepted)
            .collect()
    }
}

async fn receive(
    State(receivers): State<Arc<Receivers>>,
    UrlPath(route): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let timestamp: u64 = header(TIMESTAMP_HEADER).parse().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signature_valid = verify(
        SECRET.as_bytes(),
        timestamp,
        &body,
        &header(SIGNATURE_HEADER),
        now,
        300,
    );
    let accepted = !(route == "hook" && receivers.hook_down.load(Ordering::SeqCst));
    receivers
        .seen
        .lock()
        .unwrap()
        .entry(route)
        .or_default()
        .push(Seen {
            key: header(alerting::delivery::ALERT_ID_HEADER),
            body: body.to_vec(),
            signature_valid,
            accepted,
        });
    if accepted {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn start_receivers() -> (String, Arc<Receivers>) {
    let receivers = Arc::new(Receivers::default());
    let app = axum::Router::new()
        .route("/{route}", axum::routing::post(receive))
        .with_state(Arc::clone(&receivers));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), receivers)
}

struct Scenario {
    name: String,
    directory: PathBuf,
    config_file: PathBuf,
    recipient: String,
    http_port: u16,
}

impl Scenario {
    fn topic(&self, what: &str) -> String {
        format!("{what}-{}", self.name)
    }

    /// `smtp`: the STARTTLS server's `host:port` (a proxy's, to cut it).
    fn new(name: &str, receivers_url: &str, smtp: &str) -> Self {
        let name = format!("{name}_{}", std::process::id());
        let directory = std::env::temp_dir().join(format!("tidewatch-it-{name}"));
        std::fs::create_dir_all(&directory).unwrap();
        let recipient = format!("oncall+{name}@example.org");
        let ca = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tls/ca.pem");
        let (smtp_host, smtp_port) = smtp
            .rsplit_once(':')
            .map(|(h, p)| (h.to_owned(), p.to_owned()))
            .unwrap();
        // A free port for `[http]` (the processes run one after the other).
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let scenario = Self {
            config_file: directory.join("tidewatch.toml"),
            directory,
            recipient,
            name,
            http_port,
        };
        let text = format!(
            r#"
version = 1
[kafka]
brokers = "{brokers}"
group_id = "tidewatch-{name}"
dead_letter_topic = "{dead_letters}"
topics = [{{ name = "{predictions}", kind = "prediction" }}]
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
[store]
type = "clickhouse"
url = "{clickhouse}"
database = "tw_{name}"
[windows]
size = "1h"
allowed_lateness = "5m"
idle_close_after = "3s"
checkpoint_interval = "300ms"
range_size = 400
[http]
listen = "127.0.0.1:{http_port}"
[[models]]
name = "{DEMO_MODEL}"
task = "classification"
features = [
  {{ name = "age", kind = "numeric" }},
  {{ name = "tenure_months", kind = "numeric" }},
  {{ name = "monthly_charges", kind = "numeric" }},
  {{ name = "support_calls", kind = "numeric" }},
  {{ name = "contract", kind = "categorical" }},
  {{ name = "payment_method", kind = "categorical" }},
]

[[alerts.channels]]
type = "webhook"
name = "hook"
url = "{receivers_url}/hook"
secret_env = "TIDEWATCH_IT_SECRET"

[[alerts.channels]]
type = "slack"
name = "slack"
url = "{receivers_url}/slack"
dashboard_url = "http://127.0.0.1:8080/models/{DEMO_MODEL}"

[[alerts.channels]]
type = "email"
name = "mail"
smtp_host = "{smtp_host}"
smtp_port = {smtp_port}
security = "starttls"
username_env = "TIDEWATCH_TEST_SMTP_USER"
password_env = "TIDEWATCH_TEST_SMTP_PASSWORD"
ca_file = "{ca}"
from = "Tidewatch <tidewatch@example.org>"
to = ["{recipient}"]

[alerts.retrain]
url = "{receivers_url}/retrain"
secret_env = "TIDEWATCH_IT_SECRET"
topic = "{retrain}"
ack_topic = "{acks}"
debounce = "24h"

[[alerts.rules]]
name = "inputs_drifted"
condition = {{ type = "drift", min_features = 2 }}
for_windows = 1
cooldown_windows = 10
resolve_after = 2
severity = "critical"
channels = ["hook", "slack", "mail"]
retrain = true
"#,
            brokers = env("TIDEWATCH_TEST_KAFKA_BROKERS"),
            clickhouse = env("TIDEWATCH_TEST_CLICKHOUSE_URL"),
            name = scenario.name,
            dead_letters = scenario.topic("dead-letters"),
            predictions = scenario.topic("predictions"),
            retrain = scenario.topic("retrain"),
            acks = scenario.topic("retrain-acks"),
            ca = ca.display(),
            recipient = scenario.recipient,
            http_port = scenario.http_port,
        );
        std::fs::write(&scenario.config_file, text).unwrap();
        scenario
    }

    async fn create_topics(&self) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", env("TIDEWATCH_TEST_KAFKA_BROKERS"))
            .create()
            .unwrap();
        let names = [
            (self.topic("predictions"), 2),
            (self.topic("dead-letters"), 1),
            (self.topic("retrain"), 1),
            (self.topic("retrain-acks"), 1),
        ];
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        for result in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .unwrap()
        {
            result.unwrap_or_else(|(topic, code)| panic!("creating {topic}: {code:?}"));
        }
    }

    fn tidewatch(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidewatch"));
        command
            .args(args)
            .env("TIDEWATCH_IT_SECRET", SECRET)
            .env("RUST_LOG", "warn");
        command
    }

    fn start(&self, log: &str) -> Child {
        let log = std::fs::File::create(self.directory.join(log)).unwrap();
        self.tidewatch(&["run", "--config", self.config_file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting tidewatch run")
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Messages the SMTP server stored for `to`.
fn mails_to(to: &str) -> Vec<String> {
    let maildir = PathBuf::from(env("TIDEWATCH_TEST_SMTP_MAILDIR"));
    let mut mails = Vec::new();
    for entry in std::fs::read_dir(&maildir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let message: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            if message["rcpt_tos"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == to)
            {
                mails.push(message["data"].as_str().unwrap().to_owned());
            }
        }
    }
    mails
}

/// Every message on `topic` (read from the start until `expected` arrived
/// or `wait` passed).
async fn read_topic(topic: &str, expected: usize, wait: Duration) -> Vec<(String, Vec<u8>)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", env("TIDEWATCH_TEST_KAFKA_BROKERS"))
        .set("group.id", format!("reader-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut messages = Vec::new();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && messages.len() < expected {
        if let Ok(Ok(message)) =
            tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        {
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            messages.push((key, message.payload().unwrap_or_default().to_vec()));
        }
    }
    messages
}

/// GET /metrics from a `tidewatch run` on 127.0.0.1:`port`.
async fn scrape(port: u16) -> String {
    http_get(port, "/metrics").await
}

/// The body of GET `path` from a `tidewatch run` on 127.0.0.1:`port`.
async fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or(response)
    })
    .await
    .unwrap()
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_episode_alerts_once_resolves_once_and_survives_a_channel_outage_and_a_kill() {
    let (url, receivers) = start_receivers().await;
    // The SMTP server behind a proxy that the test cuts, as if it stopped.
    let smtp = proxy::Proxy::start(&env("TIDEWATCH_TEST_SMTP_STARTTLS")).await;
    let scenario = Scenario::new("alerts", &url, &smtp.address);
    scenario.create_topics().await;

    // Three drifted hours (3, 4, 5) in eight; the rule resolves after two
    // clear windows, so at window 7.
    let generated = fixtures::generate(
        DemoShape {
            hours: 8,
            predictions_per_hour: 500,
            drift_onset_hour: 3,
            drift_end_hour: Some(6),
            training_rows: 2_000,
        },
        99,
    );
    let stream = scenario.directory.join("stream.jsonl");
    let training = scenario.directory.join("train.csv");
    std::fs::write(&stream, &generated.stream).unwrap();
    std::fs::write(&training, &generated.training_csv).unwrap();
    std::env::set_var("TIDEWATCH_IT_SECRET", SECRET);
    let config = Config::load(&scenario.config_file).unwrap();
    let store: Store = config.store.open().await.unwrap();
    let profile = tidewatch::training::build_reference(&config.models[0], DEMO_VERSION, &training)
        .unwrap()
        .profile;
    store.put_reference(&profile, 1).await.unwrap();

    // The webhook is down and the SMTP server unreachable; the stream is
    // produced slowly so Tidewatch can be killed half way.
    receivers.hook_down.store(true, Ordering::SeqCst);
    smtp.cut();
    let outage = Instant::now();
    let mut replay = scenario
        .tidewatch(&[
            "replay",
            stream.to_str().unwrap(),
            "--to",
            &env("TIDEWATCH_TEST_KAFKA_BROKERS"),
            "--topic",
            &scenario.topic("predictions"),
            "--rate",
            "350",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = scenario.start("first.log");

    let alerts = |store: Store| async move { store.alerts(Some(DEMO_MODEL), 100).await.unwrap() };
    // Killed once the refused webhook and SMTP attempts are recorded (a
    // kill between an attempt and its record repeats the attempt, which is
    // allowed but would not show here): the alert is finalized and
    // recorded, its email and webhook notifications not delivered.
    wait_until(
        "the alert to fire, reach Slack and the webhook's and SMTP's refusals to be recorded",
        Duration::from_secs(120),
        async || {
            let recorded = alerts(store.clone()).await;
            let Some(firing) = recorded
                .iter()
                .find(|a| a.status == NotificationStatus::Firing)
            else {
                return false;
            };
            let deliveries = store.deliveries(&firing.id).await.unwrap();
            let attempted = |channel: &str| {
                deliveries
                    .iter()
                    .any(|d| d.channel == channel && d.attempts >= 1)
            };
            !receivers.accepted("slack").is_empty() && attempted("hook") && attempted("mail")
        },
    )
    .await;
    assert!(
        !alerts(store.clone())
            .await
            .iter()
            .any(|a| a.status == NotificationStatus::Resolved),
        "the kill must come before the resolution"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        receivers.accepted("hook").is_empty(),
        "the webhook was down throughout the first run"
    );
    assert!(
        mails_to(&scenario.recipient).is_empty(),
        "the SMTP server was unreachable throughout the first run"
    );

    // A new process picks up where the killed one stopped, and retries
    // while both channels stay down for two minutes in all.
    let mut second = scenario.start("second.log");
    tokio::time::sleep(Duration::from_secs(120).saturating_sub(outage.elapsed())).await;
    assert!(
        receivers.accepted("hook").is_empty() && mails_to(&scenario.recipient).is_empty(),
        "nothing got through the outage"
    );
    receivers.hook_down.store(false, Ordering::SeqCst);
    smtp.restore();
    assert!(replay.wait().unwrap().success());
    let recipient = scenario.recipient.clone();
    wait_until(
        "every notification to be delivered",
        Duration::from_secs(180),
        async || {
            receivers.accepted("hook").len() >= 2
                && receivers.accepted("slack").len() >= 2
                && !receivers.accepted("retrain").is_empty()
                && mails_to(&recipient).len() >= 2
        },
    )
    .await;
    // Room for any duplicate to show up before the process stops.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The restarted process's own metrics.
    let metrics = scrape(scenario.http_port).await;
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} not in\n{metrics}"))
    };
    let topic = scenario.topic("predictions");
    assert!(
        value(&format!(
            "tidewatch_events_consumed_total{{topic=\"{topic}\"}}"
        )) > 0.0
    );
    assert!(value("tidewatch_windows_closed_total") > 0.0);
    assert_eq!(value("tidewatch_alerts_sent_total{channel=\"hook\"}"), 2.0);
    assert_eq!(
        value("tidewatch_alerts_raised_total{status=\"resolved\"}"),
        1.0
    );
    assert!(metrics.contains("tidewatch_store_write_seconds_count{operation=\"checkpoint\"}"));
    // The API shows each delivery's attempts: the webhook's firing took
    // several, across the kill.
    let id = alerts(store.clone())
        .await
        .into_iter()
        .find(|a| a.status == NotificationStatus::Firing)
        .unwrap()
        .id;
    let detail: serde_json::Value =
        serde_json::from_str(&http_get(scenario.http_port, &format!("/api/v1/alerts/{id}")).await)
            .unwrap();
    let delivery = |status: &str, channel: &str| {
        detail["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["status"] == status && d["channel"] == channel)
            .unwrap_or_else(|| panic!("no {status} delivery to {channel}: {detail}"))
            .clone()
    };
    let hook = delivery("firing", "hook");
    assert_eq!(hook["state"], "sent");
    assert!(hook["attempts"].as_u64().unwrap() >= 2, "{hook}");
    assert_eq!(delivery("firing", "slack")["attempts"], 1);
    assert_eq!(delivery("retrain", "retrain.bus")["state"], "sent");
    second.kill().unwrap();
    second.wait().unwrap();
    // Pipeline statistics for the Operations dashboard (every 10 s).
    let stats = store.pipeline_stats(0, i64::MAX / 2).await.unwrap();
    let consumed: u64 = stats
        .iter()
        .filter(|row| row.topic == scenario.topic("predictions"))
        .map(|row| row.consumed)
        .sum();
    assert!(consumed > 0, "{stats:?}");

    // The store: one firing, one resolution, one retrain request, one id.
    let recorded = alerts(store.clone()).await;
    let status_count =
        |status: NotificationStatus| recorded.iter().filter(|a| a.status == status).count();
    assert_eq!(
        (
            status_count(NotificationStatus::Firing),
            status_count(NotificationStatus::Resolved),
            status_count(NotificationStatus::Retrain)
        ),
        (1, 1, 1),
        "{recorded:#?}"
    );
    assert!(
        recorded.iter().all(|a| !a.repeat),
        "the cooldown suppressed repeats"
    );
    let firing = recorded
        .iter()
        .find(|a| a.status == NotificationStatus::Firing)
        .unwrap();
    let resolved = recorded
        .iter()
        .find(|a| a.status == NotificationStatus::Resolved)
        .unwrap();
    assert_eq!(
        firing.id, resolved.id,
        "resolved under the firing alert's id"
    );
    let hour = 3_600_000;
    assert_eq!(firing.window_start, fixtures::DEMO_START_MS + 3 * hour);
    assert_eq!(resolved.window_start, fixtures::DEMO_START_MS + 7 * hour);
    let payload: serde_json::Value = serde_json::from_str(&firing.payload).unwrap();
    let drifted: Vec<&str> = payload["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["feature"].as_str().unwrap())
        .collect();
    for feature in ["monthly_charges", "support_calls", "payment_method"] {
        assert!(drifted.contains(&feature), "{feature} in {drifted:?}");
    }
    for clean in ["age", "tenure_months", "contract"] {
        assert!(!drifted.contains(&clean), "{clean} in {drifted:?}");
    }

    // Slack and the webhook: each notification accepted exactly once.
    let firing_key = format!("{}:firing:{}", firing.id, firing.window_start);
    let resolved_key = format!("{}:resolved:{}", resolved.id, resolved.window_start);
    for route in ["slack", "hook"] {
        let keys: Vec<String> = receivers
            .accepted(route)
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(keys, [firing_key.clone(), resolved_key.clone()], "{route}");
    }
    let hook = receivers.seen("hook");
    assert!(
        hook.len() > 2,
        "refused attempts before the webhook came back"
    );
    assert!(
        hook.iter().all(|s| s.signature_valid),
        "every webhook request is signed"
    );
    assert!(
        hook.iter()
            .filter(|s| !s.accepted)
            .all(|s| s.key == firing_key),
        "the refused attempts were the firing alert"
    );
    let slack: serde_json::Value =
        serde_json::from_slice(&receivers.accepted("slack")[0].body).unwrap();
    assert!(slack["blocks"].to_string().contains("monthly_charges"));

    // Email: the firing and the resolution, once each.
    let mails = mails_to(&scenario.recipient);
    assert_eq!(mails.len(), 2, "{mails:#?}");
    for subject in [
        "Subject: [critical] inputs_drifted on churn",
        "Subject: [resolved] inputs_drifted on churn",
    ] {
        assert_eq!(
            mails.iter().filter(|m| m.contains(subject)).count(),
            1,
            "{subject}"
        );
    }

    // Retrain: one request on the endpoint and the same event on the bus.
    let retrain = receivers.accepted("retrain");
    assert_eq!(retrain.len(), 1);
    assert!(retrain[0].signature_valid);
    let event: serde_json::Value = serde_json::from_slice(&retrain[0].body).unwrap();
    let request_id = format!("{}:retrain:{}", firing.id, firing.window_start);
    assert_eq!(event["id"], request_id.as_str());
    assert_eq!(event["type"], "io.tidewatch.retrain.requested");
    assert_eq!(event["data"]["model"], DEMO_MODEL);
    assert_eq!(event["data"]["version"], DEMO_VERSION);
    assert_eq!(
        event["data"]["train_window"]["start_ms"],
        firing.window_start
    );
    let bus = read_topic(&scenario.topic("retrain"), 2, Duration::from_secs(8)).await;
    assert_eq!(bus.len(), 1, "one event on the bus");
    assert_eq!(bus[0].0, DEMO_MODEL, "keyed by model");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&bus[0].1).unwrap(),
        event
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_are_read_from_the_start_of_their_topic() {
    let (url, _receivers) = start_receivers().await;
    let scenario = Scenario::new("acks", &url, &env("TIDEWATCH_TEST_SMTP_STARTTLS"));
    scenario.create_topics().await;
    let topic = scenario.topic("retrain-acks");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env("TIDEWATCH_TEST_KAFKA_BROKERS"))
        .create()
        .unwrap();
    for id in ["r1", "r2", "r3"] {
        let event = serde_json::json!({
            "specversion": "1.0", "type": "io.tidewatch.retrain.completed",
            "source": "registry", "id": format!("ack-{id}"), "data": {"request_id": id}
        })
        .to_string();
        producer
            .send(
                FutureRecord::to(&topic).key(DEMO_MODEL).payload(&event),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    std::env::set_var("TIDEWATCH_IT_SECRET", SECRET);
    let config = Config::load(&scenario.config_file).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let follower = {
        let seen = Arc::clone(&seen);
        let kafka = config.kafka.clone().unwrap();
        let topic = topic.clone();
        tokio::spawn(async move {
            ingest::kafka::follow_topic(
                &kafka,
                &topic,
                16,
                |payloads: Vec<Vec<u8>>| {
                    seen.lock().unwrap().extend(
                        payloads
                            .iter()
                            .filter_map(|payload| alerting::retrain::parse_ack(payload)),
                    );
                    std::future::ready(())
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
        })
    };
    wait_until(
        "three acknowledgements",
        Duration::from_secs(30),
        async || seen.lock().unwrap().len() >= 3,
    )
    .await;
    stop.send(()).unwrap();
    follower.await.unwrap().unwrap();
    assert_eq!(*seen.lock().unwrap(), ["r1", "r2", "r3"]);
}

#[test]
fn a_bad_channel_config_stops_tidewatch_run_naming_the_key() {
    let directory =
        std::env::temp_dir().join(format!("tidewatch-bad-channel-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let file = directory.join("tidewatch.toml");
    std::fs::write(
        &file,
        r#"
version = 1
[kafka]
brokers = "127.0.0.1:9"
topics = [{ name = "p", kind = "prediction" }]
[[models]]
name = "m"
task = "regression"
features = []
[[alerts.channels]]
type = "email"
name = "mail"
smtp_host = "127.0.0.1"
security = "ssl"
from = "tidewatch@example.org"
to = ["oncall@example.org"]
"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["run", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&directory);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`alerts.channels[0].security`: `ssl` is not one of starttls, tls, none"),
        "{stderr}"
    );
}
