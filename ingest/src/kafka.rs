//! The Kafka consumer: a member of a consumer group that feeds the engine,
//! checkpoints to the store, and commits offsets only after that.
//!
//! ## Delivery guarantee
//! - Auto-commit is off (`enable.auto.commit=false`, `enable.auto.offset.store=false`).
//!   Offsets are committed after the checkpoint holding every event before
//!   them is stored, so a crash loses nothing: the uncommitted tail is read again.
//! - On assignment, each partition starts at the *start of the checkpoint
//!   range* holding its committed offset (see [`crate::engine`]), so the
//!   rows a crashed member may have half-written are recomputed and replaced
//!   (the store keeps the highest version). Window aggregates are therefore
//!   exactly-once even though messages are processed at least once.
//! - On revocation the partition's in-memory state is dropped without a
//!   commit; its next owner rewinds the same way.
//! - A payload that cannot be decoded goes to the dead-letter topic (with the
//!   reason in a header) before its offset can be committed, and is counted.
//!
//! ## Shutdown
//! [`run`] takes the shutdown signal as a future. On shutdown it stores a
//! last checkpoint and commits synchronously; open windows stay open (their
//! partials are stored and the next run continues them).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::EventKind;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::driver::Driver;
use crate::engine::{range_start_of, Ingested};
use crate::telemetry::Telemetry;
use crate::Error;

/// A topic to consume and the kind of event it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Kind assumed for payloads without a `schema` field.
    pub kind: EventKind,
}

/// Validated Kafka settings.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// `group.id`.
    pub group_id: String,
    /// Topics to consume.
    pub topics: Vec<TopicSpec>,
    /// Topic for undecodable payloads.
    pub dead_letter_topic: String,
    /// Extra librdkafka properties, passed through as they are.
    pub properties: Vec<(String, String)>,
}

/// Timing of the consumer loop.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// How often to checkpoint, commit and finalize closed windows.
    pub checkpoint_interval: Duration,
    /// Close every window when no event arrived for this long (`None`: never).
    pub idle_close_after: Option<Duration>,
    /// How often to look for new reference profiles in the store.
    pub reference_refresh: Duration,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Messages read.
    pub messages: u64,
    /// Payloads sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Windows finalized.
    pub windows_finalized: u64,
    /// Offset commits issued.
    pub commits: u64,
}

#[derive(Debug)]
enum RebalanceNote {
    Revoked(Vec<String>),
}

/// Rewinds assigned partitions to their checkpoint range start, and tells
/// the loop which partitions were revoked.
struct RewindContext {
    range_size: u64,
    notes: Mutex<Vec<RebalanceNote>>,
    telemetry: Telemetry,
}

impl ClientContext for RewindContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag
    /// per topic, summed over the partitions this member fetches.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (name, topic) in &statistics.topics {
            let lag: i64 = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(|p| p.consumer_lag)
                .sum();
            self.telemetry.set_lag(name, lag);
        }
    }
}

