//! A relative-error quantile sketch with a fixed memory budget (the
//! DDSketch algorithm of Masson, Rim & Lee, 2019).
//!
//! Values are mapped to logarithmic buckets `key = ⌈ln|v| / ln γ⌉` with
//! `γ = (1 + α)/(1 − α)`; a bucket's representative `2γ^key/(γ + 1)` is
//! within relative error `α` of every value in it, so any quantile is within
//! `α` of the exact order statistic. Positive and negative values have their
//! own stores; magnitudes below [`MIN_MAGNITUDE`] count as zero.
//!
//! Why not the `sketches-ddsketch` crate: its dense stores may grow to 2 ×
//! 2,048 buckets (32 KiB per sketch, far over the 8 KiB a window's numeric
//! feature may use), it tracks sum/min/max again on every insert (the window
//! already keeps exact moments), and it hides its buckets. Here each store
//! holds at most [`MAX_BUCKETS_PER_SIGN`] 32-bit counts (3.5 KiB; a bucket
//! that would pass 2³² values turns its store to 64-bit counts); beyond that
//! the lowest-magnitude buckets collapse into one, so the relative-error
//! guarantee holds for magnitudes above `max / γ^896`, a dynamic range of
//! about 5.8 × 10⁷ (7.8 decades) per sign.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Relative accuracy α.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Bucket budget of each store (positive, negative).
pub const MAX_BUCKETS_PER_SIGN: usize = 896;
/// Magnitudes below this are counted as zero.
pub const MIN_MAGNITUDE: f64 = 1e-9;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

/// `1 / ln γ`, precomputed: the key is one `ln` and one multiply per value.
const INVERSE_LN_GAMMA: f64 = 49.998_333_288_886_78;

/// Bucket counts: 32-bit until a bucket would overflow, then 64-bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Counts {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl Default for Counts {
    fn default() -> Self {
        Counts::Narrow(Vec::new())
    }
}

impl Counts {
    fn len(&self) -> usize {
        match self {
            Counts::Narrow(counts) => counts.len(),
            Counts::Wide(counts) => counts.len(),
        }
    }

    fn get(&self, index: usize) -> u64 {
        match self {
            Counts::Narrow(counts) => u64::from(counts[index]),
            Counts::Wide(counts) => counts[index],
        }
    }

    #[inline]
    fn add(&mut self, index: usize, count: u64) {
        match self {
            Counts::Narrow(counts) => {
                match u32::try_from(count)
                    .ok()
                    .and_then(|c| counts[index].checked_add(c))
                {
                    Some(total) => counts[index] = total,
                    None => self.widen_and_add(index, count),
                }
            }
            Counts::Wide(counts) => counts[index] += count,
        }
    }

    /// Adds one value to slot `index` (the hot path).
    #[inline]
    fn add_one(&mut self, index: usize) {
        match self {
            Counts::Narrow(counts) => match counts[index].checked_add(1) {
                Some(total) => counts[index] = total,
                None => self.widen_and_add(index, 1),
            },
            Counts::Wide(counts) => counts[index] += 1,
        }
    }

    /// Turns 32-bit counts into 64-bit ones and adds `count` at `index`.
    #[cold]
    fn widen_and_add(&mut self, index: usize, count: u64) {
        if let Counts::Narrow(counts) = self {
            let mut wide: Vec<u64> = counts.iter().map(|c| u64::from(*c)).collect();
            wide[index] += count;
            *self = Counts::Wide(wide);
        }
    }

    /// The counts with `before` zeros in front and zeros up to `len`.
    fn regrown(&self, before: usize, len: usize) -> Counts {
        match self {
            Counts::Narrow(counts) => {
                let mut grown = Vec::with_capacity(len);
                grown.resize(before, 0);
                grown.extend_from_slice(counts);
                grown.resize(len, 0);
                Counts::Narrow(grown)
            }
            Counts::Wide(counts) => {
                let mut grown = Vec::with_capacity(len);
                grown.resize(before, 0);
                grown.extend_from_slice(counts);
                grown.resize(len, 0);
                Counts::Wide(grown)
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Counts::Narrow(counts) => counts.capacity() * 4,
            Counts::Wide(counts) => counts.capacity() * 8,
        }
    }
}

/// Buckets of one sign: slot `i` holds key `offset + i`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Store {
    offset: i32,
    counts: Counts,
    /// Keys below `offset` were collapsed into slot 0.
    collapsed: bool,
}

