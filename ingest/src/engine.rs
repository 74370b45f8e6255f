//! The synchronous core of ingestion: payloads in, checkpoint partials and
//! closed windows out. No I/O: the Kafka loop and the file replay both drive it.
//!
//! ## Sources and offset ranges
//! A *source* is one ordered stream with offsets: a Kafka `topic/partition`,
//! or a replayed file (`file:NAME`, offsets = line numbers). Offsets are cut
//! into fixed ranges of `range_size` (`[k·R, (k+1)·R)`); the engine keeps the
//! sketches of the current range of each source, and a checkpoint writes them
//! as `window_partials` rows keyed by (source, range start, series), with the
//! next offset as the row's version.
//!
//! Because Kafka partitions are immutable logs, the sketch of the first `n`
//! offsets of a range is the same whoever computes it, so a row with a higher
//! version always contains a row with a lower one. A consumer that restarts
//! rewinds to the start of the range holding its committed offset
//! ([`range_start_of`]) and recomputes: rewrites are idempotent and nothing is
//! counted twice. (Exception: late-event decisions depend on the watermark,
//! which a restarted consumer rebuilds from the range start, so an event
//! dropped as late before a crash may be counted after it.)
//!
//! ## Windows
//! Each source has an [`EventTimeClock`]: an event is *late* only when its
//! own source's event time has moved past its window's end plus the allowed
//! lateness. No schedule makes an event late: not a pause in traffic, not
//! another partition running ahead, not an idle close.
//!
//! The engine's watermark is the minimum over the sources that are not
//! *idle*. A source is registered when its partition is assigned
//! ([`Engine::assign`]) and holds the watermark back until it delivers an
//! event or its reader marks it idle ([`Engine::set_idle`]: nothing left to
//! read there); an idle source is left out of the minimum (not advanced),
//! and becomes active again with its next message. A window is *closed*
//! once the watermark passes its end; the caller then checkpoints and
//! finalizes it (see [`crate::finalize`]).
//!
//! [`Engine::close_all`] (end of a replay, or no event for
//! `idle_close_after`) asks for every window held to be finalized once,
//! *provisionally*: no clock moves, so an event of such a window read
//! later is recorded (not late) and puts the window back on the list, and
//! the window is finalized again with it.
//!
//! ## Windows still to finalize
//! Each source keeps the windows it recorded into (its events, or the
//! actuals it joined to earlier predictions) since each was last finalized
//! ([`Engine::unfinalized_windows`]). The Kafka loop stores that list with
//! every commit (`source_progress`), and a source's next owner starts from
//! it ([`Engine::restore_unfinalized`]): a window whose partials were
//! committed is finalized by someone even when nobody reads its events
//! again.

//! ## Bounds
//! - groups per range: `max_groups` (see `detectors::aggregate`); events that
//!   would exceed it are refused and counted in `group_limit_events`.
//! - sealed ranges wait for the next checkpoint; [`Engine::needs_checkpoint`]
//!   turns true as soon as one exists, and the driver checkpoints before
//!   reading on.
//! - windows tracked for finalization: one entry per (source, model,
//!   window), dropped when the window is finalized.

use std::collections::{BTreeMap, BTreeSet};

use detectors::aggregate::{PendingPrediction, Recorded};
use detectors::catalog::Catalog;
use detectors::window::{Arrival, EventTimeClock, WindowSize};
use detectors::WindowAggregates;
use events::{EventKind, Format};
use rustc_hash::FxHashMap;
use store::{JoinLabel, JoinPrediction, LateMatch, PartialSketch};

use crate::join::{
    add_lookup, finish_lookups, join_key, joinable, key_text, label_of, pending_of, stored_label,
    stored_prediction, FoundPredictions, JoinBuffer, Lookups, PendingLabels, UnjoinedLabel,
};

/// Validated engine settings: built by [`EngineSettings::new`] with the
/// defaults of `[windows]`, changed by the `with_*` methods, whose argument
/// types admit only valid values.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Tumbling window size.
    pub(crate) window_size: WindowSize,
    /// How far behind the largest event time an event may arrive, ms.
    pub(crate) allowed_lateness_ms: i64,
    /// Offsets per checkpoint range.
    pub(crate) range_size: u64,
    /// Groups (window × model × version × segment) per range.
    pub(crate) max_groups: usize,
    /// How long (event time, ms) a prediction waits for its actual.
    pub(crate) join_window_ms: i64,
    /// Predictions held in memory for the join; when full, the oldest is
    /// dropped from memory (counted in `join_evicted`; the store still has
    /// it). 0 turns the join off: no prediction is kept, every actual is
    /// unmatched.
    pub(crate) max_pending_predictions: usize,
    /// Pending labels (prediction not found yet) an owner retries; beyond,
    /// the oldest are left to the store (see [`crate::join`]).
    pub(crate) max_pending_labels: usize,
    /// Whether the join is durable (predictions stored, labels looked up
    /// in the store, pending labels retried; see [`crate::join`]) or in
    /// memory only (a label whose prediction is not in memory is
    /// unmatched).
    pub(crate) durable_join: bool,
    /// How far ahead of the wall clock an event time may be, ms. An event
    /// further ahead would move its partition's event-time clock and make
    /// every later valid event late, so it is refused as malformed (and
    /// dead-lettered with the reason).
    pub(crate) max_future_skew_ms: i64,
    /// Sampled prediction ids: those whose hash is below this share of
    /// 2⁶⁴ (see [`Engine`]'s docs on the training sample).
    pub(crate) sample_threshold: u64,
    /// Sampled rows (predictions and labels each) kept per range at most;
    /// beyond, they are counted in `sample_overflow` and not kept.
    pub(crate) max_samples_per_range: usize,
}

/// Defaults of `[windows]` (documented in README's configuration table).
pub(crate) mod defaults {
    use std::time::Duration;

    pub const ALLOWED_LATENESS: Duration = Duration::from_secs(300);
    pub const RANGE_SIZE: u64 = 100_000;
    pub const MAX_GROUPS: usize = 50_000;
    pub const JOIN_WINDOW: Duration = Duration::from_secs(7 * 86_400);
    pub const MAX_PENDING_PREDICTIONS: usize = 1_000_000;
    pub const MAX_PENDING_LABELS: usize = 100_000;
    pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(3600);
    pub const SAMPLE_RATE: f64 = 0.1;
    pub const MAX_SAMPLES_PER_RANGE: usize = 10_000;
}

