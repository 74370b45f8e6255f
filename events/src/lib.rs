//! # events — Tidewatch's versioned JSON event model
//!
//! Producers (serving code in Python, Java, Go…) write three kinds of JSON
//! events to Kafka. This crate decodes them, borrowing from the payload so the
//! hot path allocates as little as possible, and says precisely why a payload
//! is rejected.
//!
//! | kind | schema id | required fields |
//! |---|---|---|
//! | [`EventKind::Prediction`] | `tidewatch.prediction.v1` | `model`, `model_version`, `prediction_id`, `timestamp`, `features`, `prediction` (or `error`) |
//! | [`EventKind::Feature`] | `tidewatch.feature.v1` | `model`, `model_version`, `timestamp`, `features` |
//! | [`EventKind::Actual`] | `tidewatch.actual.v1` | `model`, `model_version`, `prediction_id`, `timestamp`, `label` |
//!
//! The JSON Schema of each kind is published in `events/schemas/` (and exposed
//! here as [`PREDICTION_SCHEMA`], [`FEATURE_SCHEMA`], [`ACTUAL_SCHEMA`]).
//!
//! Rules every decoder follows:
//! - the `schema` field is optional; when present it must name a known schema
//!   and decides the kind, otherwise the kind the topic was configured with is
//!   used;
//! - unknown fields are ignored, so producers can add fields freely;
//! - a field of the wrong type, or a missing required field, is a
//!   [`DecodeError`] whose message names the field;
//! - `timestamp` is either integer milliseconds since the Unix epoch or an
//!   RFC 3339 string (`2026-01-01T12:00:00Z`), and must lie in
//!   [`MIN_EVENT_TIME_MS`, `MAX_EVENT_TIME_MS`] (1970-01-01 to 2105-12-31,
//!   what every store can hold); how far ahead of the wall clock an event
//!   may be is the ingest engine's bound, not the decoder's;
//! - a key repeated inside `features`, `prediction.probabilities` or
//!   `segments` (or a repeated top-level field) makes the event malformed:
//!   which of the values is meant cannot be known;
//! - feature values are numbers, strings, booleans (read as the strings
//!   `"true"`/`"false"`) or `null` (a missing value). Whether a value has the
//!   type the model's config expects is a data-quality question answered by the
//!   `detectors` crate, not a decoding error.
//!
//! Main entry point: [`decode`].

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

pub mod protobuf;

/// JSON Schema for prediction events.
pub const PREDICTION_SCHEMA: &str = include_str!("../schemas/prediction.v1.schema.json");
/// JSON Schema for feature-row events.
pub const FEATURE_SCHEMA: &str = include_str!("../schemas/feature.v1.schema.json");
/// JSON Schema for actual (ground-truth label) events.
pub const ACTUAL_SCHEMA: &str = include_str!("../schemas/actual.v1.schema.json");

/// The earliest event time accepted: 1970-01-01T00:00:00Z.
pub const MIN_EVENT_TIME_MS: i64 = 0;
/// The latest event time accepted: 2105-12-31T23:59:59.999Z. ClickHouse's
/// `DateTime` ends in February 2106; a window starting before this bound
/// ends inside that range for any window size up to 30 days.
pub const MAX_EVENT_TIME_MS: i64 = 4_291_747_199_999;

/// The three kinds of event Tidewatch reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A model's prediction with the features it was made from.
    Prediction,
    /// A feature row logged without a prediction.
    Feature,
    /// A ground-truth label for an earlier prediction.
    Actual,
}

impl EventKind {
    /// The `schema` identifier producers may put in the event.
    pub fn schema_id(self) -> &'static str {
        match self {
            EventKind::Prediction => "tidewatch.prediction.v1",
            EventKind::Feature => "tidewatch.feature.v1",
            EventKind::Actual => "tidewatch.actual.v1",
        }
    }

    fn from_schema_id(id: &str) -> Option<Self> {
        [EventKind::Prediction, EventKind::Feature, EventKind::Actual]
            .into_iter()
            .find(|kind| kind.schema_id() == id)
    }

    /// A short lowercase name, used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Prediction => "prediction",
            EventKind::Feature => "feature",
            EventKind::Actual => "actual",
        }
    }
}

