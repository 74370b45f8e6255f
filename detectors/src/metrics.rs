//! The numbers a closed window reports for one series.
//!
//! [`compute`] turns a merged [`FeatureSketch`] and, if the model version has
//! one, its reference into [`FeatureWindowMetrics`]. Absent numbers are `None`
//! (an empty window has no mean; a series without reference has no PSI).
//!
//! Every drift score that could be computed is also reported as a
//! [`TestResult`]: its value, the threshold applied and the verdict.
//!
//! | test | value | drifted when | default threshold |
//! |---|---|---|---|
//! | `psi` | PSI | value ≥ threshold | 0.2 |
//! | `ks` | KS p-value | value ≤ threshold (α, corrected across series) | 0.05 |
//! | `chi_square` | chi-square p-value | value ≤ threshold (α, corrected) | 0.05 |
//! | `jensen_shannon` | JS distance | value ≥ threshold | 0.1 |
//! | `hellinger` | Hellinger distance | value ≥ threshold | 0.1 |
//! | `kl_divergence` | KL(current ‖ reference) | value ≥ threshold | 0.1 |
//! | `wasserstein_normalized` | W1 / reference std | value ≥ threshold | 0.05 |
//!
//! p-values of one window (all series of a model version and segment) are
//! corrected together with [`apply_p_value_correction`] (Benjamini–Hochberg
//! by default).
//!
//! ## The series' verdict
//! The series-level `drifted` flag is the verdict of one test, chosen by
//! [`VerdictPolicy`] and named in `decided_by`. It is `None` when there is
//! no reference, no value of the deciding test, or fewer than
//! [`DriftThresholds::min_count`] values (then every test's `drifted` is
//! false and a warning says why).
//!
//! The default policy, `auto`, decides by the effective sample size
//! `nₑ = n·m/(n + m)` of the reference (`n` values) and the window (`m`):
//!
//! | series | `nₑ ≤ auto_cutover` (10,000) | larger |
//! |---|---|---|
//! | numeric | `ks` (p-value, corrected) | `wasserstein_normalized` ≥ 0.05 |
//! | categorical | `chi_square` (p-value, corrected) | `jensen_shannon` ≥ 0.1, if also `nₑ ≥ 100 · categories` |
//!
//! On small windows a p-value is the right question (is this more than
//! sampling noise?) and a distance is noisy (a Wasserstein distance over
//! 1,000 values is ≈ 0.03 σ by chance alone). On large windows every shift
//! is significant, so the p-value flags shifts nobody cares about, while a
//! distance is then precise (≈ 0.009 σ of noise at `nₑ` = 10,000) and
//! answers "how large is the shift?": 0.05 σ of normalized Wasserstein
//! catches a mean shift of a tenth of a standard deviation, which PSI (≈ 0.01
//! for that shift) never flags. Jensen–Shannon's chance value grows with the
//! number of categories (≈ √(k / 5.5 nₑ)), hence the second condition.
//! `psi` and the other tests stay reported and any of them can be the
//! policy instead (`[drift] verdict = "psi"`).

use serde::{Deserialize, Serialize};

use crate::drift;
use crate::numeric::{fingerprint_edges, BinCounts};
use crate::quality::QualityMetrics;
use crate::reference::{CategoricalReference, FeatureReference, NumericReference};
use crate::sketch::FeatureSketch;
use crate::spec::FeatureKind;

/// Thresholds for the drift flag.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftThresholds {
    /// PSI at or above which a series is flagged.
    pub psi: f64,
    /// Fewest valid values a window needs for a drift verdict: PSI over a
    /// handful of values is noise (ten values cannot fill ten bins), so
    /// smaller windows report their scores but `drifted` stays `None`.
    pub min_count: u64,
    /// Significance level of the p-value tests (KS, chi-square).
    pub alpha: f64,
    /// How p-values of one window are corrected for testing many series.
    pub correction: Correction,
    /// Jensen–Shannon distance at or above which the test flags drift.
    pub jensen_shannon: f64,
    /// Hellinger distance threshold.
    pub hellinger: f64,
    /// KL divergence threshold.
    pub kl_divergence: f64,
    /// Normalized Wasserstein threshold.
    pub wasserstein_normalized: f64,
    /// Cap on each sample size in the KS p-value (`None`: no cap). On
    /// large windows any shift is significant; capping the effective sample
    /// size asks "would this shift be significant in a sample of this size?".
    pub ks_sample_cap: Option<u64>,
    /// Which test decides a series' `drifted` flag.
    pub verdict: VerdictPolicy,
    /// The effective sample size `n·m/(n+m)` above which `auto` decides by
    /// a distance instead of a p-value.
    pub auto_cutover: f64,
}

/// Which test decides a series' `drifted` flag (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum VerdictPolicy {
    /// A p-value test on small windows, a distance on large ones.
    Auto,
    /// Always this test against the reference (a series without it has no
    /// verdict: `ks` for categorical series, `chi_square` for numeric ones).
    Test(DriftTest),
}

impl VerdictPolicy {
    /// The policy named `name` (`auto` or a test of
    /// [`DriftTest::AGAINST_REFERENCE`]).
    pub fn parse(name: &str) -> Option<Self> {
        if name == "auto" {
            return Some(VerdictPolicy::Auto);
        }
        DriftTest::parse(name)
            .filter(|test| DriftTest::AGAINST_REFERENCE.contains(test))
            .map(VerdictPolicy::Test)
    }

    /// The name as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictPolicy::Auto => "auto",
            VerdictPolicy::Test(test) => test.as_str(),
        }
    }
}

impl std::fmt::Display for VerdictPolicy {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl TryFrom<String> for VerdictPolicy {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        Self::parse(&name).ok_or_else(|| {
            format!(
                "unknown verdict `{name}`: auto, {}",
                DriftTest::AGAINST_REFERENCE
                    .map(DriftTest::as_str)
                    .join(", ")
            )
        })
    }
}

impl From<VerdictPolicy> for String {
    fn from(policy: VerdictPolicy) -> String {
        policy.as_str().to_owned()
    }
}

impl Default for DriftThresholds {
    fn default() -> Self {
        Self {
            psi: 0.2,
            min_count: 100,
            alpha: 0.05,
            correction: Correction::BenjaminiHochberg,
            jensen_shannon: 0.1,
            hellinger: 0.1,
            kl_divergence: 0.1,
            wasserstein_normalized: 0.05,
            ks_sample_cap: None,
            verdict: VerdictPolicy::Auto,
            auto_cutover: 10_000.0,
        }
    }
}

/// Multiple-testing correction of a window's p-values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// Each p-value against α.
    None,
    /// Against α / k for k tests (family-wise error rate).
    Bonferroni,
    /// Benjamini–Hochberg (false-discovery rate).
    BenjaminiHochberg,
}

