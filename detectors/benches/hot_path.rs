//! Hot path of ingestion: decode a 20-feature JSON prediction, assign its
//! event-time window, update every sketch (with reference bins). Numbers
//! are logged at full precision (shortest round-trip, up to 17 digits), as
//! producers serializing `f64`s send them.
//!
//! The same events encoded as `tidewatch.v1.Event` Protocol Buffers
//! messages go through the same path (`protobuf_decode_window_sketch_…`),
//! and each decoder is also timed alone (`decode_only_…`).
//!
//! Run: `cargo bench -p detectors --bench hot_path`. Throughput is reported
//! in events per second on one core (criterion runs single-threaded).
//!
//! The `per_event_models` group measures what the opt-in per-event models
//! add to the cache-resident, unsegmented updates: multivariate drift (the
//! reconstruction error of each row) and loss estimation (two tree
//! ensembles per prediction of a regression model).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use detectors::aggregate::Recorded;
use detectors::catalog::Catalog;
use detectors::reference::{ReferenceBuilder, TrainingValue};
use detectors::spec::{FeatureKind, FeatureSpec, ModelSpec, Task};
use detectors::window::{Arrival, EventTimeClock, WindowSize};
use detectors::WindowAggregates;
use events::{Encoding, EventKind, Format};

const FEATURES: usize = 20;
const EVENTS: usize = 10_000;

fn spec() -> ModelSpec {
    spec_with_segments(vec!["country".into()])
}

fn spec_with_segments(segment_keys: Vec<String>) -> ModelSpec {
    let features = (0..FEATURES)
        .map(|i| FeatureSpec {
            name: format!("f{i:02}"),
            kind: if i % 5 == 4 {
                FeatureKind::Categorical
            } else {
                FeatureKind::Numeric
            },
        })
        .collect();
    ModelSpec::new(
        "bench",
        Task::Classification,
        features,
        segment_keys,
        50,
        100,
    )
    .unwrap()
}

fn payloads() -> Vec<String> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..EVENTS)
        .map(|i| {
            let features: Vec<String> = (0..FEATURES)
                .map(|f| {
                    if f % 5 == 4 {
                        format!("\"f{f:02}\":\"c{}\"", (next() * 8.0) as u32)
                    } else {
                        format!("\"f{f:02}\":{}", next() * 100.0 - 20.0)
                    }
                })
                .collect();
            format!(
                r#"{{"model":"bench","model_version":"1","prediction_id":"p{i}","timestamp":{},"features":{{{}}},"prediction":{{"score":{}}},"latency_ms":{:.3},"segments":{{"country":"{}"}}}}"#,
                1_700_000_000_000i64 + i as i64 * 50,
                features.join(","),
                next(),
                next() * 30.0,
                ["DE", "FR", "US"][i % 3]
            )
        })
        .collect()
}

fn catalog() -> Catalog {
    catalog_for(spec())
}

fn catalog_for(spec: ModelSpec) -> Catalog {
    let regression = spec.task() == Task::Regression;
    let mut builder = ReferenceBuilder::new(&spec, "1", "bench");
    for i in 0..5_000 {
        builder.add_row();
        for f in 0..FEATURES {
            let name = format!("f{f:02}");
            if f % 5 == 4 {
                builder.add(&name, TrainingValue::Text(["c0", "c1", "c2", "c3"][i % 4]));
            } else {
                builder.add(&name, TrainingValue::Number((i % 1000) as f64 / 10.0));
            }
        }
        builder.add(
            "prediction.score",
            TrainingValue::Number((i % 100) as f64 / 100.0),
        );
        if regression {
            builder.add(
                "actual.label",
                TrainingValue::Number((i % 100) as f64 / 100.0 + ((i * 7) % 13) as f64 / 50.0),
            );
        }
    }
    let profile = builder.build().unwrap();
    let mut catalog = Catalog::new([spec]);
    catalog.set_reference(profile).unwrap();
    catalog
}

