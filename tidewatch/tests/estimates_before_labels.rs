//! Performance estimated before the labels, end to end, for the models
//! the binary CBPE of the demo does not cover: a regression model
//! (`loss_estimation = true`) and a multiclass classifier (`classes`). Each
//! `[[models]]` entry is parsed from TOML, its reference built from a
//! training CSV by the same reader as `tidewatch reference build`,
//! prediction events replayed through the ingest engine into the embedded
//! store; no label is ever sent. The stored windows carry the estimates
//! with their bands, flagged from the window where the inputs shift.

use std::fmt::Write as _;

use detectors::catalog::Catalog;
use detectors::estimation::PerformanceMetric;
use detectors::metrics::DriftThresholds;
use detectors::window::WindowSize;
use events::EventKind;
use ingest::dead_letter::DeadLetterSink;
use ingest::driver::{Driver, DriverSettings};
use ingest::engine::{Engine, EngineSettings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use store::{embedded::EmbeddedStore, MetricsQuery, Store};

const START_MS: i64 = 1_767_571_200_000;
const HOUR: i64 = 3_600_000;

/// (x1, x2, plan, prediction, target): the noise grows with |x1|.
fn row(rng: &mut StdRng, x1_mean: f64) -> (f64, f64, &'static str, f64, f64) {
    let mut normal = || -> f64 { StandardNormal.sample(&mut *rng) };
    let (x1, x2, noise) = (x1_mean + normal(), normal(), normal());
    let pro = rng.random::<f64>() < 0.3;
    let prediction = 3.0 * x1 + 2.0 * x2 + if pro { 1.5 } else { 0.0 };
    let spread = 0.5 + x1.abs() + if pro { 0.5 } else { 0.0 };
    (
        x1,
        x2,
        if pro { "pro" } else { "basic" },
        prediction,
        prediction + noise * spread,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimated_mae_is_stored_per_window_and_flags_the_shift_without_targets() {
    let directory = std::env::temp_dir().join(format!(
        "tidewatch-regression-estimate-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let raw: detectors::config::RawModel = toml::from_str(
        r#"
name = "price"
task = "regression"
loss_estimation = true
features = [
  { name = "x1", kind = "numeric" },
  { name = "x2", kind = "numeric" },
  { name = "plan", kind = "categorical" },
]
"#,
    )
    .unwrap();
    let spec = raw.validate().unwrap();

    let mut rng = StdRng::seed_from_u64(9);
    let mut training = String::from("x1,x2,plan,prediction.score,actual.label\n");
    for _ in 0..20_000 {
        let (x1, x2, plan, prediction, target) = row(&mut rng, 0.0);
        let _ = writeln!(training, "{x1},{x2},{plan},{prediction},{target}");
    }
    // Six hours of predictions, 2,000 an hour; x1 moves up from hour 3.
    let mut stream = String::new();
    for hour in 0..6i64 {
        for index in 0..2_000i64 {
            let (x1, x2, plan, prediction, _) = row(&mut rng, if hour >= 3 { 1.0 } else { 0.0 });
            let _ = writeln!(
                stream,
                r#"{{"schema":"tidewatch.prediction.v1","model":"price","model_version":"1","prediction_id":"p{hour}-{index}","timestamp":{},"features":{{"x1":{x1},"x2":{x2},"plan":"{plan}"}},"prediction":{{"score":{prediction}}}}}"#,
                START_MS + hour * HOUR + index * HOUR / 2_000
            );
        }
    }
    let rows = replay(&directory, spec, training, stream).await;
    assert_eq!(rows.len(), 6, "{rows:#?}");
    for record in &rows {
        let hour = (record.key.window_start - START_MS) / HOUR;
        assert_eq!(record.metrics.count, 2_000);
        for metric in [PerformanceMetric::Mae, PerformanceMetric::Rmse] {
            let estimate = record
                .metrics
                .estimated
                .iter()
                .find(|e| e.metric == metric)
                .unwrap_or_else(|| panic!("hour {hour}: no {metric:?}: {record:#?}"));
            assert!(estimate.sampling_error.is_some() && estimate.upper_threshold.is_some());
            assert_eq!(estimate.alert, hour >= 3, "hour {hour}: {estimate:?}");
        }
    }
    let mae = |hour: usize| rows[hour].metrics.estimated[0].value;
    assert!(
        mae(4) > 1.2 * mae(1),
        "the estimated MAE rises with the shift: {} then {}",
        mae(1),
        mae(4)
    );
    let _ = std::fs::remove_dir_all(&directory);
}

/// Builds `spec`'s reference from `training` (CSV text), replays `stream`
/// (JSON lines) through the ingest engine into an embedded store in
/// `directory`, and returns the stored `estimated_quality` windows.
async fn replay(
    directory: &std::path::Path,
    spec: detectors::spec::ModelSpec,
    training: String,
    stream: String,
) -> Vec<store::WindowMetrics> {
    let training_path = directory.join("train.csv");
    std::fs::write(&training_path, training).unwrap();
    let profile = {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || {
            tidewatch::training::build_reference(&spec, "1", &training_path)
        })
        .await
        .unwrap()
        .unwrap()
        .profile
    };
    let stream_path = directory.join("stream.jsonl");
    std::fs::write(&stream_path, stream).unwrap();
    let store = Store::new(
        EmbeddedStore::open(&directory.join("tidewatch.db"))
            .await
            .unwrap(),
    );
    store.put_reference(&profile, 1).await.unwrap();
    let mut catalog = Catalog::new([spec]);
    catalog.set_reference(profile).unwrap();
    let engine = Engine::new(
        EngineSettings::new(WindowSize::from_millis(HOUR).unwrap()),
        catalog,
    );
    let settings = DriverSettings {
        thresholds: DriftThresholds::default(),
        warmup_windows: 0,
        store_retry_max_delay: std::time::Duration::from_secs(5),
        pending_label_retry: std::time::Duration::ZERO,
    };
    let mut driver = Driver::new(
        engine,
        store.clone(),
        settings,
        ingest::telemetry::Telemetry::default(),
    )
    .await
    .unwrap();
    let mut dead_letters = DeadLetterSink::file(&directory.join("dead-letters.jsonl")).unwrap();
    let replay = ingest::file::replay_into(
        &mut driver,
        &stream_path,
        EventKind::Prediction,
        &mut dead_letters,
    )
    .await
    .unwrap();
    assert_eq!(replay.dead_lettered, 0);

    store
        .window_metrics(MetricsQuery {
            feature: Some("estimated_quality".into()),
            segment: Some("all".into()),
            ..Default::default()
        })
        .await
        .unwrap()
}

fn softmax(logits: [f64; 3]) -> [f64; 3] {
    let max = logits.iter().copied().fold(f64::MIN, f64::max);
    let e = logits.map(|l| (l - max).exp());
    let sum: f64 = e.iter().sum();
    e.map(|v| v / sum)
}

/// A three-class row: (x1, the model's probabilities, predicted, true
/// class); the model is overconfident (its logits doubled).
fn class_row(rng: &mut StdRng, shifted: bool) -> (f64, [f64; 3], usize, usize) {
    let mut normal = || -> f64 { StandardNormal.sample(&mut *rng) };
    let (x1, x2) = if shifted {
        (0.5 + 0.6 * normal(), 0.3 + 0.7 * normal())
    } else {
        (normal(), normal())
    };
    let logits = [0.0, 1.2 * x1 - 0.5 * x2, -x1 + x2 + 0.3];
    let truth = softmax(logits);
    let draw: f64 = rng.random();
    let label = usize::from(draw >= truth[0]) + usize::from(draw >= truth[0] + truth[1]);
    let probabilities = softmax(logits.map(|l| 2.0 * l));
    let predicted = (0..3)
        .max_by(|a, b| probabilities[*a].total_cmp(&probabilities[*b]))
        .unwrap();
    (x1, probabilities, predicted, label)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiclass_macro_estimates_are_stored_per_window_and_flag_the_shift_without_labels() {
    let directory = std::env::temp_dir().join(format!(
        "tidewatch-multiclass-estimate-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let raw: detectors::config::RawModel = toml::from_str(
        r#"
name = "tier"
task = "classification"
classes = ["gold", "silver", "bronze"]
features = [{ name = "x1", kind = "numeric" }]
"#,
    )
    .unwrap();
    let spec = raw.validate().unwrap();
    // Sorted class order, as the model keeps it.
    let names = ["bronze", "gold", "silver"];
    let mut rng = StdRng::seed_from_u64(21);
    let mut training = String::from(
        "x1,prediction.probability.bronze,prediction.probability.gold,prediction.probability.silver,prediction.class,actual.label\n",
    );
    for _ in 0..30_000 {
        let (x1, p, predicted, label) = class_row(&mut rng, false);
        let _ = writeln!(
            training,
            "{x1},{},{},{},{},{}",
            p[0], p[1], p[2], names[predicted], names[label]
        );
    }
    let mut stream = String::new();
    for hour in 0..6i64 {
        for index in 0..3_000i64 {
            let (x1, p, predicted, _) = class_row(&mut rng, hour >= 3);
            let _ = writeln!(
                stream,
                r#"{{"schema":"tidewatch.prediction.v1","model":"tier","model_version":"1","prediction_id":"p{hour}-{index}","timestamp":{},"features":{{"x1":{x1}}},"prediction":{{"class":"{}","probabilities":{{"bronze":{},"gold":{},"silver":{}}}}}}}"#,
                START_MS + hour * HOUR + index * HOUR / 3_000,
                names[predicted],
                p[0],
                p[1],
                p[2]
            );
        }
    }
    let rows = replay(&directory, spec, training, stream).await;
    assert_eq!(rows.len(), 6, "{rows:#?}");
    for record in &rows {
        let hour = (record.key.window_start - START_MS) / HOUR;
        assert_eq!(record.metrics.count, 3_000);
        for metric in [PerformanceMetric::Accuracy, PerformanceMetric::F1] {
            let estimate = record
                .metrics
                .estimated
                .iter()
                .find(|e| e.metric == metric)
                .unwrap_or_else(|| panic!("hour {hour}: no {metric:?}: {record:#?}"));
            assert!(estimate.sampling_error.is_some() && estimate.lower_threshold.is_some());
            assert_eq!(estimate.alert, hour >= 3, "hour {hour}: {estimate:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&directory);
}
