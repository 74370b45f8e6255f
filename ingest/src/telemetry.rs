//! Metrics about the pipeline itself, for Prometheus (`/metrics`).
//!
//! [`Telemetry`] holds the handles (cheap to clone, shared by the consumer
//! loop and the HTTP server); [`Telemetry::register`] adds them to a
//! `prometheus_client` registry. Labels are low-cardinality by construction:
//! `topic` takes only configured topic names, `reason` a fixed set.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tidewatch_events_consumed_total` | counter | `topic` |
//! | `tidewatch_events_dead_lettered_total` | counter | `topic` |
//! | `tidewatch_events_dropped_total` | counter | `topic`, `reason` (`late`, `unknown_model`, `group_limit`) |
//! | `tidewatch_consumer_lag` | gauge | `topic` (messages, summed over assigned partitions) |
//! | `tidewatch_windows_closed_total` | counter | |
//! | `tidewatch_store_write_seconds` | histogram | `operation` (`checkpoint`, `finalize`) |
//! | `tidewatch_store_failures_total` | counter | `operation` (`checkpoint`, `samples`, `finalize`, `references`, `alerts`, `fingerprints`, `version_events`): failed attempts, each retried |
//! | `tidewatch_store_up` | gauge | 1 while the last store operation succeeded, 0 while one is being retried |
//! | `tidewatch_dead_letter_failures_total` | counter | failed dead-letter sends, each retried |
//! | `tidewatch_brokers_up` | gauge | 1 while librdkafka reports a broker up (from statistics), else 0 |
//! | `tidewatch_partitions_recreated_total` | counter | partitions whose offsets were found reused, read as a new incarnation (see [`crate::incarnation`]) |
//! | `tidewatch_segment_overflow_events_total` | counter | event segment values counted under `key=__other__` on arrival (the model admits no more values of the key in that window) |
//! | `tidewatch_segment_values_folded_total` | counter | `stage` (`range`: an admitted value displaced in a range; `window`: a value a range admitted that the whole window does not), its segment folded into `key=__other__` |
//! | `tidewatch_sample_overflow_total` | counter | sampled predictions and labels left out of the training sample: their offset range held `windows.max_samples_per_range` already |
//! | `tidewatch_consumer_stalled` | gauge | 1 while the consumer has lag but has read nothing for `kafka.stall_after` |
//!
//! [`Health`] turns the same facts into readiness (`/api/v1/ready`): not
//! ready while the store is being retried, no broker is up, the consumer is
//! stalled (lag, nothing read), or one step of the loop (a checkpoint, dead
//! letters waiting for the broker) has waited longer than
//! `kafka.stall_after`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `topic` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TopicLabel {
    /// Topic name.
    pub topic: String,
}

/// `topic` and `reason` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabel {
    /// Topic name.
    pub topic: String,
    /// Why events were dropped.
    pub reason: &'static str,
}

/// Totals of one topic since the process started (see
/// [`Telemetry::topic_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicTotals {
    /// Messages read.
    pub consumed: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Events dropped as late.
    pub late: u64,
    /// Current lag (messages), as last reported.
    pub lag: i64,
}

/// `operation` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OperationLabel {
    /// Which store write.
    pub operation: &'static str,
}

fn store_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Why the pipeline is not ready (see [`Health::problems`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A store operation is failing and being retried; consumption waits.
    StoreUnavailable,
    /// librdkafka reports no broker up.
    BrokersDown,
    /// The consumer has lag but has read nothing for a while.
    ConsumerStalled,
    /// One step of the consumer loop (a checkpoint, dead letters waiting
    /// for the broker, a finalization) has been waiting for longer than
    /// `kafka.stall_after`: nothing is being read meanwhile.
    ConsumerHeldUp,
}

impl Problem {
    /// A short, stable description.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::StoreUnavailable => "store_unavailable",
            Problem::BrokersDown => "brokers_down",
            Problem::ConsumerStalled => "consumer_stalled",
            Problem::ConsumerHeldUp => "consumer_held_up",
        }
    }
}

/// The pipeline's health as last observed: the gauges `/metrics` shows,
/// read back for readiness (cheap to clone; clones share the values).
#[derive(Debug, Clone)]
pub struct Health {
    store_up: Gauge,
    brokers_up: Gauge,
    stalled: Gauge,
    /// Wall-clock ms when the loop's current step began; 0 between steps.
    step_started_ms: Gauge,
    /// `kafka.stall_after`, ms.
    stall_after_ms: Gauge,
}

