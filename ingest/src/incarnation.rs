//! Telling a partition whose offsets were reused from the one read before.
//!
//! Partials are keyed by source and offset range, and a range's rows are
//! replaced by rows with a larger end offset. When a topic is deleted and
//! recreated, or a broker comes back without its data, offsets start again
//! at 0: the new messages would fall into the old ranges and silently
//! replace (or be replaced by) rows of events that are gone, corrupting
//! stored windows.
//!
//! So the first message read in each range of each partition is
//! fingerprinted (offset, and a hash of its timestamp and payload) and
//! stored in `range_fingerprints` before the range's partials. Whenever a
//! partition starts reading a range (after an assignment, on crossing into
//! the next range, or when offsets go backwards without one), the first
//! message is compared with the fingerprint stored for that range: a
//! message at the same offset with a different fingerprint means the
//! offsets were reused, and the partition gets a new *incarnation*, a new
//! source name (`topic/partition#2`, …) and fresh engine state. Partials of
//! different incarnations never share a key, so nothing stored is
//! replaced, and a window holds the events of both.
//!
//! The comparison needs the same first offset; after retention deleted the
//! head of a range the first offset moves and the range is taken as the
//! same incarnation (every read of a range starts at its start, so this is
//! the only case where they differ).

use std::collections::{BTreeMap, HashMap};

use store::{RangeFingerprint, Store};

use crate::driver::retry_store;
use crate::engine::range_start_of;
use crate::telemetry::Telemetry;
use crate::Error;

/// Ranges per partition whose first message is remembered in memory.
const REMEMBERED_RANGES: usize = 64;

/// The hash of a message for [`RangeFingerprint::fingerprint`].
pub fn fingerprint(timestamp: Option<i64>, payload: &[u8]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&timestamp.unwrap_or(i64::MIN).to_le_bytes());
    hasher.update(payload);
    hasher.digest()
}

/// A partition of a topic: what Kafka assigns, and commits offsets for.
/// Displayed `topic/partition`, its name in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    topic: std::sync::Arc<str>,
    partition: i32,
}

impl PartitionId {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<std::sync::Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition's number.
    pub fn partition(&self) -> i32 {
        self.partition
    }
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One incarnation of a partition: what the engine and the store call a
/// source. Displayed `topic/partition` for the first incarnation and
/// `topic/partition#n` after.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceId {
    partition: PartitionId,
    incarnation: u32,
    /// The displayed name, made once (every message is ingested under it).
    name: std::sync::Arc<str>,
}

impl SourceId {
    /// Incarnation `incarnation` (from 1) of `partition`.
    pub fn new(partition: PartitionId, incarnation: u32) -> Self {
        let incarnation = incarnation.max(1);
        let name = if incarnation == 1 {
            partition.to_string()
        } else {
            format!("{partition}#{incarnation}")
        };
        Self {
            partition,
            incarnation,
            name: name.into(),
        }
    }

    /// The name the engine and the store use (what `Display` shows).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The partition this is an incarnation of.
    pub fn partition(&self) -> &PartitionId {
        &self.partition
    }

    /// The incarnation, from 1.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }
}

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

#[derive(Debug, Default)]
struct PartitionState {
    /// The partition's current incarnation; `None` until looked up in the
    /// store.
    source: Option<SourceId>,
    current_range: Option<u64>,
    last_offset: Option<u64>,
    /// range start → (first offset, fingerprint) read in this process.
    first_read: BTreeMap<u64, (u64, u64)>,
}

/// What [`Incarnations::source_for`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The source to ingest the message under.
    pub source: SourceId,
    /// Set when the partition was found recreated: the previous source,
    /// whose state belongs to events that no longer exist in the topic.
    pub replaced: Option<SourceId>,
}

/// The incarnation of every partition this member reads. See the module docs.
#[derive(Debug)]
pub struct Incarnations {
    range_size: u64,
    partitions: HashMap<PartitionId, PartitionState>,
    /// Fingerprints to store before the next checkpoint.
    unstored: Vec<RangeFingerprint>,
}

