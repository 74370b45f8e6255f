//! # store — where Tidewatch keeps windows, sketches and references
//!
//! One API, [`Store`], over two backends:
//! - [`clickhouse_store::ClickHouseStore`]: the production store. Tables are
//!   created at start-up (`CREATE TABLE IF NOT EXISTS`), in SQL that runs on
//!   ClickHouse 18.16 and on current releases alike: `ReplacingMergeTree`
//!   with an explicit version column for idempotency, read back with `FINAL`;
//!   daily partitions (`toYYYYMMDD(window_start)`) for retention; no `Map`,
//!   `DateTime64`, `TTL` or codecs. The client's schema validation is off, so
//!   every `SELECT` casts its columns explicitly and every row struct has a
//!   round-trip test against a real server.
//! - [`embedded::EmbeddedStore`]: SQLite (bundled), used when no ClickHouse
//!   is configured (the demo, a laptop). Same tables, same semantics, upserts
//!   that keep the highest version.
//!
//! ## Tables
//! | table | one row per | version (highest wins) |
//! |---|---|---|
//! | `window_partials` | (series, window, source, offset range start) | `range_end` |
//! | `window_sketches` | (series, window): the merged sketch | `computed_at` |
//! | `window_metrics` | (series, window): counts, moments, quantiles, drift | `computed_at` |
//! | `reference_profiles` | (model, version) | `created_at` |
//!
//! A *series* is (model, model_version, segment, feature). `window_partials`
//! is the ingest checkpoint: each consumer writes, per Kafka partition and
//! per fixed range of offsets, the sketches of what it read in that range.
//! Re-reading a range after a crash rewrites the same rows with the same or a
//! larger `range_end`, so replays never double count (see the `ingest` crate).
//!
//! Calls into SQLite run on tokio's blocking pool; none blocks the runtime.

pub mod clickhouse_store;
pub mod embedded;
mod rows;

use detectors::{FeatureWindowMetrics, ReferenceProfile, SeriesKey};

pub use rows::MetricsRow;

/// Store errors. [`Error::is_retryable`] tells whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ClickHouse answered with an error or could not be reached.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// SQLite failed.
    #[error("embedded store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Stored data could not be decoded (a bug or a corrupted row).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A blocking task panicked or was cancelled.
    #[error("embedded store task failed: {0}")]
    Task(String),
    /// The store configuration is invalid.
    #[error("store configuration: {0}")]
    Config(String),
}

impl Error {
    /// True for failures of the server or network, which a retry may fix.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::ClickHouse(clickhouse::error::Error::Network(_))
                | Error::ClickHouse(clickhouse::error::Error::TimedOut)
                | Error::Sqlite(rusqlite::Error::SqliteFailure(_, _))
        )
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Sketches of one series read from one range of a source (a Kafka
/// partition, a replayed file), written at every checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialSketch {
    /// Where the events came from: `topic/partition` or `file:NAME`.
    pub source: String,
    /// First offset of the fixed offset range the sketch covers.
    pub range_start: u64,
    /// One past the last offset read in the range (the row's version).
    pub range_end: u64,
    /// Series and window.
    pub key: SeriesKey,
    /// `FeatureSketch::to_bytes`.
    pub sketch: Vec<u8>,
}

/// The merged sketch of a closed window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSketch {
    /// Series and window.
    pub key: SeriesKey,
    /// Exclusive window end, ms.
    pub window_end: i64,
    /// `FeatureSketch::to_bytes`.
    pub sketch: Vec<u8>,
    /// When it was computed, ms (the row's version).
    pub computed_at: u64,
}

/// The metrics of a closed window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowMetrics {
    /// Series and window.
    pub key: SeriesKey,
    /// Exclusive window end, ms.
    pub window_end: i64,
    /// The numbers.
    pub metrics: FeatureWindowMetrics,
    /// `source` of the reference profile compared against, if any.
    pub reference_source: Option<String>,
    /// When it was computed, ms (the row's version).
    pub computed_at: u64,
}

/// Which window metrics to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsQuery {
    /// Only this model.
    pub model: Option<String>,
    /// Only this segment.
    pub segment: Option<String>,
    /// Only this series.
    pub feature: Option<String>,
    /// Windows starting at or after this time, ms.
    pub from_ms: Option<i64>,
    /// Windows starting before this time, ms.
    pub to_ms: Option<i64>,
    /// At most this many rows (newest windows first are *not* implied; rows
    /// are ordered by model, version, segment, feature, window).
    pub limit: Option<u64>,
}

