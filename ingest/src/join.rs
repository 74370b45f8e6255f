//! The join of predictions with their labels (actuals), durable across
//! restarts, rebalances and instances.
//!
//! ## What is stored, when
//! - Every prediction with an id is kept, with each checkpoint of the range
//!   it was read in and before that range's partials, in
//!   `pending_predictions` (compactly: window, version, segment labels,
//!   score, class), keyed by (model, join key, version): a range read twice
//!   writes the same rows. [`JoinBuffer`] keeps the recent ones in memory
//!   too, a cache in front of the store.
//! - A label looks for its prediction in memory when it is read. One that
//!   is not there waits in its range until that range is checkpointed: the
//!   driver then looks its prediction up in the store (one batched query
//!   per model; [`crate::driver`]), and the outcome is recorded in the
//!   label's own range, as a joined label found in memory is. So whichever
//!   process or instance read the prediction, and whether or not the topics
//!   are co-partitioned, the label joins once the prediction's range has
//!   been stored.
//! - A label whose prediction is found nowhere is *pending*: it is stored
//!   with its range's checkpoint (`pending_labels`, keyed by its source and
//!   offset), and its source's owner looks again at later checkpoints. When
//!   found, the pair is stored as a *late match* (`late_matches`, keyed by
//!   the label's source and offset and the prediction's version: written
//!   twice, one row), and the prediction's window is finalized again; a
//!   window's `quality` series is the merge of its partials and its late
//!   matches (see [`crate::finalize`]).
//!
//! ## Each label counts once
//! A label is either recorded in its range's partials (joined when read or
//! when its range was stored) or, if it was pending, in a late match; never
//! both. A prediction's row is stored no later than the partials of any
//! label that joined it (same checkpoint or an earlier one, predictions
//! first), so a label's range read again after a crash finds the
//! prediction again and joins it again: the rewritten rows are the same.
//! A label already pending (its row stored) is not joined directly when
//! its range is read again: its source's next owner loads the source's
//! pending labels first ([`crate::driver::Driver::assign`]) and leaves
//! those offsets to the late path.
//!
//! A partition changes owner only after its old owner has stored what it
//! was storing (the revocation waits for the loop; see [`crate::poller`]),
//! so the new owner loads every pending label the old one stored. If that
//! wait times out (a store outage longer than its deadline), a label the
//! old owner stores pending after the new owner loaded the list may be
//! counted twice: once joined by the new owner, once joined late.
//!
//! A prediction and a label join when the label's event time is at most
//! `join_window` after the prediction's (decided by the data, not by when
//! either was read). Each label message counts once: a label logged twice
//! joins twice.
//!
//! ## Bounds
//! - memory: [`JoinBuffer`] holds at most `max_pending_predictions`
//!   predictions (the oldest request dropped first, counted in
//!   `join_evicted`: its label is then found in the store); labels waiting
//!   for a store lookup are those of the ranges not yet checkpointed (at
//!   most a range's worth per source); pending labels retried by an owner:
//!   at most `max_pending_labels` (beyond, the oldest are left to the
//!   store and counted in `pending_labels_dropped`; the source's next owner
//!   loads them again).
//! - store: one `pending_predictions` row per prediction with an id and one
//!   `pending_labels` row per label not found when its range was stored,
//!   both deleted once their event time is more than `join_window` behind
//!   the newest event the instance has read; one `late_matches` row per
//!   pending label joined later, kept as long as the windows.

use std::collections::VecDeque;
use std::sync::Arc;

use detectors::aggregate::PendingPrediction;
use rustc_hash::FxHashMap;
use store::{JoinLabel, JoinLabelValue, JoinPrediction};

use crate::engine::EngineCounters;