/// Above this effective KS sample size `n·m/(n+m)` without a cap, a warning
/// says that the p-value flags practically any shift.
pub const LARGE_SAMPLE_WARNING: f64 = 10_000.0;

/// A drift test (see the module table): what its value is, how it is
/// read against its threshold, and the threshold it takes by default.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DriftTest {
    /// Population stability index against the reference.
    Psi,
    /// Kolmogorov–Smirnov p-value against the reference (numeric).
    Ks,
    /// Chi-square p-value against the reference (categorical).
    ChiSquare,
    /// Jensen–Shannon distance against the reference.
    JensenShannon,
    /// Hellinger distance against the reference.
    Hellinger,
    /// KL divergence of the window from the reference.
    KlDivergence,
    /// Wasserstein distance over the reference's standard deviation.
    WassersteinNormalized,
    /// PSI against the previous window of the series.
    PsiVsPrevious,
    /// KS p-value against the previous window.
    KsVsPrevious,
    /// Jensen–Shannon distance against the previous window.
    JensenShannonVsPrevious,
    /// PSI against the band of the reference's chunks (`tidewatch analyze`).
    PsiBand,
    /// Jensen–Shannon distance against the band of the reference's chunks.
    JensenShannonBand,
    /// Normalized Wasserstein distance against the band of the reference's chunks.
    WassersteinNormalizedBand,
    /// z-score of the chunk mean among the reference's chunks.
    MeanBand,
}

impl DriftTest {
    /// Every test.
    pub const ALL: [DriftTest; 14] = [
        DriftTest::Psi,
        DriftTest::Ks,
        DriftTest::ChiSquare,
        DriftTest::JensenShannon,
        DriftTest::Hellinger,
        DriftTest::KlDivergence,
        DriftTest::WassersteinNormalized,
        DriftTest::PsiVsPrevious,
        DriftTest::KsVsPrevious,
        DriftTest::JensenShannonVsPrevious,
        DriftTest::PsiBand,
        DriftTest::JensenShannonBand,
        DriftTest::WassersteinNormalizedBand,
        DriftTest::MeanBand,
    ];

    /// The tests of a window against the reference, in report order.
    pub const AGAINST_REFERENCE: [DriftTest; 7] = [
        DriftTest::Psi,
        DriftTest::Ks,
        DriftTest::ChiSquare,
        DriftTest::JensenShannon,
        DriftTest::Hellinger,
        DriftTest::KlDivergence,
        DriftTest::WassersteinNormalized,
    ];

    /// The name as configured, stored and sent (`psi`, `ks`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DriftTest::Psi => "psi",
            DriftTest::Ks => "ks",
            DriftTest::ChiSquare => "chi_square",
            DriftTest::JensenShannon => "jensen_shannon",
            DriftTest::Hellinger => "hellinger",
            DriftTest::KlDivergence => "kl_divergence",
            DriftTest::WassersteinNormalized => "wasserstein_normalized",
            DriftTest::PsiVsPrevious => "psi_vs_previous",
            DriftTest::KsVsPrevious => "ks_vs_previous",
            DriftTest::JensenShannonVsPrevious => "jensen_shannon_vs_previous",
            DriftTest::PsiBand => "psi_band",
            DriftTest::JensenShannonBand => "jensen_shannon_band",
            DriftTest::WassersteinNormalizedBand => "wasserstein_normalized_band",
            DriftTest::MeanBand => "mean_band",
        }
    }

    /// The test named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|test| test.as_str() == name)
    }

    /// A name for people.
    pub fn display_name(self) -> &'static str {
        match self {
            DriftTest::Psi => "PSI",
            DriftTest::Ks => "KS p-value",
            DriftTest::ChiSquare => "chi-square p-value",
            DriftTest::JensenShannon => "Jensen–Shannon distance",
            DriftTest::Hellinger => "Hellinger distance",
            DriftTest::KlDivergence => "KL divergence",
            DriftTest::WassersteinNormalized => "Wasserstein / std",
            DriftTest::PsiVsPrevious => "PSI vs previous window",
            DriftTest::KsVsPrevious => "KS p-value vs previous window",
            DriftTest::JensenShannonVsPrevious => "Jensen–Shannon vs previous window",
            DriftTest::PsiBand => "PSI band",
            DriftTest::JensenShannonBand => "Jensen–Shannon band",
            DriftTest::WassersteinNormalizedBand => "Wasserstein / std band",
            DriftTest::MeanBand => "mean band (z-score)",
        }
    }

    /// Whether the value is a p-value (drift when at or below the
    /// threshold, corrected across a window's series) rather than a
    /// distance (drift when at or above it).
    pub fn is_p_value(self) -> bool {
        matches!(
            self,
            DriftTest::Ks | DriftTest::ChiSquare | DriftTest::KsVsPrevious
        )
    }

    /// The threshold `thresholds` set for this test; `None` for the band
    /// tests, whose threshold comes from the reference's chunks.
    pub fn threshold(self, thresholds: &DriftThresholds) -> Option<f64> {
        match self {
            DriftTest::Psi | DriftTest::PsiVsPrevious => Some(thresholds.psi),
            DriftTest::Ks | DriftTest::ChiSquare | DriftTest::KsVsPrevious => {
                Some(thresholds.alpha)
            }
            DriftTest::JensenShannon | DriftTest::JensenShannonVsPrevious => {
                Some(thresholds.jensen_shannon)
            }
            DriftTest::Hellinger => Some(thresholds.hellinger),
            DriftTest::KlDivergence => Some(thresholds.kl_divergence),
            DriftTest::WassersteinNormalized => Some(thresholds.wasserstein_normalized),
            DriftTest::PsiBand
            | DriftTest::JensenShannonBand
            | DriftTest::WassersteinNormalizedBand
            | DriftTest::MeanBand => None,
        }
    }

    /// The default threshold ([`DriftThresholds::default`]).
    pub fn default_threshold(self) -> Option<f64> {
        self.threshold(&DriftThresholds::default())
    }
}

impl std::fmt::Display for DriftTest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One test's outcome for one series in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TestResult {
    /// Which test.
    pub test: DriftTest,
    /// Score or p-value.
    pub value: f64,
    /// Threshold applied (after correction for p-values).
    pub threshold: f64,
    /// The verdict.
    pub drifted: bool,
}

