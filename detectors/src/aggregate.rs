//! Routing decoded events into per-window, per-series sketches.
//!
//! [`WindowAggregates`] keeps one [`FeatureSketch`] per
//! (window_start, model, model_version, segment, series). Each event updates,
//! for every segment key of its model, the segment `key=value` when
//! [`crate::segments`] admits the value, else `key=__other__` (an absent key
//! is `key=__missing__`), and the segment `all`. With segment keys, `all` is
//! not updated per event: every event is in exactly one segment of the
//! first key, so `all` is the merge of that key's segments (exact, as every
//! merge of these sketches), made when [`WindowAggregates::snapshot`] reads
//! the window. An event with one segment key then updates one group, not two.
//!
//! ## Bounds
//! - `max_groups`: the number of (window, model, version, segment) groups
//!   held (a derived `all` is not held).
//!   When full, events that would open a new group are refused with
//!   [`Recorded::GroupLimit`] and counted by the caller; existing groups keep
//!   updating. The ingest engine keeps one `WindowAggregates` per offset
//!   range and drops it when the range seals, so the limit is a safety net,
//!   not a flow-control mechanism.
//! - categories per sketch: the model's `max_categories`.
//! - distinct segment values per key and window: the model's
//!   `max_segment_values` (plus `__missing__` and `__other__`); values beyond
//!   it are counted in [`SegmentOverflow`].

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use events::{Event, EventKind, FeatureValue, Label};

use crate::catalog::Catalog;
use crate::categorical::format_category;
use crate::quality::{is_positive, ClassificationOutcome, QualitySketch};
use crate::reference::CompiledReference;
use crate::segments::KeyAdmission;
use crate::sketch::{FeatureSketch, SeriesKey};
use crate::spec::{
    ModelSpec, SeriesSource, ALL_SEGMENT, MISSING_SEGMENT_VALUE, OTHER_SEGMENT_VALUE,
};

/// A prediction waiting for its actual (see [`WindowAggregates::pending_prediction`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingPrediction {
    /// Start of the prediction's window.
    pub window_start: i64,
    /// The prediction's event time, ms.
    pub event_time: i64,
    /// Model version (interned).
    pub model_version: Arc<str>,
    /// Segment labels of the prediction (`all`, `key=value`…), interned:
    /// a model's predictions share a few lists.
    pub segments: Arc<[Arc<str>]>,
    /// Score, if any.
    pub score: Option<f64>,
    /// Predicted class, if any (interned).
    pub class: Option<Arc<str>>,
}

/// Shares the strings many pending predictions repeat (versions, classes)
/// and their lists of segment labels: at most `INTERNED` of each, beyond
/// which each gets its own copy.
#[derive(Debug, Clone, Default)]
struct Interner {
    strings: rustc_hash::FxHashSet<Arc<str>>,
    lists: rustc_hash::FxHashSet<Arc<[Arc<str>]>>,
}

impl Interner {
    const INTERNED: usize = 4_096;

    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(text) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(text);
        if self.strings.len() < Self::INTERNED {
            self.strings.insert(Arc::clone(&shared));
        }
        shared
    }

    fn list(&mut self, items: &[Arc<str>]) -> Arc<[Arc<str>]> {
        if let Some(shared) = self.lists.get(items) {
            return Arc::clone(shared);
        }
        let shared: Arc<[Arc<str>]> = Arc::from(items);
        if self.lists.len() < Self::INTERNED {
            self.lists.insert(Arc::clone(&shared));
        }
        shared
    }
}

/// Segment values that did not get a segment of their own (see
/// [`crate::segments`]), counted by [`WindowAggregates`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentOverflow {
    /// Event segment values recorded under `key=__other__` on arrival.
    pub events: u64,
    /// Admitted values displaced later by a value with a smaller hash (their
    /// segment was folded into `key=__other__`).
    pub displaced: u64,
}

/// What happened to an event handed to [`WindowAggregates::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Added to its window.
    Added,
    /// Its model is not configured; nothing was recorded.
    UnknownModel,
    /// A new group was needed but `max_groups` was reached.
    GroupLimit,
}

type SegmentGroups = FxHashMap<String, Vec<FeatureSketch>>;
type VersionGroups = FxHashMap<String, SegmentGroups>;

/// Per-window sketches of every model, version, segment and series.
#[derive(Debug, Clone)]
pub struct WindowAggregates {
    max_groups: usize,
    groups: usize,
    /// window_start → model → version → segment → sketches by series position.
    windows: BTreeMap<i64, FxHashMap<String, VersionGroups>>,
    /// model → window_start → admission state per segment key (in spec
    /// order), each holding at most `max_segment_values` values.
    admissions: FxHashMap<String, BTreeMap<i64, Vec<KeyAdmission>>>,
    overflow: SegmentOverflow,
    /// Versions and classes of pending predictions.
    interned: Interner,
    /// The `all` label, shared.
    all_segment: Arc<str>,
    /// Reused per event to avoid allocating.
    scratch_segments: Vec<Arc<str>>,
    /// Reused per event to avoid allocating.
    scratch_seen: Vec<bool>,
    /// Reused per event by the reconstruction error (encoded row, projection).
    scratch_row: (Vec<f64>, Vec<f64>),
}

