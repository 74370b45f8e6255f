//! [`FeatureSketch`]: the sketch of one series in one window, whatever its
//! kind, and [`SeriesKey`], which series and window. The aggregates ([`crate::aggregate`]) keep one per series and
//! window; reference profiles ([`crate::reference`]) are built from them.

use events::FeatureValue;
use serde::{Deserialize, Serialize};

use crate::categorical::{format_category, CategoricalSketch};
use crate::estimation::ScoreHistogram;
use crate::numeric::NumericSketch;
use crate::operational::OperationalSketch;
use crate::quality::{ClassificationQuality, QualitySketch, RegressionQuality};
use crate::reconstruction::ErrorSum;
use crate::spec::{FeatureKind, ModelSpec, Task};
use crate::Error;

/// The sketch of one series in one window. Externally tagged so that the
/// compact postcard encoding can carry it.
///
/// Not boxed: most series are numeric, and a group's sketches live in one
/// `Vec`, so boxing would add an allocation and a pointer chase per update.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSketch {
    /// A numeric series.
    Numeric(NumericSketch),
    /// A categorical series.
    Categorical(CategoricalSketch),
    /// The operational series.
    Operational(OperationalSketch),
    /// The model-quality series.
    Quality(QualitySketch),
    /// The estimated-quality series: scores by predicted class.
    EstimatedQuality(ScoreHistogram),
    /// The multivariate series: the rows' reconstruction errors.
    Multivariate(ErrorSum),
    /// The estimated-quality series of a regression model: the predicted
    /// errors (direct loss estimation).
    EstimatedLoss(crate::loss_estimation::LossSum),
    /// The estimated-quality series of a multiclass classifier: the
    /// calibrated class probabilities' sums.
    EstimatedClasses(crate::multiclass::ClassSums),
}

impl FeatureSketch {
    /// An empty sketch for a series of `kind`.
    pub fn new(
        kind: FeatureKind,
        spec: &ModelSpec,
        edges: Option<&crate::numeric::BinEdges>,
    ) -> Self {
        match kind {
            FeatureKind::Numeric => FeatureSketch::Numeric(NumericSketch::new(edges)),
            FeatureKind::Categorical => {
                FeatureSketch::Categorical(CategoricalSketch::new(spec.max_categories()))
            }
            FeatureKind::Operational => FeatureSketch::Operational(OperationalSketch::default()),
            FeatureKind::Quality => FeatureSketch::Quality(match spec.task() {
                Task::Classification => {
                    QualitySketch::Classification(ClassificationQuality::new(spec.max_categories()))
                }
                Task::Regression => QualitySketch::Regression(RegressionQuality::default()),
            }),
            FeatureKind::EstimatedQuality => match spec.task() {
                Task::Classification if spec.classes().is_some() => {
                    FeatureSketch::EstimatedClasses(Default::default())
                }
                Task::Classification => FeatureSketch::EstimatedQuality(ScoreHistogram::default()),
                Task::Regression => FeatureSketch::EstimatedLoss(Default::default()),
            },
            FeatureKind::Multivariate => FeatureSketch::Multivariate(ErrorSum::default()),
        }
    }

    /// The kind of series this sketch summarises.
    pub fn kind(&self) -> FeatureKind {
        match self {
            FeatureSketch::Numeric(_) => FeatureKind::Numeric,
            FeatureSketch::Categorical(_) => FeatureKind::Categorical,
            FeatureSketch::Operational(_) => FeatureKind::Operational,
            FeatureSketch::Quality(_) => FeatureKind::Quality,
            FeatureSketch::EstimatedQuality(_)
            | FeatureSketch::EstimatedLoss(_)
            | FeatureSketch::EstimatedClasses(_) => FeatureKind::EstimatedQuality,
            FeatureSketch::Multivariate(_) => FeatureKind::Multivariate,
        }
    }

