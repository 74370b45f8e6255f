//! The file replay path end to end on the embedded store: warm-up
//! references and idempotent re-runs.

use std::io::Write;

use detectors::catalog::Catalog;
use detectors::metrics::DriftThresholds;
use detectors::spec::{FeatureKind, FeatureSpec, ModelSpec, Task};
use detectors::window::WindowSize;
use events::EventKind;
use ingest::dead_letter::DeadLetterSink;
use ingest::driver::{Driver, DriverSettings};
use ingest::engine::{Engine, EngineSettings};
use store::{MetricsQuery, Store};

const WINDOW_MS: i64 = 60_000;

fn engine() -> Engine {
    let spec = ModelSpec::new(
        "m",
        Task::Regression,
        vec![FeatureSpec {
            name: "x".into(),
            kind: FeatureKind::Numeric,
        }],
        vec![],
        10,
        10,
    )
    .unwrap();
    Engine::new(
        EngineSettings::new(WindowSize::from_millis(WINDOW_MS).unwrap())
            .with_allowed_lateness(std::time::Duration::ZERO)
            .with_range_size(150.try_into().unwrap())
            .with_max_groups(1_000.try_into().unwrap()),
        Catalog::new([spec]),
    )
}

/// Six one-minute windows of 400 events; x is uniform on [0, 1) in the
/// first five and on [0.5, 1.5) in the last.
fn write_stream(directory: &std::path::Path) -> std::path::PathBuf {
    let path = directory.join("stream.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    for window in 0..6i64 {
        for i in 0..400i64 {
            let x = (i * 7919 % 400) as f64 / 400.0 + if window == 5 { 0.5 } else { 0.0 };
            writeln!(
                file,
                r#"{{"model":"m","model_version":"1","prediction_id":"{window}-{i}","timestamp":{},"features":{{"x":{x}}},"prediction":{{"score":{x}}}}}"#,
                window * WINDOW_MS + i * 100
            )
            .unwrap();
        }
    }
    path
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let directory =
        std::env::temp_dir().join(format!("tidewatch-ingest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

async fn replay(
    store: &Store,
    path: &std::path::Path,
    warmup_windows: usize,
    directory: &std::path::Path,
) -> ingest::file::FileReport {
    let settings = DriverSettings {
        thresholds: DriftThresholds::default(),
        warmup_windows,
        store_retry_max_delay: std::time::Duration::from_secs(1),
        pending_label_retry: std::time::Duration::ZERO,
    };
    let mut driver = Driver::new(engine(), store.clone(), settings, Default::default())
        .await
        .unwrap();
    let mut dead_letters = DeadLetterSink::file(&directory.join("dead.jsonl")).unwrap();
    let report =
        ingest::file::replay_into(&mut driver, path, EventKind::Prediction, &mut dead_letters)
            .await
            .unwrap();
    assert_eq!(report.finalized.windows.len(), 6);
    report
}

/// Every stored window of the series `x`.
async fn series_x(store: &Store) -> Vec<store::WindowMetrics> {
    store
        .window_metrics(MetricsQuery {
            feature: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn the_first_windows_become_the_reference_when_none_is_stored() {
    let directory = temp_dir("warmup");
    let path = write_stream(&directory);
    let store = Store::in_memory().unwrap();
    assert_eq!(replay(&store, &path, 2, &directory).await.lines, 2_400);

    let reference = store
        .reference("m", "1")
        .await
        .unwrap()
        .expect("a warm-up reference was stored");
    assert_eq!(reference.source, "warmup:2 windows");
    let metrics = series_x(&store).await;
    let psi: Vec<Option<f64>> = metrics.iter().map(|m| m.metrics.psi).collect();
    let drifted: Vec<Option<bool>> = metrics.iter().map(|m| m.metrics.drifted).collect();
    assert_eq!(psi[0], None, "warm-up windows have no reference");
    assert_eq!(psi[1], None);
    // Window 2 opened before window 1 closed, i.e. before the reference
    // existed, so it has no reference bins; windows opened later do.
    assert_eq!(psi[2], None);
    for window in [3, 4] {
        assert!(
            psi[window].unwrap() < 0.05,
            "same distribution as the warm-up: {psi:?}"
        );
        assert_eq!(drifted[window], Some(false));
    }
    assert_eq!(drifted[5], Some(true), "shifted by half its range: {psi:?}");
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn replaying_the_same_file_twice_does_not_double_count() {
    let directory = temp_dir("twice");
    let path = write_stream(&directory);
    let store = Store::in_memory().unwrap();
    replay(&store, &path, 0, &directory).await;
    let first = store.window_metrics(MetricsQuery::default()).await.unwrap();
    replay(&store, &path, 0, &directory).await;
    let second = store.window_metrics(MetricsQuery::default()).await.unwrap();
    assert_eq!(first.len(), second.len());
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.key, b.key);
        assert_eq!(a.metrics.count, b.metrics.count);
        assert_eq!(a.metrics.mean, b.metrics.mean);
    }
    assert!(first
        .iter()
        .filter(|m| m.key.feature == "x")
        .all(|m| m.metrics.count == 400));
    assert_eq!(first.iter().filter(|m| m.key.feature == "x").count(), 6);
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_line_over_the_limit_is_dead_lettered_and_the_rest_counted() {
    let directory = temp_dir("long-line");
    let clean = write_stream(&directory);
    let text = std::fs::read_to_string(&clean).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // 17 MiB of one prediction's features, past the 16 MiB line limit,
    // between two windows' events.
    let long = format!(
        r#"{{"model":"m","model_version":"1","prediction_id":"long","timestamp":1,"features":{{"x":0.5,"pad":"{}"}},"prediction":{{"score":1}}}}"#,
        "a".repeat(17 << 20)
    );
    let path = directory.join("with-long-line.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for (index, line) in lines.iter().enumerate() {
        if index == 1_000 {
            writeln!(file, "{long}").unwrap();
        }
        writeln!(file, "{line}").unwrap();
    }
    file.flush().unwrap();
    drop(file);

    let store = Store::in_memory().unwrap();
    let report = replay(&store, &path, 0, &directory).await;
    assert_eq!(report.lines, 2_401);
    assert_eq!(report.dead_lettered, 1);
    let dead = std::fs::read_to_string(directory.join("dead.jsonl")).unwrap();
    let letters: Vec<serde_json::Value> = dead
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(letters.len(), 1);
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("longer than the 16777216-byte limit"),
        "{reason}"
    );
    let metrics = series_x(&store).await;
    let counts: Vec<u64> = metrics.iter().map(|m| m.metrics.count).collect();
    assert_eq!(counts, vec![400; 6], "the long line counted nowhere");
    let _ = std::fs::remove_dir_all(&directory);
}
