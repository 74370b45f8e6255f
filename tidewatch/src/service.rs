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
/// rules are evaluated on every finalized window; their notifications are
/// logged (channels come with the alert outbox).
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunReport> {
    let kafka = config.kafka.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: `kafka` is required by `tidewatch run`",
            config.file.display()
        )
    })?;
    let store = open_store(&config.store).await?;
    let driver = driver(config, store).await?;
    let mut evaluator = alerting::lifecycle::AlertEvaluator::new(config.alert_rules.clone());
    let on_finalized = move |model: &str, _window_start: i64, metrics: &[store::WindowMetrics]| {
        for alert in evaluator.evaluate(model, metrics) {
            tracing::warn!(id = %alert.id, rule = %alert.rule, model = %alert.model, status = ?alert.status, "{}", alert.summary);
        }
    };
    Ok(ingest::kafka::run(
        driver,
        kafka,
        config.loop_settings.clone(),
        shutdown,
        on_finalized,
    )
    .await?)
}
