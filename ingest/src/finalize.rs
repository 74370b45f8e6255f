//! Finalizing a closed window: merge every stored partial of the window
//! (all sources, all ranges, all consumer instances), compute the metrics of
//! each series against its reference, and store both.
//!
//! ## A stored result is a function of the stored partials
//! Each instance finalizes a window only after storing its own partials of
//! it. Whatever the order, timing and number of finalizations (on one
//! instance or several), the result readers get is the one computed from
//! the largest set of partials: its version is derived from the partials it
//! was merged from ([`result_version`]), not from a clock, so a result
//! computed from fewer partials never replaces one computed from more,
//! whoever writes last. A window whose partials change after it was
//! finalized is finalized again by whoever recorded the change (see
//! [`crate::engine`] on the windows still to finalize).
//!
//! Each series is also compared with its previous window (merged from the
//! partials of `window_start − size`), adding the `*_vs_previous` tests.

use std::collections::BTreeMap;

use detectors::catalog::Catalog;
use detectors::metrics::{
    apply_p_value_correction, compare_with_previous, compute, DriftThresholds,
};
use detectors::segments::fold_segment_overflow;
use detectors::window::WindowSize;
use detectors::{FeatureSketch, SeriesKey};
use store::{Store, WindowMetrics, WindowSketch};

use crate::Error;

/// The latest range end of each (source, range start) among `partials`.
fn latest_range_ends(partials: &[store::PartialSketch]) -> BTreeMap<(&str, u64), u64> {
    let mut latest: BTreeMap<(&str, u64), u64> = BTreeMap::new();
    for partial in partials {
        let end = latest
            .entry((&partial.source, partial.range_start))
            .or_default();
        *end = (*end).max(partial.range_end);
    }
    latest
}

/// Adds the outcomes of a window's late matches (pending labels joined
/// after their range was stored; see [`crate::join`]) to its merged
/// sketches: recorded as the engine records a joined label.
pub fn merge_late_matches(
    catalog: &Catalog,
    merged: &mut BTreeMap<SeriesKey, FeatureSketch>,
    late: &[store::LateMatch],
) -> Result<(), Error> {
    if late.is_empty() {
        return Ok(());
    }
    let mut aggregates = detectors::WindowAggregates::new(usize::MAX);
    for late in late {
        aggregates.record_outcome(
            catalog,
            &late.prediction.model,
            &crate::join::pending_of(&late.prediction),
            &crate::join::label_of(&late.label.value),
        );
    }
    for (key, sketch) in aggregates.snapshot(catalog) {
        match merged.get_mut(&key) {
            Some(existing) => existing.merge(&sketch)?,
            None => {
                merged.insert(key, sketch);
            }
        }
    }
    Ok(())
}

/// Merges partial rows by series, then folds the segments the window as a
/// whole does not admit into `key=__other__` ([`fold_segment_overflow`]).
///
/// Each checkpoint of a source range writes the whole range again, with its
/// end offset as version; the store keeps the latest row per series, but a
/// series can leave a range (its segment value displaced and folded into
/// `__other__`), so only rows of a range's latest version are merged: an
/// older row would count the folded events twice.
pub fn merge_partials(
    catalog: &Catalog,
    partials: &[store::PartialSketch],
) -> Result<MergedWindow, Error> {
    let latest = latest_range_ends(partials);
    let mut sketches: BTreeMap<SeriesKey, FeatureSketch> = BTreeMap::new();
    for partial in partials {
        if latest[&(partial.source.as_str(), partial.range_start)] != partial.range_end {
            continue;
        }
        let sketch = FeatureSketch::from_bytes(&partial.sketch)?;
        match sketches.get_mut(&partial.key) {
            Some(existing) => existing.merge(&sketch)?,
            None => {
                sketches.insert(partial.key.clone(), sketch);
            }
        }
    }
    let folded_segment_values = fold_segment_overflow(catalog, &mut sketches)?
        .values()
        .sum();
    Ok(MergedWindow {
        sketches,
        folded_segment_values,
    })
}

