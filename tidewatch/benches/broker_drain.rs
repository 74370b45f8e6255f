//! From the broker to the store: how fast `tidewatch run` drains a topic,
//! against a bare rdkafka consumer reading the same topic on the same
//! broker (not a criterion benchmark: one long run of each).
//!
//! ```sh
//! scripts/bench-broker.sh            # starts the broker, then runs this
//! ```
//!
//! 1. Produces `TIDEWATCH_BENCH_EVENTS` (default 10,000,000) prediction
//!    events of the demo churn model (6 features, one segment key, score
//!    and latency at full precision: `fixtures::prediction_stream`) to a
//!    new topic of 4 partitions, keyed by prediction id, as JSON or, with
//!    `TIDEWATCH_BENCH_ENCODING=protobuf`, as `tidewatch.v1.Event` messages.
//! 2. **bare**: an rdkafka `BaseConsumer` in a new group reads every
//!    message and touches every payload byte; its rate is messages from
//!    the first to the last one over that time.
//! 3. **tidewatch, 1 instance**: the `tidewatch run` binary (release build,
//!    a process of its own) with the embedded store, the model's reference
//!    stored and the default checkpoint interval (5 s). Its group's
//!    committed offsets, polled every 100 ms, say what is stored (an offset
//!    is committed only after everything before it is); its rate is
//!    events committed from the first commit to the last over that time, and
//!    the wall time from start to the last offset committed is printed too.
//! 4. **tidewatch, 2 instances** in one group, sharing the store file.
//!
//! Environment: `TIDEWATCH_BENCH_KAFKA_BROKERS` (required),
//! `TIDEWATCH_BENCH_EVENTS`, `TIDEWATCH_BENCH_ENCODING` (`json`, `protobuf`),
//! `TIDEWATCH_BENCH_CLICKHOUSE_URL` (a ClickHouse server to store into
//! instead of the embedded file), `TIDEWATCH_BENCH_WINDOWS` (lines added to
//! `[windows]`, e.g. `durable_join = false`),
//! `TIDEWATCH_BENCH_BINARY` (another `tidewatch` binary to time, e.g. one
//! built from an earlier commit for an A/B run on the same machine).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tidewatch::fixtures::{self, DemoShape, DEMO_MODEL, DEMO_VERSION};

const PARTITIONS: i32 = 4;

fn main() {
    let Ok(brokers) = std::env::var("TIDEWATCH_BENCH_KAFKA_BROKERS") else {
        eprintln!("TIDEWATCH_BENCH_KAFKA_BROKERS is not set: run scripts/bench-broker.sh");
        std::process::exit(2);
    };
    let events: u64 = std::env::var("TIDEWATCH_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let encoding = std::env::var("TIDEWATCH_BENCH_ENCODING").unwrap_or_else(|_| "json".into());
    assert!(
        encoding == "json" || encoding == "protobuf",
        "TIDEWATCH_BENCH_ENCODING is json or protobuf"
    );
    let run = std::process::id();
    let topic = format!("bench-drain-{run}");
    let directory = std::env::temp_dir().join(format!("tidewatch-bench-drain-{run}"));
    std::fs::create_dir_all(&directory).unwrap();

    create_topic(&brokers, &topic);
    let started = Instant::now();
    let bytes = produce(&brokers, &topic, events, &encoding);
    println!(
        "produced {events} events ({encoding}, {:.0} bytes each on average) to {PARTITIONS} partitions in {:.1} s",
        bytes as f64 / events as f64,
        started.elapsed().as_secs_f64()
    );

    let bare = bare_consumer(&brokers, &topic, events, &format!("bench-bare-{run}"));
    println!("bare rdkafka consumer: {bare:.0} messages/s");

    for instances in [1, 2] {
        let store = directory.join(format!("store-{instances}.db"));
        let group = format!("bench-tidewatch-{instances}-{run}");
        let config = write_config(&directory, &brokers, &topic, &group, &store, &encoding);
        store_reference(&config, &directory);
        let drained = drain(&brokers, &topic, &group, &config, instances, events);
        println!(
            "tidewatch run, {instances} instance(s): {:.0} events/s stored from the first commit to the last ({:.1} % of bare); all {events} stored {:.1} s after start ({:.0} events/s over that time); peak RSS {} MiB per instance",
            drained.rate,
            100.0 * drained.rate / bare,
            drained.wall.as_secs_f64(),
            events as f64 / drained.wall.as_secs_f64(),
            drained
                .peak_rss_kib
                .iter()
                .map(|kib| (kib / 1024).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = std::fs::remove_dir_all(&directory);
}

fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .expect("creating the topic");
    for result in results {
        result.expect("creating the topic");
    }
}

/// Produces the events; returns the payload bytes sent.
fn produce(brokers: &str, topic: &str, events: u64, encoding: &str) -> u64 {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    let mut bytes = 0u64;
    for (id, line) in fixtures::prediction_stream(events, 240, 42) {
        let payload = if encoding == "protobuf" {
            let event = events::decode(line.as_bytes(), events::EventKind::Prediction)
                .expect("the generated events decode");
            events::protobuf::encode(&event)
        } else {
            line.into_bytes()
        };
        bytes += payload.len() as u64;
        loop {
            match producer.send(BaseRecord::to(topic).key(&id).payload(&payload)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => panic!("producing: {error}"),
            }
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flushing");
    let end = end_offsets(brokers, topic);
    assert_eq!(end, events, "the topic holds {end} messages, not {events}");
    bytes
}

/// The sum of the partitions' high watermarks.
fn end_offsets(brokers: &str, topic: &str) -> u64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-watermarks")
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .expect("watermarks");
            (high - low) as u64
        })
        .sum()
}

/// Reads every message; messages per second from the first to the last.
fn bare_consumer(brokers: &str, topic: &str, events: u64, group: &str) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).unwrap();
    let mut count = 0u64;
    let mut checksum = 0u64;
    let mut first = None;
    while count < events {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                first.get_or_insert_with(Instant::now);
                count += 1;
                checksum = message
                    .payload()
                    .unwrap_or_default()
                    .iter()
                    .fold(checksum, |sum, byte| sum.wrapping_add(u64::from(*byte)));
            }
            Some(Err(error)) => panic!("consuming: {error}"),
            None => {}
        }
    }
    std::hint::black_box(checksum);
    let elapsed = first.expect("messages were read").elapsed();
    (events - 1) as f64 / elapsed.as_secs_f64()
}