impl Incarnations {
    /// No partition known yet.
    pub fn new(range_size: u64) -> Self {
        Self {
            range_size,
            partitions: HashMap::new(),
            unstored: Vec::new(),
        }
    }

    /// Forgets where `partition` was reading (on assignment or revocation):
    /// its next message is checked again.
    pub fn reset_position(&mut self, partition: &PartitionId) {
        if let Some(state) = self.partitions.get_mut(partition) {
            state.current_range = None;
            state.last_offset = None;
        }
    }

    /// The source of `partition` now (before any message: its last known).
    pub fn current_source(&self, partition: &PartitionId) -> SourceId {
        let incarnation = self
            .partitions
            .get(partition)
            .and_then(|state| state.source.as_ref())
            .map_or(1, SourceId::incarnation);
        SourceId::new(partition.clone(), incarnation)
    }

    /// The source of `partition` before any of its messages is read: its
    /// latest incarnation with a stored fingerprint (looked up once and
    /// remembered; 1 when none is stored). Its first message may still find
    /// it replaced ([`Placement::replaced`]).
    pub async fn resolve(
        &mut self,
        store: &Store,
        telemetry: &Telemetry,
        retry_max_delay: std::time::Duration,
        partition: &PartitionId,
    ) -> Result<SourceId, Error> {
        let state = self.partitions.entry(partition.clone()).or_default();
        if let Some(source) = &state.source {
            return Ok(source.clone());
        }
        let name = partition.to_string();
        let latest = retry_store(telemetry, "fingerprints", retry_max_delay, || async {
            Ok(store.latest_incarnation(&name).await?)
        })
        .await?;
        Ok(state
            .source
            .insert(SourceId::new(partition.clone(), latest.unwrap_or(1)))
            .clone())
    }

    /// Where the message at `offset` of `partition` goes (see the module
    /// docs). Store lookups are retried like every store operation.
    /// `fingerprint` hashes the message; it is called only for the first
    /// message of a range.
    pub async fn source_for(
        &mut self,
        store: &Store,
        telemetry: &Telemetry,
        retry_max_delay: std::time::Duration,
        partition: &PartitionId,
        offset: u64,
        fingerprint: impl FnOnce() -> u64,
    ) -> Result<Placement, Error> {
        let range_start = range_start_of(offset, self.range_size);
        // Most messages follow the previous one in its range: nothing to
        // look up, nothing to hash.
        if let Some(state) = self.partitions.get_mut(partition) {
            let next_in_range = state.current_range == Some(range_start)
                && state.last_offset.is_some_and(|last| offset > last);
            if let (Some(source), true) = (&state.source, next_in_range) {
                state.last_offset = Some(offset);
                return Ok(Placement {
                    source: source.clone(),
                    replaced: None,
                });
            }
        }
        let source = self
            .resolve(store, telemetry, retry_max_delay, partition)
            .await?;
        let name = partition.to_string();
        let state = self.partitions.get_mut(partition).expect("resolved above");
        let incarnation = source.incarnation();
        let moved = state.current_range != Some(range_start)
            || state.last_offset.is_some_and(|last| offset <= last);
        state.current_range = Some(range_start);
        state.last_offset = Some(offset);
        if !moved {
            return Ok(Placement {
                source,
                replaced: None,
            });
        }
        let fingerprint = fingerprint();
        let known = match state.first_read.get(&range_start) {
            Some(first) => Some(*first),
            None => retry_store(telemetry, "fingerprints", retry_max_delay, || async {
                Ok(store
                    .range_fingerprint(&name, incarnation, range_start)
                    .await?)
            })
            .await?
            .map(|row| (row.first_offset, row.fingerprint)),
        };
        let reused = known.is_some_and(|(first_offset, known_fingerprint)| {
            first_offset == offset && known_fingerprint != fingerprint
        });
        tracing::debug!(
            partition = %name,
            offset,
            range_start,
            incarnation,
            ?known,
            fingerprint,
            reused,
            "first message of a range checked"
        );
        let state = self.partitions.get_mut(partition).expect("inserted above");
        let mut placement = Placement {
            source,
            replaced: None,
        };
        if reused {
            let latest = retry_store(telemetry, "fingerprints", retry_max_delay, || async {
                Ok(store.latest_incarnation(&name).await?)
            })
            .await?
            .unwrap_or(1);
            let next = latest.max(incarnation) + 1;
            tracing::warn!(
                partition = %name,
                offset,
                incarnation = next,
                "offsets of the partition were reused (topic recreated, or the broker came back \
                 without its data): reading it as a new incarnation, stored windows keep the old events"
            );
            telemetry.partition_recreated();
            let source = SourceId::new(partition.clone(), next);
            state.source = Some(source.clone());
            state.first_read.clear();
            placement = Placement {
                source,
                replaced: Some(placement.source),
            };
        }
        if reused || known.is_none() {
            state.first_read.insert(range_start, (offset, fingerprint));
            if state.first_read.len() > REMEMBERED_RANGES {
                state.first_read.pop_first();
            }
            self.unstored.push(RangeFingerprint {
                partition: name,
                incarnation: state.source.as_ref().expect("set above").incarnation(),
                range_start,
                first_offset: offset,
                fingerprint,
            });
        }
        Ok(placement)
    }