impl Store {
    /// Adds one value at `key` (the hot path).
    #[inline]
    fn add_one(&mut self, key: i32) {
        match self.slot(key) {
            Some(slot) => self.counts.add_one(slot),
            None => self.add_outside(key, 1),
        }
    }

    #[inline]
    fn add(&mut self, key: i32, count: u64) {
        match self.slot(key) {
            Some(slot) => self.counts.add(slot, count),
            None => self.add_outside(key, count),
        }
    }

    #[cold]
    fn add_outside(&mut self, key: i32, count: u64) {
        self.extend_to(key);
        let slot = self.slot(key).unwrap_or(0);
        self.counts.add(slot, count);
    }

    #[inline]
    fn slot(&self, key: i32) -> Option<usize> {
        let index = i64::from(key) - i64::from(self.offset);
        if index >= 0 && (index as usize) < self.counts.len() {
            Some(index as usize)
        } else if index < 0 && self.collapsed {
            Some(0)
        } else {
            None
        }
    }

    /// Grows the range to hold `key`, collapsing the lowest keys when the
    /// budget would be exceeded.
    fn extend_to(&mut self, key: i32) {
        if self.counts.len() == 0 {
            self.offset = key;
            self.counts = self.counts.regrown(0, 1);
            return;
        }
        let low = self.offset.min(key);
        let high = (self.offset + self.counts.len() as i32 - 1).max(key);
        let span = (i64::from(high) - i64::from(low) + 1) as usize;
        if span <= MAX_BUCKETS_PER_SIGN {
            let before = (self.offset - low) as usize;
            self.counts = self.counts.regrown(before, span);
            self.offset = low;
            return;
        }
        // Over budget: keep the highest MAX_BUCKETS_PER_SIGN keys; everything
        // lower goes into the lowest kept bucket.
        let new_offset = high - MAX_BUCKETS_PER_SIGN as i32 + 1;
        let mut counts = match self.counts {
            Counts::Narrow(_) => Counts::Narrow(vec![0; MAX_BUCKETS_PER_SIGN]),
            Counts::Wide(_) => Counts::Wide(vec![0; MAX_BUCKETS_PER_SIGN]),
        };
        for index in 0..self.counts.len() {
            let key = self.offset + index as i32;
            let slot = (key - new_offset).max(0) as usize;
            counts.add(slot, self.counts.get(index));
        }
        self.counts = counts;
        self.offset = new_offset;
        self.collapsed = true;
    }

    /// Adds `other`'s buckets. Exact while neither side collapsed below the
    /// other's range; a collapsed bucket is added at its own key.
    fn merge(&mut self, other: &Store) {
        for index in 0..other.counts.len() {
            let count = other.counts.get(index);
            if count > 0 {
                self.add(other.offset + index as i32, count);
            }
        }
    }

    fn total(&self) -> u64 {
        (0..self.counts.len())
            .map(|index| self.counts.get(index))
            .sum()
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        (0..self.counts.len()).map(|index| (self.offset + index as i32, self.counts.get(index)))
    }
}

/// Where a value falls in the logarithmic bucket scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// `|v| ≤ MIN_MAGNITUDE`.
    Zero,
    /// `v > 0` in bucket `key`: `v ∈ (γ^(key−1), γ^key]` up to rounding.
    Positive(i32),
    /// `v < 0` with `|v|` in bucket `key`.
    Negative(i32),
}

/// The bucket of a finite value (one [`fast_ln`]).
#[inline]
pub fn bucket_of(value: f64) -> Bucket {
    if value > MIN_MAGNITUDE {
        Bucket::Positive(ceil_to_i32(fast_ln(value) * INVERSE_LN_GAMMA))
    } else if value < -MIN_MAGNITUDE {
        Bucket::Negative(ceil_to_i32(fast_ln(-value) * INVERSE_LN_GAMMA))
    } else {
        Bucket::Zero
    }
}

