//! Opening the configured store and running the Kafka pipeline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use detectors::catalog::Catalog;
use ingest::driver::{Driver, DriverSettings};
use ingest::engine::Engine;
use ingest::kafka::RunReport;
use store::Store;

use crate::config::Config;

/// A driver over the configured models and store, reporting store
/// failures to `telemetry`.
pub async fn driver(
    config: &Config,
    store: Store,
    telemetry: ingest::telemetry::Telemetry,
) -> Result<Driver, ingest::Error> {
    let engine = Engine::new(
        config.engine.clone(),
        Catalog::new(config.models.iter().cloned()),
    );
    Driver::new(engine, store, driver_settings(config), telemetry).await
}

/// The driver settings of `config`.
pub fn driver_settings(config: &Config) -> DriverSettings {
    DriverSettings {
        thresholds: config.thresholds,
        warmup_windows: config.warmup_windows,
        store_retry_max_delay: config.store.retry_max_delay(),
        pending_label_retry: config.loop_settings.checkpoint_interval,
    }
}

/// The bus on Kafka: retrain events are published with the user's
/// producer properties.
pub struct KafkaBus(rdkafka::producer::FutureProducer);

impl KafkaBus {
    /// A bus over the `[kafka]` settings.
    pub fn new(settings: &ingest::config::KafkaSettings) -> Result<Self, ingest::Error> {
        Ok(Self(ingest::kafka::producer(settings.connection())?))
    }
}

impl alerting::delivery::Bus for KafkaBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        key: &'a str,
        payload: Vec<u8>,
        headers: Vec<(&'static str, String)>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            ingest::kafka::publish(&self.0, topic, key, &payload, &headers).await
        })
    }
}

/// The sender for `config`'s channels, with the Kafka bus when configured.
pub fn sender(config: &Config, store: Store) -> anyhow::Result<alerting::delivery::Sender> {
    let bus: Option<Arc<dyn alerting::delivery::Bus>> = match &config.kafka {
        Some(kafka) => Some(Arc::new(KafkaBus::new(kafka)?)),
        None => None,
    };
    sender_on(config, store, bus)
}

/// The sender for `config`'s channels, publishing bus channels to `bus`.
fn sender_on(
    config: &Config,
    store: Store,
    bus: Option<Arc<dyn alerting::delivery::Bus>>,
) -> anyhow::Result<alerting::delivery::Sender> {
    let sender = alerting::delivery::Sender::new(
        store,
        config.alert_channels.clone(),
        config.delivery_retry,
    )?;
    Ok(match bus {
        Some(bus) => sender.with_bus(bus),
        None => sender,
    })
}

/// How `tidewatch run` is wired when it is not the plain `[kafka]` service.
#[derive(Default)]
pub struct Wiring {
    /// The in-process bus instead of `[kafka]`.
    pub in_process: Option<InProcess>,
    /// A listener for `[http]`, bound by the caller (instead of
    /// `http.listen`).
    pub http_listener: Option<tokio::net::TcpListener>,
    /// The promotion policy's queue, shared with the caller (who can see
    /// when it is idle); a new one when `None`.
    pub promotion_queue: Option<crate::promotion::Queue>,
}

/// `tidewatch run` over an [`InProcessBus`](crate::bus::InProcessBus): every
/// topic of the configuration (retrain requests and acknowledgements,
/// registry events, promotion decisions) is a topic of `bus`, and events
/// are read from `topics`.
pub struct InProcess {
    /// The bus.
    pub bus: crate::bus::InProcessBus,
    /// The event topics read, with the kind of their schema-less payloads.
    pub topics: Vec<(String, events::EventKind)>,
    /// Where malformed events go (a JSON-lines file).
    pub dead_letters: std::path::PathBuf,
    /// Events read, stored and whose closed windows are finalized and
    /// observed (see [`ingest::channel::run`]).
    pub processed: Arc<std::sync::atomic::AtomicU64>,
}

/// The bus of `config` (`[kafka]`) or of the wiring.
enum Transport {
    Kafka(ingest::config::KafkaSettings),
    InProcess(InProcess),
}

