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

use crate::quantile::{self, Bucket, QuantileSketch};

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
    /// Bins of positive values by logarithmic bucket.
    positive: SignLookup,
    /// Bins of negative values by logarithmic bucket.
    negative: SignLookup,
}

/// Bin lookup for the values of one sign.
#[derive(Debug, Clone, PartialEq)]
struct SignLookup {
    /// Buckets over the keys the edges of this sign span (`None` without
    /// such edges, or when they span too many keys).
    table: Option<BucketTable>,
    /// Bin of the values whose key is below the table (smaller magnitudes).
    below: usize,
    /// Bin of the values whose key is above the table (larger magnitudes).
    above: usize,
    /// Whether `below`/`above` hold (false when the table was too large).
    constant_outside: bool,
}

impl SignLookup {
    fn build(edges: &[f64], sign: f64) -> Self {
        let has_edges = edges
            .iter()
            .any(|edge| *edge * sign > quantile::MIN_MAGNITUDE);
        if !has_edges {
            // No edge of this sign: every value of it is above all edges
            // (positive) or below all (negative).
            let bin = if sign > 0.0 { edges.len() } else { 0 };
            return Self {
                table: None,
                below: bin,
                above: bin,
                constant_outside: true,
            };
        }
        match BucketTable::build(edges, sign) {
            None => Self {
                table: None,
                below: 0,
                above: 0,
                constant_outside: false,
            },
            Some(table) => {
                let (boundary, _) = quantile::bucket_bounds(table.offset);
                let below = edges.partition_point(|edge| *edge < sign * boundary);
                let above = if sign > 0.0 { edges.len() } else { 0 };
                Self {
                    table: Some(table),
                    below,
                    above,
                    constant_outside: true,
                }
            }
        }
    }

    #[inline]
    fn bin(&self, key: i32, value: f64, edges: &[f64]) -> Option<usize> {
        match &self.table {
            Some(table) if key < table.offset => Some(self.below),
            Some(table)
                if i64::from(key) - i64::from(table.offset) >= table.entries.len() as i64 =>
            {
                Some(self.above)
            }
            Some(table) => table.bin(key, value, edges),
            None if self.constant_outside => Some(self.below),
            None => None,
        }
    }
}

/// Largest key span a bucket table covers (entries of 2 bytes).
const MAX_TABLE_KEYS: i64 = 8_192;
/// In a bucket table entry's edge field: no edge cuts the bucket.
const NO_EDGE: u16 = u16::MAX;
/// In a bucket table entry's bin field: several edges cut it, search.
const SEARCH: u16 = u16::MAX - 1;

/// Bins by logarithmic bucket key over the keys the edges of one sign span.
/// Entry `(bin, edge)`: the bin of the bucket's lowest values, and the one
/// edge inside the bucket (values above it are one bin higher), if any.
#[derive(Debug, Clone, PartialEq)]
struct BucketTable {
    offset: i32,
    entries: Vec<(u16, u16)>,
}

impl BucketTable {
    /// The table for values of one sign (`sign` = 1 or −1), or `None` when
    /// the edges of that sign span too many keys (or none).
    fn build(edges: &[f64], sign: f64) -> Option<Self> {
        let magnitudes: Vec<f64> = edges
            .iter()
            .filter(|edge| **edge * sign > quantile::MIN_MAGNITUDE)
            .map(|edge| edge.abs())
            .collect();
        let (Some(low), Some(high)) = (
            magnitudes.iter().copied().reduce(f64::min),
            magnitudes.iter().copied().reduce(f64::max),
        ) else {
            return None;
        };
        let key = |magnitude: f64| match quantile::bucket_of(magnitude) {
            Bucket::Positive(key) => key,
            _ => 0,
        };
        // One bucket of margin on each side; values beyond are searched.
        let (first, last) = (key(low) - 1, key(high) + 1);
        if i64::from(last) - i64::from(first) + 1 > MAX_TABLE_KEYS {
            return None;
        }
        let entries = (first..=last)
            .map(|key| {
                let (lower, upper) = quantile::bucket_bounds(key);
                // Widen the bucket so that a value whose key was rounded
                // into a neighbour still finds the right bin.
                let (lower, upper) = (lower * (1.0 - 1e-9), upper * (1.0 + 1e-9));
                let (from, to) = if sign > 0.0 {
                    (lower, upper)
                } else {
                    (-upper, -lower)
                };
                let first_inside = edges.partition_point(|edge| *edge <= from);
                let after_inside = edges.partition_point(|edge| *edge < to);
                match after_inside.saturating_sub(first_inside) {
                    // Every value of the bucket is above the same edges.
                    0 => (first_inside as u16, NO_EDGE),
                    1 => (first_inside as u16, first_inside as u16),
                    _ => (SEARCH, NO_EDGE),
                }
            })
            .collect();
        Some(Self {
            offset: first,
            entries,
        })
    }