    /// Merges another sketch of the same series.
    pub fn merge(&mut self, other: &FeatureSketch) -> Result<(), Error> {
        match (self, other) {
            (FeatureSketch::Numeric(a), FeatureSketch::Numeric(b)) => a.merge(b),
            (FeatureSketch::Categorical(a), FeatureSketch::Categorical(b)) => a.merge(b),
            (FeatureSketch::Operational(a), FeatureSketch::Operational(b)) => a.merge(b),
            (FeatureSketch::Quality(a), FeatureSketch::Quality(b)) => a.merge(b),
            (FeatureSketch::EstimatedQuality(a), FeatureSketch::EstimatedQuality(b)) => {
                a.merge(b);
                Ok(())
            }
            (FeatureSketch::Multivariate(a), FeatureSketch::Multivariate(b)) => {
                a.merge(b);
                Ok(())
            }
            (FeatureSketch::EstimatedLoss(a), FeatureSketch::EstimatedLoss(b)) => {
                a.merge(b);
                Ok(())
            }
            (FeatureSketch::EstimatedClasses(a), FeatureSketch::EstimatedClasses(b)) => {
                a.merge(b);
                Ok(())
            }
            _ => Err(Error::IncompatibleMerge(
                "sketches of different kinds".into(),
            )),
        }
    }

    /// Values seen (valid + missing + mismatched).
    pub fn observations(&self) -> u64 {
        match self {
            FeatureSketch::Numeric(s) => s.moments().count() + s.missing() + s.type_mismatch(),
            FeatureSketch::Categorical(s) => s.total() + s.missing() + s.type_mismatch(),
            FeatureSketch::Operational(s) => s.predictions(),
            FeatureSketch::Quality(s) => s.matched(),
            FeatureSketch::EstimatedQuality(s) => s.count(),
            FeatureSketch::Multivariate(s) => s.count,
            FeatureSketch::EstimatedLoss(s) => s.count,
            FeatureSketch::EstimatedClasses(s) => s.count,
        }
    }

    /// Compact binary encoding (postcard) for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("sketches always serialize")
    }

    /// Decodes [`FeatureSketch::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        postcard::from_bytes(bytes).map_err(|error| Error::Corrupt(error.to_string()))
    }

    /// Approximate heap size in bytes.
    pub fn heap_bytes(&self) -> usize {
        match self {
            FeatureSketch::Numeric(s) => s.heap_bytes(),
            FeatureSketch::Categorical(s) => s.heap_bytes(),
            FeatureSketch::Operational(s) => s.heap_bytes(),
            FeatureSketch::Quality(_) => 2 * crate::quality::SCORE_BINS * 8,
            FeatureSketch::EstimatedQuality(s) => s.heap_bytes(),
            FeatureSketch::Multivariate(_) | FeatureSketch::EstimatedLoss(_) => 0,
            FeatureSketch::EstimatedClasses(s) => s.heap_bytes(),
        }
    }

    #[inline]
    pub(crate) fn record_value(
        &mut self,
        value: &FeatureValue<'_>,
        edges: Option<&crate::numeric::BinEdges>,
    ) {
        match (self, value) {
            (FeatureSketch::Numeric(sketch), FeatureValue::Number(number)) => {
                sketch.add(*number, edges)
            }
            (FeatureSketch::Numeric(sketch), FeatureValue::Text(_)) => sketch.add_type_mismatch(),
            (FeatureSketch::Numeric(sketch), FeatureValue::Null) => sketch.add_missing(),
            (FeatureSketch::Categorical(sketch), FeatureValue::Text(text)) => sketch.add(text),
            (FeatureSketch::Categorical(sketch), FeatureValue::Number(number)) => {
                if number.is_finite() {
                    sketch.add(&format_category(*number))
                } else {
                    sketch.add_type_mismatch()
                }
            }
            (FeatureSketch::Categorical(sketch), FeatureValue::Null) => sketch.add_missing(),
            // The operational series is fed by `record_into`, never by a value.
            (
                FeatureSketch::Operational(_)
                | FeatureSketch::Quality(_)
                | FeatureSketch::EstimatedQuality(_)
                | FeatureSketch::Multivariate(_)
                | FeatureSketch::EstimatedLoss(_)
                | FeatureSketch::EstimatedClasses(_),
                _,
            ) => {}
        }
    }

    pub(crate) fn record_missing(&mut self) {
        match self {
            FeatureSketch::Numeric(sketch) => sketch.add_missing(),
            FeatureSketch::Categorical(sketch) => sketch.add_missing(),
            FeatureSketch::Operational(_)
            | FeatureSketch::Quality(_)
            | FeatureSketch::EstimatedQuality(_)
            | FeatureSketch::Multivariate(_)
            | FeatureSketch::EstimatedLoss(_)
            | FeatureSketch::EstimatedClasses(_) => {}
        }
    }
}

/// Identifies one series in one window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    /// Window start, ms since the epoch.
    pub window_start: i64,
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Segment (`all` or `key=value`).
    pub segment: String,
    /// Series name (feature or derived series).
    pub feature: String,
}
