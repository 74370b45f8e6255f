//! Which segment values get a segment of their own.
//!
//! A segment key can take unboundedly many values (a user id, a free-text
//! country); each admitted value costs one group of sketches per window and
//! version, so a model admits at most `max_segment_values` values per key and
//! window, and every other value is counted under `key=__other__`.
//!
//! ## The rule
//! For one (window, model, segment key), the admitted values are
//! 1. the model's pinned values (`segment_values` in its configuration),
//! 2. `__missing__` (events without the key),
//! 3. among the other values seen in the window, the
//!    `max_segment_values − pinned` values with the smallest
//!    [`stable_hash`] (ties broken by the value).
//!
//! The third set is a bottom-k sample of the distinct values, and it does not
//! depend on the order events arrive in, nor on how they are split across
//! partitions, offset ranges or consumer instances. Each range applies the
//! rule to the values it sees ([`KeyAdmission`]); a value admitted by the
//! whole window is among the bottom k of every subset that contains it, so
//! every range that saw it kept it, and its segment is exact. Values a range
//! admitted that the whole window does not are folded into `__other__` when
//! the window's partials are merged ([`fold_segment_overflow`]). The stored
//! window is therefore the same however the events were consumed.
//!
//! Which values win is pseudo-random but fixed: pin the values that matter
//! (the big markets, the premium tier) so that they are always admitted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::catalog::Catalog;
use crate::distinct::stable_hash;
use crate::sketch::{FeatureSketch, SeriesKey};
use crate::spec::{ModelSpec, MISSING_SEGMENT_VALUE, OTHER_SEGMENT_VALUE};
use crate::Error;

/// The admission state of one segment key in one window of one range.
#[derive(Debug, Clone)]
pub struct KeyAdmission {
    key_index: usize,
    /// Values admitted by hash, ordered by (hash, value); at most `slots`.
    by_hash: BTreeSet<(u64, Arc<str>)>,
    /// The label of every value with a segment here, `__other__` included.
    labels: FxHashMap<Arc<str>, Arc<str>>,
    other: Arc<str>,
}

/// The outcome of [`KeyAdmission::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The segment label the value is counted under.
    pub label: Arc<str>,
    /// True when the label is `key=__other__`.
    pub overflowed: bool,
    /// A value admitted earlier that this one displaced: its segment must be
    /// folded into `key=__other__`.
    pub displaced: Option<Arc<str>>,
}

impl KeyAdmission {
    /// Empty admission state for the `key_index`-th segment key of `spec`.
    pub fn new(spec: &ModelSpec, key_index: usize) -> Self {
        let key = &spec.segment_keys()[key_index];
        let other: Arc<str> = Arc::from(format!("{key}={OTHER_SEGMENT_VALUE}"));
        let mut labels = FxHashMap::default();
        labels.insert(Arc::from(OTHER_SEGMENT_VALUE), Arc::clone(&other));
        for value in spec
            .pinned_segment_values(key_index)
            .iter()
            .map(String::as_str)
            .chain([MISSING_SEGMENT_VALUE])
        {
            labels.insert(Arc::from(value), Arc::from(format!("{key}={value}")));
        }
        Self {
            key_index,
            by_hash: BTreeSet::new(),
            labels,
            other,
        }
    }

    /// The label of `value`, admitting it if the rule allows.
    pub fn admit(&mut self, spec: &ModelSpec, value: &str) -> Admitted {
        if let Some(label) = self.labels.get(value) {
            return Admitted {
                overflowed: Arc::ptr_eq(label, &self.other),
                label: Arc::clone(label),
                displaced: None,
            };
        }
        let slots = spec.hashed_segment_slots(self.key_index);
        let candidate = (stable_hash(value), value);
        let full = self.by_hash.len() >= slots;
        let beats_largest = self
            .by_hash
            .last()
            .is_some_and(|(hash, largest)| candidate < (*hash, largest.as_ref()));
        if slots == 0 || (full && !beats_largest) {
            return Admitted {
                label: Arc::clone(&self.other),
                overflowed: true,
                displaced: None,
            };
        }
        let displaced = if full {
            let (_, largest) = self.by_hash.pop_last().expect("full and non-empty");
            self.labels.remove(&largest);
            Some(largest)
        } else {
            None
        };
        let value: Arc<str> = Arc::from(value);
        let key = &spec.segment_keys()[self.key_index];
        let label: Arc<str> = Arc::from(format!("{key}={value}"));
        self.by_hash.insert((candidate.0, Arc::clone(&value)));
        self.labels.insert(value, Arc::clone(&label));
        Admitted {
            label,
            overflowed: false,
            displaced,
        }
    }

