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
//!   A partition whose committed offset cannot be read is not consumed at
//!   all (see [`crate::poller`]): the member stops with an error instead.
//! - On revocation the partition's in-memory state is dropped without a
//!   commit; its next owner rewinds the same way. Messages of a partition
//!   this member was not told it owns are ignored.
//! - A payload that cannot be decoded goes to the dead-letter topic (with the
//!   reason in a header, the payload cut to a bound) and is acknowledged
//!   before any offset after it is committed; see [`crate::dead_letter`].
//! - Every step that commits (a tick, a sealed range, the drain) runs in one
//!   order: fingerprints, partials, every closed window finalized from the
//!   stored partials and handed to the [`WindowObserver`] (which records the
//!   alerts they raise), each source's progress (the windows it recorded
//!   into and did not see finalized, `source_progress`), dead letters, and
//!   the commit last. On assignment a partition's source starts from its
//!   stored progress, so a window whose partials were committed is
//!   finalized by the next owner even when it never reads an event of it
//!   again (see [`crate::engine`]).
//! - Each checkpoint stores its ranges' predictions and pending labels for
//!   the durable join before their partials (see [`crate::join`]); a
//!   revocation waits for the loop to finish what it was storing before
//!   librdkafka hands the partitions on (see [`crate::poller`]), and an
//!   assignment loads the partition's pending labels before reading.
//! - An assigned partition holds the watermark back until it delivers an
//!   event or librdkafka's statistics show it fetched to its end (idle);
//!   an idle close finalizes provisionally and moves no clock.
//! - A store or broker outage makes the loop wait and retry, never exit
//!   (see [`crate::driver`]); readiness says so meanwhile.
//!
//! ## Threads
//! librdkafka is polled on a thread of its own ([`crate::poller`]); this
//! module's loop runs on the async runtime and receives batches of messages
//! and rebalance notes, in order, through a bounded channel.
//!
//! ## Shutdown
//! [`run`] takes the shutdown signal as a future, which also cuts short any
//! wait on an outage. On shutdown it settles once more (last checkpoint,
//! closed windows finalized, progress) and commits synchronously within
//! [`DRAIN_DEADLINE`]; open windows stay open (their partials and the
//! progress naming them are stored, and the next owner continues them).
//! Closing the consumer then gets [`CLOSE_DEADLINE`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::EventKind;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::{BrokerConnection, KafkaSettings, TopicSpec};
use crate::dead_letter::DeadLetterSink;
use crate::driver::{Driver, SourceMessage};
use crate::engine::Ingested;
use crate::incarnation::{fingerprint, Incarnations, PartitionId, SourceId};
use crate::lines::{LineReader, DEFAULT_MAX_LINE_BYTES};
use crate::poller::{Note, PollContext, Poller, Record, CHANNEL_BATCHES};
use crate::telemetry::Telemetry;
use crate::Error;

/// Timing of the consumer loop.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// How often to checkpoint, commit and finalize closed windows.
    pub checkpoint_interval: Duration,
    /// Close every window when no event arrived for this long (`None`: never).
    pub idle_close_after: Option<Duration>,
    /// How often to look for new reference profiles in the store.
    pub reference_refresh: Duration,
    /// The consumer counts as stalled (not ready) when it has lag and has
    /// read nothing for this long.
    pub stall_after: Duration,
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

fn client_config(connection: &BrokerConnection) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", connection.brokers());
    for (key, value) in connection.properties() {
        config.set(key, value);
    }
    config
}

/// A producer with the user's properties, for the pipeline's own messages
/// (dead letters, bus events).
///
/// Not idempotent: an idempotent producer whose broker comes back without
/// its state fails for good (its producer id is unknown there), and the
/// pipeline would wait forever on its dead letters. A send retried after a
/// lost acknowledgement may then be written twice: dead letters and bus
/// events carry their source coordinates and ids, so readers can tell.
pub fn producer(connection: &BrokerConnection) -> Result<FutureProducer, Error> {
    let mut config = client_config(connection);
    if config.get("enable.idempotence").is_none() {
        config.set("enable.idempotence", "false");
    }
    Ok(config.create()?)
}