/// Why a payload could not be decoded. Always the producer's fault; retrying
/// the same bytes gives the same error, so the message belongs in the
/// dead-letter topic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is not JSON, or a field has the wrong type.
    #[error("invalid event json: {0}")]
    Json(String),
    /// A field the event kind requires is absent.
    #[error("missing required field `{field}` for a {kind} event")]
    MissingField {
        /// Name of the missing field.
        field: &'static str,
        /// The kind of event being decoded.
        kind: &'static str,
    },
    /// The `schema` field names a schema this version does not know.
    #[error("unknown schema `{0}` (expected tidewatch.prediction.v1, tidewatch.feature.v1 or tidewatch.actual.v1)")]
    UnknownSchema(String),
    /// The `timestamp` string is not RFC 3339.
    #[error("field `timestamp`: `{0}` is neither epoch milliseconds nor an RFC 3339 time")]
    Timestamp(String),
    /// The timestamp lies outside [`MIN_EVENT_TIME_MS`, `MAX_EVENT_TIME_MS`].
    #[error("field `timestamp`: {0} ms is outside the storable range 1970-01-01 to 2105-12-31")]
    TimestampOutOfRange(i64),
    /// A number that must be finite is NaN or infinite.
    #[error("field `{0}` must be a finite number")]
    NotFinite(&'static str),
    /// The prediction output has none of `score`, `class`, `probabilities`.
    #[error("field `prediction` must contain `score`, `class` or `probabilities`")]
    EmptyPrediction,
    /// The payload is not a `tidewatch.v1.Event` message (truncated, a
    /// field of the wrong wire type, invalid UTF-8, a repeated key).
    #[error("invalid event protobuf: {0}")]
    Protobuf(String),
}

/// How a topic's payloads are encoded.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// A JSON object per payload (the schemas in `events/schemas/*.json`).
    #[default]
    Json,
    /// A `tidewatch.v1.Event` Protocol Buffers message per payload
    /// (`events/schemas/tidewatch/v1/event.proto`, see [`protobuf`]).
    Protobuf,
}

impl Encoding {
    /// The name used in configuration (`json`, `protobuf`).
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        }
    }
}

/// How to read the payloads of one topic: their encoding, and the kind of
/// a payload that does not name its schema. A kind alone means JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Format {
    /// The payloads' encoding.
    pub encoding: Encoding,
    /// The kind of a payload without a `schema` field.
    pub default_kind: EventKind,
}

impl Format {
    /// Decodes one payload of this format.
    pub fn decode(self, payload: &[u8]) -> Result<Event<'_>, DecodeError> {
        match self.encoding {
            Encoding::Json => decode(payload, self.default_kind),
            Encoding::Protobuf => protobuf::decode(payload, self.default_kind),
        }
    }
}

impl From<EventKind> for Format {
    fn from(default_kind: EventKind) -> Self {
        Format {
            encoding: Encoding::Json,
            default_kind,
        }
    }
}

/// One feature value as logged.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue<'a> {
    /// A number (JSON integers are read as `f64`).
    Number(f64),
    /// A string, or a boolean read as `"true"` / `"false"`.
    Text(Cow<'a, str>),
    /// `null`: the value is missing.
    Null,
}

/// A model output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PredictionOutput<'a> {
    /// A score (regression value, or probability of the positive class).
    pub score: Option<f64>,
    /// A predicted class label.
    pub class: Option<Cow<'a, str>>,
    /// Class probabilities, in the order logged.
    pub probabilities: Vec<(Cow<'a, str>, f64)>,
}

impl PredictionOutput<'_> {
    /// The predicted class: `class` if logged, else the most probable class
    /// (of equally probable ones, the first in byte order, whatever order
    /// they were logged in: protobuf maps keep none).
    pub fn predicted_class(&self) -> Option<&str> {
        if let Some(class) = &self.class {
            return Some(class);
        }
        self.probabilities
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(class, _)| class.as_ref())
    }

    /// The score: `score` if logged, else the highest class probability.
    pub fn effective_score(&self) -> Option<f64> {
        self.score.or_else(|| {
            self.probabilities
                .iter()
                .map(|(_, probability)| *probability)
                .max_by(f64::total_cmp)
        })
    }
}

/// A ground-truth label.
#[derive(Debug, Clone, PartialEq)]
pub enum Label<'a> {
    /// A numeric target (regression, or 0/1).
    Number(f64),
    /// A class label.
    Class(Cow<'a, str>),
}

