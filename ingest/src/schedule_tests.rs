//! Schedules, not only faults: each test makes one bad interleaving happen
//! deterministically at driver level (an in-memory store, the Kafka loop's
//! protocol spelled out step by step) and asserts the stored windows are
//! exact.
//!
//! | test | schedule |
//! |---|---|
//! | `a_pause_longer_than_the_idle_close_loses_nothing` | half a window, an idle close, the other half |
//! | `a_kill_after_the_commit_leaves_no_window_stale` | one partition silent while another closes the window; the silent one's tail committed, then a kill before it finalizes; a restart from the committed ranges |
//! | `two_instances_finalizing_one_window_in_either_order_store_the_same_row` | a stale finalization written after a newer one, and the other way round |
//! | `progress_is_stored_when_its_windows_change` | commits that change a source's windows still to finalize, and commits that do not |
//! | `labels_read_after_a_restart_join_the_predictions_read_before_it` | predictions stored and committed, the process gone, then the labels |
//! | `labels_read_before_their_predictions_are_stored_join_once` | another instance stores part of the predictions before the labels are read and the rest after; the label reader is killed after storing late matches, before finalizing, and its last range is read again by a new owner |

use std::collections::BTreeMap;

use detectors::catalog::Catalog;
use detectors::window::WindowSize;
use detectors::FeatureSketch;
use events::EventKind;
use store::{MetricsQuery, Store};

use crate::dead_letter::DeadLetterSink;
use crate::driver::{test_driver, Driver, SourceMessage};
use crate::engine::{range_start_of, Engine, EngineSettings, Ingested};
use crate::finalize::{merge_partials, result_version, window_results};

const HOUR: i64 = 3_600_000;
/// 2026-01-01T00:00:00Z.
const START: i64 = 1_767_225_600_000;
const RANGE: u64 = 100;

/// Model `m`, a regression on one numeric feature `x`.
fn catalog() -> Catalog {
    Catalog::new([crate::engine::tests::regression_spec()])
}

/// Hourly windows, 5 minutes of lateness, ranges of 100 offsets.
async fn driver(store: &Store) -> Driver {
    let engine = Engine::new(
        EngineSettings::new(WindowSize::from_millis(HOUR).unwrap())
            .with_range_size(RANGE.try_into().unwrap()),
        catalog(),
    );
    test_driver(engine, store.clone()).await
}

