//! Regression performance estimated before the targets, end to end: a
//! `[[models]]` entry with `loss_estimation = true`, its reference built from
//! a training CSV (inputs, `prediction.score`, `actual.label`) by the same
//! reader as `tidewatch reference build`, prediction events replayed
//! through the ingest engine into the embedded store; no target is ever
//! sent. The stored windows carry estimated MAE and RMSE with their bands,
//! flagged from the window where the inputs move into the region where the
//! model errs more.

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

    let rows = store
        .window_metrics(MetricsQuery {
            model: Some("price".into()),
            feature: Some("estimated_quality".into()),
            segment: Some("all".into()),
            ..Default::default()
        })
        .await
        .unwrap();
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