/// An idempotent producer whose queue holds at most `max_messages` and
/// that gives up on a message after `message_timeout` (the model gateway's
/// inference log: when the broker is down, the queue fills and the caller
/// drops what does not fit, counted, instead of holding it without bound).
pub fn bounded_producer(
    connection: &BrokerConnection,
    max_messages: usize,
    message_timeout: Duration,
) -> Result<FutureProducer, Error> {
    let mut config = client_config(connection);
    if config.get("enable.idempotence").is_none() {
        config.set("enable.idempotence", "true");
    }
    config.set("queue.buffering.max.messages", max_messages.to_string());
    config.set(
        "message.timeout.ms",
        message_timeout
            .as_millis()
            .clamp(1, i32::MAX as u128)
            .to_string(),
    );
    Ok(config.create()?)
}

/// A consumer of group `group_id` that commits only what its caller
/// commits (the serving adapters: offsets stay below open exchanges),
/// reading a new group's topics from the start.
pub fn adapter_consumer(
    connection: &BrokerConnection,
    group_id: &str,
) -> Result<rdkafka::consumer::StreamConsumer, Error> {
    Ok(consumer_config(connection, group_id).create()?)
}

/// librdkafka's default wait before fetching again for a partition whose
/// local queue was over its thresholds is 1 s (`fetch.queue.backoff.ms`,
/// librdkafka 2.4): a consumer that keeps its queue full (any consumer
/// slower than the broker) then finds it empty for most of that second.
/// `scripts/bench-broker.sh` drained 106,000 events/s with the default,
/// 180,000 with 10 ms (and with 100 ms, 179,000 for one instance but 216,000
/// instead of 294,000 for two).
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// A consumer of group `group_id` whose offsets are committed only by its
/// caller, reading a new group's topics from the start unless the user's
/// properties say otherwise.
fn consumer_config(connection: &BrokerConnection, group_id: &str) -> ClientConfig {
    let mut config = client_config(connection);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    for (key, default) in [
        ("auto.offset.reset", "earliest"),
        ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
    ] {
        if config.get(key).is_none() {
            config.set(key, default);
        }
    }
    config
}

/// An idempotent producer (`tidewatch replay`): a send retried across a
/// broker or network fault is written once. A fatal producer error stops
/// the replay.
fn idempotent_producer(connection: &BrokerConnection) -> Result<FutureProducer, Error> {
    let mut config = client_config(connection);
    if config.get("enable.idempotence").is_none() {
        config.set("enable.idempotence", "true");
    }
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
/// group (partitions are assigned, nothing is committed), handing the
/// payloads to `on_batch` in batches of at most `batch` (what arrived
/// together) until `shutdown` resolves; the next batch is read after
/// `on_batch` finished. For small control topics such as retrain
/// acknowledgements and registry events, which a restarted process must
/// see again. A topic that does not exist yet is looked for again every
/// 5 s; partitions added later are not followed.
pub async fn follow_topic<F, Fut>(
    settings: &KafkaSettings,
    topic: &str,
    batch: usize,
    mut on_batch: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    F: FnMut(Vec<Vec<u8>>) -> Fut,
    Fut: Future<Output = ()>,
{
    let group_id = format!("{}-follow-{topic}", settings.group_id());
    let consumer: Arc<StreamConsumer> =
        Arc::new(consumer_config(settings.connection(), &group_id).create()?);
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
    // How long a batch waits for one more message that is not there yet.
    const GATHER: Duration = Duration::from_millis(20);
    let batch = batch.max(1);
    loop {
        let first = tokio::select! {
            () = &mut shutdown => return Ok(()),
            message = consumer.recv() => message,
        };
        let mut payloads = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Ok(message) => payloads.push(message.payload().unwrap_or_default().to_vec()),
                Err(error) => tracing::warn!(%error, topic, "reading the topic failed"),
            }
            if payloads.len() < batch {
                next = tokio::time::timeout(GATHER, consumer.recv()).await.ok();
            }
        }
        if payloads.is_empty() {
            continue;
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = on_batch(payloads) => {}
        }
    }
}