/// A decoded event, borrowing strings from the payload where it can.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    /// Which kind of event this is.
    pub kind: EventKind,
    /// Model name.
    pub model: Cow<'a, str>,
    /// Model version.
    pub model_version: Cow<'a, str>,
    /// Prediction id (required for predictions and actuals).
    pub prediction_id: Option<Cow<'a, str>>,
    /// Event time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Feature name → value, in the order logged.
    pub features: Vec<(Cow<'a, str>, FeatureValue<'a>)>,
    /// The model's output (predictions only).
    pub prediction: Option<PredictionOutput<'a>>,
    /// Serving latency in milliseconds, if logged.
    pub latency_ms: Option<f64>,
    /// Segment tags such as `country` → `DE`.
    pub segments: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// The ground-truth label (actuals only).
    pub label: Option<Label<'a>>,
    /// A serving error reported with the prediction (predictions only); a
    /// prediction event with an error may omit `prediction`.
    pub error: Option<Cow<'a, str>>,
}

/// Decodes one payload. `default_kind` is the kind of the topic it came from,
/// used when the payload has no `schema` field.
pub fn decode(payload: &[u8], default_kind: EventKind) -> Result<Event<'_>, DecodeError> {
    let raw: RawEvent<'_> =
        serde_json::from_slice(payload).map_err(|error| DecodeError::Json(error.to_string()))?;
    from_raw(raw, default_kind)
}

/// The event `raw` holds, once the rules of its kind are checked: what
/// every encoding shares after its own reader.
fn from_raw(raw: RawEvent<'_>, default_kind: EventKind) -> Result<Event<'_>, DecodeError> {
    let kind = match raw.schema.as_ref().map(|schema| &schema.0) {
        Some(id) => EventKind::from_schema_id(id)
            .ok_or_else(|| DecodeError::UnknownSchema(id.to_string()))?,
        None => default_kind,
    };
    let missing = |field: &'static str| DecodeError::MissingField {
        field,
        kind: kind.as_str(),
    };
    let model = raw
        .model
        .map(|model| model.0)
        .ok_or_else(|| missing("model"))?;
    let model_version = raw
        .model_version
        .map(|version| version.0)
        .ok_or_else(|| missing("model_version"))?;
    let timestamp_ms = raw
        .timestamp
        .ok_or_else(|| missing("timestamp"))?
        .into_millis()?;
    if let Some(latency) = raw.latency_ms {
        if !latency.is_finite() {
            return Err(DecodeError::NotFinite("latency_ms"));
        }
    }
    let event = Event {
        kind,
        model,
        model_version,
        prediction_id: raw.prediction_id.map(|id| id.0),
        timestamp_ms,
        features: raw.features.map(|features| features.0).unwrap_or_default(),
        prediction: raw.prediction.map(RawPrediction::into_output).transpose()?,
        latency_ms: raw.latency_ms,
        segments: raw.segments.map(SegmentMap::into_pairs).unwrap_or_default(),
        label: raw.label,
        error: raw.error.map(|error| error.0),
    };
    match kind {
        EventKind::Prediction => {
            require(event.prediction_id.is_some(), || missing("prediction_id"))?;
            require(event.prediction.is_some() || event.error.is_some(), || {
                missing("prediction")
            })?;
            require(raw_has_features(&event), || missing("features"))?;
        }
        EventKind::Feature => {
            require(raw_has_features(&event), || missing("features"))?;
        }
        EventKind::Actual => {
            require(event.prediction_id.is_some(), || missing("prediction_id"))?;
            require(event.label.is_some(), || missing("label"))?;
        }
    }
    Ok(event)
}

fn raw_has_features(event: &Event<'_>) -> bool {
    !event.features.is_empty()
}

fn require(condition: bool, error: impl FnOnce() -> DecodeError) -> Result<(), DecodeError> {
    if condition {
        Ok(())
    } else {
        Err(error())
    }
}

