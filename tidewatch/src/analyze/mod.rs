//! `tidewatch analyze`: the streaming detectors, offline, on files.
//!
//! Reads a reference and a current file (CSV, Parquet, Arrow IPC, JSON
//! lines) with `arrow`, builds an exact reference per column (numeric:
//! percentile bins and moments; categorical: category counts), splits the
//! current data into chunks (by row count or by time period), and computes
//! for every chunk and column every applicable test of `detectors::metrics`,
//! with p-values corrected across the chunk's columns. Columns of numeric
//! arrow types are numeric, the others categorical, unless overridden.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use detectors::categorical::format_category;
use detectors::estimation::{
    chunk_spread, realized, Band, CbpeModel, Estimate, PerformanceMetric, ScoreHistogram,
};
use detectors::loss_estimation::{LossModel, LossSum};
use detectors::metrics::{
    apply_p_value_correction, DriftTest, DriftThresholds, FeatureWindowMetrics, TestResult,
    VerdictPolicy,
};
use detectors::multiclass::{realized as multiclass_realized, MulticlassCbpe};
use detectors::reconstruction::{ErrorSum, Input, ReconstructionModel};
use detectors::spec::FeatureKind;
use serde::Serialize;

use crate::training::TrainingError;

mod columns;

use columns::{ColumnDrift, DriftPlan, RowChunks, NO_CHUNK};

/// How the current data is cut into chunks.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunking {
    /// One chunk with every row.
    Whole,
    /// Consecutive chunks of this many rows.
    Rows(usize),
    /// Calendar-aligned periods of `millis` by the timestamp `column`.
    Period {
        /// Period length, ms.
        millis: i64,
        /// Timestamp column (timestamp type, epoch ms integers or RFC 3339 text).
        column: String,
    },
}

/// What `analyze` needs.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Reference file.
    pub reference: PathBuf,
    /// Current file.
    pub current: PathBuf,
    /// Chunking of the current file.
    pub chunking: Chunking,
    /// Only these columns (default: every column present in both files,
    /// except the timestamp column).
    pub columns: Option<Vec<String>>,
    /// Columns forced numeric.
    pub numeric: Vec<String>,
    /// Columns forced categorical.
    pub categorical: Vec<String>,
    /// Test thresholds.
    pub thresholds: DriftThresholds,
    /// Which test decides whether a column drifted in a chunk: `auto` (the
    /// sample-size-aware policy of `detectors::metrics`: a p-value on small
    /// chunks, a distance on large ones), a test (`psi`, `ks`, `chi_square`,
    /// `jensen_shannon`, `hellinger`, `kl_divergence`,
    /// `wasserstein_normalized`, a `*_band` test), or `any`.
    pub decide_by: String,
    /// Multivariate drift by data reconstruction over the compared columns:
    /// `Some(share)` keeps the principal components explaining that share
    /// of the reference's variance.
    pub multivariate: Option<f64>,
    /// Label-free performance estimation (CBPE), when the model's outputs
    /// are columns of both files.
    pub estimation: Option<EstimationColumns>,
    /// Label-free performance estimation of a classifier with three or
    /// more classes (multiclass CBPE, macro averages).
    pub multiclass: Option<MulticlassColumns>,
    /// Target-free performance estimation of a regression model (direct
    /// loss estimation) from its prediction and, in the reference, its
    /// target; the other compared columns are its inputs.
    pub loss: Option<LossColumns>,
    /// NannyML-style bands: with `Some(k)`, the reference is cut into chunks
    /// of the current chunk size, each metric is computed per reference
    /// chunk, and a current chunk is flagged when its metric leaves
    /// `mean ± k·σ` of the reference chunks (tests `*_band`).
    pub bands: Option<f64>,
}

/// The columns CBPE reads: a binary classifier's score (the probability of
/// the positive class), its predicted class and the true class (in the
/// reference; in the current file too when the labels are known, to show
/// realized next to estimated).
#[derive(Debug, Clone)]
pub struct EstimationColumns {
    /// Score column.
    pub score: String,
    /// Predicted class column (default: score ≥ 0.5 is positive).
    pub prediction: Option<String>,
    /// True class column.
    pub target: String,
    /// The positive class as the prediction and target columns spell it.
    pub positive_class: String,
}

/// The columns multiclass CBPE reads: each class's probability column, the
/// predicted class and the true class (class names as the prediction and
/// target columns spell them).
#[derive(Debug, Clone)]
pub struct MulticlassColumns {
    /// (class, its probability column).
    pub classes: Vec<(String, String)>,
    /// Predicted class column.
    pub prediction: String,
    /// True class column.
    pub target: String,
}

/// The columns direct loss estimation reads: a regression model's
/// prediction and the true value (in the reference; in the current file too
/// when known, to show realized next to estimated).
#[derive(Debug, Clone)]
pub struct LossColumns {
    /// Prediction column.
    pub prediction: String,
    /// Target column.
    pub target: String,
}

/// Half-width, in standard deviations over the reference chunks, of the
/// band an estimated metric is flagged outside (NannyML's default).
const ESTIMATION_BAND_K: f64 = 3.0;

/// Metrics that get a band: distances are flagged above `mean + k·σ`, the
/// column mean (`mean_band`) when its z-score leaves `±k`.
const BAND_METRICS: [&str; 4] = ["psi", "jensen_shannon", "wasserstein_normalized", "mean"];

/// (mean, std) of each band metric over the reference chunks of one column.
type Bands = Vec<(&'static str, f64, f64)>;

/// The band test of band metric `name`.
fn band_test(name: &str) -> DriftTest {
    match name {
        "psi" => DriftTest::PsiBand,
        "jensen_shannon" => DriftTest::JensenShannonBand,
        "wasserstein_normalized" => DriftTest::WassersteinNormalizedBand,
        _ => DriftTest::MeanBand,
    }
}

fn metric_value(metrics: &FeatureWindowMetrics, name: &str) -> Option<f64> {
    match name {
        "psi" => metrics.psi,
        "jensen_shannon" => metrics.js_distance,
        "wasserstein_normalized" => metrics.wasserstein_normalized,
        "mean" => metrics.mean,
        _ => None,
    }
}

fn apply_bands(metrics: &mut FeatureWindowMetrics, bands: &Bands, k: f64, enough: bool) {
    for (name, mean, std) in bands {
        let Some(value) = metric_value(metrics, name) else {
            continue;
        };
        let test = if *name == "mean" {
            // Two-sided: the z-score of the chunk mean against the reference chunks.
            let z = if *std > 0.0 {
                (value - mean) / std
            } else if value == *mean {
                0.0
            } else {
                f64::INFINITY
            };
            TestResult {
                test: DriftTest::MeanBand,
                value: z,
                threshold: k,
                drifted: enough && z.abs() > k,
            }
        } else {
            let upper = mean + k * std;
            TestResult {
                test: band_test(name),
                value,
                threshold: upper,
                drifted: enough && value > upper,
            }
        };
        metrics.tests.push(test);
    }
}

/// Why analyze failed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] TrainingError),
    /// A requested column is missing.
    #[error("column `{column}` is not in {file}")]
    MissingColumn {
        /// The column.
        column: String,
        /// The file.
        file: String,
    },
    /// The timestamp column has values that are not times.
    #[error("timestamp column `{0}` must hold timestamps, integer epoch milliseconds or RFC 3339 strings")]
    Timestamp(String),
    /// A reference column has no usable value.
    #[error("reference column `{0}` has no value to compare with")]
    EmptyReference(String),
    /// Unknown `decide_by` test.
    #[error("unknown test `{0}` for --decide-by")]
    UnknownTest(String),
    /// The reference's outputs cannot fit the estimator.
    #[error("performance estimation: {0}")]
    Estimation(String),
}

