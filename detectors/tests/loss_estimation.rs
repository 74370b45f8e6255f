//! Direct loss estimation in the streaming path: a regression model's
//! reference, built from training rows with predictions and targets, holds
//! the error models; every prediction's expected errors go into its
//! window's `estimated_quality` series at ingest; each window reports
//! estimated MAE and RMSE with their bands, before any target arrives.
//!
//! The stream: the model predicts the mean exactly and the noise grows with
//! |x1|; from the sixth window on x1 moves up (covariate shift), so the
//! errors grow and the estimate must follow.

use std::borrow::Cow;

use detectors::aggregate::WindowAggregates;
use detectors::catalog::Catalog;
use detectors::estimation::PerformanceMetric;
use detectors::loss_estimation::{LossModel, LossSum};
use detectors::metrics::{compute, DriftThresholds};
use detectors::reconstruction::Input;
use detectors::reference::{FeatureReference, ReferenceBuilder, TrainingValue};
use detectors::sketch::FeatureSketch;
use detectors::spec::{
    FeatureKind, FeatureSpec, ModelSpec, Task, ACTUAL_LABEL, ESTIMATED_QUALITY, PREDICTION_SCORE,
};
use events::{Event, EventKind, FeatureValue, PredictionOutput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

struct Row {
    x1: f64,
    x2: f64,
    plan: &'static str,
    prediction: f64,
    target: f64,
}

fn row(rng: &mut StdRng, x1_mean: f64) -> Row {
    let normal = |rng: &mut StdRng| -> f64 { StandardNormal.sample(rng) };
    let x1 = x1_mean + normal(rng);
    let x2 = normal(rng);
    let pro = rng.random::<f64>() < 0.3;
    let prediction = 3.0 * x1 + 2.0 * x2 + if pro { 1.5 } else { 0.0 };
    let spread = 0.5 + x1.abs() + if pro { 0.5 } else { 0.0 };
    Row {
        x1,
        x2,
        plan: if pro { "pro" } else { "basic" },
        prediction,
        target: prediction + normal(rng) * spread,
    }
}

fn spec() -> ModelSpec {
    let feature = |name: &str, kind| FeatureSpec {
        name: name.into(),
        kind,
    };
    ModelSpec::new(
        "price",
        Task::Regression,
        vec![
            feature("x1", FeatureKind::Numeric),
            feature("x2", FeatureKind::Numeric),
            feature("plan", FeatureKind::Categorical),
        ],
        vec![],
        10,
        50,
    )
    .unwrap()
    .with_loss_estimation(true)
    .unwrap()
}

fn event(row: &Row, timestamp_ms: i64) -> Event<'static> {
    Event {
        kind: EventKind::Prediction,
        model: Cow::Borrowed("price"),
        model_version: Cow::Borrowed("1"),
        prediction_id: None,
        timestamp_ms,
        features: vec![
            (Cow::Borrowed("x1"), FeatureValue::Number(row.x1)),
            (Cow::Borrowed("x2"), FeatureValue::Number(row.x2)),
            (
                Cow::Borrowed("plan"),
                FeatureValue::Text(Cow::Borrowed(row.plan)),
            ),
        ],
        prediction: Some(PredictionOutput {
            score: Some(row.prediction),
            ..PredictionOutput::default()
        }),
        latency_ms: None,
        segments: vec![],
        label: None,
        error: None,
    }
}

