//! Opening the configured store and running the Kafka pipeline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use detectors::aggregate::Catalog;
use ingest::driver::{Driver, DriverSettings};
use ingest::engine::Engine;
use ingest::kafka::RunReport;
use store::{clickhouse_store::ClickHouseStore, embedded::EmbeddedStore, Store};

use crate::config::{Config, StoreSettings};

/// Opens (and migrates) the configured store.
pub async fn open_store(settings: &StoreSettings) -> Result<Store, store::Error> {
    match settings {
        StoreSettings::Embedded { path } => Ok(Store::Embedded(EmbeddedStore::open(path).await?)),
        StoreSettings::ClickHouse {
            url,
            database,
            user,
            password,
        } => Ok(Store::ClickHouse(Box::new(
            ClickHouseStore::connect(url, database, user.as_deref(), password.as_deref()).await?,
        ))),
    }
}

/// A driver over the configured models and store.
pub async fn driver(config: &Config, store: Store) -> Result<Driver, ingest::Error> {
    let engine = Engine::new(
        config.engine.clone(),
        Catalog::new(config.models.iter().cloned()),
    );
    let settings = DriverSettings {
        thresholds: config.thresholds,
        warmup_windows: config.warmup_windows,
        store_retries: 5,
    };
    Driver::new(engine, store, settings).await
}

/// The bus on Kafka: retrain events are published with the user's
/// producer properties.
pub struct KafkaBus(rdkafka::producer::FutureProducer);

impl KafkaBus {
    /// A bus over the `[kafka]` settings.
    pub fn new(settings: &ingest::kafka::KafkaSettings) -> Result<Self, ingest::Error> {
        Ok(Self(ingest::kafka::producer(settings)?))
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
    let sender = alerting::delivery::Sender::new(
        store,
        config.alert_channels.clone(),
        alerting::delivery::RetryPolicy::default(),
    )?;
    Ok(match &config.kafka {
        Some(kafka) => sender.with_bus(Arc::new(KafkaBus::new(kafka)?)),
        None => sender,
    })
}

/// Runs the Kafka pipeline of `config` until `shutdown` resolves. Alert
/// rules are evaluated on every finalized window; notifications (and the
/// retrain requests the retrain gate lets through) are logged, recorded in
/// the store's outbox and delivered to their channels by a separate task
/// (one pass a second), which survives restarts through the outbox.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunReport> {
    let kafka = config.kafka.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: `kafka` is required by `tidewatch run`",
            config.file.display()
        )
    })?;
    let store = open_store(&config.store).await?;
    let sender = sender(config, store.clone())?;
    let driver = driver(config, store.clone()).await?;
    let telemetry = crate::http::Telemetry::default();
    let (stop_http, http) = match &config.http {
        Some(settings) => {
            let (stop, server) =
                start_http(config, settings, store.clone(), telemetry.clone()).await?;
            (Some(stop), Some(server))
        }
        None => (None, None),
    };
    let mut evaluator = alerting::lifecycle::AlertEvaluator::new(config.alert_rules.clone());
    warm_up(&mut evaluator, config, &store).await?;

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
    let (stop_acks, acks_stopped) = tokio::sync::oneshot::channel::<()>();
    let acks = config
        .retrain
        .as_ref()
        .and_then(|r| r.ack_topic.clone())
        .map(|topic| {
            let gate = Arc::clone(&gate);
            let kafka = kafka.clone();
            tokio::spawn(async move {
                let on_ack = |payload: &[u8]| {
                    if let Some(request) = alerting::retrain::parse_ack(payload) {
                        if gate.lock().expect("gate lock").acknowledge(&request) {
                            tracing::info!(%request, "retrain request acknowledged");
                        }
                    }
                };
                let stopped = async {
                    let _ = acks_stopped.await;
                };
                if let Err(error) =
                    ingest::kafka::follow_topic(&kafka, &topic, on_ack, stopped).await
                {
                    tracing::error!(%error, %topic, "reading retrain acknowledgements failed");
                }
            })
        });

    // Notifications go through a bounded queue to the task that records them
    // in the outbox and delivers; if it falls 1,024 windows behind, further
    // notifications are logged as dropped.
    type Batch = Vec<(store::AlertRecord, Vec<String>)>;
    let (notifications, mut pending) = tokio::sync::mpsc::channel::<Batch>(1024);
    let evaluate_gate = Arc::clone(&gate);
    let counted = telemetry.clone();
    let on_finalized = move |model: &str, _window_start: i64, metrics: &[store::WindowMetrics]| {
        let alerts = evaluator.evaluate(model, metrics);
        let now = ingest::finalize::now_millis();
        let mut batch: Batch = Vec::with_capacity(alerts.len());
        for alert in &alerts {
            tracing::warn!(id = %alert.id, rule = %alert.rule, model = %alert.model, status = ?alert.status, "{}", alert.summary);
            batch.push((alert.to_record(now), alert.channels.clone()));
            let request = evaluate_gate.lock().expect("gate lock").admit(alert, now);
            if let Some(request) = request {
                tracing::warn!(id = %alert.id, model = %alert.model, version = %alert.model_version, "retraining requested");
                batch.push((
                    alerting::retrain::to_record(&request, now),
                    request.channels,
                ));
            }
        }
        for (record, _) in &batch {
            counted.raised(&record.status);
        }
        if !batch.is_empty() && notifications.try_send(batch).is_err() {
            tracing::error!("alert queue full: the notifications of this window were dropped");
        }
    };
    let delivered = telemetry.clone();
    let stats_store = store.clone();
    let delivery = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                batch = pending.recv() => {
                    let Some(records) = batch else { break };
                    if let Err(error) = store.record_alerts(records).await {
                        tracing::error!(%error, "recording alerts failed");
                    }
                }
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
    let stats = tokio::spawn(record_pipeline_stats(
        stats_store,
        telemetry.pipeline.clone(),
        kafka.topics.iter().map(|t| t.name.clone()).collect(),
        stats_stopped,
    ));
    let report = ingest::kafka::run(
        driver,
        kafka,
        config.loop_settings.clone(),
        telemetry.pipeline.clone(),
        shutdown,
        on_finalized,
    )
    .await?;
    let _ = delivery.await;
    let _ = stop_stats.send(());
    let _ = stats.await;
    let _ = stop_acks.send(());
    if let Some(acks) = acks {
        let _ = acks.await;
    }
    if let (Some(stop), Some(server)) = (stop_http, http) {
        let _ = stop.send(());
        let _ = server.await;
    }
    Ok(report)
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

