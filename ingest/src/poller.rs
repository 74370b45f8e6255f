//! The consumer's own thread: it polls librdkafka, rewinds every assigned
//! partition to its checkpoint range start, and hands messages and
//! rebalance notes, in the order they happened, to the async loop in
//! [`crate::kafka`] through a bounded channel.
//!
//! ## Why a thread
//! librdkafka runs rebalance and statistics callbacks inside `poll`. The
//! rebalance callback reads the committed offsets from the group
//! coordinator, which blocks for up to [`COMMITTED_TIMEOUT`] per attempt; on
//! a thread of its own that blocks nobody's async work.
//!
//! ## Rewind or nothing
//! On assignment the thread reads the committed offsets of the new
//! partitions, retrying [`COMMITTED_ATTEMPTS`] times. Only when it has them
//! does it assign the partitions, each starting at the start of the range
//! holding its committed offset, and tell the loop ([`Note::Assigned`]).
//! If the offsets cannot be read, nothing is assigned and the loop is told
//! ([`Note::Failed`]): it stops with that error, and the member leaves the
//! group, so its partitions go to a member that can rewind them. A
//! partition is never consumed from a position that was not rewound. The
//! loop also ignores messages of partitions it was not told about, so a
//! message fetched before a revocation cannot recreate a dropped state.
//!
//! ## Revocation waits for the loop
//! A revocation is handed to the loop and the rebalance callback waits
//! (up to [`REVOKE_ACK_DEADLINE`]) for the loop to acknowledge it: the loop
//! handles notes in order, so whatever it was storing for those partitions
//! (a checkpoint, pending labels) is stored before the group can assign
//! them to another member. Past the deadline (the store away longer) the
//! revocation goes on; the new owner may then read a range while the old
//! one still writes it, which partials survive (the longest range wins)
//! and the join's pending labels do not guard against (see
//! [`crate::join`]).
//!
//! ## Bounds
//! The channel holds at most [`CHANNEL_BATCHES`] batches, each of at most
//! [`BATCH_MESSAGES`] messages and [`BATCH_BYTES`] of payload (a batch is
//! closed by the message that reaches the byte bound, so it exceeds it by
//! at most one message): 64 MiB plus 16 messages in all. When the channel
//! is full the thread waits, so librdkafka's own fetch queue
//! (`queued.max.messages.kbytes`, 64 MiB by default) fills and fetching
//! pauses.
//!
//! ## Fault injection (tests)
//! `TIDEWATCH_FAULT_COMMITTED_OFFSETS=N` makes the first `N` reads of
//! committed offsets fail as if the coordinator had timed out. The fault
//! suite uses it; nothing else should.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::engine::range_start_of;
use crate::telemetry::Telemetry;

/// Timeout of one read of committed offsets.
pub const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// Reads of committed offsets tried on an assignment before giving up.
pub const COMMITTED_ATTEMPTS: u32 = 3;
/// Batches waiting in the channel.
pub const CHANNEL_BATCHES: usize = 16;
/// Messages per batch.
pub const BATCH_MESSAGES: usize = 512;
/// Payload bytes per batch (reached by its last message).
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// One message as the loop needs it (its payload is in its [`Batch`]).
#[derive(Debug)]
pub struct Record {
    /// Index of the topic in the subscription list.
    pub topic: usize,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Where the payload is in the batch's bytes (empty for a message
    /// without one).
    payload: std::ops::Range<usize>,
    /// The message's timestamp (ms), if it has one.
    pub timestamp: Option<i64>,
}

/// Messages in the order read, their payloads copied out of librdkafka
/// into one buffer (one allocation per batch, not per message).
#[derive(Debug, Default)]
pub struct Batch {
    records: Vec<Record>,
    bytes: Vec<u8>,
}

impl Batch {
    fn new() -> Self {
        Self {
            records: Vec::with_capacity(BATCH_MESSAGES),
            bytes: Vec::new(),
        }
    }

    /// Appends a message.
    pub fn push(
        &mut self,
        topic: usize,
        partition: i32,
        offset: i64,
        payload: &[u8],
        timestamp: Option<i64>,
    ) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.records.push(Record {
            topic,
            partition,
            offset,
            payload: start..self.bytes.len(),
            timestamp,
        });
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no message is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Each message with its payload, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Record, &[u8])> {
        self.records
            .iter()
            .map(|record| (record, &self.bytes[record.payload.clone()]))
    }
}

/// How long a revocation waits for the loop to drop the partitions' state.
pub const REVOKE_ACK_DEADLINE: Duration = Duration::from_secs(30);