fn dead_letters(name: &str) -> DeadLetterSink {
    let directory = std::env::temp_dir().join(format!(
        "tw-schedules-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&directory).unwrap();
    DeadLetterSink::file(&directory.join("dead-letters.jsonl")).unwrap()
}

fn payload(id: u64, time: i64) -> Vec<u8> {
    format!(
        r#"{{"model":"m","model_version":"1","prediction_id":"{id}","timestamp":{time},"features":{{"x":{}}},"prediction":{{"score":0.5}}}}"#,
        id as f64 / 7.0
    )
    .into_bytes()
}

/// Reads `events` (offset, event time) of `source` into `driver`; every
/// one must be recorded.
async fn read(
    driver: &mut Driver,
    dead_letters: &mut DeadLetterSink,
    source: &str,
    events: impl IntoIterator<Item = (u64, i64)>,
) {
    for (offset, time) in events {
        let payload = payload(offset, time);
        let message = SourceMessage {
            source,
            topic: source,
            partition: 0,
            offset,
            payload: &payload,
            format: EventKind::Prediction.into(),
        };
        let outcome = driver.ingest(message, dead_letters).await.unwrap();
        assert_eq!(outcome, Ingested::Recorded, "{source}@{offset} at {time}");
    }
}

/// The Kafka loop's step ([`crate::kafka`]'s `settle`): checkpoint,
/// finalize what is closed, store the progress, then "commit" into
/// `committed`.
async fn settle(driver: &mut Driver, committed: &mut BTreeMap<String, u64>) {
    let (commits, _) = driver.finalize_closed().await.unwrap();
    driver.store_progress(&commits).await.unwrap();
    committed.extend(commits);
}

/// The events of window `window_start` of feature `x` in the stored result.
async fn stored_count(store: &Store, window_start: i64) -> Option<u64> {
    let metrics = store
        .window_metrics(MetricsQuery {
            model: Some("m".into()),
            feature: Some("x".into()),
            segment: Some("all".into()),
            from_ms: Some(window_start),
            to_ms: Some(window_start + 1),
            ..Default::default()
        })
        .await
        .unwrap();
    metrics.first().map(|m| m.metrics.count)
}

/// What merging every stored partial of the window gives (the oracle a
/// stored result must equal).
async fn merged_count(store: &Store, window_start: i64) -> u64 {
    let partials = store.partials_for_window("m", window_start).await.unwrap();
    merge_partials(&catalog(), &partials)
        .unwrap()
        .sketches
        .iter()
        .filter(|(key, _)| key.feature == "x" && key.segment == "all")
        .map(|(_, sketch)| sketch.observations())
        .sum()
}

#[tokio::test]
async fn a_pause_longer_than_the_idle_close_loses_nothing() {
    let store = Store::in_memory().unwrap();
    let mut driver = driver(&store).await;
    let mut dead = dead_letters("pause");
    // 500 predictions of the first half hour, then the stream pauses past
    // `idle_close_after`: the loop closes every window (provisionally).
    read(
        &mut driver,
        &mut dead,
        "p/0",
        (0..500).map(|i| (i, START + i as i64 * 3_000)),
    )
    .await;
    driver.close_all();
    let (_, finalized) = driver.finalize_closed().await.unwrap();
    assert_eq!(finalized.windows.len(), 1, "the open window finalized");
    assert_eq!(stored_count(&store, START).await, Some(500));
    // Then 500 of the second half of the same hour: on time, recorded, and
    // the window is finalized again with them.
    read(
        &mut driver,
        &mut dead,
        "p/0",
        (500..1_000).map(|i| (i, START + HOUR / 2 + (i as i64 - 500) * 3_000)),
    )
    .await;
    assert_eq!(driver.engine().counters().late, 0);
    driver.close_all();
    driver.finalize_closed().await.unwrap();
    assert_eq!(stored_count(&store, START).await, Some(1_000));
    assert_eq!(merged_count(&store, START).await, 1_000);
}

#[tokio::test]
async fn a_kill_after_the_commit_leaves_no_window_stale() {
    let store = Store::in_memory().unwrap();
    let mut committed = BTreeMap::new();
    let mut dead = dead_letters("kill");
    let next_hour = START + HOUR;
    {
        let mut driver = driver(&store).await;
        driver.assign("a/0").await.unwrap();
        driver.assign("b/0").await.unwrap();
        // a/0 reads its share of hour 0 (a whole range) and moves on to
        // hour 1, far enough to close hour 0 on its own clock; b/0 has
        // delivered nothing yet.
        read(
            &mut driver,
            &mut dead,
            "a/0",
            (0..RANGE)
                .map(|i| (i, START + i as i64 * 1_000))
                .chain((RANGE..RANGE + 10).map(|i| (i, next_hour + 600_000 + i as i64))),
        )
        .await;
        settle(&mut driver, &mut committed).await;
        assert_eq!(
            stored_count(&store, START).await,
            None,
            "b/0 has not delivered: hour 0 must not close on a/0 alone"
        );
        // b/0's share of hour 0 fills its first range, which seals and is
        // settled (partials stored, offsets committed), hour 0 still open.
        read(
            &mut driver,
            &mut dead,
            "b/0",
            (0..RANGE).map(|i| (i, START + 1_000_000 + i as i64)),
        )
        .await;
        read(&mut driver, &mut dead, "b/0", [(RANGE, next_hour + 1_000)]).await;
        assert!(driver.needs_checkpoint());
        settle(&mut driver, &mut committed).await;
        assert_eq!(committed["b/0"], RANGE + 1);
        // More of b/0's hour 1 is read, and the process is killed before
        // its next step: nothing more is stored or committed.
        read(
            &mut driver,
            &mut dead,
            "b/0",
            (RANGE + 1..RANGE + 20).map(|i| (i, next_hour + 600_000 + i as i64)),
        )
        .await;
    }
    // The next owner: each partition from its range start (100 for both,
    // so neither reads an event of hour 0 again), and the windows the
    // stored progress names.
    let mut driver = driver(&store).await;
    for (source, events) in [
        (
            "a/0",
            (0..RANGE)
                .map(|i| (i, START + i as i64 * 1_000))
                .chain((RANGE..RANGE + 10).map(|i| (i, next_hour + 600_000 + i as i64)))
                .collect::<Vec<_>>(),
        ),
        (
            "b/0",
            (0..RANGE)
                .map(|i| (i, START + 1_000_000 + i as i64))
                .chain([(RANGE, next_hour + 1_000)])
                .chain((RANGE + 1..RANGE + 20).map(|i| (i, next_hour + 600_000 + i as i64)))
                .collect(),
        ),
    ] {
        driver.assign(source).await.unwrap();
        let rewind = range_start_of(committed[source], RANGE);
        read(
            &mut driver,
            &mut dead,
            source,
            events.into_iter().filter(|(offset, _)| *offset >= rewind),
        )
        .await;
    }
    settle(&mut driver, &mut committed).await;
    assert_eq!(merged_count(&store, START).await, 200);
    assert_eq!(
        stored_count(&store, START).await,
        Some(200),
        "hour 0 finalized from every stored partial"
    );
}

#[tokio::test]
async fn two_instances_finalizing_one_window_in_either_order_store_the_same_row() {
    for stale_written_last in [true, false] {
        let store = Store::in_memory().unwrap();
        let (mut first, mut second) = (driver(&store).await, driver(&store).await);
        let mut dead = dead_letters("two");
        read(
            &mut first,
            &mut dead,
            "a/0",
            (0..40).map(|i| (i, START + i as i64 * 1_000)),
        )
        .await;
        first.checkpoint().await.unwrap();
        // The first instance reads the window's partials before the second
        // instance has stored its own, and computes and writes its result
        // either before the second finalizes or after (a slow finalization).
        let catalog = catalog();
        let partials = store.partials_for_window("m", START).await.unwrap();
        let previous = store.partials_for_window("m", START - HOUR).await.unwrap();
        let write_stale = || async {
            let merged = merge_partials(&catalog, &partials).unwrap();
            let (metrics, sketches) = window_results(
                &catalog,
                WindowSize::from_millis(HOUR).unwrap(),
                &merged.sketches,
                &BTreeMap::new(),
                Default::default(),
                result_version(&partials, &previous, 0),
            );
            store.write_window_results(metrics, sketches).await.unwrap();
        };
        if !stale_written_last {
            write_stale().await;
        }
        // The second instance stores its partials and finalizes.
        read(
            &mut second,
            &mut dead,
            "b/0",
            (0..60).map(|i| (i, START + 2_000_000 + i as i64)),
        )
        .await;
        second.close_all();
        second.finalize_closed().await.unwrap();
        if stale_written_last {
            write_stale().await;
        }
        assert_eq!(
            stored_count(&store, START).await,
            Some(100),
            "stale result written last: {stale_written_last}"
        );
        let sketches = store.window_sketches("m", START, START + 1).await.unwrap();
        let sketch = sketches
            .iter()
            .find(|s| s.key.feature == "x" && s.key.segment == "all")
            .unwrap();
        assert_eq!(
            FeatureSketch::from_bytes(&sketch.sketch)
                .unwrap()
                .observations(),
            100
        );
    }
}

#[tokio::test]
async fn progress_is_stored_when_its_windows_change() {
    let store = Store::in_memory().unwrap();
    let mut driver = driver(&store).await;
    let mut dead = dead_letters("progress");
    let mut committed = BTreeMap::new();
    driver.assign("a/0").await.unwrap();
    read(&mut driver, &mut dead, "a/0", [(0, START)]).await;
    settle(&mut driver, &mut committed).await;
    let stored = |store: Store| async move { store.source_progress("a/0").await.unwrap().unwrap() };
    let first = stored(store.clone()).await;
    assert_eq!((first.next_offset, first.unfinalized.len()), (1, 1));
    // More of the same window: the list is unchanged, no row is written.
    read(&mut driver, &mut dead, "a/0", [(1, START + 1_000)]).await;
    settle(&mut driver, &mut committed).await;
    assert_eq!(committed["a/0"], 2);
    assert_eq!(stored(store.clone()).await, first);
    // A new window changes it.
    read(&mut driver, &mut dead, "a/0", [(2, START + HOUR)]).await;
    settle(&mut driver, &mut committed).await;
    let second = stored(store.clone()).await;
    assert_eq!((second.next_offset, second.unfinalized.len()), (3, 2));
    // An idle close finalizes both with nothing new to commit: the stored
    // row keeps naming them (a next owner would finalize them again, from
    // the same partials, to the same result) until the next commit.
    driver.close_all();
    settle(&mut driver, &mut committed).await;
    assert_eq!(stored(store.clone()).await, second);
    read(&mut driver, &mut dead, "a/0", [(3, START + HOUR + 1_000)]).await;
    settle(&mut driver, &mut committed).await;
    let third = stored(store).await;
    assert_eq!((third.next_offset, third.unfinalized.len()), (4, 1));
}

/// The label (a number) of prediction `id`.
fn label_value(id: u64) -> f64 {
    (id % 10) as f64
}

/// Reads labels (offset, prediction id, event time) of `source`.
async fn read_labels(
    driver: &mut Driver,
    dead_letters: &mut DeadLetterSink,
    source: &str,
    labels: impl IntoIterator<Item = (u64, u64, i64)>,
) {
    for (offset, id, time) in labels {
        let payload = format!(
            r#"{{"model":"m","model_version":"1","prediction_id":"{id}","timestamp":{time},"label":{}}}"#,
            label_value(id)
        );
        let message = SourceMessage {
            source,
            topic: source,
            partition: 0,
            offset,
            payload: payload.as_bytes(),
            format: EventKind::Actual.into(),
        };
        let outcome = driver.ingest(message, dead_letters).await.unwrap();
        assert_eq!(outcome, Ingested::Recorded, "{source}@{offset} at {time}");
    }
}

/// (joined predictions, mean absolute error) of the stored `quality`
/// series of window `window_start`.
async fn stored_quality(store: &Store, window_start: i64) -> (u64, Option<f64>) {
    let sketches = store
        .window_sketches("m", window_start, window_start + 1)
        .await
        .unwrap();
    let Some(row) = sketches
        .iter()
        .find(|s| s.key.feature == "quality" && s.key.segment == "all")
    else {
        return (0, None);
    };
    let FeatureSketch::Quality(quality) = FeatureSketch::from_bytes(&row.sketch).unwrap() else {
        panic!("the quality series holds a quality sketch");
    };
    let metrics = quality.metrics();
    (metrics.matched, metrics.mae)
}

/// The exact (joined, MAE) of predictions `ids` (every score is 0.5).
fn quality_oracle(ids: std::ops::Range<u64>) -> (u64, Option<f64>) {
    let count = ids.end - ids.start;
    let error: f64 = ids.map(|id| (0.5 - label_value(id)).abs()).sum();
    (count, Some(error / count as f64))
}

fn assert_quality(actual: (u64, Option<f64>), expected: (u64, Option<f64>)) {
    assert_eq!(actual.0, expected.0, "joined predictions");
    let (actual, expected) = (actual.1.unwrap(), expected.1.unwrap());
    assert!(
        (actual - expected).abs() < 1e-9,
        "MAE {actual} != {expected}"
    );
}

#[tokio::test]
async fn labels_read_after_a_restart_join_the_predictions_read_before_it() {
    let store = Store::in_memory().unwrap();
    let mut dead = dead_letters("restart-join");
    let mut committed = BTreeMap::new();
    // 1,000 predictions of the first hour read, stored and committed; then
    // the process stops (a deploy): what it held in memory is gone.
    {
        let mut before = driver(&store).await;
        before.assign("p/0").await.unwrap();
        read(
            &mut before,
            &mut dead,
            "p/0",
            (0..1_000).map(|i| (i, START + i as i64 * 3_000)),
        )
        .await;
        settle(&mut before, &mut committed).await;
    }
    assert_eq!(committed["p/0"], 1_000);
    // The restarted process owns both partitions; the labels arrive in
    // the next hour, the prediction partition has nothing new (idle).
    let mut after = driver(&store).await;
    after.assign("p/0").await.unwrap();
    after.set_idle("p/0", true);
    after.assign("a/0").await.unwrap();
    read_labels(
        &mut after,
        &mut dead,
        "a/0",
        (0..1_000).map(|i| (i, i, START + HOUR + 400_000 + i as i64 * 1_000)),
    )
    .await;
    settle(&mut after, &mut committed).await;
    assert_quality(
        stored_quality(&store, START).await,
        quality_oracle(0..1_000),
    );
    assert_eq!(stored_count(&store, START).await, Some(1_000));
    assert_eq!(after.engine().counters().unmatched_actuals, 0);
}

#[tokio::test]
async fn labels_read_before_their_predictions_are_stored_join_once() {
    let store = Store::in_memory().unwrap();
    let mut dead = dead_letters("late-join");
    let (mut predictions_committed, mut labels_committed) = (BTreeMap::new(), BTreeMap::new());
    // Instance A reads the predictions; it has stored the first 400 when
    // instance B reads the labels of all of them (a label topic partitioned
    // differently, read by another member of the group).
    let mut a = driver(&store).await;
    a.assign("p/0").await.unwrap();
    read(
        &mut a,
        &mut dead,
        "p/0",
        (0..400).map(|i| (i, START + i as i64 * 3_000)),
    )
    .await;
    a.checkpoint().await.unwrap();
    let mut b = driver(&store).await;
    b.assign("a/0").await.unwrap();
    let label = |i: u64| (i, i, START + HOUR + 400_000 + i as i64 * 1_000);
    read_labels(&mut b, &mut dead, "a/0", (0..950).map(label)).await;
    settle(&mut b, &mut labels_committed).await;
    assert_eq!(labels_committed["a/0"], 950);
    assert_eq!(b.engine().counters().joined, 400, "found in the store");
    assert_eq!(b.engine().counters().unmatched_actuals, 550, "pending");
    // A stores the rest and finalizes the window (400 labels joined so far).
    read(
        &mut a,
        &mut dead,
        "p/0",
        (400..1_000).map(|i| (i, START + i as i64 * 3_000)),
    )
    .await;
    a.close_all();
    settle(&mut a, &mut predictions_committed).await;
    assert_eq!(stored_quality(&store, START).await.0, 400);
    // B's next checkpoint finds the pending labels' predictions and stores
    // them as late matches; B is killed before it finalizes the window.
    b.checkpoint().await.unwrap();
    assert_eq!(b.engine().counters().late_joined, 550);
    drop(b);
    assert_eq!(stored_quality(&store, START).await.0, 400, "not finalized");
    // The next owner of a/0 rewinds to the range start of the committed
    // offset (900) and reads 900..950 again: labels that were pending, and
    // joined late already. It finalizes the window of the late matches.
    let mut c = driver(&store).await;
    c.assign("a/0").await.unwrap();
    let rewind = range_start_of(labels_committed["a/0"], RANGE);
    assert_eq!(rewind, 900);
    read_labels(&mut c, &mut dead, "a/0", (rewind..950).map(label)).await;
    settle(&mut c, &mut labels_committed).await;
    assert_eq!(c.engine().counters().unmatched_actuals, 0);
    assert_eq!(c.engine().counters().joined, 0);
    assert_quality(stored_quality(&store, START).await, quality_oracle(0..950));
    assert_eq!(stored_count(&store, START).await, Some(1_000));
}
