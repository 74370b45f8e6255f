//! Reading a JSON-lines file one line at a time, in bounded memory: the
//! file replay and `tidewatch replay` hold one line, never the file.
//!
//! A line longer than the reader's limit is not buffered whole: its first
//! `limit` bytes are kept, the rest is skipped, and the line is marked
//! [`Line::truncated`] (the file replay dead-letters it with that reason).

use std::path::Path;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::Error;

/// Longest line kept whole by default: 16 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// One line read by [`LineReader::next_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// 0-based line number in the file.
    pub number: u64,
    /// The line's length in bytes (without the newline), even if truncated.
    pub length: u64,
    /// True when only the first `limit` bytes were kept.
    pub truncated: bool,
}

/// Reads a file line by line (see the module docs).
pub struct LineReader {
    reader: BufReader<tokio::fs::File>,
    path: String,
    limit: usize,
    next_number: u64,
}

impl LineReader {
    /// Opens `path`; lines longer than `limit` bytes are truncated.
    pub async fn open(path: &Path, limit: usize) -> Result<Self, Error> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::Io(path.display().to_string(), e))?;
        Ok(Self {
            reader: BufReader::with_capacity(256 * 1024, file),
            path: path.display().to_string(),
            limit,
            next_number: 0,
        })
    }

    /// Reads the next line into `buffer` (cleared first, without its
    /// newline); `None` at the end of the file.
    pub async fn next_line(&mut self, buffer: &mut Vec<u8>) -> Result<Option<Line>, Error> {
        buffer.clear();
        let mut length: u64 = 0;
        let mut saw_any = false;
        loop {
            let available = self
                .reader
                .fill_buf()
                .await
                .map_err(|e| Error::Io(self.path.clone(), e))?;
            if available.is_empty() {
                if !saw_any {
                    return Ok(None);
                }
                break;
            }
            saw_any = true;
            let (chunk, consumed, done) = match available.iter().position(|b| *b == b'\n') {
                Some(at) => (&available[..at], at + 1, true),
                None => (available, available.len(), false),
            };
            length += chunk.len() as u64;
            let room = self.limit.saturating_sub(buffer.len());
            buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.reader.consume(consumed);
            if done {
                break;
            }
        }
        if buffer.last() == Some(&b'\r') && length as usize == buffer.len() {
            buffer.pop();
            length -= 1;
        }
        let number = self.next_number;
        self.next_number += 1;
        Ok(Some(Line {
            number,
            length,
            truncated: length > buffer.len() as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_one_at_a_time_and_long_ones_cut() {
        let directory = std::env::temp_dir().join(format!("tw-lines-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("in.jsonl");
        let long = "x".repeat(100_000);
        std::fs::write(&path, format!("a\r\n\n{long}\nlast")).unwrap();
        let mut reader = LineReader::open(&path, 1_000).await.unwrap();
        let mut buffer = Vec::new();
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line(&mut buffer).await.unwrap() {
            lines.push((line, String::from_utf8(buffer.clone()).unwrap()));
        }
        std::fs::remove_dir_all(&directory).unwrap();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].1, "a");
        assert_eq!(lines[1].1, "");
        assert_eq!(
            lines[2].0,
            Line {
                number: 2,
                length: 100_000,
                truncated: true
            }
        );
        assert_eq!(lines[2].1.len(), 1_000);
        assert_eq!(lines[3].1, "last");
        assert!(!lines[3].0.truncated);
    }
}
