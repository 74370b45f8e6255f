//! The metrics `/metrics` serves: the pipeline's (see
//! [`ingest::telemetry`]) and the alert sender's.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tidewatch_alerts_raised_total` | counter | `status` (`firing`, `resolved`, `retrain`) |
//! | `tidewatch_alerts_sent_total` | counter | `channel` |
//! | `tidewatch_alerts_failed_total` | counter | `channel` (attempts that failed, retried or not) |
//! | `tidewatch_alerts_gave_up_total` | counter | `channel` (deliveries marked failed for good) |
//! | `tidewatch_up` | gauge | (1 while the process runs) |
//!
//! `channel` takes configured channel names only.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `channel` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChannelLabel {
    channel: String,
}

/// `status` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// Every metric of the process, and the registry that encodes them.
#[derive(Clone)]
pub struct Telemetry {
    /// The consumer loop's metrics.
    pub pipeline: ingest::telemetry::Telemetry,
    raised: Family<StatusLabel, Counter>,
    sent: Family<ChannelLabel, Counter>,
    failed: Family<ChannelLabel, Counter>,
    gave_up: Family<ChannelLabel, Counter>,
    registry: Arc<Registry>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let pipeline = ingest::telemetry::Telemetry::default();
        let raised = Family::<StatusLabel, Counter>::default();
        let sent = Family::<ChannelLabel, Counter>::default();
        let failed = Family::<ChannelLabel, Counter>::default();
        let gave_up = Family::<ChannelLabel, Counter>::default();
        let up = Gauge::<i64>::default();
        up.set(1);
        let mut registry = Registry::with_prefix("tidewatch");
        pipeline.register(&mut registry);
        registry.register("alerts_raised", "Notifications recorded", raised.clone());
        registry.register("alerts_sent", "Notifications delivered", sent.clone());
        registry.register(
            "alerts_failed",
            "Delivery attempts that failed",
            failed.clone(),
        );
        registry.register(
            "alerts_gave_up",
            "Deliveries abandoned after the last attempt",
            gave_up.clone(),
        );
        registry.register("up", "1 while Tidewatch runs", up);
        Self {
            pipeline,
            raised,
            sent,
            failed,
            gave_up,
            registry: Arc::new(registry),
        }
    }
}

impl Telemetry {
    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// A notification with `status` was recorded.
    pub fn raised(&self, status: &str) {
        self.raised
            .get_or_create(&StatusLabel {
                status: status.to_owned(),
            })
            .inc();
    }

    /// Counts one delivery pass.
    pub fn delivered(&self, report: &alerting::delivery::DeliveryReport) {
        for (channel, counts) in &report.channels {
            let label = ChannelLabel {
                channel: channel.clone(),
            };
            self.sent
                .get_or_create(&label)
                .inc_by(u64::from(counts.sent));
            self.failed
                .get_or_create(&label)
                .inc_by(u64::from(counts.retried + counts.failed));
            self.gave_up
                .get_or_create(&label)
                .inc_by(u64::from(counts.failed));
        }
    }
}