/// One chunk of the current data.
#[derive(Debug, Clone, Serialize)]
pub struct Chunk {
    /// Position, from 0.
    pub index: usize,
    /// `rows 0-9999` or the period start (UTC).
    pub label: String,
    /// Rows in the chunk.
    pub rows: usize,
}

/// Results of one column in one chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnResult {
    /// Chunk index.
    pub chunk: usize,
    /// Column name.
    pub column: String,
    /// Whether the column drifted by the deciding test.
    pub drifted: bool,
    /// Every number, test and warning.
    pub metrics: FeatureWindowMetrics,
}

/// The whole analysis.
#[derive(Debug, Clone, Serialize)]
pub struct AnalyzeReport {
    /// The chunks, in order.
    pub chunks: Vec<Chunk>,
    /// Columns compared, with their kind.
    pub columns: Vec<(String, FeatureKind)>,
    /// One entry per chunk and column.
    pub results: Vec<ColumnResult>,
    /// Drifted columns per chunk.
    pub drifted_per_chunk: Vec<usize>,
    /// First chunk in which any column drifted.
    pub first_drift_chunk: Option<usize>,
    /// Test deciding the per-column verdict.
    pub decided_by: String,
    /// Estimated performance per chunk and metric (with `estimation`).
    pub performance: Vec<ChunkPerformance>,
    /// Multivariate drift per chunk (with `multivariate`).
    pub multivariate: Vec<ChunkReconstruction>,
    /// Principal components kept (with `multivariate`).
    pub components: Option<usize>,
    /// Whether the scores were calibrated before estimating (with `estimation`).
    pub calibrated: Option<bool>,
}

/// The mean reconstruction error of one chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkReconstruction {
    /// Chunk index.
    pub chunk: usize,
    /// Mean reconstruction error of the chunk's rows.
    pub reconstruction_error: f64,
    /// Its sampling error (the rows' standard deviation over √n).
    pub sampling_error: Option<f64>,
    /// Lower threshold (reference chunks' mean − 3σ; none when ≤ 0).
    pub lower_threshold: Option<f64>,
    /// Upper threshold (mean + 3σ).
    pub upper_threshold: Option<f64>,
    /// Whether the error is not strictly inside the band.
    pub alert: bool,
}

/// One metric's estimate in one chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkPerformance {
    /// Chunk index.
    pub chunk: usize,
    /// The metric.
    pub metric: PerformanceMetric,
    /// Estimated from the scores alone.
    pub estimated: f64,
    /// Sampling error of the estimate (one standard deviation).
    pub sampling_error: Option<f64>,
    /// Lower threshold (reference chunks' realized values, mean − 3σ).
    pub lower_threshold: Option<f64>,
    /// Upper threshold (mean + 3σ).
    pub upper_threshold: Option<f64>,
    /// Whether the estimate is outside the band.
    pub alert: bool,
    /// Realized, when the current file has the labels.
    pub realized: Option<f64>,
}

impl ChunkPerformance {
    /// An estimate for `chunk` with its reference-chunk band and the
    /// realized value.
    fn of(chunk: usize, estimate: Estimate, band: Option<&Band>, realized: Option<f64>) -> Self {
        Self {
            chunk,
            metric: estimate.metric,
            estimated: estimate.value,
            sampling_error: estimate.sampling_error,
            lower_threshold: band.and_then(|b| b.lower),
            upper_threshold: band.and_then(|b| b.upper),
            alert: band.is_some_and(|b| b.flags(estimate.value)),
            realized,
        }
    }
}

impl AnalyzeReport {
    /// True when any column drifted in any chunk.
    pub fn any_drift(&self) -> bool {
        self.first_drift_chunk.is_some()
    }
}

/// Values of one column as read.
#[derive(Debug, Clone)]
enum Column {
    Numbers(Vec<Option<f64>>),
    Texts(Vec<Option<String>>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Numbers(values) => values.len(),
            Column::Texts(values) => values.len(),
        }
    }
}

/// Reads `wanted` columns of a file (those it has) whole, for the
/// estimators, which need every row.
fn read_columns(
    path: &std::path::Path,
    wanted: &[String],
) -> Result<BTreeMap<String, Column>, TrainingError> {
    let mut columns: BTreeMap<String, Column> = BTreeMap::new();
    let (_, batches) = crate::training::batches(path, Some(wanted))?;
    for batch in batches {
        let batch = batch?;
        for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
            let name = field.name().clone();
            if !columns.contains_key(&name) {
                let column = if array.data_type().is_numeric() {
                    Column::Numbers(Vec::new())
                } else {
                    Column::Texts(Vec::new())
                };
                columns.insert(name.clone(), column);
            }
            append(
                columns.get_mut(&name).expect("inserted above"),
                array.as_ref(),
            );
        }
    }
    Ok(columns)
}

fn append(column: &mut Column, array: &dyn Array) {
    match column {
        Column::Numbers(values) => match arrow::compute::cast(array, &DataType::Float64) {
            Ok(numbers) => values.extend(numbers.as_primitive::<Float64Type>().iter()),
            Err(_) => values.extend(std::iter::repeat_n(None, array.len())),
        },
        Column::Texts(values) => {
            let as_text = match array.data_type() {
                DataType::Timestamp(_, _) => arrow::compute::cast(array, &DataType::Int64)
                    .and_then(|ints| arrow::compute::cast(&ints, &DataType::Utf8)),
                _ => arrow::compute::cast(array, &DataType::Utf8),
            };
            match as_text {
                Ok(text) => {
                    values.extend(text.as_string::<i32>().iter().map(|v| v.map(str::to_owned)))
                }
                Err(_) => values.extend(std::iter::repeat_n(None, array.len())),
            }
        }
    }
}

