//! Plain-text tables of window metrics, for the demo and `tidewatch windows`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use store::WindowMetrics;

/// Formats a window start (ms since the epoch) as `YYYY-MM-DD HH:MM` UTC.
pub fn format_time(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|time| time.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| millis.to_string())
}

/// One row per window, one column per series: the PSI against the reference,
/// suffixed with `*` when the series drifted; `-` without reference.
/// Only rows of `segment` are shown; `series` gives the column order.
pub fn drift_table(metrics: &[WindowMetrics], segment: &str, series: &[String]) -> String {
    let mut by_window: BTreeMap<i64, BTreeMap<&str, &WindowMetrics>> = BTreeMap::new();
    for record in metrics.iter().filter(|m| m.key.segment == segment) {
        by_window
            .entry(record.key.window_start)
            .or_default()
            .insert(record.key.feature.as_str(), record);
    }
    let present: BTreeSet<&str> = by_window
        .values()
        .flat_map(|row| row.keys().copied())
        .collect();
    let columns: Vec<&str> = series
        .iter()
        .map(String::as_str)
        .filter(|name| present.contains(name))
        .collect();
    let width = |name: &str| name.len().max(8);
    let mut out = String::new();
    let _ = write!(out, "{:<16}  {:>11}", "window (UTC)", "predictions");
    for column in &columns {
        let _ = write!(out, "  {:>w$}", column, w = width(column));
    }
    out.push('\n');
    for (window_start, row) in &by_window {
        let events = row.get("prediction.score").map_or_else(
            || {
                row.values()
                    .map(|m| m.metrics.count + m.metrics.missing + m.metrics.type_mismatch)
                    .max()
                    .unwrap_or(0)
            },
            |m| m.metrics.count + m.metrics.missing,
        );
        let _ = write!(out, "{:<16}  {:>7}", format_time(*window_start), events);
        for column in &columns {
            let cell = match row.get(column) {
                None => String::new(),
                Some(record) => match (record.metrics.psi, record.metrics.drifted) {
                    (Some(psi), Some(true)) => format!("{psi:.3}*"),
                    (Some(psi), _) => format!("{psi:.3} "),
                    (None, _) => "- ".to_owned(),
                },
            };
            let _ = write!(out, "  {:>w$}", cell, w = width(column));
        }
        out.push('\n');
    }
    out
}

/// The first window in which any series drifted, and which series did.
pub fn drift_onset(metrics: &[WindowMetrics], segment: &str) -> Option<(i64, Vec<String>)> {
    let mut drifted: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for record in metrics
        .iter()
        .filter(|m| m.key.segment == segment && m.metrics.drifted == Some(true))
    {
        drifted
            .entry(record.key.window_start)
            .or_default()
            .insert(record.key.feature.clone());
    }
    drifted
        .into_iter()
        .next()
        .map(|(start, features)| (start, features.into_iter().collect()))
}

/// One row per window of the `quality` series: joined predictions, label
/// coverage (joined / predictions), accuracy, F1, ROC AUC, log loss.
pub fn quality_table(metrics: &[WindowMetrics], segment: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16}  {:>11}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}",
        "window (UTC)", "joined", "coverage", "accuracy", "f1", "roc_auc", "log_loss"
    );
    let predictions: BTreeMap<i64, u64> = metrics
        .iter()
        .filter(|m| m.key.segment == segment && m.key.feature == "operations")
        .map(|m| (m.key.window_start, m.metrics.count))
        .collect();
    let cell = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.3}"));
    for record in metrics
        .iter()
        .filter(|m| m.key.segment == segment && m.key.feature == "quality")
    {
        let Some(quality) = &record.metrics.quality else {
            continue;
        };
        let coverage = predictions
            .get(&record.key.window_start)
            .filter(|count| **count > 0)
            .map(|count| quality.matched as f64 / *count as f64);
        let _ = writeln!(
            out,
            "{:<16}  {:>11}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}",
            format_time(record.key.window_start),
            quality.matched,
            cell(coverage),
            cell(quality.accuracy),
            cell(quality.f1),
            cell(quality.roc_auc),
            cell(quality.log_loss)
        );
    }
    out
}

/// One row per window of the `estimated_quality` series: accuracy and ROC
/// AUC estimated from the scores (`!` outside the band), with the realized
/// values of the `quality` series once labels joined (`-` before).
pub fn estimated_table(metrics: &[WindowMetrics], segment: &str) -> String {
    use detectors::estimation::PerformanceMetric;
    let realized: BTreeMap<i64, &detectors::quality::QualityMetrics> = metrics
        .iter()
        .filter(|m| m.key.segment == segment && m.key.feature == "quality")
        .filter_map(|m| Some((m.key.window_start, m.metrics.quality.as_ref()?)))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16}  {:>11}  {:>20}  {:>8}  {:>20}  {:>8}",
        "window (UTC)",
        "predictions",
        "accuracy estimated",
        "realized",
        "roc_auc estimated",
        "realized"
    );
    let cell = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.3}"));
    for record in metrics
        .iter()
        .filter(|m| m.key.segment == segment && m.key.feature == detectors::spec::ESTIMATED_QUALITY)
    {
        let estimate = |metric: PerformanceMetric| {
            record
                .metrics
                .estimated
                .iter()
                .find(|e| e.metric == metric)
                .map_or("-".to_owned(), |e| {
                    format!(
                        "{}{:.3} [{}, {}]",
                        if e.alert { "!" } else { " " },
                        e.value,
                        cell(e.lower_threshold),
                        cell(e.upper_threshold)
                    )
                })
        };
        let quality = realized.get(&record.key.window_start);
        let _ = writeln!(
            out,
            "{:<16}  {:>11}  {:>20}  {:>8}  {:>20}  {:>8}",
            format_time(record.key.window_start),
            record.metrics.count,
            estimate(PerformanceMetric::Accuracy),
            cell(quality.and_then(|q| q.accuracy)),
            estimate(PerformanceMetric::RocAuc),
            cell(quality.and_then(|q| q.roc_auc)),
        );
    }
    out
}

/// One row per window of the `multivariate` series: the rows' mean
/// reconstruction error (`!` outside the band) and the band.
pub fn multivariate_table(metrics: &[WindowMetrics], segment: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16}  {:>11}  {:>11}  {:>17}",
        "window (UTC)", "rows", "mean error", "band"
    );
    let cell = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.3}"));
    for record in metrics
        .iter()
        .filter(|m| m.key.segment == segment && m.key.feature == detectors::spec::MULTIVARIATE)
    {
        let m = &record.metrics;
        let _ = writeln!(
            out,
            "{:<16}  {:>11}  {:>11}  {:>17}",
            format_time(record.key.window_start),
            m.count,
            format!(
                "{}{}",
                if m.drifted == Some(true) { "!" } else { " " },
                cell(m.mean)
            ),
            format!(
                "[{}, {}]",
                cell(m.reconstruction_lower),
                cell(m.reconstruction_upper)
            ),
        );
    }
    out
}
