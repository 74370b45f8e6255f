//! Operational health of a model per window: prediction count, serving
//! errors, predictions without output, and latency percentiles.
//!
//! Latency goes into an HDR histogram (`hdrhistogram`) in microseconds with
//! three significant digits, so every percentile is within 0.1 % of the
//! exact value; the histogram resizes to the largest latency seen (memory
//! grows with the log of the range, a few KiB for latencies up to minutes).
//! Merging adds the histograms, which is exact.
//!
//! Throughput is `predictions / window length`; the stored metrics keep the
//! count and the window bounds, from which queries derive it.

use hdrhistogram::serialization::{Deserializer as HdrDeserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// Significant digits kept by the latency histogram.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

fn new_histogram() -> Histogram<u64> {
    Histogram::new(LATENCY_SIGNIFICANT_DIGITS).expect("3 significant digits is a valid histogram")
}

/// Per-window operational state of one (model, version, segment).
#[derive(Debug, Clone)]
pub struct OperationalSketch {
    predictions: u64,
    errors: u64,
    null_predictions: u64,
    latency_us: Histogram<u64>,
}

impl Default for OperationalSketch {
    fn default() -> Self {
        Self {
            predictions: 0,
            errors: 0,
            null_predictions: 0,
            latency_us: new_histogram(),
        }
    }
}

impl OperationalSketch {
    /// Records one prediction event.
    /// `error`: the event reports a serving error; `has_output`: it carries a
    /// score or a class; `latency_ms`: serving latency, if logged.
    #[inline]
    pub fn record(&mut self, error: bool, has_output: bool, latency_ms: Option<f64>) {
        self.predictions += 1;
        self.errors += u64::from(error);
        self.null_predictions += u64::from(!has_output);
        if let Some(latency) = latency_ms {
            if latency.is_finite() && latency >= 0.0 {
                let micros = (latency * 1000.0).round() as u64;
                if self.latency_us.record(micros).is_err() {
                    self.latency_us.saturating_record(micros);
                }
            }
        }
    }

    /// Adds another window's state (exact).
    pub fn merge(&mut self, other: &OperationalSketch) -> Result<(), Error> {
        self.latency_us
            .add(&other.latency_us)
            .map_err(|error| Error::IncompatibleMerge(format!("latency histograms: {error:?}")))?;
        self.predictions += other.predictions;
        self.errors += other.errors;
        self.null_predictions += other.null_predictions;
        Ok(())
    }

    /// Prediction events.
    pub fn predictions(&self) -> u64 {
        self.predictions
    }

    /// Events reporting a serving error.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Events with neither a score nor a class.
    pub fn null_predictions(&self) -> u64 {
        self.null_predictions
    }

    /// Latency at quantile `q`, ms; `None` when no latency was logged.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        (!self.latency_us.is_empty()).then(|| self.latency_us.value_at_quantile(q) as f64 / 1000.0)
    }

    /// Largest latency, ms (within the histogram's precision).
    pub fn latency_max(&self) -> Option<f64> {
        (!self.latency_us.is_empty()).then(|| self.latency_us.max() as f64 / 1000.0)
    }

    /// Approximate heap size in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.latency_us.distinct_values() * 8
    }
}

/// Stored form: the counters and the histogram in HdrHistogram's V2 format.
#[derive(Serialize, Deserialize)]
struct StoredOperational {
    predictions: u64,
    errors: u64,
    null_predictions: u64,
    latency_us: Vec<u8>,
}

impl Serialize for OperationalSketch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut latency_us = Vec::new();
        V2Serializer::new()
            .serialize(&self.latency_us, &mut latency_us)
            .map_err(|error| serde::ser::Error::custom(format!("latency histogram: {error:?}")))?;
        StoredOperational {
            predictions: self.predictions,
            errors: self.errors,
            null_predictions: self.null_predictions,
            latency_us,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for OperationalSketch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = StoredOperational::deserialize(deserializer)?;
        let mut histogram: Histogram<u64> = HdrDeserializer::new()
            .deserialize(&mut stored.latency_us.as_slice())
            .map_err(|error| serde::de::Error::custom(format!("latency histogram: {error:?}")))?;
        histogram.auto(true);
        Ok(Self {
            predictions: stored.predictions,
            errors: stored.errors,
            null_predictions: stored.null_predictions,
            latency_us: histogram,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_are_within_a_thousandth() {
        let mut sketch = OperationalSketch::default();
        let latencies: Vec<f64> = (1..=10_000).map(|i| (i as f64).powf(1.3) / 10.0).collect();
        for (i, latency) in latencies.iter().enumerate() {
            sketch.record(i % 100 == 0, i % 250 != 0, Some(*latency));
        }
        let mut sorted = latencies.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.5, 0.95, 0.99] {
            let exact = sorted[((q * sorted.len() as f64).ceil() as usize).max(1) - 1];
            let estimate = sketch.latency_quantile(q).unwrap();
            assert!(
                (estimate - exact).abs() <= 0.001 * exact + 0.001,
                "q={q}: {estimate} vs {exact}"
            );
        }
        let max = sketch.latency_max().unwrap();
        assert!((max - sorted[sorted.len() - 1]).abs() <= 0.001 * max);
        assert_eq!(sketch.predictions(), 10_000);
        assert_eq!(sketch.errors(), 100);
        assert_eq!(sketch.null_predictions(), 40);
    }

    #[test]
    fn merge_and_round_trip_are_exact() {
        let (mut a, mut b, mut all) = (
            OperationalSketch::default(),
            OperationalSketch::default(),
            OperationalSketch::default(),
        );
        for i in 0..5_000 {
            let latency = Some(1.0 + (i % 977) as f64 * 0.37);
            if i % 2 == 0 {
                a.record(false, true, latency);
            } else {
                b.record(i % 7 == 0, true, latency);
            }
            all.record(i % 2 == 1 && i % 7 == 0, true, latency);
        }
        a.merge(&b).unwrap();
        for q in [0.1, 0.5, 0.9, 0.999] {
            assert_eq!(a.latency_quantile(q), all.latency_quantile(q));
        }
        assert_eq!(
            (a.predictions(), a.errors()),
            (all.predictions(), all.errors())
        );
        let bytes = postcard::to_stdvec(&a).unwrap();
        let decoded: OperationalSketch = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded.latency_quantile(0.99), a.latency_quantile(0.99));
        assert_eq!(decoded.errors(), a.errors());
        assert!(
            bytes.len() < 4_000,
            "V2 encoding is compact: {} bytes",
            bytes.len()
        );
    }

    #[test]
    fn no_latency_logged_means_no_percentile() {
        let mut sketch = OperationalSketch::default();
        sketch.record(false, true, None);
        assert_eq!(sketch.latency_quantile(0.5), None);
        assert_eq!(sketch.latency_max(), None);
    }
}
