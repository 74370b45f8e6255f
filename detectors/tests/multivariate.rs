//! Multivariate drift in the streaming path: a reference built from
//! training rows fits the reconstruction model, every event's error goes
//! into its window's `multivariate` series at ingest, and the window's mean
//! is flagged against the reference's band.
//!
//! The stream: `x1` and `x2` standard normals correlated at +0.9, `x3`
//! independent, a categorical `plan`. From the sixth window on the
//! correlation is −0.9: every marginal distribution is unchanged, so no
//! per-feature test has anything to find, and the reconstruction error
//! must catch the change alone.

use std::borrow::Cow;

use detectors::aggregate::WindowAggregates;
use detectors::catalog::Catalog;
use detectors::metrics::{apply_p_value_correction, compute, DriftThresholds};
use detectors::reconstruction::{Input, ReconstructionModel};
use detectors::reference::{FeatureReference, ReferenceBuilder, TrainingValue};
use detectors::sketch::FeatureSketch;
use detectors::spec::{FeatureKind, FeatureSpec, ModelSpec, Multivariate, Task, MULTIVARIATE};
use events::{Event, EventKind, FeatureValue};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

const PLANS: [&str; 3] = ["basic", "plus", "pro"];

struct Row {
    x1: f64,
    x2: f64,
    x3: f64,
    plan: &'static str,
}

fn row(rng: &mut StdRng, correlation: f64) -> Row {
    let x1: f64 = StandardNormal.sample(rng);
    let noise: f64 = StandardNormal.sample(rng);
    let x3: f64 = StandardNormal.sample(rng);
    let u: f64 = rng.random();
    Row {
        x1,
        x2: correlation * x1 + (1.0 - correlation * correlation).sqrt() * noise,
        x3: 5.0 + 2.0 * x3,
        plan: PLANS[usize::from(u > 0.5) + usize::from(u > 0.8)],
    }
}

fn spec() -> ModelSpec {
    let feature = |name: &str, kind| FeatureSpec {
        name: name.into(),
        kind,
    };
    ModelSpec::new(
        "m",
        Task::Regression,
        vec![
            feature("x1", FeatureKind::Numeric),
            feature("x2", FeatureKind::Numeric),
            feature("x3", FeatureKind::Numeric),
            feature("plan", FeatureKind::Categorical),
        ],
        vec![],
        10,
        50,
    )
    .unwrap()
    .with_multivariate(Some(Multivariate::default()))
    .unwrap()
}

/// Feeds rows to a builder as record batches arrive: column by column.
fn reference(spec: &ModelSpec, rows: &[Row]) -> detectors::ReferenceProfile {
    let mut builder = ReferenceBuilder::new(spec, "1", "test");
    for batch in rows.chunks(4096) {
        for _ in batch {
            builder.add_row();
        }
        for row in batch {
            builder.add("x1", TrainingValue::Number(row.x1));
        }
        for row in batch {
            builder.add("x2", TrainingValue::Number(row.x2));
        }
        for row in batch {
            builder.add("x3", TrainingValue::Number(row.x3));
        }
        for row in batch {
            builder.add("plan", TrainingValue::Text(row.plan));
        }
    }
    builder.build().unwrap()
}

fn event(row: &Row, timestamp_ms: i64) -> Event<'static> {
    Event {
        kind: EventKind::Prediction,
        model: Cow::Borrowed("m"),
        model_version: Cow::Borrowed("1"),
        prediction_id: None,
        timestamp_ms,
        features: vec![
            (Cow::Borrowed("x1"), FeatureValue::Number(row.x1)),
            (Cow::Borrowed("x2"), FeatureValue::Number(row.x2)),
            (Cow::Borrowed("x3"), FeatureValue::Number(row.x3)),
            (
                Cow::Borrowed("plan"),
                FeatureValue::Text(Cow::Borrowed(row.plan)),
            ),
        ],
        prediction: None,
        latency_ms: None,
        segments: vec![],
        label: None,
        error: None,
    }
}

fn model(profile: &detectors::ReferenceProfile) -> &ReconstructionModel {
    match profile.features.get(MULTIVARIATE) {
        Some(FeatureReference::Multivariate(model)) => model,
        other => panic!("no reconstruction model in the profile: {other:?}"),
    }
}

