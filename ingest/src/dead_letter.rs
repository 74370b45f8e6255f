//! Where undecodable payloads go: a Kafka topic (production) or a JSON-lines
//! file (file replay, the demo). Each dead letter carries the original bytes
//! (up to a bound), the reason, and where it came from.
//!
//! ## Guarantee
//! A dead letter is handed to the producer as soon as its payload is
//! refused ([`DeadLetterSink::enqueue`]), without waiting for the broker, and
//! every one is acknowledged before an offset after it is committed
//! ([`DeadLetterSink::flush`], which the consumer calls before each commit).
//! None is lost, and none stops the pipeline:
//! - a payload larger than `max_payload_bytes` is cut to that size (headers
//!   say it was, and how long the original was); if the broker still refuses
//!   the message as too large, the payload is halved until it fits, down to
//!   an empty payload with the reason and the source coordinates;
//! - any other failure (broker down, topic missing) is retried with a
//!   backoff growing to 5 s, for as long as it takes: the consumer waits,
//!   which is visible in the logs and in `tidewatch_dead_letter_failures_total`.
//!
//! ## Bounds
//! At most [`MAX_IN_FLIGHT`] dead letters wait for their acknowledgement;
//! the next one waits for the oldest. Each holds at most
//! `max_payload_bytes` of payload and [`MAX_REASON_BYTES`] of reason.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::telemetry::Telemetry;
use crate::Error;

/// Header carrying the reason a payload was rejected.
pub const REASON_HEADER: &str = "tidewatch-error";
/// Header carrying the topic the payload was read from.
pub const SOURCE_TOPIC_HEADER: &str = "tidewatch-source-topic";
/// Header carrying the partition the payload was read from.
pub const SOURCE_PARTITION_HEADER: &str = "tidewatch-source-partition";
/// Header carrying the offset the payload was read at.
pub const SOURCE_OFFSET_HEADER: &str = "tidewatch-source-offset";
/// Header carrying the original payload's length in bytes, present when the
/// payload was cut.
pub const ORIGINAL_SIZE_HEADER: &str = "tidewatch-original-size";

/// Default bound on the payload bytes a dead letter keeps (librdkafka's and
/// Kafka's default message limit is 1 MB).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Bound on the reason's length in bytes (cut at a character boundary).
pub const MAX_REASON_BYTES: usize = 1024;
/// Dead letters awaiting their acknowledgement at once.
pub const MAX_IN_FLIGHT: usize = 10_000;

/// A rejected payload.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter<'a> {
    /// Topic (or file name) it came from.
    pub source_topic: &'a str,
    /// Partition it came from (0 for files).
    pub source_partition: i32,
    /// Offset (or line number) it came from.
    pub source_offset: u64,
    /// The payload as read.
    pub payload: &'a [u8],
    /// Why it was rejected.
    pub reason: &'a str,
}

/// A dead letter as it is sent: owned, bounded, ready to be sent again.
#[derive(Debug, Clone)]
struct OwnedLetter {
    source_topic: String,
    source_partition: i32,
    source_offset: u64,
    payload: Vec<u8>,
    original_size: usize,
    reason: String,
}

impl OwnedLetter {
    fn new(letter: &DeadLetter<'_>, max_payload_bytes: usize) -> Self {
        let kept = letter.payload.len().min(max_payload_bytes);
        Self {
            source_topic: letter.source_topic.to_owned(),
            source_partition: letter.source_partition,
            source_offset: letter.source_offset,
            payload: letter.payload[..kept].to_vec(),
            original_size: letter.payload.len(),
            reason: truncate_at_char(letter.reason, MAX_REASON_BYTES).to_owned(),
        }
    }

    fn headers(&self) -> OwnedHeaders {
        let partition = self.source_partition.to_string();
        let offset = self.source_offset.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: REASON_HEADER,
                value: Some(&self.reason),
            })
            .insert(Header {
                key: SOURCE_TOPIC_HEADER,
                value: Some(&self.source_topic),
            })
            .insert(Header {
                key: SOURCE_PARTITION_HEADER,
                value: Some(&partition),
            })
            .insert(Header {
                key: SOURCE_OFFSET_HEADER,
                value: Some(&offset),
            });
        if self.payload.len() < self.original_size {
            let size = self.original_size.to_string();
            headers = headers.insert(Header {
                key: ORIGINAL_SIZE_HEADER,
                value: Some(&size),
            });
        }
        headers
    }

    /// Halves the payload after a "message too large" refusal; false when
    /// nothing is left to cut.
    fn shrink(&mut self) -> bool {
        if self.payload.is_empty() {
            return false;
        }
        self.payload.truncate(self.payload.len() / 2);
        true
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn truncate_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn too_large(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    )
}

