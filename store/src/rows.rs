//! Every table's row struct, declared once with [`table!`] (see
//! [`crate::schema`]), and its conversions to and from the records of the
//! crate's API. [`TABLES`] lists them all: both backends create and migrate
//! exactly these.
//!
//! Times are `DateTime` columns: whole seconds since the epoch ([`Seconds`]).

use detectors::estimation::{EstimatedMetric, PerformanceMetric};
use detectors::metrics::{DriftTest, TestResult};
use detectors::quality::QualityMetrics;
use detectors::spec::FeatureKind;
use detectors::{FeatureWindowMetrics, ReferenceProfile, SeriesKey};

use crate::schema::{table, Bytes, Seconds, Table, TableDef, TableSpec, Versioning};

/// An absent sampling error or threshold in the `estimated_*` arrays.
const ABSENT: f64 = -1.0;
use crate::{Error, PartialSketch, ReferenceSummary, WindowMetrics, WindowSketch};

/// The key of a table with one row per series and window.
const SERIES_WINDOW_KEY: &[&str] = &[
    "model",
    "model_version",
    "segment",
    "feature",
    "window_start",
];

/// Every table, in creation order.
pub(crate) const TABLES: [TableDef; 16] = [
    PartialRow::DEF,
    SketchRow::DEF,
    MetricsRow::DEF,
    ReferenceRow::DEF,
    AlertRow::DEF,
    PipelineStatsRow::DEF,
    DeliveryRow::DEF,
    RangeFingerprintRow::DEF,
    SourceProgressRow::DEF,
    AlertProgressRow::DEF,
    VersionEventRow::DEF,
    SamplePredictionRow::DEF,
    SampleLabelRow::DEF,
    JoinPredictionRow::DEF,
    JoinLabelRow::DEF,
    LateMatchRow::DEF,
];

pub(crate) fn to_seconds(millis: i64) -> Result<u32, Error> {
    u32::try_from(millis.div_euclid(1000))
        .map_err(|_| Error::Corrupt(format!("time {millis} ms is outside the DateTime range")))
}

fn seconds(millis: i64) -> Result<Seconds, Error> {
    to_seconds(millis).map(Seconds)
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
    window_start: Seconds,
    model: String,
    model_version: String,
    segment: String,
    feature: String,
) -> SeriesKey {
    SeriesKey {
        window_start: window_start.millis(),
        model,
        model_version,
        segment,
        feature,
    }
}

pub(crate) fn to_millis(seconds: u32) -> i64 {
    i64::from(seconds) * 1000
}