/// The merged sketches of a window ([`merge_partials`]).
#[derive(Debug, Default)]
pub struct MergedWindow {
    /// One sketch per series.
    pub sketches: BTreeMap<SeriesKey, FeatureSketch>,
    /// Segment values that some range admitted and the window does not.
    pub folded_segment_values: u64,
}

/// Computes the metrics of merged window sketches.
pub fn window_results(
    catalog: &Catalog,
    window_size: WindowSize,
    merged: &BTreeMap<SeriesKey, FeatureSketch>,
    previous: &BTreeMap<SeriesKey, FeatureSketch>,
    thresholds: DriftThresholds,
    version: u64,
) -> (Vec<WindowMetrics>, Vec<WindowSketch>) {
    let mut metrics = Vec::with_capacity(merged.len());
    let mut sketches = Vec::with_capacity(merged.len());
    for (key, sketch) in merged {
        let reference = catalog.reference(&key.model, &key.model_version);
        let window_end = window_size.window_end(key.window_start);
        metrics.push(WindowMetrics {
            key: key.clone(),
            window_end,
            metrics: {
                let feature_reference = reference.and_then(|r| r.feature(&key.feature));
                let mut metrics = compute(sketch, feature_reference, thresholds);
                if let Some(previous) = previous.get(key) {
                    metrics.tests.extend(compare_with_previous(
                        sketch,
                        previous,
                        feature_reference,
                        thresholds,
                    ));
                }
                metrics
            },
            reference_source: reference.map(|r| r.profile().source.clone()),
            version,
        });
        sketches.push(WindowSketch {
            key: key.clone(),
            window_end,
            sketch: sketch.to_bytes(),
            version,
        });
    }
    correct_per_group(&mut metrics, thresholds);
    (metrics, sketches)
}

/// Corrects p-values across the series of each (model, version, segment,
/// window): `metrics` is in key order, so each group is contiguous.
fn correct_per_group(metrics: &mut [WindowMetrics], thresholds: DriftThresholds) {
    let group_of = |m: &WindowMetrics| {
        (
            m.key.window_start,
            m.key.model.clone(),
            m.key.model_version.clone(),
            m.key.segment.clone(),
        )
    };
    let mut start = 0;
    while start < metrics.len() {
        let group = group_of(&metrics[start]);
        let end = start
            + metrics[start..]
                .iter()
                .take_while(|m| group_of(m) == group)
                .count();
        let mut window: Vec<_> = metrics[start..end]
            .iter()
            .map(|m| m.metrics.clone())
            .collect();
        apply_p_value_correction(&mut window, thresholds);
        for (record, corrected) in metrics[start..end].iter_mut().zip(window) {
            record.metrics = corrected;
        }
        start = end;
    }
}

/// What [`finalize_window`] wrote.
#[derive(Debug)]
pub struct FinalizedWindow {
    /// The metrics of every series.
    pub metrics: Vec<WindowMetrics>,
    /// Segment values folded into `__other__` when merging the partials.
    pub folded_segment_values: u64,
}

/// Versions derived from partials carry this bit, so that they win over
/// the wall-clock milliseconds that earlier releases stored as versions
/// (a window finalized before an upgrade is replaced when finalized again).
/// Below 2⁶³: SQLite keeps a `UInt64` in a signed integer.
const DERIVED_VERSION: u64 = 1 << 62;

/// The offsets covered by `partials`: over each (source, range start), the
/// latest range end minus the range start.
fn offsets_covered(partials: &[store::PartialSketch]) -> u64 {
    latest_range_ends(partials)
        .iter()
        .map(|((_, start), end)| end.saturating_sub(*start))
        .fold(0u64, u64::saturating_add)
}

