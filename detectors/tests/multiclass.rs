//! Multiclass CBPE in the streaming path: a classifier with `classes`, its
//! reference built from training rows with each class's probability, the
//! predicted and the true class; every prediction's class probabilities
//! calibrated once at ingest into its window's sums; each window reports
//! macro accuracy, precision, recall, F1 and ROC AUC with their bands,
//! before any label arrives.
//!
//! The oracle is the same model's row-level estimate
//! ([`MulticlassCbpe::estimate`], equal to NannyML's in
//! `tidewatch/tests/analyze.rs`) over the same rows.

use std::borrow::Cow;

use detectors::aggregate::WindowAggregates;
use detectors::catalog::Catalog;
use detectors::estimation::PerformanceMetric;
use detectors::metrics::{compute, DriftThresholds};
use detectors::multiclass::{realized, MulticlassCbpe};
use detectors::reference::{FeatureReference, ReferenceBuilder, TrainingValue};
use detectors::spec::{
    FeatureKind, FeatureSpec, ModelSpec, Task, ACTUAL_LABEL, ESTIMATED_QUALITY, PREDICTION_CLASS,
};
use events::{Event, EventKind, FeatureValue, PredictionOutput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const CLASSES: [&str; 3] = ["a", "b", "c"];

struct Row {
    x1: f64,
    probabilities: [f64; 3],
    predicted: usize,
    label: usize,
}

fn softmax(logits: [f64; 3]) -> [f64; 3] {
    let max = logits.iter().copied().fold(f64::MIN, f64::max);
    let e = logits.map(|l| (l - max).exp());
    let sum: f64 = e.iter().sum();
    e.map(|v| v / sum)
}

/// Three classes whose true probabilities are a softmax of the inputs; the
/// model's probabilities are the same logits doubled (overconfident).
fn row(rng: &mut StdRng, shifted: bool) -> Row {
    let (x1, x2) = if shifted {
        (
            Normal::new(0.5, 0.6).unwrap().sample(rng),
            Normal::new(0.3, 0.7).unwrap().sample(rng),
        )
    } else {
        (
            Normal::new(0.0, 1.0).unwrap().sample(rng),
            Normal::new(0.0, 1.0).unwrap().sample(rng),
        )
    };
    let logits = [0.0, 1.2 * x1 - 0.5 * x2, -x1 + x2 + 0.3];
    let truth = softmax(logits);
    let draw: f64 = rng.random();
    let label = if draw < truth[0] {
        0
    } else if draw < truth[0] + truth[1] {
        1
    } else {
        2
    };
    let probabilities = softmax(logits.map(|l| 2.0 * l));
    let predicted = (0..3)
        .max_by(|a, b| probabilities[*a].total_cmp(&probabilities[*b]))
        .unwrap();
    Row {
        x1,
        probabilities,
        predicted,
        label,
    }
}

fn event(row: &Row, timestamp_ms: i64) -> Event<'static> {
    Event {
        kind: EventKind::Prediction,
        model: Cow::Borrowed("tier"),
        model_version: Cow::Borrowed("1"),
        prediction_id: None,
        timestamp_ms,
        features: vec![(Cow::Borrowed("x1"), FeatureValue::Number(row.x1))],
        prediction: Some(PredictionOutput {
            score: None,
            class: Some(Cow::Borrowed(CLASSES[row.predicted])),
            probabilities: CLASSES
                .iter()
                .zip(row.probabilities)
                .map(|(class, p)| (Cow::Borrowed(*class), p))
                .collect(),
        }),
        latency_ms: None,
        segments: vec![],
        label: None,
        error: None,
    }
}