/// What the loop does with each finalized window before the offsets that
/// closed it are committed: evaluate alert rules and record what they
/// raise. An error stops the consumer (after the observer's own retries);
/// nothing after the window is committed then.
pub trait WindowObserver: Send {
    /// Called once per finalized window, in order.
    fn finalized(
        &mut self,
        model: &str,
        window_start: i64,
        metrics: &[store::WindowMetrics],
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Observes nothing.
impl WindowObserver for () {
    async fn finalized(
        &mut self,
        _model: &str,
        _window_start: i64,
        _metrics: &[store::WindowMetrics],
    ) -> Result<(), Error> {
        Ok(())
    }
}

/// How long a drain may take at shutdown (last checkpoint, dead letters,
/// commit) before the process gives up on it; what it did not store is read
/// again by the next owner.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(15);

/// The loop's state besides the driver.
struct Member<O> {
    consumer: Arc<BaseConsumer<PollContext>>,
    topics: Vec<TopicSpec>,
    dead_letters: DeadLetterSink,
    telemetry: Telemetry,
    observer: O,
    report: RunReport,
    /// Partitions assigned and rewound (by topic index and partition);
    /// messages of others are ignored.
    assigned: HashMap<(usize, i32), PartitionId>,
    /// The incarnation of each partition (see [`crate::incarnation`]).
    incarnations: Incarnations,
    /// Messages read, per topic (by index in `topics`).
    consumed: Vec<prometheus_client::metrics::counter::Counter>,
}

impl<O: WindowObserver> Member<O> {
    /// One step of the delivery guarantee, in this order: fingerprints,
    /// then the checkpoint's partials; every closed window finalized from
    /// the stored partials and handed to the observer (which records the
    /// alerts it raises); each source's progress (the windows it recorded
    /// into that are still not finalized); the dead letters; and only then
    /// the commit. A kill between any two steps leaves nothing behind that
    /// the next owner does not redo: what was not committed is read again,
    /// and a window whose partials were committed is either finalized or
    /// named in the stored progress.
    async fn settle(&mut self, driver: &mut Driver, mode: CommitMode) -> Result<(), Error> {
        let started = Instant::now();
        self.store_fingerprints(driver).await?;
        let (commits, finalized) = driver.finalize_closed().await?;
        if finalized.windows.is_empty() {
            self.telemetry
                .store_write("checkpoint", started.elapsed().as_secs_f64());
        } else {
            self.telemetry
                .store_write("finalize", started.elapsed().as_secs_f64());
        }
        for (model, window_start, metrics) in &finalized.windows {
            self.observer
                .finalized(model, *window_start, metrics)
                .await?;
        }
        self.report.windows_finalized += finalized.windows.len() as u64;
        self.telemetry
            .windows_closed(finalized.windows.len() as u64);
        self.progress_and_commit(driver, commits, mode).await
    }

    /// The end of every step that commits: each committed source's
    /// progress, the dead letters, then the commit of `commits` (the
    /// driver's, by source name) for the partitions still assigned here.
    async fn progress_and_commit(
        &mut self,
        driver: &mut Driver,
        commits: Vec<(String, u64)>,
        mode: CommitMode,
    ) -> Result<(), Error> {
        let commits = self.partitions_of(commits);
        let sources: Vec<(String, u64)> = commits
            .iter()
            .map(|(partition, next_offset)| {
                (
                    self.incarnations.current_source(partition).to_string(),
                    *next_offset,
                )
            })
            .collect();
        driver.store_progress(&sources).await?;
        self.dead_letters.flush().await;
        let committed = match mode {
            CommitMode::Async => commit(&self.consumer, &commits, mode)?,
            // A synchronous commit blocks on the coordinator: off the async workers.
            CommitMode::Sync => {
                let consumer = Arc::clone(&self.consumer);
                tokio::task::spawn_blocking(move || commit(&consumer, &commits, mode))
                    .await
                    .map_err(|error| Error::Task(error.to_string()))??
            }
        };
        self.report.commits += u64::from(committed);
        Ok(())
    }

    /// Marks each assigned partition's source idle when librdkafka's
    /// statistics say it has nothing left to fetch, active otherwise.
    fn mark_idle_sources(&self, driver: &mut Driver) {
        for ((topic, partition), id) in &self.assigned {
            let idle = self.consumer.context().partition_idle(*topic, *partition);
            driver.set_idle(self.incarnations.current_source(id).name(), idle);
        }
    }

    /// Stores the fingerprints of the ranges started since the last
    /// checkpoint, before their partials.
    async fn store_fingerprints(&mut self, driver: &Driver) -> Result<(), Error> {
        self.incarnations
            .store(
                driver.store(),
                &self.telemetry,
                driver.settings().store_retry_max_delay,
            )
            .await
    }

    /// A partition was found recreated: stores what was read of its old
    /// incarnation (those events are gone from the topic, what was read of
    /// them is kept), commits nothing for it, and hands its windows still
    /// to finalize to the new incarnation.
    async fn retire(
        &mut self,
        driver: &mut Driver,
        old_source: &SourceId,
        new_source: &SourceId,
    ) -> Result<(), Error> {
        self.store_fingerprints(driver).await?;
        let old_name = old_source.to_string();
        let commits: Vec<(String, u64)> = driver
            .checkpoint()
            .await?
            .into_iter()
            .filter(|(source, _)| *source != old_name)
            .collect();
        driver.retire(&old_name, new_source.name());
        self.progress_and_commit(driver, commits, CommitMode::Async)
            .await
    }

    /// The driver's commits (by source name) as offsets of the partitions
    /// assigned here, each under its current incarnation; commits of other
    /// sources (a retired incarnation, a partition revoked) are left out.
    fn partitions_of(&self, commits: Vec<(String, u64)>) -> Vec<(PartitionId, u64)> {
        if commits.is_empty() {
            return Vec::new();
        }
        let current: HashMap<String, &PartitionId> = self
            .assigned
            .values()
            .map(|partition| {
                (
                    self.incarnations.current_source(partition).to_string(),
                    partition,
                )
            })
            .collect();
        commits
            .into_iter()
            .filter_map(|(source, next_offset)| {
                current
                    .get(&source)
                    .map(|partition| ((*partition).clone(), next_offset))
            })
            .collect()
    }

    /// Handles one note of the polling thread. `Err` stops the loop.
    async fn handle(&mut self, driver: &mut Driver, note: Note) -> Result<(), Error> {
        match note {
            Note::Records(records) => {
                for (record, payload) in records.iter() {
                    self.record(driver, record, payload).await?;
                    if driver.needs_checkpoint() {
                        self.settle(driver, CommitMode::Async).await?;
                    }
                }
            }
            Note::Assigned(partitions) => {
                for (topic, partition) in partitions {
                    let id = PartitionId::new(self.topics[topic].name.as_str(), partition);
                    self.incarnations.reset_position(&id);
                    let source = self
                        .incarnations
                        .resolve(
                            driver.store(),
                            &self.telemetry,
                            driver.settings().store_retry_max_delay,
                            &id,
                        )
                        .await?;
                    driver.assign(source.name()).await?;
                    self.assigned.insert((topic, partition), id);
                }
            }
            Note::Revoked(partitions, ack) => {
                for (topic, partition) in partitions {
                    let Some(id) = self.assigned.remove(&(topic, partition)) else {
                        continue;
                    };
                    let source = self.incarnations.current_source(&id);
                    self.incarnations.reset_position(&id);
                    tracing::info!(%source, "partition revoked, dropping its state");
                    driver.revoke(&source.to_string());
                }
                ack.done();
            }
            Note::Failed(reason) => return Err(Error::Rebalance(reason)),
        }
        Ok(())
    }

    async fn record(
        &mut self,
        driver: &mut Driver,
        record: &Record,
        payload: &[u8],
    ) -> Result<(), Error> {
        let Some(partition) = self.assigned.get(&(record.topic, record.partition)) else {
            tracing::debug!(
                partition = record.partition,
                offset = record.offset,
                "message of a partition not assigned here, ignored"
            );
            return Ok(());
        };
        let offset = record.offset.max(0) as u64;
        let placement = self
            .incarnations
            .source_for(
                driver.store(),
                &self.telemetry,
                driver.settings().store_retry_max_delay,
                partition,
                offset,
                || fingerprint(record.timestamp, payload),
            )
            .await?;
        if let Some(old_source) = &placement.replaced {
            self.retire(driver, old_source, &placement.source).await?;
        }
        let spec = &self.topics[record.topic];
        let topic = spec.name.as_str();
        self.report.messages += 1;
        self.consumed[record.topic].inc();
        let message = SourceMessage {
            source: placement.source.name(),
            topic,
            partition: record.partition,
            offset,
            payload,
            format: spec.format(),
        };
        match driver.ingest(message, &mut self.dead_letters).await? {
            Ingested::Recorded => {}
            Ingested::Late => self.telemetry.dropped(topic, "late"),
            Ingested::UnknownModel => self.telemetry.dropped(topic, "unknown_model"),
            Ingested::GroupLimit => self.telemetry.dropped(topic, "group_limit"),
            Ingested::Malformed(_) => {
                self.report.dead_lettered += 1;
                self.telemetry.dead_lettered(topic);
            }
        }
        Ok(())
    }

    /// Whether the consumer has lag but read nothing for `stall_after`.
    fn stalled(&self, idle: Duration, stall_after: Duration) -> bool {
        idle >= stall_after
            && self
                .topics
                .iter()
                .any(|topic| self.telemetry.topic_totals(&topic.name).lag > 0)
    }
}

/// Consumes until `shutdown` resolves. See the module docs.
///
/// `observer` sees every finalized window (model, window start, the
/// metrics of every series) before the offsets behind it are committed.
/// `telemetry` is updated as the loop goes (see [`crate::telemetry`]).
pub async fn run(
    mut driver: Driver,
    settings: KafkaSettings,
    loop_settings: LoopSettings,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()>,
    observer: impl WindowObserver,
) -> Result<RunReport, Error> {
    let (notes_sender, mut notes) = mpsc::channel::<Note>(CHANNEL_BATCHES);
    let context = PollContext::new(
        settings.topics().iter().map(|t| t.name.clone()).collect(),
        driver.engine().settings().range_size,
        telemetry.clone(),
        notes_sender,
    );
    let mut config = consumer_config(settings.connection(), settings.group_id());
    if config.get("statistics.interval.ms").is_none() {
        // Feeds the consumer-lag gauge and broker health.
        config.set("statistics.interval.ms", "5000");
    }
    let consumer: Arc<BaseConsumer<PollContext>> = Arc::new(config.create_with_context(context)?);
    let topics: Vec<&str> = settings.topics().iter().map(|t| t.name.as_str()).collect();
    consumer.subscribe(&topics)?;
    let poller = Poller::start(Arc::clone(&consumer))
        .map_err(|error| Error::Task(format!("starting the polling thread: {error}")))?;
    let mut member = Member {
        consumer,
        topics: settings.topics().to_vec(),
        dead_letters: DeadLetterSink::kafka(
            producer(settings.connection())?,
            settings.dead_letter_topic().to_owned(),
            settings.dead_letter_max_bytes(),
            telemetry.clone(),
        ),
        telemetry: telemetry.clone(),
        observer,
        report: RunReport::default(),
        assigned: HashMap::new(),
        incarnations: Incarnations::new(driver.engine().settings().range_size),
        consumed: settings
            .topics()
            .iter()
            .map(|topic| telemetry.consumed_counter(&topic.name))
            .collect(),
    };
    let mut ticker = tokio::time::interval(loop_settings.checkpoint_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_event = Instant::now();
    let mut last_refresh = Instant::now();
    tokio::pin!(shutdown);

    // Set when shutdown cut a step short: what it ingested may be half
    // handled (a dead letter not yet handed over), so nothing is committed.
    let mut interrupted = false;
    let health = telemetry.health().clone();
    health.set_stall_after(loop_settings.stall_after);
    let outcome: Result<(), Error> = loop {
        // Every step may wait on a store or broker outage; shutdown cuts it
        // short (nothing after the last commit is lost: it is read again).
        let step = tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            _ = ticker.tick() => {
                let step = async {
                    if last_refresh.elapsed() >= loop_settings.reference_refresh {
                        driver.refresh_references().await?;
                        last_refresh = Instant::now();
                    }
                    // Idle means nothing left to read, not merely nothing
                    // read: a loop held up by an outage reads nothing either,
                    // and closing its windows would make the backlog late.
                    member.mark_idle_sources(&mut driver);
                    // Finalized provisionally: no clock moves, so what
                    // arrives after the pause is recorded and finalized again.
                    if let Some(idle) = loop_settings.idle_close_after {
                        if last_event.elapsed() >= idle
                            && notes.is_empty()
                            && member.consumer.context().is_caught_up()
                        {
                            driver.close_all();
                        }
                    }
                    member.settle(&mut driver, CommitMode::Async).await?;
                    telemetry.set_stalled(member.stalled(last_event.elapsed(), loop_settings.stall_after));
                    Ok::<(), Error>(())
                };
                // The step first: one that completes without waiting is
                // never cut; shutdown interrupts only a step that waits.
                health.step_started();
                tokio::select! {
                    biased;
                    result = step => result,
                    () = &mut shutdown => {
                        interrupted = true;
                        break Ok(());
                    }
                }
            }
            note = notes.recv() => {
                let Some(note) = note else {
                    break Err(Error::Task("the polling thread stopped".into()));
                };
                if matches!(note, Note::Records(..)) {
                    last_event = Instant::now();
                }
                // The step first: one that completes without waiting is
                // never cut; shutdown interrupts only a step that waits.
                health.step_started();
                tokio::select! {
                    biased;
                    result = member.handle(&mut driver, note) => result,
                    () = &mut shutdown => {
                        interrupted = true;
                        break Ok(());
                    }
                }
            }
        };
        health.step_finished();
        if let Err(error) = step {
            break Err(error);
        }
    };
    health.step_finished();

    // Drain: a last settle (checkpoint, closed windows finalized and
    // observed, progress) and a synchronous commit, within the deadline.
    // Notes still queued are dropped unread (their offsets are not committed).
    notes.close();
    while notes.try_recv().is_ok() {}
    if interrupted {
        tracing::warn!("shutdown interrupted a step: nothing more is committed; the next owner reads from the last commit");
    } else if outcome.is_ok() {
        let drain = member.settle(&mut driver, CommitMode::Sync);
        match tokio::time::timeout(DRAIN_DEADLINE, drain).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "last checkpoint failed; what it held is read again on restart")
            }
            Err(_) => {
                tracing::warn!(deadline = ?DRAIN_DEADLINE, "last checkpoint timed out; what it held is read again on restart")
            }
        }
    }
    let report = member.report.clone();
    let consumer = member.consumer;
    drop(member.dead_letters);
    close_within(poller, consumer, CLOSE_DEADLINE).await;
    outcome?;
    tracing::info!(?report, "kafka consumer stopped");
    Ok(report)
}

