//! Memory per pending prediction in the join buffer: 1,000,000 predictions
//! of a classifier with one segment key, none joined, resident memory
//! measured before and after (Linux `/proc/self/status`).
//!
//! `cargo run --release -p ingest --example join_memory`

use std::time::Duration;

use detectors::catalog::Catalog;
use detectors::spec::{FeatureKind, FeatureSpec, ModelSpec, Task};
use detectors::window::WindowSize;
use events::EventKind;
use ingest::engine::{Engine, EngineSettings};

const PREDICTIONS: u64 = 1_000_000;

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("Linux /proc")
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .expect("VmRSS")
}

fn main() {
    let spec = ModelSpec::new(
        "churn",
        Task::Classification,
        vec![FeatureSpec {
            name: "age".into(),
            kind: FeatureKind::Numeric,
        }],
        vec!["country".into()],
        50,
        100,
    )
    .expect("valid spec");
    let settings = EngineSettings::new(WindowSize::from_millis(3_600_000).expect("one hour"))
        .with_range_size(10_000.try_into().expect("positive"))
        .with_join(Duration::from_secs(86_400), PREDICTIONS as usize)
        .with_max_future_skew(Duration::MAX);
    let mut engine = Engine::new(settings, Catalog::new([spec]));
    let countries = ["DE", "FR", "US", "GB"];
    let before = resident_kib();
    for i in 0..PREDICTIONS {
        // Realistic ids (UUID-like, 36 characters), one window.
        let payload = format!(
            r#"{{"model":"churn","model_version":"7","prediction_id":"{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}","timestamp":{},"features":{{"age":{:.6}}},"prediction":{{"score":{:.6},"class":"{}"}},"segments":{{"country":"{}"}}}}"#,
            i.wrapping_mul(2_654_435_761) as u32,
            i % 65_536,
            i % 4_096,
            (i * 7) % 4_096,
            i * 1_000_003,
            1_767_571_200_000 + (i % 3_000_000) as i64,
            18.0 + (i % 6_000) as f64 / 100.0,
            (i % 997) as f64 / 997.0,
            if i % 3 == 0 { "yes" } else { "no" },
            countries[(i % 4) as usize],
        );
        engine.ingest(
            "predictions/0",
            i,
            payload.as_bytes(),
            EventKind::Prediction,
        );
        if engine.needs_checkpoint() {
            let _ = engine.checkpoint();
            engine.checkpoint_stored();
        }
    }
    let _ = engine.checkpoint();
    engine.checkpoint_stored();
    let after = resident_kib();
    let counters = engine.counters();
    assert_eq!(counters.recorded, PREDICTIONS);
    assert_eq!(counters.join_evicted + counters.join_expired, 0);
    println!(
        "{PREDICTIONS} pending predictions: resident memory {before} KiB before, {after} KiB after: \
         {} bytes per pending prediction",
        (after - before) * 1024 / PREDICTIONS
    );
}