/// Epoch milliseconds of a timestamp column read separately (its arrow type matters).
fn read_timestamps(path: &std::path::Path, column: &str) -> Result<Vec<Option<i64>>, AnalyzeError> {
    let mut timestamps = Vec::new();
    let mut bad = false;
    let mut found = false;
    let (_, batches) = crate::training::batches(path, Some(&[column.to_owned()]))?;
    for batch in batches {
        let batch = batch?;
        let Some(array) = batch.column_by_name(column) else {
            continue;
        };
        found = true;
        let millis = match array.data_type() {
            DataType::Timestamp(_, _) => {
                arrow::compute::cast(array, &DataType::Timestamp(TimeUnit::Millisecond, None))
                    .and_then(|t| arrow::compute::cast(&t, &DataType::Int64))
            }
            data_type if data_type.is_integer() => arrow::compute::cast(array, &DataType::Int64),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let Ok(text) = arrow::compute::cast(array, &DataType::Utf8) else {
                    bad = true;
                    continue;
                };
                for value in text.as_string::<i32>().iter() {
                    match value.map(chrono::DateTime::parse_from_rfc3339) {
                        Some(Ok(time)) => timestamps.push(Some(time.timestamp_millis())),
                        Some(Err(_)) => bad = true,
                        None => timestamps.push(None),
                    }
                }
                continue;
            }
            _ => {
                bad = true;
                continue;
            }
        };
        match millis {
            Ok(ints) => timestamps.extend(ints.as_primitive::<Int64Type>().iter()),
            Err(_) => bad = true,
        }
    }
    if !found {
        return Err(AnalyzeError::MissingColumn {
            column: column.to_owned(),
            file: path.display().to_string(),
        });
    }
    if bad {
        return Err(AnalyzeError::Timestamp(column.to_owned()));
    }
    Ok(timestamps)
}

const ANALYZE_MAX_CATEGORIES: usize = 10_000;

/// Rows of a file (its first column is read to count them).
fn count_rows(path: &std::path::Path) -> Result<usize, AnalyzeError> {
    let (schema, _) = crate::training::batches(path, None)?;
    let first: Vec<String> = schema
        .fields()
        .iter()
        .take(1)
        .map(|f| f.name().clone())
        .collect();
    let (_, batches) = crate::training::batches(path, Some(&first))?;
    let mut rows = 0;
    for batch in batches {
        rows += batch?.num_rows();
    }
    Ok(rows)
}

fn numbers_of(column: &Column) -> Vec<Option<f64>> {
    match column {
        Column::Numbers(values) => values.clone(),
        Column::Texts(values) => values
            .iter()
            .map(|v| v.as_deref().and_then(|t| t.trim().parse().ok()))
            .collect(),
    }
}

fn texts_of(column: &Column) -> Vec<Option<String>> {
    match column {
        Column::Texts(values) => values.clone(),
        Column::Numbers(values) => values.iter().map(|v| v.map(format_category)).collect(),
    }
}

/// Tests `decide_by` may name (besides `any`).
const TESTS: [DriftTest; 11] = [
    DriftTest::PsiBand,
    DriftTest::JensenShannonBand,
    DriftTest::WassersteinNormalizedBand,
    DriftTest::MeanBand,
    DriftTest::Psi,
    DriftTest::Ks,
    DriftTest::ChiSquare,
    DriftTest::JensenShannon,
    DriftTest::Hellinger,
    DriftTest::KlDivergence,
    DriftTest::WassersteinNormalized,
];

/// What decides a column's verdict in a chunk.
#[derive(Debug, Clone, Copy)]
enum Decision {
    /// The series' own verdict under [`VerdictPolicy::Auto`].
    Auto,
    /// Any test.
    Any,
    /// This test.
    Test(DriftTest),
}

