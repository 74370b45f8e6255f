//! Where undecodable payloads go: a Kafka topic (production) or a JSON-lines
//! file (file replay, the demo). Each dead letter carries the original bytes,
//! the reason, and where it came from. A dead letter is written before the
//! offset after it is committed, so none is lost.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::Error;

/// Header carrying the reason a payload was rejected.
pub const REASON_HEADER: &str = "tidewatch-error";
/// Header carrying the topic the payload was read from.
pub const SOURCE_TOPIC_HEADER: &str = "tidewatch-source-topic";
/// Header carrying the partition the payload was read from.
pub const SOURCE_PARTITION_HEADER: &str = "tidewatch-source-partition";
/// Header carrying the offset the payload was read at.
pub const SOURCE_OFFSET_HEADER: &str = "tidewatch-source-offset";

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

/// A dead-letter destination.
pub enum DeadLetterSink {
    /// A Kafka topic; reason and origin go in headers.
    Kafka {
        /// Producer used for dead letters.
        producer: FutureProducer,
        /// Dead-letter topic.
        topic: String,
    },
    /// A JSON-lines file: `{"source", "offset", "reason", "payload"}`.
    File {
        /// Where the file is.
        path: PathBuf,
        /// The open file.
        writer: std::io::BufWriter<std::fs::File>,
    },
}

impl DeadLetterSink {
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

    /// Writes one dead letter, retrying a Kafka send up to five times.
    pub async fn send(&mut self, letter: DeadLetter<'_>) -> Result<(), Error> {
        match self {
            DeadLetterSink::Kafka { producer, topic } => {
                let partition = letter.source_partition.to_string();
                let offset = letter.source_offset.to_string();
                let mut attempt: u32 = 0;
                loop {
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: REASON_HEADER,
                            value: Some(letter.reason),
                        })
                        .insert(Header {
                            key: SOURCE_TOPIC_HEADER,
                            value: Some(letter.source_topic),
                        })
                        .insert(Header {
                            key: SOURCE_PARTITION_HEADER,
                            value: Some(&partition),
                        })
                        .insert(Header {
                            key: SOURCE_OFFSET_HEADER,
                            value: Some(&offset),
                        });
                    let record = FutureRecord::<(), [u8]>::to(topic)
                        .payload(letter.payload)
                        .headers(headers);
                    match producer.send(record, Duration::from_secs(5)).await {
                        Ok(_) => return Ok(()),
                        Err((error, _)) if attempt < 5 => {
                            attempt += 1;
                            tracing::warn!(%error, attempt, "dead-letter send failed, retrying");
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt)))
                                .await;
                        }
                        Err((error, _)) => return Err(Error::DeadLetter(error.to_string())),
                    }
                }
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
}
