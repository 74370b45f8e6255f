//! Finalizing a closed window: merge every stored partial of the window
//! (all sources, all ranges, all consumer instances), compute the metrics of
//! each series against its reference, and store both.
//!
//! Each instance finalizes a window only after storing its own partials of
//! it, and later events of that window are late, so the instance that
//! finalizes last has seen every partial. Results are versioned by
//! `computed_at`, so that last computation is the one readers get.
//!
//! Each series is also compared with its previous window (merged from the
//! partials of `window_start − size`), adding the `*_vs_previous` tests.

use std::collections::BTreeMap;

use detectors::aggregate::Catalog;
use detectors::metrics::{
    apply_p_value_correction, compare_with_previous, compute, DriftThresholds,
};
use detectors::window::WindowSize;
use detectors::{FeatureSketch, SeriesKey};
use store::{Store, WindowMetrics, WindowSketch};

use crate::Error;

/// Merges partial rows by series (the store already kept the latest row of
/// each source range).
pub fn merge_partials(
    partials: &[store::PartialSketch],
) -> Result<BTreeMap<SeriesKey, FeatureSketch>, Error> {
    let mut merged: BTreeMap<SeriesKey, FeatureSketch> = BTreeMap::new();
    for partial in partials {
        let sketch = FeatureSketch::from_bytes(&partial.sketch)?;
        match merged.get_mut(&partial.key) {
            Some(existing) => existing.merge(&sketch)?,
            None => {
                merged.insert(partial.key.clone(), sketch);
            }
        }
    }
    Ok(merged)
}

/// Computes the metrics of merged window sketches.
pub fn window_results(
    catalog: &Catalog,
    window_size: WindowSize,
    merged: &BTreeMap<SeriesKey, FeatureSketch>,
    previous: &BTreeMap<SeriesKey, FeatureSketch>,
    thresholds: DriftThresholds,
    computed_at: u64,
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
            computed_at,
        });
        sketches.push(WindowSketch {
            key: key.clone(),
            window_end,
            sketch: sketch.to_bytes(),
            computed_at,
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

/// Reads, merges, computes and stores one window of one model. Returns the
/// metrics written.
pub async fn finalize_window(
    store: &Store,
    catalog: &Catalog,
    window_size: WindowSize,
    thresholds: DriftThresholds,
    model: &str,
    window_start: i64,
) -> Result<Vec<WindowMetrics>, Error> {
    let partials = store.partials_for_window(model, window_start).await?;
    let merged = merge_partials(&partials)?;
    let previous_start = window_start - window_size.millis();
    // The previous window from its partials, not its stored result: whoever
    // finalizes this window last has stored (or seen stored) every partial of
    // the previous one, whatever order windows were finalized in.
    // (No previous window before the epoch: times are stored as DateTime.)
    let previous: BTreeMap<SeriesKey, FeatureSketch> = if previous_start >= 0 {
        merge_partials(&store.partials_for_window(model, previous_start).await?)?
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
            .collect()
    } else {
        BTreeMap::new()
    };
    let computed_at = now_millis();
    let (metrics, sketches) = window_results(
        catalog,
        window_size,
        &merged,
        &previous,
        thresholds,
        computed_at,
    );
    store
        .write_window_results(metrics.clone(), sketches)
        .await?;
    Ok(metrics)
}

/// Wall-clock milliseconds, used as the version of computed rows.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