/// Milliseconds of a duration, saturating (durations past `i64::MAX` ms are
/// about 292 million years).
/// The hash threshold keeping `rate` of all ids.
fn sample_threshold(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else if rate > 0.0 {
        (rate * 18_446_744_073_709_551_616.0) as u64
    } else {
        0
    }
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl EngineSettings {
    /// Windows of `window_size`; everything else as `[windows]`'s defaults.
    pub fn new(window_size: WindowSize) -> Self {
        Self {
            window_size,
            allowed_lateness_ms: millis(defaults::ALLOWED_LATENESS),
            range_size: defaults::RANGE_SIZE,
            max_groups: defaults::MAX_GROUPS,
            join_window_ms: millis(defaults::JOIN_WINDOW),
            max_pending_predictions: defaults::MAX_PENDING_PREDICTIONS,
            max_pending_labels: defaults::MAX_PENDING_LABELS,
            durable_join: true,
            max_future_skew_ms: millis(defaults::MAX_FUTURE_SKEW),
            sample_threshold: sample_threshold(defaults::SAMPLE_RATE),
            max_samples_per_range: defaults::MAX_SAMPLES_PER_RANGE,
        }
    }

    /// The training sample: the share of prediction ids kept (clamped to
    /// [0, 1]) and the rows kept per range at most.
    pub fn with_sample(mut self, rate: f64, max_per_range: usize) -> Self {
        self.sample_threshold = sample_threshold(rate);
        self.max_samples_per_range = max_per_range;
        self
    }

    /// How far behind the largest event time an event may arrive.
    pub fn with_allowed_lateness(mut self, lateness: std::time::Duration) -> Self {
        self.allowed_lateness_ms = millis(lateness);
        self
    }

    /// Offsets per checkpoint range.
    pub fn with_range_size(mut self, range_size: std::num::NonZeroU64) -> Self {
        self.range_size = range_size.get();
        self
    }

    /// Groups (window × model × version × segment) per range.
    pub fn with_max_groups(mut self, max_groups: std::num::NonZeroUsize) -> Self {
        self.max_groups = max_groups.get();
        self
    }

    /// A durable join (the default) or one in memory only.
    pub fn with_durable_join(mut self, durable: bool) -> Self {
        self.durable_join = durable;
        self
    }

    /// Pending labels retried by an owner at most.
    pub fn with_max_pending_labels(mut self, max: usize) -> Self {
        self.max_pending_labels = max;
        self
    }

    /// How long (event time) a prediction waits for its actual, and how many
    /// predictions wait in memory at most (0: the join is off, every actual
    /// is unmatched).
    pub fn with_join(mut self, window: std::time::Duration, max_pending: usize) -> Self {
        self.join_window_ms = millis(window);
        self.max_pending_predictions = max_pending;
        self
    }

    /// How far ahead of the wall clock an event time may be.
    pub fn with_max_future_skew(mut self, skew: std::time::Duration) -> Self {
        self.max_future_skew_ms = millis(skew);
        self
    }

    /// Tumbling window size.
    pub fn window_size(&self) -> WindowSize {
        self.window_size
    }

    /// Offsets per checkpoint range.
    pub fn range_size(&self) -> u64 {
        self.range_size
    }
}

/// Whether prediction id `id` of `model` is in the training sample: its
/// hash is below `threshold`. The hash is the join key's, so every version
/// of a request and its label are sampled together.
fn sampled(threshold: u64, model: &str, id: &str) -> bool {
    threshold == u64::MAX || ((join_key(model, id) >> 64) as u64) < threshold
}

/// Whether prediction id `id` of `model` is in a training sample of
/// `rate` (what the engine decides; for readers that must know).
pub fn in_training_sample(rate: f64, model: &str, id: &str) -> bool {
    sampled(sample_threshold(rate), model, id)
}

/// The sampled row of a prediction event.
fn sampled_prediction(
    event: &events::Event<'_>,
    id: &str,
    window_start: i64,
) -> store::SampledPrediction {
    let features: serde_json::Map<String, serde_json::Value> = event
        .features
        .iter()
        .map(|(name, value)| {
            let value = match value {
                events::FeatureValue::Number(number) => serde_json::Number::from_f64(*number)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number),
                events::FeatureValue::Text(text) => serde_json::Value::String(text.to_string()),
                events::FeatureValue::Null => serde_json::Value::Null,
            };
            (name.to_string(), value)
        })
        .collect();
    let prediction = event.prediction.as_ref();
    store::SampledPrediction {
        model: event.model.to_string(),
        model_version: event.model_version.to_string(),
        prediction_id: id.to_owned(),
        window_start,
        time_ms: event.timestamp_ms,
        features: serde_json::Value::Object(features).to_string(),
        score: prediction.and_then(|p| p.score),
        class: prediction
            .and_then(|p| p.predicted_class())
            .unwrap_or_default()
            .to_owned(),
    }
}

/// The sampled row of an actual event.
fn sampled_label(
    event: &events::Event<'_>,
    id: &str,
    label: &events::Label<'_>,
) -> store::SampledLabel {
    let (text, value) = match label {
        events::Label::Number(number) => (number.to_string(), Some(*number)),
        events::Label::Class(class) => (class.to_string(), None),
    };
    store::SampledLabel {
        model: event.model.to_string(),
        prediction_id: id.to_owned(),
        time_ms: event.timestamp_ms,
        label: text,
        value,
    }
}

/// The start of the fixed range holding `offset`.
pub fn range_start_of(offset: u64, range_size: u64) -> u64 {
    offset / range_size * range_size
}

/// What happened to one payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Recorded in its window.
    Recorded,
    /// Its window had closed; dropped and counted.
    Late,
    /// Not decodable; the reason goes to the dead-letter destination.
    Malformed(String),
    /// Its model is not configured; dropped and counted.
    UnknownModel,
    /// The range's group limit was reached; dropped and counted.
    GroupLimit,
}

/// Counters of what the engine did (monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Events recorded in a window.
    pub recorded: u64,
    /// Events dropped because their window had closed.
    pub late: u64,
    /// Payloads that could not be decoded.
    pub malformed: u64,
    /// Events of models not in the config.
    pub unknown_model: u64,
    /// Events refused by the group limit.
    pub group_limit: u64,
    /// Predictions joined with an actual (every version of a request
    /// counts), when read, when the label's range was stored, or later.
    pub joined: u64,
    /// Actuals whose prediction was found neither in memory nor in the
    /// store when their range was stored: they wait as pending labels.
    pub unmatched_actuals: u64,
    /// Pending labels joined later (late matches stored).
    pub late_joined: u64,
    /// Pending labels given up: no prediction within the join window.
    pub pending_labels_expired: u64,
    /// Pending labels over `max_pending_labels`, left to the store.
    pub pending_labels_dropped: u64,
    /// Predictions that left memory by age (the store still has them).
    pub join_expired: u64,
    /// Predictions that left memory because it was full (the store still
    /// has them).
    pub join_evicted: u64,
    /// Event segment values counted under `key=__other__` on arrival.
    pub segment_overflow_events: u64,
    /// Admitted segment values displaced in a range (folded into `__other__`).
    pub segment_values_displaced: u64,
    /// Sampled rows (predictions or labels) not kept: their range was full.
    pub sample_overflow: u64,
}

#[derive(Debug)]
struct RangeState {
    range_start: u64,
    /// One past the last offset read.
    next_offset: u64,
    aggregates: WindowAggregates,
    /// Read since the last checkpoint.
    dirty: bool,
    /// Sampled rows not yet stored.
    samples: Vec<store::SampledPrediction>,
    labels: Vec<store::SampledLabel>,
    /// Sampled rows kept in the range so far (stored ones included).
    sampled_predictions: usize,
    sampled_labels: usize,
    /// Predictions recorded since the last checkpoint, by model, with
    /// their join keys: stored for the durable join with the checkpoint.
    predictions: FxHashMap<String, Vec<(u128, PendingPrediction)>>,
    /// Labels that missed memory, waiting for the store lookup made before
    /// the checkpoint ([`Engine::lookups`]).
    unjoined: Vec<UnjoinedLabel>,
    /// Labels found nowhere by that lookup: stored pending with the
    /// checkpoint.
    pending_labels: Vec<JoinLabel>,
}

#[derive(Debug)]
struct SourceState {
    clock: EventTimeClock,
    /// Marked idle by the reader (nothing left to read): left out of the
    /// watermark until the source's next message.
    idle: bool,
    current: Option<RangeState>,
    sealed: Vec<RangeState>,
    /// Windows this source recorded into since each was last finalized.
    unfinalized: OpenWindows,
    /// This source's labels still waiting for their predictions.
    pending: PendingLabels,
}

impl SourceState {
    fn new(settings: &EngineSettings) -> Self {
        Self {
            clock: EventTimeClock::new(settings.window_size, settings.allowed_lateness_ms),
            idle: false,
            current: None,
            sealed: Vec::new(),
            unfinalized: OpenWindows::default(),
            pending: PendingLabels::default(),
        }
    }
}

/// Windows (start, model) recorded into and not yet finalized, in order of
/// start. Looked up by `&str` for every recorded event, so without copying
/// the model's name (a set of `(i64, String)` pairs could not be).
#[derive(Debug, Default)]
struct OpenWindows {
    by_start: BTreeMap<i64, BTreeSet<String>>,
}

impl OpenWindows {
    fn insert(&mut self, window_start: i64, model: &str) {
        let models = self.by_start.entry(window_start).or_default();
        if !models.contains(model) {
            models.insert(model.to_owned());
        }
    }

    fn remove(&mut self, window_start: i64, model: &str) {
        if let Some(models) = self.by_start.get_mut(&window_start) {
            models.remove(model);
            if models.is_empty() {
                self.by_start.remove(&window_start);
            }
        }
    }

