//! Flat row structs shared by both backends, and their conversions.
//!
//! Field order is column order: ClickHouse's RowBinary format has no names,
//! so a struct and its `SELECT` list must agree position by position (the
//! round-trip tests in `clickhouse_store` check that against a real server).
//! Times are `DateTime` columns, i.e. whole seconds since the epoch as `u32`.

use detectors::metrics::TestResult;
use detectors::quality::QualityMetrics;
use detectors::spec::FeatureKind;
use detectors::{FeatureWindowMetrics, SeriesKey};
use serde::{Deserialize, Serialize};

use crate::{Error, PartialSketch, WindowMetrics, WindowSketch};

pub(crate) fn to_seconds(millis: i64) -> Result<u32, Error> {
    u32::try_from(millis.div_euclid(1000))
        .map_err(|_| Error::Corrupt(format!("time {millis} ms is outside the DateTime range")))
}

/// Seconds for an exclusive upper bound: rounds up, so `< bound` keeps every
/// window starting before `millis`. Clamped to the `DateTime` range.
pub(crate) fn upper_bound_seconds(millis: i64) -> u32 {
    let seconds = millis.div_euclid(1000) + i64::from(millis.rem_euclid(1000) != 0);
    seconds.clamp(0, i64::from(u32::MAX)) as u32
}

/// Seconds for an inclusive lower bound, clamped to the `DateTime` range.
pub(crate) fn lower_bound_seconds(millis: i64) -> u32 {
    upper_bound_seconds(millis)
}

fn series_key(
    window_start: u32,
    model: String,
    model_version: String,
    segment: String,
    feature: String,
) -> SeriesKey {
    SeriesKey {
        window_start: to_millis(window_start),
        model,
        model_version,
        segment,
        feature,
    }
}

pub(crate) fn to_millis(seconds: u32) -> i64 {
    i64::from(seconds) * 1000
}

/// One row of `window_metrics`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct MetricsRow {
    pub model: String,
    pub model_version: String,
    pub segment: String,
    pub feature: String,
    pub kind: String,
    pub window_start: u32,
    pub window_end: u32,
    pub count: u64,
    pub missing: u64,
    pub type_mismatch: u64,
    pub missing_rate: Option<f64>,
    pub mean: Option<f64>,
    pub std_dev: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub p05: Option<f64>,
    pub p25: Option<f64>,
    pub p50: Option<f64>,
    pub p75: Option<f64>,
    pub p95: Option<f64>,
    pub distinct_categories: Option<u64>,
    pub unseen_categories: Option<u64>,
    pub psi: Option<f64>,
    pub ks_statistic: Option<f64>,
    pub ks_p_value: Option<f64>,
    pub chi_square: Option<f64>,
    pub chi_square_p_value: Option<f64>,
    pub psi_threshold: f64,
    pub drifted: Option<u8>,
    pub reference_source: String,
    pub computed_at: u64,
    pub js_distance: Option<f64>,
    pub hellinger: Option<f64>,
    pub kl_divergence: Option<f64>,
    pub l_infinity: Option<f64>,
    pub wasserstein: Option<f64>,
    pub wasserstein_normalized: Option<f64>,
    pub out_of_range: Option<u64>,
    pub constant: Option<u8>,
    pub latency_p50: Option<f64>,
    pub latency_p95: Option<f64>,
    pub latency_p99: Option<f64>,
    pub latency_max: Option<f64>,
    pub error_rate: Option<f64>,
    pub null_prediction_rate: Option<f64>,
    pub test_names: Vec<String>,
    pub test_values: Vec<f64>,
    pub test_thresholds: Vec<f64>,
    pub test_drifted: Vec<u8>,
    pub warnings: Vec<String>,
    pub accuracy: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub roc_auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    pub calibration_error: Option<f64>,
    pub mae: Option<f64>,
    pub rmse: Option<f64>,
    pub mape: Option<f64>,
    pub r2: Option<f64>,
    pub ref_p05: Option<f64>,
    pub ref_p25: Option<f64>,
    pub ref_p50: Option<f64>,
    pub ref_p75: Option<f64>,
    pub ref_p95: Option<f64>,
}

