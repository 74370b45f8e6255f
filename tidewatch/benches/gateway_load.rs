//! Load test of the model gateway on loopback (not a criterion benchmark:
//! it measures latency under a fixed request rate, which criterion cannot).
//!
//! ```sh
//! scripts/bench-serving.sh            # starts the broker, then runs this
//! ```
//!
//! Two measurements, both with the inference log writing to the broker
//! named by `TIDEWATCH_BENCH_KAFKA_BROKERS`:
//!
//! 1. **Gateway latency**: the `tidewatch serve` binary, a process of its
//!    own (built in release by `cargo bench`), with a 20-feature logistic
//!    regression (`tidewatch.linear.v1`, in process) on 127.0.0.1;
//!    requests of one row sent open-loop at a fixed rate (default 5,000/s)
//!    over keep-alive connections, paced by a thread of its own; latency
//!    measured from each request's scheduled send time (a stall of the
//!    gateway is not hidden by sending less), for the champion alone and
//!    with a shadow challenger. Unless `TIDEWATCH_BENCH_GATEWAY_CPUS` pins
//!    the gateway (`taskset -c`), it shares the machine's cores with the
//!    load generator and the broker.
//! 2. **Logging throughput**: prediction events (20 features, full-precision
//!    values) encoded and pushed through the inference log into the broker
//!    as fast as the log takes them; events acknowledged per second.
//!
//! Environment: `TIDEWATCH_BENCH_KAFKA_BROKERS` (required),
//! `TIDEWATCH_BENCH_RATE` (requests/s, default 5000),
//! `TIDEWATCH_BENCH_SECONDS` (per scenario, default 10),
//! `TIDEWATCH_BENCH_EVENTS` (logging, default 500000),
//! `TIDEWATCH_BENCH_GATEWAY_CPUS` (a `taskset -c` list for the gateway;
//! when set, only the gateway's latency is measured).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use detectors::spec::Task;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use serving::features::{FeatureBatch, InputLayout};
use serving::linear::LinearModel;
use serving::log::{InferenceLog, PredictionRecord};
use serving::model::{Runtime, ServedModel, ServedVersion};
use serving::outputs::{OutputMapping, Prediction};
use serving::protocol::InferRequest;
use serving::routes::{Aliases, RouteTable};
use serving::telemetry::Telemetry;

const FEATURES: usize = 20;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn feature_names() -> Vec<String> {
    (0..FEATURES).map(|i| format!("f{i:02}")).collect()
}

fn version(seed: u64) -> Arc<ServedVersion> {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    };
    let coefficients: Vec<f64> = (0..FEATURES).map(|_| next()).collect();
    let model = LinearModel::classifier(
        feature_names(),
        vec!["no".into(), "yes".into()],
        vec![coefficients],
        vec![next()],
    )
    .expect("a valid model");
    Arc::new(ServedVersion {
        runtime: Runtime::Linear(model),
        outputs: OutputMapping {
            task: Task::Classification,
            probabilities: Some("probabilities".into()),
            label: Some("label".into()),
            classes: vec!["no".into(), "yes".into()],
        },
    })
}

fn producer(brokers: &str, buffer: usize) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", buffer.to_string())
        .set("message.timeout.ms", "30000")
        .create()
        .expect("a producer")
}

fn topic(name: &str) -> String {
    format!("bench-{name}-{}", std::process::id())
}

/// A request body of one row of full-precision features.
fn body(i: u64) -> String {
    let row: Vec<f64> = (0..FEATURES)
        .map(|j| ((i * 31 + j as u64) as f64 * 0.618_033_988_749_894_9).sin() * 3.7 + 0.123_456_789)
        .collect();
    serde_json::json!({
        "id": format!("bench-{i:012}"),
        "inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP64", "data": [row]}],
    })
    .to_string()
}

struct Outcome {
    sent: u64,
    errors: u64,
    seconds: f64,
    latency: hdrhistogram::Histogram<u64>,
    delivered: u64,
    dropped: u64,
}