/// Runs the analysis.
pub fn analyze(
    options: &AnalyzeOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<AnalyzeReport, AnalyzeError> {
    let decide_by = match options.decide_by.as_str() {
        "any" => Decision::Any,
        "auto" => Decision::Auto,
        name => match DriftTest::parse(name).filter(|test| TESTS.contains(test)) {
            Some(test) => Decision::Test(test),
            None => return Err(AnalyzeError::UnknownTest(options.decide_by.clone())),
        },
    };
    let thresholds = DriftThresholds {
        verdict: VerdictPolicy::Auto,
        ..options.thresholds
    };
    let options = &AnalyzeOptions {
        thresholds,
        ..options.clone()
    };
    let schema = |path: &PathBuf| crate::training::batches(path, None).map(|(schema, _)| schema);
    let (reference_schema, current_schema) =
        (schema(&options.reference)?, schema(&options.current)?);
    let timestamp_column = match &options.chunking {
        Chunking::Period { column, .. } => Some(column.as_str()),
        _ => None,
    };
    let target_column = options
        .estimation
        .as_ref()
        .map(|e| e.target.as_str())
        .or(options.loss.as_ref().map(|l| l.target.as_str()))
        .or(options.multiclass.as_ref().map(|m| m.target.as_str()));
    let names: Vec<String> = match &options.columns {
        Some(columns) => columns.clone(),
        None => reference_schema
            .fields()
            .iter()
            .map(|field| field.name())
            .filter(|name| {
                current_schema.field_with_name(name).is_ok()
                    && Some(name.as_str()) != timestamp_column
                    && Some(name.as_str()) != target_column
            })
            .cloned()
            .collect(),
    };
    let mut compared = Vec::new();
    for name in &names {
        let missing = |file: &PathBuf| AnalyzeError::MissingColumn {
            column: name.clone(),
            file: file.display().to_string(),
        };
        let reference_field = reference_schema
            .field_with_name(name)
            .map_err(|_| missing(&options.reference))?;
        if current_schema.field_with_name(name).is_err() {
            return Err(missing(&options.current));
        }
        let numeric = options.numeric.contains(name)
            || (!options.categorical.contains(name) && reference_field.data_type().is_numeric());
        let kind = if numeric {
            FeatureKind::Numeric
        } else {
            FeatureKind::Categorical
        };
        compared.push((name.clone(), kind));
    }

    // Chunks by period need the timestamps first; by rows, the row count
    // comes with the data.
    let mut periods: Vec<(i64, usize)> = Vec::new();
    let row_chunks = match &options.chunking {
        Chunking::Whole => RowChunks::Whole,
        Chunking::Rows(size) => RowChunks::Rows((*size).max(1)),
        Chunking::Period { millis, column } => {
            let timestamps = read_timestamps(&options.current, column)?;
            let starts: std::collections::BTreeSet<i64> = timestamps
                .iter()
                .flatten()
                .map(|timestamp| timestamp.div_euclid(*millis) * millis)
                .collect();
            let index: BTreeMap<i64, u32> = starts
                .iter()
                .enumerate()
                .map(|(index, start)| (*start, index as u32))
                .collect();
            periods = starts.iter().map(|start| (*start, 0)).collect();
            RowChunks::Assigned(
                timestamps
                    .iter()
                    .map(|timestamp| match timestamp {
                        Some(timestamp) => {
                            let chunk = index[&(timestamp.div_euclid(*millis) * millis)];
                            periods[chunk as usize].1 += 1;
                            chunk
                        }
                        None => NO_CHUNK,
                    })
                    .collect(),
            )
        }
    };
    // Reference chunks for bands have the current chunks' size: the chunk
    // size, or the median period's row count.
    let band_rows = match &options.chunking {
        Chunking::Rows(size) => *size,
        Chunking::Whole => 0,
        Chunking::Period { .. } => {
            let mut sizes: Vec<usize> = periods.iter().map(|(_, rows)| *rows).collect();
            sizes.sort_unstable();
            sizes.get(sizes.len() / 2).copied().unwrap_or(0)
        }
    };
    let plan = DriftPlan {
        reference: &options.reference,
        current: &options.current,
        compared: &compared,
        chunks: &row_chunks,
        chunk_count: match &options.chunking {
            Chunking::Whole => Some(1),
            Chunking::Rows(_) => None,
            Chunking::Period { .. } => Some(periods.len()),
        },
        band_rows: if options.bands.is_some() {
            band_rows
        } else {
            0
        },
        thresholds: options.thresholds,
    };
    let (drift, rows) = if compared.is_empty() {
        (Vec::new(), count_rows(&options.current)?)
    } else {
        columns::drift(&plan, &mut progress)?
    };
    let chunks: Vec<Chunk> = match &options.chunking {
        Chunking::Whole => vec![Chunk {
            index: 0,
            label: format!("rows 0-{}", rows.saturating_sub(1)),
            rows,
        }],
        Chunking::Rows(size) => (0..rows)
            .step_by((*size).max(1))
            .enumerate()
            .map(|(index, start)| {
                let end = (start + size).min(rows);
                Chunk {
                    index,
                    label: format!("rows {start}-{}", end - 1),
                    rows: end - start,
                }
            })
            .collect(),
        Chunking::Period { .. } => periods
            .iter()
            .enumerate()
            .map(|(index, (start, rows))| Chunk {
                index,
                label: crate::report::format_time(*start),
                rows: *rows,
            })
            .collect(),
    };

    // The estimators need whole rows: only their columns are read whole.
    let mut estimated: Vec<String> = Vec::new();
    if let Some(columns) = &options.estimation {
        estimated.extend([columns.score.clone(), columns.target.clone()]);
        estimated.extend(columns.prediction.clone());
    }
    if let Some(columns) = &options.multiclass {
        estimated.extend(columns.classes.iter().map(|(_, column)| column.clone()));
        estimated.extend([columns.prediction.clone(), columns.target.clone()]);
    }
    if let Some(columns) = &options.loss {
        estimated.extend([columns.prediction.clone(), columns.target.clone()]);
    }
    if options.loss.is_some() || options.multivariate.is_some() {
        estimated.extend(compared.iter().map(|(name, _)| name.clone()));
    }
    let (reference_columns, current_columns) = if estimated.is_empty() {
        (BTreeMap::new(), BTreeMap::new())
    } else {
        (
            read_columns(&options.reference, &estimated)?,
            read_columns(&options.current, &estimated)?,
        )
    };
    // Each chunk's rows, for the estimators.
    let chunk_rows: Vec<Vec<usize>> = if estimated.is_empty() {
        Vec::new()
    } else {
        match &row_chunks {
            RowChunks::Whole => vec![(0..rows).collect()],
            RowChunks::Rows(size) => (0..rows)
                .step_by(*size)
                .map(|start| (start..(start + size).min(rows)).collect())
                .collect(),
            RowChunks::Assigned(assigned) => {
                let mut rows = vec![Vec::new(); periods.len()];
                for (row, chunk) in assigned.iter().enumerate() {
                    if *chunk != NO_CHUNK {
                        rows[*chunk as usize].push(row);
                    }
                }
                rows
            }
        }
    };
    // Each estimator only when asked for.
    let estimator = options
        .estimation
        .as_ref()
        .map(|columns| {
            Estimator::fit(
                columns,
                &reference_columns,
                &current_columns,
                options,
                band_rows,
            )
        })
        .transpose()?;
    let reconstruction = options
        .multivariate
        .map(|share| {
            Reconstruction::fit(
                &compared,
                &reference_columns,
                &current_columns,
                share,
                band_rows,
            )
        })
        .transpose()?;
    let loss = options
        .loss
        .as_ref()
        .map(|columns| {
            LossEstimator::fit(
                columns,
                &compared,
                &reference_columns,
                &current_columns,
                options,
                band_rows,
            )
        })
        .transpose()?;
    let multiclass = options
        .multiclass
        .as_ref()
        .map(|columns| {
            MulticlassEstimator::fit(
                columns,
                &reference_columns,
                &current_columns,
                options,
                band_rows,
            )
        })
        .transpose()?;
    let mut multivariate = Vec::new();
    let mut performance = Vec::new();
    let mut results = Vec::new();
    let mut drifted_per_chunk = Vec::new();
    for chunk in &chunks {
        if let Some(rows) = chunk_rows.get(chunk.index) {
            if let Some(estimator) = &estimator {
                performance.extend(estimator.chunk(chunk.index, rows));
            }
            if let Some(reconstruction) = &reconstruction {
                multivariate.extend(reconstruction.chunk(chunk.index, rows));
            }
            if let Some(loss) = &loss {
                performance.extend(loss.chunk(chunk.index, rows));
            }
            if let Some(multiclass) = &multiclass {
                performance.extend(multiclass.chunk(chunk.index, rows));
            }
        }
        let mut window: Vec<FeatureWindowMetrics> = drift
            .iter()
            .map(|column: &ColumnDrift| column.chunks[chunk.index].clone())
            .collect();
        apply_p_value_correction(&mut window, options.thresholds);
        if let Some(k) = options.bands {
            for (metrics, column) in window.iter_mut().zip(&drift) {
                let column_bands = &column.bands;
                let enough = metrics.count >= options.thresholds.min_count;
                match column_bands {
                    Some(column_bands) => apply_bands(metrics, column_bands, k, enough),
                    None => metrics
                        .warnings
                        .push("reference too small for three chunks of this size: no bands".into()),
                }
            }
        }
        let mut drifted = 0;
        for ((name, _), metrics) in compared.iter().zip(window) {
            let verdict = match decide_by {
                Decision::Auto => metrics.drifted == Some(true),
                Decision::Any => metrics.tests.iter().any(|test| test.drifted),
                Decision::Test(decisive) => metrics
                    .tests
                    .iter()
                    .any(|test| test.drifted && test.test == decisive),
            };
            drifted += usize::from(verdict);
            results.push(ColumnResult {
                chunk: chunk.index,
                column: name.clone(),
                drifted: verdict,
                metrics,
            });
        }
        drifted_per_chunk.push(drifted);
    }
    let first_drift_chunk = drifted_per_chunk.iter().position(|count| *count > 0);
    Ok(AnalyzeReport {
        chunks,
        columns: compared,
        results,
        drifted_per_chunk,
        first_drift_chunk,
        decided_by: options.decide_by.clone(),
        performance,
        calibrated: estimator.map(|e| e.model.calibrator.is_some()),
        components: reconstruction.as_ref().map(|r| r.model.components.len()),
        multivariate,
    })
}

/// Multivariate drift over the files: the PCA model of the reference, the
/// band from its chunks, the current rows' errors.
struct Reconstruction {
    model: ReconstructionModel,
    /// (lower, upper) thresholds from the reference chunks.
    band: Option<(Option<f64>, f64)>,
    /// Each current row's reconstruction error.
    errors: Vec<f64>,
}

/// Every row of `file` as reconstruction inputs over the compared columns.
fn reconstruction_rows<'a>(
    compared: &[(String, FeatureKind)],
    file: &'a BTreeMap<String, Column>,
) -> Vec<Vec<Input<'a>>> {
    let columns: Vec<&Column> = compared.iter().map(|(name, _)| &file[name]).collect();
    let rows = columns.first().map_or(0, |c| c.len());
    (0..rows)
        .map(|row| {
            compared
                .iter()
                .zip(&columns)
                .map(|((_, kind), column)| match (kind, column) {
                    (FeatureKind::Numeric, Column::Numbers(values)) => {
                        values[row].map_or(Input::Missing, Input::Number)
                    }
                    (FeatureKind::Numeric, Column::Texts(values)) => values[row]
                        .as_deref()
                        .and_then(|text| text.trim().parse().ok())
                        .map_or(Input::Missing, Input::Number),
                    (_, Column::Texts(values)) => values[row]
                        .as_deref()
                        .map_or(Input::Missing, Input::Category),
                    (_, Column::Numbers(values)) => {
                        values[row].map_or(Input::Missing, Input::Number)
                    }
                })
                .collect()
        })
        .collect()
}