/// Declares [`MetricsRow`], the row of `window_metrics`, and its
/// conversions from and to [`WindowMetrics`]. `direct` columns are
/// `FeatureWindowMetrics` fields of the same name and type; `quality`
/// columns are `QualityMetrics` fields (null outside the `quality` series).
/// A new metric is one line in one of them (a nullable or array column,
/// which existing tables take at start-up) plus its computation.
macro_rules! metrics_row {
    (
        direct { $($direct:ident : $direct_type:ty),* $(,)? }
        quality { $($quality:ident),* $(,)? }
    ) => {
        table! {
            /// One row of `window_metrics`: the metrics of one series in one window.
            pub(crate) struct MetricsRow {
                model: String,
                model_version: String,
                segment: String,
                feature: String,
                kind: String,
                window_start: Seconds,
                window_end: Seconds,
                reference_source: String,
                /// The result's version ([`WindowMetrics::version`]; the
                /// column keeps the name it had when it held a wall-clock time).
                computed_at: u64,
                drifted: Option<u8>,
                constant: Option<u8>,
                p05: Option<f64>,
                p25: Option<f64>,
                p50: Option<f64>,
                p75: Option<f64>,
                p95: Option<f64>,
                ref_p05: Option<f64>,
                ref_p25: Option<f64>,
                ref_p50: Option<f64>,
                ref_p75: Option<f64>,
                ref_p95: Option<f64>,
                test_names: Vec<String>,
                test_values: Vec<f64>,
                test_thresholds: Vec<f64>,
                test_drifted: Vec<u8>,
                decided_by: Option<String>,
                estimated_names: Vec<String>,
                estimated_values: Vec<f64>,
                estimated_errors: Vec<f64>,
                estimated_lower: Vec<f64>,
                estimated_upper: Vec<f64>,
                estimated_alert: Vec<u8>,
                $($direct: $direct_type,)*
                $($quality: Option<f64>,)*
            }
        }

        impl MetricsRow {
            #[allow(clippy::clone_on_copy)]
            pub(crate) fn from_record(record: &WindowMetrics) -> Result<Self, Error> {
                let m = &record.metrics;
                let quantile = |i: usize| m.quantiles.map(|q| q[i]);
                let reference_quantile = |i: usize| m.reference_quantiles.map(|q| q[i]);
                let quality = m.quality.clone().unwrap_or_default();
                Ok(Self {
                    model: record.key.model.clone(),
                    model_version: record.key.model_version.clone(),
                    segment: record.key.segment.clone(),
                    feature: record.key.feature.clone(),
                    kind: m.kind.as_str().to_owned(),
                    window_start: seconds(record.key.window_start)?,
                    window_end: seconds(record.window_end)?,
                    reference_source: record.reference_source.clone().unwrap_or_default(),
                    computed_at: record.version,
                    drifted: m.drifted.map(u8::from),
                    constant: m.constant.map(u8::from),
                    p05: quantile(0),
                    p25: quantile(1),
                    p50: quantile(2),
                    p75: quantile(3),
                    p95: quantile(4),
                    ref_p05: reference_quantile(0),
                    ref_p25: reference_quantile(1),
                    ref_p50: reference_quantile(2),
                    ref_p75: reference_quantile(3),
                    ref_p95: reference_quantile(4),
                    test_names: m.tests.iter().map(|t| t.test.as_str().to_owned()).collect(),
                    test_values: m.tests.iter().map(|t| t.value).collect(),
                    test_thresholds: m.tests.iter().map(|t| t.threshold).collect(),
                    test_drifted: m.tests.iter().map(|t| u8::from(t.drifted)).collect(),
                    decided_by: m.decided_by.map(|test| test.as_str().to_owned()),
                    // −1 stands for an absent error or threshold (arrays
                    // hold no NULL, and SQLite's JSON arrays no NaN; both
                    // are never negative).
                    estimated_names: m.estimated.iter().map(|e| e.metric.as_str().to_owned()).collect(),
                    estimated_values: m.estimated.iter().map(|e| e.value).collect(),
                    estimated_errors: m.estimated.iter().map(|e| e.sampling_error.unwrap_or(ABSENT)).collect(),
                    estimated_lower: m.estimated.iter().map(|e| e.lower_threshold.unwrap_or(ABSENT)).collect(),
                    estimated_upper: m.estimated.iter().map(|e| e.upper_threshold.unwrap_or(ABSENT)).collect(),
                    estimated_alert: m.estimated.iter().map(|e| u8::from(e.alert)).collect(),
                    $($direct: m.$direct.clone(),)*
                    $($quality: quality.$quality,)*
                })
            }

            pub(crate) fn into_record(self) -> Result<WindowMetrics, Error> {
                let kind = match self.kind.as_str() {
                    "numeric" => FeatureKind::Numeric,
                    "categorical" => FeatureKind::Categorical,
                    "operational" => FeatureKind::Operational,
                    "quality" => FeatureKind::Quality,
                    "estimated_quality" => FeatureKind::EstimatedQuality,
                    "multivariate" => FeatureKind::Multivariate,
                    other => return Err(Error::Corrupt(format!("unknown feature kind `{other}`"))),
                };
                let five = |values: [Option<f64>; 5]| match values {
                    [Some(a), Some(b), Some(c), Some(d), Some(e)] => Some([a, b, c, d, e]),
                    _ => None,
                };
                let tests = self
                    .test_names
                    .into_iter()
                    .zip(self.test_values)
                    .zip(self.test_thresholds)
                    .zip(self.test_drifted)
                    .map(|(((name, value), threshold), drifted)| {
                        let test = DriftTest::parse(&name)
                            .ok_or_else(|| Error::Corrupt(format!("unknown drift test `{name}`")))?;
                        Ok(TestResult {
                            test,
                            value,
                            threshold,
                            drifted: drifted != 0,
                        })
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                let present = |value: f64| (value >= 0.0).then_some(value);
                let estimated = self
                    .estimated_names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let metric = PerformanceMetric::parse(name).ok_or_else(|| {
                            Error::Corrupt(format!("unknown estimated metric `{name}`"))
                        })?;
                        let at = |values: &[f64]| values.get(i).copied().unwrap_or(ABSENT);
                        Ok(EstimatedMetric {
                            metric,
                            value: at(&self.estimated_values),
                            sampling_error: present(at(&self.estimated_errors)),
                            lower_threshold: present(at(&self.estimated_lower)),
                            upper_threshold: present(at(&self.estimated_upper)),
                            alert: self.estimated_alert.get(i).is_some_and(|flag| *flag != 0),
                        })
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                Ok(WindowMetrics {
                    key: series_key(
                        self.window_start,
                        self.model,
                        self.model_version,
                        self.segment,
                        self.feature,
                    ),
                    window_end: self.window_end.millis(),
                    metrics: FeatureWindowMetrics {
                        kind,
                        quantiles: five([self.p05, self.p25, self.p50, self.p75, self.p95]),
                        reference_quantiles: five([
                            self.ref_p05,
                            self.ref_p25,
                            self.ref_p50,
                            self.ref_p75,
                            self.ref_p95,
                        ]),
                        constant: self.constant.map(|flag| flag != 0),
                        drifted: self.drifted.map(|flag| flag != 0),
                        decided_by: match self.decided_by {
                            Some(name) => Some(DriftTest::parse(&name).ok_or_else(|| {
                                Error::Corrupt(format!("unknown drift test `{name}`"))
                            })?),
                            None => None,
                        },
                        tests,
                        estimated,
                        quality: (kind == FeatureKind::Quality).then_some(QualityMetrics {
                            matched: self.count,
                            $($quality: self.$quality,)*
                        }),
                        $($direct: self.$direct,)*
                    },
                    reference_source: (!self.reference_source.is_empty())
                        .then_some(self.reference_source),
                    version: self.computed_at,
                })
            }
        }
    };
}

metrics_row! {
    direct {
        count: u64,
        missing: u64,
        type_mismatch: u64,
        missing_rate: Option<f64>,
        mean: Option<f64>,
        std_dev: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
        distinct_categories: Option<u64>,
        unseen_categories: Option<u64>,
        psi: Option<f64>,
        ks_statistic: Option<f64>,
        ks_p_value: Option<f64>,
        chi_square: Option<f64>,
        chi_square_p_value: Option<f64>,
        psi_threshold: f64,
        js_distance: Option<f64>,
        hellinger: Option<f64>,
        kl_divergence: Option<f64>,
        l_infinity: Option<f64>,
        wasserstein: Option<f64>,
        wasserstein_normalized: Option<f64>,
        out_of_range: Option<u64>,
        latency_p50: Option<f64>,
        latency_p95: Option<f64>,
        latency_p99: Option<f64>,
        latency_max: Option<f64>,
        error_rate: Option<f64>,
        null_prediction_rate: Option<f64>,
        reconstruction_sampling_error: Option<f64>,
        reconstruction_lower: Option<f64>,
        reconstruction_upper: Option<f64>,
        warnings: Vec<String>,
    }
    quality {
        accuracy,
        precision,
        recall,
        f1,
        roc_auc,
        log_loss,
        brier,
        calibration_error,
        mae,
        rmse,
        mape,
        r2,
    }
}

impl Table for MetricsRow {
    const SPEC: TableSpec = TableSpec {
        name: "window_metrics",
        key: SERIES_WINDOW_KEY,
        versioning: Versioning::Column("computed_at"),
        partition_by: Some("toYYYYMMDD(window_start)"),
        sqlite_index: &[],
        sqlite_without_rowid: false,
    };
}

table! {
    /// One row of `window_partials`: the sketch of one series read from one
    /// offset range of one source.
    pub(crate) struct PartialRow {
        model: String,
        model_version: String,
        segment: String,
        feature: String,
        window_start: Seconds,
        source: String,
        range_start: u64,
        range_end: u64,
        sketch: Bytes,
    }
}

impl Table for PartialRow {
    const SPEC: TableSpec = TableSpec {
        name: "window_partials",
        key: &[
            "model",
            "window_start",
            "model_version",
            "segment",
            "feature",
            "source",
            "range_start",
        ],
        versioning: Versioning::Column("range_end"),
        partition_by: Some("toYYYYMMDD(window_start)"),
        sqlite_index: &[],
        sqlite_without_rowid: false,
    };
}

impl PartialRow {
    pub(crate) fn from_record(record: PartialSketch) -> Result<Self, Error> {
        Ok(Self {
            window_start: seconds(record.key.window_start)?,
            model: record.key.model,
            model_version: record.key.model_version,
            segment: record.key.segment,
            feature: record.key.feature,
            source: record.source,
            range_start: record.range_start,
            range_end: record.range_end,
            sketch: Bytes(record.sketch),
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
            sketch: self.sketch.0,
        }
    }
}

table! {
    /// One row of `window_sketches`: the merged sketch of a closed window.
    pub(crate) struct SketchRow {
        model: String,
        model_version: String,
        segment: String,
        feature: String,
        window_start: Seconds,
        window_end: Seconds,
        sketch: Bytes,
        /// The result's version ([`WindowSketch::version`]).
        computed_at: u64,
    }
}

impl Table for SketchRow {
    const SPEC: TableSpec = TableSpec {
        name: "window_sketches",
        key: SERIES_WINDOW_KEY,
        versioning: Versioning::Column("computed_at"),
        partition_by: Some("toYYYYMMDD(window_start)"),
        sqlite_index: &[],
        sqlite_without_rowid: false,
    };
}

impl SketchRow {
    pub(crate) fn from_record(record: WindowSketch) -> Result<Self, Error> {
        Ok(Self {
            window_start: seconds(record.key.window_start)?,
            window_end: seconds(record.window_end)?,
            model: record.key.model,
            model_version: record.key.model_version,
            segment: record.key.segment,
            feature: record.key.feature,
            sketch: Bytes(record.sketch),
            computed_at: record.version,
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
            window_end: self.window_end.millis(),
            sketch: self.sketch.0,
            version: self.computed_at,
        }
    }
}

table! {
    /// One row of `reference_profiles`.
    pub(crate) struct ReferenceRow {
        model: String,
        model_version: String,
        source: String,
        row_count: u64,
        profile: String,
        created_at: u64,
    }
}

impl Table for ReferenceRow {
    const SPEC: TableSpec = TableSpec {
        name: "reference_profiles",
        key: &["model", "model_version"],
        versioning: Versioning::Column("created_at"),
        partition_by: None,
        sqlite_index: &[],
        sqlite_without_rowid: false,
    };
}

impl ReferenceRow {
    pub(crate) fn from_profile(profile: &ReferenceProfile, created_at: u64) -> Self {
        Self {
            model: profile.model.clone(),
            model_version: profile.model_version.clone(),
            source: profile.source.clone(),
            row_count: profile.row_count,
            profile: profile.to_json(),
            created_at,
        }
    }

    pub(crate) fn into_profile(self) -> Result<ReferenceProfile, Error> {
        ReferenceProfile::from_json(&self.profile).map_err(|e| Error::Corrupt(e.to_string()))
    }

    pub(crate) fn into_summary(self) -> ReferenceSummary {
        ReferenceSummary {
            model: self.model,
            model_version: self.model_version,
            source: self.source,
            row_count: self.row_count,
            created_at: self.created_at,
        }
    }
}

table! {
    /// One row of `alerts`: one notification.
    pub(crate) struct AlertRow {
        id: String,
        status: String,
        window_start: Seconds,
        window_end: Seconds,
        rule: String,
        model: String,
        model_version: String,
        segment: String,
        severity: String,
        repeat: u8,
        summary: String,
        payload: String,
        created_at: u64,
    }
}

impl Table for AlertRow {
    const SPEC: TableSpec = TableSpec {
        name: "alerts",
        key: &["id", "status", "window_start"],
        versioning: Versioning::Column("created_at"),
        partition_by: Some("toYYYYMMDD(window_start)"),
        sqlite_index: &[],
        sqlite_without_rowid: false,
    };
}

impl AlertRow {
    pub(crate) fn from_record(record: crate::AlertRecord) -> Result<Self, Error> {
        Ok(Self {
            window_start: seconds(record.window_start)?,
            window_end: seconds(record.window_end)?,
            id: record.id,
            status: record.status.as_str().to_owned(),
            rule: record.rule,
            model: record.model,
            model_version: record.model_version,
            segment: record.segment,
            severity: record.severity.as_str().to_owned(),
            repeat: u8::from(record.repeat),
            summary: record.summary,
            payload: record.payload,
            created_at: record.created_at,
        })
    }

    pub(crate) fn into_record(self) -> Result<crate::AlertRecord, Error> {
        Ok(crate::AlertRecord {
            id: self.id,
            status: crate::NotificationStatus::parse(&self.status)?,
            window_start: self.window_start.millis(),
            window_end: self.window_end.millis(),
            rule: self.rule,
            model: self.model,
            model_version: self.model_version,
            segment: self.segment,
            severity: crate::Severity::parse(&self.severity)?,
            repeat: self.repeat != 0,
            summary: self.summary,
            payload: self.payload,
            created_at: self.created_at,
        })
    }
}

table! {
    /// One row of `alert_deliveries`: one notification's delivery to one
    /// channel (the outbox).
    pub(crate) struct DeliveryRow {
        alert_id: String,
        status: String,
        window_start: Seconds,
        channel: String,
        state: String,
        attempts: u32,
        next_attempt_at: u64,
        last_error: String,
        updated_at: u64,
    }
}

impl Table for DeliveryRow {
    const SPEC: TableSpec = TableSpec {
        name: "alert_deliveries",
        key: &["alert_id", "status", "window_start", "channel"],
        versioning: Versioning::Column("updated_at"),
        partition_by: None,
        sqlite_index: &[],
        sqlite_without_rowid: false,
    };
}

impl DeliveryRow {
    pub(crate) fn from_record(record: crate::Delivery) -> Result<Self, Error> {
        Ok(Self {
            window_start: seconds(record.window_start)?,
            alert_id: record.alert_id,
            status: record.status.as_str().to_owned(),
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
            status: crate::NotificationStatus::parse(&self.status)?,
            window_start: self.window_start.millis(),
            channel: self.channel,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error,
            updated_at: self.updated_at,
        })
    }
}

table! {
    /// One row of `pipeline_stats`: what one consumer instance did with one
    /// topic over one interval.
    pub(crate) struct PipelineStatsRow {
        at: Seconds,
        instance: String,
        topic: String,
        consumed: u64,
        dead_lettered: u64,
        late: u64,
        lag: i64,
    }
}

impl Table for PipelineStatsRow {
    const SPEC: TableSpec = TableSpec {
        name: "pipeline_stats",
        key: &["topic", "at", "instance"],
        versioning: Versioning::Append,
        partition_by: Some("toYYYYMMDD(at)"),
        sqlite_index: &["at"],
        sqlite_without_rowid: false,
    };
}

impl PipelineStatsRow {
    pub(crate) fn from_record(record: crate::PipelineStats) -> Result<Self, Error> {
        Ok(Self {
            at: seconds(record.time)?,
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
            time: self.at.millis(),
            instance: self.instance,
            topic: self.topic,
            consumed: self.consumed,
            dead_lettered: self.dead_lettered,
            late: self.late,
            lag: self.lag,
        }
    }
}

table! {
    /// One row of `range_fingerprints`.
    pub(crate) struct RangeFingerprintRow {
        partition: String,
        incarnation: u32,
        range_start: u64,
        first_offset: u64,
        fingerprint: u64,
    }
}

impl Table for RangeFingerprintRow {
    const SPEC: TableSpec = TableSpec {
        name: "range_fingerprints",
        key: &["partition", "incarnation", "range_start"],
        versioning: Versioning::Equal,
        partition_by: None,
        sqlite_index: &[],
        sqlite_without_rowid: false,
    };
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

table! {
    /// One row of `source_progress`: the windows a source recorded into and
    /// did not see finalized by its last commit, as two parallel arrays.
    pub(crate) struct SourceProgressRow {
        source: String,
        next_offset: u64,
        window_models: Vec<String>,
        window_starts: Vec<i64>,
    }
}

impl Table for SourceProgressRow {
    const SPEC: TableSpec = TableSpec {
        name: "source_progress",
        key: &["source"],
        versioning: Versioning::Column("next_offset"),
        partition_by: None,
        sqlite_index: &[],
        sqlite_without_rowid: false,
    };
}

impl SourceProgressRow {
    pub(crate) fn from_record(record: crate::SourceProgress) -> Self {
        let (window_models, window_starts) = record
            .unfinalized
            .into_iter()
            .map(|window| (window.model, window.window_start))
            .unzip();
        Self {
            source: record.source,
            next_offset: record.next_offset,
            window_models,
            window_starts,
        }
    }

    pub(crate) fn into_record(self) -> Result<crate::SourceProgress, Error> {
        if self.window_models.len() != self.window_starts.len() {
            return Err(Error::Corrupt(format!(
                "source_progress of {}: {} models for {} window starts",
                self.source,
                self.window_models.len(),
                self.window_starts.len()
            )));
        }
        Ok(crate::SourceProgress {
            source: self.source,
            next_offset: self.next_offset,
            unfinalized: self
                .window_models
                .into_iter()
                .zip(self.window_starts)
                .map(|(model, window_start)| crate::WindowRef {
                    model,
                    window_start,
                })
                .collect(),
        })
    }
}

table! {
    /// One row of `alert_progress`: the latest window of a model whose
    /// notifications are all recorded (the highest wins).
    pub(crate) struct AlertProgressRow {
        model: String,
        window_start: u64,
    }
}

impl Table for AlertProgressRow {
    const SPEC: TableSpec = TableSpec {
        name: "alert_progress",
        key: &["model"],
        versioning: Versioning::Column("window_start"),
        partition_by: None,
        sqlite_index: &[],
        sqlite_without_rowid: false,
    };
}

table! {
    /// One row of `version_events`: a registry change to a model version.
    pub(crate) struct VersionEventRow {
        model: String,
        model_version: String,
        time: Seconds,
        time_ms: u64,
        sequence: u64,
        kind: String,
        alias: String,
        detail: String,
    }
}

impl Table for VersionEventRow {
    const SPEC: TableSpec = TableSpec {
        name: "version_events",
        key: &["model", "time_ms", "sequence"],
        versioning: Versioning::Equal,
        partition_by: None,
        sqlite_index: &[],
        sqlite_without_rowid: false,
    };
}

impl VersionEventRow {
    pub(crate) fn from_record(record: crate::VersionEvent) -> Result<Self, Error> {
        Ok(Self {
            model: record.model,
            model_version: record.model_version,
            time: seconds(record.time_ms)?,
            time_ms: u64::try_from(record.time_ms).map_err(|_| {
                Error::Corrupt(format!(
                    "version event time {} ms is negative",
                    record.time_ms
                ))
            })?,
            sequence: record.sequence,
            kind: record.kind.as_str().to_owned(),
            alias: record.alias,
            detail: record.detail,
        })
    }

    pub(crate) fn into_record(self) -> Result<crate::VersionEvent, Error> {
        Ok(crate::VersionEvent {
            model: self.model,
            model_version: self.model_version,
            kind: crate::VersionEventKind::parse(&self.kind)?,
            alias: self.alias,
            time_ms: self.time_ms as i64,
            sequence: self.sequence,
            detail: self.detail,
        })
    }
}

table! {
    /// One row of `sample_predictions`.
    pub(crate) struct SamplePredictionRow {
        model: String,
        model_version: String,
        prediction_id: String,
        window_start: Seconds,
        time_ms: u64,
        features: String,
        score: Option<f64>,
        class: String,
    }
}

impl Table for SamplePredictionRow {
    const SPEC: TableSpec = TableSpec {
        name: "sample_predictions",
        key: &["model", "model_version", "prediction_id"],
        versioning: Versioning::Equal,
        partition_by: Some("toYYYYMMDD(window_start)"),
        sqlite_index: &["window_start"],
        sqlite_without_rowid: false,
    };
}

impl SamplePredictionRow {
    pub(crate) fn from_record(record: crate::SampledPrediction) -> Result<Self, Error> {
        Ok(Self {
            model: record.model,
            model_version: record.model_version,
            prediction_id: record.prediction_id,
            window_start: seconds(record.window_start)?,
            time_ms: non_negative(record.time_ms)?,
            features: record.features,
            score: record.score,
            class: record.class,
        })
    }

    pub(crate) fn into_record(self) -> crate::SampledPrediction {
        crate::SampledPrediction {
            model: self.model,
            model_version: self.model_version,
            prediction_id: self.prediction_id,
            window_start: self.window_start.millis(),
            time_ms: self.time_ms as i64,
            features: self.features,
            score: self.score,
            class: self.class,
        }
    }
}

table! {
    /// One row of `sample_labels`.
    pub(crate) struct SampleLabelRow {
        model: String,
        prediction_id: String,
        time: Seconds,
        time_ms: u64,
        label: String,
        value: Option<f64>,
    }
}

impl Table for SampleLabelRow {
    const SPEC: TableSpec = TableSpec {
        name: "sample_labels",
        key: &["model", "prediction_id"],
        versioning: Versioning::Equal,
        partition_by: Some("toYYYYMMDD(time)"),
        sqlite_index: &["time"],
        sqlite_without_rowid: false,
    };
}

impl SampleLabelRow {
    pub(crate) fn from_record(record: crate::SampledLabel) -> Result<Self, Error> {
        Ok(Self {
            model: record.model,
            prediction_id: record.prediction_id,
            time: seconds(record.time_ms)?,
            time_ms: non_negative(record.time_ms)?,
            label: record.label,
            value: record.value,
        })
    }

    pub(crate) fn into_record(self) -> crate::SampledLabel {
        crate::SampledLabel {
            model: self.model,
            prediction_id: self.prediction_id,
            time_ms: self.time_ms as i64,
            label: self.label,
            value: self.value,
        }
    }
}

fn non_negative(millis: i64) -> Result<u64, Error> {
    u64::try_from(millis).map_err(|_| Error::Corrupt(format!("time {millis} ms is negative")))
}

/// A bound value of a [`MetricsFilter`] condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FilterValue {
    Text(String),
    /// A `DateTime` column's value, seconds.
    Seconds(u32),
}

/// The `WHERE` conditions, order and page of a [`crate::MetricsQuery`] over
/// `window_metrics`, for each backend to write in its dialect.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MetricsFilter {
    /// `(column, operator, value)`, all joined by `AND`.
    pub conditions: Vec<(&'static str, &'static str, FilterValue)>,
    /// Rows at most (`None`: all).
    pub limit: Option<u64>,
    /// Rows skipped first.
    pub offset: u64,
}

impl MetricsFilter {
    /// The order the rows are paged in.
    pub const ORDER_BY: &'static str = "model, model_version, segment, feature, window_start";

    pub(crate) fn new(query: crate::MetricsQuery) -> Self {
        let mut conditions = Vec::new();
        for (column, value) in [
            ("model", query.model),
            ("model_version", query.model_version),
            ("segment", query.segment),
            ("feature", query.feature),
        ] {
            if let Some(value) = value {
                conditions.push((column, "=", FilterValue::Text(value)));
            }
        }
        if let Some(from) = query.from_ms {
            conditions.push((
                "window_start",
                ">=",
                FilterValue::Seconds(lower_bound_seconds(from)),
            ));
        }
        if let Some(to) = query.to_ms {
            conditions.push((
                "window_start",
                "<",
                FilterValue::Seconds(upper_bound_seconds(to)),
            ));
        }
        Self {
            conditions,
            limit: query.limit,
            offset: query.offset,
        }
    }
}

/// Weekly partitions of a `DateTime` column: the join tables' rows expire
/// by event time, and one insert rarely spans more than a few weeks.
const WEEKLY: &str = "toMonday(time)";

fn label_columns(value: crate::JoinLabelValue) -> (String, Option<f64>) {
    match value {
        crate::JoinLabelValue::Number(number) => (number.to_string(), Some(number)),
        crate::JoinLabelValue::Class(class) => (class, None),
    }
}

fn label_value(label: String, number: Option<f64>) -> crate::JoinLabelValue {
    match number {
        Some(number) => crate::JoinLabelValue::Number(number),
        None => crate::JoinLabelValue::Class(label),
    }
}

table! {
    /// One row of `pending_predictions`: a prediction the durable join
    /// keeps for its label.
    pub(crate) struct JoinPredictionRow {
        model: String,
        join_key: String,
        model_version: String,
        window_start: i64,
        time: Seconds,
        time_ms: u64,
        segments: Vec<String>,
        score: Option<f64>,
        class: Option<String>,
    }
}

impl Table for JoinPredictionRow {
    const SPEC: TableSpec = TableSpec {
        name: "pending_predictions",
        key: &["model", "join_key", "model_version"],
        versioning: Versioning::Equal,
        partition_by: Some(WEEKLY),
        // One row per prediction, inserted in random key order: one
        // B-tree (no rowid table, no time index; expiry scans hourly).
        sqlite_index: &[],
        sqlite_without_rowid: true,
    };
}

impl JoinPredictionRow {
    pub(crate) fn from_record(record: &crate::JoinPrediction) -> Result<Self, Error> {
        Ok(Self {
            model: record.model.clone(),
            join_key: record.key.clone(),
            model_version: record.model_version.clone(),
            window_start: record.window_start,
            time: seconds(record.time_ms)?,
            time_ms: non_negative(record.time_ms)?,
            segments: record.segments.clone(),
            score: record.score,
            class: record.class.clone(),
        })
    }

    pub(crate) fn into_record(self) -> crate::JoinPrediction {
        crate::JoinPrediction {
            model: self.model,
            key: self.join_key,
            model_version: self.model_version,
            window_start: self.window_start,
            time_ms: self.time_ms as i64,
            segments: self.segments,
            score: self.score,
            class: self.class,
        }
    }
}

table! {
    /// One row of `pending_labels`: a label whose prediction was not found
    /// when its range was stored.
    pub(crate) struct JoinLabelRow {
        source: String,
        label_offset: u64,
        model: String,
        join_key: String,
        time: Seconds,
        time_ms: u64,
        label: String,
        label_number: Option<f64>,
    }
}

impl Table for JoinLabelRow {
    const SPEC: TableSpec = TableSpec {
        name: "pending_labels",
        key: &["source", "label_offset"],
        versioning: Versioning::Equal,
        partition_by: Some(WEEKLY),
        sqlite_index: &["time"],
        sqlite_without_rowid: false,
    };
}

impl JoinLabelRow {
    pub(crate) fn from_record(record: crate::JoinLabel) -> Result<Self, Error> {
        let (label, label_number) = label_columns(record.value);
        Ok(Self {
            source: record.source,
            label_offset: record.offset,
            model: record.model,
            join_key: record.key,
            time: seconds(record.time_ms)?,
            time_ms: non_negative(record.time_ms)?,
            label,
            label_number,
        })
    }

    pub(crate) fn into_record(self) -> crate::JoinLabel {
        crate::JoinLabel {
            source: self.source,
            offset: self.label_offset,
            model: self.model,
            key: self.join_key,
            time_ms: self.time_ms as i64,
            value: label_value(self.label, self.label_number),
        }
    }
}

table! {
    /// One row of `late_matches`: a pending label and the prediction found
    /// for it later, everything the window's quality series need.
    pub(crate) struct LateMatchRow {
        model: String,
        window_start: i64,
        source: String,
        label_offset: u64,
        model_version: String,
        join_key: String,
        label_time_ms: u64,
        label: String,
        label_number: Option<f64>,
        time: Seconds,
        time_ms: u64,
        segments: Vec<String>,
        score: Option<f64>,
        class: Option<String>,
    }
}

impl Table for LateMatchRow {
    const SPEC: TableSpec = TableSpec {
        name: "late_matches",
        key: &[
            "model",
            "window_start",
            "source",
            "label_offset",
            "model_version",
        ],
        versioning: Versioning::Equal,
        partition_by: None,
        sqlite_index: &["source", "label_time_ms"],
        sqlite_without_rowid: false,
    };
}

impl LateMatchRow {
    pub(crate) fn from_record(record: crate::LateMatch) -> Result<Self, Error> {
        let (label, label_number) = label_columns(record.label.value);
        let prediction = record.prediction;
        Ok(Self {
            model: prediction.model,
            window_start: prediction.window_start,
            source: record.label.source,
            label_offset: record.label.offset,
            model_version: prediction.model_version,
            join_key: prediction.key,
            label_time_ms: non_negative(record.label.time_ms)?,
            label,
            label_number,
            time: seconds(prediction.time_ms)?,
            time_ms: non_negative(prediction.time_ms)?,
            segments: prediction.segments,
            score: prediction.score,
            class: prediction.class,
        })
    }

    pub(crate) fn into_record(self) -> crate::LateMatch {
        crate::LateMatch {
            label: crate::JoinLabel {
                source: self.source,
                offset: self.label_offset,
                model: self.model.clone(),
                key: self.join_key.clone(),
                time_ms: self.label_time_ms as i64,
                value: label_value(self.label, self.label_number),
            },
            prediction: crate::JoinPrediction {
                model: self.model,
                key: self.join_key,
                model_version: self.model_version,
                window_start: self.window_start,
                time_ms: self.time_ms as i64,
                segments: self.segments,
                score: self.score,
                class: self.class,
            },
        }
    }
}