/// Entries of the [`fast_ln`] tables: the mantissa's top 8 bits.
const LN_TABLE_BITS: u32 = 8;
const LN_TABLE_SIZE: usize = 1 << LN_TABLE_BITS;

/// `ln(1 + j/256)` for the table's `j`, computed at compile time as
/// `2·atanh(y) = 2 Σ y^(2k+1)/(2k+1)`, `y = j / (512 + j) < 1/3`: forty
/// terms leave a remainder far below double precision.
const LN_TABLE: [f64; LN_TABLE_SIZE] = {
    let mut table = [0.0; LN_TABLE_SIZE];
    let mut j = 0;
    while j < LN_TABLE_SIZE {
        let y = j as f64 / (2.0 * LN_TABLE_SIZE as f64 + j as f64);
        let y2 = y * y;
        // Summed from the smallest term up, for accuracy.
        let mut sum = 0.0;
        let mut k = 40;
        while k > 0 {
            k -= 1;
            let mut power = 1.0;
            let mut i = 0;
            while i < k {
                power *= y2;
                i += 1;
            }
            sum += power / (2 * k + 1) as f64;
        }
        table[j] = 2.0 * y * sum;
        j += 1;
    }
    table
};

/// `1 / (1 + j/256)`.
const INVERSE_TABLE: [f64; LN_TABLE_SIZE] = {
    let mut table = [0.0; LN_TABLE_SIZE];
    let mut j = 0;
    while j < LN_TABLE_SIZE {
        table[j] = LN_TABLE_SIZE as f64 / (LN_TABLE_SIZE as f64 + j as f64);
        j += 1;
    }
    table
};

/// Natural logarithm of a positive normal `x`, for bucket keys: exponent
/// and mantissa from the bits, `ln m = ln(1 + j/256) + ln(1 + r)` with a
/// table for the first term and a degree-5 series for the second
/// (`|r| < 1/256`, truncation below 1e-15). The error is a few units in
/// the last place of `ln x` (under 2e-15 · max(1, |ln x|), tested against
/// `f64::ln`), far inside the 1e-9 margin the bin tables allow at bucket
/// boundaries, and cheaper than libm's `log`.
#[inline]
pub fn fast_ln(x: f64) -> f64 {
    const MANTISSA_BITS: u32 = 52;
    const MANTISSA_MASK: u64 = (1 << MANTISSA_BITS) - 1;
    const ONE_BITS: u64 = 0x3ff0_0000_0000_0000;
    let bits = x.to_bits();
    let exponent = ((bits >> MANTISSA_BITS) & 0x7ff) as i64 - 1023;
    let fraction = bits & MANTISSA_MASK;
    let index = (fraction >> (MANTISSA_BITS - LN_TABLE_BITS)) as usize;
    // m ∈ [1, 2); c = 1 + index/256 ≤ m < c + 1/256.
    let m = f64::from_bits(fraction | ONE_BITS);
    let c = 1.0 + index as f64 / LN_TABLE_SIZE as f64;
    let r = (m - c) * INVERSE_TABLE[index];
    let series = r * (1.0 + r * (-0.5 + r * (1.0 / 3.0 + r * (-0.25 + r * 0.2))));
    exponent as f64 * std::f64::consts::LN_2 + LN_TABLE[index] + series
}

/// `x.ceil() as i32` for `|x| < 2³¹`, without the libm call that `ceil`
/// becomes on baseline x86-64 (no SSE4.1) nor the range checks of a
/// saturating `as i32`: adding 1.5·2⁵² rounds `x` to the nearest integer,
/// which then sits in the low mantissa bits; one comparison turns nearest
/// into ceiling. Keys stay within ±40,000 (`ln f64::MAX · 50`).
#[inline]
fn ceil_to_i32(x: f64) -> i32 {
    const ROUNDER: f64 = 6_755_399_441_055_744.0;
    let shifted = x + ROUNDER;
    let nearest = shifted.to_bits() as i32;
    nearest + i32::from(shifted - ROUNDER < x)
}

/// The lower and upper magnitude of bucket `key`: `(γ^(key−1), γ^key]`.
pub fn bucket_bounds(key: i32) -> (f64, f64) {
    let gamma = gamma();
    (gamma.powi(key - 1), gamma.powi(key))
}

