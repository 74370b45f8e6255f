//! The `.proto` file against the official protobuf implementation: the
//! Python producer example (`examples/python-producer/produce.py`) compiles
//! `events/schemas/tidewatch/v1/event.proto` with protoc and converts JSON
//! events into messages; each must decode to the event its JSON decodes to
//! (but for the order of map entries, which protobuf does not keep).
//!
//! Needs `TIDEWATCH_TEST_PRODUCER_PYTHON` (set by `scripts/test.sh`, a
//! Python with the example's requirements); without it the test fails and
//! says why.

use std::path::PathBuf;
use std::process::Command;

use events::{decode, protobuf, Event, EventKind};

/// `event` with its maps (`segments`, `prediction.probabilities`) in key order.
fn in_key_order(mut event: Event<'_>) -> Event<'_> {
    event.segments.sort();
    if let Some(prediction) = &mut event.prediction {
        prediction.probabilities.sort_by(|a, b| a.0.cmp(&b.0));
    }
    event
}

const EVENTS: [&str; 9] = [
    r#"{"schema":"tidewatch.prediction.v1","model":"churn","model_version":"7","prediction_id":"p-1","timestamp":"2026-01-05T14:03:00.250Z","features":{"age":41,"monthly_charges":79.51234567890123,"contract":"one-year","promo":null,"flag":true,"off":false,"neg":-1e-300,"big":1.7976931348623157e308},"prediction":{"score":0.8123456789012345,"class":"yes"},"latency_ms":12.5,"segments":{"country":"DE","tier":"gold"}}"#,
    r#"{"schema":"tidewatch.prediction.v1","model":"m","model_version":3,"prediction_id":42,"timestamp":1767621780000,"features":{"x":0.1},"prediction":{"probabilities":{"a":0.2,"b":0.5,"c":0.3}}}"#,
    r#"{"schema":"tidewatch.prediction.v1","model":"m","model_version":"1","prediction_id":"e","timestamp":1767621780001,"features":{"x":2},"error":"timeout after 30 s"}"#,
    r#"{"schema":"tidewatch.prediction.v1","model":"m","model_version":"1","prediction_id":"s","timestamp":1767621780001,"features":{"x":2},"prediction":{"score":0.0}}"#,
    r#"{"schema":"tidewatch.actual.v1","model":"churn","model_version":"7","prediction_id":"p-1","timestamp":1767625380000,"label":"yes","segments":{"country":"DE"}}"#,
    r#"{"schema":"tidewatch.actual.v1","model":"r","model_version":"2","prediction_id":"q","timestamp":1767625380000,"label":-3.25}"#,
    r#"{"schema":"tidewatch.actual.v1","model":"b","model_version":"2","prediction_id":"q","timestamp":1767625380000,"label":true}"#,
    r#"{"model":"m","model_version":"1","timestamp":1700000000123,"features":{"ünï":"çødé ✓","y":"a\"b"}}"#,
    r#"{"schema":"tidewatch.feature.v1","model":"m","model_version":"1","timestamp":1700000000123,"features":{"z":null},"latency_ms":0}"#,
];

#[test]
fn messages_of_the_official_protobuf_library_decode_to_the_json_events() {
    let python = std::env::var("TIDEWATCH_TEST_PRODUCER_PYTHON").expect(
        "TIDEWATCH_TEST_PRODUCER_PYTHON is not set: run the suite through scripts/test.sh, \
         which installs examples/python-producer/requirements.txt",
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let input = std::env::temp_dir().join(format!("tidewatch-proto-{}.jsonl", std::process::id()));
    std::fs::write(&input, EVENTS.join("\n")).unwrap();
    let output = Command::new(python)
        .arg(root.join("examples/python-producer/produce.py"))
        .arg("--dump")
        .arg(&input)
        .output()
        .expect("running the Python producer");
    let _ = std::fs::remove_file(&input);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .collect();
    assert_eq!(lines.len(), EVENTS.len());
    for (json, hex) in EVENTS.iter().zip(lines) {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let expected = decode(json.as_bytes(), EventKind::Feature).unwrap();
        let decoded = protobuf::decode(&bytes, EventKind::Feature).unwrap();
        assert_eq!(in_key_order(decoded), in_key_order(expected), "{json}");
    }
}