fn write_config(
    directory: &Path,
    brokers: &str,
    topic: &str,
    group: &str,
    store: &Path,
    encoding: &str,
) -> PathBuf {
    let text = format!(
        r#"version = 1
[kafka]
brokers = "{brokers}"
group_id = "{group}"
dead_letter_topic = "{topic}-dead-letters"
topics = [{{ name = "{topic}", kind = "prediction", encoding = "{encoding}" }}]
{store_section}
[windows]
size = "1h"
allowed_lateness = "5m"
{windows_extra}
[[models]]
name = "{DEMO_MODEL}"
task = "classification"
segment_keys = ["country"]
features = [
  {{ name = "age", kind = "numeric" }},
  {{ name = "tenure_months", kind = "numeric" }},
  {{ name = "monthly_charges", kind = "numeric" }},
  {{ name = "support_calls", kind = "numeric" }},
  {{ name = "contract", kind = "categorical" }},
  {{ name = "payment_method", kind = "categorical" }},
]
"#,
        store_section = store_section(store, group),
        windows_extra = std::env::var("TIDEWATCH_BENCH_WINDOWS").unwrap_or_default(),
    );
    let path = directory.join(format!("{group}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `[store]`: the embedded file, or with `TIDEWATCH_BENCH_CLICKHOUSE_URL`
/// a database of its own on that ClickHouse server.
fn store_section(file: &Path, group: &str) -> String {
    match std::env::var("TIDEWATCH_BENCH_CLICKHOUSE_URL") {
        Ok(url) => format!(
            "[store]\ntype = \"clickhouse\"\nurl = \"{url}\"\ndatabase = \"{}\"",
            group.replace('-', "_")
        ),
        Err(_) => format!(
            "[store]\ntype = \"embedded\"\npath = \"{}\"",
            file.display()
        ),
    }
}

/// Stores the demo model's reference, built from its training data.
fn store_reference(config: &Path, directory: &Path) {
    let config = tidewatch::config::Config::load(config).expect("the bench config");
    let training = directory.join("train.csv");
    let shape = DemoShape {
        hours: 1,
        predictions_per_hour: 10,
        drift_onset_hour: 1,
        drift_end_hour: None,
        training_rows: 5_000,
    };
    std::fs::write(&training, fixtures::generate(shape, 7).training_csv).unwrap();
    let profile = tidewatch::training::build_reference(&config.models[0], DEMO_VERSION, &training)
        .expect("building the reference")
        .profile;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = config.store.open().await.expect("opening the store");
        store
            .put_reference(&profile, 1)
            .await
            .expect("storing the reference");
    });
}

struct Drained {
    /// Events committed per second, first commit to last.
    rate: f64,
    /// From start to the last offset committed.
    wall: Duration,
    peak_rss_kib: Vec<u64>,
}

/// Runs `instances` `tidewatch run` processes until their group has
/// committed every offset.
fn drain(
    brokers: &str,
    topic: &str,
    group: &str,
    config: &Path,
    instances: usize,
    events: u64,
) -> Drained {
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(topic, partition);
    }
    let started = Instant::now();
    let mut children: Vec<Child> = (0..instances)
        .map(|instance| {
            let log = std::fs::File::create(config.with_extension(format!("{instance}.log")))
                .expect("the instance's log");
            Command::new(
                std::env::var_os("TIDEWATCH_BENCH_BINARY")
                    .unwrap_or_else(|| env!("CARGO_BIN_EXE_tidewatch").into()),
            )
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "error")
            .stdout(log.try_clone().expect("the instance's log"))
            .stderr(log)
            .spawn()
            .expect("starting tidewatch run")
        })
        .collect();
    let mut first: Option<(Instant, u64)> = None;
    let mut peak_rss_kib = vec![0; instances];
    let last = loop {
        std::thread::sleep(Duration::from_millis(100));
        for (child, peak) in children.iter_mut().zip(&mut peak_rss_kib) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("tidewatch run exited early: {status}");
            }
            *peak = (*peak).max(peak_rss(child.id()));
        }
        let committed = match watcher.committed_offsets(partitions.clone(), Duration::from_secs(5))
        {
            Ok(list) => list
                .elements()
                .iter()
                .map(|element| match element.offset() {
                    Offset::Offset(offset) => offset.max(0) as u64,
                    _ => 0,
                })
                .sum::<u64>(),
            Err(_) => continue,
        };
        if committed > 0 && first.is_none() {
            first = Some((Instant::now(), committed));
        }
        if committed >= events {
            break Instant::now();
        }
    };
    for child in &mut children {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
    }
    for child in &mut children {
        let _ = child.wait();
    }
    let (first_at, first_committed) = first.expect("offsets were committed");
    let span = last.duration_since(first_at).as_secs_f64();
    Drained {
        rate: if span > 0.0 {
            (events - first_committed) as f64 / span
        } else {
            f64::NAN
        },
        wall: last.duration_since(started),
        peak_rss_kib,
    }
}

/// `VmHWM` of a process, in KiB (0 when unknown).
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}
