//! The fault suite: the real `tidewatch run` binary as a child process,
//! against the real broker and ClickHouse started by `scripts/test.sh`,
//! under faults. Each case compares what is stored with the in-process
//! computation over the same events (every count, sum, quantile and test
//! of every series-window) and with an independent count/mean oracle, and
//! prints what it did and what it measured.
//!
//! | case | fault |
//! |---|---|
//! | `sigkill_ten_times_while_consuming` | SIGKILL at random moments, 10 times, while ≥ 300,000 events are produced |
//! | `adversarial_payloads_are_dead_lettered_and_valid_events_counted_once` | 10,000 malformed payloads of every kind mixed into the stream |
//! | `clickhouse_down_for_a_minute_mid_stream` | ClickHouse unreachable for 60 s (a proxy cuts every connection) |
//! | `committed_offsets_unreadable_on_assignment` | reading committed offsets fails (injected) during assignment |
//! | `broker_gone_for_30_seconds` | the broker unreachable for 30 s mid-stream (a proxy cuts it), then back with its data |
//! | `broker_back_empty_with_the_topic_recreated` | the broker dies and comes back empty; the topic is recreated and the stream goes on |
//! | `rebalance_storm` | three instances joining and leaving (SIGTERM or SIGKILL) every few seconds over 8 partitions |
//! | `cardinality_flood` | a million events with distinct model names, segment values and categories |
//! | `range_fingerprints_wait_for_the_store` | ClickHouse unreachable while a member looks up and stores offset-range fingerprints |
//! | `a_pause_in_traffic_inside_a_window` | the stream stops mid-window for longer than `idle_close_after`, the open windows are finalized provisionally, then the rest arrives |
//! | `labels_after_a_restart_and_after_a_kill_join_their_predictions` | every prediction read and committed, a SIGTERM restart, half the labels with a SIGKILL at a random moment while they are read, then the rest |
//! | `separate_label_topic_read_by_two_instances` | predictions on 4 partitions, labels on their own topic of 3, produced at once, two instances in the group |

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::broker::PrivateBroker;
use common::child::TidewatchProcess;
use common::proxy::Proxy;
use common::{
    brokers, check_oracle, clickhouse_url, demo_hours, header, oracle, small_shape,
    wait_for_metrics, ConfigOptions, Scenario,
};
use ingest::incarnation::{fingerprint, Incarnations, PartitionId};
use ingest::telemetry::Telemetry;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use store::{clickhouse_store::ClickHouseStore, Store};
use tidewatch::fixtures::DemoShape;

/// The seed of a case's random schedule: `TIDEWATCH_TEST_SEED` when set
/// (to replay a failure, or to vary the soak: `scripts/soak-faults.sh`),
/// else a random one; every case prints the seed it used.
fn seed() -> u64 {
    match std::env::var("TIDEWATCH_TEST_SEED") {
        Ok(seed) => seed
            .parse()
            .unwrap_or_else(|_| panic!("TIDEWATCH_TEST_SEED={seed} is not a number")),
        Err(_) => rand::rng().random(),
    }
}