/// A stored reference profile's header.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceSummary {
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Where it came from.
    pub source: String,
    /// Rows it was built from.
    pub row_count: u64,
    /// When it was stored, ms.
    pub created_at: u64,
}

/// The store, ClickHouse or embedded. One per process, cloned rarely, so
/// the ClickHouse client is boxed only to keep the enum small.
#[derive(Clone)]
pub enum Store {
    /// A ClickHouse server.
    ClickHouse(Box<clickhouse_store::ClickHouseStore>),
    /// A local SQLite file.
    Embedded(embedded::EmbeddedStore),
}

impl Store {
    /// Writes checkpoint partials (idempotent per source range).
    pub async fn write_partials(&self, rows: Vec<PartialSketch>) -> Result<()> {
        match self {
            Store::ClickHouse(store) => store.write_partials(rows).await,
            Store::Embedded(store) => store.write_partials(rows).await,
        }
    }

    /// The latest partials of every series of `model` in the window starting at `window_start`.
    pub async fn partials_for_window(
        &self,
        model: &str,
        window_start: i64,
    ) -> Result<Vec<PartialSketch>> {
        match self {
            Store::ClickHouse(store) => store.partials_for_window(model, window_start).await,
            Store::Embedded(store) => {
                store
                    .partials_for_window(model.to_owned(), window_start)
                    .await
            }
        }
    }

    /// Every window start with partials for `model` in `[from_ms, to_ms)`.
    pub async fn partial_windows(&self, model: &str, from_ms: i64, to_ms: i64) -> Result<Vec<i64>> {
        match self {
            Store::ClickHouse(store) => store.partial_windows(model, from_ms, to_ms).await,
            Store::Embedded(store) => {
                store
                    .partial_windows(model.to_owned(), from_ms, to_ms)
                    .await
            }
        }
    }

    /// Writes the results of closed windows.
    pub async fn write_window_results(
        &self,
        metrics: Vec<WindowMetrics>,
        sketches: Vec<WindowSketch>,
    ) -> Result<()> {
        match self {
            Store::ClickHouse(store) => store.write_window_results(metrics, sketches).await,
            Store::Embedded(store) => store.write_window_results(metrics, sketches).await,
        }
    }

    /// Reads window metrics (latest computation of each).
    pub async fn window_metrics(&self, query: MetricsQuery) -> Result<Vec<WindowMetrics>> {
        match self {
            Store::ClickHouse(store) => store.window_metrics(&query).await,
            Store::Embedded(store) => store.window_metrics(query).await,
        }
    }

    /// Reads merged window sketches of `model` with windows starting in `[from_ms, to_ms)`.
    pub async fn window_sketches(
        &self,
        model: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<WindowSketch>> {
        match self {
            Store::ClickHouse(store) => store.window_sketches(model, from_ms, to_ms).await,
            Store::Embedded(store) => {
                store
                    .window_sketches(model.to_owned(), from_ms, to_ms)
                    .await
            }
        }
    }

    /// Stores a reference profile (replacing the model version's previous one).
    pub async fn put_reference(&self, profile: &ReferenceProfile, created_at: u64) -> Result<()> {
        match self {
            Store::ClickHouse(store) => store.put_reference(profile, created_at).await,
            Store::Embedded(store) => store.put_reference(profile.clone(), created_at).await,
        }
    }

    /// The reference profile of a model version.
    pub async fn reference(
        &self,
        model: &str,
        model_version: &str,
    ) -> Result<Option<ReferenceProfile>> {
        match self {
            Store::ClickHouse(store) => store.reference(model, model_version).await,
            Store::Embedded(store) => {
                store
                    .reference(model.to_owned(), model_version.to_owned())
                    .await
            }
        }
    }

    /// Every stored reference profile's header.
    pub async fn references(&self) -> Result<Vec<ReferenceSummary>> {
        match self {
            Store::ClickHouse(store) => store.references().await,
            Store::Embedded(store) => store.references().await,
        }
    }
}

/// Keeps the row with the highest version per key, in key order.
pub(crate) fn latest_by<T, K: Ord + Clone>(
    rows: Vec<T>,
    key: impl Fn(&T) -> K,
    version: impl Fn(&T) -> u64,
) -> Vec<T> {
    let mut latest: std::collections::BTreeMap<K, T> = std::collections::BTreeMap::new();
    for row in rows {
        let row_key = key(&row);
        match latest.get(&row_key) {
            Some(existing) if version(existing) >= version(&row) => {}
            _ => {
                latest.insert(row_key, row);
            }
        }
    }
    latest.into_values().collect()
}