#[derive(Deserialize, Default)]
struct RawEvent<'a> {
    #[serde(borrow, default)]
    schema: Option<Text<'a>>,
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(borrow, default)]
    model_version: Option<StringOrNumber<'a>>,
    #[serde(borrow, default)]
    prediction_id: Option<StringOrNumber<'a>>,
    #[serde(borrow, default)]
    timestamp: Option<RawTimestamp<'a>>,
    #[serde(borrow, default)]
    features: Option<FeatureMap<'a>>,
    #[serde(borrow, default)]
    prediction: Option<RawPrediction<'a>>,
    #[serde(default)]
    latency_ms: Option<f64>,
    #[serde(borrow, default)]
    segments: Option<SegmentMap<'a>>,
    #[serde(borrow, default)]
    label: Option<Label<'a>>,
    #[serde(borrow, default)]
    error: Option<Text<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawTimestamp<'a> {
    Millis(i64),
    Text(#[serde(borrow)] Cow<'a, str>),
}

impl RawTimestamp<'_> {
    fn into_millis(self) -> Result<i64, DecodeError> {
        let millis = match self {
            RawTimestamp::Millis(millis) => millis,
            RawTimestamp::Text(text) => chrono::DateTime::parse_from_rfc3339(&text)
                .map(|time| time.timestamp_millis())
                .map_err(|_| DecodeError::Timestamp(text.into_owned()))?,
        };
        if (MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&millis) {
            Ok(millis)
        } else {
            Err(DecodeError::TimestampOutOfRange(millis))
        }
    }
}

#[derive(Deserialize)]
struct RawPrediction<'a> {
    #[serde(default)]
    score: Option<f64>,
    #[serde(borrow, default)]
    class: Option<StringOrNumber<'a>>,
    #[serde(borrow, default)]
    probabilities: Option<ProbabilityMap<'a>>,
}

impl<'a> RawPrediction<'a> {
    fn into_output(self) -> Result<PredictionOutput<'a>, DecodeError> {
        if self.score.is_none() && self.class.is_none() && self.probabilities.is_none() {
            return Err(DecodeError::EmptyPrediction);
        }
        if matches!(self.score, Some(score) if !score.is_finite()) {
            return Err(DecodeError::NotFinite("prediction.score"));
        }
        let probabilities = self.probabilities.map(|map| map.0).unwrap_or_default();
        if probabilities.iter().any(|(_, p)| !p.is_finite()) {
            return Err(DecodeError::NotFinite("prediction.probabilities"));
        }
        Ok(PredictionOutput {
            score: self.score,
            class: self.class.map(|class| class.0),
            probabilities,
        })
    }
}

/// A JSON string, borrowed from the payload unless it has escapes
/// (serde's own `Cow<str>` always copies).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// A string field that producers sometimes write as a number (`"model_version": 3`).
struct StringOrNumber<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for StringOrNumber<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StringOrNumberVisitor;
        impl<'de> Visitor<'de> for StringOrNumberVisitor {
            type Value = StringOrNumber<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StringOrNumber(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringOrNumber(Cow::Owned(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_any(StringOrNumberVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FeatureValue<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FeatureValueVisitor;
        impl<'de> Visitor<'de> for FeatureValueVisitor {
            type Value = FeatureValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, a string, a boolean or null")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(FeatureValue::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(FeatureValue::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(FeatureValue::Number(v as f64))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(FeatureValue::Text(Cow::Borrowed(if v {
                    "true"
                } else {
                    "false"
                })))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FeatureValue::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FeatureValue::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FeatureValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FeatureValue::Null)
            }
        }
        deserializer.deserialize_any(FeatureValueVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Label<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelVisitor;
        impl<'de> Visitor<'de> for LabelVisitor {
            type Value = Label<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, a string or a boolean")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if v.is_finite() {
                    Ok(Label::Number(v))
                } else {
                    Err(E::custom("label must be finite"))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Label::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Label::Number(v as f64))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Label::Class(Cow::Borrowed(if v {
                    "true"
                } else {
                    "false"
                })))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Label::Class(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Label::Class(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_any(LabelVisitor)
    }
}

