//! Events in Protocol Buffers: the `tidewatch.v1.Event` message of
//! `events/schemas/tidewatch/v1/event.proto` ([`PROTO`]), for producers logging at
//! rates where JSON's decimal numbers cost more than the monitoring.
//!
//! A message carries the fields of the JSON event and, once read, goes
//! through the same rules ([`crate::decode`]'s). What differs:
//! - `timestamp_ms` is integer milliseconds (no RFC 3339 text);
//! - proto3 writes no default scalar, so an empty `model`, `model_version`
//!   or `prediction_id`, or a `timestamp_ms` of 0, reads as missing;
//! - features are a repeated `Feature` message, kept in order; a feature
//!   with no value set is missing (JSON `null`), a boolean reads as the text
//!   `"true"`/`"false"` as in JSON, and a NaN or infinite number, which JSON
//!   cannot carry, is refused;
//! - a key repeated in `features`, `segments` or `prediction.probabilities`,
//!   or a singular field repeated, makes the event malformed, as in JSON
//!   (protobuf's own rule, the last one wins, would pick one silently);
//! - unknown fields are skipped; a known field of another wire type, a
//!   truncated field or invalid UTF-8 in a string is an error.
//!
//! Strings are borrowed from the payload. The wire format (varints, 8-byte
//! doubles, length-delimited fields) is read here, in a few inlined lines:
//! the reader of `quick-protobuf` was tried first and cost a third more per
//! event, its small functions not being inlined across crates, and it let
//! a nested length run past its parent's end. Each nested message is read
//! from its own slice, so a length that overruns its parent is an error and
//! never reads the parent's bytes.

use std::borrow::Cow;

use crate::{
    first_duplicate, from_raw, DecodeError, Event, EventKind, FeatureMap, FeatureValue, Label,
    ProbabilityMap, RawEvent, RawPrediction, RawTimestamp, SegmentMap, SegmentValue,
    StringOrNumber, Text,
};

/// The `.proto` file describing the messages.
pub const PROTO: &str = include_str!("../schemas/tidewatch/v1/event.proto");

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

const fn tag(field: u32, wire: u32) -> u32 {
    (field << 3) | wire
}

/// Decodes one `tidewatch.v1.Event`. `default_kind` is the kind of the
/// topic it came from, used when the message has no `schema`.
pub fn decode(payload: &[u8], default_kind: EventKind) -> Result<Event<'_>, DecodeError> {
    from_raw(read_event(payload)?, default_kind)
}

fn malformed(field: &str, error: impl std::fmt::Display) -> DecodeError {
    DecodeError::Protobuf(format!("field `{field}`: {error}"))
}

/// Sets a singular field once.
fn once<T>(slot: &mut Option<T>, value: T, field: &str) -> Result<(), DecodeError> {
    if slot.replace(value).is_some() {
        return Err(malformed(field, "repeated, but it is a single value"));
    }
    Ok(())
}

/// The reader of one message: its own bytes, so nothing it reads can lie
/// outside them.
struct Message<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Field numbers and names of the message, for errors.
    fields: &'static [(u32, &'static str)],
}

impl<'a> Message<'a> {
    fn new(bytes: &'a [u8], fields: &'static [(u32, &'static str)]) -> Self {
        Message {
            bytes,
            at: 0,
            fields,
        }
    }

    #[cold]
    fn error(&self, tag: u32, problem: &str) -> DecodeError {
        let name = self
            .fields
            .iter()
            .find(|(number, _)| *number == tag >> 3)
            .map_or("?", |(_, name)| name);
        malformed(name, problem)
    }

    /// A base-128 varint of at most 10 bytes.
    #[inline]
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    /// The next tag, or `None` at the end of the message.
    #[inline]
    fn next_tag(&mut self) -> Result<Option<u32>, DecodeError> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        match self.varint().map(u32::try_from) {
            Some(Ok(tag)) => Ok(Some(tag)),
            _ => Err(DecodeError::Protobuf("invalid tag".into())),
        }
    }

    #[inline]
    fn take(&mut self, length: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(length)?;
        let bytes = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(bytes)
    }

    /// A length-delimited field: a nested message's bytes, or a string's.
    #[inline]
    fn nested(&mut self, tag: u32) -> Result<&'a [u8], DecodeError> {
        let length = self
            .varint()
            .and_then(|length| usize::try_from(length).ok());
        match length.and_then(|length| self.take(length)) {
            Some(bytes) => Ok(bytes),
            None => Err(self.error(tag, "truncated")),
        }
    }