    /// (start, model) of the windows, oldest first, while `ended(start)`.
    fn ending_by<'a>(
        &'a self,
        ended: impl Fn(i64) -> bool + 'a,
    ) -> impl Iterator<Item = (i64, &'a str)> + 'a {
        self.by_start
            .iter()
            .take_while(move |(start, _)| ended(**start))
            .flat_map(|(start, models)| models.iter().map(|model| (*start, model.as_str())))
    }

    #[cfg(test)]
    fn contains(&self, window_start: i64, model: &str) -> bool {
        self.by_start
            .get(&window_start)
            .is_some_and(|models| models.contains(model))
    }
}

/// Records the outcome of `label` joined with `pending` in `range` (the
/// label's), and puts the prediction's window on the source's list.
fn record_joined(
    catalog: &Catalog,
    range: &mut RangeState,
    unfinalized: &mut OpenWindows,
    counters: &mut EngineCounters,
    label: &JoinLabel,
    pending: &PendingPrediction,
) {
    let recorded =
        range
            .aggregates
            .record_outcome(catalog, &label.model, pending, &label_of(&label.value));
    counters.segment_values_displaced += range.aggregates.take_segment_overflow().displaced;
    if recorded == Recorded::Added {
        counters.joined += 1;
        unfinalized.insert(pending.window_start, &label.model);
    }
}

/// What a checkpoint must store, then commit.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// Rows for `window_partials`.
    pub partials: Vec<PartialSketch>,
    /// Per source, the next offset to commit once the partials are stored.
    pub commits: Vec<(String, u64)>,
    /// Sampled predictions and labels for the training sample.
    pub samples: Vec<store::SampledPrediction>,
    pub labels: Vec<store::SampledLabel>,
    /// Predictions for the durable join, stored before the partials.
    pub predictions: Vec<JoinPrediction>,
    /// Labels found nowhere, stored pending before the partials.
    pub pending_labels: Vec<JoinLabel>,
}

/// The ingestion core. See the module docs.
#[derive(Debug)]
pub struct Engine {
    settings: EngineSettings,
    catalog: Catalog,
    sources: BTreeMap<String, SourceState>,
    /// Set by [`Engine::close_all`]: the next [`Engine::take_closed_windows`]
    /// returns every window held, closed or not.
    close_requested: bool,
    counters: EngineCounters,
    join: JoinBuffer,
    /// The wall clock, ms since the epoch (injected so tests can move it).
    clock: fn() -> i64,
    /// Event times up to this are accepted without reading the clock:
    /// the clock plus `max_future_skew_ms` when last read.
    future_limit_ms: i64,
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn system_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

impl Engine {
    /// An engine with no sources yet, on the system clock.
    pub fn new(settings: EngineSettings, catalog: Catalog) -> Self {
        Self::with_clock(settings, catalog, system_clock_ms)
    }

    /// An engine whose wall clock is `clock` (ms since the epoch).
    pub fn with_clock(settings: EngineSettings, catalog: Catalog, clock: fn() -> i64) -> Self {
        Self {
            settings,
            catalog,
            sources: BTreeMap::new(),
            close_requested: false,
            counters: EngineCounters::default(),
            join: JoinBuffer::default(),
            clock,
            future_limit_ms: i64::MIN,
        }
    }

    /// The models and references in use.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Mutable access to the catalog (to install a reference profile).
    pub fn catalog_mut(&mut self) -> &mut Catalog {
        &mut self.catalog
    }

    /// The settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// What the engine has done so far.
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Decodes and records one payload read at `offset` of `source`
    /// (`format`: an [`EventKind`] alone for JSON).
    pub fn ingest(
        &mut self,
        source: &str,
        offset: u64,
        payload: &[u8],
        format: impl Into<Format>,
    ) -> Ingested {
        let format = format.into();
        let settings = &self.settings;
        // Looked up before inserting: the entry API would copy `source` for
        // every message.
        if !self.sources.contains_key(source) {
            self.sources
                .insert(source.to_owned(), SourceState::new(settings));
        }
        let state = self.sources.get_mut(source).expect("inserted above");
        state.idle = false;
        let range_start = range_start_of(offset, settings.range_size);
        if state
            .current
            .as_ref()
            .is_some_and(|range| range.range_start != range_start)
        {
            state.sealed.extend(state.current.take());
        }
        let range = state.current.get_or_insert_with(|| RangeState {
            range_start,
            next_offset: offset,
            aggregates: WindowAggregates::new(settings.max_groups),
            dirty: false,
            samples: Vec::new(),
            labels: Vec::new(),
            sampled_predictions: 0,
            sampled_labels: 0,
            predictions: FxHashMap::default(),
            unjoined: Vec::new(),
            pending_labels: Vec::new(),
        });
        range.next_offset = range.next_offset.max(offset + 1);
        range.dirty = true;

        let event = match format.decode(payload) {
            Ok(event) => event,
            Err(error) => {
                self.counters.malformed += 1;
                return Ingested::Malformed(error.to_string());
            }
        };
        if event.timestamp_ms > self.future_limit_ms {
            let now = (self.clock)();
            self.future_limit_ms = now.saturating_add(settings.max_future_skew_ms);
            if event.timestamp_ms > self.future_limit_ms {
                self.counters.malformed += 1;
                return Ingested::Malformed(format!(
                    "field `timestamp`: {} ms is {} s ahead of the wall clock (at most {} s allowed, `windows.max_future_skew`)",
                    event.timestamp_ms,
                    (event.timestamp_ms - now) / 1000,
                    settings.max_future_skew_ms / 1000
                ));
            }
        }
        self.join.expire(
            event.timestamp_ms.saturating_sub(settings.join_window_ms),
            &mut self.counters,
        );
        // An actual joins its prediction whatever its own lateness: quality
        // belongs to the prediction's window, however long ago that closed.
        if let (EventKind::Actual, Some(id), Some(label)) =
            (event.kind, &event.prediction_id, &event.label)
        {
            if sampled(settings.sample_threshold, &event.model, id)
                && self.catalog.model(&event.model).is_some()
            {
                if range.sampled_labels < settings.max_samples_per_range {
                    range.sampled_labels += 1;
                    range.labels.push(sampled_label(&event, id, label));
                } else {
                    self.counters.sample_overflow += 1;
                }
            }
            if settings.max_pending_predictions > 0
                && self.catalog.model(&event.model).is_some()
                && !state.pending.known.contains(&offset)
            {
                let key = join_key(&event.model, id);
                let mut joined = false;
                for pending in self.join.take(key) {
                    if !joinable(
                        event.timestamp_ms,
                        pending.event_time,
                        settings.join_window_ms,
                    ) {
                        continue;
                    }
                    joined = true;
                    let recorded = range.aggregates.record_outcome(
                        &self.catalog,
                        &event.model,
                        &pending,
                        label,
                    );
                    self.counters.segment_values_displaced +=
                        range.aggregates.take_segment_overflow().displaced;
                    if recorded == Recorded::Added {
                        self.counters.joined += 1;
                        state.unfinalized.insert(pending.window_start, &event.model);
                    }
                }
                if !joined && !settings.durable_join {
                    self.counters.unmatched_actuals += 1;
                } else if !joined {
                    range.unjoined.push(UnjoinedLabel {
                        label: JoinLabel {
                            source: source.to_owned(),
                            offset,
                            model: event.model.to_string(),
                            key: key_text(key),
                            time_ms: event.timestamp_ms,
                            value: stored_label(label),
                        },
                        key,
                    });
                }
            }
        }
        let window_start = match state.clock.observe(event.timestamp_ms) {
            Arrival::OnTime { window_start } => window_start,
            Arrival::Late { .. } => {
                self.counters.late += 1;
                return Ingested::Late;
            }
        };
        let recorded = range.aggregates.record(&self.catalog, window_start, &event);
        let overflow = range.aggregates.take_segment_overflow();
        self.counters.segment_overflow_events += overflow.events;
        self.counters.segment_values_displaced += overflow.displaced;
        match recorded {
            Recorded::Added => {
                self.counters.recorded += 1;
                if let (EventKind::Prediction, Some(id)) = (event.kind, &event.prediction_id) {
                    if sampled(settings.sample_threshold, &event.model, id) {
                        if range.sampled_predictions < settings.max_samples_per_range {
                            range.sampled_predictions += 1;
                            range
                                .samples
                                .push(sampled_prediction(&event, id, window_start));
                        } else {
                            self.counters.sample_overflow += 1;
                        }
                    }
                }
                if settings.max_pending_predictions > 0 {
                    if let (Some(id), Some(pending)) = (
                        event.prediction_id.as_ref(),
                        range
                            .aggregates
                            .pending_prediction(&self.catalog, window_start, &event),
                    ) {
                        let key = join_key(&event.model, id);
                        if settings.durable_join {
                            if !range.predictions.contains_key(event.model.as_ref()) {
                                range
                                    .predictions
                                    .insert(event.model.to_string(), Vec::new());
                            }
                            range
                                .predictions
                                .get_mut(event.model.as_ref())
                                .expect("inserted above")
                                .push((key, pending.clone()));
                        }
                        self.join.insert(
                            key,
                            pending,
                            settings.max_pending_predictions,
                            &mut self.counters,
                        );
                    }
                }
                state.unfinalized.insert(window_start, &event.model);
                Ingested::Recorded
            }
            Recorded::UnknownModel => {
                self.counters.unknown_model += 1;
                Ingested::UnknownModel
            }
            Recorded::GroupLimit => {
                self.counters.group_limit += 1;
                Ingested::GroupLimit
            }
        }
    }