#[test]
fn macro_estimates_at_ingest_equal_the_row_level_estimate_and_flag_the_shift() {
    const HOUR: i64 = 3_600_000;
    const WINDOW_ROWS: usize = 5_000;
    let spec = ModelSpec::new(
        "tier",
        Task::Classification,
        vec![FeatureSpec {
            name: "x1".into(),
            kind: FeatureKind::Numeric,
        }],
        vec![],
        10,
        50,
    )
    .unwrap()
    .with_classes(Some(CLASSES.map(String::from).to_vec()))
    .unwrap();
    let mut rng = StdRng::seed_from_u64(12);
    let training: Vec<Row> = (0..50_000).map(|_| row(&mut rng, false)).collect();
    let mut builder = ReferenceBuilder::new(&spec, "1", "test");
    for batch in training.chunks(4096) {
        batch.iter().for_each(|_| builder.add_row());
        for row in batch {
            builder.add("x1", TrainingValue::Number(row.x1));
        }
        for (c, class) in CLASSES.iter().enumerate() {
            let column = format!("prediction.probability.{class}");
            for row in batch {
                assert!(builder.add(&column, TrainingValue::Number(row.probabilities[c])));
            }
        }
        for row in batch {
            builder.add(
                PREDICTION_CLASS,
                TrainingValue::Text(CLASSES[row.predicted]),
            );
        }
        for row in batch {
            builder.add(ACTUAL_LABEL, TrainingValue::Text(CLASSES[row.label]));
        }
    }
    let profile = builder.build().unwrap();
    let model: MulticlassCbpe = match profile.features.get(ESTIMATED_QUALITY) {
        Some(FeatureReference::Multiclass(model)) => (**model).clone(),
        other => panic!("no multiclass estimator in the profile: {other:?}"),
    };
    assert!(
        model.calibrators.iter().all(Option::is_some),
        "overconfident probabilities are calibrated"
    );
    let mut catalog = Catalog::new([spec.clone()]);
    catalog.set_reference(profile.clone()).unwrap();

    let mut aggregates = WindowAggregates::new(1_000);
    for window in 0..8i64 {
        let shifted = window >= 4;
        let rows: Vec<Row> = (0..WINDOW_ROWS).map(|_| row(&mut rng, shifted)).collect();
        for (i, row) in rows.iter().enumerate() {
            aggregates.record(
                &catalog,
                window * HOUR,
                &event(row, window * HOUR + i as i64),
            );
        }
        let probabilities: Vec<Vec<f64>> = rows.iter().map(|r| r.probabilities.to_vec()).collect();
        let predicted: Vec<usize> = rows.iter().map(|r| r.predicted).collect();
        let labels: Vec<usize> = rows.iter().map(|r| r.label).collect();
        let oracle = model.estimate(&probabilities, &predicted);

        let snapshot = aggregates.snapshot(&catalog);
        let (_, sketch) = snapshot
            .iter()
            .find(|(key, _)| key.window_start == window * HOUR && key.feature == ESTIMATED_QUALITY)
            .expect("the window has the series");
        let metrics = compute(
            sketch,
            profile.features.get(ESTIMATED_QUALITY),
            DriftThresholds::default(),
        );
        assert_eq!(metrics.count, WINDOW_ROWS as u64);
        for expected in &oracle {
            let estimate = metrics
                .estimated
                .iter()
                .find(|e| e.metric == expected.metric)
                .unwrap_or_else(|| panic!("window {window}: no {:?}", expected.metric));
            // Sums are exact; the ROC curve walks 1/1,000 probability bins
            // instead of the rows.
            let tolerance = if expected.metric == PerformanceMetric::RocAuc {
                2e-3
            } else {
                1e-9
            };
            assert!(
                (estimate.value - expected.value).abs() <= tolerance,
                "window {window} {:?}: {} at ingest, {} row by row",
                expected.metric,
                estimate.value,
                expected.value
            );
            assert_eq!(estimate.sampling_error, expected.sampling_error);
            if matches!(
                expected.metric,
                PerformanceMetric::Accuracy | PerformanceMetric::F1 | PerformanceMetric::RocAuc
            ) {
                assert_eq!(estimate.alert, shifted, "window {window}: {estimate:?}");
            }
        }
        let accuracy = metrics.estimated[0].value;
        let truth = realized(
            PerformanceMetric::Accuracy,
            3,
            &probabilities,
            &predicted,
            &labels,
        )
        .unwrap();
        assert!(
            (accuracy - truth).abs() < 0.03,
            "window {window}: accuracy estimated {accuracy}, realized {truth}"
        );
    }
}