/// The loop's acknowledgement that it dropped revoked partitions.
#[derive(Debug)]
pub struct RevokeAck(std::sync::mpsc::SyncSender<()>);

impl RevokeAck {
    /// Tells the polling thread the partitions' state is gone.
    pub fn done(self) {
        let _ = self.0.send(());
    }
}

/// What the thread tells the loop, in order.
#[derive(Debug)]
pub enum Note {
    /// Messages, in the order read.
    Records(Batch),
    /// Partitions assigned, each rewound (topic index, partition).
    Assigned(Vec<(usize, i32)>),
    /// Partitions revoked (topic index, partition): drop their state,
    /// commit nothing for them, then acknowledge (the thread waits for it,
    /// up to [`REVOKE_ACK_DEADLINE`], before it lets librdkafka go on).
    Revoked(Vec<(usize, i32)>, RevokeAck),
    /// The thread cannot go on; the loop stops with this error.
    Failed(String),
}

/// Callbacks of the polling thread's consumer.
pub struct PollContext {
    topics: Vec<String>,
    range_size: u64,
    telemetry: Telemetry,
    notes: mpsc::Sender<Note>,
    injected_failures: AtomicU32,
    failed: AtomicBool,
    /// The last poll found nothing to read (and nothing was left to hand over).
    caught_up: AtomicBool,
    /// librdkafka reported a broker transport failure, and neither a
    /// message nor statistics with a broker up came since.
    brokers_down: AtomicBool,
    /// Partitions (topic index, partition) that the last statistics showed
    /// fetched to their end: nothing is left to read there for now.
    idle_partitions: std::sync::Mutex<std::collections::HashSet<(usize, i32)>>,
    /// Set when the consumer is being closed: rebalance callbacks then only
    /// let librdkafka drop the partitions (see `kafka::close_within`).
    closing: AtomicBool,
}

impl PollContext {
    /// Callbacks for a consumer of `topics` (in subscription order).
    pub fn new(
        topics: Vec<String>,
        range_size: u64,
        telemetry: Telemetry,
        notes: mpsc::Sender<Note>,
    ) -> Self {
        let injected = std::env::var("TIDEWATCH_FAULT_COMMITTED_OFFSETS")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        Self {
            topics,
            range_size,
            telemetry,
            notes,
            injected_failures: AtomicU32::new(injected),
            failed: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            brokers_down: AtomicBool::new(false),
            idle_partitions: std::sync::Mutex::new(std::collections::HashSet::new()),
            closing: AtomicBool::new(false),
        }
    }

    /// Whether the last statistics showed partition `partition` of the
    /// `topic`-th topic fetched to its end (its high watermark fetched and
    /// handed over). A partition not in the statistics yet is not idle.
    pub fn partition_idle(&self, topic: usize, partition: i32) -> bool {
        self.idle_partitions
            .lock()
            .is_ok_and(|idle| idle.contains(&(topic, partition)))
    }

