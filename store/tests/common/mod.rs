//! One conformance suite run against both backends: whatever the store, the
//! same writes must read back the same way.

use std::collections::BTreeMap;

use detectors::metrics::{compute, DriftThresholds};
use detectors::numeric::{BinEdges, NumericSketch};
use detectors::reference::{FeatureReference, NumericReference, ReferenceProfile};
use detectors::{FeatureSketch, SeriesKey};
use store::{MetricsQuery, NotificationStatus, PartialSketch, Store, WindowMetrics, WindowSketch};

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
        version: 7,
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
        version: 7,
    };
    // Estimated performance: every metric with its error and band, one
    // without a band (absent thresholds survive as `None`).
    let mut estimated_metrics = detectors::FeatureWindowMetrics::empty(
        detectors::spec::FeatureKind::EstimatedQuality,
        2_000,
        0,
        0,
        DriftThresholds::default(),
    );
    estimated_metrics.estimated = detectors::estimation::PerformanceMetric::ALL
        .into_iter()
        .enumerate()
        .map(|(i, metric)| detectors::estimation::EstimatedMetric {
            metric,
            value: 0.7 + i as f64 / 100.0,
            sampling_error: Some(0.01),
            lower_threshold: (i != 4).then_some(0.65),
            upper_threshold: (i != 4).then_some(0.8),
            alert: i == 2,
        })
        .collect();
    let estimated_record = WindowMetrics {
        key: key("estimated_quality", window),
        window_end: window + 60_000,
        metrics: estimated_metrics,
        reference_source: Some("file:train.csv".into()),
        version: 7,
    };
    // Multivariate drift: the mean reconstruction error with its band.
    let mut multivariate_metrics = detectors::FeatureWindowMetrics::empty(
        detectors::spec::FeatureKind::Multivariate,
        2_000,
        0,
        0,
        DriftThresholds::default(),
    );
    multivariate_metrics.mean = Some(1.37);
    multivariate_metrics.std_dev = Some(0.52);
    multivariate_metrics.reconstruction_sampling_error = Some(0.011);
    multivariate_metrics.reconstruction_lower = Some(1.1);
    multivariate_metrics.reconstruction_upper = Some(1.2);
    multivariate_metrics.drifted = Some(true);
    let multivariate_record = WindowMetrics {
        key: key("multivariate", window),
        window_end: window + 60_000,
        metrics: multivariate_metrics,
        reference_source: Some("file:train.csv".into()),
        version: 7,
    };
    let window_sketch = WindowSketch {
        key: key("age", window),
        window_end: window + 60_000,
        sketch: sketch.to_bytes(),
        version: 7,
    };
    store
        .write_window_results(
            vec![
                record.clone(),
                empty_record.clone(),
                estimated_record.clone(),
                multivariate_record.clone(),
            ],
            vec![window_sketch.clone()],
        )
        .await
        .unwrap();
    // A recomputation with a newer version replaces the row.
    let mut newer = record.clone();
    newer.version = 8;
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
    assert_eq!(
        rows,
        vec![newer, estimated_record, multivariate_record, empty_record]
    );
    let feature_only = MetricsQuery {
        feature: Some("plan".into()),
        ..Default::default()
    };
    assert_eq!(store.window_metrics(feature_only).await.unwrap().len(), 1);
    // Pagination: the same order, page by page; a version filter.
    let page = |offset: u64| MetricsQuery {
        model_version: Some("3".into()),
        limit: Some(1),
        offset,
        ..Default::default()
    };
    let mut pages = Vec::new();
    for offset in 0..5 {
        pages.push(store.window_metrics(page(offset)).await.unwrap());
    }
    let features: Vec<&str> = pages[..4]
        .iter()
        .map(|page| page[0].key.feature.as_str())
        .collect();
    assert_eq!(
        features,
        ["age", "estimated_quality", "multivariate", "plan"]
    );
    assert!(pages[4].is_empty());
    let other_version = MetricsQuery {
        model_version: Some("4".into()),
        ..Default::default()
    };
    assert!(store
        .window_metrics(other_version)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.model_versions().await.unwrap(),
        vec![store::ModelVersionSummary {
            model: "churn".into(),
            model_version: "3".into(),
            first_window: window,
            last_window: window,
            last_input_window: Some(window),
            windows: 1,
        }]
    );
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