/// The quantile sketch. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantileSketch {
    positive: Store,
    negative: Store,
    zeros: u64,
}

impl QuantileSketch {
    fn representative(key: i32) -> f64 {
        let gamma = gamma();
        2.0 * gamma.powi(key) / (gamma + 1.0)
    }

    /// Adds a finite value.
    #[inline]
    pub fn add(&mut self, value: f64) {
        self.add_bucket(bucket_of(value));
    }

    /// Adds a value whose bucket the caller already computed.
    #[inline]
    pub fn add_bucket(&mut self, bucket: Bucket) {
        match bucket {
            Bucket::Positive(key) => self.positive.add_one(key),
            Bucket::Negative(key) => self.negative.add_one(key),
            Bucket::Zero => self.zeros += 1,
        }
    }

    /// Merges another sketch (exact: bucket counts add).
    pub fn merge(&mut self, other: &QuantileSketch) -> Result<(), Error> {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zeros += other.zeros;
        Ok(())
    }

    /// Values added.
    pub fn count(&self) -> u64 {
        self.positive.total() + self.negative.total() + self.zeros
    }

    /// The value of rank `⌊q·(n − 1)⌋` within relative error α; `None`
    /// while empty or for `q` outside [0, 1].
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (n - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        // Most negative first: the negative store from its highest key down.
        for (key, count) in self.negative.iter().rev() {
            seen += count;
            if seen > rank {
                return Some(-Self::representative(key));
            }
        }
        seen += self.zeros;
        if seen > rank {
            return Some(0.0);
        }
        for (key, count) in self.positive.iter() {
            seen += count;
            if seen > rank {
                return Some(Self::representative(key));
            }
        }
        None
    }

    /// Heap bytes held by the bucket arrays.
    pub fn heap_bytes(&self) -> usize {
        self.positive.counts.heap_bytes() + self.negative.counts.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_wide_range_are_within_alpha() {
        // Both signs over six decades (within the 7.8 the budget covers).
        let values: Vec<f64> = (0..20_000)
            .map(|i| {
                let wave = ((i as f64) * 0.37).sin();
                (0.1 + wave.abs()) * wave.signum() * 10f64.powi((i % 7) - 3)
            })
            .collect();
        let mut sketch = QuantileSketch::default();
        values.iter().for_each(|v| sketch.add(*v));
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0] {
            let exact = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
            let estimate = sketch.quantile(q).unwrap();
            let tolerance = RELATIVE_ACCURACY * exact.abs() + MIN_MAGNITUDE;
            assert!(
                (estimate - exact).abs() <= tolerance,
                "q={q}: {estimate} vs {exact}"
            );
        }
    }

    #[test]
    fn memory_stays_within_the_budget_and_the_top_keeps_its_accuracy() {
        let mut sketch = QuantileSketch::default();
        // Twelve orders of magnitude: more than the budget covers.
        let values: Vec<f64> = (0..100_000)
            .map(|i| 10f64.powf(-6.0 + 12.0 * (i as f64 / 100_000.0)))
            .collect();
        values.iter().for_each(|v| sketch.add(*v));
        assert!(
            sketch.heap_bytes() <= 2 * MAX_BUCKETS_PER_SIGN * 4,
            "{}",
            sketch.heap_bytes()
        );
        assert_eq!(sketch.count(), 100_000);
        // The top 7.8 decades (from about 1.7e-2 up) keep 1 % accuracy.
        for q in [0.4, 0.5, 0.9, 0.99] {
            let exact = values[(q * 99_999.0) as usize];
            let estimate = sketch.quantile(q).unwrap();
            assert!(
                (estimate - exact).abs() <= RELATIVE_ACCURACY * exact,
                "q={q}: {estimate} vs {exact}"
            );
        }
    }

