//! # tidewatch — the service and its command line
//!
//! The binary (`src/main.rs`) is thin; this library holds what it wires:
//! - [`analyze`]: `tidewatch analyze`, the detectors on reference and
//!   current files, chunk by chunk.
//! - [`config`]: `tidewatch.toml`, parsed and validated once into settings
//!   that cannot be invalid (errors name the file and the key).
//! - [`training`]: training data (CSV, Parquet, JSON lines, via `arrow`)
//!   into a reference profile.
//! - [`fixtures`]: the seeded generator of the demo stream and training data.
//! - [`demo`]: the whole pipeline in one process on the embedded store.
//! - [`demo_loop`]: the closed loop (drift, retraining, shadow, promotion)
//!   in one process on the in-process bus, or over Kafka.
//! - [`report`]: text tables of window metrics.
//! - [`service`]: opening the configured store and running the pipeline
//!   (on Kafka, or on the in-process bus).
//! - [`bus`]: the in-process bus and what followers read (a Kafka topic or
//!   an in-process subscription).
//! - [`registry_bus`]: the model registry's outbox published onto the bus.
//! - [`lifecycle`]: model-version lifecycle (registered, promoted, retired)
//!   recorded from the registry's events and read back as a timeline.
//! - [`retrainer`]: the reference trainer, answering retrain requests with
//!   registered challengers.
//! - [`promotion`]: the promotion policy, challengers against champions on
//!   the same requests and labels.
//! - [`registry_references`]: reference profiles of registered versions
//!   built from their `tidewatch.reference` tag.
//! - [`http`]: the HTTP server: JSON API with its OpenAPI document,
//!   Prometheus metrics, and Tidewatch's own pages; its accept loop
//!   ([`http::serve_router`]) also serves the gateway.
//! - [`gateway`]: `tidewatch serve`, the `serving` crate's gateway and
//!   adapters wired to `[kafka]`.
//!
//! The commands themselves are in `src/commands/` (one module each), and
//! `main.rs` only parses and dispatches. The crates below do the work:
//! `events` (event model), `detectors` (pure math), `store` (ClickHouse /
//! SQLite behind one `Backend` trait), `ingest` (Kafka and file ingestion),
//! `alerting` (rules and channels), `serving` (the model gateway),
//! `registry` (model versions and aliases, MLflow-compatible).

pub mod analyze;
pub mod bus;
pub mod config;
pub mod demo;
pub mod demo_loop;
pub mod fixtures;
pub mod gateway;
pub mod http;
pub mod lifecycle;
pub mod promotion;
pub mod registry_bus;
pub mod registry_references;
pub mod report;
pub mod retrainer;
pub mod service;
pub mod training;