    #[inline]
    fn string(&mut self, tag: u32) -> Result<&'a str, DecodeError> {
        let bytes = self.nested(tag)?;
        std::str::from_utf8(bytes).map_err(|_| self.error(tag, "invalid UTF-8"))
    }

    #[inline]
    fn double(&mut self, tag: u32) -> Result<f64, DecodeError> {
        match self.take(8) {
            Some(bytes) => Ok(f64::from_le_bytes(bytes.try_into().expect("8 bytes"))),
            None => Err(self.error(tag, "truncated")),
        }
    }

    #[inline]
    fn int64(&mut self, tag: u32) -> Result<i64, DecodeError> {
        // int64 is the varint of the two's complement.
        self.varint()
            .map(|value| value as i64)
            .ok_or_else(|| self.error(tag, "truncated or overlong varint"))
    }

    #[inline]
    fn boolean(&mut self, tag: u32) -> Result<bool, DecodeError> {
        self.varint()
            .map(|value| value != 0)
            .ok_or_else(|| self.error(tag, "truncated or overlong varint"))
    }

    /// Skips a field this version does not know; a known field number
    /// with an unexpected wire type is an error.
    fn skip(&mut self, tag: u32) -> Result<(), DecodeError> {
        if self.fields.iter().any(|(number, _)| *number == tag >> 3) {
            return Err(self.error(tag, &format!("wire type {} is not this field's", tag & 7)));
        }
        let skipped = match tag & 7 {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self
                .varint()
                .and_then(|length| usize::try_from(length).ok())
                .and_then(|length| self.take(length))
                .map(drop),
            FIXED32 => self.take(4).map(drop),
            wire => {
                return Err(DecodeError::Protobuf(format!(
                    "unknown field {}: wire type {wire} (groups are not supported)",
                    tag >> 3
                )))
            }
        };
        skipped
            .ok_or_else(|| DecodeError::Protobuf(format!("unknown field {}: truncated", tag >> 3)))
    }
}

const EVENT_FIELDS: &[(u32, &str)] = &[
    (1, "schema"),
    (2, "model"),
    (3, "model_version"),
    (4, "prediction_id"),
    (5, "timestamp_ms"),
    (6, "features"),
    (7, "prediction"),
    (8, "latency_ms"),
    (9, "segments"),
    (10, "label"),
    (11, "error"),
];

fn read_event(payload: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    const SCHEMA: u32 = tag(1, LEN);
    const MODEL: u32 = tag(2, LEN);
    const MODEL_VERSION: u32 = tag(3, LEN);
    const PREDICTION_ID: u32 = tag(4, LEN);
    const TIMESTAMP: u32 = tag(5, VARINT);
    const FEATURE: u32 = tag(6, LEN);
    const PREDICTION: u32 = tag(7, LEN);
    const LATENCY: u32 = tag(8, FIXED64);
    const SEGMENT: u32 = tag(9, LEN);
    const LABEL: u32 = tag(10, LEN);
    const ERROR: u32 = tag(11, LEN);

    let mut message = Message::new(payload, EVENT_FIELDS);
    let mut raw = RawEvent::default();
    let mut timestamp = None;
    let mut features = Vec::with_capacity(16);
    let mut segments = Vec::new();
    while let Some(tag) = message.next_tag()? {
        match tag {
            SCHEMA => once(&mut raw.schema, Text(message.string(tag)?.into()), "schema")?,
            MODEL => once(&mut raw.model, Text(message.string(tag)?.into()), "model")?,
            MODEL_VERSION => once(
                &mut raw.model_version,
                StringOrNumber(message.string(tag)?.into()),
                "model_version",
            )?,
            PREDICTION_ID => once(
                &mut raw.prediction_id,
                StringOrNumber(message.string(tag)?.into()),
                "prediction_id",
            )?,
            TIMESTAMP => once(&mut timestamp, message.int64(tag)?, "timestamp_ms")?,
            FEATURE => features.push(read_feature(message.nested(tag)?)?),
            PREDICTION => once(
                &mut raw.prediction,
                read_prediction(message.nested(tag)?)?,
                "prediction",
            )?,
            LATENCY => once(&mut raw.latency_ms, message.double(tag)?, "latency_ms")?,
            SEGMENT => {
                let (key, value) = read_string_entry(message.nested(tag)?)?;
                segments.push((key, SegmentValue(value)));
            }
            LABEL => {
                if let Some(label) = read_label(message.nested(tag)?)? {
                    once(&mut raw.label, label, "label")?;
                }
            }
            ERROR => once(&mut raw.error, Text(message.string(tag)?.into()), "error")?,
            _ => message.skip(tag)?,
        }
    }
    if let Some(key) = first_duplicate(&features) {
        return Err(DecodeError::Protobuf(format!(
            "duplicate key `{key}` in `features`"
        )));
    }
    if let Some(key) = first_duplicate(&segments) {
        return Err(DecodeError::Protobuf(format!(
            "duplicate key `{key}` in `segments`"
        )));
    }
    raw.timestamp = timestamp.map(RawTimestamp::Millis);
    raw.features = Some(FeatureMap(features));
    raw.segments = Some(SegmentMap(segments));
    Ok(raw)
}