impl Default for Health {
    fn default() -> Self {
        let health = Self {
            store_up: Gauge::default(),
            brokers_up: Gauge::default(),
            stalled: Gauge::default(),
            step_started_ms: Gauge::default(),
            stall_after_ms: Gauge::default(),
        };
        health.stall_after_ms.set(i64::MAX);
        health.store_up.set(1);
        health.brokers_up.set(1);
        health
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Health {
    /// How long one step of the loop may wait before readiness fails.
    pub fn set_stall_after(&self, stall_after: std::time::Duration) {
        self.stall_after_ms
            .set(i64::try_from(stall_after.as_millis()).unwrap_or(i64::MAX));
    }

    /// The loop began a step.
    pub fn step_started(&self) {
        self.step_started_ms.set(wall_ms().max(1));
    }

    /// The loop finished its step.
    pub fn step_finished(&self) {
        self.step_started_ms.set(0);
    }

    /// What currently stands in the way of readiness; empty when ready.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.store_up.get() == 0 {
            problems.push(Problem::StoreUnavailable);
        }
        if self.brokers_up.get() == 0 {
            problems.push(Problem::BrokersDown);
        }
        if self.stalled.get() != 0 {
            problems.push(Problem::ConsumerStalled);
        }
        let started = self.step_started_ms.get();
        if started > 0 && wall_ms().saturating_sub(started) > self.stall_after_ms.get() {
            problems.push(Problem::ConsumerHeldUp);
        }
        problems
    }
}

/// The pipeline's metrics. See the module docs.
#[derive(Clone)]
pub struct Telemetry {
    consumed: Family<TopicLabel, Counter>,
    dead_lettered: Family<TopicLabel, Counter>,
    dropped: Family<DropLabel, Counter>,
    lag: Family<TopicLabel, Gauge>,
    windows_closed: Counter,
    store_writes: Family<OperationLabel, Histogram, fn() -> Histogram>,
    store_failures: Family<OperationLabel, Counter>,
    dead_letter_failures: Counter,
    segment_overflow_events: Counter,
    sample_overflow: Counter,
    partitions_recreated: Counter,
    segment_values_folded: Family<StageLabel, Counter>,
    health: Health,
}

/// `stage` label of `tidewatch_segment_values_folded_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StageLabel {
    /// `range` or `window`.
    pub stage: &'static str,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            consumed: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            lag: Family::default(),
            windows_closed: Counter::default(),
            store_writes: Family::new_with_constructor(store_histogram),
            store_failures: Family::default(),
            dead_letter_failures: Counter::default(),
            segment_overflow_events: Counter::default(),
            sample_overflow: Counter::default(),
            partitions_recreated: Counter::default(),
            segment_values_folded: Family::default(),
            health: Health::default(),
        }
    }
}