#[test]
fn a_flipped_correlation_is_flagged_by_the_reconstruction_error_alone() {
    const HOUR: i64 = 3_600_000;
    const WINDOW_ROWS: usize = 2_000;
    let spec = spec();
    let mut rng = StdRng::seed_from_u64(7);
    let training: Vec<Row> = (0..20_000).map(|_| row(&mut rng, 0.9)).collect();
    let profile = reference(&spec, &training);
    let reconstruction = model(&profile).clone();
    assert_eq!(
        reconstruction.components.len(),
        2,
        "x1 and x2 share one axis"
    );
    let mut catalog = Catalog::new([spec.clone()]);
    catalog.set_reference(profile.clone()).unwrap();

    // Ten windows; the events of each are split over two aggregates (two
    // partitions), whose sketches are merged as the service merges them.
    let mut parts = [WindowAggregates::new(1_000), WindowAggregates::new(1_000)];
    let mut oracle = Vec::new();
    for window in 0..10 {
        let correlation = if window < 5 { 0.9 } else { -0.9 };
        let mut errors = Vec::with_capacity(WINDOW_ROWS);
        for i in 0..WINDOW_ROWS {
            let row = row(&mut rng, correlation);
            errors.push(reconstruction.error(&[
                Input::Number(row.x1),
                Input::Number(row.x2),
                Input::Number(row.x3),
                Input::Category(row.plan),
            ]));
            let start = window * HOUR;
            parts[i % 2].record(&catalog, start, &event(&row, start + i as i64));
        }
        oracle.push(errors.iter().sum::<f64>() / errors.len() as f64);
    }
    let mut merged: std::collections::BTreeMap<(i64, String), FeatureSketch> =
        std::collections::BTreeMap::new();
    for part in &parts {
        for (key, sketch) in part.snapshot(&catalog) {
            match merged.entry((key.window_start, key.feature.clone())) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(sketch);
                }
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    slot.get_mut().merge(&sketch).unwrap()
                }
            }
        }
    }

    let thresholds = DriftThresholds::default();
    let mut feature_flags = 0;
    for window in 0..10i64 {
        let names = ["x1", "x2", "x3", "plan", MULTIVARIATE];
        let mut metrics: Vec<_> = names
            .iter()
            .map(|name| {
                compute(
                    &merged[&(window * HOUR, (*name).to_owned())],
                    profile.features.get(*name),
                    thresholds,
                )
            })
            .collect();
        apply_p_value_correction(&mut metrics, thresholds);
        let multivariate = &metrics[4];
        assert_eq!(multivariate.kind, FeatureKind::Multivariate);
        assert_eq!(multivariate.count, WINDOW_ROWS as u64);
        let mean = multivariate.mean.unwrap();
        let expected = oracle[window as usize];
        assert!(
            (mean - expected).abs() <= 1e-12 * expected,
            "window {window}: mean error {mean}, row by row {expected}"
        );
        let (lower, upper) = (
            multivariate.reconstruction_lower.unwrap(),
            multivariate.reconstruction_upper.unwrap(),
        );
        let flipped = window >= 5;
        assert_eq!(
            multivariate.drifted,
            Some(flipped),
            "window {window}: mean error {mean:.4}, band [{lower:.4}, {upper:.4}]"
        );
        feature_flags += metrics[..4]
            .iter()
            .filter(|m| m.drifted == Some(true))
            .count();
    }
    // Forty per-feature verdicts on unchanged marginals: only chance flags
    // (α = 0.05, corrected per window).

    assert!(
        feature_flags <= 2,
        "{feature_flags} per-feature flags on unchanged marginals"
    );
}

#[test]
fn a_large_training_file_is_sampled_within_the_bound_and_fits_the_same_model() {
    let spec = spec();
    let mut rng = StdRng::seed_from_u64(11);
    let training: Vec<Row> = (0..250_000).map(|_| row(&mut rng, 0.9)).collect();
    let sampled = model(&reference(&spec, &training)).clone();
    assert!(
        (50_000..=100_000).contains(&(sampled.reference_rows as usize)),
        "{} rows kept",
        sampled.reference_rows
    );
    // The fit on every row, as `tidewatch analyze` makes it.
    let rows: Vec<Vec<Input<'_>>> = training
        .iter()
        .map(|row| {
            vec![
                Input::Number(row.x1),
                Input::Number(row.x2),
                Input::Number(row.x3),
                Input::Category(row.plan),
            ]
        })
        .collect();
    let full = ReconstructionModel::fit(
        vec!["x1".into(), "x2".into(), "x3".into(), "plan".into()],
        &[false, false, false, true],
        &rows,
        0.65,
    )
    .unwrap();
    assert_eq!(sampled.components.len(), full.components.len());
    let relative = (sampled.reference_mean - full.reference_mean).abs() / full.reference_mean;
    assert!(
        relative < 0.01,
        "reference error {} on the sample, {} on every row",
        sampled.reference_mean,
        full.reference_mean
    );
}