/// Writes the two versions and a config serving them on `listen`; the
/// config's path.
fn gateway_config(
    directory: &std::path::Path,
    brokers: &str,
    shadow: bool,
    listen: std::net::SocketAddr,
) -> std::path::PathBuf {
    std::fs::create_dir_all(directory).expect("a folder");
    for seed in [1, 2] {
        let Runtime::Linear(model) = &version(seed).runtime else {
            unreachable!()
        };
        std::fs::write(directory.join(format!("v{seed}.json")), model.to_json())
            .expect("a model file");
    }
    let features: Vec<String> = feature_names()
        .iter()
        .map(|name| format!("{{ name = \"{name}\", kind = \"numeric\" }}"))
        .collect();
    let challenger = if shadow {
        "challenger = \"2\"\nchallenger_mode = \"shadow\""
    } else {
        ""
    };
    let text = format!(
        r#"
version = 1
[kafka]
brokers = "{brokers}"
topics = [{{ name = "{topic}", kind = "prediction" }}]
[[models]]
name = "bench"
task = "classification"
positive_class = "yes"
features = [{features}]
[serving]
listen = "{listen}"
[[serving.models]]
name = "bench"
champion = "1"
{challenger}
versions = [
  {{ version = "1", runtime = "linear", path = "v1.json" }},
  {{ version = "2", runtime = "linear", path = "v2.json" }},
]
"#,
        topic = topic(if shadow { "shadow" } else { "champion" }),
        features = features.join(", "),
    );
    let path = directory.join("tidewatch.toml");
    std::fs::write(&path, text).expect("a config file");
    path
}