fn notification(status: NotificationStatus, window_start: i64) -> store::AlertRecord {
    store::AlertRecord {
        id: "tw-0123456789abcdef".into(),
        status,
        window_start,
        window_end: window_start + 3_600_000,
        rule: "drift_on_features".into(),
        model: "churn".into(),
        model_version: "7".into(),
        segment: "all".into(),
        severity: store::Severity::Warning,
        repeat: false,
        summary: format!("[{status}] drift_on_features on churn v7"),
        payload: "{\"schema\":\"tidewatch.alert.v1\"}".into(),
        created_at: 100,
    }
}

/// The outbox: notifications recorded once, deliveries due until sent,
/// states never moved backwards, re-recording after a restart harmless.
pub async fn alert_outbox_round_trip(store: &Store) {
    use store::{Delivery, DeliveryState};
    let firing = notification(NotificationStatus::Firing, 1_767_621_600_000);
    let resolved = notification(NotificationStatus::Resolved, 1_767_632_400_000);
    store
        .record_alerts(vec![
            (firing.clone(), vec!["slack".into(), "email".into()]),
            (resolved.clone(), vec!["slack".into()]),
        ])
        .await
        .unwrap();
    let listed = store.alerts(Some("churn"), 10).await.unwrap();
    assert_eq!(
        listed,
        vec![resolved.clone(), firing.clone()],
        "newest window first"
    );
    assert!(store.alerts(Some("other"), 10).await.unwrap().is_empty());
    assert_eq!(
        store.due_deliveries(50, 10).await.unwrap().len(),
        0,
        "not due before created_at"
    );
    let due = store.due_deliveries(100, 10).await.unwrap();
    assert_eq!(due.len(), 3);

    let slack_firing = due
        .iter()
        .find(|d| d.status == NotificationStatus::Firing && d.channel == "slack")
        .unwrap()
        .clone();
    store
        .update_delivery(Delivery {
            state: DeliveryState::Sent,
            attempts: 1,
            updated_at: 200,
            ..slack_firing.clone()
        })
        .await
        .unwrap();
    let email = due.iter().find(|d| d.channel == "email").unwrap().clone();
    store
        .update_delivery(Delivery {
            attempts: 1,
            next_attempt_at: 500,
            last_error: "connection refused".into(),
            updated_at: 201,
            ..email
        })
        .await
        .unwrap();
    assert_eq!(
        store.due_deliveries(300, 10).await.unwrap().len(),
        1,
        "email waits for its retry time"
    );
    let later = store.due_deliveries(600, 10).await.unwrap();
    assert_eq!(later.len(), 2);
    let retried = later.iter().find(|d| d.channel == "email").unwrap();
    assert_eq!(
        (retried.attempts, retried.last_error.as_str()),
        (1, "connection refused")
    );

    // A stale write (older version) does not move a delivery back.
    store
        .update_delivery(Delivery {
            state: DeliveryState::Pending,
            updated_at: 150,
            ..slack_firing.clone()
        })
        .await
        .unwrap();
    // Recording the same notification again (a restart) keeps delivery states.
    let mut again = firing.clone();
    again.created_at = 300;
    store
        .record_alerts(vec![(again, vec!["slack".into(), "email".into()])])
        .await
        .unwrap();
    let after = store.due_deliveries(600, 10).await.unwrap();
    assert_eq!(after.len(), 2, "slack firing stays sent: {after:?}");
    assert!(after
        .iter()
        .all(|d| !(d.status == NotificationStatus::Firing && d.channel == "slack")));
    assert_eq!(
        store.alerts(None, 10).await.unwrap().len(),
        2,
        "one row per notification"
    );
    // Every delivery of the alert, latest state each, sent ones included.
    let all = store.deliveries(&firing.id).await.unwrap();
    let states: Vec<(NotificationStatus, &str, store::DeliveryState)> = all
        .iter()
        .map(|d| (d.status, d.channel.as_str(), d.state))
        .collect();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(states.contains(&(
        NotificationStatus::Firing,
        "slack",
        store::DeliveryState::Sent
    )));
    assert_eq!(
        states
            .iter()
            .filter(|(_, _, state)| *state == store::DeliveryState::Pending)
            .count(),
        2
    );
    assert!(store.deliveries("no-such-alert").await.unwrap().is_empty());
}