fn read_feature(bytes: &[u8]) -> Result<(Cow<'_, str>, FeatureValue<'_>), DecodeError> {
    const NAME: u32 = tag(1, LEN);
    const NUMBER: u32 = tag(2, FIXED64);
    const TEXT: u32 = tag(3, LEN);
    const FLAG: u32 = tag(4, VARINT);
    let mut message = Message::new(
        bytes,
        &[
            (1, "features.name"),
            (2, "features.number"),
            (3, "features.text"),
            (4, "features.flag"),
        ],
    );
    let mut name = "";
    // A oneof: the last member set is the value, as protobuf reads it.
    let mut value = FeatureValue::Null;
    while let Some(tag) = message.next_tag()? {
        match tag {
            NAME => name = message.string(tag)?,
            NUMBER => value = FeatureValue::Number(message.double(tag)?),
            TEXT => value = FeatureValue::Text(message.string(tag)?.into()),
            FLAG => value = FeatureValue::Text(bool_text(message.boolean(tag)?).into()),
            _ => message.skip(tag)?,
        }
    }
    if matches!(value, FeatureValue::Number(number) if !number.is_finite()) {
        return Err(DecodeError::Protobuf(format!(
            "feature `{name}` must be a finite number"
        )));
    }
    Ok((name.into(), value))
}

fn bool_text(flag: bool) -> &'static str {
    if flag {
        "true"
    } else {
        "false"
    }
}

fn read_prediction(bytes: &[u8]) -> Result<RawPrediction<'_>, DecodeError> {
    const SCORE: u32 = tag(1, FIXED64);
    const CLASS: u32 = tag(2, LEN);
    const PROBABILITY: u32 = tag(3, LEN);
    let mut message = Message::new(
        bytes,
        &[
            (1, "prediction.score"),
            (2, "prediction.class_label"),
            (3, "prediction.probabilities"),
        ],
    );
    let mut score = None;
    let mut class = None;
    let mut probabilities = Vec::new();
    while let Some(tag) = message.next_tag()? {
        match tag {
            SCORE => once(&mut score, message.double(tag)?, "prediction.score")?,
            CLASS => once(
                &mut class,
                StringOrNumber(message.string(tag)?.into()),
                "prediction.class_label",
            )?,
            PROBABILITY => probabilities.push(read_probability(message.nested(tag)?)?),
            _ => message.skip(tag)?,
        }
    }
    if let Some(key) = first_duplicate(&probabilities) {
        return Err(DecodeError::Protobuf(format!(
            "duplicate key `{key}` in `prediction.probabilities`"
        )));
    }
    Ok(RawPrediction {
        score,
        class,
        probabilities: (!probabilities.is_empty()).then_some(ProbabilityMap(probabilities)),
    })
}

/// A `map<string, string>` entry; a missing key or value is empty, as
/// protobuf reads it.
fn read_string_entry(bytes: &[u8]) -> Result<(Cow<'_, str>, Cow<'_, str>), DecodeError> {
    const KEY: u32 = tag(1, LEN);
    const VALUE: u32 = tag(2, LEN);
    let mut message = Message::new(bytes, &[(1, "segments.key"), (2, "segments.value")]);
    let (mut key, mut value) = ("", "");
    while let Some(tag) = message.next_tag()? {
        match tag {
            KEY => key = message.string(tag)?,
            VALUE => value = message.string(tag)?,
            _ => message.skip(tag)?,
        }
    }
    Ok((key.into(), value.into()))
}