    /// The `key=__other__` label.
    pub fn other_label(&self) -> &Arc<str> {
        &self.other
    }
}

/// Folds, in merged window sketches, every segment the rule does not admit
/// for its whole window into `key=__other__` (see the module docs). Returns
/// the number of segment values folded, per model.
pub fn fold_segment_overflow(
    catalog: &Catalog,
    merged: &mut BTreeMap<SeriesKey, FeatureSketch>,
) -> Result<BTreeMap<String, u64>, Error> {
    /// (window, model, key index).
    type KeyInWindow<'a> = (i64, &'a str, usize);
    // → values seen, beyond pinned and reserved ones, by (hash, value).
    let mut seen: BTreeMap<KeyInWindow, BTreeSet<(u64, &str)>> = BTreeMap::new();
    for key in merged.keys() {
        let Some(spec) = catalog.model(&key.model) else {
            continue;
        };
        if let Some((index, value)) = hashed_value(spec, &key.segment) {
            seen.entry((key.window_start, spec.name(), index))
                .or_default()
                .insert((stable_hash(value), value));
        }
    }
    let mut refused: BTreeSet<(i64, String, usize, String)> = BTreeSet::new();
    let mut folded: BTreeMap<String, u64> = BTreeMap::new();
    for ((window_start, model, index), values) in &seen {
        let spec = catalog.model(model).expect("seen only for known models");
        for (_, value) in values.iter().skip(spec.hashed_segment_slots(*index)) {
            refused.insert((
                *window_start,
                (*model).to_owned(),
                *index,
                (*value).to_owned(),
            ));
            *folded.entry((*model).to_owned()).or_default() += 1;
        }
    }
    if refused.is_empty() {
        return Ok(folded);
    }
    let keys: Vec<SeriesKey> = merged
        .keys()
        .filter(|key| {
            catalog.model(&key.model).is_some_and(|spec| {
                hashed_value(spec, &key.segment).is_some_and(|(index, value)| {
                    refused.contains(&(
                        key.window_start,
                        key.model.clone(),
                        index,
                        value.to_owned(),
                    ))
                })
            })
        })
        .cloned()
        .collect();
    for key in keys {
        let sketch = merged.remove(&key).expect("listed above");
        let segment_key = key.segment.split_once('=').expect("a key=value segment").0;
        let other = SeriesKey {
            segment: format!("{segment_key}={OTHER_SEGMENT_VALUE}"),
            ..key
        };
        match merged.get_mut(&other) {
            Some(existing) => existing.merge(&sketch)?,
            None => {
                merged.insert(other, sketch);
            }
        }
    }
    Ok(folded)
}