/// Columns of `window_metrics`, in [`MetricsRow`] order.
pub(crate) const METRICS_COLUMNS: [&str; 67] = [
    "model",
    "model_version",
    "segment",
    "feature",
    "kind",
    "window_start",
    "window_end",
    "count",
    "missing",
    "type_mismatch",
    "missing_rate",
    "mean",
    "std_dev",
    "min",
    "max",
    "p05",
    "p25",
    "p50",
    "p75",
    "p95",
    "distinct_categories",
    "unseen_categories",
    "psi",
    "ks_statistic",
    "ks_p_value",
    "chi_square",
    "chi_square_p_value",
    "psi_threshold",
    "drifted",
    "reference_source",
    "computed_at",
    "js_distance",
    "hellinger",
    "kl_divergence",
    "l_infinity",
    "wasserstein",
    "wasserstein_normalized",
    "out_of_range",
    "constant",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "latency_max",
    "error_rate",
    "null_prediction_rate",
    "test_names",
    "test_values",
    "test_thresholds",
    "test_drifted",
    "warnings",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "log_loss",
    "brier",
    "calibration_error",
    "mae",
    "rmse",
    "mape",
    "r2",
    "ref_p05",
    "ref_p25",
    "ref_p50",
    "ref_p75",
    "ref_p95",
];

/// Columns added to `window_metrics` after its first version, as
/// (name, ClickHouse type, SQLite type): start-up adds those an existing
/// table lacks.
pub(crate) const ADDED_METRICS_COLUMNS: [(&str, &str, &str); 36] = [
    ("js_distance", "Nullable(Float64)", "REAL"),
    ("hellinger", "Nullable(Float64)", "REAL"),
    ("kl_divergence", "Nullable(Float64)", "REAL"),
    ("l_infinity", "Nullable(Float64)", "REAL"),
    ("wasserstein", "Nullable(Float64)", "REAL"),
    ("wasserstein_normalized", "Nullable(Float64)", "REAL"),
    ("out_of_range", "Nullable(UInt64)", "INTEGER"),
    ("constant", "Nullable(UInt8)", "INTEGER"),
    ("latency_p50", "Nullable(Float64)", "REAL"),
    ("latency_p95", "Nullable(Float64)", "REAL"),
    ("latency_p99", "Nullable(Float64)", "REAL"),
    ("latency_max", "Nullable(Float64)", "REAL"),
    ("error_rate", "Nullable(Float64)", "REAL"),
    ("null_prediction_rate", "Nullable(Float64)", "REAL"),
    ("test_names", "Array(String)", "TEXT"),
    ("test_values", "Array(Float64)", "TEXT"),
    ("test_thresholds", "Array(Float64)", "TEXT"),
    ("test_drifted", "Array(UInt8)", "TEXT"),
    ("warnings", "Array(String)", "TEXT"),
    ("accuracy", "Nullable(Float64)", "REAL"),
    ("precision", "Nullable(Float64)", "REAL"),
    ("recall", "Nullable(Float64)", "REAL"),
    ("f1", "Nullable(Float64)", "REAL"),
    ("roc_auc", "Nullable(Float64)", "REAL"),
    ("log_loss", "Nullable(Float64)", "REAL"),
    ("brier", "Nullable(Float64)", "REAL"),
    ("calibration_error", "Nullable(Float64)", "REAL"),
    ("mae", "Nullable(Float64)", "REAL"),
    ("rmse", "Nullable(Float64)", "REAL"),
    ("mape", "Nullable(Float64)", "REAL"),
    ("r2", "Nullable(Float64)", "REAL"),
    ("ref_p05", "Nullable(Float64)", "REAL"),
    ("ref_p25", "Nullable(Float64)", "REAL"),
    ("ref_p50", "Nullable(Float64)", "REAL"),
    ("ref_p75", "Nullable(Float64)", "REAL"),
    ("ref_p95", "Nullable(Float64)", "REAL"),
];