    /// The consumer is about to be closed: from now on rebalance callbacks
    /// read no offsets and tell the loop nothing.
    pub fn start_closing(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Whether the last poll found nothing new while the brokers were
    /// reachable: the member has read all there is (for now). Idle-closing
    /// windows needs this, not just a quiet channel: a loop held up by a
    /// store outage reads nothing either, and neither does a consumer
    /// whose broker is gone (its polls come back empty, the backlog grows
    /// behind the outage).
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed) && !self.brokers_down.load(Ordering::Relaxed)
    }

    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|name| name == topic)
    }

    fn committed(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &TopicPartitionList,
    ) -> Result<TopicPartitionList, KafkaError> {
        let mut last = None;
        for attempt in 1..=COMMITTED_ATTEMPTS {
            let injected = self
                .injected_failures
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            let result = if injected {
                std::thread::sleep(Duration::from_millis(200));
                Err(KafkaError::MetadataFetch(
                    rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                ))
            } else {
                consumer.committed_offsets(partitions.clone(), COMMITTED_TIMEOUT)
            };
            match result {
                Ok(committed) => return Ok(committed),
                Err(error) => {
                    tracing::warn!(%error, attempt, injected, "cannot read committed offsets on assignment");
                    last = Some(error);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn send(&self, note: Note) {
        // The loop has stopped when this fails; nothing is left to tell.
        let _ = self.notes.blocking_send(note);
    }
}

impl ClientContext for PollContext {
    /// Broker outages are expected and handled (librdkafka reconnects; the
    /// loop waits, `/ready` says so): a warning, not an error.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode;
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => {
                self.brokers_down.store(true, Ordering::Relaxed);
                tracing::warn!(
                    reason,
                    "broker unreachable; consumption waits while librdkafka reconnects"
                )
            }
            _ => tracing::error!(%error, reason, "librdkafka error"),
        }
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): the lag
    /// per topic, summed over the partitions this member fetches, and
    /// whether any broker is up.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (name, topic) in &statistics.topics {
            for p in topic.partitions.values().filter(|p| p.partition >= 0) {
                tracing::debug!(
                    topic = name,
                    partition = p.partition,
                    fetch_state = p.fetch_state,
                    next_offset = p.next_offset,
                    app_offset = p.app_offset,
                    lo_offset = p.lo_offset,
                    hi_offset = p.hi_offset,
                    consumer_lag = p.consumer_lag,
                    leader = p.leader,
                    "partition statistics"
                );
            }
            let lag: i64 = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(|p| p.consumer_lag)
                .sum();
            self.telemetry.set_lag(name, lag);
            if let (Some(topic_index), Ok(mut idle)) =
                (self.topic_index(name), self.idle_partitions.lock())
            {
                for p in topic.partitions.values().filter(|p| p.partition >= 0) {
                    if fetched_to_the_end(p) {
                        idle.insert((topic_index, p.partition));
                    } else {
                        idle.remove(&(topic_index, p.partition));
                    }
                }
            }
        }
        let up = statistics
            .brokers
            .values()
            .filter(|broker| broker.source != "internal" && broker.source != "logical")
            .any(|broker| broker.state == "UP");
        self.telemetry.set_brokers_up(up);
        self.brokers_down.store(!up, Ordering::Relaxed);
    }
}

/// Whether a partition's statistics show nothing left to fetch: actively
/// fetched, its high watermark known and reached, nothing waiting in the
/// fetch queue.
fn fetched_to_the_end(partition: &rdkafka::statistics::Partition) -> bool {
    partition.fetch_state == "active"
        && partition.hi_offset >= 0
        && partition.next_offset >= partition.hi_offset
        && partition.fetchq_cnt == 0
}