impl Transport {
    fn bus(&self) -> anyhow::Result<Arc<dyn alerting::delivery::Bus>> {
        Ok(match self {
            Transport::Kafka(kafka) => Arc::new(KafkaBus::new(kafka)?),
            Transport::InProcess(wiring) => Arc::new(wiring.bus.clone()),
        })
    }

    fn feed(&self, topic: &str) -> crate::bus::Feed {
        match self {
            Transport::Kafka(kafka) => crate::bus::Feed::kafka(kafka, topic),
            Transport::InProcess(wiring) => wiring.bus.feed(topic),
        }
    }
}

/// Evaluates alert rules on every finalized window and records what they
/// raise (notifications, and the retrain requests the gate lets through) in
/// the store's outbox before the consumer commits the offsets behind the
/// window. Recording is retried while the store is away (the consumer
/// waits); the outbox is delivered by a separate task.
///
/// `alert_progress` in the store says up to which window of a model the
/// notifications are recorded; at start-up [`AlertRecorder::warm_up`]
/// replays the stored windows to rebuild the rule states and records what
/// windows past that progress raise: a window finalized by a process that
/// died before recording its alerts gets them after the restart.
pub struct AlertRecorder {
    evaluator: alerting::lifecycle::AlertEvaluator,
    gate: Arc<Mutex<alerting::retrain::RetrainGate>>,
    store: Store,
    counters: crate::http::Telemetry,
    max_delay: std::time::Duration,
    /// Per model, the progress last recorded by this process.
    progress: std::collections::HashMap<String, i64>,
}

impl AlertRecorder {
    /// What a window's alerts become in the outbox: each notification, and
    /// a retrain request when the gate admits one. Versions `on_trial`
    /// (challengers, see [`crate::lifecycle::on_trial`]) are not retrained:
    /// their alerts are notifications, and the promotion policy decides
    /// their fate.
    fn batch(
        &mut self,
        alerts: &[alerting::lifecycle::Alert],
        now: u64,
        on_trial: &std::collections::BTreeSet<String>,
    ) -> Vec<(store::AlertRecord, Vec<String>)> {
        let mut batch = Vec::with_capacity(alerts.len());
        for alert in alerts {
            tracing::warn!(id = %alert.id, rule = %alert.rule, model = %alert.model, status = ?alert.status, "{}", alert.summary);
            batch.push((alert.to_record(now), alert.channels.clone()));
            if on_trial.contains(&alert.model_version) {
                continue;
            }
            let request = self.gate.lock().expect("gate lock").admit(alert, now);
            if let Some(request) = request {
                tracing::warn!(id = %alert.id, model = %alert.model, version = %alert.model_version, "retraining requested");
                batch.push((
                    alerting::retrain::to_record(&request, now),
                    request.channels,
                ));
            }
        }
        batch
    }