impl MetricsRow {
    pub(crate) fn from_record(record: &WindowMetrics) -> Result<Self, Error> {
        let m = &record.metrics;
        let quantile = |i: usize| m.quantiles.map(|q| q[i]);
        let reference_quantile = |i: usize| m.reference_quantiles.map(|q| q[i]);
        // Every quality column is null outside the `quality` series.
        let quality = m.quality.clone().unwrap_or_default();
        Ok(Self {
            model: record.key.model.clone(),
            model_version: record.key.model_version.clone(),
            segment: record.key.segment.clone(),
            feature: record.key.feature.clone(),
            kind: m.kind.as_str().to_owned(),
            window_start: to_seconds(record.key.window_start)?,
            window_end: to_seconds(record.window_end)?,
            count: m.count,
            missing: m.missing,
            type_mismatch: m.type_mismatch,
            missing_rate: m.missing_rate,
            mean: m.mean,
            std_dev: m.std_dev,
            min: m.min,
            max: m.max,
            p05: quantile(0),
            p25: quantile(1),
            p50: quantile(2),
            p75: quantile(3),
            p95: quantile(4),
            distinct_categories: m.distinct_categories,
            unseen_categories: m.unseen_categories,
            psi: m.psi,
            ks_statistic: m.ks_statistic,
            ks_p_value: m.ks_p_value,
            chi_square: m.chi_square,
            chi_square_p_value: m.chi_square_p_value,
            psi_threshold: m.psi_threshold,
            drifted: m.drifted.map(u8::from),
            reference_source: record.reference_source.clone().unwrap_or_default(),
            computed_at: record.computed_at,
            js_distance: m.js_distance,
            hellinger: m.hellinger,
            kl_divergence: m.kl_divergence,
            l_infinity: m.l_infinity,
            wasserstein: m.wasserstein,
            wasserstein_normalized: m.wasserstein_normalized,
            out_of_range: m.out_of_range,
            constant: m.constant.map(u8::from),
            latency_p50: m.latency_p50,
            latency_p95: m.latency_p95,
            latency_p99: m.latency_p99,
            latency_max: m.latency_max,
            error_rate: m.error_rate,
            null_prediction_rate: m.null_prediction_rate,
            test_names: m.tests.iter().map(|t| t.test.clone()).collect(),
            test_values: m.tests.iter().map(|t| t.value).collect(),
            test_thresholds: m.tests.iter().map(|t| t.threshold).collect(),
            test_drifted: m.tests.iter().map(|t| u8::from(t.drifted)).collect(),
            warnings: m.warnings.clone(),
            accuracy: quality.accuracy,
            precision: quality.precision,
            recall: quality.recall,
            f1: quality.f1,
            roc_auc: quality.roc_auc,
            log_loss: quality.log_loss,
            brier: quality.brier,
            calibration_error: quality.calibration_error,
            mae: quality.mae,
            rmse: quality.rmse,
            mape: quality.mape,
            r2: quality.r2,
            ref_p05: reference_quantile(0),
            ref_p25: reference_quantile(1),
            ref_p50: reference_quantile(2),
            ref_p75: reference_quantile(3),
            ref_p95: reference_quantile(4),
        })
    }