/// Tests of a window against the previous window of the same series
/// (`psi_vs_previous`, `ks_vs_previous`, `jensen_shannon_vs_previous`), with
/// the same thresholds as against the reference. Numeric series compare
/// their reference-bin counts (both windows must be binned on the same
/// reference; PSI over the reference deciles), categorical series their
/// category counts over the union of categories. Empty when the two cannot
/// be compared or either has fewer than `min_count` values.
pub fn compare_with_previous(
    current: &FeatureSketch,
    previous: &FeatureSketch,
    reference: Option<&FeatureReference>,
    thresholds: DriftThresholds,
) -> Vec<TestResult> {
    let (current_counts, previous_counts, psi_groups) = match (current, previous) {
        (FeatureSketch::Numeric(current), FeatureSketch::Numeric(previous)) => {
            let (Some(a), Some(b)) = (current.bin_counts(), previous.bin_counts()) else {
                return Vec::new();
            };
            if a.fingerprint != b.fingerprint || a.counts.len() != b.counts.len() {
                return Vec::new();
            }
            let grouped = match reference {
                Some(FeatureReference::Numeric(reference))
                    if reference.counts.len() == a.counts.len() =>
                {
                    Some((
                        reference.group_for_psi(&a.counts),
                        reference.group_for_psi(&b.counts),
                    ))
                }
                _ => None,
            };
            (a.counts.clone(), b.counts.clone(), grouped)
        }
        (FeatureSketch::Categorical(current), FeatureSketch::Categorical(previous)) => {
            let categories: std::collections::BTreeSet<&String> = current
                .counts()
                .keys()
                .chain(previous.counts().keys())
                .collect();
            let align = |sketch: &crate::categorical::CategoricalSketch| -> Vec<u64> {
                categories
                    .iter()
                    .map(|c| sketch.counts().get(*c).copied().unwrap_or(0))
                    .chain(std::iter::once(sketch.other()))
                    .collect()
            };
            (align(current), align(previous), None)
        }
        _ => return Vec::new(),
    };
    let total = |counts: &[u64]| counts.iter().sum::<u64>();
    if total(&current_counts) < thresholds.min_count
        || total(&previous_counts) < thresholds.min_count
    {
        return Vec::new();
    }
    let mut tests = Vec::new();
    let (psi_previous, psi_current) = match &psi_groups {
        Some((current, previous)) => (previous.as_slice(), current.as_slice()),
        None => (previous_counts.as_slice(), current_counts.as_slice()),
    };
    if let Some(value) = drift::psi(psi_previous, psi_current) {
        tests.push(TestResult {
            test: DriftTest::PsiVsPrevious,
            value,
            threshold: thresholds.psi,
            drifted: value >= thresholds.psi,
        });
    }
    if matches!(current, FeatureSketch::Numeric(_)) {
        if let Some(ks) = drift::ks_binned(&previous_counts, &current_counts) {
            tests.push(TestResult {
                test: DriftTest::KsVsPrevious,
                value: ks.p_value,
                threshold: thresholds.alpha,
                drifted: ks.p_value <= thresholds.alpha,
            });
        }
    }
    if let Some(value) = drift::jensen_shannon_distance(&previous_counts, &current_counts) {
        tests.push(TestResult {
            test: DriftTest::JensenShannonVsPrevious,
            value,
            threshold: thresholds.jensen_shannon,
            drifted: value >= thresholds.jensen_shannon,
        });
    }
    tests
}

/// Metrics of one series in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FeatureWindowMetrics {
    /// Numeric or categorical.
    pub kind: FeatureKind,
    /// Valid values.
    pub count: u64,
    /// Missing values.
    pub missing: u64,
    /// Values of the wrong type.
    pub type_mismatch: u64,
    /// `missing / (count + missing + type_mismatch)`.
    pub missing_rate: Option<f64>,
    /// Mean (numeric).
    pub mean: Option<f64>,
    /// Sample standard deviation (numeric).
    pub std_dev: Option<f64>,
    /// Minimum (numeric).
    pub min: Option<f64>,
    /// Maximum (numeric).
    pub max: Option<f64>,
    /// Quantiles 5, 25, 50, 75, 95 % (numeric, 1 % relative error).
    pub quantiles: Option<[f64; 5]>,
    /// The reference's quantiles at the same levels (numeric, from the
    /// profile's 100 quantile midpoints, interpolated), to compare with
    /// `quantiles`.
    #[serde(default)]
    pub reference_quantiles: Option<[f64; 5]>,
    /// Distinct categories in the window (categorical; exact within the
    /// category bound, HyperLogLog-estimated beyond it).
    pub distinct_categories: Option<u64>,
    /// Latency percentiles 50/95/99 % in ms (operational, within 0.1 %).
    pub latency_p50: Option<f64>,
    /// 95th latency percentile, ms.
    pub latency_p95: Option<f64>,
    /// 99th latency percentile, ms.
    pub latency_p99: Option<f64>,
    /// Largest latency, ms.
    pub latency_max: Option<f64>,
    /// Share of predictions reporting a serving error (operational).
    pub error_rate: Option<f64>,
    /// Share of predictions with neither score nor class (operational).
    pub null_prediction_rate: Option<f64>,
    /// Model quality (the `quality` series): accuracy, precision, recall,
    /// F1, ROC AUC, log loss, Brier, calibration error, MAE, RMSE, MAPE, R².
    pub quality: Option<QualityMetrics>,
    /// Values outside the reference's [min, max] (numeric).
    pub out_of_range: Option<u64>,
    /// Whether every valid value was the same (numeric, at least two values).
    pub constant: Option<bool>,
    /// Values in categories absent from the reference (categorical).
    pub unseen_categories: Option<u64>,
    /// PSI against the reference.
    pub psi: Option<f64>,
    /// Binned KS statistic against the reference (numeric).
    pub ks_statistic: Option<f64>,
    /// KS p-value (numeric).
    pub ks_p_value: Option<f64>,
    /// Chi-square statistic against the reference (categorical).
    pub chi_square: Option<f64>,
    /// Chi-square p-value (categorical).
    pub chi_square_p_value: Option<f64>,
    /// Jensen–Shannon distance (base 2) over the reference bins or categories.
    pub js_distance: Option<f64>,
    /// Hellinger distance over the reference bins or categories.
    pub hellinger: Option<f64>,
    /// `KL(current ‖ reference)` over the reference bins or categories.
    pub kl_divergence: Option<f64>,
    /// Largest change of one category's share (categorical).
    pub l_infinity: Option<f64>,
    /// Wasserstein-1 distance to the reference (numeric, from quantiles).
    pub wasserstein: Option<f64>,
    /// Wasserstein-1 divided by the reference's standard deviation.
    pub wasserstein_normalized: Option<f64>,
    /// PSI threshold used for `drifted`.
    pub psi_threshold: f64,
    /// Performance estimated without labels (the `estimated_quality`
    /// series), each metric with its sampling error and band.
    #[serde(default)]
    pub estimated: Vec<crate::estimation::EstimatedMetric>,
    /// Standard error of the mean reconstruction error (the `multivariate`
    /// series, whose `mean` and `std_dev` are the rows' errors'): the
    /// reference rows' standard deviation over `√count`.
    #[serde(default)]
    pub reconstruction_sampling_error: Option<f64>,
    /// Lower end of the band the mean reconstruction error is expected in
    /// (the reference rows' mean − 3 standard errors, at least 0).
    #[serde(default)]
    pub reconstruction_lower: Option<f64>,
    /// Upper end of that band (the reference rows' mean + 3 standard errors).
    #[serde(default)]
    pub reconstruction_upper: Option<f64>,
    /// Whether the series drifted, by the verdict policy's test; `None`
    /// without reference, values or that test.
    pub drifted: Option<bool>,
    /// The test whose verdict `drifted` is.
    #[serde(default)]
    pub decided_by: Option<DriftTest>,
    /// Every test computed, with threshold and verdict.
    pub tests: Vec<TestResult>,
    /// Caveats about the numbers (too few values, oversensitive p-values…).
    pub warnings: Vec<String>,
}