/// Predictions waiting for their actuals in memory, bounded in count and
/// age: a cache in front of `pending_predictions` (see the module docs).
///
/// Every version's prediction of a request waits under the same key: a
/// champion and its shadow or canary challenger logged with one request id
/// are both joined by the one actual sent for it, so that the versions are
/// compared on the same labels. A second prediction of the same version
/// replaces the first (a retried log message).
///
/// Entries are keyed by a 128-bit hash of (model, prediction id) rather than
/// the strings. Measured with `cargo run --release -p ingest --example
/// join_memory`: about 254 bytes of resident memory per pending prediction
/// (map entry, order queue, interned strings and segment lists), so the
/// default bound (1,000,000) holds in about 250 MiB. Two distinct pairs
/// share a key with probability about n²/2¹²⁹ (10⁻²⁶ for a million pending).
/// The bound counts predictions; eviction and expiry remove a key's
/// predictions together (the oldest key first).
#[derive(Debug, Default)]
pub(crate) struct JoinBuffer {
    /// key of (model, prediction id) → its pending predictions.
    pending: FxHashMap<u128, Held>,
    /// Predictions held (over every key).
    held: usize,
    /// Insertion order with event time, for expiry and eviction; may hold
    /// entries already matched (skipped when popped, compacted when long).
    order: VecDeque<(i64, u128)>,
}

/// The predictions of one (model, prediction id): one version usually.
#[derive(Debug)]
enum Held {
    One(PendingPrediction),
    Versions(Vec<PendingPrediction>),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::One(_) => 1,
            Held::Versions(all) => all.len(),
        }
    }

    /// Adds `prediction`, replacing one of the same version; the change in
    /// count (0 or 1).
    fn add(&mut self, prediction: PendingPrediction) -> usize {
        match self {
            Held::One(held) if held.model_version == prediction.model_version => {
                *held = prediction;
                0
            }
            Held::One(_) => {
                let Held::One(first) =
                    std::mem::replace(self, Held::Versions(Vec::with_capacity(2)))
                else {
                    unreachable!("matched One above")
                };
                *self = Held::Versions(vec![first, prediction]);
                1
            }
            Held::Versions(all) => match all
                .iter_mut()
                .find(|held| held.model_version == prediction.model_version)
            {
                Some(held) => {
                    *held = prediction;
                    0
                }
                None => {
                    all.push(prediction);
                    1
                }
            },
        }
    }

    fn into_vec(self) -> Vec<PendingPrediction> {
        match self {
            Held::One(prediction) => vec![prediction],
            Held::Versions(all) => all,
        }
    }
}

/// The join key of a prediction id of a model.
pub(crate) fn join_key(model: &str, id: &str) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&(model.len() as u64).to_le_bytes());
    hasher.update(model.as_bytes());
    hasher.update(id.as_bytes());
    hasher.digest128()
}

impl JoinBuffer {
    pub(crate) fn insert(
        &mut self,
        key: u128,
        prediction: PendingPrediction,
        max_pending: usize,
        counters: &mut EngineCounters,
    ) {
        while self.held >= max_pending {
            let Some((_, key)) = self.order.pop_front() else {
                break;
            };
            if let Some(removed) = self.pending.remove(&key) {
                self.held -= removed.len();
                counters.join_evicted += removed.len() as u64;
            }
        }
        if max_pending == 0 {
            counters.join_evicted += 1;
            return;
        }
        self.order.push_back((prediction.event_time, key));
        match self.pending.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut held) => {
                self.held += held.get_mut().add(prediction);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Held::One(prediction));
                self.held += 1;
            }
        }
        if self.order.len() > 2 * max_pending.max(1024) {
            let pending = &self.pending;
            self.order.retain(|(_, key)| pending.contains_key(key));
        }
    }

    /// Every version's prediction held under `key`, removed.
    pub(crate) fn take(&mut self, key: u128) -> Vec<PendingPrediction> {
        match self.pending.remove(&key) {
            Some(held) => {
                self.held -= held.len();
                held.into_vec()
            }
            None => Vec::new(),
        }
    }

    /// Drops predictions older than `oldest` (event time).
    pub(crate) fn expire(&mut self, oldest: i64, counters: &mut EngineCounters) {
        while self.order.front().is_some_and(|(time, _)| *time < oldest) {
            let (_, key) = self.order.pop_front().expect("checked above");
            if let Some(removed) = self.pending.remove(&key) {
                self.held -= removed.len();
                counters.join_expired += removed.len() as u64;
            }
        }
    }
}

/// The join key as stored: 32 hex digits.
pub(crate) fn key_text(key: u128) -> String {
    format!("{key:032x}")
}