/// `tidewatch serve` as a child process, optionally pinned to CPUs.
struct Serve {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Serve {
    fn start(config: &std::path::Path, cpus: Option<&str>) -> Self {
        let log = config.with_extension("log");
        let binary = env!("CARGO_BIN_EXE_tidewatch");
        let mut command = match cpus {
            Some(cpus) => {
                let mut command = std::process::Command::new("taskset");
                command.args(["-c", cpus, binary]);
                command
            }
            None => std::process::Command::new(binary),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("starting tidewatch serve");
        Self { child, log }
    }

    /// SIGTERM, then the delivered and dropped counts it prints on exit.
    fn stop(mut self) -> (u64, u64) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("tidewatch serve exits");
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(
            status.success(),
            "tidewatch serve failed ({status}):\n{log}"
        );
        // "stopped: D prediction events delivered, F dropped (buffer full), B dropped (bus errors)"
        let line = log
            .lines()
            .find(|line| line.starts_with("stopped:"))
            .unwrap_or_else(|| panic!("no summary line in:\n{log}"));
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        (numbers[0], numbers[1] + numbers[2])
    }
}

async fn gateway_scenario(
    brokers: &str,
    shadow: bool,
    rate: u64,
    seconds: u64,
    gateway_cpus: Option<&str>,
) -> Outcome {
    let directory =
        std::env::temp_dir().join(format!("tidewatch-bench-gateway-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
    let config = gateway_config(&directory, brokers, shadow, address);
    let server = Serve::start(&config, gateway_cpus);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "tidewatch serve did not listen within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let url = "/v2/models/bench/infer".to_owned();
    let bodies: Arc<Vec<Bytes>> = Arc::new((0..4096).map(|i| Bytes::from(body(i))).collect());

    // Warm-up: code paths.
    for i in 0..2_000u64 {
        let request = hyper::Request::post(format!("http://{address}{url}"))
            .header("content-type", "application/json")
            .body(Full::new(bodies[(i % 4096) as usize].clone()))
            .expect("request");
        let response = client.request(request).await.expect("warm-up");
        let _ = response.into_body().collect().await;
    }

    // Requests go out on CONNECTIONS keep-alive connections, each served by
    // a task in turn (as wrk2 does): a request due while its connection is
    // busy waits, and the wait counts. A thread paces the sends (tokio's
    // timer ticks by the millisecond, a thread sleeps to within ~0.1 ms),
    // sleeping, never spinning (a spinning pacer would take one of the
    // cores the gateway runs on); each request is timed from its scheduled
    // instant, so a late wake-up counts against the gateway too.
    const CONNECTIONS: usize = 32;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (results, mut collected) = tokio::sync::mpsc::unbounded_channel::<Option<u64>>();
    let mut queues = Vec::with_capacity(CONNECTIONS);
    let mut workers = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let (queue, mut due) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
        queues.push(queue);
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        let (bodies, results, url) = (bodies.clone(), results.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            while let Some((i, scheduled)) = due.recv().await {
                let request = hyper::Request::post(&url)
                    .header("content-type", "application/json")
                    .header("host", "127.0.0.1")
                    .body(Full::new(bodies[(i % 4096) as usize].clone()))
                    .expect("request");
                let ok = match sender.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let _ = response.into_body().collect().await;
                        status.is_success()
                    }
                    Err(_) => false,
                };
                let micros = scheduled.elapsed().as_micros() as u64;
                let _ = results.send(ok.then_some(micros));
            }
        }));
    }
    drop(results);
    let started = Instant::now();
    let pacer = std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..total {
            let scheduled = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            if queues[(i as usize) % CONNECTIONS]
                .send((i, scheduled))
                .is_err()
            {
                return;
            }
        }
    });
    // The workers end when the pacer has sent everything and dropped the
    // queues; the pacer is joined after them (joining first would block a
    // runtime thread).
    for worker in workers {
        worker.await.expect("a connection task");
    }
    pacer.join().expect("the pacing thread");
    let mut latency =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors = 0;
    while let Some(result) = collected.recv().await {
        match result {
            Some(micros) => latency.record(micros.max(1)).expect("in range"),
            None => errors += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (delivered, dropped) = server.stop();
    let _ = std::fs::remove_dir_all(&directory);
    Outcome {
        sent: total,
        errors,
        seconds,
        latency,
        delivered,
        dropped,
    }
}

/// Events pushed through the log into the broker as fast as it takes them.
async fn logging_scenario(brokers: &str, events: u64) -> (f64, u64, u64) {
    let telemetry = Telemetry::default();
    let buffer = 100_000;
    let (log, receiver) = InferenceLog::bounded(buffer, telemetry.clone());
    let (stop_log, log_stopped) = tokio::sync::oneshot::channel::<()>();
    let forwarder = tokio::spawn(serving::log::forward(
        receiver,
        producer(brokers, buffer),
        topic("logging"),
        telemetry.clone(),
        async move {
            let _ = log_stopped.await;
        },
    ));
    let requests: Vec<(InferRequest, FeatureBatch)> = (0..1024)
        .map(|i| {
            let request: InferRequest = serde_json::from_str(&body(i)).expect("a request");
            let batch = FeatureBatch::from_request(
                &request,
                &InputLayout::Columns { tensor: None },
                &feature_names(),
            )
            .expect("a batch");
            (request, batch)
        })
        .collect();
    let prediction = Prediction {
        score: Some(0.734_512_987_123),
        class: Some("yes".into()),
        probabilities: vec![
            ("no".into(), 0.265_487_012_877),
            ("yes".into(), 0.734_512_987_123),
        ],
    };
    let started = Instant::now();
    let mut offered = 0u64;
    while offered < events {
        let (request, batch) = &requests[(offered % 1024) as usize];
        let id = format!("{}-{offered}", request.id.as_deref().unwrap_or("x"));
        let before = telemetry.dropped_total("buffer_full");
        log.record(&PredictionRecord {
            model: "bench",
            version: "1",
            prediction_id: &id,
            timestamp_ms: 1_767_225_600_000 + offered as i64,
            features: batch,
            row: 0,
            outcome: Ok(&prediction),
            latency_ms: Some(0.412),
        });
        if telemetry.dropped_total("buffer_full") > before {
            // The buffer is full: the broker is the bottleneck; offer again
            // once it drained a little (a throughput test drops nothing).
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        offered += 1;
        if offered.is_multiple_of(4096) {
            tokio::task::yield_now().await;
        }
    }
    drop(log);
    let _ = stop_log.send(());
    let _ = forwarder.await;
    let seconds = started.elapsed().as_secs_f64();
    (
        seconds,
        telemetry.delivered_total(),
        telemetry.dropped_total("bus_error"),
    )
}

fn main() {
    let brokers = std::env::var("TIDEWATCH_BENCH_KAFKA_BROKERS")
        .expect("TIDEWATCH_BENCH_KAFKA_BROKERS is not set: run scripts/bench-serving.sh, which starts the broker");
    let rate: u64 = env("TIDEWATCH_BENCH_RATE", 5_000);
    let seconds: u64 = env("TIDEWATCH_BENCH_SECONDS", 10);
    let events: u64 = env("TIDEWATCH_BENCH_EVENTS", 500_000);
    let gateway_cpus = std::env::var("TIDEWATCH_BENCH_GATEWAY_CPUS").ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        for shadow in [false, true] {
            let outcome =
                gateway_scenario(&brokers, shadow, rate, seconds, gateway_cpus.as_deref()).await;
            let l = &outcome.latency;
            println!(
                "gateway, {}: {} requests at {rate}/s for {:.1} s ({:.0}/s achieved), {} errors; latency p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs; log: {} delivered, {} dropped",
                if shadow { "champion + shadow challenger" } else { "champion only" },
                outcome.sent,
                outcome.seconds,
                outcome.sent as f64 / outcome.seconds,
                outcome.errors,
                l.value_at_quantile(0.5),
                l.value_at_quantile(0.9),
                l.value_at_quantile(0.99),
                l.value_at_quantile(0.999),
                l.max(),
                outcome.delivered,
                outcome.dropped,
            );
        }
        if gateway_cpus.is_some() {
            // A pinned pass measures the gateway's latency only.
            return;
        }
        // The runtime alone, for the overhead: one row through the model.
        let request: InferRequest = serde_json::from_str(&body(1)).expect("a request");
        let batch = FeatureBatch::from_request(&request, &InputLayout::Columns { tensor: None }, &feature_names())
            .expect("a batch");
        let model = version(1);
        let Runtime::Linear(linear) = &model.runtime else { unreachable!() };
        let rounds = 200_000;
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(linear.infer(std::hint::black_box(&batch)).expect("outputs"));
        }
        println!(
            "runtime alone: {:.2} µs per one-row inference (20-feature logistic regression)",
            started.elapsed().as_secs_f64() * 1e6 / rounds as f64
        );
        // The gateway's own work per request, without network or broker:
        // the router called in process (parse, route, features, model,
        // answer, event encoded into the log's buffer).
        let version = version(1);
        let served = ServedModel {
            name: "bench".into(),
            features: feature_names(),
            layout: InputLayout::Columns { tensor: None },
            versions: [("1".to_owned(), version)].into(),
        };
        let aliases = Aliases {
            champion: "1".into(),
            challenger: None,
        };
        let routes = Arc::new(RouteTable::new(vec![(served, aliases)]).expect("routes"));
        let telemetry = Telemetry::default();
        let (log, mut logged) = InferenceLog::bounded(1 << 16, telemetry.clone());
        let gateway = Arc::new(serving::gateway::Gateway::new(routes, log, telemetry, 8));
        let app = serving::gateway::router(gateway, 1 << 20);
        let request_body = body(7);
        let rounds = 100_000;
        let started = Instant::now();
        for _ in 0..rounds {
            let request = hyper::Request::post("/v2/models/bench/infer")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(request_body.clone()))
                .expect("request");
            let response = tower::ServiceExt::oneshot(app.clone(), request).await.expect("response");
            std::hint::black_box(response.into_body().collect().await.expect("body"));
            while logged.try_recv().is_ok() {}
        }
        println!(
            "gateway alone: {:.1} µs per request through the router in process (no network, no broker)",
            started.elapsed().as_secs_f64() * 1e6 / rounds as f64
        );
        let (seconds, delivered, failed) = logging_scenario(&brokers, events).await;
        println!(
            "inference log: {events} prediction events (20 features) encoded and delivered to the broker in {seconds:.2} s: {:.0} events/s acknowledged, {failed} failed",
            delivered as f64 / seconds
        );
    });
}