impl Reconstruction {
    fn fit(
        compared: &[(String, FeatureKind)],
        reference: &BTreeMap<String, Column>,
        current: &BTreeMap<String, Column>,
        share: f64,
        band_rows: usize,
    ) -> Result<Self, AnalyzeError> {
        let reference_rows = reconstruction_rows(compared, reference);
        let categorical: Vec<bool> = compared
            .iter()
            .map(|(_, kind)| *kind == FeatureKind::Categorical)
            .collect();
        let model = ReconstructionModel::fit(
            compared.iter().map(|(name, _)| name.clone()).collect(),
            &categorical,
            &reference_rows,
            share,
        )
        .map_err(|error| AnalyzeError::Estimation(format!("multivariate drift: {error}")))?;
        let band = (band_rows > 0)
            .then(|| {
                let means: Vec<f64> = reference_rows
                    .chunks_exact(band_rows)
                    .map(|chunk| {
                        chunk.iter().map(|row| model.error(row)).sum::<f64>() / chunk.len() as f64
                    })
                    .collect();
                let (mean, std) = chunk_spread(&means)?;
                let lower = mean - ESTIMATION_BAND_K * std;
                Some((
                    (lower > 0.0).then_some(lower),
                    mean + ESTIMATION_BAND_K * std,
                ))
            })
            .flatten();
        let errors = reconstruction_rows(compared, current)
            .iter()
            .map(|row| model.error(row))
            .collect();
        Ok(Self {
            model,
            band,
            errors,
        })
    }

    fn chunk(&self, chunk: usize, rows: &[usize]) -> Option<ChunkReconstruction> {
        let mut sum = ErrorSum::default();
        for row in rows {
            sum.add(self.errors[*row]);
        }
        let mean = sum.mean()?;
        let (lower, upper) = match self.band {
            Some((lower, upper)) => (lower, Some(upper)),
            None => (None, None),
        };
        Some(ChunkReconstruction {
            chunk,
            reconstruction_error: mean,
            sampling_error: sum.std().map(|std| std / (sum.count as f64).sqrt()),
            lower_threshold: lower,
            upper_threshold: upper,
            alert: self.band.is_some()
                && !(lower.is_none_or(|lower| lower < mean)
                    && upper.is_some_and(|upper| mean < upper)),
        })
    }
}

/// Direct loss estimation over the files: the error models fitted on the
/// reference, the bands from its chunks, the current rows' predicted errors.
struct LossEstimator {
    model: LossModel,
    bands: BTreeMap<PerformanceMetric, Band>,
    /// Each current row's predicted absolute and squared error (`None`:
    /// no prediction).
    current: Vec<Option<(f64, f64)>>,
    /// Each current row's realized error, when the file has the targets.
    current_errors: Option<Vec<Option<f64>>>,
}