impl WindowAggregates {
    /// Empty aggregates holding at most `max_groups` (window, model, version, segment) groups.
    pub fn new(max_groups: usize) -> Self {
        Self {
            max_groups,
            groups: 0,
            windows: BTreeMap::new(),
            admissions: FxHashMap::default(),
            overflow: SegmentOverflow::default(),
            interned: Interner::default(),
            all_segment: Arc::from(ALL_SEGMENT),
            scratch_segments: Vec::new(),
            scratch_seen: Vec::new(),
            scratch_row: (Vec::new(), Vec::new()),
        }
    }

    /// Number of open groups.
    pub fn group_count(&self) -> usize {
        self.groups
    }

    /// Records one event in the window starting at `window_start`.
    pub fn record(&mut self, catalog: &Catalog, window_start: i64, event: &Event<'_>) -> Recorded {
        let Some(spec) = catalog.model(&event.model) else {
            return Recorded::UnknownModel;
        };
        let reference = catalog.reference(&event.model, &event.model_version);
        let mut segments = std::mem::take(&mut self.scratch_segments);
        let mut seen = std::mem::take(&mut self.scratch_seen);
        self.segments_of(spec, window_start, event, &mut segments, true);
        seen.resize(spec.configured_feature_count(), false);
        // Once per event, whatever its number of segments.
        let reconstruction_error = match (
            reference.and_then(CompiledReference::reconstruction),
            event.kind,
        ) {
            (Some(model), EventKind::Prediction | EventKind::Feature) => {
                let (row, scratch) = &mut self.scratch_row;
                Some(model.error(spec, &event.features, row, scratch))
            }
            _ => None,
        };
        let loss_errors = match (
            reference.and_then(CompiledReference::loss),
            event.kind,
            event.prediction.as_ref().and_then(|p| p.effective_score()),
        ) {
            (Some(model), EventKind::Prediction, Some(prediction)) => {
                let (row, _) = &mut self.scratch_row;
                Some(model.errors(spec, &event.features, prediction, row))
            }
            _ => None,
        };
        // Multiclass: the class probabilities in the model's class order,
        // calibrated once per event.
        let class_row = match (
            reference.and_then(CompiledReference::multiclass),
            event.kind,
            event.prediction.as_ref(),
        ) {
            (Some(model), EventKind::Prediction, Some(prediction)) => class_row(model, prediction)
                .map(|(probabilities, predicted)| {
                    let calibrated = model.calibrate(&probabilities);
                    (probabilities, calibrated, predicted)
                }),
            _ => None,
        };
        let mut outcome = Recorded::Added;
        for segment in recorded_segments(spec, &segments) {
            let Some(sketches) =
                self.group_mut(spec, reference, window_start, &event.model_version, segment)
            else {
                outcome = Recorded::GroupLimit;
                break;
            };
            record_into(spec, reference, sketches, event, &mut seen);
            if let Some(error) = reconstruction_error {
                record_reconstruction(spec, sketches, error);
            }
            if let Some((absolute, squared)) = loss_errors {
                record_loss(spec, sketches, absolute, squared);
            }
            if let Some((probabilities, calibrated, predicted)) = &class_row {
                if let Some(FeatureSketch::EstimatedClasses(sums)) = spec
                    .derived_position(SeriesSource::EstimatedQuality)
                    .map(|position| &mut sketches[position])
                {
                    sums.add_calibrated(probabilities, calibrated, *predicted);
                }
            }
        }
        segments.clear();
        self.scratch_segments = segments;
        self.scratch_seen = seen;
        outcome
    }

    /// What a prediction event must remember until its actual arrives: its
    /// window, version, segment labels and output. `None` for events that are
    /// not predictions, have no id, or belong to an unknown model.
    pub fn pending_prediction(
        &mut self,
        catalog: &Catalog,
        window_start: i64,
        event: &Event<'_>,
    ) -> Option<PendingPrediction> {
        if event.kind != EventKind::Prediction {
            return None;
        }
        let spec = catalog.model(&event.model)?;
        event.prediction_id.as_ref()?;
        let mut segments = std::mem::take(&mut self.scratch_segments);
        // Overflow was counted when the event was recorded.
        self.segments_of(spec, window_start, event, &mut segments, false);
        let shared = self.interned.list(&segments);
        segments.clear();
        self.scratch_segments = segments;
        let prediction = event.prediction.as_ref();
        Some(PendingPrediction {
            window_start,
            event_time: event.timestamp_ms,
            model_version: self.interned.get(&event.model_version),
            segments: shared,
            score: prediction.and_then(|p| p.effective_score()),
            class: prediction
                .and_then(|p| p.predicted_class())
                .map(|class| self.interned.get(class)),
        })
    }

