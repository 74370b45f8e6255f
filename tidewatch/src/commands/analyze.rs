//! `tidewatch analyze`: a current data file against a reference file, chunk
//! by chunk, with every drift test (offline, no store).

use std::path::PathBuf;

use tidewatch::analyze::{self, AnalyzeOptions, Chunking};

/// Output format of `tidewatch analyze`: a plain-text table, JSON or CSV
/// (values undocumented so `--help` keeps its one-line form).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Arguments of `tidewatch analyze`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Reference data (.csv, .parquet, .arrow, .jsonl).
    #[arg(long)]
    reference: PathBuf,
    /// Current data.
    #[arg(long)]
    current: PathBuf,
    /// Chunks of this many rows (default: the whole file is one chunk).
    #[arg(long, conflicts_with = "chunk_period")]
    chunk_size: Option<usize>,
    /// Chunks of this period (`1h`, `1d`…) by --timestamp-column.
    #[arg(long, requires = "timestamp_column", value_parser = humantime::parse_duration)]
    chunk_period: Option<std::time::Duration>,
    /// Timestamp column for --chunk-period.
    #[arg(long)]
    timestamp_column: Option<String>,
    /// Only these columns (comma-separated).
    #[arg(long, value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// Columns to treat as numeric (comma-separated).
    #[arg(long, value_delimiter = ',')]
    numeric: Vec<String>,
    /// Columns to treat as categorical (comma-separated).
    #[arg(long, value_delimiter = ',')]
    categorical: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// What decides whether a column drifted: auto (a p-value test up to --auto-cutover, a distance above), a test (psi, ks, chi_square, jensen_shannon, hellinger, kl_divergence, wasserstein_normalized, psi_band, jensen_shannon_band, wasserstein_normalized_band, mean_band) or any.
    #[arg(long, default_value = "auto")]
    decide_by: String,
    /// Effective sample size n·m/(n+m) above which auto decides by a distance (normalized Wasserstein, Jensen-Shannon) instead of a p-value (KS, chi-square).
    #[arg(long, default_value_t = 10_000.0)]
    auto_cutover: f64,
    /// Exit with status 1 when any column drifted (for CI pipelines).
    #[arg(long)]
    fail_on_drift: bool,
    /// PSI threshold.
    #[arg(long, default_value_t = 0.2)]
    psi_threshold: f64,
    /// Significance level of the KS and chi-square tests.
    #[arg(long, default_value_t = 0.05)]
    alpha: f64,
    /// Cap on each sample size in the KS p-value.
    #[arg(long)]
    ks_sample_cap: Option<u64>,
    /// Multivariate drift: each chunk's mean error of reconstructing its rows from the reference's principal components (over the compared columns), flagged outside mean ± 3σ of reference chunks.
    #[arg(long)]
    multivariate: bool,
    /// Share of the reference's variance the kept principal components explain.
    #[arg(long, default_value_t = detectors::reconstruction::DEFAULT_VARIANCE_SHARE, requires = "multivariate")]
    variance_share: f64,
    /// Estimate performance without labels (CBPE) from this column: a binary classifier's score, the probability of the positive class. Needs --target-column in the reference.
    #[arg(long, requires = "target_column", group = "estimator")]
    score_column: Option<String>,
    /// The model is a regressor: estimate its MAE and RMSE without targets by direct loss estimation, from --prediction-column and, in the reference, --target-column; the other compared columns are its inputs.
    #[arg(long, requires_all = ["prediction_column", "target_column"], group = "estimator")]
    regression: bool,
    /// A multiclass classifier's probability of one class, as CLASS=COLUMN (repeat for every class, at least three): estimate its macro-averaged performance without labels (multiclass CBPE) from these, --prediction-column and, in the reference, --target-column.
    #[arg(long, value_name = "CLASS=COLUMN", group = "estimator", requires_all = ["prediction_column", "target_column"])]
    class_score_column: Vec<String>,
    /// The predicted class (CBPE; default: score >= 0.5 is positive), or the regressor's prediction.
    #[arg(long, requires = "estimator")]
    prediction_column: Option<String>,
    /// The true class or value: in the reference to fit the estimator; in the current file, if present, realized performance is shown next to the estimate.
    #[arg(long, requires = "estimator")]
    target_column: Option<String>,
    /// The positive class as the prediction and target columns spell it.
    #[arg(long, default_value = "1")]
    positive_class: String,
    /// NannyML-style bands: flag a chunk whose PSI, Jensen-Shannon, normalized Wasserstein or mean leaves mean ± K·σ over reference chunks of the same size.
    #[arg(long, value_name = "K")]
    bands: Option<f64>,
}

impl Args {
    fn options(self) -> AnalyzeOptions {
        let chunking = match (self.chunk_size, self.chunk_period, self.timestamp_column) {
            (Some(rows), _, _) => Chunking::Rows(rows),
            (None, Some(period), Some(column)) => Chunking::Period {
                millis: period.as_millis() as i64,
                column,
            },
            _ => Chunking::Whole,
        };
        AnalyzeOptions {
            reference: self.reference,
            current: self.current,
            chunking,
            columns: self.columns,
            numeric: self.numeric,
            categorical: self.categorical,
            thresholds: detectors::metrics::DriftThresholds {
                psi: self.psi_threshold,
                alpha: self.alpha,
                ks_sample_cap: self.ks_sample_cap,
                auto_cutover: self.auto_cutover,
                ..Default::default()
            },
            decide_by: self.decide_by,
            multivariate: self.multivariate.then_some(self.variance_share),
            multiclass: match (&self.prediction_column, &self.target_column) {
                (Some(prediction), Some(target)) if !self.class_score_column.is_empty() => {
                    Some(analyze::MulticlassColumns {
                        classes: self
                            .class_score_column
                            .iter()
                            .map(|pair| match pair.split_once('=') {
                                Some((class, column)) => (class.to_owned(), column.to_owned()),
                                None => (pair.clone(), pair.clone()),
                            })
                            .collect(),
                        prediction: prediction.clone(),
                        target: target.clone(),
                    })
                }
                _ => None,
            },
            loss: match (
                self.regression,
                &self.prediction_column,
                &self.target_column,
            ) {
                (true, Some(prediction), Some(target)) => Some(analyze::LossColumns {
                    prediction: prediction.clone(),
                    target: target.clone(),
                }),
                _ => None,
            },
            estimation: match (self.score_column, self.target_column) {
                (Some(score), Some(target)) => Some(analyze::EstimationColumns {
                    score,
                    prediction: self.prediction_column,
                    target,
                    positive_class: self.positive_class,
                }),
                _ => None,
            },
            bands: self.bands,
        }
    }
}

/// Runs the analysis and prints the report (exit status 1 with
/// `--fail-on-drift` when a column drifted).
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.variance_share > 0.0 && args.variance_share <= 1.0,
        "--variance-share must be above 0 and at most 1"
    );
    anyhow::ensure!(
        args.auto_cutover.is_finite() && args.auto_cutover >= 0.0,
        "--auto-cutover must be a number, 0 or more"
    );
    let (format, fail_on_drift) = (args.format, args.fail_on_drift);
    let options = args.options();
    let report = tokio::task::spawn_blocking(move || {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        let report = analyze::analyze(&options, |done, total| {
            if total > 1 {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
        });
        bar.finish_and_clear();
        report
    })
    .await??;
    let text = match format {
        Format::Table => analyze::render_table(&report),
        Format::Json => analyze::render_json(&report),
        Format::Csv => analyze::render_csv(&report),
    };
    print!("{text}");
    if fail_on_drift && report.any_drift() {
        std::process::exit(1);
    }
    Ok(())
}
