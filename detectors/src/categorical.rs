//! Per-window state of a categorical feature: bounded category counts.
//!
//! At most `max_categories` distinct categories are counted by name; every
//! other value goes to the `other` bucket (with a HyperLogLog of the
//! overflowed categories for the distinct count), so memory per window is
//! bounded whatever the producers send.
//!
//! Which categories are named when there are more than `max_categories`:
//! those with the smallest [`stable_hash`] (ties by name), a bottom-k sample
//! like [`crate::segments`]. A category is named by the whole window exactly
//! when it is among the bottom k of the window's categories, and then it is
//! among the bottom k of every part of the window that contains it, so every
//! part counted it by name: merging is exact and independent of how events
//! were split across partitions, ranges or instances, and of their order.
//! A named category displaced by one with a smaller hash moves its count to
//! `other`. The total is always exact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::distinct::{stable_hash, HyperLogLog};
use crate::Error;

/// Text of a number used as a category: integers without a fraction.
pub fn format_category(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 1e15 {
        format!("{}", number as i64)
    } else {
        format!("{number}")
    }
}

/// Per-window category counts. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalSketch {
    max_categories: usize,
    missing: u64,
    type_mismatch: u64,
    counts: BTreeMap<String, u64>,
    /// Values of categories beyond the bound.
    other: u64,
    /// Distinct categories among the overflowed values; created on the first
    /// overflow, so bounded sketches pay nothing for it.
    overflow_distinct: Option<HyperLogLog>,
    /// The named category with the largest (hash, name), once the bound is
    /// reached (recomputed after a change; not stored).
    #[serde(skip)]
    largest: LargestNamed,
}

/// A cache that never makes two sketches differ.
#[derive(Debug, Clone, Default)]
struct LargestNamed(Option<(u64, String)>);

impl PartialEq for LargestNamed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl CategoricalSketch {
    /// An empty sketch that names at most `max_categories` categories.
    pub fn new(max_categories: usize) -> Self {
        Self {
            max_categories,
            missing: 0,
            type_mismatch: 0,
            counts: BTreeMap::new(),
            other: 0,
            overflow_distinct: None,
            largest: LargestNamed::default(),
        }
    }

    /// Counts one value.
    #[inline]
    pub fn add(&mut self, category: &str) {
        self.add_count(category, 1);
    }

    fn add_count(&mut self, category: &str, count: u64) {
        if let Some(existing) = self.counts.get_mut(category) {
            *existing += count;
            return;
        }
        if self.counts.len() < self.max_categories {
            self.counts.insert(category.to_owned(), count);
            self.largest.0 = None;
            return;
        }
        let candidate = (stable_hash(category), category);
        let largest = self.largest.0.get_or_insert_with(|| {
            self.counts
                .keys()
                .map(|name| (stable_hash(name), name.clone()))
                .max()
                .expect("full, so not empty")
        });
        if candidate < (largest.0, largest.1.as_str()) {
            let (_, displaced) = self.largest.0.take().expect("set above");
            let displaced_count = self.counts.remove(&displaced).expect("named");
            self.overflow(&displaced, displaced_count);
            self.counts.insert(category.to_owned(), count);
        } else {
            self.overflow(category, count);
        }
    }

    fn overflow(&mut self, category: &str, count: u64) {
        self.other += count;
        self.overflow_distinct
            .get_or_insert_with(HyperLogLog::default)
            .add(category);
    }

    /// Records a missing value.
    pub fn add_missing(&mut self) {
        self.missing += 1;
    }

    /// Records a value of the wrong type (a non-finite number).
    pub fn add_type_mismatch(&mut self) {
        self.type_mismatch += 1;
    }

    /// Merges another window's counts of the same feature.
    pub fn merge(&mut self, other: &CategoricalSketch) -> Result<(), Error> {
        if self.max_categories != other.max_categories {
            return Err(Error::IncompatibleMerge(format!(
                "categorical sketches bounded at {} and {} categories",
                self.max_categories, other.max_categories
            )));
        }
        for (category, count) in &other.counts {
            self.add_count(category, *count);
        }
        self.other += other.other;
        if let Some(theirs) = &other.overflow_distinct {
            self.overflow_distinct
                .get_or_insert_with(HyperLogLog::default)
                .merge(theirs);
        }
        self.missing += other.missing;
        self.type_mismatch += other.type_mismatch;
        Ok(())
    }

