//! Replaying a JSON-lines file through the engine, without Kafka: the
//! embedded demo and offline backfills. The file is one source
//! (`file:NAME`); a line's offset is its line number, so re-running the same
//! file rewrites the same checkpoint rows (idempotent, like Kafka). The file
//! is read one line at a time ([`crate::lines`]); a line over 16 MiB is
//! dead-lettered, cut, with that reason.

use std::path::Path;

use events::EventKind;

use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::driver::{Driver, Finalized, SourceMessage};
use crate::engine::Ingested;
use crate::lines::{LineReader, DEFAULT_MAX_LINE_BYTES};
use crate::Error;

/// What a file replay did.
#[derive(Debug, Default)]
pub struct FileReport {
    /// Lines read (blank lines excluded).
    pub lines: u64,
    /// Lines sent to the dead-letter file.
    pub dead_lettered: u64,
    /// Every window finalized, in order.
    pub finalized: Finalized,
}

/// Replays `path` (payloads without `schema` are read as `default_kind`)
/// and finalizes every window at the end.
pub async fn replay_into(
    driver: &mut Driver,
    path: &Path,
    default_kind: EventKind,
    dead_letters: &mut DeadLetterSink,
) -> Result<FileReport, Error> {
    let mut lines = LineReader::open(path, DEFAULT_MAX_LINE_BYTES).await?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let source = format!("file:{name}");
    let mut report = FileReport::default();
    let mut line = Vec::new();
    while let Some(read) = lines.next_line(&mut line).await? {
        if line.iter().all(u8::is_ascii_whitespace) && !read.truncated {
            continue;
        }
        report.lines += 1;
        let offset = read.number;
        if read.truncated {
            // Cut by the line reader: never decoded, dead-lettered as it is.
            let reason = format!(
                "line of {} bytes, longer than the {DEFAULT_MAX_LINE_BYTES}-byte limit (first bytes kept)",
                read.length
            );
            report.dead_lettered += 1;
            dead_letters
                .enqueue(DeadLetter {
                    source_topic: &source,
                    source_partition: 0,
                    source_offset: offset,
                    payload: &line,
                    reason: &reason,
                })
                .await?;
        } else {
            let message = SourceMessage {
                source: &source,
                topic: &source,
                partition: 0,
                offset,
                payload: &line,
                format: default_kind.into(),
            };
            if let Ingested::Malformed(_) = driver.ingest(message, dead_letters).await? {
                report.dead_lettered += 1;
            }
        }
        if driver.needs_checkpoint() {
            let (_, finalized) = driver.finalize_closed().await?;
            report.finalized.windows.extend(finalized.windows);
        }
    }
    driver.close_all();
    let (_, finalized) = driver.finalize_closed().await?;
    report.finalized.windows.extend(finalized.windows);
    Ok(report)
}