    pub(crate) fn into_record(self) -> Result<WindowMetrics, Error> {
        let kind = match self.kind.as_str() {
            "numeric" => FeatureKind::Numeric,
            "categorical" => FeatureKind::Categorical,
            "operational" => FeatureKind::Operational,
            "quality" => FeatureKind::Quality,
            other => return Err(Error::Corrupt(format!("unknown feature kind `{other}`"))),
        };
        let five = |values: [Option<f64>; 5]| match values {
            [Some(a), Some(b), Some(c), Some(d), Some(e)] => Some([a, b, c, d, e]),
            _ => None,
        };
        let quantiles = five([self.p05, self.p25, self.p50, self.p75, self.p95]);
        let reference_quantiles = five([
            self.ref_p05,
            self.ref_p25,
            self.ref_p50,
            self.ref_p75,
            self.ref_p95,
        ]);
        Ok(WindowMetrics {
            key: series_key(
                self.window_start,
                self.model,
                self.model_version,
                self.segment,
                self.feature,
            ),
            window_end: to_millis(self.window_end),
            metrics: FeatureWindowMetrics {
                kind,
                count: self.count,
                missing: self.missing,
                type_mismatch: self.type_mismatch,
                missing_rate: self.missing_rate,
                mean: self.mean,
                std_dev: self.std_dev,
                min: self.min,
                max: self.max,
                quantiles,
                reference_quantiles,
                distinct_categories: self.distinct_categories,
                unseen_categories: self.unseen_categories,
                psi: self.psi,
                ks_statistic: self.ks_statistic,
                ks_p_value: self.ks_p_value,
                chi_square: self.chi_square,
                chi_square_p_value: self.chi_square_p_value,
                js_distance: self.js_distance,
                hellinger: self.hellinger,
                kl_divergence: self.kl_divergence,
                l_infinity: self.l_infinity,
                wasserstein: self.wasserstein,
                wasserstein_normalized: self.wasserstein_normalized,
                out_of_range: self.out_of_range,
                constant: self.constant.map(|flag| flag != 0),
                latency_p50: self.latency_p50,
                latency_p95: self.latency_p95,
                latency_p99: self.latency_p99,
                latency_max: self.latency_max,
                error_rate: self.error_rate,
                null_prediction_rate: self.null_prediction_rate,
                tests: self
                    .test_names
                    .into_iter()
                    .zip(self.test_values)
                    .zip(self.test_thresholds)
                    .zip(self.test_drifted)
                    .map(|(((test, value), threshold), drifted)| TestResult {
                        test,
                        value,
                        threshold,
                        drifted: drifted != 0,
                    })
                    .collect(),
                warnings: self.warnings,
                quality: (kind == FeatureKind::Quality).then_some(QualityMetrics {
                    matched: self.count,
                    accuracy: self.accuracy,
                    precision: self.precision,
                    recall: self.recall,
                    f1: self.f1,
                    roc_auc: self.roc_auc,
                    log_loss: self.log_loss,
                    brier: self.brier,
                    calibration_error: self.calibration_error,
                    mae: self.mae,
                    rmse: self.rmse,
                    mape: self.mape,
                    r2: self.r2,
                }),
                psi_threshold: self.psi_threshold,
                drifted: self.drifted.map(|flag| flag != 0),
            },
            reference_source: (!self.reference_source.is_empty()).then_some(self.reference_source),
            computed_at: self.computed_at,
        })
    }
}

/// One row of `window_partials`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct PartialRow {
    pub model: String,
    pub model_version: String,
    pub segment: String,
    pub feature: String,
    pub window_start: u32,
    pub source: String,
    pub range_start: u64,
    pub range_end: u64,
    #[serde(with = "serde_bytes")]
    pub sketch: Vec<u8>,
}

impl PartialRow {
    pub(crate) fn from_record(record: PartialSketch) -> Result<Self, Error> {
        Ok(Self {
            window_start: to_seconds(record.key.window_start)?,
            model: record.key.model,
            model_version: record.key.model_version,
            segment: record.key.segment,
            feature: record.key.feature,
            source: record.source,
            range_start: record.range_start,
            range_end: record.range_end,
            sketch: record.sketch,
        })
    }

    pub(crate) fn into_record(self) -> PartialSketch {
        PartialSketch {
            source: self.source,
            range_start: self.range_start,
            range_end: self.range_end,
            key: series_key(
                self.window_start,
                self.model,
                self.model_version,
                self.segment,
                self.feature,
            ),
            sketch: self.sketch,
        }
    }
}

/// One row of `window_sketches`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct SketchRow {
    pub model: String,
    pub model_version: String,
    pub segment: String,
    pub feature: String,
    pub window_start: u32,
    pub window_end: u32,
    #[serde(with = "serde_bytes")]
    pub sketch: Vec<u8>,
    pub computed_at: u64,
}

impl SketchRow {
    pub(crate) fn from_record(record: WindowSketch) -> Result<Self, Error> {
        Ok(Self {
            window_start: to_seconds(record.key.window_start)?,
            window_end: to_seconds(record.window_end)?,
            model: record.key.model,
            model_version: record.key.model_version,
            segment: record.key.segment,
            feature: record.key.feature,
            sketch: record.sketch,
            computed_at: record.computed_at,
        })
    }

    pub(crate) fn into_record(self) -> WindowSketch {
        WindowSketch {
            key: series_key(
                self.window_start,
                self.model,
                self.model_version,
                self.segment,
                self.feature,
            ),
            window_end: to_millis(self.window_end),
            sketch: self.sketch,
            computed_at: self.computed_at,
        }
    }
}

/// One row of `reference_profiles`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct ReferenceRow {
    pub model: String,
    pub model_version: String,
    pub source: String,
    pub row_count: u64,
    pub profile: String,
    pub created_at: u64,
}

