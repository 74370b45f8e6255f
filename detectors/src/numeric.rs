//! Per-window state of a numeric feature.
//!
//! A [`NumericSketch`] keeps:
//! - the number of missing values (`null` or absent) and of type mismatches
//!   (a string where a number was expected, or a non-finite number);
//! - [`Moments`] (exact count, mean, std, min, max);
//! - a [`QuantileSketch`] (relative accuracy 1 %, at most 7 KiB) for
//!   quantiles;
//! - when the model version has a reference profile, the *exact* number of
//!   values in each of the reference's quantile bins. PSI and the binned KS
//!   statistic are computed from these counts, so they are exact on the
//!   reference bins whatever the window size.
//!
//! Bins are right-closed: with edges `e_1 < … < e_k`, bin 0 is `(-inf, e_1]`,
//! bin `i` is `(e_i, e_{i+1}]` and bin `k` is `(e_k, +inf)`, so the count of
//! bins `0..=i` is exactly the number of values `<= e_{i+1}`.

use serde::{Deserialize, Serialize};

use crate::quantile::QuantileSketch;

use crate::moments::Moments;
use crate::Error;

/// Relative accuracy of window quantiles.
pub const QUANTILE_RELATIVE_ACCURACY: f64 = crate::quantile::RELATIVE_ACCURACY;

/// The bin edges of a reference profile, with the fingerprint that keeps
/// sketches binned against different references from being merged.
#[derive(Debug, Clone, PartialEq)]
pub struct BinEdges {
    edges: Vec<f64>,
    fingerprint: u64,
}

impl BinEdges {
    /// Validates edges: finite and strictly increasing.
    pub fn new(edges: Vec<f64>) -> Result<Self, Error> {
        if edges.iter().any(|edge| !edge.is_finite()) {
            return Err(Error::InvalidReference("bin edges must be finite".into()));
        }
        if edges.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(Error::InvalidReference(
                "bin edges must be strictly increasing".into(),
            ));
        }
        let fingerprint = fingerprint_edges(&edges);
        Ok(Self { edges, fingerprint })
    }

    /// The edges, strictly increasing.
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// Number of bins (edges + 1).
    pub fn bin_count(&self) -> usize {
        self.edges.len() + 1
    }

    /// Identifies this exact set of edges.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Index of the right-closed bin holding `value`.
    #[inline]
    pub fn bin_of(&self, value: f64) -> usize {
        self.edges.partition_point(|edge| *edge < value)
    }
}

/// FNV-1a over the edges' bit patterns: stable across processes and versions.
fn fingerprint_edges(edges: &[f64]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for edge in edges {
        for byte in edge.to_bits().to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Exact counts over a reference profile's bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinCounts {
    /// Fingerprint of the [`BinEdges`] these counts were taken over.
    pub fingerprint: u64,
    /// One count per bin.
    pub counts: Vec<u64>,
}

/// Per-window state of one numeric feature. See the module docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NumericSketch {
    missing: u64,
    type_mismatch: u64,
    moments: Moments,
    quantiles: QuantileSketch,
    bins: Option<BinCounts>,
}

impl NumericSketch {
    /// An empty sketch; `edges` are the reference bins, if the model version has a reference.
    pub fn new(edges: Option<&BinEdges>) -> Self {
        Self {
            missing: 0,
            type_mismatch: 0,
            moments: Moments::default(),
            quantiles: QuantileSketch::default(),
            bins: edges.map(|edges| BinCounts {
                fingerprint: edges.fingerprint(),
                counts: vec![0; edges.bin_count()],
            }),
        }
    }

    /// Adds a value. Non-finite values count as type mismatches.
    /// `edges` must be the edges the sketch was created with.
    #[inline]
    pub fn add(&mut self, value: f64, edges: Option<&BinEdges>) {
        if !value.is_finite() {
            self.type_mismatch += 1;
            return;
        }
        self.moments.add(value);
        self.quantiles.add(value);
        if let (Some(bins), Some(edges)) = (&mut self.bins, edges) {
            debug_assert_eq!(bins.fingerprint, edges.fingerprint());
            bins.counts[edges.bin_of(value)] += 1;
        }
    }