#[test]
fn estimated_mae_and_rmse_follow_a_covariate_shift_before_any_target() {
    const HOUR: i64 = 3_600_000;
    const WINDOW_ROWS: usize = 3_000;
    let spec = spec();
    let mut rng = StdRng::seed_from_u64(5);
    let training: Vec<Row> = (0..20_000).map(|_| row(&mut rng, 0.0)).collect();
    // Fed as record batches arrive: column by column.
    let mut builder = ReferenceBuilder::new(&spec, "1", "test");
    for batch in training.chunks(4096) {
        batch.iter().for_each(|_| builder.add_row());
        for (name, value) in [
            (
                "x1",
                (|r: &Row| TrainingValue::Number(r.x1)) as fn(&Row) -> TrainingValue<'_>,
            ),
            ("x2", |r| TrainingValue::Number(r.x2)),
            ("plan", |r| TrainingValue::Text(r.plan)),
            (PREDICTION_SCORE, |r| TrainingValue::Number(r.prediction)),
            (ACTUAL_LABEL, |r| TrainingValue::Number(r.target)),
        ] {
            for row in batch {
                builder.add(name, value(row));
            }
        }
    }
    let profile = builder.build().unwrap();
    let model: LossModel = match profile.features.get(ESTIMATED_QUALITY) {
        Some(FeatureReference::Loss(model)) => (**model).clone(),
        other => panic!("no loss model in the profile: {other:?}"),
    };
    assert_eq!(model.reference_rows, 20_000);
    let mut catalog = Catalog::new([spec.clone()]);
    catalog.set_reference(profile.clone()).unwrap();

    let mut aggregates = WindowAggregates::new(1_000);
    for window in 0..10i64 {
        let shifted = window >= 5;
        let rows: Vec<Row> = (0..WINDOW_ROWS)
            .map(|_| row(&mut rng, if shifted { 1.0 } else { 0.0 }))
            .collect();
        for (i, row) in rows.iter().enumerate() {
            aggregates.record(
                &catalog,
                window * HOUR,
                &event(row, window * HOUR + i as i64),
            );
        }
        // The oracle: the same model over the same rows, offline.
        let inputs: Vec<Vec<Input<'_>>> = rows
            .iter()
            .map(|r| {
                vec![
                    Input::Number(r.x1),
                    Input::Number(r.x2),
                    Input::Category(r.plan),
                ]
            })
            .collect();
        let borrowed: Vec<&[Input<'_>]> = inputs.iter().map(Vec::as_slice).collect();
        let predictions: Vec<f64> = rows.iter().map(|r| r.prediction).collect();
        let mut oracle = LossSum::default();
        for (absolute, squared) in model.predict(&borrowed, &predictions) {
            oracle.add(absolute, squared);
        }
        let expected = model.estimate(&oracle);

        let snapshot = aggregates.snapshot(&catalog);
        let (_, sketch) = snapshot
            .iter()
            .find(|(key, _)| key.window_start == window * HOUR && key.feature == ESTIMATED_QUALITY)
            .expect("the window has the series");
        assert!(matches!(sketch, FeatureSketch::EstimatedLoss(_)));
        let metrics = compute(
            sketch,
            profile.features.get(ESTIMATED_QUALITY),
            DriftThresholds::default(),
        );
        assert_eq!(metrics.count, WINDOW_ROWS as u64);
        let realized_mae = rows
            .iter()
            .map(|r| (r.target - r.prediction).abs())
            .sum::<f64>()
            / WINDOW_ROWS as f64;
        for (metric, oracle) in [PerformanceMetric::Mae, PerformanceMetric::Rmse]
            .into_iter()
            .zip(&expected)
        {
            let estimate = metrics
                .estimated
                .iter()
                .find(|e| e.metric == metric)
                .unwrap_or_else(|| panic!("window {window}: no {metric:?}"));
            assert!(
                (estimate.value - oracle.value).abs() <= 1e-9 * oracle.value,
                "window {window} {metric:?}: {} at ingest, {} offline",
                estimate.value,
                oracle.value
            );
            assert_eq!(
                estimate.alert, shifted,
                "window {window} {metric:?}: {estimate:?}"
            );
        }
        let mae = metrics.estimated[0].value;
        assert!(
            (mae - realized_mae).abs() < 0.05 * realized_mae,
            "window {window}: MAE estimated {mae}, realized {realized_mae}"
        );
    }
}