/// One row of `alerts`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct AlertRow {
    pub id: String,
    pub status: String,
    pub window_start: u32,
    pub window_end: u32,
    pub rule: String,
    pub model: String,
    pub model_version: String,
    pub segment: String,
    pub severity: String,
    pub repeat: u8,
    pub summary: String,
    pub payload: String,
    pub created_at: u64,
}

impl AlertRow {
    pub(crate) fn from_record(record: crate::AlertRecord) -> Result<Self, Error> {
        Ok(Self {
            window_start: to_seconds(record.window_start)?,
            window_end: to_seconds(record.window_end)?,
            id: record.id,
            status: record.status,
            rule: record.rule,
            model: record.model,
            model_version: record.model_version,
            segment: record.segment,
            severity: record.severity,
            repeat: u8::from(record.repeat),
            summary: record.summary,
            payload: record.payload,
            created_at: record.created_at,
        })
    }

    pub(crate) fn into_record(self) -> crate::AlertRecord {
        crate::AlertRecord {
            id: self.id,
            status: self.status,
            window_start: to_millis(self.window_start),
            window_end: to_millis(self.window_end),
            rule: self.rule,
            model: self.model,
            model_version: self.model_version,
            segment: self.segment,
            severity: self.severity,
            repeat: self.repeat != 0,
            summary: self.summary,
            payload: self.payload,
            created_at: self.created_at,
        }
    }
}

/// One row of `alert_deliveries`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct DeliveryRow {
    pub alert_id: String,
    pub status: String,
    pub window_start: u32,
    pub channel: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: u64,
    pub last_error: String,
    pub updated_at: u64,
}

impl DeliveryRow {
    pub(crate) fn from_record(record: crate::Delivery) -> Result<Self, Error> {
        Ok(Self {
            window_start: to_seconds(record.window_start)?,
            alert_id: record.alert_id,
            status: record.status,
            channel: record.channel,
            state: record.state.as_str().to_owned(),
            attempts: record.attempts,
            next_attempt_at: record.next_attempt_at,
            last_error: record.last_error,
            updated_at: record.updated_at,
        })
    }

    pub(crate) fn into_record(self) -> Result<crate::Delivery, Error> {
        Ok(crate::Delivery {
            state: crate::DeliveryState::parse(&self.state)?,
            alert_id: self.alert_id,
            status: self.status,
            window_start: to_millis(self.window_start),
            channel: self.channel,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error,
            updated_at: self.updated_at,
        })
    }
}

/// One row of `pipeline_stats`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct PipelineStatsRow {
    pub at: u32,
    pub instance: String,
    pub topic: String,
    pub consumed: u64,
    pub dead_lettered: u64,
    pub late: u64,
    pub lag: i64,
}

impl PipelineStatsRow {
    pub(crate) fn from_record(record: crate::PipelineStats) -> Result<Self, Error> {
        Ok(Self {
            at: to_seconds(record.time)?,
            instance: record.instance,
            topic: record.topic,
            consumed: record.consumed,
            dead_lettered: record.dead_lettered,
            late: record.late,
            lag: record.lag,
        })
    }

    pub(crate) fn into_record(self) -> crate::PipelineStats {
        crate::PipelineStats {
            time: to_millis(self.at),
            instance: self.instance,
            topic: self.topic,
            consumed: self.consumed,
            dead_lettered: self.dead_lettered,
            late: self.late,
            lag: self.lag,
        }
    }
}

/// One row of `range_fingerprints`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct RangeFingerprintRow {
    pub partition: String,
    pub incarnation: u32,
    pub range_start: u64,
    pub first_offset: u64,
    pub fingerprint: u64,
}

impl RangeFingerprintRow {
    pub(crate) fn from_record(record: crate::RangeFingerprint) -> Self {
        Self {
            partition: record.partition,
            incarnation: record.incarnation,
            range_start: record.range_start,
            first_offset: record.first_offset,
            fingerprint: record.fingerprint,
        }
    }

    pub(crate) fn into_record(self) -> crate::RangeFingerprint {
        crate::RangeFingerprint {
            partition: self.partition,
            incarnation: self.incarnation,
            range_start: self.range_start,
            first_offset: self.first_offset,
            fingerprint: self.fingerprint,
        }
    }
}