/// How long stopping the polling thread and closing the consumer (leaving
/// the group) may take at shutdown.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// Stops the polling thread and closes the consumer on a thread of their
/// own, waiting at most `deadline`. The consumer's close loops until
/// librdkafka reports it closed, which it may never do when a rebalance
/// callback runs during the close (a known librdkafka/rust-rdkafka hang):
/// rebalance callbacks do nothing once closing starts, and past the
/// deadline the thread is left behind (the process exits without it; the
/// group's session timeout then frees the partitions).
async fn close_within(
    poller: Poller,
    consumer: Arc<BaseConsumer<PollContext>>,
    deadline: Duration,
) {
    consumer.context().start_closing();
    let (closed, done) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("tidewatch-kafka-close".into())
        .spawn(move || {
            poller.stop_and_join();
            drop(consumer);
            let _ = closed.send(());
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the thread closing the consumer");
        return;
    }
    if tokio::time::timeout(deadline, done).await.is_err() {
        tracing::warn!(
            ?deadline,
            "closing the Kafka consumer timed out; exiting without it (the group's session timeout frees its partitions)"
        );
    }
}

/// Commits `commits` for the partitions this member still owns; true when
/// a commit was issued.
fn commit(
    consumer: &BaseConsumer<PollContext>,
    commits: &[(PartitionId, u64)],
    mode: CommitMode,
) -> Result<bool, Error> {
    if commits.is_empty() {
        return Ok(false);
    }
    let assignment = consumer.assignment()?;
    let mut offsets = TopicPartitionList::new();
    for (partition, next_offset) in commits {
        // Never commit for a partition this member no longer owns.
        if assignment
            .find_partition(partition.topic(), partition.partition())
            .is_none()
        {
            continue;
        }
        offsets.add_partition_offset(
            partition.topic(),
            partition.partition(),
            Offset::Offset(*next_offset as i64),
        )?;
    }
    if offsets.count() == 0 {
        return Ok(false);
    }
    match consumer.commit(&offsets, mode) {
        Ok(()) => Ok(true),
        // A commit racing a rebalance fails harmlessly: the rows are stored
        // and the next owner rewinds to the range start anyway.
        Err(KafkaError::ConsumerCommit(code)) => {
            tracing::warn!(?code, "offset commit refused");
            Ok(false)
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
    /// How to send each line: JSON as it is, or re-encoded as a
    /// `tidewatch.v1.Event` (a line that does not decode is sent as it is,
    /// for the consumer to dead-letter).
    pub encoding: events::Encoding,
    /// The kind of a line without `schema`, when re-encoding.
    pub kind: EventKind,
}

/// Produces every non-empty line of a JSON-lines file as one message
/// (keyed by `prediction_id`, or by line number without one), in file
/// order: records are handed to librdkafka one by one, which keeps their
/// order within a partition. The file is read one line at a time (a line
/// over 16 MiB stops the replay with [`Error::LineTooLong`]) and at most
/// 10,000 deliveries are awaited at once, so memory does not grow with the
/// file. Returns the number of messages delivered.
pub async fn replay_file(
    connection: &BrokerConnection,
    path: &std::path::Path,
    options: &ReplayOptions,
) -> Result<u64, Error> {
    let mut lines = LineReader::open(path, DEFAULT_MAX_LINE_BYTES).await?;
    let producer = idempotent_producer(connection)?;
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    let mut delivered = 0u64;
    let mut index: u64 = 0;
    let mut buffer = Vec::new();
    while let Some(read) = lines.next_line(&mut buffer).await? {
        if read.truncated {
            return Err(Error::LineTooLong {
                path: path.display().to_string(),
                line: read.number + 1,
                length: read.length,
                limit: DEFAULT_MAX_LINE_BYTES,
            });
        }
        if buffer.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let encoded;
        let line = match options.encoding {
            events::Encoding::Json => buffer.as_slice(),
            events::Encoding::Protobuf => match events::decode(&buffer, options.kind) {
                Ok(event) => {
                    encoded = events::protobuf::encode(&event);
                    encoded.as_slice()
                }
                Err(_) => buffer.as_slice(),
            },
        };
        let position = index;
        index += 1;
        if let Some(rate) = options.rate {
            let due = Duration::from_secs_f64(position as f64 / f64::from(rate.max(1)));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        // Key by prediction id when there is one, so a prediction and its
        // actual share a partition (and a consumer, for the join); else by line.
        let key = prediction_id_of(&buffer).unwrap_or_else(|| position.to_string());
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
fn prediction_id_of(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithId {
        prediction_id: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<WithId>(line).ok()?.prediction_id? {
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