fn hot_path(c: &mut Criterion) {
    let payloads: Vec<Vec<u8>> = payloads().into_iter().map(String::into_bytes).collect();
    let catalog = catalog();
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(EVENTS as u64));
    let json = Format::from(EventKind::Prediction);
    end_to_end(
        &mut group,
        "decode_window_sketch_20_features",
        &catalog,
        &payloads,
        json,
    );
    let decoded: Vec<_> = payloads.iter().map(|p| json.decode(p).unwrap()).collect();
    // The same events as `tidewatch.v1.Event` messages.
    let messages: Vec<Vec<u8>> = decoded.iter().map(events::protobuf::encode).collect();
    let protobuf = Format {
        encoding: Encoding::Protobuf,
        default_kind: EventKind::Prediction,
    };
    end_to_end(
        &mut group,
        "protobuf_decode_window_sketch_20_features",
        &catalog,
        &messages,
        protobuf,
    );
    // Decoding alone, each encoding.
    for (name, payloads, format) in [
        ("decode_only_json", &payloads, json),
        ("decode_only_protobuf", &messages, protobuf),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for payload in payloads {
                    std::hint::black_box(format.decode(payload).unwrap());
                }
            })
        });
    }
    let no_segments = catalog_for(spec_with_segments(Vec::new()));
    for (name, catalog) in [
        ("sketch_updates_only_20_features", &catalog),
        ("sketch_updates_only_20_features_no_segments", &no_segments),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || WindowAggregates::new(100_000),
                |aggregates| {
                    for event in &decoded {
                        aggregates.record(catalog, 0, event);
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    // The same updates with the events already in cache, as in the
    // pipeline, where each event is recorded right after it is decoded: 500
    // decoded events (about 1 MB with their payloads) recorded 20 times
    // over. Above, 10,000 pre-decoded events (about 20 MB) make every
    // event's first touch a cache miss, which the pipeline does not pay.
    let resident = &decoded[..EVENTS / 20];
    for (name, catalog) in [
        ("sketch_updates_cache_resident_20_features", &catalog),
        (
            "sketch_updates_cache_resident_20_features_no_segments",
            &no_segments,
        ),
    ] {
        resident_updates(&mut group, name, catalog, resident);
    }
    group.finish();
}

/// Decodes each of `payloads` as `format`, assigns its event-time window
/// and records it into fresh aggregates.
fn end_to_end(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    catalog: &Catalog,
    payloads: &[Vec<u8>],
    format: Format,
) {
    group.bench_function(name, |b| {
        b.iter_batched_ref(
            || {
                (
                    WindowAggregates::new(100_000),
                    EventTimeClock::new(WindowSize::from_millis(60_000).unwrap(), 5_000),
                )
            },
            |(aggregates, clock)| {
                for payload in payloads {
                    let event = format.decode(payload).unwrap();
                    let Arrival::OnTime { window_start } = clock.observe(event.timestamp_ms) else {
                        continue;
                    };
                    let recorded = aggregates.record(catalog, window_start, &event);
                    debug_assert_eq!(recorded, Recorded::Added);
                }
            },
            BatchSize::LargeInput,
        )
    });
}

/// Records `resident` (events already in cache) 20 times over into fresh
/// aggregates.
fn resident_updates(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    catalog: &Catalog,
    resident: &[events::Event<'_>],
) {
    group.bench_function(name, |b| {
        b.iter_batched_ref(
            || WindowAggregates::new(100_000),
            |aggregates| {
                for _ in 0..20 {
                    for event in resident {
                        aggregates.record(catalog, 0, event);
                    }
                }
            },
            BatchSize::LargeInput,
        )
    });
}

fn per_event_models(c: &mut Criterion) {
    let payloads = payloads();
    let decoded: Vec<_> = payloads
        .iter()
        .map(|p| events::decode(p.as_bytes(), EventKind::Prediction).unwrap())
        .collect();
    let resident = &decoded[..EVENTS / 20];
    let plain = spec_with_segments(Vec::new());
    let multivariate = catalog_for(
        plain
            .clone()
            .with_multivariate(Some(detectors::spec::Multivariate::default()))
            .unwrap(),
    );
    let regression = {
        let features = plain.series().take(FEATURES).cloned().collect();
        ModelSpec::new("bench", Task::Regression, features, Vec::new(), 50, 100)
            .unwrap()
            .with_loss_estimation(true)
            .unwrap()
    };
    let loss = catalog_for(regression);
    // Both models are fitted, so the runs below measure them.
    let reference = |catalog: &Catalog| catalog.reference("bench", "1").cloned().unwrap();
    assert!(reference(&multivariate).reconstruction().is_some());
    assert!(reference(&loss).loss().is_some());
    let mut group = c.benchmark_group("per_event_models");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, catalog) in [
        ("cache_resident_no_segments_multivariate", &multivariate),
        ("cache_resident_no_segments_loss_estimation", &loss),
    ] {
        resident_updates(&mut group, name, catalog, resident);
    }
    group.finish();
}

criterion_group!(benches, hot_path, per_event_models);
criterion_main!(benches);