/// A `map<string, double>` entry of `prediction.probabilities`.
fn read_probability(bytes: &[u8]) -> Result<(Cow<'_, str>, f64), DecodeError> {
    const KEY: u32 = tag(1, LEN);
    const VALUE: u32 = tag(2, FIXED64);
    let mut message = Message::new(
        bytes,
        &[
            (1, "prediction.probabilities.key"),
            (2, "prediction.probabilities.value"),
        ],
    );
    let (mut key, mut value) = ("", 0.0);
    while let Some(tag) = message.next_tag()? {
        match tag {
            KEY => key = message.string(tag)?,
            VALUE => value = message.double(tag)?,
            _ => message.skip(tag)?,
        }
    }
    Ok((key.into(), value))
}

/// The label, `None` when no member of its oneof is set.
fn read_label(bytes: &[u8]) -> Result<Option<Label<'_>>, DecodeError> {
    const NUMBER: u32 = tag(1, FIXED64);
    const CLASS: u32 = tag(2, LEN);
    const FLAG: u32 = tag(3, VARINT);
    let mut message = Message::new(
        bytes,
        &[
            (1, "label.number"),
            (2, "label.class_label"),
            (3, "label.flag"),
        ],
    );
    let mut label = None;
    while let Some(tag) = message.next_tag()? {
        match tag {
            NUMBER => {
                let number = message.double(tag)?;
                if !number.is_finite() {
                    return Err(DecodeError::NotFinite("label"));
                }
                label = Some(Label::Number(number));
            }
            CLASS => label = Some(Label::Class(message.string(tag)?.into())),
            FLAG => label = Some(Label::Class(bool_text(message.boolean(tag)?).into())),
            _ => message.skip(tag)?,
        }
    }
    Ok(label)
}