/// Quantile levels reported in [`FeatureWindowMetrics::quantiles`].
pub const REPORTED_QUANTILES: [f64; 5] = [0.05, 0.25, 0.5, 0.75, 0.95];

/// [`REPORTED_QUANTILES`] of a reference from its quantiles at the midpoint
/// levels `(i + 0.5) / n`, linearly interpolated (`None` if there are none).
fn reference_quantiles(midpoints: &[f64]) -> Option<[f64; 5]> {
    let n = midpoints.len();
    if n == 0 {
        return None;
    }
    Some(REPORTED_QUANTILES.map(|q| {
        let position = (q * n as f64 - 0.5).clamp(0.0, (n - 1) as f64);
        let low = position.floor() as usize;
        let high = (low + 1).min(n - 1);
        let fraction = position - low as f64;
        midpoints[low] + (midpoints[high] - midpoints[low]) * fraction
    }))
}

/// Computes a window's metrics for one series.
pub fn compute(
    sketch: &FeatureSketch,
    reference: Option<&FeatureReference>,
    thresholds: DriftThresholds,
) -> FeatureWindowMetrics {
    let mut metrics = match sketch {
        FeatureSketch::Numeric(numeric) => {
            let moments = numeric.moments();
            let quantiles = (moments.count() > 0).then(|| {
                REPORTED_QUANTILES
                    .map(|q| numeric.quantile(q).expect("non-empty sketch has quantiles"))
            });
            let mut metrics = FeatureWindowMetrics::empty(
                FeatureKind::Numeric,
                moments.count(),
                numeric.missing(),
                numeric.type_mismatch(),
                thresholds,
            );
            metrics.mean = moments.mean();
            metrics.std_dev = moments.std_dev();
            metrics.min = moments.min();
            metrics.max = moments.max();
            metrics.quantiles = quantiles;
            metrics.constant = (moments.count() >= 2).then(|| moments.min() == moments.max());
            if let (Some(FeatureReference::Numeric(reference)), Some(bins)) =
                (reference, numeric.bin_counts())
            {
                numeric_drift(&mut metrics, reference, bins, thresholds.ks_sample_cap);
            }
            if let Some(FeatureReference::Numeric(reference)) = reference {
                wasserstein(&mut metrics, reference, numeric);
                metrics.reference_quantiles = reference_quantiles(&reference.quantiles);
            }
            metrics
        }
        FeatureSketch::Quality(quality) => {
            let mut metrics = FeatureWindowMetrics::empty(
                FeatureKind::Quality,
                quality.matched(),
                0,
                0,
                thresholds,
            );
            metrics.quality = Some(quality.metrics());
            metrics
        }
        FeatureSketch::EstimatedQuality(scores) => {
            let mut metrics = FeatureWindowMetrics::empty(
                FeatureKind::EstimatedQuality,
                scores.count(),
                0,
                0,
                thresholds,
            );
            if let Some(FeatureReference::Performance(model)) = reference {
                metrics.estimated = model.estimate_with_bands(scores);
            }
            metrics
        }
        FeatureSketch::EstimatedClasses(sums) => {
            let mut metrics = FeatureWindowMetrics::empty(
                FeatureKind::EstimatedQuality,
                sums.count,
                0,
                0,
                thresholds,
            );
            if let Some(FeatureReference::Multiclass(model)) = reference {
                metrics.estimated = model.estimate_with_bands(sums);
            }
            metrics
        }
        FeatureSketch::EstimatedLoss(sum) => {
            let mut metrics = FeatureWindowMetrics::empty(
                FeatureKind::EstimatedQuality,
                sum.count,
                0,
                0,
                thresholds,
            );
            if let Some(FeatureReference::Loss(model)) = reference {
                metrics.estimated = model.estimate_with_bands(sum);
            }
            metrics
        }
        FeatureSketch::Multivariate(errors) => {
            let mut metrics = FeatureWindowMetrics::empty(
                FeatureKind::Multivariate,
                errors.count,
                0,
                0,
                thresholds,
            );
            metrics.mean = errors.mean();
            metrics.std_dev = errors.std();
            if let (Some(FeatureReference::Multivariate(model)), Some(mean)) =
                (reference, metrics.mean)
            {
                multivariate_drift(&mut metrics, model, mean, thresholds);
            }
            metrics
        }
        FeatureSketch::Operational(operations) => {
            let predictions = operations.predictions();
            let mut metrics = FeatureWindowMetrics::empty(
                FeatureKind::Operational,
                predictions,
                0,
                0,
                thresholds,
            );
            let rate = |part: u64| (predictions > 0).then(|| part as f64 / predictions as f64);
            metrics.error_rate = rate(operations.errors());
            metrics.null_prediction_rate = rate(operations.null_predictions());
            metrics.latency_p50 = operations.latency_quantile(0.5);
            metrics.latency_p95 = operations.latency_quantile(0.95);
            metrics.latency_p99 = operations.latency_quantile(0.99);
            metrics.latency_max = operations.latency_max();
            metrics
        }
        FeatureSketch::Categorical(categorical) => {
            let mut metrics = FeatureWindowMetrics::empty(
                FeatureKind::Categorical,
                categorical.total(),
                categorical.missing(),
                categorical.type_mismatch(),
                thresholds,
            );
            metrics.distinct_categories = Some(categorical.distinct_estimate());
            if let Some(FeatureReference::Categorical(reference)) = reference {
                categorical_drift(&mut metrics, reference, categorical);
            }
            metrics
        }
    };
    let enough = metrics.count >= thresholds.min_count;
    for test in DriftTest::AGAINST_REFERENCE {
        let value = match test {
            DriftTest::Psi => metrics.psi,
            DriftTest::Ks => metrics.ks_p_value,
            DriftTest::ChiSquare => metrics.chi_square_p_value,
            DriftTest::JensenShannon => metrics.js_distance,
            DriftTest::Hellinger => metrics.hellinger,
            DriftTest::KlDivergence => metrics.kl_divergence,
            DriftTest::WassersteinNormalized => metrics.wasserstein_normalized,
            _ => None,
        };
        let (Some(value), Some(threshold)) = (value, test.threshold(&thresholds)) else {
            continue;
        };
        let drifted = enough
            && if test.is_p_value() {
                value <= threshold
            } else {
                value >= threshold
            };
        metrics.tests.push(TestResult {
            test,
            value,
            threshold,
            drifted,
        });
    }
    if !metrics.tests.is_empty() && !enough {
        metrics.warnings.push(format!(
            "only {} values (fewer than {}): scores reported without a drift verdict",
            metrics.count, thresholds.min_count
        ));
    }
    if let Some(reference) = reference {
        choose_verdict(&mut metrics, reference, thresholds);
    }
    metrics
}