/// GET `path` on 127.0.0.1:`port`: (status, body).
/// `/api/v1/ready` once the service has had time to notice a recovery:
/// asked every 500 ms for up to 20 s (broker health comes from librdkafka's
/// statistics, every 5 s) until it answers 200; the last answer.
fn ready_after_recovery(port: u16) -> Option<(u16, String)> {
    let started = Instant::now();
    loop {
        let answer = http_get(port, "/api/v1/ready");
        if matches!(answer, Some((200, _))) || started.elapsed() > Duration::from_secs(20) {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_ten_times_while_consuming() {
    let shape = DemoShape {
        hours: 5,
        predictions_per_hour: 40_000,
        drift_onset_hour: 3,
        drift_end_hour: None,
        training_rows: 5_000,
    };
    let scenario = Scenario::new("faults_kill", shape);
    let events = scenario.predictions + scenario.actuals;
    assert!(events >= 300_000, "{events} events");
    let (path, store, expected) = scenario
        .prepare(5_000, &ConfigOptions::fast_takeover(), 4)
        .await;

    // Produce over about 90 s so that every kill lands mid-stream: a kill
    // cycle (start, assignment, 0.2–2.5 s of consuming) takes 6–8 s here,
    // so ten take about 75 s (over 60 s, the last kills landed after the
    // producer had finished).
    let rate = (events / 90) as u32;
    let mut producer = scenario.replay(Some(rate));
    let seed = seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let log = scenario.directory.join("tidewatch.log");
    let mut kills = Vec::new();
    let mut peak = 0;
    for _ in 0..10 {
        let mut process = TidewatchProcess::start(&path, &log, &[]);
        process.wait_for_assignment(Duration::from_secs(60));
        let after = Duration::from_millis(rng.random_range(200..2_500));
        std::thread::sleep(after);
        let producing = producer.try_wait().unwrap().is_none();
        peak = peak.max(process.peak_rss_kib());
        process.kill();
        kills.push((started.elapsed(), after, producing));
    }
    let mid_stream = kills.iter().filter(|(_, _, producing)| *producing).count();
    let process = TidewatchProcess::start(&path, &log, &[]);
    assert!(
        producer.wait().unwrap().success(),
        "tidewatch replay failed"
    );
    wait_for_metrics(&store, &expected, Duration::from_secs(300)).await;
    let (stored, produced) = check_oracle(&store, &scenario).await;
    let peak = peak.max(process.peak_rss_kib());
    assert!(process.terminate(), "the last process did not stop cleanly");
    println!(
        "sigkill: {events} events ({} predictions) produced at {rate}/s over 4 partitions; \
         10 SIGKILLs (seed {seed}) at {:?} after start, {mid_stream} while the producer ran; \
         {} series-windows equal the in-process computation; predictions stored {stored} of \
         {produced}: lost {}, double counted {}; peak RSS of any process {peak} KiB; {:.0} s in all",
        scenario.predictions,
        kills
            .iter()
            .map(|(at, _, _)| format!("{:.1}s", at.as_secs_f64()))
            .collect::<Vec<_>>(),
        expected.len(),
        produced.saturating_sub(stored),
        stored.saturating_sub(produced),
        started.elapsed().as_secs_f64()
    );
    assert!(
        mid_stream >= 8,
        "most kills must land while events flow: {kills:?}"
    );
}

/// Every kind of malformed payload, `count` in all, each with the reason
/// it must be refused for.
fn adversarial_payloads(count: usize) -> Vec<(Vec<u8>, &'static str)> {
    let valid = |timestamp: &str, features: &str| {
        format!(
            r#"{{"schema":"tidewatch.prediction.v1","model":"churn","model_version":"7","prediction_id":"adv","timestamp":{timestamp},"features":{features},"prediction":{{"score":0.5}}}}"#
        )
    };
    let normal = valid("1767571200000", r#"{"age":30}"#);
    let mut nested =
        String::from(r#"{"model":"churn","model_version":"7","timestamp":1,"features":{"age":"#);
    nested.push_str(&"[".repeat(10_000));
    let kinds: Vec<(Vec<u8>, &'static str)> = vec![
        (b"not json at all".to_vec(), "invalid event json"),
        (vec![0xff, 0xfe, b'{', 0x80, b'}'], "invalid event json"),
        (
            normal.as_bytes()[..normal.len() / 2].to_vec(),
            "invalid event json",
        ),
        (nested.into_bytes(), "invalid event json"),
        (
            valid("1767571200000", r#"{"age":1e999}"#).into_bytes(),
            "invalid event json",
        ),
        (
            valid("1767571200000", r#"{"age":NaN}"#).into_bytes(),
            "invalid event json",
        ),
        (
            valid("1767571200000", r#"{"age":[1,2]}"#).into_bytes(),
            "a number, a string, a boolean or null",
        ),
        (
            br#"{"schema":"tidewatch.prediction.v1","model":"churn","timestamp":1767571200000,"features":{"age":1},"prediction":{"score":0.5}}"#.to_vec(),
            "missing required field `model_version`",
        ),
        (
            valid("1767571200000", r#"{"age":1,"age":2}"#).into_bytes(),
            "duplicate key `age`",
        ),
        (
            valid("-5", r#"{"age":1}"#).into_bytes(),
            "outside the storable range",
        ),
        (
            valid("\"1969-07-20T20:17:00Z\"", r#"{"age":1}"#).into_bytes(),
            "outside the storable range",
        ),
        (
            valid("\"9999-12-31T23:59:59Z\"", r#"{"age":1}"#).into_bytes(),
            "outside the storable range",
        ),
        (
            valid("\"2100-01-01T00:00:00Z\"", r#"{"age":1}"#).into_bytes(),
            "ahead of the wall clock",
        ),
    ];
    let mut payloads = Vec::with_capacity(count);
    // One 5 MB payload: more than any broker takes as a dead letter by default.
    let mut huge = valid("1767571200000", r#"{"age":1}"#).into_bytes();
    huge.truncate(huge.len() - 1);
    huge.extend(std::iter::repeat_n(b' ', 5 * 1024 * 1024));
    huge.extend(b",}");
    payloads.push((huge, "invalid event json"));
    while payloads.len() < count {
        let (payload, reason) = &kinds[payloads.len() % kinds.len()];
        payloads.push((payload.clone(), reason));
    }
    payloads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_payloads_are_dead_lettered_and_valid_events_counted_once() {
    let scenario = Scenario::new("faults_adversarial", small_shape());
    let (path, store, expected) = scenario.prepare(1_000, &ConfigOptions::default(), 3).await;
    let payloads = adversarial_payloads(10_000);
    // 100,000 feature names in one event of a model Tidewatch does not
    // watch: decoded, dropped and counted as an unknown model.
    let wide: String = (0..100_000)
        .map(|i| format!(r#""f{i}":{i}"#))
        .collect::<Vec<_>>()
        .join(",");
    let wide = format!(
        r#"{{"model":"not-configured","model_version":"1","prediction_id":"w","timestamp":1767571200000,"features":{{{wide}}},"prediction":{{"score":0.5}}}}"#
    );

    let log = scenario.directory.join("tidewatch.log");
    let mut process = TidewatchProcess::start(&path, &log, &[]);
    let mut replay = scenario.replay(Some(3_000));
    // Compressed, so the broker takes the 5 MB payload (its limit applies
    // to the compressed batch); the consumer sees it whole.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.max.bytes", "10000000")
        .set("compression.type", "zstd")
        .create()
        .unwrap();
    let topic = scenario.topic();
    for (index, (payload, _)) in payloads.iter().enumerate() {
        let key = index.to_string();
        producer
            .send(
                FutureRecord::to(&topic).payload(payload).key(&key),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(error, _)| panic!("producing adversarial payload {index}: {error}"));
    }
    producer
        .send(
            FutureRecord::to(&topic).payload(&wide).key("wide"),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(error, _)| panic!("producing the wide event: {error}"));
    assert!(replay.wait().unwrap().success());
    wait_for_metrics(&store, &expected, Duration::from_secs(180)).await;
    let (stored, produced) = check_oracle(&store, &scenario).await;
    assert!(
        process.wait_exit(Duration::from_millis(10)).is_none(),
        "tidewatch run must not stop on adversarial input; see {}",
        log.display()
    );

    // Every malformed payload, the stream's own three included, is in the
    // dead-letter topic with the reason it was refused for.
    let consumer = scenario.dead_letter_reader();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut letters = 0usize;
    let mut largest = 0usize;
    let mut cut = None;
    while letters < payloads.len() + 3 {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {letters} dead letters arrived"))
            .unwrap();
        letters += 1;
        let header = |name: &str| header(&message, name);
        let reason = header("tidewatch-error").expect("a reason");
        let length = message.payload().map_or(0, <[u8]>::len);
        largest = largest.max(length);
        if let Some(original) = header("tidewatch-original-size") {
            cut = Some((original, length));
        }
        // Digits vary (offsets, times); the rest says why.
        let shape: String = reason
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        *reasons.entry(shape).or_default() += 1;
    }
    for (_, expected_reason) in &payloads {
        assert!(
            reasons
                .keys()
                .any(|reason| reason.contains(expected_reason)),
            "no dead letter says {expected_reason:?}: {reasons:#?}"
        );
    }
    let (original, kept) = cut.expect("the 5 MB payload was cut");
    assert!(original.parse::<usize>().unwrap() > 5 * 1024 * 1024);
    assert!(kept <= ingest::dead_letter::DEFAULT_MAX_PAYLOAD_BYTES);
    // Nothing more than the malformed payloads was dead-lettered.
    let extra = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await;
    assert!(extra.is_err(), "an unexpected dead letter arrived");
    let peak = process.peak_rss_kib();
    assert!(process.terminate());
    println!(
        "adversarial: {} malformed payloads ({} kinds, one of 5 MB) and a 100,000-feature event \
         mixed into {} valid events; {letters} dead letters (largest payload {largest} bytes, the \
         5 MB one cut to {kept} bytes), every one with its reason; no crash; predictions stored \
         {stored} of {produced}, {} series-windows equal the in-process computation; peak RSS \
         {peak} KiB",
        payloads.len(),
        14,
        scenario.predictions + scenario.actuals,
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_for_a_minute_mid_stream() {
    let scenario = Scenario::new("faults_clickhouse", demo_hours(4, 10_000));
    let clickhouse = clickhouse_url();
    let target = clickhouse.trim_start_matches("http://").to_owned();
    let proxy = Proxy::start(&target).await;
    let port = common::free_port();
    let (path, store, expected) = scenario
        .prepare(
            2_000,
            &ConfigOptions {
                clickhouse_url: Some(format!("http://{}", proxy.address)),
                http_listen: Some(format!("127.0.0.1:{port}")),
                ..Default::default()
            },
            2,
        )
        .await;
    let events = scenario.predictions + scenario.actuals;
    let log = scenario.directory.join("tidewatch.log");
    let mut process = TidewatchProcess::start(&path, &log, &[]);
    // Produce over about 40 s; cut ClickHouse 5 s in, for 60 s.
    let mut producer = scenario.replay(Some((events / 40) as u32));
    process.wait_for_assignment(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(5));
    let before_outage = process.peak_rss_kib();
    proxy.cut();
    let cut_at = Instant::now();
    let mut not_ready = 0;
    let mut ready_during = 0;
    while cut_at.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            process.wait_exit(Duration::ZERO).is_none(),
            "tidewatch run exited during the outage; see {}",
            log.display()
        );
        match http_get(port, "/api/v1/ready") {
            Some((503, _)) => not_ready += 1,
            Some((200, _)) => ready_during += 1,
            _ => {}
        }
    }
    let peak_in_outage = process.peak_rss_kib();
    proxy.restore();
    assert!(producer.wait().unwrap().success());
    wait_for_metrics(&store, &expected, Duration::from_secs(180)).await;
    let (stored, produced) = check_oracle(&store, &scenario).await;
    let (_, metrics) = http_get(port, "/metrics").expect("/metrics answers");
    let failures: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("tidewatch_store_failures_total{"))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    let ready_after = ready_after_recovery(port).map(|(status, _)| status);
    assert!(process.terminate());
    println!(
        "clickhouse down: {events} events; ClickHouse cut for 60 s while consuming; the process \
         stayed up, /ready answered 503 {not_ready} times (200 {ready_during} times) during the \
         outage and {ready_after:?} after; {failures} failed store attempts retried; peak RSS \
         {before_outage} KiB before the outage, {peak_in_outage} KiB at its end; predictions \
         stored {stored} of {produced}, {} series-windows equal the in-process computation",
        expected.len()
    );
    assert_eq!(
        ready_during, 0,
        "/ready must be false while ClickHouse is away"
    );
    assert!(not_ready > 0);
    assert!(failures > 0.0, "store failures must be counted");
    assert_eq!(ready_after, Some(200));
    assert!(
        peak_in_outage < 512 * 1024,
        "memory during the outage: {peak_in_outage} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_unreadable_on_assignment() {
    let scenario = Scenario::new("faults_assign", demo_hours(3, 4_000));
    let (path, store, expected) = scenario
        .prepare(1_000, &ConfigOptions::fast_takeover(), 3)
        .await;
    let events = scenario.predictions + scenario.actuals;
    let mut producer = scenario.replay(Some((events / 30) as u32));
    let log = scenario.directory.join("tidewatch.log");

    // Two failed reads, then one that works: the member rewinds and consumes.
    let mut first =
        TidewatchProcess::start(&path, &log, &[("TIDEWATCH_FAULT_COMMITTED_OFFSETS", "2")]);
    first.wait_for_assignment(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    let mut peak = first.peak_rss_kib();
    first.kill();
    // Every read fails: no partition is consumed unrewound; the member
    // stops with the reason, and leaves the group.
    let mut second =
        TidewatchProcess::start(&path, &log, &[("TIDEWATCH_FAULT_COMMITTED_OFFSETS", "100")]);
    let status = second
        .wait_exit(Duration::from_secs(120))
        .expect("the member must stop when it cannot rewind");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("cannot read the committed offsets"),
        "the log must say why"
    );
    let third = TidewatchProcess::start(&path, &log, &[]);
    assert!(producer.wait().unwrap().success());
    wait_for_metrics(&store, &expected, Duration::from_secs(180)).await;
    let (stored, produced) = check_oracle(&store, &scenario).await;
    peak = peak.max(third.peak_rss_kib());
    assert!(third.terminate());
    println!(
        "assignment failure: {events} events; a member whose first two reads of committed \
         offsets failed rewound on the third and was killed; a member whose reads all failed \
         assigned nothing and stopped ({status}); a third finished: predictions stored {stored} \
         of {produced}, {} series-windows equal the in-process computation; peak RSS of the \
         first and third members {peak} KiB",
        expected.len()
    );
}

/// The flood: `count` events after the demo stream, a third each with a
/// distinct unknown model name, a distinct `country` and a distinct
/// `contract` category. Returns the lines and the countries they carry.
fn flood_lines(count: usize, after_ms: i64) -> (String, Vec<(i64, String)>) {
    let mut text = String::with_capacity(count * 260);
    let mut countries = Vec::new();
    for i in 0..count {
        let timestamp = after_ms + 1 + i as i64;
        let (model, country, contract) = match i % 3 {
            0 => (
                format!("flood-model-{i}"),
                "DE".to_owned(),
                "monthly".to_owned(),
            ),
            1 => ("churn".to_owned(), format!("zz-{i}"), "monthly".to_owned()),
            _ => ("churn".to_owned(), "FR".to_owned(), format!("contract-{i}")),
        };
        if model == "churn" {
            countries.push((timestamp, country.clone()));
        }
        text.push_str(&format!(
            r#"{{"schema":"tidewatch.prediction.v1","model":"{model}","model_version":"v1","prediction_id":"flood-{i}","timestamp":{timestamp},"features":{{"age":{age}.{frac:03},"tenure_months":{tenure},"monthly_charges":{charges}.{frac:03},"support_calls":{calls},"contract":"{contract}","payment_method":"card"}},"prediction":{{"score":0.{frac:03},"class":"no"}},"latency_ms":3.5,"segments":{{"country":"{country}"}}}}"#,
            age = 18 + i % 60,
            frac = (i * 7919) % 1000,
            tenure = i % 72,
            charges = 20 + i % 90,
            calls = i % 7,
        ));
        text.push('\n');
    }
    (text, countries)
}

/// The segments the window admits, by the documented rule (pinned `DE`,
/// then the smallest stable hashes), counted from the lines.
fn admitted_segment_counts(
    countries: &[(i64, String)],
    hashed_slots: usize,
) -> BTreeMap<(i64, String), u64> {
    let mut per_window: BTreeMap<i64, BTreeMap<&str, u64>> = BTreeMap::new();
    for (timestamp, country) in countries {
        *per_window
            .entry(timestamp.div_euclid(3_600_000) * 3_600_000)
            .or_default()
            .entry(country)
            .or_default() += 1;
    }
    let mut out = BTreeMap::new();
    for (window, counts) in per_window {
        let mut hashed: Vec<&str> = counts.keys().copied().filter(|c| *c != "DE").collect();
        hashed.sort_by_key(|c| (detectors::distinct::stable_hash(c), *c));
        let admitted: Vec<&str> = hashed.iter().copied().take(hashed_slots).collect();
        for (country, count) in counts {
            let segment = if country == "DE" || admitted.contains(&country) {
                format!("country={country}")
            } else {
                "country=__other__".to_owned()
            };
            *out.entry((window, segment)).or_default() += count;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cardinality_flood() {
    const FLOOD: usize = 1_000_000;
    let mut scenario = Scenario::new("faults_flood", small_shape());
    // The flood follows the demo's last event (so nothing in it is late).
    let demo = std::fs::read_to_string(&scenario.stream).unwrap();
    let last_ms = demo
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|value| value["timestamp"].as_i64())
        .max()
        .unwrap();
    let (flood, flood_countries) = flood_lines(FLOOD, last_ms);
    let demo_countries: Vec<(i64, String)> = demo
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|value| {
            value["schema"] == "tidewatch.prediction.v1" && value["features"]["age"].is_number()
        })
        .filter_map(|value| {
            Some((
                value["timestamp"].as_i64()?,
                value["segments"]["country"].as_str()?.to_owned(),
            ))
        })
        .collect();
    drop(demo);
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&scenario.stream)
            .unwrap();
        file.write_all(flood.as_bytes()).unwrap();
    }
    drop(flood);
    let flood_churn = flood_countries.len() as u64;
    scenario.predictions += flood_churn;
    let mut countries = demo_countries;
    countries.extend(flood_countries);
    let oracle_segments = admitted_segment_counts(&countries, 9);

    let port = common::free_port();
    let (config, path) = scenario.config_with(
        50_000,
        &ConfigOptions {
            http_listen: Some(format!("127.0.0.1:{port}")),
            model_extra: "max_segment_values = 10\nmax_categories = 20\nsegment_values = { country = [\"DE\"] }",
            ..Default::default()
        },
    );
    scenario.create_topics(4).await;
    let store = scenario.store_reference(&config).await;
    let started = Instant::now();
    let expected = scenario.expected(&config).await;
    let in_process = started.elapsed();
    let log = scenario.directory.join("tidewatch.log");
    let mut process = TidewatchProcess::start(&path, &log, &[]);
    process.wait_for_assignment(Duration::from_secs(60));
    let producer = scenario.replay(None);
    assert!(producer.wait_with_output().unwrap().status.success());
    let produced_in = started.elapsed() - in_process;
    wait_for_metrics(&store, &expected, Duration::from_secs(300)).await;
    let consumed_in = started.elapsed() - in_process;
    let (stored, produced) = check_oracle(&store, &scenario).await;
    let metrics = store
        .window_metrics(store::MetricsQuery::default())
        .await
        .unwrap();
    let mut stored_segments: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for m in &metrics {
        if m.key.feature == "prediction.score" && m.key.segment.starts_with("country=") {
            stored_segments.insert((m.key.window_start, m.key.segment.clone()), m.metrics.count);
        }
    }
    assert_eq!(
        stored_segments, oracle_segments,
        "stored segments differ from the rule's oracle"
    );
    let (_, text) = http_get(port, "/metrics").expect("/metrics answers");
    let sum = |prefix: &str, containing: &str| -> f64 {
        text.lines()
            .filter(|line| line.starts_with(prefix) && line.contains(containing))
            .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    };
    let unknown = sum(
        "tidewatch_events_dropped_total{",
        "reason=\"unknown_model\"",
    );
    let overflow = sum("tidewatch_segment_overflow_events_total", "");
    let folded = sum("tidewatch_segment_values_folded_total", "");
    let peak = process.peak_rss_kib();
    assert!(process.terminate());
    let windows: std::collections::BTreeSet<i64> =
        oracle_segments.keys().map(|(window, _)| *window).collect();
    println!(
        "cardinality flood: {FLOOD} events after {} demo events: {} distinct unknown model names, \
         {} distinct countries and {} distinct contract categories; dropped as unknown model \
         {unknown}; {overflow} event segment values counted under country=__other__ on arrival, \
         {folded} values folded later; {} (window, segment) counts over {} windows equal the \
         rule's oracle; predictions stored {stored} of {produced}; {} series-windows equal the \
         in-process computation ({:.0} s in process; produced in {:.0} s, all stored {:.0} s \
         after the start); peak RSS {peak} KiB",
        scenario.actuals + scenario.predictions - flood_churn,
        FLOOD.div_ceil(3),
        flood_churn / 2,
        flood_churn / 2,
        oracle_segments.len(),
        windows.len(),
        expected.len(),
        in_process.as_secs_f64(),
        produced_in.as_secs_f64(),
        consumed_in.as_secs_f64()
    );
    assert_eq!(
        unknown as usize,
        FLOOD.div_ceil(3),
        "unknown models counted"
    );
    assert!(overflow > 0.0, "overflow counted");
    // The documented bound: the join buffer (about 254 bytes per pending
    // prediction; 400 allowed here), librdkafka's fetch queue and the
    // polling channel (64 MiB each), and 64 MiB for everything else.
    let bound = 192 * 1024 + scenario.predictions * 400 / 1024;
    assert!(peak < bound, "peak RSS {peak} KiB, bound {bound} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_storm() {
    let scenario = Scenario::new("faults_storm", demo_hours(4, 15_000));
    let (path, store, expected) = scenario
        .prepare(2_000, &ConfigOptions::fast_takeover(), 8)
        .await;
    let events = scenario.predictions + scenario.actuals;
    // Produce over about 60 s while the group churns.
    let mut producer = scenario.replay(Some((events / 60) as u32));
    let seed = seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let log = scenario.directory.join("tidewatch.log");
    let started = Instant::now();
    let mut members: Vec<TidewatchProcess> = Vec::new();
    let (mut joins, mut leaves, mut kills, mut peak) = (0, 0, 0, 0);
    while started.elapsed() < Duration::from_secs(60) {
        let join = members.is_empty() || (members.len() < 3 && rng.random_bool(0.6));
        if join {
            members.push(TidewatchProcess::start(&path, &log, &[]));
            joins += 1;
        } else {
            let member = members.remove(rng.random_range(0..members.len()));
            peak = peak.max(member.peak_rss_kib());
            if rng.random_bool(0.3) {
                member.kill();
                kills += 1;
            } else {
                assert!(member.terminate(), "a member did not leave cleanly");
                leaves += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(2_000..5_000)));
    }
    if members.is_empty() {
        members.push(TidewatchProcess::start(&path, &log, &[]));
    }
    assert!(producer.wait().unwrap().success());
    wait_for_metrics(&store, &expected, Duration::from_secs(240)).await;
    let (stored, produced) = check_oracle(&store, &scenario).await;
    let remaining = members.len();
    for member in members {
        peak = peak.max(member.peak_rss_kib());
        assert!(member.terminate());
    }
    println!(
        "rebalance storm: {events} events over 8 partitions; for 60 s (seed {seed}) members \
         joined {joins} times, left {leaves} times (SIGTERM) and were killed {kills} times, \
         {remaining} left at the end; predictions stored {stored} of {produced}: lost {}, \
         double counted {}; {} series-windows equal the in-process computation; peak RSS of \
         any member {peak} KiB",
        produced.saturating_sub(stored),
        stored.saturating_sub(produced),
        expected.len()
    );
    assert!(joins >= 6 && leaves + kills >= 4, "the group must churn");
}

/// `/api/v1/ready` every 2 s for `duration`: (seconds into it, status).
fn watch_readiness(
    process: &mut TidewatchProcess,
    port: u16,
    duration: Duration,
) -> Vec<(f64, Option<u16>)> {
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            process.wait_exit(Duration::ZERO).is_none(),
            "tidewatch run exited; see {}",
            process.log.display()
        );
        seen.push((
            started.elapsed().as_secs_f64(),
            http_get(port, "/api/v1/ready").map(|(status, _)| status),
        ));
    }
    seen
}

/// Sum of the `/metrics` samples whose line starts with `prefix`.
fn metric(port: u16, prefix: &str) -> f64 {
    let (_, text) = http_get(port, "/metrics").expect("/metrics answers");
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_gone_for_30_seconds() {
    let mut scenario = Scenario::new("faults_broker_gone", demo_hours(4, 10_000));
    let broker_port = common::free_port();
    let proxy = Proxy::start(&format!("127.0.0.1:{broker_port}")).await;
    let _broker = PrivateBroker::start(
        broker_port,
        &proxy.address,
        &scenario.directory.join("broker.log"),
    );
    scenario.brokers = proxy.address.clone();
    let port = common::free_port();
    let (path, store, expected) = scenario
        .prepare(2_000, &ConfigOptions::observed(port), 4)
        .await;
    let events = scenario.predictions + scenario.actuals;
    let log = scenario.directory.join("tidewatch.log");
    let mut process = TidewatchProcess::start(&path, &log, &[]);
    process.wait_for_assignment(Duration::from_secs(60));
    // Produce over about 40 s; cut the broker off 5 s in, for 30 s.
    let mut producer = scenario.replay(Some((events / 40) as u32));
    std::thread::sleep(Duration::from_secs(5));
    let consumed_before = metric(port, "tidewatch_events_consumed_total");
    proxy.cut();
    let readiness = watch_readiness(&mut process, port, Duration::from_secs(30));
    let consumed_during = metric(port, "tidewatch_events_consumed_total") - consumed_before;
    proxy.restore();
    assert!(producer.wait().unwrap().success());
    wait_for_metrics(&store, &expected, Duration::from_secs(180)).await;
    let (stored, produced) = check_oracle(&store, &scenario).await;
    let ready_after = ready_after_recovery(port).map(|(status, _)| status);
    let text = std::fs::read_to_string(&log).unwrap();
    let errors = text.lines().filter(|line| line.contains("ERROR")).count();
    let peak = process.peak_rss_kib();
    assert!(process.terminate());
    let first_not_ready = readiness
        .iter()
        .find(|(_, status)| *status == Some(503))
        .map(|(at, _)| *at);
    println!(
        "broker gone: {events} events; the broker cut off for 30 s while consuming; the process \
         stayed up; /ready during the outage {readiness:?} (first 503 after {first_not_ready:?} s), \
         {ready_after:?} after; {consumed_during} messages read during the outage; {errors} ERROR \
         lines in the log; predictions stored {stored} of {produced}, {} series-windows equal the \
         in-process computation; peak RSS {peak} KiB",
        expected.len()
    );
    // librdkafka notices within its statistics interval (5 s) and a reconnect.
    let first_not_ready =
        first_not_ready.expect("/ready must say not ready while the broker is away");
    assert!(first_not_ready <= 15.0, "{readiness:?}");
    assert!(
        readiness
            .iter()
            .filter(|(at, _)| *at > first_not_ready)
            .all(|(_, status)| *status == Some(503)),
        "{readiness:?}"
    );
    assert_eq!(ready_after, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_back_empty_with_the_topic_recreated() {
    let mut scenario = Scenario::new("faults_broker_empty", small_shape());
    let broker_port = common::free_port();
    let address = format!("127.0.0.1:{broker_port}");
    let broker_log = scenario.directory.join("broker.log");
    let broker = PrivateBroker::start(broker_port, &address, &broker_log);
    scenario.brokers = address.clone();
    // The stream in two parts: the broker loses the first before the second
    // is produced; a window is split between them.
    let text = std::fs::read_to_string(&scenario.stream).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let split = lines.len() * 55 / 100;
    let (first, second) = (
        scenario.directory.join("first.jsonl"),
        scenario.directory.join("second.jsonl"),
    );
    std::fs::write(&first, lines[..split].join("\n") + "\n").unwrap();
    std::fs::write(&second, lines[split..].join("\n") + "\n").unwrap();
    let port = common::free_port();
    let (path, store, expected) = scenario
        .prepare(1_000, &ConfigOptions::observed(port), 2)
        .await;
    let log = scenario.directory.join("tidewatch.log");
    let mut process = TidewatchProcess::start(&path, &log, &[]);
    process.wait_for_assignment(Duration::from_secs(60));
    assert!(scenario.replay_file(&first, None).wait().unwrap().success());
    let wait_consumed = |count: f64| {
        let started = Instant::now();
        loop {
            let consumed = metric(port, "tidewatch_events_consumed_total");
            if consumed >= count {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{consumed} messages read of {count}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_consumed(split as f64);
    // Stored and committed.
    std::thread::sleep(Duration::from_secs(3));
    broker.kill();
    let down = watch_readiness(&mut process, port, Duration::from_secs(20));
    let broker = PrivateBroker::start(broker_port, &address, &broker_log);
    scenario.create_topics(2).await;
    assert!(scenario
        .replay_file(&second, None)
        .wait()
        .unwrap()
        .success());
    wait_consumed(lines.len() as f64);
    let (_, text) = http_get(port, "/metrics").expect("/metrics answers");
    for line in text.lines().filter(|line| {
        line.starts_with("tidewatch_events_dropped_total")
            || line.starts_with("tidewatch_events_consumed_total")
            || line.starts_with("tidewatch_windows_closed_total")
    }) {
        println!("after the second part: {line}");
    }
    wait_for_metrics(&store, &expected, Duration::from_secs(240)).await;
    let (stored, produced) = check_oracle(&store, &scenario).await;
    let recreated = metric(port, "tidewatch_partitions_recreated_total");
    let ready_answer = ready_after_recovery(port);
    let ready_after = ready_answer.as_ref().map(|(status, _)| *status);
    let peak = process.peak_rss_kib();
    assert!(process.terminate());
    drop(broker);
    println!(
        "broker back empty: {} lines, the first {split} produced, read and stored, then the \
         broker killed and started again empty ({} s down; /ready {down:?}), the topic \
         recreated and the other {} lines produced: {recreated} partitions read as a new \
         incarnation; predictions stored {stored} of {produced}: lost {}, double counted {}; \
         {} series-windows (a window split across the two) equal the in-process computation; \
         /ready {ready_after:?} after; peak RSS {peak} KiB",
        lines.len(),
        20,
        lines.len() - split,
        produced.saturating_sub(stored),
        stored.saturating_sub(produced),
        expected.len()
    );
    assert!(recreated >= 1.0, "the new incarnation must be noticed");
    assert!(
        down.iter().any(|(_, status)| *status == Some(503)),
        "/ready must say not ready while the broker is away: {down:?}"
    );
    assert_eq!(ready_after, Some(200), "{ready_answer:?}");
}

/// Failed attempts of the store operation `operation` in `telemetry`.
fn store_failures(telemetry: &Telemetry, operation: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &telemetry.registry()).unwrap();
    let prefix = format!("tidewatch_store_failures_total{{operation=\"{operation}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// The fingerprints that tell a recreated partition from a rewound one are
/// read and written with the same unbounded retries as every store
/// operation: with ClickHouse unreachable a member waits (counted, and
/// the store reported down) instead of placing a message without knowing
/// which incarnation it belongs to, or writing partials whose range has no
/// fingerprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_fingerprints_wait_for_the_store() {
    let url = clickhouse_url();
    let proxy = Proxy::start(url.trim_start_matches("http://")).await;
    let database = format!("tidewatch_faults_fingerprints_{}", std::process::id());
    let store = Store::new(
        ClickHouseStore::connect(&format!("http://{}", proxy.address), &database, None, None)
            .await
            .unwrap(),
    );
    let telemetry = Telemetry::default();
    let delay = Duration::from_millis(200);
    let member = Incarnations::new(100);
    let partition = PartitionId::new("t", 0);

    // A lookup (the partition's incarnation, then the range's fingerprint)
    // while the store is unreachable.
    proxy.cut();
    let lookup = tokio::spawn({
        let (store, telemetry, partition) = (store.clone(), telemetry.clone(), partition.clone());
        async move {
            let mut member = member;
            let placed = member
                .source_for(&store, &telemetry, delay, &partition, 0, || {
                    fingerprint(Some(1), b"m0")
                })
                .await;
            (member, placed)
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !lookup.is_finished(),
        "the lookup went on without the store"
    );
    let failed_lookups = store_failures(&telemetry, "fingerprints");
    assert!(failed_lookups >= 2.0, "{failed_lookups} failed attempts");
    assert!(
        !telemetry.health().problems().is_empty(),
        "the store is reported down"
    );
    proxy.restore();
    let (mut member, placed) = lookup.await.unwrap();
    assert_eq!(placed.unwrap().source.to_string(), "t/0");
    assert!(telemetry.health().problems().is_empty());

    // The write of the range's fingerprint while the store is unreachable.
    proxy.cut();
    let write = tokio::spawn({
        let (store, telemetry) = (store.clone(), telemetry.clone());
        async move {
            let stored = member.store(&store, &telemetry, delay).await;
            (member, stored)
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!write.is_finished(), "the write went on without the store");
    let failed_writes = store_failures(&telemetry, "fingerprints") - failed_lookups;
    assert!(failed_writes >= 2.0, "{failed_writes} failed attempts");
    proxy.restore();
    let (_, stored) = write.await.unwrap();
    stored.unwrap();
    let row = store
        .range_fingerprint("t/0", 1, 0)
        .await
        .unwrap()
        .expect("the fingerprint is stored once the store is back");
    assert_eq!(row.fingerprint, fingerprint(Some(1), b"m0"));

    // A new member reading the same offset finds it and keeps the source;
    // another message at that offset is a new incarnation.
    let mut restarted = Incarnations::new(100);
    let same = restarted
        .source_for(&store, &telemetry, delay, &partition, 0, || {
            fingerprint(Some(1), b"m0")
        })
        .await
        .unwrap();
    assert_eq!(same.source.to_string(), "t/0");
    let mut after_recreation = Incarnations::new(100);
    let other = after_recreation
        .source_for(&store, &telemetry, delay, &partition, 0, || {
            fingerprint(Some(1), b"other")
        })
        .await
        .unwrap();
    assert_eq!(other.source.to_string(), "t/0#2");
    println!(
        "range fingerprints with the store unreachable: the lookup waited through \
         {failed_lookups} failed attempts and the write through {failed_writes}, both completed \
         when the store came back; a restarted member kept the incarnation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_in_traffic_inside_a_window() {
    let scenario = Scenario::new("faults_pause", demo_hours(3, 3_000));
    let (path, store, expected) = scenario.prepare(1_000, &ConfigOptions::default(), 2).await;
    // The stream cut in two halves: the first ends inside an hour.
    let lines: Vec<String> = std::fs::read_to_string(&scenario.stream)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let (first_half, second_half) = lines.split_at(lines.len() / 2);
    let last_time = |lines: &[String]| {
        lines
            .iter()
            .rev()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find_map(|value| value["timestamp"].as_i64())
            .expect("a timestamp")
    };
    let cut_window = last_time(first_half).div_euclid(3_600_000) * 3_600_000;
    let expected_in_cut = expected
        .iter()
        .find(|m| {
            m.key.window_start == cut_window
                && m.key.segment == "all"
                && m.key.feature == "prediction.score"
        })
        .expect("the cut window is expected")
        .metrics
        .count;
    let (first_file, second_file) = (
        scenario.directory.join("first.jsonl"),
        scenario.directory.join("second.jsonl"),
    );
    std::fs::write(&first_file, first_half.join("\n") + "\n").unwrap();
    std::fs::write(&second_file, second_half.join("\n") + "\n").unwrap();

    let log = scenario.directory.join("tidewatch.log");
    let process = TidewatchProcess::start(&path, &log, &[]);
    assert!(scenario
        .replay_file(&first_file, None)
        .wait()
        .unwrap()
        .success());
    // The pause: longer than `idle_close_after` (3 s), until the open cut
    // window is stored provisionally, short of what it will hold.
    let started = Instant::now();
    let provisional = loop {
        let stored = store
            .window_metrics(store::MetricsQuery {
                feature: Some("prediction.score".into()),
                segment: Some("all".into()),
                from_ms: Some(cut_window),
                to_ms: Some(cut_window + 1),
                ..Default::default()
            })
            .await
            .unwrap();
        if let Some(count) = stored.first().map(|m| m.metrics.count) {
            break count;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the cut window was never finalized during the pause; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let paused = started.elapsed();
    assert!(
        provisional < expected_in_cut,
        "the cut window was finalized with {provisional} of {expected_in_cut} during the pause"
    );
    assert!(scenario
        .replay_file(&second_file, None)
        .wait()
        .unwrap()
        .success());
    // One process read everything once: quality (labels joined in memory)
    // is compared too.
    wait_for_metrics(&store, &expected, Duration::from_secs(180)).await;
    let (stored, produced) = check_oracle(&store, &scenario).await;
    let peak = process.peak_rss_kib();
    assert!(process.terminate());
    println!(
        "pause: {} events; the stream paused inside window {cut_window} for {:.1} s (idle close \
         after 3 s), which was stored provisionally with {provisional} of {expected_in_cut} \
         predictions; after the rest arrived predictions stored {stored} of {produced}, and \
         {} series-windows (quality included) equal the in-process computation; peak RSS {peak} KiB",
        scenario.predictions + scenario.actuals,
        paused.as_secs_f64(),
        expected.len()
    );
}

/// Waits until every window holds the oracle's prediction count (stored
/// results; an idle close finalizes them provisionally).
async fn wait_for_predictions(store: &Store, scenario: &Scenario, timeout: Duration) {
    let expected: BTreeMap<i64, u64> = oracle(&scenario.stream)
        .into_iter()
        .map(|(window_start, window)| (window_start, window.predictions))
        .collect();
    let started = Instant::now();
    loop {
        let stored: BTreeMap<i64, u64> = store
            .window_metrics(store::MetricsQuery {
                feature: Some("prediction.score".into()),
                segment: Some("all".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.key.window_start, m.metrics.count))
            .collect();
        if stored == expected {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "predictions never all stored: {stored:?} of {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The labels joined so far over every window's `quality` series.
async fn labels_joined(store: &Store) -> u64 {
    store
        .window_metrics(store::MetricsQuery {
            feature: Some("quality".into()),
            segment: Some("all".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .filter_map(|m| m.metrics.quality.as_ref())
        .map(|quality| quality.matched)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_after_a_restart_and_after_a_kill_join_their_predictions() {
    let scenario = Scenario::new("faults_labels_restart", demo_hours(3, 3_000));
    // The labels arrive after every prediction, on the same topic (as a
    // deploy between them would see): their times moved 3 h later, so that
    // they follow the predictions in event time too.
    let (mut stream, mut labels) = (String::new(), String::new());
    for line in std::fs::read_to_string(&scenario.stream).unwrap().lines() {
        if !line.contains(r#""schema":"tidewatch.actual.v1""#) {
            stream.push_str(line);
            stream.push('\n');
            continue;
        }
        let mut label: serde_json::Value = serde_json::from_str(line).unwrap();
        label["timestamp"] = (label["timestamp"].as_i64().unwrap() + 3 * 3_600_000).into();
        labels.push_str(&label.to_string());
        labels.push('\n');
    }
    std::fs::write(&scenario.stream, stream + &labels).unwrap();
    let (path, store, expected) = scenario
        .prepare(1_000, &ConfigOptions::fast_takeover(), 3)
        .await;
    let (predictions, labels) = scenario.split_by_kind();
    let (first, second) = labels.split_at(labels.len() / 2);
    let (first, second) = (
        scenario.write_lines("labels-first.jsonl", first),
        scenario.write_lines("labels-second.jsonl", second),
    );
    let log = scenario.directory.join("tidewatch.log");
    // Every prediction read, stored and committed; then a deploy (SIGTERM).
    let process = TidewatchProcess::start(&path, &log, &[]);
    assert!(scenario
        .replay_file(&predictions, None)
        .wait()
        .unwrap()
        .success());
    wait_for_predictions(&store, &scenario, Duration::from_secs(120)).await;
    assert_eq!(labels_joined(&store).await, 0);
    assert!(
        process.terminate(),
        "the first process did not stop cleanly"
    );
    // The new process reads the first half of the labels and is killed at
    // a random moment while it does.
    let mut process = TidewatchProcess::start(&path, &log, &[]);
    process.wait_for_assignment(Duration::from_secs(60));
    let rate = (labels.len() / 2 / 4).max(1) as u32;
    let mut producer = scenario.replay_file(&first, Some(rate));
    let seed = seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let after = Duration::from_millis(rng.random_range(500..3_500));
    std::thread::sleep(after);
    let joined_at_kill = labels_joined(&store).await;
    process.kill();
    assert!(producer.wait().unwrap().success());
    // Restarted, it reads the rest.
    let process = TidewatchProcess::start(&path, &log, &[]);
    assert!(scenario
        .replay_file(&second, None)
        .wait()
        .unwrap()
        .success());
    wait_for_metrics(&store, &expected, Duration::from_secs(180)).await;
    let (stored, produced) = check_oracle(&store, &scenario).await;
    let joined = labels_joined(&store).await;
    assert!(process.terminate());
    println!(
        "labels after restarts (seed {seed}): {produced} predictions read and committed before a \
         SIGTERM restart; {} labels produced after it, a SIGKILL {:.1} s into the first half \
         ({joined_at_kill} joined by then), the second half after a restart: predictions stored \
         {stored} of {produced}, labels joined {joined} of {}, and {} series-windows (quality \
         included) equal the in-process computation",
        labels.len(),
        after.as_secs_f64(),
        labels.len(),
        expected.len()
    );
    assert_eq!(joined, labels.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_label_topic_read_by_two_instances() {
    let scenario = Scenario::new("faults_label_topic", demo_hours(3, 3_000));
    let options = ConfigOptions {
        label_topic_partitions: Some(3),
        ..ConfigOptions::fast_takeover()
    };
    let (path, store, expected) = scenario.prepare(1_000, &options, 4).await;
    let (predictions, labels) = scenario.split_by_kind();
    let labels_file = scenario.write_lines("labels.jsonl", &labels);
    let log = scenario.directory.join("tidewatch.log");
    let mut first = TidewatchProcess::start(&path, &log, &[]);
    first.wait_for_assignment(Duration::from_secs(60));
    let mut second = TidewatchProcess::start(&path, &log, &[]);
    second.wait_for_assignment(Duration::from_secs(60));
    // Both produced at once at one rate: the labels (fewer, later in event
    // time) run ahead of their predictions, so many are read before the
    // other instance has stored their prediction.
    let rate = (labels.len() / 6).max(1) as u32;
    let mut predictions_producer =
        scenario.replay_to(&predictions, &scenario.topic(), Some(rate), "json");
    let mut labels_producer =
        scenario.replay_to(&labels_file, &scenario.label_topic(), Some(rate), "json");
    assert!(predictions_producer.wait().unwrap().success());
    assert!(labels_producer.wait().unwrap().success());
    wait_for_metrics(&store, &expected, Duration::from_secs(240)).await;
    let (stored, produced) = check_oracle(&store, &scenario).await;
    let joined = labels_joined(&store).await;
    let peak = first.peak_rss_kib().max(second.peak_rss_kib());
    assert!(first.terminate());
    assert!(second.terminate());
    println!(
        "separate label topic: {produced} predictions on 4 partitions and {} labels on 3, read by \
         two instances: predictions stored {stored} of {produced}, labels joined {joined} of {}, \
         {} series-windows (quality included) equal the in-process computation; peak RSS {peak} KiB",
        labels.len(),
        labels.len(),
        expected.len()
    );
    assert_eq!(joined, labels.len() as u64);
}