/// A notification is found by id, status and window.
pub async fn alert_notification_lookup(store: &Store) {
    let firing = notification(NotificationStatus::Firing, 1_767_621_600_000);
    let resolved = notification(NotificationStatus::Resolved, 1_767_632_400_000);
    store
        .record_alerts(vec![(firing.clone(), vec![]), (resolved.clone(), vec![])])
        .await
        .unwrap();
    assert_eq!(
        store
            .alert_notification(&firing.id, NotificationStatus::Firing, firing.window_start)
            .await
            .unwrap(),
        Some(firing.clone())
    );
    assert_eq!(
        store
            .alert_notification(
                &firing.id,
                NotificationStatus::Resolved,
                resolved.window_start
            )
            .await
            .unwrap(),
        Some(resolved)
    );
    assert_eq!(
        store
            .alert_notification(&firing.id, NotificationStatus::Firing, 0)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .alert_notification("tw-other", NotificationStatus::Firing, firing.window_start)
            .await
            .unwrap(),
        None
    );
}

/// Pipeline statistics: appended rows come back by time.
pub async fn pipeline_stats_round_trip(store: &Store) {
    let row = |time: i64, topic: &str, consumed: u64| store::PipelineStats {
        time,
        instance: "host-1".into(),
        topic: topic.into(),
        consumed,
        dead_lettered: 1,
        late: 2,
        lag: -1,
    };
    let rows = vec![
        row(1_767_225_610_000, "predictions", 100),
        row(1_767_225_600_000, "actuals", 40),
        row(1_767_225_620_000, "predictions", 7),
    ];
    store.write_pipeline_stats(rows.clone()).await.unwrap();
    let read = store
        .pipeline_stats(1_767_225_600_000, 1_767_225_615_000)
        .await
        .unwrap();
    assert_eq!(read, vec![rows[1].clone(), rows[0].clone()]);
}

/// Alert progress: absent at first, per model, never moves backwards.
pub async fn alert_progress_moves_forward_only(store: &Store) {
    assert_eq!(store.alert_progress("churn").await.unwrap(), None);
    store
        .record_alert_progress("churn", 1_767_225_600_000)
        .await
        .unwrap();
    store
        .record_alert_progress("churn", 1_767_229_200_000)
        .await
        .unwrap();
    store
        .record_alert_progress("churn", 1_767_225_600_000)
        .await
        .unwrap();
    store.record_alert_progress("fraud", 0).await.unwrap();
    assert_eq!(
        store.alert_progress("churn").await.unwrap(),
        Some(1_767_229_200_000)
    );
    assert_eq!(store.alert_progress("fraud").await.unwrap(), Some(0));
    assert_eq!(store.alert_progress("other").await.unwrap(), None);
}