/// The Kafka destination: a producer and the letters it has not confirmed.
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
    max_payload_bytes: usize,
    in_flight: VecDeque<(DeliveryFuture, OwnedLetter)>,
    telemetry: Telemetry,
}

impl KafkaDeadLetters {
    /// Hands `letter` to the producer once.
    fn send(&self, letter: &OwnedLetter) -> Result<DeliveryFuture, KafkaError> {
        let record = FutureRecord::<(), [u8]>::to(&self.topic)
            .payload(&letter.payload)
            .headers(letter.headers());
        self.producer
            .send_result(record)
            .map_err(|(error, _)| error)
    }

    /// Hands `letter` to the producer; on a local refusal (queue full, too
    /// large) waits and retries as [`DeadLetterSink::flush`] does.
    async fn enqueue(&mut self, mut letter: OwnedLetter) {
        let mut failures: u32 = 0;
        loop {
            match self.send(&letter) {
                Ok(delivery) => {
                    self.in_flight.push_back((delivery, letter));
                    break;
                }
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                    if !self.in_flight.is_empty() =>
                {
                    self.confirm_oldest().await;
                }
                Err(error) if too_large(&error) && letter.shrink() => {}
                Err(error) => {
                    failures += 1;
                    self.retry_later(&error, failures).await;
                }
            }
        }
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            self.confirm_oldest().await;
        }
    }

    /// Waits until the oldest letter in flight is acknowledged, sending it
    /// again (smaller if it was too large) until it is. The letter leaves
    /// the queue only once acknowledged, so a wait cut short loses nothing.
    async fn confirm_oldest(&mut self) {
        let mut failures: u32 = 0;
        loop {
            let Some((delivery, _)) = self.in_flight.front_mut() else {
                return;
            };
            let error = match delivery.await {
                Ok(Ok(_)) => {
                    self.in_flight.pop_front();
                    return;
                }
                Ok(Err((error, _))) => error,
                Err(_) => KafkaError::Canceled,
            };
            let mut error = Some(error);
            while let Some(failed) = error.take() {
                let (_, letter) = self
                    .in_flight
                    .front_mut()
                    .expect("the front is still there");
                if !(too_large(&failed) && letter.shrink()) {
                    failures += 1;
                    self.retry_later(&failed, failures).await;
                }
                let (_, letter) = self.in_flight.front().expect("the front is still there");
                match self.send(letter) {
                    Ok(delivery) => self.in_flight.front_mut().expect("the front").0 = delivery,
                    Err(refused) => error = Some(refused),
                }
            }
        }
    }

    async fn retry_later(&self, error: &KafkaError, failures: u32) {
        self.telemetry.dead_letter_failed();
        let delay =
            Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5));
        tracing::warn!(%error, failures, ?delay, topic = %self.topic, "dead letter not written, retrying (the consumer waits)");
        tokio::time::sleep(delay).await;
    }
}

/// A dead-letter destination.
pub enum DeadLetterSink {
    /// A Kafka topic; reason and origin go in headers.
    Kafka(Box<KafkaDeadLetters>),
    /// A JSON-lines file: `{"source", "offset", "reason", "payload"}`.
    File {
        /// Where the file is.
        path: PathBuf,
        /// The open file.
        writer: std::io::BufWriter<std::fs::File>,
    },
}

impl DeadLetterSink {
    /// A Kafka sink writing to `topic`, keeping at most `max_payload_bytes`
    /// of each payload.
    pub fn kafka(
        producer: FutureProducer,
        topic: String,
        max_payload_bytes: usize,
        telemetry: Telemetry,
    ) -> Self {
        DeadLetterSink::Kafka(Box::new(KafkaDeadLetters {
            producer,
            topic,
            max_payload_bytes,
            in_flight: VecDeque::new(),
            telemetry,
        }))
    }