    /// Stores the fingerprints of ranges started since the last call (before
    /// any partial of those ranges is written).
    pub async fn store(
        &mut self,
        store: &Store,
        telemetry: &Telemetry,
        retry_max_delay: std::time::Duration,
    ) -> Result<(), Error> {
        if self.unstored.is_empty() {
            return Ok(());
        }
        let rows = &self.unstored;
        retry_store(telemetry, "fingerprints", retry_max_delay, || async {
            Ok(store.write_range_fingerprints(rows.clone()).await?)
        })
        .await?;
        self.unstored.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> Store {
        Store::in_memory().unwrap()
    }

    const DELAY: std::time::Duration = std::time::Duration::from_millis(10);

    #[tokio::test]
    async fn reused_offsets_get_a_new_incarnation_and_a_restart_keeps_it() {
        let store = store().await;
        let telemetry = Telemetry::default();
        let mut member = Incarnations::new(100);
        let partition = PartitionId::new("t", 0);
        let place = async |member: &mut Incarnations, offset: u64, payload: &str| {
            let placed = member
                .source_for(&store, &telemetry, DELAY, &partition, offset, || {
                    fingerprint(Some(1), payload.as_bytes())
                })
                .await
                .unwrap();
            (
                placed.source.to_string(),
                placed.replaced.map(|source| source.to_string()),
            )
        };
        for offset in 0..250 {
            let placed = place(&mut member, offset, &format!("old {offset}")).await;
            assert_eq!(placed, ("t/0".to_owned(), None));
        }
        // A rewind after an assignment reads the same messages: same source.
        member.reset_position(&partition);
        assert_eq!(place(&mut member, 200, "old 200").await.0, "t/0");
        member.store(&store, &telemetry, DELAY).await.unwrap();
        // The topic is recreated: offset 0 holds another message.
        let placed = place(&mut member, 0, "new 0").await;
        assert_eq!(placed, ("t/0#2".to_owned(), Some("t/0".to_owned())));
        for offset in 1..150 {
            assert_eq!(
                place(&mut member, offset, &format!("new {offset}")).await.0,
                "t/0#2",
                "range 100 of the old incarnation is not compared with the new one"
            );
        }
        member.store(&store, &telemetry, DELAY).await.unwrap();
        // A restarted member starts from the latest incarnation and finds
        // the same first message there.
        let mut restarted = Incarnations::new(100);
        assert_eq!(restarted.current_source(&partition).to_string(), "t/0");
        let placed = place(&mut restarted, 100, "new 100").await;
        assert_eq!(placed, ("t/0#2".to_owned(), None));
        assert_eq!(restarted.current_source(&partition).to_string(), "t/0#2");
    }

    #[test]
    fn source_names() {
        let partition = PartitionId::new("t", 3);
        assert_eq!(partition.to_string(), "t/3");
        assert_eq!(SourceId::new(partition.clone(), 1).to_string(), "t/3");
        assert_eq!(SourceId::new(partition.clone(), 4).to_string(), "t/3#4");
        assert_eq!(SourceId::new(partition.clone(), 4).partition(), &partition);
    }
}