/// Encodes `event` as a `tidewatch.v1.Event`, naming its kind in `schema`:
/// what a producer's generated code writes (the tests, `tidewatch replay
/// --encoding protobuf` and the benchmarks use it).
pub fn encode(event: &Event<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut scratch = Vec::with_capacity(64);
    let mut entry = Vec::new();
    let w = &mut out;
    put_string(w, 1, event.kind.schema_id());
    put_string(w, 2, &event.model);
    put_string(w, 3, &event.model_version);
    if let Some(id) = &event.prediction_id {
        put_string(w, 4, id);
    }
    put_varint(w, u64::from(tag(5, VARINT)));
    put_varint(w, event.timestamp_ms as u64);
    for (name, value) in &event.features {
        put_nested(w, 6, &mut scratch, |w| {
            put_string(w, 1, name);
            match value {
                FeatureValue::Number(number) => put_double(w, 2, *number),
                FeatureValue::Text(text) => put_string(w, 3, text),
                FeatureValue::Null => {}
            }
        });
    }
    if let Some(prediction) = &event.prediction {
        put_nested(w, 7, &mut scratch, |w| {
            if let Some(score) = prediction.score {
                put_double(w, 1, score);
            }
            if let Some(class) = &prediction.class {
                put_string(w, 2, class);
            }
            for (class, probability) in &prediction.probabilities {
                put_nested(w, 3, &mut entry, |w| {
                    put_string(w, 1, class);
                    put_double(w, 2, *probability);
                });
            }
        });
    }
    if let Some(latency) = event.latency_ms {
        put_double(w, 8, latency);
    }
    for (key, value) in &event.segments {
        put_nested(w, 9, &mut scratch, |w| {
            put_string(w, 1, key);
            put_string(w, 2, value);
        });
    }
    if let Some(label) = &event.label {
        put_nested(w, 10, &mut scratch, |w| match label {
            Label::Number(number) => put_double(w, 1, *number),
            Label::Class(class) => put_string(w, 2, class),
        });
    }
    if let Some(error) = &event.error {
        put_string(w, 11, error);
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(tag(field, LEN)));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_string(out: &mut Vec<u8>, field: u32, value: &str) {
    put_bytes(out, field, value.as_bytes());
}

fn put_double(out: &mut Vec<u8>, field: u32, value: f64) {
    put_varint(out, u64::from(tag(field, FIXED64)));
    out.extend_from_slice(&value.to_le_bytes());
}

/// Writes the message `body` writes as field `field`, by way of `scratch`.
fn put_nested(
    out: &mut Vec<u8>,
    field: u32,
    scratch: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>),
) {
    scratch.clear();
    body(scratch);
    put_bytes(out, field, scratch);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREDICTION: &str = r#"{
        "schema": "tidewatch.prediction.v1",
        "model": "churn", "model_version": "3", "prediction_id": "p-1",
        "timestamp": 1767225601000,
        "features": {"age": 41, "plan": "pro", "balance": null, "active": true},
        "prediction": {"score": 0.8, "class": "yes", "probabilities": {"no": 0.2, "yes": 0.8}},
        "latency_ms": 12.5,
        "segments": {"country": "DE", "tier": "gold"}
    }"#;

    fn json() -> Event<'static> {
        crate::decode(PREDICTION.as_bytes(), EventKind::Feature).unwrap()
    }

    #[test]
    fn an_encoded_event_decodes_to_the_json_event() {
        let payload = encode(&json());
        let event = decode(&payload, EventKind::Feature).unwrap();
        assert_eq!(event, json());
        assert!(matches!(event.model, Cow::Borrowed(_)));
        assert!(matches!(
            event.features[1].1,
            FeatureValue::Text(Cow::Borrowed(_))
        ));
        let actual = crate::decode(
            br#"{"model":"m","model_version":"1","prediction_id":"a","timestamp":5,"label":0.25}"#,
            EventKind::Actual,
        )
        .unwrap();
        assert_eq!(
            decode(&encode(&actual), EventKind::Prediction).unwrap(),
            actual
        );
    }

    /// Hand-written bytes, independent of [`encode`]: the wire format as
    /// the protobuf specification lays it out.
    #[test]
    fn reads_the_wire_format_of_the_specification() {
        let mut payload = vec![0x12, 1, b'm', 0x1a, 1, b'1', 0x28];
        // timestamp_ms = 1_700_000_000_000 as a varint
        let mut t: u64 = 1_700_000_000_000;
        while t >= 0x80 {
            payload.push((t as u8) | 0x80);
            t >>= 7;
        }
        payload.push(t as u8);
        // features { name: "x" number: 2.5 }
        payload.extend([0x32, 12, 0x0a, 1, b'x', 0x11]);
        payload.extend(2.5f64.to_le_bytes());
        // an unknown varint field 99 and an unknown length-delimited field 100
        payload.extend([0x98, 0x06, 0x01, 0xa2, 0x06, 2, b'o', b'k']);
        // features { name: "on" flag: true }
        payload.extend([0x32, 6, 0x0a, 2, b'o', b'n', 0x20, 1]);
        let event = decode(&payload, EventKind::Feature).unwrap();
        assert_eq!(event.kind, EventKind::Feature);
        assert_eq!(event.model, "m");
        assert_eq!(event.timestamp_ms, 1_700_000_000_000);
        assert_eq!(
            event.features,
            vec![
                ("x".into(), FeatureValue::Number(2.5)),
                ("on".into(), FeatureValue::Text("true".into())),
            ]
        );
    }

    #[test]
    fn malformed_messages_name_the_problem() {
        let good = encode(&json());
        let feature = |body: &[u8]| {
            let mut payload = good.clone();
            payload.push(0x32);
            payload.push(body.len() as u8);
            payload.extend(body);
            payload
        };
        let mut nan = vec![0x0a, 1, b'z', 0x11];
        nan.extend(f64::NAN.to_le_bytes());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 3].to_vec(), "invalid event protobuf"),
            (
                feature(&[0x0a, 3, b'a', b'g', b'e']),
                "duplicate key `age` in `features`",
            ),
            (feature(&nan), "feature `z` must be a finite number"),
            (feature(&[0x0a, 1, 0xff]), "field `features.name`"),
            // model (field 2) as a varint
            (
                [good.clone(), vec![0x10, 1]].concat(),
                "field `model`: wire type 0",
            ),
            // a second model
            (
                [good.clone(), vec![0x12, 1, b'n']].concat(),
                "field `model`: repeated",
            ),
            // a nested length past the end of the message
            (
                [good.clone(), vec![0x32, 50, 0x0a, 1]].concat(),
                "field `features`",
            ),
            (Vec::new(), "missing required field `model`"),
        ];
        for (payload, expected) in cases {
            let error = decode(&payload, EventKind::Prediction)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn a_nested_length_cannot_reach_into_its_parent() {
        // A second prediction of 4 bytes holding a probability entry
        // declared 9 bytes long: the entry overruns the prediction and must
        // fail, not read the `model` field after it.
        let mut payload = encode(&json());
        payload.extend([0x3a, 4, 0x1a, 9, 0x0a, 1]);
        payload.extend([0x12, 1, b'm']);
        let error = decode(&payload, EventKind::Prediction).unwrap_err();
        assert!(matches!(error, DecodeError::Protobuf(_)), "{error}");
    }
}
