//! Property tests of the decoder, run for a bounded number of cases (a few
//! seconds in a debug build): random mutations of valid payloads never
//! panic and never yield an event that breaks the decoder's promises, and
//! generated events are refused exactly when a map repeats a key or the
//! time is out of range. The same for the Protocol Buffers decoder, whose
//! oracle is the JSON decoder: every event JSON accepts, encoded, decodes
//! to the same event.

use std::collections::HashSet;

use events::{
    decode, protobuf, DecodeError, Event, EventKind, FeatureValue, MAX_EVENT_TIME_MS,
    MIN_EVENT_TIME_MS,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SEEDS: [&str; 3] = [
    r#"{"schema":"tidewatch.prediction.v1","model":"churn","model_version":"7","prediction_id":"p-1","timestamp":"2026-01-05T14:03:00Z","features":{"age":41,"monthly_charges":79.5,"contract":"one-year","promo":null,"flag":true},"prediction":{"score":0.81,"class":"yes","probabilities":{"yes":0.81,"no":0.19}},"latency_ms":12.5,"segments":{"country":"DE"}}"#,
    r#"{"schema":"tidewatch.actual.v1","model":"churn","model_version":7,"prediction_id":42,"timestamp":1767621780000,"label":"yes"}"#,
    r#"{"model":"m","model_version":"1","timestamp":1700000000123,"features":{"x":1.5,"y":"a\u00e9\"b"}}"#,
];

/// What every successfully decoded event must satisfy.
fn check_promises(decoded: Result<Event<'_>, DecodeError>) {
    let Ok(event) = decoded else {
        return;
    };
    assert!(
        (MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&event.timestamp_ms),
        "timestamp {} accepted",
        event.timestamp_ms
    );
    let mut names = HashSet::new();
    for (name, value) in &event.features {
        assert!(
            names.insert(name.as_ref()),
            "duplicate feature {name} accepted"
        );
        if let FeatureValue::Number(number) = value {
            assert!(!number.is_nan(), "NaN feature accepted");
        }
    }
    let mut keys = HashSet::new();
    for (key, _) in &event.segments {
        assert!(
            keys.insert(key.as_ref()),
            "duplicate segment {key} accepted"
        );
    }
    if let Some(latency) = event.latency_ms {
        assert!(latency.is_finite());
    }
    if let Some(prediction) = &event.prediction {
        assert!(prediction.score.is_none_or(f64::is_finite));
        assert!(prediction.probabilities.iter().all(|(_, p)| p.is_finite()));
    }
}

const FRAGMENTS: [&str; 14] = [
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "1e999",
    "-1",
    "\"age\":2,",
    "\"timestamp\":99999999999999,",
    "\\u0000",
    "\u{feff}",
];

/// Applies one to three random mutations to `payload`.
fn mutate(rng: &mut ChaCha8Rng, payload: &mut Vec<u8>, fragments: &[&[u8]]) {
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..=payload.len());
        match rng.random_range(0..5) {
            0 => payload.truncate(at),
            1 => {
                if at < payload.len() {
                    payload[at] = rng.random();
                }
            }
            2 => {
                let fragment = fragments[rng.random_range(0..fragments.len())];
                payload.splice(at..at, fragment.iter().copied());
            }
            3 => {
                let end = rng.random_range(at..=payload.len());
                let copy = payload[at..end].to_vec();
                payload.splice(end..end, copy);
            }
            _ => {
                let end = rng.random_range(at..=payload.len());
                payload.drain(at..end);
            }
        }
    }
}

#[test]
fn mutated_payloads_never_panic_or_break_a_promise() {
    let mut rng = ChaCha8Rng::seed_from_u64(20261130);
    let fragments: Vec<&[u8]> = FRAGMENTS.iter().map(|f| f.as_bytes()).collect();
    let mut accepted = 0;
    for case in 0..30_000 {
        let mut payload = SEEDS[case % SEEDS.len()].as_bytes().to_vec();
        mutate(&mut rng, &mut payload, &fragments);
        let decoded = decode(&payload, EventKind::Prediction);
        if let Ok(event) = &decoded {
            accepted += 1;
            let encoded = protobuf::encode(event);
            assert_eq!(
                protobuf::decode(&encoded, EventKind::Prediction).as_ref(),
                Ok(event),
                "{}",
                String::from_utf8_lossy(&payload)
            );
        }
        check_promises(decoded);
    }
    assert!(accepted > 300, "only {accepted} mutated payloads decoded");
}

#[test]
fn mutated_protobuf_payloads_never_panic_or_break_a_promise() {
    let mut rng = ChaCha8Rng::seed_from_u64(20261203);
    let seeds: Vec<Vec<u8>> = SEEDS
        .iter()
        .map(|seed| protobuf::encode(&decode(seed.as_bytes(), EventKind::Feature).unwrap()))
        .collect();
    // Wire-format pieces: tags of every wire type, long varints, lengths
    // larger than what follows, a NaN.
    let nan = [0x11, 0, 0, 0, 0, 0, 0, 0xf8, 0x7f];
    let fragments: [&[u8]; 9] = [
        &[0x32, 0x7f],
        &[0x0a, 0x05],
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
        &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
        &[0x0b],
        &[0x0d, 1, 2, 3, 4],
        &[
            0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        &[0x32, 9, 0x0a, 1, b'a'],
        &nan,
    ];
    let mut accepted = 0;
    for case in 0..30_000 {
        let mut payload = seeds[case % seeds.len()].clone();
        mutate(&mut rng, &mut payload, &fragments);
        let decoded = protobuf::decode(&payload, EventKind::Prediction);
        accepted += usize::from(decoded.is_ok());
        check_promises(decoded);
    }
    assert!(accepted > 1_000, "only {accepted} mutated payloads decoded");
}

#[test]
fn generated_events_are_refused_exactly_when_keys_repeat_or_time_is_out_of_range() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let names = ["a", "b", "ab", "ba", "aa", "bb", "c", "ca", "z"];
    for _ in 0..20_000 {
        let count = rng.random_range(1..12);
        let keys: Vec<&str> = (0..count)
            .map(|_| names[rng.random_range(0..names.len())])
            .collect();
        let repeated = keys.iter().collect::<HashSet<_>>().len() < keys.len();
        let timestamp: i64 = match rng.random_range(0..4) {
            0 => rng.random_range(-1_000_000..0),
            1 => rng.random_range(MAX_EVENT_TIME_MS + 1..MAX_EVENT_TIME_MS + 1_000_000),
            _ => rng.random_range(MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS),
        };
        let in_range = (MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&timestamp);
        let features: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| format!(r#""{key}":{i}"#))
            .collect();
        let payload = format!(
            r#"{{"model":"m","model_version":"1","timestamp":{timestamp},"features":{{{}}}}}"#,
            features.join(",")
        );
        let decoded = decode(payload.as_bytes(), EventKind::Feature);
        assert_eq!(
            decoded.is_ok(),
            !repeated && in_range,
            "{payload}: {decoded:?}"
        );
    }
}