    /// The join keys to look up in the store before the next checkpoint:
    /// labels that missed memory when read. Labels whose prediction has
    /// reached memory since are joined now and need no lookup.
    pub fn lookups(&mut self) -> Lookups {
        let mut lookups = Lookups::new();
        let join_window_ms = self.settings.join_window_ms;
        for state in self.sources.values_mut() {
            let current = state.current.iter_mut();
            for range in state.sealed.iter_mut().chain(current) {
                let unjoined = std::mem::take(&mut range.unjoined);
                for waiting in unjoined {
                    let held: Vec<PendingPrediction> = self
                        .join
                        .take(waiting.key)
                        .into_iter()
                        .filter(|pending| {
                            joinable(waiting.label.time_ms, pending.event_time, join_window_ms)
                        })
                        .collect();
                    if held.is_empty() {
                        add_lookup(&mut lookups, &waiting.label);
                        range.unjoined.push(waiting);
                        continue;
                    }
                    for pending in &held {
                        record_joined(
                            &self.catalog,
                            range,
                            &mut state.unfinalized,
                            &mut self.counters,
                            &waiting.label,
                            pending,
                        );
                    }
                }
            }
        }
        finish_lookups(&mut lookups);
        lookups
    }

    /// Joins the labels waiting for [`Engine::lookups`] with the stored
    /// predictions `found`; those found nowhere become pending, stored with
    /// the next checkpoint.
    pub fn resolve_lookups(&mut self, found: &FoundPredictions) {
        let join_window_ms = self.settings.join_window_ms;
        for state in self.sources.values_mut() {
            let current = state.current.iter_mut();
            for range in state.sealed.iter_mut().chain(current) {
                for waiting in std::mem::take(&mut range.unjoined) {
                    let mut joined = false;
                    for stored in found.for_label(&waiting.label, join_window_ms) {
                        joined = true;
                        record_joined(
                            &self.catalog,
                            range,
                            &mut state.unfinalized,
                            &mut self.counters,
                            &waiting.label,
                            &pending_of(stored),
                        );
                    }
                    if !joined {
                        self.counters.unmatched_actuals += 1;
                        range.pending_labels.push(waiting.label);
                    }
                }
            }
        }
    }

    /// The join keys of the pending labels to look for again; labels
    /// whose join window has passed (by the newest event time read) are
    /// given up first.
    pub fn retry_lookups(&mut self) -> Lookups {
        let join_window_ms = self.settings.join_window_ms;
        let newest = self.newest_event_time();
        let mut lookups = Lookups::new();
        for state in self.sources.values_mut() {
            if let Some(newest) = newest {
                let before = state.pending.retry.len();
                state
                    .pending
                    .retry
                    .retain(|label| label.time_ms.saturating_add(join_window_ms) >= newest);
                self.counters.pending_labels_expired += (before - state.pending.retry.len()) as u64;
            }
            for label in &state.pending.retry {
                add_lookup(&mut lookups, label);
            }
        }
        finish_lookups(&mut lookups);
        lookups
    }

    /// The late matches of pending labels with the stored predictions
    /// `found` (nothing changes until [`Engine::late_matches_stored`]).
    pub fn late_matches(&self, found: &FoundPredictions) -> Vec<LateMatch> {
        let join_window_ms = self.settings.join_window_ms;
        self.sources
            .values()
            .flat_map(|state| state.pending.retry.iter())
            .flat_map(|label| {
                found
                    .for_label(label, join_window_ms)
                    .map(move |prediction| LateMatch {
                        label: label.clone(),
                        prediction: prediction.clone(),
                    })
            })
            .collect()
    }

    /// Marks `matches` stored: their labels leave the retry lists, and the
    /// predictions' windows go on the label sources' lists of windows to
    /// finalize.
    pub fn late_matches_stored(&mut self, matches: &[LateMatch]) {
        let mut matched: BTreeSet<(&str, u64)> = BTreeSet::new();
        for late in matches {
            let Some(state) = self.sources.get_mut(&late.label.source) else {
                continue;
            };
            state
                .unfinalized
                .insert(late.prediction.window_start, &late.prediction.model);
            self.counters.joined += 1;
            matched.insert((&late.label.source, late.label.offset));
        }
        for (source, state) in &mut self.sources {
            let before = state.pending.retry.len();
            state
                .pending
                .retry
                .retain(|label| !matched.contains(&(source.as_str(), label.offset)));
            self.counters.late_joined += (before - state.pending.retry.len()) as u64;
        }
    }

    /// Registers `source` (as [`Engine::assign`]) with what earlier owners
    /// stored of its join: its pending `labels` (read again, they are left
    /// to the late path), of which those in `late` were joined already.
    /// The windows of `late` go on the source's list of windows to
    /// finalize: a process that stored them may have stopped before
    /// finalizing their windows.
    pub fn restore_pending(&mut self, source: &str, labels: Vec<JoinLabel>, late: &[LateMatch]) {
        self.assign(source);
        let state = self.sources.get_mut(source).expect("assigned above");
        let resolved: BTreeSet<u64> = late.iter().map(|late| late.label.offset).collect();
        for late in late {
            state
                .unfinalized
                .insert(late.prediction.window_start, &late.prediction.model);
        }
        for label in labels {
            state.pending.known.insert(label.offset);
            if !resolved.contains(&label.offset) {
                state.pending.retry.push_back(label);
            }
        }
    }

    /// The newest event time read from any source (minus the allowed
    /// lateness: the largest watermark of a source).
    pub fn newest_event_time(&self) -> Option<i64> {
        self.sources
            .values()
            .filter_map(|state| state.clock.watermark())
            .max()
    }

    /// True when a range was sealed and should be stored before reading on.
    pub fn needs_checkpoint(&self) -> bool {
        self.sources
            .values()
            .any(|source| !source.sealed.is_empty())
    }

    /// The partials of every range read since the last checkpoint, and the
    /// offsets to commit once they are stored. Sealed ranges are released;
    /// call again after a failed store write (the rows are recomputed from
    /// what is still held, plus what the store already has).
    pub fn checkpoint(&mut self) -> Checkpoint {
        let mut checkpoint = Checkpoint::default();
        for (source, state) in &mut self.sources {
            let mut commit = None;
            for range in state.sealed.iter().chain(state.current.iter()) {
                if !range.dirty {
                    continue;
                }
                debug_assert!(
                    range.unjoined.is_empty(),
                    "Engine::resolve_lookups runs before every checkpoint"
                );
                checkpoint.samples.extend(range.samples.iter().cloned());
                checkpoint.labels.extend(range.labels.iter().cloned());
                for (model, predictions) in &range.predictions {
                    checkpoint.predictions.extend(
                        predictions
                            .iter()
                            .map(|(key, prediction)| stored_prediction(model, *key, prediction)),
                    );
                }
                checkpoint
                    .pending_labels
                    .extend(range.pending_labels.iter().cloned());
                for (key, sketch) in range.aggregates.snapshot(&self.catalog) {
                    checkpoint.partials.push(PartialSketch {
                        source: source.clone(),
                        range_start: range.range_start,
                        range_end: range.next_offset,
                        key,
                        sketch: sketch.to_bytes(),
                    });
                }
                commit = Some(range.next_offset);
            }
            if let Some(next_offset) = commit {
                checkpoint.commits.push((source.clone(), next_offset));
            }
        }
        checkpoint
    }