pub async fn range_fingerprints_round_trip(store: &Store) {
    use store::RangeFingerprint;
    assert_eq!(store.latest_incarnation("t/0").await.unwrap(), None);
    let row = |incarnation, range_start, fingerprint| RangeFingerprint {
        partition: "t/0".into(),
        incarnation,
        range_start,
        first_offset: range_start + 3,
        fingerprint,
    };
    store
        .write_range_fingerprints(vec![row(1, 0, u64::MAX - 5), row(1, 1_000, 7)])
        .await
        .unwrap();
    // Written again (a restart rewrites what it read first): no change.
    store
        .write_range_fingerprints(vec![row(1, 0, u64::MAX - 5), row(2, 0, 11)])
        .await
        .unwrap();
    assert_eq!(store.latest_incarnation("t/0").await.unwrap(), Some(2));
    assert_eq!(store.latest_incarnation("t/1").await.unwrap(), None);
    assert_eq!(
        store.range_fingerprint("t/0", 1, 0).await.unwrap(),
        Some(row(1, 0, u64::MAX - 5)),
        "the full 64 bits survive"
    );
    assert_eq!(
        store.range_fingerprint("t/0", 2, 0).await.unwrap(),
        Some(row(2, 0, 11))
    );
    assert_eq!(
        store.range_fingerprint("t/0", 2, 1_000).await.unwrap(),
        None
    );
}

/// Sources' progress: the highest offset per source wins, windows keep
/// their order, an empty list is a list.
pub async fn source_progress_round_trip(store: &Store) {
    use store::{SourceProgress, WindowRef};
    assert_eq!(store.source_progress("t/0").await.unwrap(), None);
    let progress = |source: &str, next_offset, windows: &[(&str, i64)]| SourceProgress {
        source: source.into(),
        next_offset,
        unfinalized: windows
            .iter()
            .map(|(model, window_start)| WindowRef {
                model: (*model).into(),
                window_start: *window_start,
            })
            .collect(),
    };
    let newer = progress(
        "t/0",
        2_000,
        &[("churn", 1_767_225_600_000), ("fraud", 1_767_229_200_000)],
    );
    store
        .write_source_progress(vec![
            progress("t/0", 1_000, &[("churn", 1_767_222_000_000)]),
            progress("t/0#2", 5, &[]),
        ])
        .await
        .unwrap();
    store
        .write_source_progress(vec![newer.clone()])
        .await
        .unwrap();
    // An older row written late (a commit that lost a race) changes nothing.
    store
        .write_source_progress(vec![progress("t/0", 1_500, &[])])
        .await
        .unwrap();
    assert_eq!(store.source_progress("t/0").await.unwrap(), Some(newer));
    assert_eq!(
        store.source_progress("t/0#2").await.unwrap(),
        Some(progress("t/0#2", 5, &[]))
    );
    assert_eq!(store.source_progress("t/1").await.unwrap(), None);
}

