//! Opening the configured store and running the Kafka pipeline.

use std::future::Future;

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

/// Runs the Kafka pipeline of `config` until `shutdown` resolves. Alert
/// rules are evaluated on every finalized window; notifications are logged,
/// recorded in the store's outbox and delivered to their channels by a
/// separate task (one pass a second), which survives restarts through the
/// outbox.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunReport> {
    let kafka = config.kafka.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: `kafka` is required by `tidewatch run`",
            config.file.display()
        )
    })?;
    let store = open_store(&config.store).await?;
    let driver = driver(config, store.clone()).await?;
    let mut evaluator = alerting::lifecycle::AlertEvaluator::new(config.alert_rules.clone());
    // Notifications go through a bounded queue to the task that records them
    // in the outbox and delivers; if it falls 1,024 windows behind, further
    // notifications are logged as dropped.
    let (notifications, mut pending) =
        tokio::sync::mpsc::channel::<Vec<alerting::lifecycle::Alert>>(1024);
    let on_finalized = move |model: &str, _window_start: i64, metrics: &[store::WindowMetrics]| {
        let alerts = evaluator.evaluate(model, metrics);
        for alert in &alerts {
            tracing::warn!(id = %alert.id, rule = %alert.rule, model = %alert.model, status = ?alert.status, "{}", alert.summary);
        }
        if !alerts.is_empty() && notifications.try_send(alerts).is_err() {
            tracing::error!("alert queue full: the notifications of this window were dropped");
        }
    };
    let sender = alerting::delivery::Sender::new(
        store.clone(),
        config.alert_channels.clone(),
        alerting::delivery::RetryPolicy::default(),
    );
    let delivery = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                batch = pending.recv() => {
                    let Some(alerts) = batch else { break };
                    let created_at = ingest::finalize::now_millis();
                    let records = alerts.iter().map(|a| (a.to_record(created_at), a.channels.clone())).collect();
                    if let Err(error) = store.record_alerts(records).await {
                        tracing::error!(%error, "recording alerts failed");
                    }
                }
                _ = tick.tick() => {
                    if let Err(error) = sender.deliver_due(ingest::finalize::now_millis()).await {
                        tracing::warn!(%error, "alert delivery pass failed");
                    }
                }
            }
        }
        // A last pass for what the final windows raised.
        let _ = sender.deliver_due(ingest::finalize::now_millis()).await;
    });
    let report = ingest::kafka::run(
        driver,
        kafka,
        config.loop_settings.clone(),
        shutdown,
        on_finalized,
    )
    .await?;
    let _ = delivery.await;
    Ok(report)
}
