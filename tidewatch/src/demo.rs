//! `tidewatch demo`: the whole pipeline in one process, with no Kafka and
//! no ClickHouse. Generates the seeded fixture stream and training data,
//! builds the reference profile from the training CSV (through the same
//! arrow reader as `tidewatch reference build`), replays the stream through
//! the ingest engine into the embedded store, and prints the drift table.

use std::path::{Path, PathBuf};
use std::time::Instant;

use detectors::catalog::Catalog;
use detectors::metrics::DriftThresholds;
use detectors::spec::{FeatureKind, FeatureSpec, ModelSpec, Task};
use detectors::window::WindowSize;
use events::EventKind;
use ingest::dead_letter::DeadLetterSink;
use ingest::driver::{Driver, DriverSettings};
use ingest::engine::{Engine, EngineSettings};
use store::{embedded::EmbeddedStore, MetricsQuery, Store};

use crate::fixtures::{self, DemoShape, DEMO_MODEL, DEMO_VERSION};
use crate::report;

/// The demo model's spec (the same as `fixtures/tidewatch.example.toml`).
pub fn demo_spec() -> ModelSpec {
    let numeric = |name: &str| FeatureSpec {
        name: name.into(),
        kind: FeatureKind::Numeric,
    };
    let categorical = |name: &str| FeatureSpec {
        name: name.into(),
        kind: FeatureKind::Categorical,
    };
    ModelSpec::new(
        DEMO_MODEL,
        Task::Classification,
        vec![
            numeric("age"),
            numeric("tenure_months"),
            numeric("monthly_charges"),
            numeric("support_calls"),
            categorical("contract"),
            categorical("payment_method"),
        ],
        vec!["country".into()],
        50,
        100,
    )
    .expect("the demo spec is valid")
    .with_positive_class(Some("yes".into()))
    .with_multivariate(Some(detectors::spec::Multivariate::default()))
    .expect("the demo has several features")
}

/// Runs the default alert rules over the stored windows in time order and
/// returns one line per notification.
fn demo_alerts(metrics: &[store::WindowMetrics]) -> (Vec<String>, Vec<alerting::lifecycle::Alert>) {
    let mut evaluator =
        alerting::lifecycle::AlertEvaluator::new(alerting::rules::default_rules(&[]));
    let mut windows: std::collections::BTreeMap<i64, Vec<store::WindowMetrics>> =
        std::collections::BTreeMap::new();
    for record in metrics {
        windows
            .entry(record.key.window_start)
            .or_default()
            .push(record.clone());
    }
    let mut lines = Vec::new();
    let mut alerts = Vec::new();
    for (window_start, records) in windows {
        for alert in evaluator.evaluate(DEMO_MODEL, &records) {
            lines.push(format!(
                "{} UTC  {}  (id {})",
                report::format_time(window_start),
                alert.summary,
                alert.id
            ));
            alerts.push(alert);
        }
    }
    if lines.is_empty() {
        lines.push("none".into());
    }
    (lines, alerts)
}

/// The HTTP server's state over the demo's store (no token: read-only).
pub fn http_state(store: Store) -> crate::http::AppState {
    crate::http::AppState {
        store,
        models: vec![demo_spec()],
        window_ms: 3_600_000,
        token: None,
        telemetry: crate::http::Telemetry::default(),
        max_body_bytes: 1 << 20,
        max_connections: 256,
        request_timeout: std::time::Duration::from_secs(30),
        registry: None,
        mlflow_webhook_secret: None,
    }
}

/// What the demo produced.
pub struct DemoOutcome {
    /// The printed report.
    pub report: String,
    /// The store, for callers that keep serving it.
    pub store: Store,
    /// Where the files went.
    pub workdir: PathBuf,
}

/// Runs the demo in `workdir` (created; previous demo files replaced),
/// into the embedded store `workdir/tidewatch.db`.
pub async fn run(workdir: &Path, seed: u64, shape: DemoShape) -> anyhow::Result<DemoOutcome> {
    run_into(workdir, seed, shape, None).await
}

