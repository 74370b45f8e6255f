//! End-to-end tests against a real Kafka-protocol broker and a real
//! ClickHouse server, both started by `scripts/test.sh`:
//!
//! - events produced with `tidewatch replay` become window aggregates in
//!   ClickHouse equal to the in-process computation on the same events (and
//!   to an independent count/mean oracle);
//! - a consumer killed mid-stream and restarted neither loses nor double counts;
//! - malformed messages land in the dead-letter topic with their reason;
//! - two consumers in one group produce, merged, the same aggregates as one;
//! - the same events as Protocol Buffers messages (from the Python producer
//!   example and from `tidewatch replay --encoding protobuf`), on a topic
//!   configured with `encoding = "protobuf"`, become the same aggregates.
//!
//! Without `TIDEWATCH_TEST_KAFKA_BROKERS` / `TIDEWATCH_TEST_CLICKHOUSE_URL`
//! the tests fail and say why.

mod common;

use std::time::{Duration, Instant};

use common::{
    check_oracle, header, small_shape, start_pipeline, wait_for_metrics, ConfigOptions, Scenario,
};
use rdkafka::Message;
use store::MetricsQuery;
use tidewatch::fixtures::DEMO_MODEL;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_events_become_the_in_process_aggregates_and_malformed_ones_are_dead_lettered() {
    let scenario = Scenario::new("replay", small_shape());
    let config = scenario.config(1_000);
    scenario.create_topics(3).await;
    let store = scenario.store_reference(&config).await;
    let expected = scenario.expected(&config).await;

    let status = scenario.replay(None).wait().unwrap();
    assert!(status.success(), "tidewatch replay failed");
    let (handle, stop) = start_pipeline(&config);
    wait_for_metrics(&store, &expected, Duration::from_secs(90)).await;

    // The independent oracle agrees on counts and means.
    let (stored_predictions, produced) = check_oracle(&store, &scenario).await;
    assert_eq!(stored_predictions, produced);
    let stored = store.window_metrics(MetricsQuery::default()).await.unwrap();
    let total: u64 = stored
        .iter()
        .filter(|m| m.key.segment == "all" && m.key.feature == "prediction.score")
        .map(|m| m.metrics.count)
        .sum();
    assert_eq!(total, scenario.predictions);
    let labels: u64 = stored
        .iter()
        .filter(|m| m.key.segment == "all" && m.key.feature == "actual.label")
        .map(|m| m.metrics.count)
        .sum();
    assert_eq!(labels, scenario.actuals);

    // The three malformed payloads are in the dead-letter topic, with reasons.
    let consumer = scenario.dead_letter_reader();
    let mut reasons = Vec::new();
    while reasons.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letters did not arrive")
            .unwrap();
        let header =
            |name: &str| header(&message, name).unwrap_or_else(|| panic!("header {name} missing"));
        assert_eq!(header("tidewatch-source-topic"), scenario.topic());
        assert!(header("tidewatch-source-offset").parse::<u64>().is_ok());
        assert!(message.payload().is_some_and(|p| !p.is_empty()));
        reasons.push(header("tidewatch-error"));
    }
    reasons.sort();
    assert!(
        reasons.iter().any(|r| r.contains("timestamp")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("EOF") || r.contains("invalid event json")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("a number, a string, a boolean or null")),
        "{reasons:?}"
    );

    stop.send(()).unwrap();
    let report = handle.await.unwrap().unwrap();
    assert_eq!(report.dead_lettered, 3);
    assert!(report.commits > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_and_restarted_neither_loses_nor_double_counts() {
    let scenario = Scenario::new("restart", small_shape());
    let config = scenario.config(700);
    scenario.create_topics(2).await;
    let store = scenario.store_reference(&config).await;
    let expected = scenario.expected(&config).await;

    // Produce slowly so the first consumer is killed while data still flows.
    let mut producer = scenario.replay(Some(600));
    let (first, _first_stop) = start_pipeline(&config);
    let started = Instant::now();
    // Wait until the first consumer has stored something, then kill it without a clean shutdown.
    loop {
        let windows = store
            .partial_windows(DEMO_MODEL, 0, i64::MAX / 2)
            .await
            .unwrap();
        if !windows.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first consumer never checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    first.abort();
    let _ = first.await;
    assert!(
        producer.try_wait().unwrap().is_none(),
        "the replay should still be running when the consumer dies"
    );

    let (second, second_stop) = start_pipeline(&config);
    assert!(producer.wait().unwrap().success());
    wait_for_metrics(&store, &expected, Duration::from_secs(120)).await;
    second_stop.send(()).unwrap();
    second.await.unwrap().unwrap();
    common::check_training_sample(&store, &scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_in_one_group_merge_to_the_single_consumer_result() {
    let scenario = Scenario::new("group", small_shape());
    let config = scenario.config(500);
    scenario.create_topics(4).await;
    let store = scenario.store_reference(&config).await;
    let expected = scenario.expected(&config).await;

    let mut producer = scenario.replay(Some(3_000));
    let (first, first_stop) = start_pipeline(&config);
    let (second, second_stop) = start_pipeline(&config);
    assert!(producer.wait().unwrap().success());
    wait_for_metrics(&store, &expected, Duration::from_secs(120)).await;
    first_stop.send(()).unwrap();
    second_stop.send(()).unwrap();
    let reports = [
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    ];
    assert!(
        reports.iter().all(|report| report.messages > 0),
        "both members of the group should have consumed: {reports:?}"
    );
    common::check_training_sample(&store, &scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_events_become_the_same_aggregates() {
    let scenario = Scenario::new("protobuf", small_shape());
    let options = ConfigOptions {
        encoding: "protobuf",
        ..Default::default()
    };
    let (config, _) = scenario.config_with(1_000, &options);
    scenario.create_topics(3).await;
    let store = scenario.store_reference(&config).await;
    let expected = scenario.expected(&config).await;

    // The first half of the stream from the Python producer example
    // (classes generated by protoc from the .proto, confluent-kafka), the
    // second half from `tidewatch replay --encoding protobuf`.
    let stream = std::fs::read_to_string(&scenario.stream).unwrap();
    let lines: Vec<&str> = stream.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let halves = [
        scenario.directory.join("first.jsonl"),
        scenario.directory.join("second.jsonl"),
    ];
    std::fs::write(&halves[0], first.join("\n")).unwrap();
    std::fs::write(&halves[1], second.join("\n")).unwrap();
    let python = std::env::var("TIDEWATCH_TEST_PRODUCER_PYTHON").expect(
        "TIDEWATCH_TEST_PRODUCER_PYTHON is not set: run the suite through scripts/test.sh, \
         which installs examples/python-producer/requirements.txt",
    );
    let output = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/python-producer/produce.py"
        ))
        .arg("--brokers")
        .arg(&scenario.brokers)
        .arg("--topic")
        .arg(scenario.topic())
        .arg(&halves[0])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the Python producer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = scenario
        .replay_encoded(&halves[1], None, "protobuf")
        .wait()
        .unwrap();
    assert!(
        status.success(),
        "tidewatch replay --encoding protobuf failed"
    );
    let (handle, stop) = start_pipeline(&config);
    wait_for_metrics(&store, &expected, Duration::from_secs(90)).await;
    let (stored_predictions, produced) = check_oracle(&store, &scenario).await;
    assert_eq!(stored_predictions, produced);

    // The stream's three malformed lines are sent as they are, JSON on a
    // protobuf topic: dead-lettered as invalid protobuf.
    let consumer = scenario.dead_letter_reader();
    for _ in 0..3 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letters did not arrive")
            .unwrap();
        let reason = header(&message, "tidewatch-error").unwrap();
        assert!(reason.contains("invalid event protobuf"), "{reason}");
    }
    stop.send(()).unwrap();
    let report = handle.await.unwrap().unwrap();
    assert_eq!(report.dead_lettered, 3);
}
