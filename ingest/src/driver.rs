//! Drives an [`Engine`] against a [`Store`]: checkpoints, window
//! finalization, warm-up references and reference refresh. Shared by the
//! Kafka consumer and the file replay, which differ only in where payloads
//! come from and how offsets are committed.
//!
//! ## Store outages
//! Every store operation the driver makes is retried while the error is
//! retryable ([`store::Error::is_retryable`]: the server or the network),
//! without limit, with a backoff doubling from 100 ms up to
//! `store_retry_max_delay`. The caller awaits it, so consumption waits while
//! the store is away: nothing is read that cannot be stored, and nothing is
//! committed. Each failed attempt is logged and counted
//! (`tidewatch_store_failures_total`), and readiness is false until an
//! operation succeeds again. Writes are idempotent (versioned rows), so a
//! write that failed after the server applied it is harmless to repeat.
//! Errors that are not retryable (a rejected query, corrupt data) are
//! returned.
//!
//! A reference installed while windows are open (a warm-up reference, or
//! one built with `tidewatch reference build` and picked up by the refresh)
//! applies to windows opened afterwards: sketches recorded before it have
//! no reference bins, so those windows report moments and quantiles but no
//! binned drift scores.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use detectors::metrics::DriftThresholds;
use detectors::reference::ReferenceProfile;
use detectors::FeatureSketch;
use events::Format;
use store::{Store, WindowMetrics};

use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::engine::{Engine, EngineCounters, Ingested};
use crate::finalize::{finalize_window, now_millis};
use crate::join::{FoundPredictions, Lookups};
use crate::telemetry::Telemetry;
use crate::Error;

/// Settings of the driver beyond the engine's.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// Thresholds for drift flags.
    pub thresholds: DriftThresholds,
    /// Windows used to build a reference for a model version that has none;
    /// 0 disables warm-up references.
    pub warmup_windows: usize,
    /// Longest wait between two attempts of a failing store operation
    /// (retried without limit while the error is retryable).
    pub store_retry_max_delay: Duration,
    /// Shortest time between two store lookups of the pending labels (the
    /// late path of [`crate::join`]); one is made at most once per
    /// checkpoint.
    pub pending_label_retry: Duration,
}

/// How often stored join state older than the join window is deleted.
const JOIN_EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);

/// Runs `operation` until it succeeds or fails with an error that is not
/// retryable, as the module docs describe. `name` labels the failures.
pub async fn retry_store<T, F, Fut>(
    telemetry: &Telemetry,
    name: &'static str,
    max_delay: Duration,
    mut operation: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut failures: u32 = 0;
    loop {
        match operation().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(operation = name, failures, "store answers again");
                }
                telemetry.store_succeeded();
                return Ok(value);
            }
            Err(error) if error.is_retryable() => {
                failures += 1;
                telemetry.store_failed(name);
                let delay = Duration::from_millis(100 * 2u64.pow(failures.min(10))).min(max_delay);
                tracing::warn!(%error, operation = name, failures, ?delay, "store operation failed, retrying (consumption waits)");
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Windows of a source still to finalize: (window start, model), oldest first.
type WindowList = Vec<(i64, String)>;

/// Windows finalized in one call, with their metrics.
#[derive(Debug, Default)]
pub struct Finalized {
    /// (model, window_start, metrics of every series).
    pub windows: Vec<(String, i64, Vec<WindowMetrics>)>,
}

/// An engine bound to a store.
pub struct Driver {
    engine: Engine,
    store: Store,
    settings: DriverSettings,
    telemetry: Telemetry,
    /// (model, version) → windows finalized without a reference, for warm-up.
    warmup: BTreeMap<(String, String), Vec<i64>>,
    /// (model, version) → `created_at` of the installed reference.
    installed_references: BTreeMap<(String, String), u64>,
    /// Windows finalized so far.
    windows_finalized: u64,
    /// The engine's counters when last added to the telemetry.
    synced: EngineCounters,
    /// Per source, the windows still to finalize as last stored (or loaded
    /// on assignment): a commit that changes nothing there writes no row.
    stored_progress: BTreeMap<String, WindowList>,
    /// When the pending labels were last looked up.
    last_label_retry: Option<std::time::Instant>,
    /// When expired join state was last deleted.
    last_join_expiry: Option<std::time::Instant>,
}

/// One message of a source, handed to [`Driver::ingest`].
#[derive(Debug, Clone, Copy)]
pub struct SourceMessage<'a> {
    /// The engine's source (`topic/partition`, with its incarnation; `file:NAME`).
    pub source: &'a str,
    /// Topic (or file) named in a dead letter.
    pub topic: &'a str,
    /// Partition named in a dead letter (0 for a file).
    pub partition: i32,
    /// Offset (or line number).
    pub offset: u64,
    /// The payload.
    pub payload: &'a [u8],
    /// How the payload is encoded, and the kind assumed when it does not
    /// name its schema.
    pub format: Format,
}