    #[inline]
    fn bin(&self, key: i32, value: f64, edges: &[f64]) -> Option<usize> {
        let index = i64::from(key) - i64::from(self.offset);
        if index < 0 {
            return None;
        }
        match self.entries.get(index as usize) {
            None | Some((SEARCH, _)) => None,
            Some((bin, NO_EDGE)) => Some(usize::from(*bin)),
            Some((bin, edge)) => {
                Some(usize::from(*bin) + usize::from(edges[usize::from(*edge)] < value))
            }
        }
    }
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
        let searched = SignLookup {
            table: None,
            below: 0,
            above: 0,
            constant_outside: false,
        };
        let (positive, negative) = if edges.len() < usize::from(SEARCH) {
            (
                SignLookup::build(&edges, 1.0),
                SignLookup::build(&edges, -1.0),
            )
        } else {
            (searched.clone(), searched)
        };
        Ok(Self {
            edges,
            fingerprint,
            positive,
            negative,
        })
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
        self.bin_of_bucket(value, quantile::bucket_of(value))
    }

    /// [`BinEdges::bin_of`] when the value's bucket is already known: a table
    /// lookup for buckets no edge cuts, a binary search otherwise.
    #[inline]
    pub fn bin_of_bucket(&self, value: f64, bucket: Bucket) -> usize {
        let known = match bucket {
            Bucket::Positive(key) => self.positive.bin(key, value, &self.edges),
            Bucket::Negative(key) => self.negative.bin(key, value, &self.edges),
            Bucket::Zero => None,
        };
        match known {
            Some(bin) => bin,
            None => self.edges.partition_point(|edge| *edge < value),
        }
    }
}

/// FNV-1a over the edges' bit patterns: stable across processes and versions.
pub fn fingerprint_edges(edges: &[f64]) -> u64 {
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
        let bucket = quantile::bucket_of(value);
        self.quantiles.add_bucket(bucket);
        if let (Some(bins), Some(edges)) = (&mut self.bins, edges) {
            debug_assert_eq!(bins.fingerprint, edges.fingerprint());
            bins.counts[edges.bin_of_bucket(value, bucket)] += 1;
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
    fn the_bucket_table_agrees_with_binary_search_everywhere() {
        let mut rng = StdRng::seed_from_u64(17);
        let edge_sets: Vec<Vec<f64>> = vec![
            (0..100).map(|i| (i as f64 - 50.0) * 0.731).collect(),
            (0..100)
                .map(|i| 10f64.powf(-3.0 + i as f64 * 0.07))
                .collect(),
            vec![-1e6, -3.0, -1e-3, 0.0, 1e-12, 2.5, 7.0, 1e9],
            (0..60).map(|i| 1.0 + i as f64 * 1e-6).collect(),
            vec![-50.0, -10.0, -1.0, -0.5],
            vec![-1.0, 0.0f64.next_down(), f64::MIN_POSITIVE, 5e-10, 3.0],
            (0..100).map(|i| i as f64 / 10.0).collect(),
        ];
        for edges in edge_sets {
            let bins = BinEdges::new(edges.clone()).unwrap();
            let mut probes: Vec<f64> = edges.clone();
            for edge in &edges {
                probes.push(edge.next_up());
                probes.push(edge.next_down());
                probes.push(edge * (1.0 + 1e-12));
            }
            for _ in 0..20_000 {
                let magnitude = 10f64.powf(rng.random_range(-12.0..10.0));
                probes.push(if rng.random::<bool>() {
                    magnitude
                } else {
                    -magnitude
                });
            }
            probes.extend([0.0, -0.0, 1e-10, -1e-10]);
            for value in probes {
                assert_eq!(
                    bins.bin_of(value),
                    edges.partition_point(|edge| *edge < value),
                    "value {value:e} with edges {edges:?}"
                );
            }
        }
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