    /// The versions of `model` on trial; none when the store cannot say
    /// (logged: a retrain request for a challenger is then possible, which
    /// the gate still debounces).
    async fn on_trial(&self, model: &str) -> std::collections::BTreeSet<String> {
        crate::lifecycle::on_trial(&self.store, model)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, model, "challengers not known: their alerts may request retraining");
                Default::default()
            })
    }

    /// Records `batch` and the model's progress, retrying while the store is away.
    async fn record(
        &mut self,
        model: &str,
        window_start: i64,
        batch: Vec<(store::AlertRecord, Vec<String>)>,
        telemetry: &ingest::telemetry::Telemetry,
    ) -> Result<(), ingest::Error> {
        let store = &self.store;
        if !batch.is_empty() {
            let batch = &batch;
            ingest::driver::retry_store(telemetry, "alerts", self.max_delay, || async {
                Ok(store.record_alerts(batch.clone()).await?)
            })
            .await?;
            for (record, _) in batch {
                self.counters.raised(record.status.as_str());
            }
        }
        // Windows finalized again (labels arriving) do not move the progress.
        if self
            .progress
            .get(model)
            .is_some_and(|done| window_start <= *done)
        {
            return Ok(());
        }
        ingest::driver::retry_store(telemetry, "alerts", self.max_delay, || async {
            Ok(store.record_alert_progress(model, window_start).await?)
        })
        .await?;
        self.progress.insert(model.to_owned(), window_start);
        Ok(())
    }

    /// Replays the last [`WARMUP_WINDOWS`] stored windows of every model
    /// through the evaluator so a restarted service knows which alerts are
    /// firing (and resolves them under the same id) instead of firing them
    /// again, and records what windows past the model's alert progress
    /// raise and is not recorded yet (see the type's docs). Windows it has
    /// seen are not evaluated again when they are finalized again. A
    /// `quality_drop` baseline is taken from these windows.
    pub async fn warm_up(
        &mut self,
        config: &Config,
        telemetry: &ingest::telemetry::Telemetry,
    ) -> anyhow::Result<()> {
        let size = config.engine.window_size().millis();
        let versions = self.store.model_versions().await?;
        for model in &config.models {
            let Some(latest) = versions
                .iter()
                .filter(|v| v.model == model.name())
                .map(|v| v.last_window)
                .max()
            else {
                continue;
            };
            let progress = self.store.alert_progress(model.name()).await?;
            let metrics = self
                .store
                .window_metrics(store::MetricsQuery {
                    model: Some(model.name().to_owned()),
                    from_ms: Some(latest - WARMUP_WINDOWS * size),
                    ..Default::default()
                })
                .await?;
            let mut by_window: std::collections::BTreeMap<i64, Vec<store::WindowMetrics>> =
                Default::default();
            for record in metrics {
                by_window
                    .entry(record.key.window_start)
                    .or_default()
                    .push(record);
            }
            let (count, mut reraised) = (by_window.len(), 0usize);
            for (window_start, records) in &by_window {
                let alerts = self.evaluator.evaluate(model.name(), records);
                if progress.is_some_and(|done| *window_start <= done) {
                    continue;
                }
                let mut missing = Vec::new();
                for alert in alerts {
                    let recorded = self
                        .store
                        .alert_notification(&alert.id, alert.status.into(), alert.window_start)
                        .await?;
                    if recorded.is_none() {
                        missing.push(alert);
                    }
                }
                reraised += missing.len();
                let batch = self.batch(
                    &missing,
                    ingest::finalize::now_millis(),
                    &self.on_trial(model.name()).await,
                );
                self.record(model.name(), *window_start, batch, telemetry)
                    .await?;
            }
            tracing::info!(model = %model.name(), windows = count, reraised, "alert state restored from stored windows");
        }
        Ok(())
    }
}

/// [`AlertRecorder`] with the consumer's telemetry, as the consumer's
/// window observer.
struct RecordingObserver {
    recorder: AlertRecorder,
    telemetry: ingest::telemetry::Telemetry,
    /// Models whose challengers the promotion policy looks at again.
    promotions: Option<crate::promotion::Queue>,
}

impl ingest::kafka::WindowObserver for RecordingObserver {
    async fn finalized(
        &mut self,
        model: &str,
        window_start: i64,
        metrics: &[store::WindowMetrics],
    ) -> Result<(), ingest::Error> {
        let alerts = self.recorder.evaluator.evaluate(model, metrics);
        let on_trial = if alerts.iter().any(|a| a.retrain) {
            self.recorder.on_trial(model).await
        } else {
            Default::default()
        };
        let batch = self
            .recorder
            .batch(&alerts, ingest::finalize::now_millis(), &on_trial);
        self.recorder
            .record(model, window_start, batch, &self.telemetry)
            .await?;
        if let Some(queue) = &self.promotions {
            queue.push(model);
        }
        Ok(())
    }
}

/// Runs the Kafka pipeline of `config` until `shutdown` resolves. Alert
/// rules are evaluated on every finalized window and what they raise is
/// recorded in the outbox before the window's offsets are committed (see
/// [`AlertRecorder`]); a separate task delivers the outbox (one pass a
/// second), which survives restarts.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunReport> {
    run_wired(config, Wiring::default(), shutdown).await
}