/// Version events: per model, oldest first by time then sequence, the
/// newest `limit`, idempotent per (model, time, sequence).
pub async fn version_events_round_trip(store: &Store) {
    use store::{VersionEvent, VersionEventKind};
    let event = |sequence: u64, time_ms: i64, kind, version: &str, alias: &str| VersionEvent {
        model: "churn".into(),
        model_version: version.into(),
        kind,
        alias: alias.into(),
        time_ms,
        sequence,
        detail: format!(r#"{{"name":"churn","sequence":{sequence}}}"#),
    };
    let events = vec![
        event(1, 1_767_225_600_123, VersionEventKind::Registered, "1", ""),
        event(
            2,
            1_767_225_600_123,
            VersionEventKind::AliasSet,
            "1",
            "champion",
        ),
        event(
            4,
            1_767_225_700_000,
            VersionEventKind::ReferenceAttached,
            "1",
            "",
        ),
        event(
            3,
            1_767_225_650_001,
            VersionEventKind::AliasDeleted,
            "",
            "champion",
        ),
    ];
    store.write_version_events(events.clone()).await.unwrap();
    // Recorded again (a consumer restarted): no change.
    store
        .write_version_events(events[..2].to_vec())
        .await
        .unwrap();
    let mut other = event(1, 1_767_225_600_000, VersionEventKind::Registered, "7", "");
    other.model = "fraud".into();
    store
        .write_version_events(vec![other.clone()])
        .await
        .unwrap();

    let expected = vec![
        events[0].clone(),
        events[1].clone(),
        events[3].clone(),
        events[2].clone(),
    ];
    assert_eq!(store.version_events("churn", 100).await.unwrap(), expected);
    assert_eq!(
        store.version_events("churn", 2).await.unwrap(),
        expected[2..].to_vec(),
        "the newest two, oldest first"
    );
    assert_eq!(
        store.version_events("fraud", 100).await.unwrap(),
        vec![other]
    );
    assert!(store.version_events("none", 100).await.unwrap().is_empty());
}

/// Sampled predictions and labels: idempotent per key, read by model,
/// version and window range, labels by id, deleted by age.
pub async fn samples_round_trip(store: &Store) {
    use store::{SampledLabel, SampledPrediction};
    assert_eq!(store.latest_sample_window().await.unwrap(), None);
    let hour = 3_600_000;
    let start = 1_767_225_600_000;
    let prediction = |version: &str, id: &str, window: i64| SampledPrediction {
        model: "churn".into(),
        model_version: version.into(),
        prediction_id: id.into(),
        window_start: start + window * hour,
        time_ms: start + window * hour + 1_234,
        features: format!(r#"{{"age":41.5,"contract":"monthly","id":"{id}"}}"#),
        score: Some(0.25),
        class: if version == "1" {
            "no".into()
        } else {
            String::new()
        },
    };
    let label = |id: &str, value: Option<f64>| SampledLabel {
        model: "churn".into(),
        prediction_id: id.into(),
        time_ms: start + 5 * hour + 17,
        label: value.map_or_else(|| "yes".into(), |v| v.to_string()),
        value,
    };
    let predictions = vec![
        prediction("1", "p1", 0),
        prediction("2", "p1", 0),
        prediction("1", "p2", 1),
        prediction("1", "p3", 2),
    ];
    let labels = vec![label("p1", None), label("p3", Some(2.5))];
    store
        .write_samples(predictions.clone(), labels.clone())
        .await
        .unwrap();
    // Written again (a range read twice): no change.
    store
        .write_samples(predictions[..2].to_vec(), labels[..1].to_vec())
        .await
        .unwrap();
    let mut other = prediction("1", "p1", 0);
    other.model = "fraud".into();
    store.write_samples(vec![other], Vec::new()).await.unwrap();

    let all = store
        .sampled_predictions("churn", None, start, start + 3 * hour, 100)
        .await
        .unwrap();
    assert_eq!(all, predictions, "by window, id, version");
    let version_one = store
        .sampled_predictions("churn", Some("1"), start + 1, start + 3 * hour, 100)
        .await
        .unwrap();
    assert_eq!(
        version_one,
        vec![predictions[2].clone(), predictions[3].clone()],
        "windows starting at or after `from`"
    );
    let limited = store
        .sampled_predictions("churn", None, start, start + 3 * hour, 2)
        .await
        .unwrap();
    assert_eq!(limited, predictions[..2].to_vec());
    let ids: Vec<String> = ["p1", "p2", "p3", "nope"].map(String::from).to_vec();
    assert_eq!(store.sampled_labels("churn", &ids).await.unwrap(), labels);
    assert!(store
        .sampled_labels("fraud", &ids)
        .await
        .unwrap()
        .is_empty());
    // Many ids at once (statements are chunked).
    let many: Vec<String> = (0..2_500).map(|i| format!("x{i}")).chain(ids).collect();
    assert_eq!(store.sampled_labels("churn", &many).await.unwrap().len(), 2);

    assert_eq!(
        store.latest_sample_window().await.unwrap(),
        Some(start + 2 * hour)
    );

    // Retention: windows before hour 1 and labels before hour 5 go.
    store.delete_samples_before(start + hour).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = store
            .sampled_predictions("churn", None, start, start + 3 * hour, 100)
            .await
            .unwrap();
        if left == predictions[2..].to_vec() {
            break;
        }
        // ClickHouse deletes in the background (a mutation).
        assert!(std::time::Instant::now() < deadline, "{left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(store.sampled_labels("churn", &many).await.unwrap().len(), 2);
    store.delete_samples_before(start + 6 * hour).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !store
        .sampled_labels("churn", &many)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "labels not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The durable join's tables: predictions found by key (every version),
/// pending labels by source, late matches by window and by source, each
/// write idempotent, and expiry by event time.
pub async fn join_state_round_trip(store: &Store) {
    use store::{JoinLabel, JoinLabelValue, JoinPrediction, LateMatch};
    let day = 86_400_000i64;
    let start = 1_700_000_000_000i64 / day * day;
    let prediction = |key: &str, version: &str, time_ms: i64| JoinPrediction {
        model: "m".into(),
        key: key.into(),
        model_version: version.into(),
        window_start: time_ms / 3_600_000 * 3_600_000,
        time_ms,
        segments: vec!["all".into(), "region=eu".into()],
        score: Some(0.25),
        class: Some("yes".into()),
    };
    let a1 = prediction("0a", "1", start + 5);
    let a2 = JoinPrediction {
        score: None,
        class: None,
        ..prediction("0a", "2", start + 6)
    };
    let b = prediction("0b", "1", start + 10 * day);
    let written = vec![a1.clone(), a2.clone(), b.clone()];
    store.write_join_predictions(&written).await.unwrap();
    store.write_join_predictions(&written).await.unwrap();
    let keys = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(
        store
            .join_predictions("m", &keys(&["0a", "0c"]))
            .await
            .unwrap(),
        vec![a1.clone(), a2.clone()]
    );
    assert_eq!(
        store
            .join_predictions("other", &keys(&["0a"]))
            .await
            .unwrap(),
        vec![]
    );
    let many: Vec<String> = (0..1_500)
        .map(|i| format!("{i:x}"))
        .chain(["0b".into()])
        .collect();
    assert_eq!(
        store.join_predictions("m", &many).await.unwrap(),
        vec![b.clone()]
    );

    let label = |offset: u64, time_ms: i64, value: JoinLabelValue| JoinLabel {
        source: "labels/0".into(),
        offset,
        model: "m".into(),
        key: "0a".into(),
        time_ms,
        value,
    };
    let number = label(7, start + 100, JoinLabelValue::Number(1.5));
    let class = label(3, start + 11 * day, JoinLabelValue::Class("yes".into()));
    let labels = vec![number.clone(), class.clone()];
    store.write_pending_labels(labels.clone()).await.unwrap();
    store.write_pending_labels(labels).await.unwrap();
    assert_eq!(
        store.pending_labels("labels/0").await.unwrap(),
        vec![class.clone(), number.clone()]
    );
    assert_eq!(store.pending_labels("labels/1").await.unwrap(), vec![]);

    let late = |label: &JoinLabel, prediction: &JoinPrediction| LateMatch {
        label: label.clone(),
        prediction: prediction.clone(),
    };
    let matches = vec![late(&number, &a1), late(&number, &a2)];
    store.write_late_matches(matches.clone()).await.unwrap();
    store.write_late_matches(matches.clone()).await.unwrap();
    assert_eq!(
        store
            .late_matches_for_window("m", a1.window_start)
            .await
            .unwrap(),
        matches
    );
    assert_eq!(
        store
            .late_matches_for_window("m", a1.window_start + 3_600_000)
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(
        store
            .late_matches_of_source("labels/0", start + 100)
            .await
            .unwrap(),
        matches
    );
    assert_eq!(
        store
            .late_matches_of_source("labels/0", start + 101)
            .await
            .unwrap(),
        vec![]
    );

    store.expire_join_state(start + 2 * day).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let predictions = store
            .join_predictions("m", &keys(&["0a", "0b"]))
            .await
            .unwrap();
        let labels = store.pending_labels("labels/0").await.unwrap();
        if predictions == vec![b.clone()] && labels == vec![class.clone()] {
            break;
        }
        // ClickHouse deletes in the background (a mutation).
        assert!(
            std::time::Instant::now() < deadline,
            "{predictions:?} {labels:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        store
            .late_matches_for_window("m", a1.window_start)
            .await
            .unwrap()
            .len(),
        2,
        "late matches outlive expiry"
    );
}