    /// Records a missing value.
    pub fn add_missing(&mut self) {
        self.missing += 1;
    }

    /// Records a value of the wrong type.
    pub fn add_type_mismatch(&mut self) {
        self.type_mismatch += 1;
    }

    /// Merges another window's sketch of the same feature into this one.
    pub fn merge(&mut self, other: &NumericSketch) -> Result<(), Error> {
        let bins = match (&self.bins, &other.bins) {
            (Some(mine), Some(theirs)) => {
                if mine.fingerprint != theirs.fingerprint
                    || mine.counts.len() != theirs.counts.len()
                {
                    return Err(Error::IncompatibleMerge(
                        "numeric sketches were binned against different reference profiles".into(),
                    ));
                }
                let counts = mine
                    .counts
                    .iter()
                    .zip(&theirs.counts)
                    .map(|(a, b)| a + b)
                    .collect();
                Some(BinCounts {
                    fingerprint: mine.fingerprint,
                    counts,
                })
            }
            // A side with no values says nothing about the bins.
            (Some(bins), None) if other.moments.count() == 0 => Some(bins.clone()),
            (None, Some(bins)) if self.moments.count() == 0 => Some(bins.clone()),
            // One side was recorded before the reference existed: the merged
            // window cannot have exact bin counts, so it has none (and no
            // binned drift score) rather than wrong ones.
            _ => None,
        };
        self.quantiles.merge(&other.quantiles)?;
        self.moments.merge(&other.moments);
        self.missing += other.missing;
        self.type_mismatch += other.type_mismatch;
        self.bins = bins;
        Ok(())
    }

    /// Missing values.
    pub fn missing(&self) -> u64 {
        self.missing
    }

    /// Values of the wrong type.
    pub fn type_mismatch(&self) -> u64 {
        self.type_mismatch
    }

    /// Exact moments of the valid values.
    pub fn moments(&self) -> &Moments {
        &self.moments
    }