    /// A file sink appending to `path`.
    pub fn file(path: &Path) -> Result<Self, Error> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::Io(path.display().to_string(), e))?;
        Ok(DeadLetterSink::File {
            path: path.to_owned(),
            writer: std::io::BufWriter::new(file),
        })
    }

    /// Hands one dead letter over. For Kafka it is on its way, not yet
    /// acknowledged: call [`DeadLetterSink::flush`] before committing an
    /// offset after it. A file sink writes it at once.
    pub async fn enqueue(&mut self, letter: DeadLetter<'_>) -> Result<(), Error> {
        match self {
            DeadLetterSink::Kafka(kafka) => {
                let owned = OwnedLetter::new(&letter, kafka.max_payload_bytes);
                kafka.enqueue(owned).await;
                Ok(())
            }
            DeadLetterSink::File { path, writer } => {
                let line = serde_json::json!({
                    "source": letter.source_topic,
                    "partition": letter.source_partition,
                    "offset": letter.source_offset,
                    "reason": letter.reason,
                    "payload": String::from_utf8_lossy(letter.payload),
                });
                writeln!(writer, "{line}")
                    .and_then(|_| writer.flush())
                    .map_err(|e| Error::Io(path.display().to_string(), e))
            }
        }
    }

    /// Waits until every dead letter handed over is acknowledged (retrying
    /// as the module docs say).
    pub async fn flush(&mut self) {
        if let DeadLetterSink::Kafka(kafka) = self {
            while !kafka.in_flight.is_empty() {
                kafka.confirm_oldest().await;
            }
        }
    }

    /// Dead letters handed over and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        match self {
            DeadLetterSink::Kafka(kafka) => kafka.in_flight.len(),
            DeadLetterSink::File { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_keeps_at_most_the_bound_and_says_what_it_cut() {
        let payload = vec![b'x'; 5_000_000];
        let reason = "é".repeat(2_000);
        let letter = OwnedLetter::new(
            &DeadLetter {
                source_topic: "t",
                source_partition: 3,
                source_offset: 42,
                payload: &payload,
                reason: &reason,
            },
            DEFAULT_MAX_PAYLOAD_BYTES,
        );
        assert_eq!(letter.payload.len(), DEFAULT_MAX_PAYLOAD_BYTES);
        assert_eq!(letter.original_size, 5_000_000);
        assert!(
            letter.reason.len() <= MAX_REASON_BYTES && letter.reason.len() >= MAX_REASON_BYTES - 1
        );
        use rdkafka::message::Headers;
        let headers = letter.headers();
        let size = headers
            .iter()
            .find(|h| h.key == ORIGINAL_SIZE_HEADER)
            .and_then(|h| h.value)
            .expect("the original size header");
        assert_eq!(size, b"5000000");
        let mut letter = letter;
        let mut halvings = 0;
        while letter.shrink() {
            halvings += 1;
        }
        assert!(letter.payload.is_empty());
        assert_eq!(halvings, 19);
    }

    #[tokio::test]
    async fn a_dead_letter_that_cannot_be_written_holds_the_consumer_and_is_counted() {
        // Nothing listens on port 1: every delivery fails after 200 ms.
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "200")
            .create()
            .unwrap();
        let telemetry = Telemetry::default();
        let mut sink = DeadLetterSink::kafka(
            producer,
            "dead".into(),
            DEFAULT_MAX_PAYLOAD_BYTES,
            telemetry.clone(),
        );
        sink.enqueue(DeadLetter {
            source_topic: "t",
            source_partition: 0,
            source_offset: 7,
            payload: b"{oops",
            reason: "invalid event json",
        })
        .await
        .unwrap();
        let flushed = tokio::time::timeout(Duration::from_secs(2), sink.flush()).await;
        assert!(
            flushed.is_err(),
            "flush must wait while the letter cannot be written"
        );
        assert_eq!(
            sink.in_flight(),
            1,
            "the letter is kept for the next attempt"
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &telemetry.registry()).unwrap();
        let failures: f64 = text
            .lines()
            .find(|line| line.starts_with("tidewatch_dead_letter_failures_total "))
            .and_then(|line| line.split_whitespace().last()?.parse().ok())
            .unwrap();
        assert!(failures >= 1.0, "{text}");
    }
}