    #[test]
    fn merge_equals_the_sketch_of_the_union_even_after_collapsing() {
        let values: Vec<f64> = (0..30_000)
            .map(|i| {
                10f64.powf(-5.0 + 10.0 * ((i * 7919) % 30_000) as f64 / 30_000.0)
                    * if i % 3 == 0 { -1.0 } else { 1.0 }
            })
            .collect();
        let (left, right) = values.split_at(11_111);
        let build = |part: &[f64]| {
            let mut sketch = QuantileSketch::default();
            part.iter().for_each(|v| sketch.add(*v));
            sketch
        };
        let mut merged = build(left);
        merged.merge(&build(right)).unwrap();
        let whole = build(&values);
        assert_eq!(merged.count(), whole.count());
        for q in [0.05, 0.25, 0.5, 0.75, 0.95] {
            assert_eq!(merged.quantile(q), whole.quantile(q), "q={q}");
        }
    }

    #[test]
    fn a_bucket_past_u32_max_widens_its_store() {
        let mut store = Store::default();
        store.add(5, u64::from(u32::MAX) - 1);
        store.add(5, 3);
        store.add(6, 1);
        assert_eq!(store.total(), u64::from(u32::MAX) + 3);
        assert!(matches!(store.counts, Counts::Wide(_)));
    }

    #[test]
    fn fast_ln_matches_ln_over_the_whole_range() {
        let mut worst: f64 = 0.0;
        let mut x: f64 = 1.000_000_1e-9;
        while x < 1e300 {
            for factor in [1.0, 1.000_000_3, 1.37, 1.999_999] {
                let value = x * factor;
                let exact = value.ln();
                // A few units in the last place of ln x.
                worst = worst.max((fast_ln(value) - exact).abs() / exact.abs().max(1.0));
            }
            x *= 1.618_033_988_749;
        }
        // Every table entry and its neighbourhood.
        for j in 0..LN_TABLE_SIZE {
            for offset in [0.0, 1e-12, 0.5 / 256.0, 0.999 / 256.0] {
                let value = (1.0 + j as f64 / 256.0 + offset) * 3.0f64.powi(7);
                worst = worst.max((fast_ln(value) - value.ln()).abs() / value.ln());
            }
        }
        assert!(
            worst < 2e-15,
            "worst error {worst:e} (relative to max(1, |ln x|))"
        );
    }

    #[test]
    fn keys_from_fast_ln_lie_in_their_buckets() {
        // Values at and next to bucket boundaries land in the bucket whose
        // bounds (widened by the bin tables' 1e-9) contain them.
        for key in -1_000..3_000 {
            let (_, upper) = bucket_bounds(key);
            for value in [upper, upper * (1.0 + 1e-12), upper * (1.0 - 1e-12)] {
                let Bucket::Positive(found) = bucket_of(value) else {
                    continue;
                };
                let (low, high) = bucket_bounds(found);
                assert!(
                    value > low * (1.0 - 1e-9) && value <= high * (1.0 + 1e-9),
                    "{value} in bucket {found} ({low}, {high}]"
                );
            }
        }
    }

    #[test]
    fn the_precomputed_constant_is_one_over_ln_gamma() {
        assert!((INVERSE_LN_GAMMA - 1.0 / gamma().ln()).abs() < 1e-12);
    }

    #[test]
    fn ceil_without_libm_matches_ceil() {
        for x in [
            -3.5, -3.0, -2.9999999, -2.5, -0.5, -0.0, 0.0, 0.2, 0.5, 1.0, 1.0000001, 1.5, 2.5,
            41.5, 1999.999, -35_487.3, 35_487.3,
        ] {
            assert_eq!(ceil_to_i32(x), x.ceil() as i32, "{x}");
        }
        // Every key a finite positive value can have, and the values around
        // half-integers where rounding to nearest is ambiguous.
        let mut x = -36_000.0;
        while x < 36_000.0 {
            for y in [x, x + 0.5, x + 0.5 + 1e-9, x + 0.5 - 1e-9, x + 1e-12] {
                assert_eq!(ceil_to_i32(y), y.ceil() as i32, "{y}");
            }
            x += 1.0;
        }
    }

    #[test]
    fn zeros_and_empty() {
        let mut sketch = QuantileSketch::default();
        assert_eq!(sketch.quantile(0.5), None);
        sketch.add(0.0);
        sketch.add(1e-12);
        sketch.add(5.0);
        assert_eq!(sketch.quantile(0.0), Some(0.0));
        assert!((sketch.quantile(1.0).unwrap() - 5.0).abs() <= 0.05);
        assert_eq!(sketch.quantile(1.5), None);
    }
}