    /// Marks the last [`Engine::checkpoint`] as stored: sealed ranges are
    /// dropped and the current ones become clean.
    pub fn checkpoint_stored(&mut self) {
        let max_pending_labels = self.settings.max_pending_labels;
        let mut retried: usize = self
            .sources
            .values()
            .map(|state| state.pending.retry.len())
            .sum();
        for state in self.sources.values_mut() {
            let current = state.current.iter_mut();
            for range in state.sealed.iter_mut().chain(current) {
                for label in range.pending_labels.drain(..) {
                    state.pending.known.insert(label.offset);
                    state.pending.retry.push_back(label);
                    retried += 1;
                }
            }
            state.sealed.clear();
            if let Some(range) = &mut state.current {
                range.dirty = false;
                range.samples.clear();
                range.labels.clear();
                range.predictions.clear();
            }
        }
        if retried > max_pending_labels {
            self.drop_oldest_pending(retried - max_pending_labels);
        }
    }

    /// Leaves the `excess` oldest pending labels (by event time, over every
    /// source) to the store.
    fn drop_oldest_pending(&mut self, excess: usize) {
        let mut times: Vec<i64> = self
            .sources
            .values()
            .flat_map(|state| state.pending.retry.iter().map(|label| label.time_ms))
            .collect();
        let (_, cutoff, _) = times.select_nth_unstable(excess - 1);
        let cutoff = *cutoff;
        let mut left = excess;
        for state in self.sources.values_mut() {
            state.pending.retry.retain(|label| {
                if left > 0 && label.time_ms <= cutoff {
                    left -= 1;
                    false
                } else {
                    true
                }
            });
        }
        self.counters.pending_labels_dropped += (excess - left) as u64;
    }

    /// The engine's watermark: the minimum over the sources that are not
    /// idle; `None` while one of them has seen no event yet (it may hold
    /// anything). With every source idle, the minimum over those that have
    /// seen events: each of them has moved past it by its own data.
    pub fn watermark(&self) -> Option<i64> {
        let mut active = self.sources.values().filter(|state| !state.idle).peekable();
        if active.peek().is_none() {
            return self
                .sources
                .values()
                .filter_map(|state| state.clock.watermark())
                .min();
        }
        active
            .map(|state| state.clock.watermark())
            .try_fold(i64::MAX, |lowest, watermark| {
                watermark.map(|watermark| lowest.min(watermark))
            })
    }

    /// Windows (window_start, model) that are closed and not yet finalized,
    /// oldest first; every window held after [`Engine::close_all`].
    pub fn closed_windows(&self) -> Vec<(i64, String)> {
        let size = self.settings.window_size;
        let watermark = if self.close_requested {
            i64::MAX
        } else {
            match self.watermark() {
                Some(watermark) => watermark,
                None => return Vec::new(),
            }
        };
        let closed: BTreeSet<(i64, &str)> = self
            .sources
            .values()
            .flat_map(|state| {
                state
                    .unfinalized
                    .ending_by(move |start| size.window_end(start) <= watermark)
            })
            .collect();
        closed
            .into_iter()
            .map(|(start, model)| (start, model.to_owned()))
            .collect()
    }

    /// [`Engine::closed_windows`], ending a [`Engine::close_all`] request.
    pub fn take_closed_windows(&mut self) -> Vec<(i64, String)> {
        let closed = self.closed_windows();
        self.close_requested = false;
        closed
    }

    /// Forgets a finalized window: it leaves every source's list of windows
    /// to finalize.
    ///
    /// Its sketches stay in the current ranges until those seal: a range's
    /// stored row must always be the sketch of the whole range so far, and
    /// an event or a joined actual recorded into it later puts the window
    /// back on its source's list.
    pub fn window_finalized(&mut self, window_start: i64, model: &str) {
        for state in self.sources.values_mut() {
            state.unfinalized.remove(window_start, model);
        }
    }

    /// Asks for every window held to be finalized once, provisionally (end
    /// of input, or idleness): no clock moves, so later events of those
    /// windows are still recorded, and finalized again (see the module docs).
    pub fn close_all(&mut self) {
        self.close_requested = true;
    }

    /// Registers a source before its first message (its partition was
    /// assigned): it holds the watermark back until it delivers an event
    /// or is marked idle.
    pub fn assign(&mut self, source: &str) {
        if !self.sources.contains_key(source) {
            let state = SourceState::new(&self.settings);
            self.sources.insert(source.to_owned(), state);
        }
    }

    /// Marks a source idle (nothing left to read there: it leaves the
    /// watermark) or active. A message read from it makes it active again.
    pub fn set_idle(&mut self, source: &str, idle: bool) {
        if let Some(state) = self.sources.get_mut(source) {
            state.idle = idle;
        }
    }

    /// The windows `source` recorded into since each was last finalized,
    /// oldest first.
    pub fn unfinalized_windows(&self, source: &str) -> Vec<(i64, String)> {
        self.sources.get(source).map_or_else(Vec::new, |state| {
            state
                .unfinalized
                .ending_by(|_| true)
                .map(|(start, model)| (start, model.to_owned()))
                .collect()
        })
    }

    /// Adds windows that `source` recorded into before (its stored
    /// progress) to its list of windows to finalize, registering the
    /// source as [`Engine::assign`] does.
    pub fn restore_unfinalized(
        &mut self,
        source: &str,
        windows: impl IntoIterator<Item = (i64, String)>,
    ) {
        self.assign(source);
        let state = self.sources.get_mut(source).expect("assigned above");
        for (window_start, model) in windows {
            state.unfinalized.insert(window_start, &model);
        }
    }

    /// Drops the state of a source (its partition was revoked). Nothing is
    /// committed for it: the next owner rewinds to the range start and
    /// starts from the stored progress.
    pub fn revoke(&mut self, source: &str) {
        self.sources.remove(source);
    }

