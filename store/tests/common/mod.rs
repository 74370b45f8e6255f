//! One conformance suite run against both backends: whatever the store, the
//! same writes must read back the same way.

use std::collections::BTreeMap;

use detectors::metrics::{compute, DriftThresholds};
use detectors::numeric::{BinEdges, NumericSketch};
use detectors::reference::{FeatureReference, NumericReference, ReferenceProfile};
use detectors::{FeatureSketch, SeriesKey};
use store::{MetricsQuery, PartialSketch, Store, WindowMetrics, WindowSketch};

fn key(feature: &str, window_start: i64) -> SeriesKey {
    SeriesKey {
        window_start,
        model: "churn".into(),
        model_version: "3".into(),
        segment: "all".into(),
        feature: feature.into(),
    }
}

/// Partials: the highest `range_end` of a (source, range_start, series) wins.
pub async fn partials_keep_the_latest_range_end(store: &Store) {
    let window = 1_767_225_600_000;
    let first = PartialSketch {
        source: "predictions/0".into(),
        range_start: 0,
        range_end: 10,
        key: key("age", window),
        sketch: vec![1, 2, 3],
    };
    let replayed = PartialSketch {
        range_end: 25,
        sketch: vec![4, 5, 6, 0, 255],
        ..first.clone()
    };
    let other_range = PartialSketch {
        range_start: 1000,
        range_end: 1003,
        sketch: vec![9],
        ..first.clone()
    };
    store
        .write_partials(vec![first.clone(), other_range.clone()])
        .await
        .unwrap();
    store.write_partials(vec![replayed.clone()]).await.unwrap();
    // An older version written later must not win.
    store.write_partials(vec![first.clone()]).await.unwrap();
    let mut rows = store.partials_for_window("churn", window).await.unwrap();
    rows.sort_by_key(|r| r.range_start);
    assert_eq!(rows, vec![replayed, other_range]);
    assert!(store
        .partials_for_window("churn", window + 60_000)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .partial_windows("churn", window - 1, window + 1)
            .await
            .unwrap(),
        vec![window]
    );
}

/// Window metrics and sketches round-trip every field, `None`s included.
pub async fn window_results_round_trip(store: &Store) {
    let window = 1_767_229_200_000;
    let reference = NumericReference::from_values((0..500).map(|i| i as f64).collect(), 0).unwrap();
    let edges = BinEdges::new(reference.edges.clone()).unwrap();
    let mut numeric = NumericSketch::new(Some(&edges));
    (0..300).for_each(|i| numeric.add(i as f64 * 1.5, Some(&edges)));
    numeric.add_missing();
    let sketch = FeatureSketch::Numeric(numeric);
    let metrics = compute(
        &sketch,
        Some(&FeatureReference::Numeric(reference)),
        DriftThresholds::default(),
    );
    assert!(metrics.psi.is_some() && metrics.chi_square.is_none());
    let record = WindowMetrics {
        key: key("age", window),
        window_end: window + 60_000,
        metrics: metrics.clone(),
        reference_source: Some("file:train.csv".into()),
        computed_at: 7,
    };
    let empty_record = WindowMetrics {
        key: key("plan", window),
        window_end: window + 60_000,
        metrics: compute(
            &FeatureSketch::Categorical(detectors::categorical::CategoricalSketch::new(4)),
            None,
            DriftThresholds::default(),
        ),
        reference_source: None,
        computed_at: 7,
    };
    let window_sketch = WindowSketch {
        key: key("age", window),
        window_end: window + 60_000,
        sketch: sketch.to_bytes(),
        computed_at: 7,
    };
    store
        .write_window_results(
            vec![record.clone(), empty_record.clone()],
            vec![window_sketch.clone()],
        )
        .await
        .unwrap();
    // A recomputation with a newer version replaces the row.
    let mut newer = record.clone();
    newer.computed_at = 8;
    newer.metrics.count += 1;
    store
        .write_window_results(vec![newer.clone()], vec![])
        .await
        .unwrap();
    let query = MetricsQuery {
        model: Some("churn".into()),
        from_ms: Some(window),
        to_ms: Some(window + 1),
        ..Default::default()
    };
    let rows = store.window_metrics(query).await.unwrap();
    assert_eq!(rows, vec![newer, empty_record]);
    let feature_only = MetricsQuery {
        feature: Some("plan".into()),
        ..Default::default()
    };
    assert_eq!(store.window_metrics(feature_only).await.unwrap().len(), 1);
    let sketches = store
        .window_sketches("churn", window, window + 1)
        .await
        .unwrap();
    assert_eq!(sketches, vec![window_sketch]);
    let decoded = FeatureSketch::from_bytes(&sketches[0].sketch).unwrap();
    assert_eq!(decoded.to_bytes(), sketch.to_bytes());
}

/// References: the newest profile of a model version is returned.
pub async fn references_round_trip(store: &Store) {
    let mut profile = ReferenceProfile {
        model: "churn".into(),
        model_version: "3".into(),
        source: "file:train.csv".into(),
        row_count: 3,
        features: BTreeMap::from([(
            "age".to_owned(),
            FeatureReference::Numeric(
                NumericReference::from_values(vec![1.0, 2.0, 3.0], 0).unwrap(),
            ),
        )]),
    };
    store.put_reference(&profile, 100).await.unwrap();
    profile.source = "file:train-v2.csv".into();
    store.put_reference(&profile, 200).await.unwrap();
    assert_eq!(store.reference("churn", "3").await.unwrap(), Some(profile));
    assert_eq!(store.reference("churn", "4").await.unwrap(), None);
    let summaries = store.references().await.unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].source, "file:train-v2.csv");
    assert_eq!(summaries[0].created_at, 200);
}