    /// Records the outcome of a joined prediction in the `quality` series of
    /// the prediction's window (which may be long closed: the caller
    /// finalizes it again).
    pub fn record_outcome(
        &mut self,
        catalog: &Catalog,
        model: &str,
        pending: &PendingPrediction,
        label: &Label<'_>,
    ) -> Recorded {
        let Some(spec) = catalog.model(model) else {
            return Recorded::UnknownModel;
        };
        let Some(position) = spec.derived_position(SeriesSource::Quality) else {
            return Recorded::UnknownModel;
        };
        let reference = catalog.reference(model, &pending.model_version);
        let actual_text = match label {
            Label::Class(class) => class.to_string(),
            Label::Number(number) => format_category(*number),
        };
        // The prediction's labels are re-admitted here: this range may not
        // have seen the value in that window yet.
        let first = usize::from(!spec.segment_keys().is_empty());
        for (nth, segment) in pending.segments.iter().enumerate().skip(first) {
            let segment = match nth.checked_sub(1) {
                None => Arc::clone(segment),
                Some(index) => {
                    let key = &spec.segment_keys()[index];
                    let value = segment
                        .strip_prefix(key.as_str())
                        .and_then(|rest| rest.strip_prefix('='))
                        .unwrap_or(OTHER_SEGMENT_VALUE);
                    self.admit(spec, pending.window_start, index, value).0
                }
            };
            let Some(sketches) = self.group_mut(
                spec,
                reference,
                pending.window_start,
                &pending.model_version,
                &segment,
            ) else {
                return Recorded::GroupLimit;
            };
            match &mut sketches[position] {
                FeatureSketch::Quality(QualitySketch::Classification(quality)) => {
                    let scored = match (spec.positive_class(), pending.score) {
                        (Some(positive), Some(score)) => {
                            Some((score, is_positive(&actual_text, Some(positive))))
                        }
                        _ => None,
                    };
                    quality.add(ClassificationOutcome {
                        predicted: pending.class.as_deref(),
                        actual: &actual_text,
                        scored,
                    });
                }
                FeatureSketch::Quality(QualitySketch::Regression(quality)) => {
                    let actual = match label {
                        Label::Number(number) => Some(*number),
                        Label::Class(text) => text.trim().parse().ok(),
                    };
                    if let (Some(predicted), Some(actual)) = (pending.score, actual) {
                        quality.add(predicted, actual);
                    }
                }
                _ => {}
            }
        }
        Recorded::Added
    }