/// The key index and value of a `key=value` segment admitted by hash (not
/// `all`, pinned, `__missing__` or `__other__`).
fn hashed_value<'a>(spec: &ModelSpec, segment: &'a str) -> Option<(usize, &'a str)> {
    let (key, value) = segment.split_once('=')?;
    let index = spec.segment_keys().iter().position(|k| k == key)?;
    let reserved = value == OTHER_SEGMENT_VALUE
        || value == MISSING_SEGMENT_VALUE
        || spec
            .pinned_segment_values(index)
            .iter()
            .any(|pinned| pinned == value);
    (!reserved).then_some((index, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FeatureSpec, Task};

    fn spec(max: usize, pinned: &[&str]) -> ModelSpec {
        ModelSpec::new(
            "m",
            Task::Classification,
            vec![FeatureSpec {
                name: "x".into(),
                kind: crate::spec::FeatureKind::Numeric,
            }],
            vec!["country".into()],
            max,
            10,
        )
        .unwrap()
        .with_segment_values([(
            "country".to_owned(),
            pinned.iter().map(|v| v.to_string()).collect(),
        )])
        .unwrap()
    }

    /// The oracle: the bottom `slots` values by (hash, value).
    fn bottom(values: &[String], slots: usize) -> BTreeSet<String> {
        let distinct: BTreeSet<(u64, &String)> =
            values.iter().map(|v| (stable_hash(v), v)).collect();
        distinct
            .into_iter()
            .take(slots)
            .map(|(_, v)| v.clone())
            .collect()
    }

    #[test]
    fn the_admitted_set_does_not_depend_on_arrival_order() {
        let spec = spec(5, &["DE"]);
        let values: Vec<String> = (0..200).map(|i| format!("c{}", i % 37)).collect();
        let expected = bottom(&values, 4);
        let mut orders = vec![values.clone()];
        let mut reversed = values.clone();
        reversed.reverse();
        orders.push(reversed);
        let mut interleaved = values.clone();
        interleaved.sort_by_key(|v| stable_hash(&format!("{v}salt")));
        orders.push(interleaved);
        for order in orders {
            let mut admission = KeyAdmission::new(&spec, 0);
            for value in order
                .iter()
                .map(String::as_str)
                .chain(["DE", "__missing__"])
            {
                let admitted = admission.admit(&spec, value);
                if let Some(displaced) = &admitted.displaced {
                    assert!(
                        !expected.contains(displaced.as_ref()),
                        "{displaced} displaced"
                    );
                }
            }
            // Asked again once everything was seen: the final choice.
            for value in order
                .iter()
                .map(String::as_str)
                .chain(["DE", "__missing__"])
            {
                let admitted = admission.admit(&spec, value);
                assert_eq!(admitted.displaced, None);
                let own = expected.contains(value) || value == "DE" || value == "__missing__";
                let expected_label = if own {
                    format!("country={value}")
                } else {
                    "country=__other__".to_owned()
                };
                assert_eq!(admitted.label.as_ref(), expected_label);
                assert_eq!(admitted.overflowed, !own);
            }
        }
    }

    #[test]
    fn pinned_values_can_fill_every_slot() {
        let spec = spec(2, &["DE", "FR"]);
        let mut admission = KeyAdmission::new(&spec, 0);
        assert_eq!(admission.admit(&spec, "FR").label.as_ref(), "country=FR");
        let other = admission.admit(&spec, "US");
        assert!(other.overflowed);
        assert_eq!(other.label.as_ref(), "country=__other__");
        // A literal `__other__` value is the overflow segment.
        assert!(admission.admit(&spec, "__other__").overflowed);
    }

    #[test]
    fn folding_keeps_the_window_wide_bottom_k() {
        let spec = spec(3, &[]);
        let catalog = Catalog::new([spec.clone()]);
        let key = |segment: &str| SeriesKey {
            window_start: 0,
            model: "m".into(),
            model_version: "v1".into(),
            segment: segment.into(),
            feature: "operations".into(),
        };
        let values: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
        let keep = bottom(&values, 3);
        let mut merged = BTreeMap::new();
        for value in &values {
            let mut sketch = crate::operational::OperationalSketch::default();
            sketch.record(false, true, None);
            merged.insert(
                key(&format!("country={value}")),
                FeatureSketch::Operational(sketch),
            );
        }
        let folded = fold_segment_overflow(&catalog, &mut merged).unwrap();
        assert_eq!(folded["m"], 7);
        let segments: BTreeSet<String> = merged.keys().map(|k| k.segment.clone()).collect();
        let mut expected: BTreeSet<String> = keep.iter().map(|v| format!("country={v}")).collect();
        expected.insert("country=__other__".into());
        assert_eq!(segments, expected);
        assert_eq!(
            merged[&key("country=__other__")].observations(),
            7,
            "seven folded values, one event each"
        );
    }
}
