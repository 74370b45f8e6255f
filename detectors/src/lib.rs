//! # detectors — Tidewatch's pure drift math
//!
//! Values in, numbers out: no I/O, no async runtime, no Kafka or database
//! types. Everything here is deterministic and testable against exact oracles.
//!
//! ## Layout
//! - [`window`]: event-time tumbling windows aligned to `window_start`, and the
//!   [`window::EventTimeClock`] that turns the largest event time seen into a
//!   watermark with an allowed lateness.
//! - [`moments`]: count / mean / variance / min / max, merged exactly with
//!   Chan's parallel formula.
//! - [`numeric`]: [`numeric::NumericSketch`], the per-window state of a numeric
//!   feature: moments, a quantile sketch, and exact counts over the
//!   reference profile's quantile bins.
//! - [`quantile`]: [`quantile::QuantileSketch`], the DDSketch algorithm with
//!   a fixed bucket budget (1 % relative error, ≤ 7 KiB).
//! - [`quality`]: [`quality::QualitySketch`], model quality from predictions
//!   joined with actuals (classification and regression).
//! - [`operational`]: [`operational::OperationalSketch`], prediction
//!   count, serving errors, null predictions and HDR-histogram latency.
//! - [`categorical`]: [`categorical::CategoricalSketch`], bounded category
//!   counts with an overflow bucket, and how a number is named as a category.
//! - [`sketch`]: [`sketch::FeatureSketch`], the sketch of one series of any
//!   kind (the four above), which aggregates keep and references are built from.
//! - [`reference`]: [`reference::ReferenceProfile`], what training data looked
//!   like, built exactly from values or approximately from warm-up windows.
//! - [`drift`]: PSI, Kolmogorov–Smirnov (exact and asymptotic p-values),
//!   chi-square, Jensen–Shannon, Hellinger, KL, L-infinity, Wasserstein-1,
//!   Bonferroni and Benjamini–Hochberg corrections.
//! - [`change`]: streaming change detectors (ADWIN, Page-Hinkley, DDM).
//! - [`calibration`]: scores into probabilities (isotonic regression) and
//!   whether calibrating helps.
//! - [`estimation`]: performance before the labels arrive (CBPE): a
//!   window's score histogram, the expected confusion matrix and ROC AUC,
//!   sampling errors and bands from the reference.
//! - [`multiclass`]: CBPE's macro averages for classifiers with three or
//!   more classes, from the class probabilities.
//! - [`loss_estimation`]: regression performance before the targets arrive
//!   (direct loss estimation): tree ensembles of the expected absolute and
//!   squared error, fitted on the reference.
//! - [`reconstruction`]: multivariate drift: the error of reconstructing a
//!   row from the reference's principal components.
//! - [`paired`]: two versions compared on the same requests (McNemar's
//!   exact test, the paired t-test), for promotion decisions.
//! - [`config`]: `[drift]` as written, validated into
//!   [`metrics::DriftThresholds`] (serde only; no I/O).
//! - [`spec`]: [`spec::ModelSpec`], the validated description of a model's
//!   features and segment keys.
//! - [`catalog`]: [`catalog::Catalog`], the configured models and the
//!   reference of each model version.
//! - [`aggregate`]: [`aggregate::WindowAggregates`], which routes decoded
//!   events into one sketch per (window, model, version, segment, feature).
//! - [`segments`]: which segment values get a segment of their own (pinned
//!   values, then a bottom-k sample by stable hash: the same in every
//!   partition, range and instance).
//! - [`metrics`]: [`metrics::FeatureWindowMetrics`], the numbers a closed window
//!   reports for one feature, computed from a sketch and a reference, and
//!   [`metrics::DriftTest`], the closed set of drift tests.
//!
//! Modules import downwards only: `sketch` uses the per-kind sketches;
//! `reference` uses `sketch`; `catalog` uses `reference`; `segments` uses
//! `catalog` and `sketch`; `aggregate` uses all of them; `metrics` uses
//! `reference` and `sketch`.
//!
//! ## Data flow
//! ```text
//! events::Event ──► WindowAggregates::record ──► FeatureSketch (per series)
//!                                                   │  merge (across partitions,
//!                                                   │  consumers, checkpoints)
//!                                                   ▼
//!                    ReferenceProfile ──► metrics::compute ──► FeatureWindowMetrics
//! ```
//!
//! Every sketch is mergeable: merging the sketches of two disjoint sets of
//! events gives the sketch of their union (exactly for counts and bins, within
//! floating-point rounding for moments, and within the quantile sketch's 1 % relative
//! accuracy for quantiles). That is what lets several consumer instances, or a
//! consumer that checkpointed many times, produce the same window as a single
//! pass over all events.

pub mod aggregate;
pub mod calibration;
pub mod catalog;
pub mod categorical;
pub mod change;
pub mod config;
pub mod distinct;
pub mod drift;
pub mod estimation;
pub mod loss_estimation;
pub mod metrics;
pub mod moments;
pub mod multiclass;
pub mod numeric;
pub mod operational;
pub mod paired;
pub mod quality;
pub mod quantile;
pub mod reconstruction;
pub mod reference;
pub mod segments;
pub mod sketch;
pub mod spec;
pub mod window;

pub use aggregate::WindowAggregates;
pub use metrics::FeatureWindowMetrics;
pub use reference::ReferenceProfile;
pub use sketch::{FeatureSketch, SeriesKey};
pub use spec::{FeatureKind, FeatureSpec, ModelSpec};

/// Errors of the detectors crate. All are the caller's fault (invalid
/// arguments or incompatible inputs); none is worth retrying.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A window size must be a positive number of milliseconds.
    #[error("window size must be positive, got {0} ms")]
    InvalidWindowSize(i64),
    /// Two sketches of different shapes (kind, bins or accuracy) cannot merge.
    #[error("cannot merge sketches: {0}")]
    IncompatibleMerge(String),
    /// A model spec broke one of its rules (message says which).
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),
    /// A reference profile could not be built (message says why).
    #[error("invalid reference profile: {0}")]
    InvalidReference(String),
    /// Serialized sketch bytes could not be decoded.
    #[error("corrupt serialized sketch: {0}")]
    Corrupt(String),
}