    /// Fills `segments` with the labels of the event's segments in the
    /// window starting at `window_start`: `all`, then `key=value` per segment
    /// key as [`crate::segments`] admits it (interned, so no allocation per
    /// event once a value is admitted). `count_overflow`: add values that
    /// fall into `key=__other__` to [`SegmentOverflow::events`].
    fn segments_of(
        &mut self,
        spec: &ModelSpec,
        window_start: i64,
        event: &Event<'_>,
        segments: &mut Vec<Arc<str>>,
        count_overflow: bool,
    ) {
        segments.push(Arc::clone(&self.all_segment));
        for (index, key) in spec.segment_keys().iter().enumerate() {
            let value = event
                .segments
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_ref())
                .unwrap_or(MISSING_SEGMENT_VALUE);
            let (label, overflowed) = self.admit(spec, window_start, index, value);
            if overflowed && count_overflow {
                self.overflow.events += 1;
            }
            segments.push(label);
        }
    }

    /// The label of `value` of the `index`-th segment key in a window; folds
    /// the segment of a value it displaces into `key=__other__`.
    fn admit(
        &mut self,
        spec: &ModelSpec,
        window_start: i64,
        index: usize,
        value: &str,
    ) -> (Arc<str>, bool) {
        if !self.admissions.contains_key(spec.name()) {
            self.admissions
                .insert(spec.name().to_owned(), BTreeMap::new());
        }
        let per_key = self
            .admissions
            .get_mut(spec.name())
            .expect("inserted above")
            .entry(window_start)
            .or_insert_with(|| {
                (0..spec.segment_keys().len())
                    .map(|index| KeyAdmission::new(spec, index))
                    .collect()
            });
        let admitted = per_key[index].admit(spec, value);
        if let Some(displaced) = admitted.displaced {
            let other = Arc::clone(per_key[index].other_label());
            let key = &spec.segment_keys()[index];
            self.overflow.displaced += 1;
            self.fold_into_other(spec, window_start, &format!("{key}={displaced}"), &other);
        }
        (admitted.label, admitted.overflowed)
    }

    /// Moves the groups of `segment` (every version of the model's window)
    /// into `other`.
    fn fold_into_other(&mut self, spec: &ModelSpec, window_start: i64, segment: &str, other: &str) {
        let Some(versions) = self
            .windows
            .get_mut(&window_start)
            .and_then(|models| models.get_mut(spec.name()))
        else {
            return;
        };
        for segments in versions.values_mut() {
            let Some(group) = segments.remove(segment) else {
                continue;
            };
            match segments.get_mut(other) {
                Some(existing) => {
                    for (into, from) in existing.iter_mut().zip(&group) {
                        into.merge(from)
                            .expect("groups of one model version share their layout");
                    }
                    self.groups -= 1;
                }
                None => {
                    segments.insert(other.to_owned(), group);
                }
            }
        }
    }

    /// Segment overflow counted since the last call (see [`SegmentOverflow`]).
    pub fn take_segment_overflow(&mut self) -> SegmentOverflow {
        std::mem::take(&mut self.overflow)
    }

    fn group_mut(
        &mut self,
        spec: &ModelSpec,
        reference: Option<&CompiledReference>,
        window_start: i64,
        version: &str,
        segment: &str,
    ) -> Option<&mut Vec<FeatureSketch>> {
        let exists = self
            .windows
            .get(&window_start)
            .and_then(|models| models.get(spec.name()))
            .and_then(|versions| versions.get(version))
            .is_some_and(|segments| segments.contains_key(segment));
        if !exists {
            if self.groups >= self.max_groups {
                return None;
            }
            self.groups += 1;
            let sketches = new_group(spec, reference);
            self.windows
                .entry(window_start)
                .or_default()
                .entry(spec.name().to_owned())
                .or_default()
                .entry(version.to_owned())
                .or_default()
                .insert(segment.to_owned(), sketches);
        }
        self.windows
            .get_mut(&window_start)?
            .get_mut(spec.name())?
            .get_mut(version)?
            .get_mut(segment)
    }

    /// Every non-empty series, in key order, without removing anything.
    pub fn snapshot(&self, catalog: &Catalog) -> Vec<(SeriesKey, FeatureSketch)> {
        let mut out = Vec::new();
        for (window_start, models) in &self.windows {
            collect_window(catalog, *window_start, models, &mut out);
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The segments an event's sketches are updated in: all of them without
/// segment keys (only `all`); with keys, all but `all` (the first), which
/// [`derived_all`] makes when the window is read.
fn recorded_segments<'s>(spec: &ModelSpec, segments: &'s [Arc<str>]) -> &'s [Arc<str>] {
    if spec.segment_keys().is_empty() {
        segments
    } else {
        &segments[1..]
    }
}

/// `all` of a model version's window with segment keys: the merge of the
/// first key's segments, in segment order (so the same groups always give
/// the same bits). `None` without segment keys (`all` is recorded) or
/// without groups.
fn derived_all(spec: &ModelSpec, segments: &SegmentGroups) -> Option<Vec<FeatureSketch>> {
    let key = spec.segment_keys().first()?;
    let prefix = format!("{key}=");
    let mut names: Vec<&String> = segments
        .keys()
        .filter(|segment| segment.starts_with(&prefix))
        .collect();
    names.sort_unstable();
    let (first, rest) = names.split_first()?;
    let mut all = segments[*first].clone();
    for name in rest {
        for (into, from) in all.iter_mut().zip(&segments[*name]) {
            into.merge(from)
                .expect("groups of one model version share their layout");
        }
    }
    Some(all)
}

fn new_group(spec: &ModelSpec, reference: Option<&CompiledReference>) -> Vec<FeatureSketch> {
    spec.series()
        .enumerate()
        .map(|(position, series)| {
            FeatureSketch::new(series.kind, spec, reference.and_then(|r| r.edges(position)))
        })
        .collect()
}

fn collect_window(
    catalog: &Catalog,
    window_start: i64,
    models: &FxHashMap<String, VersionGroups>,
    out: &mut Vec<(SeriesKey, FeatureSketch)>,
) {
    for (model, versions) in models {
        let Some(spec) = catalog.model(model) else {
            continue;
        };
        for (version, segments) in versions {
            let all = derived_all(spec, segments);
            let groups = segments
                .iter()
                .map(|(segment, sketches)| (segment.as_str(), sketches))
                .chain(all.as_ref().map(|sketches| (ALL_SEGMENT, sketches)));
            for (segment, sketches) in groups {
                for (position, sketch) in sketches.iter().enumerate() {
                    if sketch.observations() == 0 {
                        continue;
                    }
                    out.push((
                        SeriesKey {
                            window_start,
                            model: model.clone(),
                            model_version: version.clone(),
                            segment: segment.to_owned(),
                            feature: spec.series_at(position).name.clone(),
                        },
                        sketch.clone(),
                    ));
                }
            }
        }
    }
}