/// [`run`], into `store` when given (e.g. a ClickHouse store in tests)
/// instead of the embedded file.
pub async fn run_into(
    workdir: &Path,
    seed: u64,
    shape: DemoShape,
    store: Option<Store>,
) -> anyhow::Result<DemoOutcome> {
    let started = Instant::now();
    std::fs::create_dir_all(workdir)?;
    let stream_path = workdir.join("stream.jsonl");
    let training_path = workdir.join("train.csv");
    let dead_letter_path = workdir.join("dead-letters.jsonl");
    let database_path = workdir.join("tidewatch.db");
    for stale in [&dead_letter_path, &database_path] {
        let _ = std::fs::remove_file(stale);
    }
    let _ = std::fs::remove_file(workdir.join("tidewatch.db-wal"));
    let _ = std::fs::remove_file(workdir.join("tidewatch.db-shm"));

    let generated = fixtures::generate(shape, seed);
    std::fs::write(&stream_path, &generated.stream)?;
    std::fs::write(&training_path, &generated.training_csv)?;

    let spec = demo_spec();
    let training = {
        let spec = spec.clone();
        let path = training_path.clone();
        tokio::task::spawn_blocking(move || {
            crate::training::build_reference(&spec, DEMO_VERSION, &path)
        })
        .await??
    };
    let store = match store {
        Some(store) => store,
        None => Store::new(EmbeddedStore::open(&database_path).await?),
    };
    store
        .put_reference(&training.profile, ingest::finalize::now_millis())
        .await?;

    let engine = Engine::new(
        EngineSettings::new(WindowSize::from_millis(3_600_000)?),
        Catalog::new([spec.clone()]),
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
    .await?;
    let mut dead_letters = DeadLetterSink::file(&dead_letter_path)?;
    let replay = ingest::file::replay_into(
        &mut driver,
        &stream_path,
        EventKind::Prediction,
        &mut dead_letters,
    )
    .await?;

    let metrics = store
        .window_metrics(MetricsQuery {
            model: Some(DEMO_MODEL.into()),
            ..Default::default()
        })
        .await?;
    let series: Vec<String> = spec
        .series()
        .map(|s| s.name.clone())
        .filter(|name| {
            !matches!(
                name.as_str(),
                "latency_ms" | "operations" | "quality" | "estimated_quality" | "multivariate"
            )
        })
        .collect();
    let counters = driver.engine().counters().clone();
    let mut out = String::new();
    out.push_str(&format!(
        "Tidewatch demo: model {DEMO_MODEL} v{DEMO_VERSION}, 1h windows, reference {} ({} rows)\n",
        training.profile.source, training.profile.row_count
    ));
    out.push_str(&format!(
        "replayed {} lines ({} predictions, {} actuals): {} recorded, {} late, {} dead-lettered to {}\n\n",
        replay.lines,
        generated.predictions,
        generated.actuals,
        counters.recorded,
        counters.late,
        replay.dead_lettered,
        dead_letter_path.display()
    ));
    out.push_str(
        "PSI against the training reference per window (segment `all`); * = drifted by the default verdict (auto: KS or chi-square p-values on windows this size)\n",
    );
    out.push_str(&report::drift_table(&metrics, "all", &series));
    out.push_str(
        "\nPerformance estimated from the scores when each window closed (CBPE; ! = outside the band), \
         and realized once its labels joined\n",
    );
    out.push_str(&report::estimated_table(&metrics, "all"));
    out.push_str(
        "\nMultivariate drift: mean error of reconstructing each row from the reference's principal \
         components (! = outside the band)\n",
    );
    out.push_str(&report::multivariate_table(&metrics, "all"));
    out.push_str("\nModel quality per window (predictions joined with their delayed actuals)\n");
    out.push_str(&report::quality_table(&metrics, "all"));
    out.push_str(
        "\nAlerts (default rules: drift on >= 3 series, accuracy 0.05 below its first 3 windows)\n",
    );
    let (alert_lines, alerts) = demo_alerts(&metrics);
    let created_at = ingest::finalize::now_millis();
    store
        .record_alerts(
            alerts
                .iter()
                .map(|alert| (alert.to_record(created_at), alert.channels.clone()))
                .collect(),
        )
        .await?;
    for line in alert_lines {
        out.push_str(&line);
        out.push('\n');
    }
    match report::drift_onset(&metrics, "all") {
        Some((start, features)) => out.push_str(&format!(
            "\ndrift onset: window {} UTC, in {}\n",
            report::format_time(start),
            features.join(", ")
        )),
        None => out.push_str("\nno drift detected\n"),
    }
    out.push_str(&format!(
        "{} windows finalized into {} in {:.1} s\n",
        replay.finalized.windows.len(),
        database_path.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(DemoOutcome {
        report: out,
        store,
        workdir: workdir.to_owned(),
    })
}