impl LossEstimator {
    fn fit(
        columns: &LossColumns,
        compared: &[(String, FeatureKind)],
        reference: &BTreeMap<String, Column>,
        current: &BTreeMap<String, Column>,
        options: &AnalyzeOptions,
        band_rows: usize,
    ) -> Result<Self, AnalyzeError> {
        let inputs: Vec<(String, FeatureKind)> = compared
            .iter()
            .filter(|(name, _)| *name != columns.prediction && *name != columns.target)
            .cloned()
            .collect();
        let numbers = |file: &BTreeMap<String, Column>, name: &str, path: &PathBuf| {
            file.get(name)
                .map(|column| {
                    numbers_of(column)
                        .into_iter()
                        .map(|value| value.filter(|v| v.is_finite()))
                        .collect::<Vec<_>>()
                })
                .ok_or_else(|| AnalyzeError::MissingColumn {
                    column: name.to_owned(),
                    file: path.display().to_string(),
                })
        };
        let predictions = numbers(reference, &columns.prediction, &options.reference)?;
        let targets = numbers(reference, &columns.target, &options.reference)?;
        let rows = reconstruction_rows(&inputs, reference);
        let categorical: Vec<bool> = inputs
            .iter()
            .map(|(_, kind)| *kind == FeatureKind::Categorical)
            .collect();
        let model = LossModel::fit(
            inputs.iter().map(|(name, _)| name.clone()).collect(),
            &categorical,
            &rows,
            &predictions,
            &targets,
        )
        .map_err(|error| AnalyzeError::Estimation(format!("direct loss estimation: {error}")))?;
        // Realized MAE and RMSE of reference chunks of the current chunk size.
        let errors: Vec<Option<f64>> = predictions
            .iter()
            .zip(&targets)
            .map(|(p, t)| Some(t.as_ref()? - p.as_ref()?))
            .collect();
        let mut bands = BTreeMap::new();
        if band_rows > 0 {
            for metric in [PerformanceMetric::Mae, PerformanceMetric::Rmse] {
                let values: Vec<f64> = errors
                    .chunks_exact(band_rows)
                    .filter_map(|chunk| realized_loss(metric, chunk))
                    .collect();
                if let Some(band) = Band::from_error_chunks(&values, ESTIMATION_BAND_K) {
                    bands.insert(metric, band);
                }
            }
        }
        let current_predictions = numbers(current, &columns.prediction, &options.current)?;
        let current_rows = reconstruction_rows(&inputs, current);
        let with_prediction: Vec<usize> = (0..current_predictions.len())
            .filter(|row| current_predictions[*row].is_some())
            .collect();
        let predicted = model.predict(
            &with_prediction
                .iter()
                .map(|row| current_rows[*row].as_slice())
                .collect::<Vec<_>>(),
            &with_prediction
                .iter()
                .map(|row| current_predictions[*row].expect("selected rows have one"))
                .collect::<Vec<_>>(),
        );
        let mut current_errors = vec![None; current_predictions.len()];
        for (row, errors) in with_prediction.iter().zip(predicted) {
            current_errors[*row] = Some(errors);
        }
        let realized_errors = current.get(&columns.target).map(|_| {
            let targets =
                numbers(current, &columns.target, &options.current).expect("the column is present");
            current_predictions
                .iter()
                .zip(targets)
                .map(|(p, t)| Some(t? - (*p)?))
                .collect()
        });
        Ok(Self {
            model,
            bands,
            current: current_errors,
            current_errors: realized_errors,
        })
    }

    fn chunk(&self, chunk: usize, rows: &[usize]) -> Vec<ChunkPerformance> {
        let mut sum = LossSum::default();
        for row in rows {
            if let Some((absolute, squared)) = self.current[*row] {
                sum.add(absolute, squared);
            }
        }
        self.model
            .estimate(&sum)
            .into_iter()
            .map(|estimate| {
                let realized = self.current_errors.as_ref().and_then(|errors| {
                    let chunk_errors: Vec<Option<f64>> =
                        rows.iter().map(|row| errors[*row]).collect();
                    realized_loss(estimate.metric, &chunk_errors)
                });
                ChunkPerformance::of(chunk, estimate, self.bands.get(&estimate.metric), realized)
            })
            .collect()
    }
}

/// Rows of a multiclass chunk: probabilities, predicted and true classes.
type ClassRows = (Vec<Vec<f64>>, Vec<usize>, Vec<usize>);

/// A file's rows for multiclass CBPE: probabilities and predicted class
/// (`None`: missing), and the true classes when the file has them.
type ClassOutputs = (Vec<Option<(Vec<f64>, usize)>>, Option<Vec<Option<usize>>>);

/// Multiclass CBPE over the files: the model fitted on the reference, the
/// bands from its chunks, the current rows' probabilities and predictions.
struct MulticlassEstimator {
    model: MulticlassCbpe,
    bands: BTreeMap<PerformanceMetric, Band>,
    /// Current rows: probabilities and predicted class (`None`: missing).
    current: Vec<Option<(Vec<f64>, usize)>>,
    /// Current true classes, when the file has them.
    current_labels: Option<Vec<Option<usize>>>,
}

impl MulticlassEstimator {
    /// Each row's probabilities and predicted class, and its true class
    /// when the file has the target column.
    fn rows(
        columns: &MulticlassColumns,
        classes: &[String],
        file: &BTreeMap<String, Column>,
        path: &std::path::Path,
    ) -> Result<ClassOutputs, AnalyzeError> {
        let get = |name: &str| {
            file.get(name).ok_or_else(|| AnalyzeError::MissingColumn {
                column: name.to_owned(),
                file: path.display().to_string(),
            })
        };
        let index_of = |text: Option<String>| {
            text.and_then(|text| classes.iter().position(|class| *class == text.trim()))
        };
        let mut by_class = Vec::new();
        for class in classes {
            let (_, column) = columns
                .classes
                .iter()
                .find(|(name, _)| name == class)
                .expect("classes come from the columns");
            by_class.push(numbers_of(get(column)?));
        }
        let predicted: Vec<Option<usize>> = texts_of(get(&columns.prediction)?)
            .into_iter()
            .map(index_of)
            .collect();
        let rows = (0..predicted.len())
            .map(|row| {
                let probabilities: Option<Vec<f64>> = by_class
                    .iter()
                    .map(|values| values[row].filter(|p| p.is_finite()))
                    .collect();
                Some((probabilities?, predicted[row]?))
            })
            .collect();
        let labels = file
            .get(&columns.target)
            .map(|column| texts_of(column).into_iter().map(index_of).collect());
        Ok((rows, labels))
    }

    fn fit(
        columns: &MulticlassColumns,
        reference: &BTreeMap<String, Column>,
        current: &BTreeMap<String, Column>,
        options: &AnalyzeOptions,
        band_rows: usize,
    ) -> Result<Self, AnalyzeError> {
        let mut classes: Vec<String> = columns.classes.iter().map(|(c, _)| c.clone()).collect();
        classes.sort();
        let (reference_rows, labels) =
            Self::rows(columns, &classes, reference, &options.reference)?;
        let labels = labels.ok_or_else(|| AnalyzeError::MissingColumn {
            column: columns.target.clone(),
            file: options.reference.display().to_string(),
        })?;
        let complete: Vec<(Vec<f64>, usize, usize)> = reference_rows
            .into_iter()
            .zip(labels)
            .filter_map(|(row, label)| {
                let (probabilities, predicted) = row?;
                Some((probabilities, predicted, label?))
            })
            .collect();
        let split = |rows: &[(Vec<f64>, usize, usize)]| -> ClassRows {
            (
                rows.iter().map(|r| r.0.clone()).collect(),
                rows.iter().map(|r| r.1).collect(),
                rows.iter().map(|r| r.2).collect(),
            )
        };
        let (probabilities, predicted, truth) = split(&complete);
        let model = MulticlassCbpe::fit(classes.clone(), &probabilities, &predicted, &truth)
            .map_err(|error| AnalyzeError::Estimation(error.to_string()))?;
        let mut bands = BTreeMap::new();
        if band_rows > 0 {
            for metric in PerformanceMetric::CLASSIFICATION {
                let values: Vec<f64> = complete
                    .chunks_exact(band_rows)
                    .filter_map(|chunk| {
                        let (probabilities, predicted, truth) = split(chunk);
                        multiclass_realized(
                            metric,
                            classes.len(),
                            &probabilities,
                            &predicted,
                            &truth,
                        )
                    })
                    .collect();
                if let Some(band) = Band::from_chunks(&values, ESTIMATION_BAND_K) {
                    bands.insert(metric, band);
                }
            }
        }
        let (current_rows, current_labels) =
            Self::rows(columns, &classes, current, &options.current)?;
        Ok(Self {
            model,
            bands,
            current: current_rows,
            current_labels,
        })
    }