/// Adds a row's reconstruction error to the `multivariate` series.
fn record_reconstruction(spec: &ModelSpec, sketches: &mut [FeatureSketch], error: f64) {
    if let Some(FeatureSketch::Multivariate(errors)) = spec
        .derived_position(SeriesSource::Multivariate)
        .map(|position| &mut sketches[position])
    {
        errors.add(error);
    }
}

/// A prediction's probability of each of the model's classes (in its
/// order) and its predicted class's index; `None` when a class's
/// probability or the predicted class is missing or unknown.
fn class_row(
    model: &crate::multiclass::MulticlassCbpe,
    prediction: &events::PredictionOutput<'_>,
) -> Option<(Vec<f64>, usize)> {
    let probabilities: Option<Vec<f64>> = model
        .classes
        .iter()
        .map(|class| {
            prediction
                .probabilities
                .iter()
                .find(|(name, _)| name.as_ref() == class)
                .map(|(_, p)| *p)
                .filter(|p| p.is_finite())
        })
        .collect();
    let predicted = prediction.predicted_class()?;
    let index = model.classes.iter().position(|class| class == predicted)?;
    Some((probabilities?, index))
}

/// Adds a prediction's expected errors to a regression model's
/// `estimated_quality` series.
fn record_loss(spec: &ModelSpec, sketches: &mut [FeatureSketch], absolute: f64, squared: f64) {
    if let Some(FeatureSketch::EstimatedLoss(sum)) = spec
        .derived_position(SeriesSource::EstimatedQuality)
        .map(|position| &mut sketches[position])
    {
        sum.add(absolute, squared);
    }
}