impl ConsumerContext for PollContext {
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
        if self.closing.load(Ordering::Relaxed) {
            // Closing: drop what librdkafka revokes, assign nothing, tell
            // nobody (the loop is gone); no blocking call.
            if error == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                let _ = if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                };
            }
            return;
        }
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if self.failed.load(Ordering::Relaxed) {
                    return;
                }
                let committed = match self.committed(consumer, partitions) {
                    Ok(committed) => committed,
                    Err(error) => {
                        // Assign nothing: a partition that was not rewound is never read.
                        self.failed.store(true, Ordering::Relaxed);
                        self.send(Note::Failed(format!(
                            "cannot read the committed offsets of {} assigned partitions after {COMMITTED_ATTEMPTS} attempts ({error}); leaving the group so another member can rewind them",
                            partitions.count()
                        )));
                        return;
                    }
                };
                let mut assigned = Vec::with_capacity(partitions.count());
                for element in committed.elements() {
                    let (committed_offset, first) = match element.offset() {
                        Offset::Offset(offset) => {
                            let rewind =
                                range_start_of(offset.max(0) as u64, self.range_size) as i64;
                            let _ = partitions.set_partition_offset(
                                element.topic(),
                                element.partition(),
                                Offset::Offset(rewind),
                            );
                            (Some(offset), Some(rewind))
                        }
                        // Nothing committed: `auto.offset.reset` decides (earliest by default).
                        _ => (None, None),
                    };
                    tracing::info!(
                        topic = element.topic(),
                        partition = element.partition(),
                        committed = ?committed_offset,
                        rewind = ?first,
                        "partition assigned"
                    );
                    if let Some(topic) = self.topic_index(element.topic()) {
                        assigned.push((topic, element.partition()));
                    }
                }
                // Told before any message of these partitions can be read.
                self.send(Note::Assigned(assigned));
                let result = if cooperative {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                };
                if let Err(error) = result {
                    self.failed.store(true, Ordering::Relaxed);
                    self.send(Note::Failed(format!(
                        "assigning partitions failed: {error}"
                    )));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = partitions
                    .elements()
                    .iter()
                    .filter_map(|element| {
                        self.topic_index(element.topic())
                            .map(|topic| (topic, element.partition()))
                    })
                    .collect();
                // Wait until the loop has finished what it was doing (a
                // checkpoint in flight writes these partitions' rows) and
                // dropped their state: only then may the group hand them to
                // another member, which reads what this one stored.
                let (ack, acknowledged) = std::sync::mpsc::sync_channel(1);
                self.send(Note::Revoked(revoked, RevokeAck(ack)));
                if acknowledged.recv_timeout(REVOKE_ACK_DEADLINE).is_err() {
                    tracing::warn!(
                        deadline = ?REVOKE_ACK_DEADLINE,
                        "the loop did not drop revoked partitions in time (a store outage?); revoking anyway"
                    );
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

/// The polling thread's handle: stop it, then join it.
pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    /// Starts polling `consumer` on a thread of its own; notes go to the
    /// sender held by its context.
    pub fn start(consumer: Arc<BaseConsumer<PollContext>>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("tidewatch-kafka-poll".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || poll_until_stopped(&consumer, &stop)
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Asks the thread to stop and waits for it (blocking: call it from
    /// the blocking pool).
    pub fn stop_and_join(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn poll_until_stopped(consumer: &BaseConsumer<PollContext>, stop: &AtomicBool) {
    let context = consumer.context();
    let mut batch = Batch::new();
    while !stop.load(Ordering::Relaxed) && !context.failed.load(Ordering::Relaxed) {
        // Block briefly only when there is nothing to hand over.
        let timeout = if batch.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
                context.caught_up.store(false, Ordering::Relaxed);
                context.brokers_down.store(false, Ordering::Relaxed);
                let Some(topic) = context.topic_index(message.topic()) else {
                    continue;
                };
                batch.push(
                    topic,
                    message.partition(),
                    message.offset(),
                    message.payload().unwrap_or_default(),
                    message.timestamp().to_millis(),
                );
                if batch.len() < BATCH_MESSAGES && batch.bytes() < BATCH_BYTES {
                    continue;
                }
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "kafka poll error");
            }
            None => {
                if batch.is_empty() {
                    context.caught_up.store(true, Ordering::Relaxed);
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let records = std::mem::replace(&mut batch, Batch::new());
        if context.notes.blocking_send(Note::Records(records)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn a_consumer_whose_broker_is_gone_is_not_caught_up() {
        let (notes, _receiver) = mpsc::channel(1);
        let context = PollContext::new(vec!["t".into()], 100, Telemetry::default(), notes);
        context.caught_up.store(true, Ordering::Relaxed);
        assert!(context.is_caught_up());
        // Empty polls during an outage look like the end of the topic.
        context.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert!(!context.is_caught_up());
        // Statistics with a broker up, or a message read, clear it.
        context.brokers_down.store(false, Ordering::Relaxed);
        assert!(context.is_caught_up());
    }

    fn partition(
        fetch_state: &str,
        next_offset: i64,
        hi_offset: i64,
        queued: i64,
    ) -> rdkafka::statistics::Partition {
        rdkafka::statistics::Partition {
            partition: 0,
            broker: 1,
            leader: 1,
            desired: true,
            unknown: false,
            msgq_cnt: 0,
            msgq_bytes: 0,
            xmit_msgq_cnt: 0,
            xmit_msgq_bytes: 0,
            fetchq_cnt: queued,
            fetchq_size: 0,
            fetch_state: fetch_state.into(),
            query_offset: -1,
            next_offset,
            app_offset: -1001,
            stored_offset: -1001,
            committed_offset: -1001,
            eof_offset: -1001,
            lo_offset: 0,
            hi_offset,
            ls_offset: hi_offset,
            consumer_lag: -1,
            consumer_lag_stored: -1,
            txmsgs: 0,
            txbytes: 0,
            rxmsgs: 0,
            rxbytes: 0,
            msgs: 0,
            rx_ver_drops: 0,
            msgs_inflight: 0,
            next_ack_seq: 0,
            next_err_seq: 0,
            acked_msgid: 0,
        }
    }

    #[test]
    fn a_partition_is_idle_only_once_fetched_to_its_end() {
        assert!(fetched_to_the_end(&partition("active", 500, 500, 0)));
        // Messages left on the broker, or fetched and not handed over yet.
        assert!(!fetched_to_the_end(&partition("active", 400, 500, 0)));
        assert!(!fetched_to_the_end(&partition("active", 500, 500, 3)));
        // Not fetching yet (its offset being looked up), or no watermark known.
        assert!(!fetched_to_the_end(&partition("offset-query", 500, 500, 0)));
        assert!(!fetched_to_the_end(&partition("active", -1001, -1, 0)));
    }
}