/// The first key that appears twice in `entries`, if any.
///
/// On the hot path (a few dozen keys) a 256-bit mask over a cheap
/// fingerprint (length and three bytes) rules most keys out in a few
/// instructions; only a key whose fingerprint bit is already set is compared
/// with the keys before it. Past 64 keys a hash set keeps it linear.
fn first_duplicate<'e, V>(entries: &'e [(Cow<'_, str>, V)]) -> Option<&'e str> {
    if entries.len() > 64 {
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        return entries
            .iter()
            .map(|(key, _)| key.as_ref())
            .find(|key| !seen.insert(*key));
    }
    let mut mask = [0u64; 4];
    for (index, (key, _)) in entries.iter().enumerate() {
        let bytes = key.as_bytes();
        let fingerprint = match bytes {
            [] => 0,
            [first, .., last] => {
                (bytes.len() * 31 + usize::from(*first) * 7 + usize::from(*last) * 131)
                    ^ (usize::from(bytes[bytes.len() / 2]) * 17)
            }
            [only] => usize::from(*only) * 7 + 31,
        } & 255;
        let (word, bit) = (fingerprint / 64, 1u64 << (fingerprint % 64));
        if mask[word] & bit != 0 && entries[..index].iter().any(|(earlier, _)| earlier == key) {
            return Some(key);
        }
        mask[word] |= bit;
    }
    None
}

/// Generates a `Vec<(Cow<str>, V)>` map reader that keeps the logged order
/// and refuses a repeated key.
macro_rules! ordered_map {
    ($name:ident, $value:ty, $expecting:literal, $field:literal) => {
        struct $name<'a>(Vec<(Cow<'a, str>, $value)>);

        impl<'de: 'a, 'a> Deserialize<'de> for $name<'a> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct MapVisitor<'a>(std::marker::PhantomData<&'a ()>);
                impl<'de> Visitor<'de> for MapVisitor<'de> {
                    type Value = $name<'de>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<M: MapAccess<'de>>(
                        self,
                        mut map: M,
                    ) -> Result<Self::Value, M::Error> {
                        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16));
                        while let Some(key) = map.next_key::<Text<'de>>()? {
                            let value = map.next_value()?;
                            entries.push((key.0, value));
                        }
                        if let Some(key) = first_duplicate(&entries) {
                            return Err(de::Error::custom(format_args!(
                                "duplicate key `{key}` in `{}`",
                                $field
                            )));
                        }
                        Ok($name(entries))
                    }
                }
                deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
            }
        }
    };
}

ordered_map!(
    FeatureMap,
    FeatureValue<'a>,
    "an object of feature name to number, string, boolean or null",
    "features"
);
ordered_map!(
    ProbabilityMap,
    f64,
    "an object of class name to probability",
    "prediction.probabilities"
);
ordered_map!(
    SegmentMap,
    SegmentValue<'a>,
    "an object of segment key to value",
    "segments"
);

/// Segment values are strings; numbers and booleans are accepted and turned into text.
struct SegmentValue<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for SegmentValue<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match FeatureValue::deserialize(deserializer)? {
            FeatureValue::Text(text) => Ok(SegmentValue(text)),
            FeatureValue::Number(number) => Ok(SegmentValue(Cow::Owned(number.to_string()))),
            FeatureValue::Null => Ok(SegmentValue(Cow::Borrowed(""))),
        }
    }
}

impl<'a> SegmentMap<'a> {
    fn into_pairs(self) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
        self.0.into_iter().map(|(k, v)| (k, v.0)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREDICTION: &str = r#"{
        "schema": "tidewatch.prediction.v1",
        "model": "churn", "model_version": "3", "prediction_id": "p-1",
        "timestamp": "2026-01-01T00:00:01Z",
        "features": {"age": 41, "plan": "pro", "balance": null, "active": true},
        "prediction": {"score": 0.8, "class": "yes"},
        "latency_ms": 12.5,
        "segments": {"country": "DE"},
        "extra_field_from_a_newer_producer": [1, 2, 3]
    }"#;

    #[test]
    fn decodes_a_full_prediction_and_ignores_unknown_fields() {
        let event = decode(PREDICTION.as_bytes(), EventKind::Feature).unwrap();
        assert_eq!(
            event.kind,
            EventKind::Prediction,
            "schema overrides the topic kind"
        );
        assert_eq!(event.model, "churn");
        assert_eq!(event.model_version, "3");
        assert_eq!(event.prediction_id.as_deref(), Some("p-1"));
        assert_eq!(event.timestamp_ms, 1_767_225_601_000);
        assert_eq!(
            event.features,
            vec![
                ("age".into(), FeatureValue::Number(41.0)),
                ("plan".into(), FeatureValue::Text("pro".into())),
                ("balance".into(), FeatureValue::Null),
                ("active".into(), FeatureValue::Text("true".into())),
            ]
        );
        let prediction = event.prediction.unwrap();
        assert_eq!(prediction.score, Some(0.8));
        assert_eq!(prediction.predicted_class(), Some("yes"));
        assert_eq!(event.latency_ms, Some(12.5));
        assert_eq!(event.segments, vec![("country".into(), "DE".into())]);
    }