/// The version of a window's result computed from `window`'s partials and
/// its previous window's (the `*_vs_previous` tests read those), and
/// `late_matches` late matches of both: the offsets both sets cover plus
/// the late matches, marked [`DERIVED_VERSION`].
///
/// A range's rows are only ever replaced by rows of a larger end offset and
/// new ranges only add offsets, so the partials stored for a window only
/// grow, and with them this number: a result computed from more partials
/// has a higher version, and two results of the same version were computed
/// from the same partials (equal, unless the reference or thresholds
/// changed in between; then the later write wins, as both backends keep the
/// last of equal versions). Late matches are only ever added, too.
pub fn result_version(
    window: &[store::PartialSketch],
    previous: &[store::PartialSketch],
    late_matches: usize,
) -> u64 {
    DERIVED_VERSION
        | offsets_covered(window)
            .saturating_add(offsets_covered(previous))
            .saturating_add(late_matches as u64)
}

/// Reads, merges, computes and stores one window of one model.
pub async fn finalize_window(
    store: &Store,
    catalog: &Catalog,
    window_size: WindowSize,
    thresholds: DriftThresholds,
    model: &str,
    window_start: i64,
) -> Result<FinalizedWindow, Error> {
    let partials = store.partials_for_window(model, window_start).await?;
    let late = store.late_matches_for_window(model, window_start).await?;
    let mut merged = merge_partials(catalog, &partials)?;
    merge_late_matches(catalog, &mut merged.sketches, &late)?;
    let previous_start = window_start - window_size.millis();
    // The previous window from its partials, not its stored result: whoever
    // finalizes this window last has stored (or seen stored) every partial of
    // the previous one, whatever order windows were finalized in.
    // (No previous window before the epoch: times are stored as DateTime.)
    let (previous_partials, previous_late) = if previous_start >= 0 {
        (
            store.partials_for_window(model, previous_start).await?,
            store.late_matches_for_window(model, previous_start).await?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let mut previous_merged = merge_partials(catalog, &previous_partials)?.sketches;
    merge_late_matches(catalog, &mut previous_merged, &previous_late)?;
    let previous: BTreeMap<SeriesKey, FeatureSketch> = previous_merged
        .into_iter()
        .map(|(key, sketch)| {
            (
                SeriesKey {
                    window_start,
                    ..key
                },
                sketch,
            )
        })
        .collect();
    let (metrics, sketches) = window_results(
        catalog,
        window_size,
        &merged.sketches,
        &previous,
        thresholds,
        result_version(
            &partials,
            &previous_partials,
            late.len() + previous_late.len(),
        ),
    );
    store
        .write_window_results(metrics.clone(), sketches)
        .await?;
    Ok(FinalizedWindow {
        metrics,
        folded_segment_values: merged.folded_segment_values,
    })
}

/// Wall-clock milliseconds since the epoch.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use detectors::operational::OperationalSketch;
    use detectors::spec::{ModelSpec, Task};

    fn row(range_end: u64, segment: &str, events: u64) -> store::PartialSketch {
        let mut sketch = OperationalSketch::default();
        for _ in 0..events {
            sketch.record(false, true, None);
        }
        store::PartialSketch {
            source: "predictions/0".into(),
            range_start: 0,
            range_end,
            key: SeriesKey {
                window_start: 0,
                model: "m".into(),
                model_version: "1".into(),
                segment: segment.into(),
                feature: "operations".into(),
            },
            sketch: FeatureSketch::Operational(sketch).to_bytes(),
        }
    }

    #[test]
    fn only_the_latest_version_of_a_range_is_merged() {
        let spec = ModelSpec::new("m", Task::Regression, vec![], vec!["k".into()], 5, 5).unwrap();
        let catalog = Catalog::new([spec]);
        // At offset 10 the range had `k=a`; by offset 20 `a` was displaced
        // and its 3 events moved to `k=__other__`, so the store still holds
        // the old `k=a` row beside the new rows.
        let partials = [
            row(10, "k=a", 3),
            row(10, "all", 3),
            row(20, "k=__other__", 7),
            row(20, "all", 7),
        ];
        let merged = merge_partials(&catalog, &partials).unwrap();
        let counts: BTreeMap<&str, u64> = merged
            .sketches
            .iter()
            .map(|(key, sketch)| (key.segment.as_str(), sketch.observations()))
            .collect();
        assert_eq!(counts, BTreeMap::from([("all", 7), ("k=__other__", 7)]));
    }
}
