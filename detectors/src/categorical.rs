//! Per-window state of a categorical feature: bounded category counts.
//!
//! At most `max_categories` distinct categories are counted by name. Once the
//! bound is reached, values of categories not yet tracked go to the `other`
//! bucket, so memory per window is bounded whatever the producers send.
//! Merging is exact while the union stays within the bound; beyond it, the
//! categories of the sketch merged into are kept by name and the rest of the
//! other side's counts go to `other` (the total is always exact).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::distinct::HyperLogLog;
use crate::Error;

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
        } else if self.counts.len() < self.max_categories {
            self.counts.insert(category.to_owned(), count);
        } else {
            self.other += count;
            self.overflow_distinct
                .get_or_insert_with(HyperLogLog::default)
                .add(category);
        }
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
    /// named ones plus a HyperLogLog estimate of the overflowed ones (±3.3 %).
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