/// [`run`], wired as `wiring` says (the in-process bus of the one-process
/// loop, a listener bound by the caller).
pub async fn run_wired(
    config: &Config,
    wiring: Wiring,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<RunReport> {
    let transport = match (wiring.in_process, &config.kafka) {
        (Some(in_process), _) => Transport::InProcess(in_process),
        (None, Some(kafka)) => Transport::Kafka(kafka.clone()),
        (None, None) => anyhow::bail!(
            "{}: `kafka` is required by `tidewatch run`",
            config.file.display()
        ),
    };
    let store = config.store.open().await?;
    let bus = transport.bus()?;
    let sender = sender_on(config, store.clone(), Some(Arc::clone(&bus)))?;
    let telemetry = crate::http::Telemetry::default();
    let driver = driver(config, store.clone(), telemetry.pipeline.clone()).await?;
    // Followers subscribe before anything (the registry's publisher
    // included) can publish.
    let ack_feed = config
        .retrain
        .as_ref()
        .and_then(|r| r.ack_topic.as_deref())
        .map(|topic| transport.feed(topic));
    let lifecycle_feed = config
        .registry
        .as_ref()
        .map(|registry| transport.feed(registry.topic()));
    let request_feed = config
        .trainer
        .as_ref()
        .map(|trainer| transport.feed(&trainer.request_topic));
    let (stop_http, http) = match &config.http {
        Some(settings) => {
            let (stop, server) = start_http_with(
                config,
                settings,
                store.clone(),
                telemetry.clone(),
                Some(Arc::clone(&bus)),
                wiring.http_listener,
            )
            .await?;
            (Some(stop), Some(server))
        }
        None => (None, None),
    };

    // Retrain requests: debounced per model version, restored from the
    // requests already recorded, cleared early by acknowledgements.
    let gate = Arc::new(Mutex::new(match &config.retrain {
        Some(retrain) => {
            alerting::retrain::RetrainGate::new(retrain.debounce_ms, retrain.channels.clone())
        }
        None => alerting::retrain::RetrainGate::new(0, Vec::new()),
    }));
    if config.retrain.is_some() {
        let recorded = store.alerts(None, RESTORED_ALERTS).await?;
        gate.lock().expect("gate lock").restore(&recorded);
    }
    let mut recorder = AlertRecorder {
        evaluator: alerting::lifecycle::AlertEvaluator::new(config.alert_rules.clone()),
        gate: Arc::clone(&gate),
        store: store.clone(),
        counters: telemetry.clone(),
        max_delay: config.store.retry_max_delay(),
        progress: Default::default(),
    };
    recorder.warm_up(config, &telemetry.pipeline).await?;
    let (stop_acks, acks_stopped) = tokio::sync::oneshot::channel::<()>();
    let acks = ack_feed.map(|feed| {
        let gate = Arc::clone(&gate);
        let topic = feed.describe();
        tokio::spawn(async move {
            let on_acks = |payloads: Vec<Vec<u8>>| {
                for payload in payloads {
                    if let Some(request) = alerting::retrain::parse_ack(&payload) {
                        if gate.lock().expect("gate lock").acknowledge(&request) {
                            tracing::info!(%request, "retrain request acknowledged");
                        }
                    }
                }
                std::future::ready(())
            };
            let stopped = async {
                let _ = acks_stopped.await;
            };
            if let Err(error) = feed.follow(ACK_BATCH, on_acks, stopped).await {
                tracing::error!(%error, %topic, "reading retrain acknowledgements failed");
            }
        })
    });

    // Version lifecycle: the registry's events, wherever the registry runs.
    let (stop_lifecycle, lifecycle_stopped) = tokio::sync::oneshot::channel::<()>();
    let lifecycle = lifecycle_feed.map(|feed| {
        let topic = feed.describe();
        let follow = crate::lifecycle::follow(
            feed,
            store.clone(),
            telemetry.pipeline.clone(),
            config.store.retry_max_delay(),
            async {
                let _ = lifecycle_stopped.await;
            },
        );
        tokio::spawn(async move {
            if let Err(error) = follow.await {
                tracing::error!(%error, %topic, "following the registry's events failed");
            }
        })
    });

    // The reference trainer, answering retrain requests.
    let (stop_trainer, trainer_stopped) = tokio::sync::oneshot::channel::<()>();
    let trainer = match (&config.trainer, request_feed) {
        (Some(trainer), Some(requests)) => {
            let task = crate::retrainer::run(
                requests,
                trainer.clone(),
                store.clone(),
                config.models.clone(),
                Arc::clone(&bus),
                async {
                    let _ = trainer_stopped.await;
                },
            );
            Some(tokio::spawn(async move {
                if let Err(error) = task.await {
                    tracing::error!(%error, "the reference trainer stopped");
                }
            }))
        }
        _ => None,
    };

    // The promotion policy, evaluated after windows are finalized.
    let (stop_promotion, promotion_stopped) = tokio::sync::oneshot::channel::<()>();
    let promotion_queue = config
        .promotion
        .as_ref()
        .map(|_| wiring.promotion_queue.clone().unwrap_or_default());
    let promotion = match (&config.promotion, &promotion_queue) {
        (Some(promotion), Some(queue)) => Some(tokio::spawn(crate::promotion::run(
            promotion.clone(),
            store.clone(),
            config.models.clone(),
            config.engine.window_size().millis(),
            Some(Arc::clone(&bus)),
            queue.clone(),
            async {
                let _ = promotion_stopped.await;
            },
        ))),
        _ => None,
    };

    // The training sample's retention: an hourly pass.
    let (stop_retention, retention_stopped) = tokio::sync::oneshot::channel::<()>();
    let retention = tokio::spawn(expire_samples(
        store.clone(),
        config.sample_retention,
        retention_stopped,
    ));

    let delivered = telemetry.clone();
    let stats_store = store.clone();
    let (stop_delivery, mut delivery_stopped) = tokio::sync::oneshot::channel::<()>();
    let delivery = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = &mut delivery_stopped => break,
                _ = tick.tick() => {
                    match sender.deliver_due(ingest::finalize::now_millis()).await {
                        Ok(report) => delivered.delivered(&report),
                        Err(error) => tracing::warn!(%error, "alert delivery pass failed"),
                    }
                }
            }
        }
        // A last pass for what the final windows raised.
        if let Ok(report) = sender.deliver_due(ingest::finalize::now_millis()).await {
            delivered.delivered(&report);
        }
    });
    let (stop_stats, stats_stopped) = tokio::sync::oneshot::channel::<()>();
    let topics = match &transport {
        Transport::Kafka(kafka) => kafka.topics().iter().map(|t| t.name.clone()).collect(),
        Transport::InProcess(wiring) => wiring.topics.iter().map(|(t, _)| t.clone()).collect(),
    };
    let stats = tokio::spawn(record_pipeline_stats(
        stats_store,
        telemetry.pipeline.clone(),
        topics,
        stats_stopped,
    ));
    let observer = RecordingObserver {
        recorder,
        telemetry: telemetry.pipeline.clone(),
        promotions: promotion_queue,
    };
    let report = match transport {
        Transport::Kafka(kafka) => {
            ingest::kafka::run(
                driver,
                kafka,
                config.loop_settings.clone(),
                telemetry.pipeline.clone(),
                shutdown,
                observer,
            )
            .await
        }
        Transport::InProcess(wiring) => {
            let topics: Vec<&str> = wiring.topics.iter().map(|(t, _)| t.as_str()).collect();
            let messages = wiring.bus.subscribe(&topics);
            let dead_letters = ingest::dead_letter::DeadLetterSink::file(&wiring.dead_letters)?;
            ingest::channel::run(
                driver,
                messages,
                ingest::channel::ChannelSettings {
                    kinds: wiring.topics.iter().cloned().collect(),
                    idle_close_after: config.loop_settings.idle_close_after,
                    reference_refresh: config.loop_settings.reference_refresh,
                },
                dead_letters,
                wiring.processed,
                shutdown,
                observer,
            )
            .await
        }
    };
    let _ = stop_delivery.send(());
    let _ = delivery.await;
    let _ = stop_stats.send(());
    let _ = stats.await;
    let _ = stop_acks.send(());
    if let Some(acks) = acks {
        let _ = acks.await;
    }
    let _ = stop_promotion.send(());
    if let Some(promotion) = promotion {
        let _ = promotion.await;
    }
    let _ = stop_trainer.send(());
    if let Some(trainer) = trainer {
        let _ = trainer.await;
    }
    let _ = stop_retention.send(());
    let _ = retention.await;
    let _ = stop_lifecycle.send(());
    if let Some(lifecycle) = lifecycle {
        let _ = lifecycle.await;
    }
    if let (Some(stop), Some(server)) = (stop_http, http) {
        let _ = stop.send(());
        let _ = server.await;
    }
    Ok(report?)
}