impl Driver {
    /// Binds `engine` to `store` and installs the references already stored.
    pub async fn new(
        engine: Engine,
        store: Store,
        settings: DriverSettings,
        telemetry: Telemetry,
    ) -> Result<Self, Error> {
        let mut driver = Self {
            engine,
            store,
            settings,
            telemetry,
            warmup: BTreeMap::new(),
            installed_references: BTreeMap::new(),
            windows_finalized: 0,
            synced: EngineCounters::default(),
            stored_progress: BTreeMap::new(),
            last_label_retry: None,
            last_join_expiry: None,
        };
        driver.refresh_references().await?;
        Ok(driver)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// One message of a source through the engine: recorded, dropped
    /// (late, unknown model, group limit: counted by the engine) or, when
    /// malformed, handed to `dead_letters` with the reason. The Kafka loop
    /// and file replay both read through here; each calls
    /// [`Driver::needs_checkpoint`] after it.
    pub async fn ingest(
        &mut self,
        message: SourceMessage<'_>,
        dead_letters: &mut DeadLetterSink,
    ) -> Result<Ingested, Error> {
        let outcome = self.engine.ingest(
            message.source,
            message.offset,
            message.payload,
            message.format,
        );
        if let Ingested::Malformed(reason) = &outcome {
            tracing::debug!(source = message.source, offset = message.offset, %reason, "dead-lettering payload");
            dead_letters
                .enqueue(DeadLetter {
                    source_topic: message.topic,
                    source_partition: message.partition,
                    source_offset: message.offset,
                    payload: message.payload,
                    reason,
                })
                .await?;
        }
        Ok(outcome)
    }

    /// Whether an offset range filled up or the group bound was reached:
    /// time for [`Driver::checkpoint`].
    pub fn needs_checkpoint(&self) -> bool {
        self.engine.needs_checkpoint()
    }

    /// Closes every open window (end of a file, idle input), so the next
    /// [`Driver::finalize_closed`] finalizes them.
    pub fn close_all(&mut self) {
        self.engine.close_all();
    }

    /// Drops the state of `source` (a revoked partition).
    pub fn revoke(&mut self, source: &str) {
        self.engine.revoke(source);
        self.stored_progress.remove(source);
    }

    /// Drops the state of `old` (an incarnation found replaced), handing
    /// its windows still to finalize to `new`.
    pub fn retire(&mut self, old: &str, new: &str) {
        self.engine.retire(old, new);
        self.stored_progress.remove(old);
    }

    /// Marks `source` idle (nothing left to read there) or active; see
    /// [`Engine::set_idle`].
    pub fn set_idle(&mut self, source: &str, idle: bool) {
        self.engine.set_idle(source, idle);
    }

    /// Registers `source` (its partition was assigned) with the windows its
    /// previous owner left to finalize ([`Driver::store_progress`]) and its
    /// labels still waiting for their predictions ([`crate::join`]).
    pub async fn assign(&mut self, source: &str) -> Result<(), Error> {
        let store = &self.store;
        let progress = self
            .retry("progress", || async {
                Ok(store.source_progress(source).await?)
            })
            .await?;
        let pending = self
            .retry("join", || async { Ok(store.pending_labels(source).await?) })
            .await?;
        let late = match pending.iter().map(|label| label.time_ms).min() {
            Some(oldest) => {
                self.retry("join", || async {
                    Ok(store.late_matches_of_source(source, oldest).await?)
                })
                .await?
            }
            None => Vec::new(),
        };
        if !pending.is_empty() {
            tracing::info!(
                source,
                pending = pending.len(),
                joined_later = late.len(),
                "labels left pending by earlier owners"
            );
        }
        self.engine.restore_pending(source, pending, &late);
        let windows = progress
            .map(|progress| progress.unfinalized)
            .unwrap_or_default();
        if !windows.is_empty() {
            tracing::info!(
                source,
                windows = windows.len(),
                "windows left to finalize by the previous owner"
            );
        }
        self.engine.restore_unfinalized(
            source,
            windows
                .into_iter()
                .map(|window| (window.window_start, window.model)),
        );
        self.stored_progress
            .insert(source.to_owned(), self.engine.unfinalized_windows(source));
        Ok(())
    }

    /// Stores, for each source about to be committed, the windows it
    /// recorded into and that are not finalized since (see
    /// [`crate::engine`]): called after the windows finalized by the same
    /// step were handled, before the commit, so that whoever reads the
    /// source next finalizes what this owner did not. A source whose list
    /// is what was last stored for it writes no row (the stored one says
    /// the same, whatever its offset).
    pub async fn store_progress(&mut self, commits: &[(String, u64)]) -> Result<(), Error> {
        let changed: Vec<(String, u64, WindowList)> = commits
            .iter()
            .map(|(source, next_offset)| {
                (
                    source.clone(),
                    *next_offset,
                    self.engine.unfinalized_windows(source),
                )
            })
            .filter(|(source, _, windows)| self.stored_progress.get(source) != Some(windows))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let rows: Vec<store::SourceProgress> = changed
            .iter()
            .map(|(source, next_offset, windows)| store::SourceProgress {
                source: source.clone(),
                next_offset: *next_offset,
                unfinalized: windows
                    .iter()
                    .map(|(window_start, model)| store::WindowRef {
                        model: model.clone(),
                        window_start: *window_start,
                    })
                    .collect(),
            })
            .collect();
        let store = &self.store;
        self.retry("progress", || async {
            Ok(store.write_source_progress(rows.clone()).await?)
        })
        .await?;
        for (source, _, windows) in changed {
            self.stored_progress.insert(source, windows);
        }
        Ok(())
    }

    /// The driver's settings.
    pub fn settings(&self) -> &DriverSettings {
        &self.settings
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Windows finalized so far.
    pub fn windows_finalized(&self) -> u64 {
        self.windows_finalized
    }

    /// Runs one store operation with [`retry_store`]'s policy.
    async fn retry<T, F, Fut>(&self, name: &'static str, operation: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        retry_store(
            &self.telemetry,
            name,
            self.settings.store_retry_max_delay,
            operation,
        )
        .await
    }

    /// Installs stored references that are new or newer than the installed ones.
    pub async fn refresh_references(&mut self) -> Result<(), Error> {
        let store = &self.store;
        let summaries = self
            .retry("references", || async { Ok(store.references().await?) })
            .await?;
        for summary in summaries {
            if self.engine.catalog().model(&summary.model).is_none() {
                continue;
            }
            let key = (summary.model.clone(), summary.model_version.clone());
            if self
                .installed_references
                .get(&key)
                .is_some_and(|at| *at >= summary.created_at)
            {
                continue;
            }
            let store = &self.store;
            let profile = self
                .retry("references", || async {
                    Ok(store
                        .reference(&summary.model, &summary.model_version)
                        .await?)
                })
                .await?;
            if let Some(profile) = profile {
                self.engine.catalog_mut().set_reference(profile)?;
                self.installed_references.insert(key, summary.created_at);
            }
        }
        Ok(())
    }

    /// Stores everything read since the last checkpoint and returns the
    /// offsets that may now be committed.
    ///
    /// In order: the labels that missed memory are looked up in the store
    /// and joined or made pending; the range's predictions and pending
    /// labels are stored, then samples and partials (see [`crate::join`]
    /// on why predictions come first); then the pending labels are looked
    /// for again and those found stored as late matches.
    pub async fn checkpoint(&mut self) -> Result<Vec<(String, u64)>, Error> {
        let lookups = self.engine.lookups();
        let found = self.find_predictions(&lookups).await?;
        self.engine.resolve_lookups(&found);
        self.sync_counters();
        let checkpoint = self.engine.checkpoint();
        if checkpoint.commits.is_empty() {
            self.retry_pending_labels().await?;
            return Ok(Vec::new());
        }
        let store = &self.store;
        if !checkpoint.predictions.is_empty() {
            let predictions = &checkpoint.predictions;
            self.retry("join", || async {
                Ok(store.write_join_predictions(predictions).await?)
            })
            .await?;
        }
        if !checkpoint.pending_labels.is_empty() {
            let labels = &checkpoint.pending_labels;
            self.retry("join", || async {
                Ok(store.write_pending_labels(labels.clone()).await?)
            })
            .await?;
        }
        if !checkpoint.samples.is_empty() || !checkpoint.labels.is_empty() {
            let (samples, labels) = (&checkpoint.samples, &checkpoint.labels);
            self.retry("samples", || async {
                Ok(store.write_samples(samples.clone(), labels.clone()).await?)
            })
            .await?;
        }
        let partials = &checkpoint.partials;
        self.retry("checkpoint", || async {
            Ok(store.write_partials(partials.clone()).await?)
        })
        .await?;
        self.engine.checkpoint_stored();
        self.retry_pending_labels().await?;
        self.expire_join_state().await?;
        Ok(checkpoint.commits)
    }

    /// The stored predictions under `lookups`' keys.
    async fn find_predictions(&self, lookups: &Lookups) -> Result<FoundPredictions, Error> {
        let mut found = Vec::new();
        for (model, keys) in lookups {
            let store = &self.store;
            found.extend(
                self.retry("join", || async {
                    Ok(store.join_predictions(model, keys).await?)
                })
                .await?,
            );
        }
        Ok(FoundPredictions::new(found))
    }

    /// Looks for the pending labels' predictions again (at most once per
    /// `pending_label_retry`) and stores the late matches found.
    async fn retry_pending_labels(&mut self) -> Result<(), Error> {
        if self
            .last_label_retry
            .is_some_and(|at| at.elapsed() < self.settings.pending_label_retry)
        {
            return Ok(());
        }
        self.last_label_retry = Some(std::time::Instant::now());
        let lookups = self.engine.retry_lookups();
        if lookups.is_empty() {
            return Ok(());
        }
        let found = self.find_predictions(&lookups).await?;
        let matches = self.engine.late_matches(&found);
        if matches.is_empty() {
            return Ok(());
        }
        let store = &self.store;
        self.retry("join", || async {
            Ok(store.write_late_matches(matches.clone()).await?)
        })
        .await?;
        tracing::debug!(matches = matches.len(), "pending labels joined");
        self.engine.late_matches_stored(&matches);
        Ok(())
    }

    /// Deletes stored predictions and pending labels older than the join
    /// window behind the newest event read (at most once per
    /// [`JOIN_EXPIRY_INTERVAL`]).
    async fn expire_join_state(&mut self) -> Result<(), Error> {
        if self
            .last_join_expiry
            .is_some_and(|at| at.elapsed() < JOIN_EXPIRY_INTERVAL)
        {
            return Ok(());
        }
        let Some(newest) = self.engine.newest_event_time() else {
            return Ok(());
        };
        self.last_join_expiry = Some(std::time::Instant::now());
        // A day more than the window: a label may join a prediction
        // `join_window` older, and retries read what the store still has.
        let before = newest
            .saturating_sub(self.engine.settings().join_window_ms)
            .saturating_sub(86_400_000);
        let store = &self.store;
        self.retry("join", || async {
            Ok(store.expire_join_state(before).await?)
        })
        .await
    }

    /// Adds what the engine counted since the last call to the telemetry.
    fn sync_counters(&mut self) {
        let counters = self.engine.counters();
        self.telemetry.segment_overflow(
            counters.segment_overflow_events - self.synced.segment_overflow_events,
            counters.segment_values_displaced - self.synced.segment_values_displaced,
        );
        self.telemetry
            .sample_overflow(counters.sample_overflow - self.synced.sample_overflow);
        self.synced = counters.clone();
    }

    /// Stores a checkpoint ([`Driver::checkpoint`]), then finalizes every
    /// closed window from the stored partials (every window held after
    /// [`Driver::close_all`]). Returns the checkpoint's commits, which the
    /// caller commits only once it has handled the finalized windows (and,
    /// for Kafka, stored the sources' progress: [`Driver::store_progress`]).
    pub async fn finalize_closed(&mut self) -> Result<(Vec<(String, u64)>, Finalized), Error> {
        let commits = self.checkpoint().await?;
        let closed = self.engine.take_closed_windows();
        if closed.is_empty() {
            return Ok((commits, Finalized::default()));
        }
        let mut finalized = Finalized::default();
        for (window_start, model) in closed {
            let (store, catalog) = (&self.store, self.engine.catalog());
            let (window_size, thresholds) =
                (self.engine.settings().window_size, self.settings.thresholds);
            let finalized_window = self
                .retry("finalize", || {
                    finalize_window(
                        store,
                        catalog,
                        window_size,
                        thresholds,
                        &model,
                        window_start,
                    )
                })
                .await?;
            self.telemetry
                .segment_values_folded_in_window(finalized_window.folded_segment_values);
            let metrics = finalized_window.metrics;
            self.engine.window_finalized(window_start, &model);
            self.windows_finalized += 1;
            self.note_for_warmup(&model, window_start, &metrics).await?;
            tracing::debug!(model = %model, window_start, series = metrics.len(), "window finalized");
            finalized.windows.push((model, window_start, metrics));
        }
        Ok((commits, finalized))
    }

    async fn note_for_warmup(
        &mut self,
        model: &str,
        window_start: i64,
        metrics: &[WindowMetrics],
    ) -> Result<(), Error> {
        if self.settings.warmup_windows == 0 {
            return Ok(());
        }
        let versions: std::collections::BTreeSet<&str> = metrics
            .iter()
            .map(|m| m.key.model_version.as_str())
            .collect();
        for version in versions {
            if self.engine.catalog().reference(model, version).is_some() {
                continue;
            }
            let windows = self
                .warmup
                .entry((model.to_owned(), version.to_owned()))
                .or_default();
            windows.push(window_start);
            if windows.len() < self.settings.warmup_windows {
                continue;
            }
            let windows = self
                .warmup
                .remove(&(model.to_owned(), version.to_owned()))
                .unwrap_or_default();
            let profile = self
                .retry("references", || {
                    self.warmup_reference(model, version, &windows)
                })
                .await?;
            let created_at = now_millis();
            let store = &self.store;
            self.retry("references", || async {
                Ok(store.put_reference(&profile, created_at).await?)
            })
            .await?;
            self.engine.catalog_mut().set_reference(profile)?;
            self.installed_references
                .insert((model.to_owned(), version.to_owned()), created_at);
            tracing::info!(
                model,
                version,
                windows = windows.len(),
                "warm-up reference built"
            );
        }
        Ok(())
    }

    async fn warmup_reference(
        &self,
        model: &str,
        version: &str,
        windows: &[i64],
    ) -> Result<ReferenceProfile, Error> {
        let from = windows.iter().copied().min().unwrap_or_default();
        let to = windows.iter().copied().max().unwrap_or_default() + 1;
        let stored = self.store.window_sketches(model, from, to).await?;
        let mut merged: BTreeMap<String, FeatureSketch> = BTreeMap::new();
        for row in stored.iter().filter(|row| {
            row.key.model_version == version
                && row.key.segment == detectors::spec::ALL_SEGMENT
                && windows.contains(&row.key.window_start)
        }) {
            let sketch = FeatureSketch::from_bytes(&row.sketch)?;
            match merged.get_mut(&row.key.feature) {
                Some(existing) => existing.merge(&sketch)?,
                None => {
                    merged.insert(row.key.feature.clone(), sketch);
                }
            }
        }
        Ok(ReferenceProfile::from_windows(
            model,
            version,
            windows.len(),
            &merged,
        )?)
    }
}

/// A driver of `engine` over `store` as the tests use it: no warm-up,
/// default thresholds, store retries of at most 10 ms.
#[cfg(test)]
pub(crate) async fn test_driver(engine: Engine, store: Store) -> Driver {
    Driver::new(
        engine,
        store,
        DriverSettings {
            thresholds: Default::default(),
            warmup_windows: 0,
            store_retry_max_delay: Duration::from_millis(10),
            pending_label_retry: Duration::ZERO,
        },
        Telemetry::default(),
    )
    .await
    .expect("a driver over the test store")
}
