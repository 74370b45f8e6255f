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

/// The pipeline's metrics. See the module docs.
#[derive(Clone)]
pub struct Telemetry {
    consumed: Family<TopicLabel, Counter>,
    dead_lettered: Family<TopicLabel, Counter>,
    dropped: Family<DropLabel, Counter>,
    lag: Family<TopicLabel, Gauge>,
    windows_closed: Counter,
    store_writes: Family<OperationLabel, Histogram, fn() -> Histogram>,
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
    }

    /// A registry with the `tidewatch` prefix holding these metrics.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("tidewatch");
        self.register(&mut registry);
        registry
    }

    /// One message read from `topic`.
    pub fn consumed(&self, topic: &str) {
        self.consumed
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .inc();
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
    fn the_text_exposition_carries_names_labels_and_values() {
        let telemetry = Telemetry::default();
        telemetry.consumed("predictions");
        telemetry.consumed("predictions");
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