    /// Counts by category name.
    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }

    /// Values counted in the overflow bucket.
    pub fn other(&self) -> u64 {
        self.other
    }

    /// Distinct categories: exact while within the bound, otherwise the
    /// named ones plus a HyperLogLog estimate of the overflowed ones (±3.3 %;
    /// the overflowed set, hence the estimate, does not depend on how the
    /// window was split).
    pub fn distinct_estimate(&self) -> u64 {
        let overflowed = self
            .overflow_distinct
            .as_ref()
            .map_or(0.0, HyperLogLog::estimate);
        self.counts.len() as u64 + overflowed.round() as u64
    }

    /// Valid (non-missing) values.
    pub fn total(&self) -> u64 {
        self.counts.values().sum::<u64>() + self.other
    }

    /// Missing values.
    pub fn missing(&self) -> u64 {
        self.missing
    }

    /// Values of the wrong type.
    pub fn type_mismatch(&self) -> u64 {
        self.type_mismatch
    }

    /// Approximate heap size in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.counts
            .keys()
            .map(|key| key.len() + 8 + 32)
            .sum::<usize>()
            + self
                .overflow_distinct
                .as_ref()
                .map_or(0, |_| 1 << crate::distinct::PRECISION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_overflows_at_the_bound() {
        let mut sketch = CategoricalSketch::new(2);
        for value in ["a", "b", "a", "c", "d", "a"] {
            sketch.add(value);
        }
        sketch.add_missing();
        assert_eq!(sketch.counts().get("a"), Some(&3));
        assert_eq!(sketch.counts().get("b"), Some(&1));
        assert_eq!(sketch.other(), 2);
        assert_eq!(sketch.total(), 6);
        assert_eq!(sketch.missing(), 1);
        assert_eq!(sketch.distinct_estimate(), 4, "a, b named; c, d estimated");
    }

    #[test]
    fn merge_equals_union_within_the_bound() {
        let values = ["x", "y", "z", "x", "x", "y", "w"];
        let (left, right) = values.split_at(3);
        let build = |part: &[&str]| {
            let mut sketch = CategoricalSketch::new(10);
            part.iter().for_each(|v| sketch.add(v));
            sketch
        };
        let mut merged = build(left);
        merged.merge(&build(right)).unwrap();
        assert_eq!(merged, build(&values));
    }

    #[test]
    fn merge_beyond_the_bound_is_the_same_however_values_are_split() {
        let values: Vec<String> = (0..5_000u64)
            .map(|i| format!("cat-{}", (i * i) % 700))
            .collect();
        let build = |part: &[String]| {
            let mut sketch = CategoricalSketch::new(25);
            part.iter().for_each(|v| sketch.add(v));
            sketch
        };
        let whole = build(&values);
        // The oracle: the 25 smallest hashes named with exact counts.
        let mut exact: BTreeMap<&str, u64> = BTreeMap::new();
        values
            .iter()
            .for_each(|v| *exact.entry(v).or_default() += 1);
        let mut ranked: Vec<&str> = exact.keys().copied().collect();
        ranked.sort_by_key(|c| (stable_hash(c), *c));
        let named: BTreeMap<String, u64> = ranked[..25]
            .iter()
            .map(|c| (c.to_string(), exact[c]))
            .collect();
        assert_eq!(whole.counts(), &named);
        assert_eq!(whole.total(), 5_000);
        for parts in [2usize, 3, 7, 50] {
            let mut reversed = values.clone();
            reversed.reverse();
            let chunks: Vec<CategoricalSketch> = reversed
                .chunks(values.len().div_ceil(parts))
                .map(build)
                .collect();
            let mut merged = chunks[parts / 2].clone();
            for (i, chunk) in chunks.iter().enumerate() {
                if i != parts / 2 {
                    merged.merge(chunk).unwrap();
                }
            }
            assert_eq!(merged.counts(), whole.counts(), "{parts} parts");
            assert_eq!(merged.other(), whole.other());
            assert_eq!(merged.distinct_estimate(), whole.distinct_estimate());
        }
    }

    #[test]
    fn merge_beyond_the_bound_keeps_the_total() {
        let mut a = CategoricalSketch::new(1);
        a.add("a");
        let mut b = CategoricalSketch::new(1);
        b.add("b");
        b.add("b");
        a.merge(&b).unwrap();
        assert_eq!(a.total(), 3);
        assert_eq!(a.other(), 2);
        assert!(a.merge(&CategoricalSketch::new(5)).is_err());
    }
}