impl Telemetry {
    /// Adds every metric to `registry` (names get the `tidewatch_` prefix
    /// from the registry the caller makes, see [`Telemetry::registry`]).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "events_consumed",
            "Messages read from Kafka",
            self.consumed.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Undecodable messages sent to the dead-letter topic",
            self.dead_lettered.clone(),
        );
        registry.register(
            "events_dropped",
            "Decoded events not recorded (late, unknown model, group limit)",
            self.dropped.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages behind the end of the assigned partitions",
            self.lag.clone(),
        );
        registry.register(
            "windows_closed",
            "Windows finalized",
            self.windows_closed.clone(),
        );
        registry.register(
            "store_write_seconds",
            "Duration of store writes",
            self.store_writes.clone(),
        );
        registry.register(
            "store_failures",
            "Failed store operations (each is retried; consumption waits)",
            self.store_failures.clone(),
        );
        registry.register(
            "store_up",
            "1 while the store answers, 0 while an operation is being retried",
            self.health.store_up.clone(),
        );
        registry.register(
            "dead_letter_failures",
            "Failed dead-letter sends (each is retried; consumption waits)",
            self.dead_letter_failures.clone(),
        );
        registry.register(
            "brokers_up",
            "1 while librdkafka reports at least one broker up",
            self.health.brokers_up.clone(),
        );
        registry.register(
            "partitions_recreated",
            "Partitions found with reused offsets (topic recreated, broker back empty)",
            self.partitions_recreated.clone(),
        );
        registry.register(
            "segment_overflow_events",
            "Event segment values counted under key=__other__ on arrival",
            self.segment_overflow_events.clone(),
        );
        registry.register(
            "sample_overflow",
            "Sampled predictions and labels left out of the training sample (range full)",
            self.sample_overflow.clone(),
        );
        registry.register(
            "segment_values_folded",
            "Segment values whose segment was folded into key=__other__",
            self.segment_values_folded.clone(),
        );
        registry.register(
            "consumer_stalled",
            "1 while the consumer has lag but reads nothing",
            self.health.stalled.clone(),
        );
    }

    /// The health shared with the HTTP server's readiness check.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// A store operation failed and will be retried.
    pub fn store_failed(&self, operation: &'static str) {
        self.store_failures
            .get_or_create(&OperationLabel { operation })
            .inc();
        self.health.store_up.set(0);
    }

    /// A store operation succeeded.
    pub fn store_succeeded(&self) {
        self.health.store_up.set(1);
    }

    /// A dead-letter send failed and will be retried.
    pub fn dead_letter_failed(&self) {
        self.dead_letter_failures.inc();
    }

    /// A partition was found with reused offsets.
    pub fn partition_recreated(&self) {
        self.partitions_recreated.inc();
    }

    /// Segment overflow counted by the engine (see [`detectors::segments`]).
    pub fn segment_overflow(&self, events: u64, displaced_in_range: u64) {
        self.segment_overflow_events.inc_by(events);
        self.segment_values_folded
            .get_or_create(&StageLabel { stage: "range" })
            .inc_by(displaced_in_range);
    }

    /// Sampled rows left out of the training sample (see the engine).
    pub fn sample_overflow(&self, rows: u64) {
        self.sample_overflow.inc_by(rows);
    }

    /// Segment values folded when a window's partials were merged.
    pub fn segment_values_folded_in_window(&self, values: u64) {
        self.segment_values_folded
            .get_or_create(&StageLabel { stage: "window" })
            .inc_by(values);
    }

    /// Whether librdkafka reports any broker up.
    pub fn set_brokers_up(&self, up: bool) {
        self.health.brokers_up.set(i64::from(up));
    }

    /// Whether the consumer is stalled (lag, nothing read).
    pub fn set_stalled(&self, stalled: bool) {
        self.health.stalled.set(i64::from(stalled));
    }

    /// A registry with the `tidewatch` prefix holding these metrics.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("tidewatch");
        self.register(&mut registry);
        registry
    }

    /// The counter of messages read from `topic` (a reader holds it:
    /// looking it up by label for every message costs a hash and a lock).
    pub fn consumed_counter(&self, topic: &str) -> Counter {
        self.consumed
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .clone()
    }

    /// One message of `topic` dead-lettered.
    pub fn dead_lettered(&self, topic: &str) {
        self.dead_lettered
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .inc();
    }

    /// Sets the lag of `topic`.
    pub fn set_lag(&self, topic: &str, lag: i64) {
        self.lag
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .set(lag);
    }

    /// `count` windows finalized.
    pub fn windows_closed(&self, count: u64) {
        self.windows_closed.inc_by(count);
    }

    /// A store write of `operation` took `seconds`.
    pub fn store_write(&self, operation: &'static str, seconds: f64) {
        self.store_writes
            .get_or_create(&OperationLabel { operation })
            .observe(seconds);
    }

    /// One event of `topic` dropped for `reason` (`late`, `unknown_model`,
    /// `group_limit`).
    pub fn dropped(&self, topic: &str, reason: &'static str) {
        self.dropped
            .get_or_create(&DropLabel {
                topic: topic.to_owned(),
                reason,
            })
            .inc();
    }

    /// What `topic` has seen since the process started.
    pub fn topic_totals(&self, topic: &str) -> TopicTotals {
        let label = TopicLabel {
            topic: topic.to_owned(),
        };
        TopicTotals {
            consumed: self.consumed.get_or_create(&label).get(),
            dead_lettered: self.dead_lettered.get_or_create(&label).get(),
            late: self
                .dropped
                .get_or_create(&DropLabel {
                    topic: topic.to_owned(),
                    reason: "late",
                })
                .get(),
            lag: self.lag.get_or_create(&label).get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_waiting_longer_than_stall_after_fails_readiness() {
        let health = Health::default();
        health.set_stall_after(std::time::Duration::from_millis(20));
        health.step_started();
        assert!(health.problems().is_empty(), "a step that just began");
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert_eq!(health.problems(), vec![Problem::ConsumerHeldUp]);
        health.step_finished();
        assert!(health.problems().is_empty());
    }

    #[test]
    fn readiness_follows_the_gauges() {
        let telemetry = Telemetry::default();
        assert!(telemetry.health().problems().is_empty());
        telemetry.store_failed("checkpoint");
        telemetry.set_brokers_up(false);
        telemetry.set_stalled(true);
        assert_eq!(
            telemetry.health().problems(),
            vec![
                Problem::StoreUnavailable,
                Problem::BrokersDown,
                Problem::ConsumerStalled
            ]
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &telemetry.registry()).unwrap();
        assert!(text.contains("tidewatch_store_up 0"), "{text}");
        telemetry.store_succeeded();
        telemetry.set_brokers_up(true);
        telemetry.set_stalled(false);
        assert!(telemetry.clone().health().problems().is_empty());
    }

    #[test]
    fn the_text_exposition_carries_names_labels_and_values() {
        let telemetry = Telemetry::default();
        telemetry.consumed_counter("predictions").inc();
        telemetry.consumed_counter("predictions").inc();
        telemetry.dead_lettered("predictions");
        telemetry.set_lag("actuals", 42);
        telemetry.windows_closed(3);
        telemetry.store_write("checkpoint", 0.003);
        telemetry.dropped("predictions", "late");
        telemetry.dropped("predictions", "late");
        telemetry.dropped("predictions", "unknown_model");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &telemetry.registry()).unwrap();
        for line in [
            "tidewatch_events_consumed_total{topic=\"predictions\"} 2",
            "tidewatch_events_dead_lettered_total{topic=\"predictions\"} 1",
            "tidewatch_events_dropped_total{topic=\"predictions\",reason=\"late\"} 2",
            "tidewatch_consumer_lag{topic=\"actuals\"} 42",
            "tidewatch_windows_closed_total 3",
            "tidewatch_store_write_seconds_count{operation=\"checkpoint\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert_eq!(
            telemetry.topic_totals("predictions"),
            TopicTotals {
                consumed: 2,
                dead_lettered: 1,
                late: 2,
                lag: 0
            }
        );
    }
}