impl ConsumerContext for RewindContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match consumer.committed_offsets(partitions.clone(), Duration::from_secs(10)) {
                    Ok(committed) => {
                        for element in committed.elements() {
                            if let Offset::Offset(offset) = element.offset() {
                                let rewind = range_start_of(offset.max(0) as u64, self.range_size);
                                let _ = partitions.set_partition_offset(
                                    element.topic(),
                                    element.partition(),
                                    Offset::Offset(rewind as i64),
                                );
                                tracing::info!(
                                    topic = element.topic(),
                                    partition = element.partition(),
                                    committed = offset,
                                    rewind,
                                    "partition assigned"
                                );
                            }
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot read committed offsets on assignment")
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                };
                if let Err(error) = result {
                    tracing::error!(%error, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = partitions
                    .elements()
                    .iter()
                    .map(|element| source_name(element.topic(), element.partition()))
                    .collect();
                if let Ok(mut notes) = self.notes.lock() {
                    notes.push(RebalanceNote::Revoked(revoked));
                }
                let result = if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = result {
                    tracing::error!(%error, "unassign failed");
                }
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

/// The source name of a partition in the engine and the store.
pub fn source_name(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    config
}

/// A producer with the user's properties (dead letters, replay, bus events).
pub fn producer(settings: &KafkaSettings) -> Result<FutureProducer, Error> {
    let mut config = client_config(settings);
    config.set("enable.idempotence", "false");
    Ok(config.create()?)
}

/// Publishes one message and waits for the broker's acknowledgement (bus
/// events: retrain requests). `Err` holds the reason.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) -> Result<(), String> {
    let mut owned = rdkafka::message::OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(rdkafka::message::Header {
            key: name,
            value: Some(*value),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(owned),
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|(error, _)| format!("kafka: {error}"))
}

/// Reads every message of `topic` from the beginning, outside any consumer
/// group (partitions are assigned, nothing is committed), calling
/// `on_message` with each payload until `shutdown` resolves. For small
/// control topics such as retrain acknowledgements, which a restarted
/// process must see again. A topic that does not exist yet is looked for
/// again every 5 s; partitions added later are not followed.
pub async fn follow_topic(
    settings: &KafkaSettings,
    topic: &str,
    mut on_message: impl FnMut(&[u8]),
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let mut config = client_config(settings);
    config
        .set("group.id", format!("{}-follow-{topic}", settings.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let consumer: Arc<StreamConsumer> = Arc::new(config.create()?);
    tokio::pin!(shutdown);
    loop {
        // A blocking call of up to 10 s: kept off the async workers.
        let partitions = tokio::task::spawn_blocking({
            let consumer = Arc::clone(&consumer);
            let topic = topic.to_owned();
            move || {
                consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(10))
                    .map(|metadata| {
                        metadata
                            .topics()
                            .iter()
                            .filter(|t| t.name() == topic)
                            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                            .collect::<Vec<i32>>()
                    })
                    .unwrap_or_default()
            }
        })
        .await
        .map_err(|error| Error::Task(error.to_string()))?;
        let mut assignment = TopicPartitionList::new();
        for partition in partitions {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        if assignment.count() > 0 {
            consumer.assign(&assignment)?;
            break;
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            message = consumer.recv() => match message {
                Ok(message) => on_message(message.payload().unwrap_or_default()),
                Err(error) => tracing::warn!(%error, topic, "reading the topic failed"),
            },
        }
    }
}

/// Consumes until `shutdown` resolves. See the module docs.
///
/// `on_finalized` sees every finalized window (model, window start, the
/// metrics of every series), e.g. to evaluate alert rules; it runs on the
/// consumer task, so it must be quick. `telemetry` is updated as the loop
/// goes (see [`crate::telemetry`]).
pub async fn run(
    mut driver: Driver,
    settings: KafkaSettings,
    loop_settings: LoopSettings,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()>,
    mut on_finalized: impl FnMut(&str, i64, &[store::WindowMetrics]),
) -> Result<RunReport, Error> {
    let context = RewindContext {
        range_size: driver.engine().settings().range_size,
        notes: Mutex::new(Vec::new()),
        telemetry: telemetry.clone(),
    };
    let mut config = client_config(&settings);
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    if config.get("auto.offset.reset").is_none() {
        config.set("auto.offset.reset", "earliest");
    }
    if config.get("statistics.interval.ms").is_none() {
        // Feeds the consumer-lag gauge.
        config.set("statistics.interval.ms", "5000");
    }
    let consumer: Arc<StreamConsumer<RewindContext>> =
        Arc::new(config.create_with_context(context)?);
    let topics: Vec<&str> = settings.topics.iter().map(|t| t.name.as_str()).collect();
    consumer.subscribe(&topics)?;
    let kinds: HashMap<String, EventKind> = settings
        .topics
        .iter()
        .map(|t| (t.name.clone(), t.kind))
        .collect();
    let mut dead_letters = DeadLetterSink::Kafka {
        producer: producer(&settings)?,
        topic: settings.dead_letter_topic.clone(),
    };
    let mut report = RunReport::default();
    let mut ticker = tokio::time::interval(loop_settings.checkpoint_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_event = Instant::now();
    let mut last_refresh = Instant::now();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = ticker.tick() => {
                apply_notes(&consumer, &mut driver);
                if last_refresh.elapsed() >= loop_settings.reference_refresh {
                    driver.refresh_references().await?;
                    last_refresh = Instant::now();
                }
                if let Some(idle) = loop_settings.idle_close_after {
                    if last_event.elapsed() >= idle {
                        driver.engine_mut().close_all();
                    }
                }
                let started = Instant::now();
                let commits = driver.checkpoint().await?;
                telemetry.store_write("checkpoint", started.elapsed().as_secs_f64());
                commit(&consumer, &commits, CommitMode::Async, &mut report)?;
                let started = Instant::now();
                let (commits, finalized) = driver.finalize_closed().await?;
                if !finalized.windows.is_empty() {
                    telemetry.store_write("finalize", started.elapsed().as_secs_f64());
                }
                commit(&consumer, &commits, CommitMode::Async, &mut report)?;
                report.windows_finalized += finalized.windows.len() as u64;
                telemetry.windows_closed(finalized.windows.len() as u64);
                for (model, window_start, metrics) in &finalized.windows {
                    on_finalized(model, *window_start, metrics);
                }
            }
            message = consumer.recv() => {
                apply_notes(&consumer, &mut driver);
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, "kafka receive error");
                        continue;
                    }
                };
                last_event = Instant::now();
                report.messages += 1;
                let topic = message.topic();
                telemetry.consumed(topic);
                let partition = message.partition();
                let offset = message.offset().max(0) as u64;
                let source = source_name(topic, partition);
                let kind = kinds.get(topic).copied().unwrap_or(EventKind::Prediction);
                let payload = message.payload().unwrap_or_default();
                match driver.engine_mut().ingest(&source, offset, payload, kind) {
                    Ingested::Recorded => {}
                    Ingested::Late => telemetry.dropped(topic, "late"),
                    Ingested::UnknownModel => telemetry.dropped(topic, "unknown_model"),
                    Ingested::GroupLimit => telemetry.dropped(topic, "group_limit"),
                    Ingested::Malformed(reason) => {
                        report.dead_lettered += 1;
                        telemetry.dead_lettered(topic);
                        tracing::debug!(%source, offset, %reason, "dead-lettering payload");
                        dead_letters
                            .send(DeadLetter { source_topic: topic, source_partition: partition, source_offset: offset, payload, reason: &reason })
                            .await?;
                    }
                }
                if driver.engine().needs_checkpoint() {
                    let started = Instant::now();
                    let commits = driver.checkpoint().await?;
                    telemetry.store_write("checkpoint", started.elapsed().as_secs_f64());
                    commit(&consumer, &commits, CommitMode::Async, &mut report)?;
                }
            }
        }
    }

    apply_notes(&consumer, &mut driver);
    let commits = driver.checkpoint().await?;
    let final_consumer = Arc::clone(&consumer);
    let mut final_report = report.clone();
    let final_report = tokio::task::spawn_blocking(move || {
        commit(
            &final_consumer,
            &commits,
            CommitMode::Sync,
            &mut final_report,
        )
        .map(|()| final_report)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))??;
    tracing::info!(?final_report, "kafka consumer stopped");
    Ok(final_report)
}

fn apply_notes(consumer: &StreamConsumer<RewindContext>, driver: &mut Driver) {
    let notes = match consumer.context().notes.lock() {
        Ok(mut notes) => std::mem::take(&mut *notes),
        Err(_) => return,
    };
    for note in notes {
        match note {
            RebalanceNote::Revoked(sources) => {
                for source in sources {
                    tracing::info!(%source, "partition revoked, dropping its state");
                    driver.engine_mut().revoke(&source);
                }
            }
        }
    }
}

fn commit(
    consumer: &StreamConsumer<RewindContext>,
    commits: &[(String, u64)],
    mode: CommitMode,
    report: &mut RunReport,
) -> Result<(), Error> {
    if commits.is_empty() {
        return Ok(());
    }
    let assignment = consumer.assignment()?;
    let mut offsets = TopicPartitionList::new();
    for (source, next_offset) in commits {
        let Some((topic, partition)) = source.rsplit_once('/') else {
            continue;
        };
        let Ok(partition) = partition.parse::<i32>() else {
            continue;
        };
        // Never commit for a partition this member no longer owns.
        if assignment.find_partition(topic, partition).is_none() {
            continue;
        }
        offsets.add_partition_offset(topic, partition, Offset::Offset(*next_offset as i64))?;
    }
    if offsets.count() == 0 {
        return Ok(());
    }
    match consumer.commit(&offsets, mode) {
        Ok(()) => {
            report.commits += 1;
            Ok(())
        }
        // A commit racing a rebalance fails harmlessly: the rows are stored
        // and the next owner rewinds to the range start anyway.
        Err(KafkaError::ConsumerCommit(code)) => {
            tracing::warn!(?code, "offset commit refused");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Options of [`replay_file`].
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Destination topic.
    pub topic: String,
    /// Messages per second; `None` sends as fast as the broker takes them.
    pub rate: Option<u32>,
}

/// Produces every non-empty line of a JSON-lines file as one message
/// (keyed by `prediction_id`, or by line number without one), in file order: records are handed to librdkafka
/// one by one, which keeps their order within a partition. At most 10,000
/// deliveries are awaited at once. Returns the number of messages delivered.
pub async fn replay_file(
    settings: &KafkaSettings,
    path: &std::path::Path,
    options: &ReplayOptions,
) -> Result<u64, Error> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| Error::Io(path.display().to_string(), e))?;
    let producer = producer(settings)?;
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    let mut delivered = 0u64;
    for (index, line) in text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
    {
        if let Some(rate) = options.rate {
            let due = Duration::from_secs_f64(index as f64 / f64::from(rate.max(1)));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        // Key by prediction id when there is one, so a prediction and its
        // actual share a partition (and a consumer, for the join); else by line.
        let key = prediction_id_of(line).unwrap_or_else(|| index.to_string());
        loop {
            match producer.send_result(FutureRecord::to(&options.topic).payload(line).key(&key)) {
                Ok(delivery) => {
                    in_flight.push_back(delivery);
                    break;
                }
                // librdkafka's queue is full: wait for the oldest delivery, then retry.
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    delivered += await_delivery(in_flight.pop_front()).await?;
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
        while in_flight.len() >= 10_000 {
            delivered += await_delivery(in_flight.pop_front()).await?;
        }
    }
    while !in_flight.is_empty() {
        delivered += await_delivery(in_flight.pop_front()).await?;
    }
    Ok(delivered)
}

/// The `prediction_id` of a JSON line, if it has one.
fn prediction_id_of(line: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithId {
        prediction_id: Option<serde_json::Value>,
    }
    match serde_json::from_str::<WithId>(line).ok()?.prediction_id? {
        serde_json::Value::String(id) => Some(id),
        serde_json::Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}

async fn await_delivery(delivery: Option<rdkafka::producer::DeliveryFuture>) -> Result<u64, Error> {
    let Some(delivery) = delivery else {
        tokio::time::sleep(Duration::from_millis(10)).await;
        return Ok(0);
    };
    match delivery.await {
        Ok(Ok(_)) => Ok(1),
        Ok(Err((error, _))) => Err(error.into()),
        Err(_) => Err(Error::Task("the producer dropped a delivery".into())),
    }
}