/// Values of a reference series (what `n` is in the effective sample size).
fn reference_count(reference: &FeatureReference) -> u64 {
    match reference {
        FeatureReference::Numeric(numeric) => numeric.counts.iter().sum(),
        FeatureReference::Categorical(categorical) => {
            categorical.counts.values().sum::<u64>() + categorical.other
        }
        FeatureReference::Performance(_)
        | FeatureReference::Loss(_)
        | FeatureReference::Multiclass(_) => 0,
        FeatureReference::Multivariate(model) => model.reference_rows,
    }
}

/// The band of the window's mean reconstruction error and its verdict.
fn multivariate_drift(
    metrics: &mut FeatureWindowMetrics,
    model: &crate::reconstruction::ReconstructionModel,
    mean: f64,
    thresholds: DriftThresholds,
) {
    let Some((lower, upper)) = model.band(metrics.count, crate::estimation::BAND_K) else {
        return;
    };
    metrics.reconstruction_sampling_error =
        Some(model.reference_std / (metrics.count as f64).sqrt());
    metrics.reconstruction_lower = Some(lower);
    metrics.reconstruction_upper = Some(upper);
    if metrics.count >= thresholds.min_count {
        metrics.drifted = Some(mean < lower || mean > upper);
    } else {
        metrics.warnings.push(format!(
            "only {} rows (fewer than {}): reconstruction error reported without a drift verdict",
            metrics.count, thresholds.min_count
        ));
    }
}

/// Chooses the deciding test by the policy (see the module docs) and sets
/// `decided_by` and `drifted`.
fn choose_verdict(
    metrics: &mut FeatureWindowMetrics,
    reference: &FeatureReference,
    thresholds: DriftThresholds,
) {
    let (n, m) = (reference_count(reference) as f64, metrics.count as f64);
    let effective = if n + m > 0.0 { n * m / (n + m) } else { 0.0 };
    if metrics.tests.is_empty() {
        return;
    }
    let has = |test: DriftTest| metrics.tests.iter().any(|t| t.test == test);
    let chosen = match thresholds.verdict {
        VerdictPolicy::Test(test) => test,
        VerdictPolicy::Auto => {
            let (p_value, distance, large) = match reference {
                FeatureReference::Numeric(_) => (
                    DriftTest::Ks,
                    DriftTest::WassersteinNormalized,
                    effective > thresholds.auto_cutover,
                ),
                FeatureReference::Performance(_)
                | FeatureReference::Loss(_)
                | FeatureReference::Multiclass(_)
                | FeatureReference::Multivariate(_) => return,
                FeatureReference::Categorical(categorical) => {
                    let categories = (categorical.counts.len() + 1) as f64;
                    (
                        DriftTest::ChiSquare,
                        DriftTest::JensenShannon,
                        effective > thresholds.auto_cutover
                            && effective >= AUTO_VALUES_PER_CATEGORY * categories,
                    )
                }
            };
            let (first, second) = if large {
                (distance, p_value)
            } else {
                (p_value, distance)
            };
            // Without the first (a window binned on another reference has
            // no KS), the other one decides.
            if has(first) {
                first
            } else {
                second
            }
        }
    };
    if !has(chosen) {
        if !metrics.tests.is_empty() {
            metrics.warnings.push(format!(
                "no {} for this series: no drift verdict",
                chosen.display_name()
            ));
        }
        return;
    }
    metrics.decided_by = Some(chosen);
    if chosen == DriftTest::Ks
        && thresholds.ks_sample_cap.is_none()
        && effective > LARGE_SAMPLE_WARNING
    {
        metrics.warnings.push(format!(
            "ks p-value over an effective sample of {effective:.0}: practically any shift is significant; \
             judge by a distance (verdict = \"auto\") or set a KS sample cap"
        ));
    }
    refresh_verdict(metrics, thresholds);
}

/// With `auto`, a categorical series is decided by Jensen–Shannon only when
/// the effective sample size is also at least this many values per category
/// (the distance's chance value grows with the number of categories).
pub const AUTO_VALUES_PER_CATEGORY: f64 = 100.0;

/// `drifted` from the deciding test's verdict (after a p-value correction
/// changed the verdicts).
fn refresh_verdict(metrics: &mut FeatureWindowMetrics, thresholds: DriftThresholds) {
    let Some(decisive) = metrics.decided_by else {
        return;
    };
    metrics.drifted = (metrics.count >= thresholds.min_count)
        .then(|| {
            metrics
                .tests
                .iter()
                .find(|test| test.test == decisive)
                .map(|test| test.drifted)
        })
        .flatten();
}