/// How often the training sample's retention runs.
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes the training sample older than `retention` before its newest
/// window (event time, as everything Tidewatch keeps: a backfill of old
/// data is not deleted as it arrives), at start and every
/// [`RETENTION_INTERVAL`]; a failed pass is logged and tried at the next.
async fn expire_samples(
    store: Store,
    retention: std::time::Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let expired = match store.latest_sample_window().await {
            Ok(Some(latest)) => {
                let before = latest.saturating_sub(retention.as_millis() as i64);
                store.delete_samples_before(before).await
            }
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        };
        if let Err(error) = expired {
            tracing::warn!(%error, "deleting the expired training sample failed");
        }
    }
}

/// How often pipeline statistics are written to the store.
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes, every [`STATS_INTERVAL`] and once more at the end, what each
/// topic did since the previous row (the `pipeline_stats` table behind the
/// Operations dashboard). A failed write is logged and its counts are
/// carried into the next row.
async fn record_pipeline_stats(
    store: Store,
    telemetry: ingest::telemetry::Telemetry,
    topics: Vec<String>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let instance = format!(
        "{}-{}",
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "tidewatch".into()),
        std::process::id()
    );
    let mut written: std::collections::HashMap<String, ingest::telemetry::TopicTotals> =
        Default::default();
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        let time = ingest::finalize::now_millis() as i64;
        let mut rows = Vec::with_capacity(topics.len());
        let mut totals = Vec::with_capacity(topics.len());
        for topic in &topics {
            let now = telemetry.topic_totals(topic);
            let before = written.get(topic).copied().unwrap_or_default();
            rows.push(store::PipelineStats {
                time,
                instance: instance.clone(),
                topic: topic.clone(),
                consumed: now.consumed - before.consumed,
                dead_lettered: now.dead_lettered - before.dead_lettered,
                late: now.late - before.late,
                lag: now.lag,
            });
            totals.push((topic.clone(), now));
        }
        match store.write_pipeline_stats(rows).await {
            Ok(()) => written.extend(totals),
            Err(error) => tracing::warn!(%error, "writing pipeline statistics failed"),
        }
        if last {
            break;
        }
    }
}