/// The stored form of a prediction held for the join.
pub(crate) fn stored_prediction(
    model: &str,
    key: u128,
    prediction: &PendingPrediction,
) -> JoinPrediction {
    JoinPrediction {
        model: model.to_owned(),
        key: key_text(key),
        model_version: prediction.model_version.to_string(),
        window_start: prediction.window_start,
        time_ms: prediction.event_time,
        segments: prediction.segments.iter().map(|s| s.to_string()).collect(),
        score: prediction.score,
        class: prediction.class.as_deref().map(str::to_owned),
    }
}

/// A stored prediction as the aggregates record its outcome.
pub(crate) fn pending_of(stored: &JoinPrediction) -> PendingPrediction {
    PendingPrediction {
        window_start: stored.window_start,
        event_time: stored.time_ms,
        model_version: Arc::from(stored.model_version.as_str()),
        segments: stored
            .segments
            .iter()
            .map(|segment| Arc::from(segment.as_str()))
            .collect(),
        score: stored.score,
        class: stored.class.as_deref().map(Arc::from),
    }
}

/// The stored form of a label.
pub(crate) fn stored_label(label: &events::Label<'_>) -> JoinLabelValue {
    match label {
        events::Label::Number(number) => JoinLabelValue::Number(*number),
        events::Label::Class(class) => JoinLabelValue::Class(class.to_string()),
    }
}

/// A stored label as the aggregates take it.
pub(crate) fn label_of(value: &JoinLabelValue) -> events::Label<'_> {
    match value {
        JoinLabelValue::Number(number) => events::Label::Number(*number),
        JoinLabelValue::Class(class) => events::Label::Class(class.as_str().into()),
    }
}

/// Whether a label at `label_time` may join a prediction at
/// `prediction_time`: at most `join_window_ms` after it.
pub(crate) fn joinable(label_time: i64, prediction_time: i64, join_window_ms: i64) -> bool {
    prediction_time >= label_time.saturating_sub(join_window_ms)
}

/// A label read while its prediction was not in memory: it waits in its
/// range for the store lookup made before the range is checkpointed.
#[derive(Debug, Clone)]
pub(crate) struct UnjoinedLabel {
    /// Everything the pending row would hold.
    pub(crate) label: JoinLabel,
    /// The join key (as `label.key`, unparsed).
    pub(crate) key: u128,
}

/// Stored predictions by model, then join key, as a lookup answered them
/// (looked up by `&str`: no allocation per label).
#[derive(Debug, Default)]
pub struct FoundPredictions {
    by_model: FxHashMap<String, FxHashMap<String, Vec<JoinPrediction>>>,
}

impl FoundPredictions {
    /// Indexes what the store returned.
    pub fn new(found: Vec<JoinPrediction>) -> Self {
        let mut by_model: FxHashMap<String, FxHashMap<String, Vec<JoinPrediction>>> =
            FxHashMap::default();
        for prediction in found {
            by_model
                .entry(prediction.model.clone())
                .or_default()
                .entry(prediction.key.clone())
                .or_default()
                .push(prediction);
        }
        Self { by_model }
    }

    /// The predictions of `label` that it may join.
    pub(crate) fn for_label<'a>(
        &'a self,
        label: &'a JoinLabel,
        join_window_ms: i64,
    ) -> impl Iterator<Item = &'a JoinPrediction> + 'a {
        self.by_model
            .get(label.model.as_str())
            .and_then(|by_key| by_key.get(label.key.as_str()))
            .into_iter()
            .flatten()
            .filter(move |prediction| joinable(label.time_ms, prediction.time_ms, join_window_ms))
    }
}

/// Keys to look up, per model (sorted, without repeats).
pub type Lookups = std::collections::BTreeMap<String, Vec<String>>;

pub(crate) fn add_lookup(lookups: &mut Lookups, label: &JoinLabel) {
    lookups
        .entry(label.model.clone())
        .or_default()
        .push(label.key.clone());
}

pub(crate) fn finish_lookups(lookups: &mut Lookups) {
    for keys in lookups.values_mut() {
        keys.sort_unstable();
        keys.dedup();
    }
}

/// Pending labels a source's owner looks up again at each retry, oldest
/// first, and the offsets of every label of the source known pending.
#[derive(Debug, Default)]
pub(crate) struct PendingLabels {
    pub(crate) retry: VecDeque<JoinLabel>,
    /// Offsets of the source's labels stored pending (by this owner or an
    /// earlier one): read again, they are left to the late path.
    pub(crate) known: rustc_hash::FxHashSet<u64>,
}