    fn chunk(&self, chunk: usize, rows: &[usize]) -> Vec<ChunkPerformance> {
        let present: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|row| self.current[*row].is_some())
            .collect();
        let probabilities: Vec<Vec<f64>> = present
            .iter()
            .map(|row| self.current[*row].as_ref().expect("present").0.clone())
            .collect();
        let predicted: Vec<usize> = present
            .iter()
            .map(|row| self.current[*row].as_ref().expect("present").1)
            .collect();
        let labelled: Option<ClassRows> = self.current_labels.as_ref().map(|labels| {
            let kept: Vec<usize> = present
                .iter()
                .enumerate()
                .filter(|(_, row)| labels[**row].is_some())
                .map(|(i, _)| i)
                .collect();
            (
                kept.iter().map(|i| probabilities[*i].clone()).collect(),
                kept.iter().map(|i| predicted[*i]).collect(),
                kept.iter()
                    .map(|i| labels[present[*i]].expect("kept rows have one"))
                    .collect(),
            )
        });
        self.model
            .estimate(&probabilities, &predicted)
            .into_iter()
            .map(|estimate| {
                let realized = labelled
                    .as_ref()
                    .and_then(|(probabilities, predicted, truth)| {
                        multiclass_realized(
                            estimate.metric,
                            self.model.classes.len(),
                            probabilities,
                            predicted,
                            truth,
                        )
                    });
                ChunkPerformance::of(chunk, estimate, self.bands.get(&estimate.metric), realized)
            })
            .collect()
    }
}

/// MAE or RMSE of the rows with an error.
fn realized_loss(metric: PerformanceMetric, errors: &[Option<f64>]) -> Option<f64> {
    let errors: Vec<f64> = errors.iter().flatten().copied().collect();
    if errors.is_empty() {
        return None;
    }
    let n = errors.len() as f64;
    match metric {
        PerformanceMetric::Mae => Some(errors.iter().map(|e| e.abs()).sum::<f64>() / n),
        PerformanceMetric::Rmse => Some((errors.iter().map(|e| e * e).sum::<f64>() / n).sqrt()),
        _ => None,
    }
}

/// CBPE over the files: the model fitted on the reference, the bands from
/// its chunks, the current file's outputs.
struct Estimator {
    model: CbpeModel,
    bands: BTreeMap<PerformanceMetric, Band>,
    /// Current rows: score and predicted class (`None`: no score).
    current: Vec<Option<(f64, bool)>>,
    /// Current labels, when the file has them.
    current_labels: Option<Vec<Option<bool>>>,
}

/// A column's values as classes: `Some(true)` for the positive class.
fn classes(column: &Column, positive: &str) -> Vec<Option<bool>> {
    texts_of(column)
        .into_iter()
        .map(|value| value.map(|text| text.trim() == positive))
        .collect()
}

/// Scores and predicted classes (`score ≥ 0.5` without a prediction column).
fn outputs(
    columns: &EstimationColumns,
    file: &BTreeMap<String, Column>,
    path: &std::path::Path,
) -> Result<Vec<Option<(f64, bool)>>, AnalyzeError> {
    let get = |name: &str| {
        file.get(name).ok_or_else(|| AnalyzeError::MissingColumn {
            column: name.to_owned(),
            file: path.display().to_string(),
        })
    };
    let scores = numbers_of(get(&columns.score)?);
    let predicted = match &columns.prediction {
        Some(name) => classes(get(name)?, &columns.positive_class),
        None => scores.iter().map(|s| s.map(|s| s >= 0.5)).collect(),
    };
    Ok(scores
        .into_iter()
        .zip(predicted)
        .map(|(score, predicted)| match (score, predicted) {
            (Some(score), Some(predicted)) if score.is_finite() => Some((score, predicted)),
            _ => None,
        })
        .collect())
}

impl Estimator {
    fn fit(
        columns: &EstimationColumns,
        reference: &BTreeMap<String, Column>,
        current: &BTreeMap<String, Column>,
        options: &AnalyzeOptions,
        band_rows: usize,
    ) -> Result<Self, AnalyzeError> {
        let reference_outputs = outputs(columns, reference, &options.reference)?;
        let labels = classes(
            reference
                .get(&columns.target)
                .ok_or_else(|| AnalyzeError::MissingColumn {
                    column: columns.target.clone(),
                    file: options.reference.display().to_string(),
                })?,
            &columns.positive_class,
        );
        // Reference rows with a score, a prediction and a label, in order.
        let rows: Vec<(f64, bool, bool)> = reference_outputs
            .iter()
            .zip(&labels)
            .filter_map(|(outputs, label)| {
                Some((outputs.as_ref()?.0, outputs.as_ref()?.1, (*label)?))
            })
            .collect();
        let unzip = |rows: &[(f64, bool, bool)]| -> (Vec<f64>, Vec<bool>, Vec<bool>) {
            (
                rows.iter().map(|r| r.0).collect(),
                rows.iter().map(|r| r.1).collect(),
                rows.iter().map(|r| r.2).collect(),
            )
        };
        let (scores, predicted, truth) = unzip(&rows);
        let model = CbpeModel::fit(&scores, &predicted, &truth)
            .map_err(|error| AnalyzeError::Estimation(error.to_string()))?;
        let mut bands = BTreeMap::new();
        if band_rows > 0 {
            for metric in PerformanceMetric::CLASSIFICATION {
                let values: Vec<f64> = rows
                    .chunks_exact(band_rows)
                    .filter_map(|chunk| {
                        let (scores, predicted, truth) = unzip(chunk);
                        realized(metric, &scores, &predicted, &truth)
                    })
                    .collect();
                if let Some(band) = Band::from_chunks(&values, ESTIMATION_BAND_K) {
                    bands.insert(metric, band);
                }
            }
        }
        Ok(Self {
            model,
            bands,
            current: outputs(columns, current, &options.current)?,
            current_labels: current
                .get(&columns.target)
                .map(|column| classes(column, &columns.positive_class)),
        })
    }