/// Binds `settings.listen()` and serves the API, pages and metrics over
/// `store` (and the model registry of `[registry]`, its events published to
/// the bus with `[kafka]`) in a task until the returned sender fires (or is
/// dropped).
pub async fn start_http(
    config: &Config,
    settings: &crate::http::config::HttpSettings,
    store: Store,
    telemetry: crate::http::Telemetry,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    let bus: Option<Arc<dyn alerting::delivery::Bus>> = match &config.kafka {
        Some(kafka) => Some(Arc::new(KafkaBus::new(kafka)?)),
        None => None,
    };
    start_http_with(config, settings, store, telemetry, bus, None).await
}

/// [`start_http`] with the registry's events published to `bus` (into the
/// store without one), on `listener` when given.
pub async fn start_http_with(
    config: &Config,
    settings: &crate::http::config::HttpSettings,
    store: Store,
    telemetry: crate::http::Telemetry,
    bus: Option<Arc<dyn alerting::delivery::Bus>>,
    listener: Option<tokio::net::TcpListener>,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    let registry = match &config.registry {
        Some(registry) => Some(registry::Registry::open(registry.path()).await.map_err(
            |error| {
                anyhow::anyhow!(
                    "{}: `registry.path`: cannot open {}: {error} (the registry is on wherever \
                     [http] is: set [registry] path to a writable file, or enabled = false)",
                    config.file.display(),
                    registry.path().display()
                )
            },
        )?),
        None => None,
    };
    let state = Arc::new(crate::http::AppState {
        store,
        models: config.models.clone(),
        window_ms: config.engine.window_size().millis(),
        token: settings.token().map(str::to_owned),
        telemetry,
        max_body_bytes: settings.max_body_bytes(),
        max_connections: settings.max_connections(),
        request_timeout: settings.request_timeout(),
        registry,
        mlflow_webhook_secret: config
            .registry
            .as_ref()
            .and_then(|r| r.bridge())
            .and_then(|b| b.webhook_secret())
            .map(str::to_owned),
    });
    let listener = match listener {
        Some(listener) => listener,
        None => tokio::net::TcpListener::bind(settings.listen())
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "{}: `http.listen`: cannot listen on {}: {error}",
                    config.file.display(),
                    settings.listen()
                )
            })?,
    };
    tracing::info!(address = %listener.local_addr()?, "serving the API, pages and /metrics");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The registry's outbox, for as long as the server runs: onto
    // [registry] topic with a broker, else into the store's version events.
    let publisher = match (&state.registry, &config.registry) {
        (Some(registry), Some(settings)) => {
            let sink = match bus {
                Some(bus) => crate::registry_bus::Sink::Bus {
                    bus,
                    topic: settings.topic().to_owned(),
                },
                None => crate::registry_bus::Sink::Store(state.store.clone()),
            };
            let (stop_publisher, publisher_stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(crate::registry_bus::publish(
                registry.clone(),
                sink,
                async {
                    let _ = publisher_stopped.await;
                },
            ));
            Some((stop_publisher, task))
        }
        _ => None,
    };
    // An MLflow server polled by the bridge.
    let poller = match (
        &state.registry,
        config.registry.as_ref().and_then(|r| r.bridge()),
    ) {
        (Some(registry), Some(bridge)) => bridge.poll().map(|(url, every)| {
            let (stop_poller, poller_stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(registry::bridge::poll(
                registry.clone(),
                url.to_owned(),
                every,
                async {
                    let _ = poller_stopped.await;
                },
            ));
            (stop_poller, task)
        }),
        _ => None,
    };
    // Versions tagged with training data get their reference profiles.
    let attacher = state.registry.clone().map(|registry| {
        let (stop_attacher, attacher_stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::registry_references::run(
            registry,
            state.store.clone(),
            config.models.clone(),
            async {
                let _ = attacher_stopped.await;
            },
        ));
        (stop_attacher, task)
    });
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(error) = crate::http::serve(listener, state, shutdown).await {
            tracing::error!(%error, "the HTTP server stopped");
        }
        if let Some((stop_publisher, task)) = publisher {
            let _ = stop_publisher.send(());
            if let Ok(published) = task.await {
                tracing::info!(published, "registry event publisher stopped");
            }
        }
        for (stop_task, task) in attacher.into_iter().chain(poller) {
            let _ = stop_task.send(());
            let _ = task.await;
        }
    });
    Ok((stop, server))
}

/// Retrain acknowledgements handled at once.
const ACK_BATCH: usize = 100;

/// Windows per model replayed into the alert evaluator at start-up.
const WARMUP_WINDOWS: i64 = 48;

/// Most recent notifications read at start-up to restore pending retrain
/// requests.
const RESTORED_ALERTS: u64 = 10_000;