    /// Quantile `q` in `[0, 1]` within 1 % relative error; `None` while empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.quantiles.quantile(q)
    }

    /// Exact counts over the reference bins, if binned.
    pub fn bin_counts(&self) -> Option<&BinCounts> {
        self.bins.as_ref()
    }

    /// Approximate heap size in bytes (for the memory bound).
    pub fn heap_bytes(&self) -> usize {
        self.quantiles.heap_bytes() + self.bins.as_ref().map_or(0, |bins| bins.counts.len() * 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use rand_distr::{Distribution, LogNormal, Normal};

    fn edges() -> BinEdges {
        BinEdges::new(vec![-1.0, 0.0, 0.5, 2.0]).unwrap()
    }

    #[test]
    fn bins_are_right_closed() {
        let edges = edges();
        assert_eq!(edges.bin_of(-5.0), 0);
        assert_eq!(edges.bin_of(-1.0), 0);
        assert_eq!(edges.bin_of(-0.5), 1);
        assert_eq!(edges.bin_of(0.0), 1);
        assert_eq!(edges.bin_of(2.0), 3);
        assert_eq!(edges.bin_of(2.0001), 4);
        assert!(BinEdges::new(vec![1.0, 1.0]).is_err());
        assert!(BinEdges::new(vec![f64::NAN]).is_err());
    }

    #[test]
    fn bin_counts_match_exact_counting() {
        let edges = edges();
        let mut rng = StdRng::seed_from_u64(7);
        let values: Vec<f64> = (0..10_000).map(|_| rng.random_range(-3.0..3.0)).collect();
        let mut sketch = NumericSketch::new(Some(&edges));
        values.iter().for_each(|v| sketch.add(*v, Some(&edges)));
        let mut exact = vec![0u64; 5];
        for v in &values {
            let bin = if *v <= -1.0 {
                0
            } else if *v <= 0.0 {
                1
            } else if *v <= 0.5 {
                2
            } else if *v <= 2.0 {
                3
            } else {
                4
            };
            exact[bin] += 1;
        }
        assert_eq!(sketch.bin_counts().unwrap().counts, exact);
    }

    #[test]
    fn quantiles_are_within_relative_accuracy() {
        let mut rng = StdRng::seed_from_u64(11);
        let samples: [Vec<f64>; 3] = [
            (0..20_000)
                .map(|_| Normal::new(50.0, 10.0).unwrap().sample(&mut rng))
                .collect(),
            (0..20_000)
                .map(|_| LogNormal::new(0.0, 1.5).unwrap().sample(&mut rng))
                .collect(),
            (0..20_000)
                .map(|_| -rng.random_range(1.0..1000.0))
                .collect(),
        ];
        for values in samples {
            let mut sketch = NumericSketch::new(None);
            values.iter().for_each(|v| sketch.add(*v, None));
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for q in [0.05, 0.25, 0.5, 0.75, 0.95] {
                // The sketch's rank convention: the value of rank floor(q * (n - 1)).
                let exact = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
                let estimate = sketch.quantile(q).unwrap();
                assert!(
                    (estimate - exact).abs() <= QUANTILE_RELATIVE_ACCURACY * exact.abs() + 1e-12,
                    "q={q}: estimate {estimate} vs exact {exact}"
                );
            }
        }
    }

    #[test]
    fn merge_equals_sketch_of_union() {
        let edges = edges();
        let mut rng = StdRng::seed_from_u64(3);
        let values: Vec<f64> = (0..5_000).map(|_| rng.random_range(-4.0..4.0)).collect();
        let (left, right) = values.split_at(1_777);
        let build = |part: &[f64]| {
            let mut sketch = NumericSketch::new(Some(&edges));
            part.iter().for_each(|v| sketch.add(*v, Some(&edges)));
            sketch.add_missing();
            sketch
        };
        let mut merged = build(left);
        merged.merge(&build(right)).unwrap();
        let mut whole = build(&values);
        whole.add_missing();
        assert_eq!(merged.bin_counts(), whole.bin_counts());
        assert_eq!(merged.missing(), whole.missing());
        assert_eq!(merged.moments().count(), whole.moments().count());
        assert!((merged.moments().mean().unwrap() - whole.moments().mean().unwrap()).abs() < 1e-12);
        for q in [0.1, 0.5, 0.9] {
            assert_eq!(
                merged.quantile(q),
                whole.quantile(q),
                "quantile sketch merge is exact"
            );
        }
    }

    #[test]
    fn merge_with_an_unbinned_sketch_drops_the_bins() {
        let edges = edges();
        let mut binned = NumericSketch::new(Some(&edges));
        binned.add(1.0, Some(&edges));
        let mut unbinned = NumericSketch::new(None);
        unbinned.add(2.0, None);
        binned.merge(&unbinned).unwrap();
        assert_eq!(binned.bin_counts(), None);
        assert_eq!(binned.moments().count(), 2);
    }

    #[test]
    fn merge_refuses_different_references() {
        let a_edges = edges();
        let b_edges = BinEdges::new(vec![0.0, 1.0]).unwrap();
        let mut a = NumericSketch::new(Some(&a_edges));
        a.add(1.0, Some(&a_edges));
        let mut b = NumericSketch::new(Some(&b_edges));
        b.add(1.0, Some(&b_edges));
        assert!(matches!(a.merge(&b), Err(Error::IncompatibleMerge(_))));
    }

    #[test]
    fn non_finite_values_are_type_mismatches() {
        let mut sketch = NumericSketch::new(None);
        sketch.add(f64::NAN, None);
        sketch.add(f64::INFINITY, None);
        sketch.add(1.0, None);
        assert_eq!(sketch.type_mismatch(), 2);
        assert_eq!(sketch.moments().count(), 1);
    }
}