    #[test]
    fn borrows_plain_strings_from_the_payload() {
        let event = decode(PREDICTION.as_bytes(), EventKind::Prediction).unwrap();
        assert!(matches!(event.model, Cow::Borrowed(_)));
        assert!(matches!(event.features[0].0, Cow::Borrowed(_)));
    }

    #[test]
    fn epoch_millis_and_numeric_versions_are_accepted() {
        let payload =
            br#"{"model":"m","model_version":7,"timestamp":1700000000123,"features":{"x":1.5}}"#;
        let event = decode(payload, EventKind::Feature).unwrap();
        assert_eq!(event.timestamp_ms, 1_700_000_000_123);
        assert_eq!(event.model_version, "7");
    }

    #[test]
    fn equally_probable_classes_are_broken_by_name_not_by_order() {
        for probabilities in [
            r#"{"b":0.4,"a":0.4,"c":0.2}"#,
            r#"{"a":0.4,"c":0.2,"b":0.4}"#,
        ] {
            let payload = format!(
                r#"{{"model":"m","model_version":"1","prediction_id":"a","timestamp":0,"features":{{"x":1}},"prediction":{{"probabilities":{probabilities}}}}}"#
            );
            let event = decode(payload.as_bytes(), EventKind::Prediction).unwrap();
            assert_eq!(event.prediction.unwrap().predicted_class(), Some("a"));
        }
    }