    /// Drops the state of `old` (an incarnation found replaced), handing
    /// its windows still to finalize to `new`.
    pub fn retire(&mut self, old: &str, new: &str) {
        let windows = self.unfinalized_windows(old);
        self.revoke(old);
        self.restore_unfinalized(new, windows);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use detectors::spec::{FeatureKind, FeatureSpec, ModelSpec, Task};
    use detectors::FeatureSketch;

    /// Model `m`, a regression on one numeric feature `x`.
    pub(crate) fn regression_spec() -> ModelSpec {
        ModelSpec::new(
            "m",
            Task::Regression,
            vec![FeatureSpec {
                name: "x".into(),
                kind: FeatureKind::Numeric,
            }],
            vec![],
            10,
            10,
        )
        .unwrap()
    }

    /// The store lookup before a checkpoint, when the store has nothing.
    pub(crate) fn found_nothing(engine: &mut Engine) {
        engine.lookups();
        engine.resolve_lookups(&FoundPredictions::default());
    }

    fn engine(range_size: u64) -> Engine {
        Engine::new(
            settings(range_size, 7 * 86_400_000, 1_000_000),
            Catalog::new([regression_spec()]),
        )
    }

    fn payload(timestamp: i64, x: f64) -> Vec<u8> {
        format!(r#"{{"model":"m","model_version":"1","prediction_id":"p","timestamp":{timestamp},"features":{{"x":{x}}},"prediction":{{"score":1}}}}"#)
            .into_bytes()
    }

    fn count_of(partials: &[PartialSketch], feature: &str) -> u64 {
        partials
            .iter()
            .filter(|p| p.key.feature == feature)
            .map(|p| FeatureSketch::from_bytes(&p.sketch).unwrap().observations())
            .sum()
    }

    #[test]
    fn ranges_seal_at_fixed_offsets_and_checkpoint_commits_the_next_offset() {
        let mut engine = engine(3);
        for offset in 0..5 {
            let ingested = engine.ingest(
                "t/0",
                offset,
                &payload(100 + offset as i64, 1.0),
                EventKind::Prediction,
            );
            assert_eq!(ingested, Ingested::Recorded);
        }
        assert!(engine.needs_checkpoint(), "offset 3 sealed range [0, 3)");
        let checkpoint = engine.checkpoint();
        assert_eq!(checkpoint.commits, vec![("t/0".to_owned(), 5)]);
        let ranges: BTreeSet<(u64, u64)> = checkpoint
            .partials
            .iter()
            .map(|p| (p.range_start, p.range_end))
            .collect();
        assert_eq!(ranges, BTreeSet::from([(0, 3), (3, 5)]));
        assert_eq!(count_of(&checkpoint.partials, "x"), 5);
        engine.checkpoint_stored();
        assert!(!engine.needs_checkpoint());
        assert!(
            engine.checkpoint().partials.is_empty(),
            "nothing new since the checkpoint"
        );
    }

    #[test]
    fn protobuf_topics_record_what_json_topics_record() {
        let json: Vec<Vec<u8>> = (0..10).map(|i| payload(i * 10, i as f64 / 3.0)).collect();
        let protobuf: Vec<Vec<u8>> = json
            .iter()
            .map(|p| events::protobuf::encode(&events::decode(p, EventKind::Prediction).unwrap()))
            .collect();
        let format = Format {
            encoding: events::Encoding::Protobuf,
            default_kind: EventKind::Prediction,
        };
        let (mut from_json, mut from_protobuf) = (engine(100), engine(100));
        for (offset, (json, protobuf)) in json.iter().zip(&protobuf).enumerate() {
            let offset = offset as u64;
            assert_eq!(
                from_json.ingest("t/0", offset, json, EventKind::Prediction),
                Ingested::Recorded
            );
            assert_eq!(
                from_protobuf.ingest("t/0", offset, protobuf, format),
                Ingested::Recorded
            );
        }
        // JSON on a protobuf topic, and the other way round, is malformed.
        assert!(matches!(
            from_protobuf.ingest("t/0", 10, &json[0], format),
            Ingested::Malformed(_)
        ));
        assert!(matches!(
            from_json.ingest("t/0", 10, &protobuf[0], EventKind::Prediction),
            Ingested::Malformed(_)
        ));
        let (json, protobuf) = (from_json.checkpoint(), from_protobuf.checkpoint());
        assert_eq!(count_of(&json.partials, "x"), 10);
        assert_eq!(json.partials, protobuf.partials);
    }

    #[test]
    fn rewinding_to_the_range_start_rewrites_the_same_rows() {
        let events: Vec<Vec<u8>> = (0..10).map(|i| payload(i * 10, i as f64)).collect();
        let mut first = engine(4);
        for (offset, event) in events.iter().enumerate().take(6) {
            first.ingest("t/0", offset as u64, event, EventKind::Prediction);
        }
        let before_crash = first.checkpoint().partials;
        // Committed offset 6 → a restarted consumer rewinds to 4.
        let mut restarted = engine(4);
        let rewind = range_start_of(6, 4);
        assert_eq!(rewind, 4);
        for (offset, event) in events.iter().enumerate().skip(rewind as usize) {
            restarted.ingest("t/0", offset as u64, event, EventKind::Prediction);
        }
        let after = restarted.checkpoint().partials;
        let row = |rows: &[PartialSketch], start: u64| {
            rows.iter()
                .filter(|p| p.range_start == start && p.key.feature == "x")
                .map(|p| (p.range_end, p.sketch.clone()))
                .collect::<Vec<_>>()
        };
        // Range 4: before the crash it covered [4, 6), now [4, 8): a superset with a higher version.
        let (old_end, _) = row(&before_crash, 4)[0].clone();
        let (new_end, _) = row(&after, 4)[0].clone();
        assert!(new_end > old_end);
        // Keeping the highest version per key counts every event exactly once.
        let mut latest: BTreeMap<(u64, i64), (u64, Vec<u8>)> = BTreeMap::new();
        for p in before_crash
            .iter()
            .chain(&after)
            .filter(|p| p.key.feature == "x")
        {
            let entry = latest
                .entry((p.range_start, p.key.window_start))
                .or_insert((0, Vec::new()));
            if p.range_end >= entry.0 {
                *entry = (p.range_end, p.sketch.clone());
            }
        }
        let total: u64 = latest
            .values()
            .map(|(_, bytes)| FeatureSketch::from_bytes(bytes).unwrap().observations())
            .sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn windows_close_on_the_minimum_watermark_and_late_events_are_counted() {
        let mut engine = engine(100);
        engine.ingest("t/0", 0, &payload(500, 1.0), EventKind::Prediction);
        engine.ingest("t/1", 0, &payload(2_500, 1.0), EventKind::Prediction);
        assert!(engine.closed_windows().is_empty(), "t/0 still at 500");
        engine.ingest("t/0", 1, &payload(1_200, 1.0), EventKind::Prediction);
        assert_eq!(engine.closed_windows(), vec![(0, "m".to_owned())]);
        assert_eq!(
            engine.ingest("t/0", 2, &payload(10, 1.0), EventKind::Prediction),
            Ingested::Late
        );
        assert_eq!(engine.counters().late, 1);
        engine.window_finalized(0, "m");
        assert!(engine.closed_windows().is_empty());
        engine.close_all();
        let closed: Vec<i64> = engine
            .closed_windows()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(closed, vec![1_000, 2_000]);
    }

    #[test]
    fn assigned_sources_hold_the_watermark_until_they_deliver_or_go_idle() {
        let mut engine = engine(100);
        engine.assign("t/1");
        engine.ingest("t/0", 0, &payload(500, 1.0), EventKind::Prediction);
        engine.ingest("t/0", 1, &payload(3_500, 1.0), EventKind::Prediction);
        assert_eq!(engine.watermark(), None, "t/1 may still hold anything");
        assert!(engine.closed_windows().is_empty());
        // Nothing left to read on t/1: it leaves the minimum.
        engine.set_idle("t/1", true);
        assert_eq!(engine.watermark(), Some(3_500));
        let closed: Vec<i64> = engine.closed_windows().iter().map(|(s, _)| *s).collect();
        assert_eq!(closed, vec![0]);
        // Its next message makes it active again, and its events are on
        // time on its own clock even in a window t/0 has closed.
        assert_eq!(
            engine.ingest("t/1", 0, &payload(600, 1.0), EventKind::Prediction),
            Ingested::Recorded
        );
        assert_eq!(engine.watermark(), Some(600));
        // Every source idle: the minimum over those that have events.
        engine.set_idle("t/0", true);
        engine.set_idle("t/1", true);
        assert_eq!(engine.watermark(), Some(600));
        // A revoked source no longer holds anything.
        engine.assign("t/2");
        engine.set_idle("t/0", false);
        engine.set_idle("t/1", false);
        assert_eq!(engine.watermark(), None);
        engine.revoke("t/2");
        assert_eq!(engine.watermark(), Some(600));
    }

    #[test]
    fn windows_left_to_finalize_travel_with_the_source() {
        let mut engine = engine(100);
        engine.ingest("t/0", 0, &payload(500, 1.0), EventKind::Prediction);
        engine.ingest("t/0", 1, &payload(1_500, 1.0), EventKind::Prediction);
        assert_eq!(
            engine.unfinalized_windows("t/0"),
            vec![(0, "m".to_owned()), (1_000, "m".to_owned())]
        );
        engine.window_finalized(0, "m");
        assert_eq!(
            engine.unfinalized_windows("t/0"),
            vec![(1_000, "m".to_owned())]
        );
        // A new incarnation takes over what the old one left.
        engine.retire("t/0", "t/0#2");
        assert!(engine.unfinalized_windows("t/0").is_empty());
        assert_eq!(
            engine.unfinalized_windows("t/0#2"),
            vec![(1_000, "m".to_owned())]
        );
        // A next owner restores what the stored progress names.
        let mut next = super::Engine::new(engine.settings().clone(), engine.catalog().clone());
        next.restore_unfinalized("t/0#2", [(1_000, "m".to_owned()), (5_000, "m".to_owned())]);
        next.close_all();
        let closed: Vec<i64> = next.take_closed_windows().iter().map(|(s, _)| *s).collect();
        assert_eq!(closed, vec![1_000, 5_000]);
        assert!(
            next.closed_windows().is_empty(),
            "the request is taken once"
        );
    }

    /// One-second windows, no lateness, 100 groups per range.
    fn settings(
        range_size: u64,
        join_window_ms: i64,
        max_pending_predictions: usize,
    ) -> EngineSettings {
        EngineSettings::new(WindowSize::from_millis(1_000).unwrap())
            .with_allowed_lateness(std::time::Duration::ZERO)
            .with_range_size(range_size.try_into().unwrap())
            .with_max_groups(100.try_into().unwrap())
            .with_join(
                std::time::Duration::from_millis(join_window_ms as u64),
                max_pending_predictions,
            )
    }

    #[test]
    fn events_too_far_ahead_of_the_wall_clock_are_malformed_and_move_no_clock() {
        fn clock() -> i64 {
            10_000_000
        }
        let mut engine = Engine::with_clock(
            settings(100, 1_000, 10),
            Catalog::new([regression_spec()]),
            clock,
        );
        let limit = 10_000_000 + 3_600_000;
        assert_eq!(
            engine.ingest("t/0", 0, &payload(limit, 1.0), EventKind::Prediction),
            Ingested::Recorded
        );
        let Ingested::Malformed(reason) =
            engine.ingest("t/0", 1, &payload(limit + 1, 1.0), EventKind::Prediction)
        else {
            panic!("an event 1 ms past the skew bound must be refused")
        };
        assert!(reason.contains("ahead of the wall clock"), "{reason}");
        assert!(matches!(
            engine.ingest(
                "t/0",
                2,
                &payload(limit + 10_000, 1.0),
                EventKind::Prediction
            ),
            Ingested::Malformed(_)
        ));
        // The refused events moved no clock: an event at the bound is still on time.
        assert_eq!(
            engine.ingest("t/0", 3, &payload(limit, 1.0), EventKind::Prediction),
            Ingested::Recorded
        );
        assert_eq!(engine.counters().malformed, 2);
        assert_eq!(engine.counters().late, 0);
    }

    fn classifier(max_pending_predictions: usize) -> Engine {
        Engine::new(
            settings(100, 10_000, max_pending_predictions),
            Catalog::new([classifier_spec()]),
        )
    }

    /// Model `c`, a binary classifier (positive class `yes`) on `x`.
    fn classifier_spec() -> ModelSpec {
        ModelSpec::new(
            "c",
            Task::Classification,
            vec![FeatureSpec {
                name: "x".into(),
                kind: FeatureKind::Numeric,
            }],
            vec![],
            10,
            10,
        )
        .unwrap()
        .with_positive_class(Some("yes".into()))
    }

    fn prediction(id: &str, timestamp: i64, score: f64) -> Vec<u8> {
        let class = if score >= 0.5 { "yes" } else { "no" };
        format!(r#"{{"model":"c","model_version":"1","prediction_id":"{id}","timestamp":{timestamp},"features":{{"x":1}},"prediction":{{"score":{score},"class":"{class}"}}}}"#).into_bytes()
    }

    fn actual(id: &str, timestamp: i64, label: &str) -> Vec<u8> {
        format!(r#"{{"model":"c","model_version":"1","prediction_id":"{id}","timestamp":{timestamp},"label":"{label}"}}"#).into_bytes()
    }

    #[test]
    fn the_training_sample_keeps_the_same_ids_for_every_version_and_their_labels() {
        let versioned = |version: &str, id: &str| {
            String::from_utf8(prediction(id, 100, 0.7))
                .unwrap()
                .replace(
                    r#""model_version":"1""#,
                    &format!(r#""model_version":"{version}""#),
                )
                .into_bytes()
        };
        let ids: Vec<String> = (0..400).map(|i| format!("req-{i}")).collect();
        let run = |rate: f64, cap: usize| {
            let mut engine = classifier(1_000);
            // One range for the whole stream.
            engine.settings = settings(10_000, 10_000, 1_000).with_sample(rate, cap);
            let mut offset = 0;
            for id in &ids {
                for version in ["1", "2"] {
                    engine.ingest(
                        "p/0",
                        offset,
                        &versioned(version, id),
                        EventKind::Prediction,
                    );
                    offset += 1;
                }
                engine.ingest("p/0", offset, &actual(id, 200, "yes"), EventKind::Actual);
                offset += 1;
            }
            engine
        };
        let mut engine = run(0.25, 10_000);
        let checkpoint = engine.checkpoint();
        let by_version = |version: &str| -> Vec<&str> {
            checkpoint
                .samples
                .iter()
                .filter(|s| s.model_version == version)
                .map(|s| s.prediction_id.as_str())
                .collect()
        };
        let (one, two) = (by_version("1"), by_version("2"));
        assert_eq!(one, two, "the same requests for both versions");
        // About a quarter of 400 (binomial σ ≈ 8.7).
        assert!((60..=140).contains(&one.len()), "{}", one.len());
        let labelled: Vec<&str> = checkpoint
            .labels
            .iter()
            .map(|l| l.prediction_id.as_str())
            .collect();
        assert_eq!(labelled, one, "their labels, and only theirs");
        let first = &checkpoint.samples[0];
        assert_eq!(first.features, r#"{"x":1.0}"#);
        assert_eq!((first.score, first.class.as_str()), (Some(0.7), "yes"));
        assert_eq!(first.window_start, 0);
        assert_eq!(checkpoint.labels[0].label, "yes");

        // Stored: not written again; the next range starts empty.
        engine.checkpoint_stored();
        assert!(engine.checkpoint().samples.is_empty());
        // Read again from the start (a restart): the same rows.
        let again = run(0.25, 10_000).checkpoint();
        assert_eq!(again.samples, checkpoint.samples);
        assert_eq!(again.labels, checkpoint.labels);

        // Everything at rate 1, nothing at 0; the cap counts what it drops.
        let all = run(1.0, 10_000).checkpoint();
        assert_eq!((all.samples.len(), all.labels.len()), (800, 400));
        assert!(run(0.0, 10_000).checkpoint().samples.is_empty());
        let mut capped = run(1.0, 50);
        let kept = capped.checkpoint();
        assert_eq!((kept.samples.len(), kept.labels.len()), (50, 50));
        assert_eq!(capped.counters().sample_overflow, 750 + 350);
    }

    #[test]
    fn one_actual_joins_every_versions_prediction_of_its_request() {
        let versioned = |version: &str, id: &str, score: f64| {
            String::from_utf8(prediction(id, 100, score))
                .unwrap()
                .replace(
                    r#""model_version":"1""#,
                    &format!(r#""model_version":"{version}""#),
                )
                .into_bytes()
        };
        let mut engine = classifier(10);
        // The champion (1) and a shadow challenger (2) answered requests a
        // and b; a retried log of the challenger's answer to a replaces it.
        engine.ingest("p/0", 0, &versioned("1", "a", 0.9), EventKind::Prediction);
        engine.ingest("p/0", 1, &versioned("2", "a", 0.1), EventKind::Prediction);
        engine.ingest("p/0", 2, &versioned("2", "a", 0.2), EventKind::Prediction);
        engine.ingest("p/0", 3, &versioned("1", "b", 0.8), EventKind::Prediction);
        engine.ingest("p/0", 4, &versioned("2", "b", 0.7), EventKind::Prediction);
        engine.ingest("a/0", 0, &actual("a", 500, "yes"), EventKind::Actual);
        engine.ingest("a/0", 1, &actual("b", 600, "no"), EventKind::Actual);
        assert_eq!(engine.counters().joined, 4);
        assert_eq!(engine.counters().unmatched_actuals, 0);
        let partials = engine.checkpoint().partials;
        let accuracy = |version: &str| {
            let row = partials
                .iter()
                .find(|p| p.key.feature == "quality" && p.key.model_version == version)
                .unwrap_or_else(|| panic!("a quality row for version {version}"));
            let FeatureSketch::Quality(sketch) = FeatureSketch::from_bytes(&row.sketch).unwrap()
            else {
                panic!()
            };
            let metrics = sketch.metrics();
            (metrics.matched, metrics.accuracy)
        };
        // Version 1 said yes, yes: right on a. Version 2 said no (0.2), yes: wrong on both.
        assert_eq!(accuracy("1"), (2, Some(0.5)));
        assert_eq!(accuracy("2"), (2, Some(0.0)));
    }

    #[test]
    fn the_join_bound_counts_predictions_and_evicts_the_oldest_request_whole() {
        let mut engine = classifier(3);
        for (offset, (version, id)) in [("1", "a"), ("2", "a"), ("1", "b"), ("1", "c")]
            .iter()
            .enumerate()
        {
            let payload = String::from_utf8(prediction(id, 100 + offset as i64, 0.9))
                .unwrap()
                .replace(
                    r#""model_version":"1""#,
                    &format!(r#""model_version":"{version}""#),
                );
            engine.ingest(
                "p/0",
                offset as u64,
                payload.as_bytes(),
                EventKind::Prediction,
            );
        }
        // Three held when c arrived: a's two predictions went together.
        assert_eq!(engine.counters().join_evicted, 2);
        engine.ingest("a/0", 0, &actual("a", 500, "yes"), EventKind::Actual);
        engine.ingest("a/0", 1, &actual("c", 500, "yes"), EventKind::Actual);
        found_nothing(&mut engine);
        assert_eq!(engine.counters().unmatched_actuals, 1);
        assert_eq!(engine.counters().joined, 1);
    }

    #[test]
    fn actuals_join_their_predictions_into_the_prediction_window() {
        let mut engine = classifier(10);
        engine.ingest("p/0", 0, &prediction("a", 100, 0.9), EventKind::Prediction);
        engine.ingest("p/0", 1, &prediction("b", 200, 0.2), EventKind::Prediction);
        engine.ingest("p/0", 2, &prediction("c", 300, 0.4), EventKind::Prediction);
        // The actuals arrive two windows later; prediction b was wrong.
        engine.ingest("a/0", 0, &actual("a", 2_500, "yes"), EventKind::Actual);
        engine.ingest("a/0", 1, &actual("b", 2_600, "yes"), EventKind::Actual);
        engine.ingest("a/0", 2, &actual("c", 2_650, "no"), EventKind::Actual);
        engine.ingest("a/0", 3, &actual("zzz", 2_700, "no"), EventKind::Actual);
        found_nothing(&mut engine);
        assert_eq!(engine.counters().joined, 3);
        assert_eq!(engine.counters().unmatched_actuals, 1);
        let partials = engine.checkpoint().partials;
        let quality: Vec<_> = partials
            .iter()
            .filter(|p| p.key.feature == "quality")
            .collect();
        assert_eq!(
            quality.len(),
            1,
            "one quality row, in the predictions' window 0, from the actuals' source"
        );
        assert_eq!(quality[0].key.window_start, 0);
        assert_eq!(quality[0].source, "a/0");
        let FeatureSketch::Quality(sketch) = FeatureSketch::from_bytes(&quality[0].sketch).unwrap()
        else {
            panic!()
        };
        let metrics = sketch.metrics();
        assert_eq!(metrics.matched, 3);
        assert!((metrics.accuracy.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // Positives scored 0.9 and 0.2, the negative 0.4: one of two pairs ranked right.
        assert_eq!(metrics.roc_auc, Some(0.5));
        // Once the prediction source moves on, window 0 closes with its quality.
        assert!(!engine.closed_windows().contains(&(0, "c".to_owned())));
        engine.ingest(
            "p/0",
            3,
            &prediction("d", 3_000, 0.5),
            EventKind::Prediction,
        );
        assert!(engine.closed_windows().contains(&(0, "c".to_owned())));
        engine.window_finalized(0, "c");
        // A joined actual puts its prediction's window back on the list to finalize.
        engine.ingest(
            "p/0",
            4,
            &prediction("e", 3_100, 0.5),
            EventKind::Prediction,
        );
        engine.ingest("a/0", 4, &actual("e", 3_200, "yes"), EventKind::Actual);
        assert!(engine.closed_windows().iter().all(|(start, _)| *start != 0));
        assert!(engine.sources["p/0"].unfinalized.contains(3_000, "c"));
    }

    #[test]
    fn outcomes_joined_after_finalization_accumulate_in_the_range_row() {
        let mut engine = classifier(10);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            engine.ingest(
                "p/0",
                i as u64,
                &prediction(id, 100 * i as i64, 0.8),
                EventKind::Prediction,
            );
        }
        engine.ingest(
            "p/0",
            3,
            &prediction("z", 5_000, 0.8),
            EventKind::Prediction,
        );
        engine.ingest("a/0", 0, &actual("a", 5_100, "yes"), EventKind::Actual);
        engine.ingest("a/0", 1, &actual("b", 5_200, "yes"), EventKind::Actual);
        // Checkpoint, then window 0 is finalized.
        engine.checkpoint();
        engine.checkpoint_stored();
        engine.window_finalized(0, "c");
        // Another outcome for window 0 in the same range: the range's row must
        // hold all three, not only the newest (rows replace each other).
        engine.ingest("a/0", 2, &actual("c", 5_300, "no"), EventKind::Actual);
        let partials = engine.checkpoint().partials;
        let row = partials
            .iter()
            .find(|p| p.key.feature == "quality" && p.key.window_start == 0 && p.source == "a/0")
            .expect("a quality row for window 0");
        let FeatureSketch::Quality(sketch) = FeatureSketch::from_bytes(&row.sketch).unwrap() else {
            panic!()
        };
        assert_eq!(sketch.matched(), 3);
    }

    #[test]
    fn pending_predictions_are_bounded_and_expire() {
        let mut engine = classifier(3);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            engine.ingest(
                "p/0",
                i as u64,
                &prediction(id, 100 + i as i64, 0.7),
                EventKind::Prediction,
            );
        }
        assert_eq!(
            engine.counters().join_evicted,
            1,
            "the fourth prediction evicts the first"
        );
        engine.ingest("a/0", 0, &actual("a", 200, "yes"), EventKind::Actual);
        found_nothing(&mut engine);
        assert_eq!(engine.counters().unmatched_actuals, 1);
        // 20 s later (join window 10 s) the rest have expired.
        engine.ingest(
            "p/0",
            4,
            &prediction("e", 20_000, 0.7),
            EventKind::Prediction,
        );
        assert_eq!(engine.counters().join_expired, 3);
        engine.ingest("a/0", 1, &actual("b", 20_001, "yes"), EventKind::Actual);
        found_nothing(&mut engine);
        assert_eq!(engine.counters().unmatched_actuals, 2);
        assert_eq!(engine.counters().joined, 0);
    }

    #[test]
    fn a_join_in_memory_only_stores_no_prediction_and_looks_nothing_up() {
        let mut engine = Engine::new(
            settings(100, 10_000, 10).with_durable_join(false),
            Catalog::new([classifier_spec()]),
        );
        engine.ingest("p/0", 0, &prediction("a", 100, 0.9), EventKind::Prediction);
        engine.ingest("a/0", 0, &actual("a", 200, "yes"), EventKind::Actual);
        engine.ingest("a/0", 1, &actual("b", 300, "yes"), EventKind::Actual);
        assert_eq!(engine.counters().joined, 1);
        assert_eq!(engine.counters().unmatched_actuals, 1, "at once, no lookup");
        assert!(engine.lookups().is_empty());
        let checkpoint = engine.checkpoint();
        assert!(checkpoint.predictions.is_empty());
        assert!(checkpoint.pending_labels.is_empty());
        // Durable (the default): the prediction is stored with the checkpoint.
        let mut durable = classifier(10);
        durable.ingest("p/0", 0, &prediction("a", 100, 0.9), EventKind::Prediction);
        assert_eq!(durable.checkpoint().predictions.len(), 1);
    }

    #[test]
    fn malformed_and_unknown_events_are_counted_and_still_advance_offsets() {
        let mut engine = engine(100);
        assert!(matches!(
            engine.ingest("t/0", 0, b"{oops", EventKind::Prediction),
            Ingested::Malformed(_)
        ));
        let other = br#"{"model":"other","model_version":"1","timestamp":1,"features":{"x":1}}"#;
        assert_eq!(
            engine.ingest("t/0", 1, other, EventKind::Feature),
            Ingested::UnknownModel
        );
        let checkpoint = engine.checkpoint();
        assert_eq!(checkpoint.commits, vec![("t/0".to_owned(), 2)]);
        assert_eq!(engine.counters().malformed, 1);
        assert_eq!(engine.counters().unknown_model, 1);
    }
}
