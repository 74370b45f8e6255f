//! # ingest — from Kafka (or a file) to stored windows
//!
//! ## Layout
//! - [`config`]: `[kafka]`, `[windows]` and `[reference]` as written, and
//!   their validation into settings that cannot be invalid.
//! - [`engine`]: the synchronous core. Decodes payloads, assigns event-time
//!   windows per source, keeps sketches per fixed offset range, and says
//!   which windows are closed. No I/O.
//! - [`driver`]: binds an engine to a [`store::Store`] and owns the
//!   per-message protocol both readers use ([`driver::Driver::ingest`]: the
//!   engine, then a dead letter for what is malformed; then
//!   [`driver::Driver::needs_checkpoint`]): checkpoints (store first, then
//!   hand back the offsets to commit), finalizes closed windows, builds
//!   warm-up references, refreshes references.
//! - [`finalize`]: merges every stored partial of a window (and its late
//!   matches) and computes its metrics.
//! - [`join`]: the durable join of predictions and labels: the in-memory
//!   cache, what is stored with each checkpoint, pending labels and late
//!   matches.
//! - [`kafka`]: the consumer-group member (`run`) and the file-to-topic
//!   producer (`replay_file`).
//! - [`channel`]: the same loop over an in-process bus (the one-process
//!   demo loop), messages handed over a bounded channel.
//! - [`file`]: replays a JSON-lines file through the engine without Kafka.
//! - [`lines`]: reads a JSON-lines file one line at a time (replays never
//!   hold a whole file).
//! - [`incarnation`]: tells a partition whose offsets were reused (topic
//!   recreated, broker back empty) from the one read before, by the first
//!   message of each offset range, so stored ranges are never replaced by
//!   other events.
//! - [`poller`]: the thread that polls librdkafka, rewinds assigned
//!   partitions and hands batches to the loop.
//! - [`dead_letter`]: where undecodable payloads go, with their reason.
//! - [`telemetry`]: the pipeline's own metrics (consumed, dead-lettered,
//!   dropped, lag, windows closed, store write time) for Prometheus.
//!
//! ## Data flow
//! ```text
//! Kafka partition ─► kafka::run ─► Driver::ingest ─► (malformed) ─► dead-letter topic
//!                                      │
//!                        every checkpoint_interval / sealed range
//!                                      ▼
//!   range_fingerprints ─► Driver::checkpoint ─► store.window_partials ─► commit offsets
//!                                      │
//!                          watermark passed a window end
//!                                      ▼
//!   Driver::finalize_closed ─► merge partials ─► metrics ─► store.window_metrics / window_sketches
//! ```
//!
//! The delivery guarantee is spelled out in [`kafka`] and [`engine`]:
//! offsets follow storage, and rewinding to a checkpoint range start makes
//! the stored aggregates exactly-once across crashes and rebalances.

pub mod channel;
pub mod config;
pub mod dead_letter;
pub mod driver;
pub mod engine;
pub mod file;
pub mod finalize;
pub mod incarnation;
pub mod join;
pub mod kafka;
pub mod lines;
pub mod poller;
#[cfg(test)]
mod schedule_tests;
pub mod telemetry;

impl Error {
    /// True when trying again may help (the store or the network failed).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(error) => error.is_retryable(),
            _ => false,
        }
    }
}

/// Ingestion errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed (see [`store::Error::is_retryable`]).
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A sketch or reference could not be merged or decoded.
    #[error(transparent)]
    Detectors(#[from] detectors::Error),
    /// Kafka client error (configuration or broker).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A dead letter could not be written; the pipeline stops rather than lose it.
    #[error("dead letter could not be written: {0}")]
    DeadLetter(String),
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A line of a file to replay is longer than the replay takes.
    #[error("{path}: line {line} is {length} bytes, longer than the {limit}-byte limit")]
    LineTooLong {
        /// The file.
        path: String,
        /// 1-based line number.
        line: u64,
        /// The line's length.
        length: u64,
        /// The limit.
        limit: usize,
    },
    /// Partitions could not be assigned safely (their committed offsets
    /// could not be read); the member leaves the group.
    #[error("rebalance: {0}")]
    Rebalance(String),
    /// A background task failed.
    #[error("task failed: {0}")]
    Task(String),
}