#[inline]
fn record_into(
    spec: &ModelSpec,
    reference: Option<&CompiledReference>,
    sketches: &mut [FeatureSketch],
    event: &Event<'_>,
    seen: &mut [bool],
) {
    let edges = |position: usize| reference.and_then(|r| r.edges(position));
    if event.kind == EventKind::Actual {
        if let (Some(position), Some(label)) = (
            spec.derived_position(SeriesSource::ActualLabel),
            &event.label,
        ) {
            let value = match label {
                Label::Number(number) => FeatureValue::Number(*number),
                Label::Class(class) => FeatureValue::Text(class.clone()),
            };
            sketches[position].record_value(&value, edges(position));
        }
        return;
    }
    seen.iter_mut().for_each(|flag| *flag = false);
    let mut hint = 0;
    for (name, value) in &event.features {
        if let Some(position) = spec.feature_position_hinted(name, hint) {
            hint = position + 1;
            seen[position] = true;
            sketches[position].record_value(value, edges(position));
        }
    }
    for (position, was_seen) in seen.iter().enumerate() {
        if !was_seen {
            sketches[position].record_missing();
        }
    }
    if let Some(prediction) = &event.prediction {
        if let Some(position) = spec.derived_position(SeriesSource::PredictionScore) {
            match prediction.effective_score() {
                Some(score) => {
                    sketches[position].record_value(&FeatureValue::Number(score), edges(position))
                }
                None => sketches[position].record_missing(),
            }
        }
        if let Some(position) = spec.derived_position(SeriesSource::PredictionClass) {
            match prediction.predicted_class() {
                Some(class) => sketches[position]
                    .record_value(&FeatureValue::Text(class.into()), edges(position)),
                None => sketches[position].record_missing(),
            }
        }
    }
    if event.kind == EventKind::Prediction {
        if let (Some(position), Some(positive), Some(prediction)) = (
            spec.derived_position(SeriesSource::EstimatedQuality),
            spec.positive_class(),
            &event.prediction,
        ) {
            if let (FeatureSketch::EstimatedQuality(scores), Some(score), Some(class)) = (
                &mut sketches[position],
                prediction.effective_score(),
                prediction.predicted_class(),
            ) {
                scores.add(score, is_positive(class, Some(positive)));
            }
        }
        if let Some(position) = spec.derived_position(SeriesSource::Operations) {
            if let FeatureSketch::Operational(operations) = &mut sketches[position] {
                let has_output = event.prediction.as_ref().is_some_and(|p| {
                    p.effective_score().is_some() || p.predicted_class().is_some()
                });
                operations.record(event.error.is_some(), has_output, event.latency_ms);
            }
        }
    }
    if let (Some(latency), Some(position)) = (
        event.latency_ms,
        spec.derived_position(SeriesSource::Latency),
    ) {
        sketches[position].record_value(&FeatureValue::Number(latency), edges(position));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FeatureKind, FeatureSpec, Task};

    /// Model `m`: numeric `x`, categorical `c`, these segment keys, two
    /// segment values admitted per key, `max_categories` categories.
    fn spec(segment_keys: &[&str], max_categories: usize) -> ModelSpec {
        ModelSpec::new(
            "m",
            Task::Classification,
            vec![
                FeatureSpec {
                    name: "x".into(),
                    kind: FeatureKind::Numeric,
                },
                FeatureSpec {
                    name: "c".into(),
                    kind: FeatureKind::Categorical,
                },
            ],
            segment_keys.iter().map(|key| key.to_string()).collect(),
            2,
            max_categories,
        )
        .unwrap()
    }

    fn catalog() -> Catalog {
        Catalog::new([spec(&["country"], 10)])
    }

    fn event(x: &str, country: &str) -> String {
        format!(
            r#"{{"model":"m","model_version":"1","prediction_id":"p","timestamp":0,
               "features":{{"x":{x},"c":"a"}},"prediction":{{"score":0.5,"class":"yes"}},
               "segments":{{"country":"{country}"}}}}"#
        )
    }

    fn decode(payload: &str) -> Event<'_> {
        events::decode(payload.as_bytes(), EventKind::Prediction).unwrap()
    }

    #[test]
    fn records_every_segment_and_bounds_segment_values() {
        let catalog = catalog();
        let mut aggregates = WindowAggregates::new(100);
        for (x, country) in [("1", "DE"), ("2", "FR"), ("null", "US"), ("\"bad\"", "DE")] {
            let payload = event(x, country);
            assert_eq!(
                aggregates.record(&catalog, 0, &decode(&payload)),
                Recorded::Added
            );
        }
        let snapshot = aggregates.snapshot(&catalog);
        let find = |segment: &str, feature: &str| {
            snapshot
                .iter()
                .find(|(k, _)| k.segment == segment && k.feature == feature)
                .map(|(_, s)| s.clone())
        };
        let Some(FeatureSketch::Numeric(all_x)) = find("all", "x") else {
            panic!()
        };
        assert_eq!(all_x.moments().count(), 2);
        assert_eq!(all_x.missing(), 1);
        assert_eq!(all_x.type_mismatch(), 1);
        assert!(find("country=DE", "x").is_some());
        assert!(
            find("country=__other__", "x").is_some(),
            "third country overflows"
        );
        assert!(
            find("all", "latency_ms").is_none(),
            "no latency logged, no series"
        );
        let Some(FeatureSketch::Categorical(class)) = find("all", "prediction.class") else {
            panic!()
        };
        assert_eq!(class.counts().get("yes"), Some(&4));
    }

    #[test]
    fn segments_are_the_same_however_events_are_split_into_ranges() {
        use crate::segments::fold_segment_overflow;
        use crate::spec::ModelSpec;
        let spec = ModelSpec::new(
            "m",
            Task::Classification,
            vec![FeatureSpec {
                name: "x".into(),
                kind: FeatureKind::Numeric,
            }],
            vec!["country".into()],
            6,
            10,
        )
        .unwrap()
        .with_segment_values([("country".to_owned(), vec!["c7".to_owned()])])
        .unwrap();
        let catalog = Catalog::new([spec]);
        // 3,000 events over 150 countries with skewed frequencies.
        let countries: Vec<String> = (0..3_000u64)
            .map(|i| format!("c{}", (i * i + 7 * i) % 150 % (1 + i % 97)))
            .collect();
        let payloads: Vec<String> = countries
            .iter()
            .enumerate()
            .map(|(i, c)| event(&format!("{}.25", i % 13), c))
            .collect();
        let counts = |splits: usize, shuffle: u64| {
            let mut ranges: Vec<WindowAggregates> =
                (0..splits).map(|_| WindowAggregates::new(10_000)).collect();
            let mut order: Vec<usize> = (0..payloads.len()).collect();
            order.sort_by_key(|i| crate::distinct::stable_hash(&format!("{i}/{shuffle}")));
            for (n, i) in order.into_iter().enumerate() {
                let range = &mut ranges[n % splits];
                assert_eq!(
                    range.record(&catalog, 0, &decode(&payloads[i])),
                    Recorded::Added
                );
            }
            let mut merged: BTreeMap<SeriesKey, FeatureSketch> = BTreeMap::new();
            for range in &ranges {
                for (key, sketch) in range.snapshot(&catalog) {
                    match merged.get_mut(&key) {
                        Some(existing) => existing.merge(&sketch).unwrap(),
                        None => {
                            merged.insert(key, sketch);
                        }
                    }
                }
            }
            fold_segment_overflow(&catalog, &mut merged).unwrap();
            merged
                .iter()
                .filter(|(key, _)| key.feature == "operations")
                .map(|(key, sketch)| (key.segment.clone(), sketch.observations()))
                .collect::<BTreeMap<String, u64>>()
        };
        // The oracle: pinned c7, then the 5 smallest hashes.
        let mut distinct: Vec<&String> = countries.iter().filter(|c| *c != "c7").collect();
        distinct.sort_by_key(|c| (crate::distinct::stable_hash(c), c.as_str()));
        distinct.dedup();
        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        expected.insert("all".into(), 3_000);
        for country in &countries {
            let admitted = country == "c7" || distinct[..5].contains(&country);
            let segment = if admitted {
                format!("country={country}")
            } else {
                "country=__other__".to_owned()
            };
            *expected.entry(segment).or_default() += 1;
        }
        assert_eq!(expected.len(), 1 + 6 + 1, "all, six admitted, other");
        for (splits, shuffle) in [(1, 0), (1, 1), (3, 2), (8, 3), (40, 4)] {
            assert_eq!(counts(splits, shuffle), expected, "{splits} ranges");
        }
    }

    #[test]
    fn prediction_events_feed_the_operations_series() {
        let catalog = catalog();
        let mut aggregates = WindowAggregates::new(100);
        let payloads = [
            r#"{"model":"m","model_version":"1","prediction_id":"a","timestamp":0,"features":{"x":1},"prediction":{"score":0.5},"latency_ms":10}"#,
            r#"{"model":"m","model_version":"1","prediction_id":"b","timestamp":0,"features":{"x":1},"error":"timeout","latency_ms":2000}"#,
            r#"{"model":"m","model_version":"1","prediction_id":"c","timestamp":0,"features":{"x":1},"prediction":{"score":0.7},"latency_ms":30}"#,
        ];
        for payload in payloads {
            aggregates.record(&catalog, 0, &decode(payload));
        }
        let snapshot = aggregates.snapshot(&catalog);
        let (_, sketch) = snapshot
            .iter()
            .find(|(k, _)| k.segment == "all" && k.feature == "operations")
            .unwrap();
        let FeatureSketch::Operational(operations) = sketch else {
            panic!()
        };
        assert_eq!(operations.predictions(), 3);
        assert_eq!(operations.errors(), 1);
        assert_eq!(operations.null_predictions(), 1);
        let max = operations.latency_max().unwrap();
        assert!((max - 2000.0).abs() <= 2.0, "{max}");
    }

    #[test]
    fn interleaved_windows_versions_and_segments_count_exactly() {
        let catalog = catalog();
        let mut aggregates = WindowAggregates::new(1_000);
        let mut expected: std::collections::BTreeMap<(i64, String, String), u64> =
            Default::default();
        for i in 0..600i64 {
            let window = (i % 3) * 1_000;
            let version = if i % 5 < 2 { "1" } else { "2" };
            let country = ["DE", "FR"][(i % 7 % 2) as usize];
            let payload = format!(
                r#"{{"model":"m","model_version":"{version}","prediction_id":"p","timestamp":0,"features":{{"x":1,"c":"a"}},"prediction":{{"score":0.5}},"segments":{{"country":"{country}"}}}}"#
            );
            aggregates.record(&catalog, window, &decode(&payload));
            *expected
                .entry((window, version.to_owned(), format!("country={country}")))
                .or_default() += 1;
            *expected
                .entry((window, version.to_owned(), "all".to_owned()))
                .or_default() += 1;
        }
        let counted: std::collections::BTreeMap<(i64, String, String), u64> = aggregates
            .snapshot(&catalog)
            .into_iter()
            .filter(|(key, _)| key.feature == "x")
            .map(|(key, sketch)| {
                (
                    (key.window_start, key.model_version, key.segment),
                    sketch.observations(),
                )
            })
            .collect();
        assert_eq!(counted, expected);
        // `all` is derived when read, not held: one group fewer per window
        // and version.
        let all = expected.keys().filter(|(_, _, s)| s == "all").count();
        assert_eq!(aggregates.group_count(), expected.len() - all);
    }

    #[test]
    fn a_derived_all_equals_all_recorded_event_by_event() {
        // Two segment keys, more countries than admitted (so values go to
        // `__other__` and admitted ones are displaced and folded), events
        // without a key, text in a numeric feature: `all` merged from the
        // first key's segments against `all` of the same events recorded
        // by a model without segment keys.
        let segmented = Catalog::new([spec(&["country", "plan"], 3)]);
        let plain = Catalog::new([spec(&[], 3)]);
        let (mut with_keys, mut without) =
            (WindowAggregates::new(1_000), WindowAggregates::new(1_000));
        for i in 0..2_000u64 {
            let x = match i % 13 {
                0 => "\"bad\"".to_owned(),
                1 => "null".to_owned(),
                _ => format!("{}", (i * 7_919 % 1_000) as f64 / 7.0 - 40.0),
            };
            let country = ["DE", "FR", "US", "IT", "ES"][(i * 31 % 5) as usize];
            let segments = if i % 11 == 0 {
                String::new()
            } else {
                format!(r#""country":"{country}","plan":"p{}""#, i % 4)
            };
            let payload = format!(
                r#"{{"model":"m","model_version":"{}","prediction_id":"p","timestamp":0,"features":{{"x":{x},"c":"k{}"}},"prediction":{{"score":{},"class":"yes"}},"segments":{{{segments}}}}}"#,
                i % 2,
                i % 6,
                (i % 100) as f64 / 100.0
            );
            let event = decode(&payload);
            let window = (i % 3) as i64 * 60_000;
            assert_eq!(
                with_keys.record(&segmented, window, &event),
                Recorded::Added
            );
            assert_eq!(without.record(&plain, window, &event), Recorded::Added);
        }
        assert!(with_keys.take_segment_overflow().displaced > 0);
        let all = |aggregates: &WindowAggregates, catalog: &Catalog| {
            aggregates
                .snapshot(catalog)
                .into_iter()
                .filter(|(key, _)| key.segment == "all")
                .collect::<Vec<_>>()
        };
        let (derived, recorded) = (all(&with_keys, &segmented), all(&without, &plain));
        assert_eq!(derived.len(), recorded.len());
        assert!(!derived.is_empty());
        for ((key, derived), (recorded_key, recorded)) in derived.iter().zip(&recorded) {
            assert_eq!(key, recorded_key);
            match (derived, recorded) {
                (FeatureSketch::Numeric(a), FeatureSketch::Numeric(b)) => {
                    // Counts, bins and quantile buckets exactly; sums up to
                    // rounding (added in another order).
                    assert_eq!(a.moments().count(), b.moments().count(), "{key:?}");
                    assert_eq!(
                        (a.missing(), a.type_mismatch()),
                        (b.missing(), b.type_mismatch())
                    );
                    assert_eq!(a.bin_counts(), b.bin_counts());
                    for q in [0.0, 0.1, 0.5, 0.9, 1.0] {
                        assert_eq!(a.quantile(q), b.quantile(q), "{key:?} q {q}");
                    }
                    let (ma, mb) = (a.moments().mean().unwrap(), b.moments().mean().unwrap());
                    assert!((ma - mb).abs() <= 1e-12 * mb.abs().max(1.0), "{ma} {mb}");
                    let (sa, sb) = (
                        a.moments().std_dev().unwrap(),
                        b.moments().std_dev().unwrap(),
                    );
                    assert!((sa - sb).abs() <= 1e-12 * sb.abs().max(1.0), "{sa} {sb}");
                }
                (FeatureSketch::Categorical(a), FeatureSketch::Categorical(b)) => {
                    assert_eq!(a.counts(), b.counts(), "{key:?}");
                    assert_eq!((a.other(), a.missing()), (b.other(), b.missing()));
                }
                _ => assert_eq!(derived.observations(), recorded.observations(), "{key:?}"),
            }
        }
    }

    #[test]
    fn group_limit_refuses_new_groups_only() {
        let catalog = catalog();
        let mut aggregates = WindowAggregates::new(1);
        let payload = event("1", "DE");
        assert_eq!(
            aggregates.record(&catalog, 0, &decode(&payload)),
            Recorded::Added
        );
        // `country=DE`; `all` is derived from it when read.
        assert_eq!(aggregates.group_count(), 1);
        assert_eq!(
            aggregates.record(&catalog, 1000, &decode(&payload)),
            Recorded::GroupLimit
        );
        assert_eq!(
            aggregates.record(&catalog, 0, &decode(&payload)),
            Recorded::Added
        );
    }

    #[test]
    fn unknown_models_are_reported() {
        let catalog = catalog();
        let mut aggregates = WindowAggregates::new(10);
        let payload = r#"{"model":"other","model_version":"1","timestamp":0,"features":{"x":1}}"#;
        let event = events::decode(payload.as_bytes(), EventKind::Feature).unwrap();
        assert_eq!(
            aggregates.record(&catalog, 0, &event),
            Recorded::UnknownModel
        );
    }

    #[test]
    fn sketches_round_trip_through_bytes() {
        let catalog = catalog();
        let mut aggregates = WindowAggregates::new(10);
        let payload = event("3.5", "DE");
        aggregates.record(&catalog, 0, &decode(&payload));
        for (_, sketch) in aggregates.snapshot(&catalog) {
            let decoded = FeatureSketch::from_bytes(&sketch.to_bytes()).unwrap();
            assert_eq!(decoded.to_bytes(), sketch.to_bytes());
        }
        assert!(FeatureSketch::from_bytes(b"\xff\xff").is_err());
    }
}