/// Binds `settings.listen` and serves the API, pages and metrics over
/// `store` in a task until the returned sender fires (or is dropped).
pub async fn start_http(
    config: &Config,
    settings: &crate::config::HttpSettings,
    store: Store,
    telemetry: crate::http::Telemetry,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    let state = Arc::new(crate::http::AppState {
        store,
        models: config.models.clone(),
        window_ms: config.engine.window_size.millis(),
        token: settings.token.clone(),
        telemetry,
        max_body_bytes: settings.max_body_bytes,
    });
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "{}: `http.listen`: cannot listen on {}: {error}",
                config.file.display(),
                settings.listen
            )
        })?;
    tracing::info!(address = %listener.local_addr()?, "serving the API, pages and /metrics");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(error) = crate::http::serve(listener, state, shutdown).await {
            tracing::error!(%error, "the HTTP server stopped");
        }
    });
    Ok((stop, server))
}

/// Windows per model replayed into the alert evaluator at start-up.
const WARMUP_WINDOWS: i64 = 48;

/// Replays the last [`WARMUP_WINDOWS`] stored windows of every model through
/// `evaluator`, discarding what it says, so that a restarted service knows
/// which alerts are firing (and resolves them under the same id) instead of
/// firing them again. Windows it has seen are not evaluated again when they
/// are finalized again. A `quality_drop` baseline is taken from these windows.
async fn warm_up(
    evaluator: &mut alerting::lifecycle::AlertEvaluator,
    config: &Config,
    store: &Store,
) -> anyhow::Result<()> {
    let size = config.engine.window_size.millis();
    let versions = store.model_versions().await?;
    for model in &config.models {
        let Some(latest) = versions
            .iter()
            .filter(|v| v.model == model.name())
            .map(|v| v.last_window)
            .max()
        else {
            continue;
        };
        let metrics = store
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
        let count = by_window.len();
        for records in by_window.values() {
            evaluator.evaluate(model.name(), records);
        }
        tracing::info!(model = %model.name(), windows = count, "alert state restored from stored windows");
    }
    Ok(())
}

/// Most recent notifications read at start-up to restore pending retrain
/// requests.
const RESTORED_ALERTS: u64 = 10_000;