    #[test]
    fn probabilities_give_class_and_score() {
        let payload = br#"{"model":"m","model_version":"1","prediction_id":"a","timestamp":0,
            "features":{"x":1},"prediction":{"probabilities":{"no":0.3,"yes":0.7}}}"#;
        let event = decode(payload, EventKind::Prediction).unwrap();
        let prediction = event.prediction.unwrap();
        assert_eq!(prediction.predicted_class(), Some("yes"));
        assert_eq!(prediction.effective_score(), Some(0.7));
    }

    #[test]
    fn actual_needs_a_label_and_a_prediction_id() {
        let ok =
            br#"{"model":"m","model_version":"1","prediction_id":"a","timestamp":5,"label":"yes"}"#;
        let event = decode(ok, EventKind::Actual).unwrap();
        assert_eq!(event.label, Some(Label::Class("yes".into())));
        let no_label = br#"{"model":"m","model_version":"1","prediction_id":"a","timestamp":5}"#;
        assert_eq!(
            decode(no_label, EventKind::Actual).unwrap_err().to_string(),
            "missing required field `label` for a actual event"
        );
    }

    #[test]
    fn wrong_types_are_errors_that_name_the_problem() {
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "invalid event json"),
            (
                br#"{"model":"m","model_version":"1","timestamp":"yesterday","features":{"x":1}}"#,
                "field `timestamp`: `yesterday`",
            ),
            (
                br#"{"model":"m","model_version":"1","timestamp":1,"features":{"x":[1]}}"#,
                "a number, a string, a boolean or null",
            ),
            (
                br#"{"model":"m","model_version":"1","timestamp":1,"features":{"x":1},"latency_ms":"fast"}"#,
                "invalid type: string \"fast\", expected f64",
            ),
            (
                br#"{"schema":"tidewatch.other.v9","model":"m","model_version":"1","timestamp":1}"#,
                "unknown schema `tidewatch.other.v9`",
            ),
            (
                br#"{"model":"m","model_version":"1","prediction_id":"a","timestamp":1,"features":{"x":1},"prediction":{}}"#,
                "must contain `score`, `class` or `probabilities`",
            ),
        ];
        for (payload, expected) in cases {
            let error = decode(payload, EventKind::Prediction)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected),
                "error {error:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn a_failed_prediction_carries_an_error_instead_of_an_output() {
        let payload = br#"{"model":"m","model_version":"1","prediction_id":"a","timestamp":1,
            "features":{"x":1},"error":"upstream timeout","latency_ms":3000}"#;
        let event = decode(payload, EventKind::Prediction).unwrap();
        assert_eq!(event.error.as_deref(), Some("upstream timeout"));
        assert_eq!(event.prediction, None);
    }

    #[test]
    fn timestamps_outside_the_storable_range_are_refused() {
        let at = |timestamp: &str| {
            format!(
                r#"{{"model":"m","model_version":"1","timestamp":{timestamp},"features":{{"x":1}}}}"#
            )
        };
        for (timestamp, millis) in [
            ("-1", -1),
            ("\"1969-12-31T23:59:59Z\"", -1_000),
            ("\"9999-12-31T00:00:00Z\"", 253_402_214_400_000),
            ("4291747200000", 4_291_747_200_000),
        ] {
            assert_eq!(
                decode(at(timestamp).as_bytes(), EventKind::Feature),
                Err(DecodeError::TimestampOutOfRange(millis)),
                "{timestamp}"
            );
        }
        for (timestamp, millis) in [
            ("0", 0),
            ("\"2100-01-01T00:00:00Z\"", 4_102_444_800_000),
            ("4291747199999", MAX_EVENT_TIME_MS),
        ] {
            let payload = at(timestamp);
            let event = decode(payload.as_bytes(), EventKind::Feature).unwrap();
            assert_eq!(event.timestamp_ms, millis);
        }
    }

    #[test]
    fn repeated_keys_make_an_event_malformed() {
        let many: String = (0..100)
            .map(|i| format!(r#""f{i}":{i},"#))
            .collect::<String>();
        let cases = [
            (
                r#""features":{"age":1,"plan":"a","age":2},"prediction":{"score":1}"#.to_owned(),
                "duplicate key `age` in `features`",
            ),
            (
                format!(r#""features":{{{many}"f57":0}},"prediction":{{"score":1}}"#),
                "duplicate key `f57` in `features`",
            ),
            (
                r#""features":{"x":1},"segments":{"c":"DE","c":"FR"},"prediction":{"score":1}"#
                    .to_owned(),
                "duplicate key `c` in `segments`",
            ),
            (
                r#""features":{"x":1},"prediction":{"probabilities":{"a":0.5,"a":0.5}}"#.to_owned(),
                "duplicate key `a` in `prediction.probabilities`",
            ),
            (
                r#""features":{"x":1},"prediction":{"score":1},"model":"again""#.to_owned(),
                "duplicate field `model`",
            ),
        ];
        for (body, expected) in cases {
            let payload = format!(
                r#"{{"model":"m","model_version":"1","prediction_id":"p","timestamp":1,{body}}}"#
            );
            let error = decode(payload.as_bytes(), EventKind::Prediction)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
        }
        // Keys that share a fingerprint but differ are not duplicates.
        let similar: String = (0..60).map(|i| format!(r#""a{i:02}b":{i},"#)).collect();
        let payload = format!(
            r#"{{"model":"m","model_version":"1","timestamp":1,"features":{{{similar}"z":0}}}}"#
        );
        assert_eq!(
            decode(payload.as_bytes(), EventKind::Feature)
                .unwrap()
                .features
                .len(),
            61
        );
    }

    #[test]
    fn missing_model_is_reported() {
        let payload = br#"{"model_version":"1","timestamp":1,"features":{"x":1}}"#;
        assert_eq!(
            decode(payload, EventKind::Feature).unwrap_err(),
            DecodeError::MissingField {
                field: "model",
                kind: "feature"
            }
        );
    }

    #[test]
    fn published_schemas_are_json_and_name_the_required_fields() {
        for (schema, required) in [
            (
                PREDICTION_SCHEMA,
                &[
                    "model",
                    "model_version",
                    "prediction_id",
                    "timestamp",
                    "features",
                ][..],
            ),
            (
                FEATURE_SCHEMA,
                &["model", "model_version", "timestamp", "features"][..],
            ),
            (
                ACTUAL_SCHEMA,
                &[
                    "model",
                    "model_version",
                    "prediction_id",
                    "timestamp",
                    "label",
                ][..],
            ),
        ] {
            let value: serde_json::Value = serde_json::from_str(schema).unwrap();
            let listed: Vec<&str> = value["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(listed, required);
        }
        // A prediction needs an output or an error.
        let prediction: serde_json::Value = serde_json::from_str(PREDICTION_SCHEMA).unwrap();
        assert_eq!(
            prediction["anyOf"],
            serde_json::json!([{ "required": ["prediction"] }, { "required": ["error"] }])
        );
    }
}