impl FeatureWindowMetrics {
    /// Metrics with counts and no score: the starting point of [`compute`],
    /// and a convenient base for tests.
    pub fn empty(
        kind: FeatureKind,
        count: u64,
        missing: u64,
        type_mismatch: u64,
        thresholds: DriftThresholds,
    ) -> FeatureWindowMetrics {
        let observed = count + missing + type_mismatch;
        FeatureWindowMetrics {
            kind,
            count,
            missing,
            type_mismatch,
            missing_rate: (observed > 0).then(|| missing as f64 / observed as f64),
            mean: None,
            std_dev: None,
            min: None,
            max: None,
            quantiles: None,
            reference_quantiles: None,
            distinct_categories: None,
            quality: None,
            out_of_range: None,
            constant: None,
            latency_p50: None,
            latency_p95: None,
            latency_p99: None,
            latency_max: None,
            error_rate: None,
            null_prediction_rate: None,
            unseen_categories: None,
            psi: None,
            ks_statistic: None,
            ks_p_value: None,
            chi_square: None,
            chi_square_p_value: None,
            js_distance: None,
            hellinger: None,
            kl_divergence: None,
            l_infinity: None,
            wasserstein: None,
            wasserstein_normalized: None,
            psi_threshold: thresholds.psi,
            estimated: Vec::new(),
            reconstruction_sampling_error: None,
            reconstruction_lower: None,
            reconstruction_upper: None,
            drifted: None,
            decided_by: None,
            tests: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

fn numeric_drift(
    metrics: &mut FeatureWindowMetrics,
    reference: &NumericReference,
    current: &BinCounts,
    ks_sample_cap: Option<u64>,
) {
    // Counts taken over another reference's bins (the profile was replaced
    // while the window was open) cannot be compared with this one.
    let same_bins = fingerprint_edges(&reference.edges) == current.fingerprint;
    if !same_bins || current.counts.len() != reference.counts.len() {
        return;
    }
    let current = &current.counts;
    if reference.range_bins {
        metrics.out_of_range = Some(current[0] + current[current.len() - 1]);
    }
    metrics.psi = drift::psi(
        &reference.group_for_psi(&reference.counts),
        &reference.group_for_psi(current),
    );
    if let Some(ks) = drift::ks_binned(&reference.counts, current) {
        metrics.ks_statistic = Some(ks.statistic);
        let (n, m) = (
            reference.counts.iter().sum::<u64>(),
            current.iter().sum::<u64>(),
        );
        metrics.ks_p_value = Some(match ks_sample_cap {
            Some(cap) if n > cap || m > cap => {
                drift::ks_p_value(ks.statistic, n.min(cap), m.min(cap))
            }
            _ => ks.p_value,
        });
    }
    binned_distances(metrics, &reference.counts, current);
}

fn binned_distances(metrics: &mut FeatureWindowMetrics, reference: &[u64], current: &[u64]) {
    metrics.js_distance = drift::jensen_shannon_distance(reference, current);
    metrics.hellinger = drift::hellinger_distance(reference, current);
    metrics.kl_divergence = drift::kl_divergence(reference, current);
}

/// Wasserstein-1 to the reference: from the exact counts over the
/// reference's bins ([`drift::wasserstein_binned`]) when the window has them,
/// otherwise from the quantile sketch (windows opened before their reference).
fn wasserstein(
    metrics: &mut FeatureWindowMetrics,
    reference: &NumericReference,
    current: &crate::numeric::NumericSketch,
) {
    let moments = current.moments();
    if let (Some(bins), Some(low), Some(high), Some(reference_low), Some(reference_high)) = (
        current.bin_counts(),
        moments.min(),
        moments.max(),
        reference.moments.min(),
        reference.moments.max(),
    ) {
        if fingerprint_edges(&reference.edges) == bins.fingerprint {
            let (first, last) = (
                reference.edges[0],
                reference.edges[reference.edges.len() - 1],
            );
            metrics.wasserstein = drift::wasserstein_binned(
                &reference.edges,
                &reference.counts,
                &bins.counts,
                low.min(reference_low).min(first),
                high.max(reference_high).max(last),
            );
        }
    }
    if metrics.wasserstein.is_none() {
        wasserstein_from_quantiles(metrics, reference, current);
    }
    metrics.wasserstein_normalized = match (metrics.wasserstein, reference.moments.std_dev()) {
        (Some(distance), Some(std)) if std > 0.0 => Some(distance / std),
        _ => None,
    };
}

/// Wasserstein-1 from the reference's quantile grid and the window's quantile
/// sketch, for windows binned on another reference (or none): within the
/// sketch's 1 % relative error, coarse for values far from zero.
fn wasserstein_from_quantiles(
    metrics: &mut FeatureWindowMetrics,
    reference: &NumericReference,
    current: &crate::numeric::NumericSketch,
) {
    if reference.quantiles.is_empty() || current.moments().count() == 0 {
        return;
    }
    let levels = drift::wasserstein_levels(reference.quantiles.len());
    let current_quantiles: Vec<f64> = levels
        .iter()
        .filter_map(|level| current.quantile(*level))
        .collect();
    metrics.wasserstein =
        drift::wasserstein_from_quantiles(&reference.quantiles, &current_quantiles);
}

/// Corrects the p-value tests of one window's series together (all series
/// of one model version and segment): with `k` p-values, Bonferroni tests
/// each against `α/k`; Benjamini–Hochberg rejects the `r` smallest where `r`
/// is the largest rank with `p_(r) <= r·α/k` and reports `r·α/k` (or `α/k`
/// when nothing is rejected) as the threshold applied.
pub fn apply_p_value_correction(window: &mut [FeatureWindowMetrics], thresholds: DriftThresholds) {
    let mut positions = Vec::new();
    let mut p_values = Vec::new();
    for (series, metrics) in window.iter().enumerate() {
        for (index, test) in metrics.tests.iter().enumerate() {
            if test.test.is_p_value() {
                positions.push((series, index));
                p_values.push(test.value);
            }
        }
    }
    let k = p_values.len();
    if k == 0 {
        return;
    }
    let alpha = thresholds.alpha;
    let (decisions, threshold) = match thresholds.correction {
        Correction::None => (
            p_values.iter().map(|p| *p <= alpha).collect::<Vec<_>>(),
            alpha,
        ),
        Correction::Bonferroni => (drift::bonferroni(&p_values, alpha), alpha / k as f64),
        Correction::BenjaminiHochberg => {
            let decisions = drift::benjamini_hochberg(&p_values, alpha);
            let rejected = decisions.iter().filter(|d| **d).count().max(1);
            (decisions, rejected as f64 * alpha / k as f64)
        }
    };
    for ((series, index), decision) in positions.into_iter().zip(decisions) {
        let metrics = &mut window[series];
        let enough = metrics.count >= thresholds.min_count;
        let test = &mut metrics.tests[index];
        test.threshold = threshold;
        test.drifted = enough && decision;
    }
    for metrics in window {
        refresh_verdict(metrics, thresholds);
    }
}

/// Aligns categorical counts on the reference's categories plus one last bin
/// for everything else (unseen categories and the overflow bucket).
pub fn align_categories(
    reference: &CategoricalReference,
    current: &crate::categorical::CategoricalSketch,
) -> (Vec<u64>, Vec<u64>, u64) {
    let mut reference_counts: Vec<u64> = reference.counts.values().copied().collect();
    reference_counts.push(reference.other);
    let mut current_counts: Vec<u64> = reference
        .counts
        .keys()
        .map(|category| current.counts().get(category).copied().unwrap_or(0))
        .collect();
    let unseen: u64 = current
        .counts()
        .iter()
        .filter(|(category, _)| !reference.counts.contains_key(*category))
        .map(|(_, count)| count)
        .sum::<u64>()
        + current.other();
    current_counts.push(unseen);
    (reference_counts, current_counts, unseen)
}

fn categorical_drift(
    metrics: &mut FeatureWindowMetrics,
    reference: &CategoricalReference,
    current: &crate::categorical::CategoricalSketch,
) {
    let (reference_counts, current_counts, unseen) = align_categories(reference, current);
    metrics.unseen_categories = Some(unseen);
    metrics.psi = drift::psi(&reference_counts, &current_counts);
    if let Some(chi) = drift::chi_square(&reference_counts, &current_counts) {
        metrics.chi_square = Some(chi.statistic);
        metrics.chi_square_p_value = Some(chi.p_value);
    }
    binned_distances(metrics, &reference_counts, &current_counts);
    metrics.l_infinity = drift::l_infinity(&reference_counts, &current_counts);
}

#[cfg(test)]
mod tests {
    #[test]
    fn reference_quantiles_interpolate_the_midpoints() {
        // Midpoints of 0..100 uniform: the q-quantile is 100 q.
        let midpoints: Vec<f64> = (0..100).map(|i| i as f64 + 0.5).collect();
        let quantiles = super::reference_quantiles(&midpoints).unwrap();
        for (got, want) in quantiles.iter().zip([5.0, 25.0, 50.0, 75.0, 95.0]) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert_eq!(super::reference_quantiles(&[]), None);
        assert_eq!(super::reference_quantiles(&[3.0]), Some([3.0; 5]));
    }

    use super::*;
    use crate::categorical::CategoricalSketch;
    use crate::numeric::{BinEdges, NumericSketch};
    use std::collections::BTreeMap;

    #[test]
    fn numeric_metrics_use_exact_reference_bins() {
        let reference_values: Vec<f64> = (0..1000).map(|i| i as f64 / 10.0).collect();
        let reference = NumericReference::from_values(reference_values, 0).unwrap();
        let edges = BinEdges::new(reference.edges.clone()).unwrap();
        // Current: the same distribution shifted right by 20.
        let mut sketch = NumericSketch::new(Some(&edges));
        for i in 0..1000 {
            sketch.add(i as f64 / 10.0 + 20.0, Some(&edges));
        }
        sketch.add_missing();
        let metrics = compute(
            &FeatureSketch::Numeric(sketch),
            Some(&FeatureReference::Numeric(reference.clone())),
            DriftThresholds::default(),
        );
        assert_eq!(metrics.count, 1000);
        assert_eq!(metrics.missing_rate, Some(1.0 / 1001.0));
        assert!((metrics.mean.unwrap() - 69.95).abs() < 1e-9);
        // Exact KS of two uniform grids shifted by 20% of the range is 0.2.
        assert!((metrics.ks_statistic.unwrap() - 0.2).abs() <= 0.01);
        // PSI oracle on the decile bins: the first two reference deciles get
        // no current values, the last bin gets 30 % of them.
        let grouped_reference = [100u64; 10];
        let current_values: Vec<f64> = (0..1000).map(|i| i as f64 / 10.0 + 20.0).collect();
        let decile_edges: Vec<f64> = (1..10).map(|k| (k * 100 - 1) as f64 / 10.0).collect();
        let mut grouped_current = [0u64; 10];
        for v in current_values {
            grouped_current[decile_edges.partition_point(|e| *e < v)] += 1;
        }
        let expected = drift::psi(&grouped_reference, &grouped_current).unwrap();
        assert!((metrics.psi.unwrap() - expected).abs() < 1e-12);
        assert_eq!(metrics.drifted, Some(true));
        // A pure shift by 20: Wasserstein-1 is 20 up to DDSketch's 1 %
        // relative accuracy on values up to 120, and the reference std is
        // that of the uniform grid 0..100 (≈ 28.88).
        assert!(
            (metrics.wasserstein.unwrap() - 20.0).abs() < 0.01 * 120.0,
            "{:?}",
            metrics.wasserstein
        );
        let std = reference.moments.std_dev().unwrap();
        assert!(
            (metrics.wasserstein_normalized.unwrap() - metrics.wasserstein.unwrap() / std).abs()
                < 1e-12
        );
        assert!(metrics.js_distance.unwrap() > 0.3 && metrics.hellinger.unwrap() > 0.3);
        // Reference range [0, 99.9]: the shifted values above 99.9 are out of range.
        assert_eq!(metrics.out_of_range, Some(200));
        assert_eq!(metrics.constant, Some(false));
    }

    #[test]
    fn categorical_metrics_count_unseen_categories() {
        let reference = CategoricalReference {
            counts: BTreeMap::from([("a".to_owned(), 50), ("b".to_owned(), 50)]),
            other: 0,
            missing: 0,
        };
        let mut current = CategoricalSketch::new(10);
        for value in ["a", "a", "b", "z", "z"] {
            current.add(value);
        }
        let metrics = compute(
            &FeatureSketch::Categorical(current),
            Some(&FeatureReference::Categorical(reference)),
            DriftThresholds {
                min_count: 1,
                ..Default::default()
            },
        );
        assert_eq!(metrics.unseen_categories, Some(2));
        assert_eq!(metrics.distinct_categories, Some(3));
        assert!(metrics.chi_square.unwrap().is_finite());
        assert_eq!(metrics.drifted, Some(true));
    }

    #[test]
    fn small_windows_get_scores_but_no_verdict() {
        let reference = CategoricalReference {
            counts: BTreeMap::from([("a".to_owned(), 50), ("b".to_owned(), 50)]),
            other: 0,
            missing: 0,
        };
        let mut current = CategoricalSketch::new(10);
        current.add("z");
        let metrics = compute(
            &FeatureSketch::Categorical(current),
            Some(&FeatureReference::Categorical(reference)),
            DriftThresholds {
                min_count: 2,
                ..Default::default()
            },
        );
        assert!(metrics.psi.unwrap() > 0.2);
        assert_eq!(metrics.drifted, None);
    }

    fn with_p_values(p_values: &[f64], count: u64) -> Vec<FeatureWindowMetrics> {
        p_values
            .iter()
            .map(|p| {
                let mut metrics = FeatureWindowMetrics::empty(
                    FeatureKind::Numeric,
                    count,
                    0,
                    0,
                    DriftThresholds::default(),
                );
                metrics.tests.push(TestResult {
                    test: DriftTest::Ks,
                    value: *p,
                    threshold: 0.05,
                    drifted: *p <= 0.05,
                });
                metrics.tests.push(TestResult {
                    test: DriftTest::Psi,
                    value: 0.01,
                    threshold: 0.2,
                    drifted: false,
                });
                metrics
            })
            .collect()
    }

    #[test]
    fn p_values_are_corrected_across_a_window() {
        let p = [0.01, 0.04, 0.03, 0.005, 0.5];
        let verdicts = |window: &[FeatureWindowMetrics]| -> Vec<bool> {
            window.iter().map(|m| m.tests[0].drifted).collect()
        };
        let mut bh = with_p_values(&p, 1_000);
        apply_p_value_correction(&mut bh, DriftThresholds::default());
        assert_eq!(verdicts(&bh), [true, true, true, true, false]);
        assert!((bh[0].tests[0].threshold - 4.0 * 0.05 / 5.0).abs() < 1e-15);
        let mut bonferroni = with_p_values(&p, 1_000);
        let thresholds = DriftThresholds {
            correction: Correction::Bonferroni,
            ..Default::default()
        };
        apply_p_value_correction(&mut bonferroni, thresholds);
        assert_eq!(verdicts(&bonferroni), [true, false, false, true, false]);
        assert!((bonferroni[0].tests[0].threshold - 0.01).abs() < 1e-15);
        assert!(
            !bonferroni[0].tests[1].drifted,
            "non-p-value tests are untouched"
        );
        let mut small = with_p_values(&p, 10);
        apply_p_value_correction(&mut small, DriftThresholds::default());
        assert!(
            verdicts(&small).iter().all(|d| !d),
            "too few values: no verdict"
        );
    }

    #[test]
    fn large_samples_warn_and_the_cap_tempers_the_p_value() {
        let reference =
            NumericReference::from_values((0..100_000).map(|i| (i % 1000) as f64).collect(), 0)
                .unwrap();
        let edges = BinEdges::new(reference.edges.clone()).unwrap();
        let mut sketch = NumericSketch::new(Some(&edges));
        for i in 0..100_000 {
            sketch.add((i % 1000) as f64 + 20.0, Some(&edges));
        }
        let sketch = FeatureSketch::Numeric(sketch);
        let feature = FeatureReference::Numeric(reference);
        let by_ks = DriftThresholds {
            verdict: VerdictPolicy::Test(DriftTest::Ks),
            ..Default::default()
        };
        let uncapped = compute(&sketch, Some(&feature), by_ks);
        assert!(
            uncapped.ks_p_value.unwrap() < 1e-6,
            "a 2 % shift is significant at n = 100,000"
        );
        assert!(uncapped
            .warnings
            .iter()
            .any(|w| w.contains("effective sample")));
        assert_eq!(uncapped.decided_by, Some(DriftTest::Ks));
        // `auto` decides such a window by the distance, without the warning:
        // W1 = 20 over σ ≈ 288.7.
        let auto = compute(&sketch, Some(&feature), DriftThresholds::default());
        assert_eq!(auto.decided_by, Some(DriftTest::WassersteinNormalized));
        assert!((auto.wasserstein.unwrap() - 20.0).abs() < 0.05, "{auto:?}");
        assert_eq!(auto.drifted, Some(true));
        assert!(auto.warnings.is_empty(), "{:?}", auto.warnings);
        let capped = compute(
            &sketch,
            Some(&feature),
            DriftThresholds {
                ks_sample_cap: Some(1_000),
                ..by_ks
            },
        );
        assert!(capped.ks_p_value.unwrap() > 0.5, "{:?}", capped.ks_p_value);
        assert!(capped.warnings.is_empty());
        assert_eq!(capped.ks_statistic, uncapped.ks_statistic);
        let names: Vec<&str> = capped.tests.iter().map(|t| t.test.as_str()).collect();
        assert_eq!(
            names,
            [
                "psi",
                "ks",
                "jensen_shannon",
                "hellinger",
                "kl_divergence",
                "wasserstein_normalized"
            ]
        );
    }

    #[test]
    fn windows_compare_with_their_predecessor_on_the_same_bins() {
        let reference =
            NumericReference::from_values((0..1000).map(|i| i as f64 / 10.0).collect(), 0).unwrap();
        let edges = BinEdges::new(reference.edges.clone()).unwrap();
        let window = |shift: f64| {
            let mut sketch = NumericSketch::new(Some(&edges));
            (0..1000).for_each(|i| sketch.add(i as f64 / 10.0 + shift, Some(&edges)));
            FeatureSketch::Numeric(sketch)
        };
        let feature = FeatureReference::Numeric(reference.clone());
        let same = compare_with_previous(
            &window(0.0),
            &window(0.0),
            Some(&feature),
            DriftThresholds::default(),
        );
        let names: Vec<&str> = same.iter().map(|t| t.test.as_str()).collect();
        assert_eq!(
            names,
            [
                "psi_vs_previous",
                "ks_vs_previous",
                "jensen_shannon_vs_previous"
            ]
        );
        assert!(same.iter().all(|t| !t.drifted));
        assert_eq!(same[0].value, 0.0);
        let shifted = compare_with_previous(
            &window(30.0),
            &window(0.0),
            Some(&feature),
            DriftThresholds::default(),
        );
        assert!(shifted.iter().all(|t| t.drifted), "{shifted:?}");
        // PSI against the previous window uses the reference deciles, like
        // PSI against the reference: the oracle is psi() on grouped counts.
        let (FeatureSketch::Numeric(a), FeatureSketch::Numeric(b)) = (window(30.0), window(0.0))
        else {
            panic!()
        };
        let expected = drift::psi(
            &reference.group_for_psi(&b.bin_counts().unwrap().counts),
            &reference.group_for_psi(&a.bin_counts().unwrap().counts),
        )
        .unwrap();
        assert!((shifted[0].value - expected).abs() < 1e-12);
        // Categorical: over the union of categories.
        let categorical = |values: &[&str]| {
            let mut sketch = CategoricalSketch::new(10);
            for _ in 0..100 {
                values.iter().for_each(|v| sketch.add(v));
            }
            FeatureSketch::Categorical(sketch)
        };
        let tests = compare_with_previous(
            &categorical(&["a", "b", "c"]),
            &categorical(&["a", "b"]),
            None,
            DriftThresholds::default(),
        );
        assert_eq!(tests.len(), 2, "no KS for categories");
        assert!(tests[0].drifted && tests[1].drifted);
        let too_small = compare_with_previous(
            &categorical(&["a"]),
            &categorical(&["a"]),
            None,
            DriftThresholds {
                min_count: 1_000,
                ..Default::default()
            },
        );
        assert!(too_small.is_empty());
    }

    #[test]
    fn without_reference_there_is_no_drift_verdict() {
        let mut sketch = NumericSketch::new(None);
        sketch.add(1.0, None);
        let metrics = compute(
            &FeatureSketch::Numeric(sketch),
            None,
            DriftThresholds::default(),
        );
        assert_eq!(metrics.psi, None);
        assert_eq!(metrics.drifted, None);
        assert_eq!(metrics.std_dev, None, "one value has no sample std");
    }
}