    fn chunk(&self, chunk: usize, rows: &[usize]) -> Vec<ChunkPerformance> {
        let mut histogram = ScoreHistogram::default();
        for row in rows {
            if let Some((score, predicted)) = self.current[*row] {
                histogram.add(score, predicted);
            }
        }
        let labelled: Option<(Vec<f64>, Vec<bool>, Vec<bool>)> =
            self.current_labels.as_ref().map(|labels| {
                let rows: Vec<(f64, bool, bool)> = rows
                    .iter()
                    .filter_map(|row| {
                        let (score, predicted) = self.current[*row]?;
                        Some((score, predicted, labels[*row]?))
                    })
                    .collect();
                (
                    rows.iter().map(|r| r.0).collect(),
                    rows.iter().map(|r| r.1).collect(),
                    rows.iter().map(|r| r.2).collect(),
                )
            });
        self.model
            .estimate(&histogram)
            .into_iter()
            .map(|estimate| {
                let realized = labelled.as_ref().and_then(|(scores, predicted, truth)| {
                    realized(estimate.metric, scores, predicted, truth)
                });
                ChunkPerformance::of(chunk, estimate, self.bands.get(&estimate.metric), realized)
            })
            .collect()
    }
}

fn test_value(metrics: &FeatureWindowMetrics, test: DriftTest) -> String {
    metrics.tests.iter().find(|t| t.test == test).map_or_else(
        || "-".to_owned(),
        |t| format!("{:.4}{}", t.value, if t.drifted { "*" } else { "" }),
    )
}

/// A plain-text table: one block per chunk, one line per column.
pub fn render_table(report: &AnalyzeReport) -> String {
    let mut out = String::new();
    let width = report
        .columns
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    for chunk in &report.chunks {
        let _ = writeln!(
            out,
            "chunk {} ({}, {} rows): {} of {} columns drifted",
            chunk.index,
            chunk.label,
            chunk.rows,
            report.drifted_per_chunk[chunk.index],
            report.columns.len()
        );
        let _ = writeln!(
            out,
            "  {:<width$}  {:<11}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:<22}",
            "column",
            "kind",
            "psi",
            "ks p",
            "chi2 p",
            "js",
            "wass/std",
            "missing",
            "auto verdict by"
        );
        for result in report.results.iter().filter(|r| r.chunk == chunk.index) {
            let m = &result.metrics;
            let kind = m.kind.as_str();
            let _ = writeln!(
                out,
                "{} {:<width$}  {:<11}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:<22}",
                if result.drifted { "!" } else { " " },
                result.column,
                kind,
                test_value(m, DriftTest::Psi),
                test_value(m, DriftTest::Ks),
                test_value(m, DriftTest::ChiSquare),
                test_value(m, DriftTest::JensenShannon),
                test_value(m, DriftTest::WassersteinNormalized),
                m.missing_rate.map_or("-".to_owned(), |r| format!("{r:.4}")),
                m.decided_by.map_or("-", DriftTest::as_str),
            );
            for warning in &m.warnings {
                let _ = writeln!(out, "    note: {warning}");
            }
        }
        if let Some(m) = report.multivariate.iter().find(|m| m.chunk == chunk.index) {
            let _ = writeln!(
                out,
                "{} multivariate drift (PCA reconstruction error, {} components): {:.4} ± {}  band [{}, {}]",
                if m.alert { "!" } else { " " },
                report.components.unwrap_or(0),
                m.reconstruction_error,
                m.sampling_error.map_or("-".into(), |e| format!("{e:.4}")),
                m.lower_threshold.map_or("-".into(), |v| format!("{v:.4}")),
                m.upper_threshold.map_or("-".into(), |v| format!("{v:.4}")),
            );
        }
        let estimates: Vec<&ChunkPerformance> = report
            .performance
            .iter()
            .filter(|p| p.chunk == chunk.index)
            .collect();
        if !estimates.is_empty() {
            let method = if estimates
                .iter()
                .any(|p| matches!(p.metric, PerformanceMetric::Mae | PerformanceMetric::Rmse))
            {
                "direct loss estimation"
            } else {
                "CBPE"
            };
            let _ = writeln!(
                out,
                "  estimated performance ({method}; ! = outside the reference band):"
            );
            for p in estimates {
                let _ = writeln!(
                    out,
                    "{} {:<10} {:.4} ± {}  band [{}, {}]  realized {}",
                    if p.alert { "!" } else { " " },
                    p.metric.as_str(),
                    p.estimated,
                    p.sampling_error.map_or("-".into(), |e| format!("{e:.4}")),
                    p.lower_threshold.map_or("-".into(), |v| format!("{v:.4}")),
                    p.upper_threshold.map_or("-".into(), |v| format!("{v:.4}")),
                    p.realized.map_or("-".into(), |v| format!("{v:.4}")),
                );
            }
        }
    }
    match report.first_drift_chunk {
        Some(first) => {
            let columns: Vec<&str> = report
                .results
                .iter()
                .filter(|r| r.chunk == first && r.drifted)
                .map(|r| r.column.as_str())
                .collect();
            let _ = writeln!(
                out,
                "\ndrift from chunk {first} ({}) on, by {}: {}",
                report.chunks[first].label,
                report.decided_by,
                columns.join(", ")
            );
        }
        None => {
            let _ = writeln!(out, "\nno drift by {}", report.decided_by);
        }
    }
    let _ = writeln!(
        out,
        "* = test flags drift; ! = column drifted by {}",
        report.decided_by
    );
    out
}

/// Long-format CSV: one line per chunk, column and test.
pub fn render_csv(report: &AnalyzeReport) -> String {
    let mut out = String::from(
        "chunk,chunk_label,column,kind,count,missing_rate,test,value,threshold,drifted\n",
    );
    for result in &report.results {
        let m = &result.metrics;
        let kind = m.kind.as_str();
        for test in &m.tests {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{}",
                result.chunk,
                csv_field(&report.chunks[result.chunk].label),
                csv_field(&result.column),
                kind,
                m.count,
                m.missing_rate.map_or(String::new(), |r| r.to_string()),
                test.test,
                test.value,
                test.threshold,
                test.drifted
            );
        }
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The report as JSON.
pub fn render_json(report: &AnalyzeReport) -> String {
    serde_json::to_string_pretty(report).expect("reports serialize")
}
