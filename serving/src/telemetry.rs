//! The gateway's Prometheus metrics (`tidewatch_serving_*`).
//!
//! Labels are bounded by configuration: models and versions are the ones
//! configured (or registered), roles and error kinds are closed sets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::routes::Role;

/// Model, version and the role it answered in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CallLabel {
    pub model: String,
    pub version: String,
    pub role: &'static str,
}

/// A failed call and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabel {
    pub model: String,
    pub version: String,
    pub role: &'static str,
    pub kind: &'static str,
}

/// Why an inference log event was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabel {
    pub reason: &'static str,
}

/// What an adapter did with an incoming message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AdapterLabel {
    pub adapter: &'static str,
    pub outcome: &'static str,
}

/// A model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~3.3 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// Every serving metric; cheap to clone (shared counters).
#[derive(Debug, Clone)]
pub struct Telemetry {
    requests: Family<CallLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    latency: Family<CallLabel, Histogram, fn() -> Histogram>,
    shadow_skipped: Family<ModelLabel, Counter>,
    logged: Counter,
    delivered: Counter,
    dropped: Family<DropLabel, Counter>,
    adapter_events: Family<AdapterLabel, Counter>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            shadow_skipped: Family::default(),
            logged: Counter::default(),
            delivered: Counter::default(),
            dropped: Family::default(),
            adapter_events: Family::default(),
        }
    }
}

impl Telemetry {
    /// A call of `version` of `model` in `role` took `seconds`.
    pub fn call(&self, model: &str, version: &str, role: Role, seconds: f64) {
        let label = CallLabel {
            model: model.to_owned(),
            version: version.to_owned(),
            role: role.as_str(),
        };
        self.latency.get_or_create(&label).observe(seconds);
        self.requests.get_or_create(&label).inc();
    }

    /// A call failed with an error of `kind`.
    pub fn error(&self, model: &str, version: &str, role: Role, kind: &'static str) {
        self.errors
            .get_or_create(&ErrorLabel {
                model: model.to_owned(),
                version: version.to_owned(),
                role: role.as_str(),
                kind,
            })
            .inc();
    }

    /// A shadow call was not made: too many shadow calls in flight.
    pub fn shadow_skipped(&self, model: &str) {
        self.shadow_skipped
            .get_or_create(&ModelLabel {
                model: model.to_owned(),
            })
            .inc();
    }

    /// An event entered the log's buffer.
    pub fn logged(&self) {
        self.logged.inc();
    }

    /// The broker acknowledged an event.
    pub fn delivered(&self) {
        self.delivered.inc();
    }

    /// An event was dropped for `reason` (`buffer_full`, `bus_error`, `encoding`).
    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&DropLabel { reason }).inc();
    }

    /// Events dropped for `reason` so far.
    pub fn dropped_total(&self, reason: &'static str) -> u64 {
        self.dropped.get_or_create(&DropLabel { reason }).get()
    }

    /// An adapter (`kserve`, `seldon`) handled a message with `outcome`
    /// (`joined`, `waiting`, `duplicate`, `evicted`, `expired`,
    /// `unknown_service`, `undecodable`, `no_version`).
    pub fn adapter_event(&self, adapter: &'static str, outcome: &'static str) {
        self.adapter_events
            .get_or_create(&AdapterLabel { adapter, outcome })
            .inc();
    }

    /// Messages of `adapter` with `outcome` so far.
    pub fn adapter_events_total(&self, adapter: &'static str, outcome: &'static str) -> u64 {
        self.adapter_events
            .get_or_create(&AdapterLabel { adapter, outcome })
            .get()
    }

    /// Events the broker acknowledged so far.
    pub fn delivered_total(&self) -> u64 {
        self.delivered.get()
    }

    /// Adds every metric to `registry` (names get the prefix of the
    /// registry the caller makes: `tidewatch_serving_…` under `tidewatch`).
    pub fn register(&self, registry: &mut Registry) {
        let serving = registry.sub_registry_with_prefix("serving");
        serving.register(
            "requests",
            "Inference calls by model, version and role (champion, canary, shadow, pinned)",
            self.requests.clone(),
        );
        serving.register(
            "errors",
            "Failed inference calls by model, version, role and kind",
            self.errors.clone(),
        );
        serving.register(
            "request_duration_seconds",
            "Time of an inference call in the gateway, runtime included",
            self.latency.clone(),
        );
        serving.register(
            "shadow_skipped",
            "Shadow calls not made because the shadow bound was reached",
            self.shadow_skipped.clone(),
        );
        serving.register(
            "log_events",
            "Prediction events put in the inference log's buffer",
            self.logged.clone(),
        );
        serving.register(
            "log_delivered",
            "Prediction events the broker acknowledged",
            self.delivered.clone(),
        );
        serving.register(
            "adapter_events",
            "Messages of the KServe and Seldon adapters, by outcome",
            self.adapter_events.clone(),
        );
        serving.register(
            "log_dropped",
            "Prediction events dropped, by reason (buffer_full, bus_error, encoding)",
            self.dropped.clone(),
        );
    }

    /// The metrics in Prometheus text format, alone in a `tidewatch` registry.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("tidewatch");
        self.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String does not fail");
        text
    }
}
