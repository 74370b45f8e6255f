//! Retraining triggers: when a rule with `retrain = true` fires, ask for a
//! retrain once, through the outbox like any notification, and not again
//! while that request is pending.
//!
//! A request is a notification with status `retrain` for the firing alert,
//! sent to the reserved channels [`crate::notification::RETRAIN_WEBHOOK_CHANNEL`] (POST to the retrain
//! endpoint) and [`crate::notification::RETRAIN_BUS_CHANNEL`] (an event on the Kafka bus). Both carry the
//! same CloudEvents 1.0 document ([`crate::payload::retrain_event`]): type
//! `io.tidewatch.retrain.requested`, id = the request id, data = model,
//! version, reason, drifted features and the window range to train on.
//!
//! ## Debounce
//! [`RetrainGate`] keeps, per (model, version), the request in flight and
//! until when it blocks the next one (`debounce`). A request is cleared
//! early by an acknowledgement on the bus: a CloudEvent of type
//! `io.tidewatch.retrain.completed` or `io.tidewatch.retrain.failed` whose
//! `data.request_id` names it ([`parse_ack`]). The gate is rebuilt at
//! start-up from the `retrain` notifications in the store, so a restart
//! does not re-trigger; acknowledgements are read from the start of the
//! acknowledgement topic again. The gate holds at most
//! [`RetrainGate::CAPACITY`] entries: expired ones go first, then the oldest.

use std::collections::HashMap;

use serde_json::Value;
use store::AlertRecord;

use crate::lifecycle::{Alert, AlertStatus};
use crate::notification::{idempotency_key, NotificationStatus, RETRAIN_ACK_TYPES};

/// The retrain request as the store records it (status `retrain`).
pub fn to_record(request: &Alert, created_at: u64) -> AlertRecord {
    AlertRecord {
        status: NotificationStatus::Retrain,
        ..request.to_record(created_at)
    }
}

/// The id of the request made for notification `alert`.
pub fn request_id(alert: &Alert) -> String {
    idempotency_key(&alert.id, NotificationStatus::Retrain, alert.window_start)
}

#[derive(Debug, Clone)]
struct Pending {
    request_id: String,
    until: u64,
}

/// Debounces retrain requests per (model, version). See the module docs.
#[derive(Debug, Clone)]
pub struct RetrainGate {
    debounce_ms: u64,
    channels: Vec<String>,
    pending: HashMap<(String, String), Pending>,
}

impl RetrainGate {
    /// Most (model, version) pairs tracked at once.
    pub const CAPACITY: usize = 10_000;

    /// A gate blocking repeats for `debounce_ms`, sending requests to
    /// `channels` (a subset of [`crate::notification::RETRAIN_WEBHOOK_CHANNEL`], [`crate::notification::RETRAIN_BUS_CHANNEL`]).
    pub fn new(debounce_ms: u64, channels: Vec<String>) -> Self {
        Self {
            debounce_ms,
            channels,
            pending: HashMap::new(),
        }
    }

    /// Whether any retrain target is configured.
    pub fn is_enabled(&self) -> bool {
        !self.channels.is_empty()
    }

    /// Restores pending requests from recorded notifications (any order;
    /// records other than `retrain` ones are ignored).
    pub fn restore(&mut self, records: &[AlertRecord]) {
        let mut requests: Vec<&AlertRecord> = records
            .iter()
            .filter(|r| r.status == NotificationStatus::Retrain)
            .collect();
        requests.sort_by_key(|r| r.created_at);
        for record in requests {
            let until = record.created_at.saturating_add(self.debounce_ms);
            self.insert(
                (record.model.clone(), record.model_version.clone()),
                Pending {
                    request_id: idempotency_key(
                        &record.id,
                        NotificationStatus::Retrain,
                        record.window_start,
                    ),
                    until,
                },
                record.created_at,
            );
        }
    }

    /// For a notification, the retrain request to record (the alert with
    /// status `retrain` and the retrain channels), if the alert asks for one
    /// and no request for its model version is pending at `now` (ms).
    pub fn admit(&mut self, alert: &Alert, now: u64) -> Option<Alert> {
        if !self.is_enabled() || !alert.retrain || alert.status != AlertStatus::Firing {
            return None;
        }
        let key = (alert.model.clone(), alert.model_version.clone());
        if self.pending.get(&key).is_some_and(|p| p.until > now) {
            return None;
        }
        let request = Alert {
            channels: self.channels.clone(),
            ..alert.clone()
        };
        self.insert(
            key,
            Pending {
                request_id: request_id(alert),
                until: now.saturating_add(self.debounce_ms),
            },
            now,
        );
        Some(request)
    }

    /// Clears the pending request with id `request_id`; false if none is.
    pub fn acknowledge(&mut self, request_id: &str) -> bool {
        let before = self.pending.len();
        self.pending.retain(|_, p| p.request_id != request_id);
        self.pending.len() != before
    }

    /// Whether a request for (`model`, `version`) blocks a new one at `now`.
    pub fn is_pending(&self, model: &str, version: &str, now: u64) -> bool {
        self.pending
            .get(&(model.to_owned(), version.to_owned()))
            .is_some_and(|p| p.until > now)
    }

    fn insert(&mut self, key: (String, String), pending: Pending, now: u64) {
        if !self.pending.contains_key(&key) && self.pending.len() >= Self::CAPACITY {
            self.pending.retain(|_, p| p.until > now);
            if self.pending.len() >= Self::CAPACITY {
                if let Some(oldest) = self
                    .pending
                    .iter()
                    .min_by_key(|(_, p)| p.until)
                    .map(|(k, _)| k.clone())
                {
                    self.pending.remove(&oldest);
                }
            }
        }
        self.pending.insert(key, pending);
    }
}

/// The request id an acknowledgement event names, if `payload` is one (a
/// CloudEvent of an [`RETRAIN_ACK_TYPES`] type with a string `data.request_id`).
pub fn parse_ack(payload: &[u8]) -> Option<String> {
    let event: Value = serde_json::from_slice(payload).ok()?;
    let kind = event.get("type")?.as_str()?;
    if !RETRAIN_ACK_TYPES.contains(&kind) {
        return None;
    }
    Some(event.get("data")?.get("request_id")?.as_str()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::{Severity, RETRAIN_BUS_CHANNEL, RETRAIN_WEBHOOK_CHANNEL};

    fn alert(model: &str, window_start: i64) -> Alert {
        Alert {
            id: format!("tw-{model}"),
            rule: "drift".into(),
            model: model.into(),
            model_version: "1".into(),
            segment: "all".into(),
            severity: Severity::Critical,
            status: AlertStatus::Firing,
            repeat: false,
            window_start,
            window_end: window_start + 3_600_000,
            findings: Vec::new(),
            summary: "drift".into(),
            channels: vec!["slack".into()],
            retrain: true,
            onset: window_start,
        }
    }

    fn gate() -> RetrainGate {
        RetrainGate::new(
            60_000,
            vec![
                RETRAIN_WEBHOOK_CHANNEL.to_owned(),
                RETRAIN_BUS_CHANNEL.to_owned(),
            ],
        )
    }

    #[test]
    fn one_request_per_debounce_period_and_model_version() {
        let mut gate = gate();
        let request = gate.admit(&alert("churn", 0), 1_000).unwrap();
        assert_eq!(
            request.channels,
            [RETRAIN_WEBHOOK_CHANNEL, RETRAIN_BUS_CHANNEL]
        );
        assert!(gate.admit(&alert("churn", 3_600_000), 30_000).is_none());
        assert!(
            gate.admit(&alert("fraud", 0), 30_000).is_some(),
            "other models are not held up"
        );
        assert!(gate.admit(&alert("churn", 7_200_000), 61_000).is_some());
    }

    #[test]
    fn an_acknowledgement_clears_the_pending_request() {
        let mut gate = gate();
        let first = alert("churn", 0);
        gate.admit(&first, 1_000).unwrap();
        let ack = serde_json::json!({
            "specversion": "1.0", "type": "io.tidewatch.retrain.completed",
            "source": "registry", "id": "x",
            "data": {"request_id": request_id(&first)}
        });
        let id = parse_ack(ack.to_string().as_bytes()).unwrap();
        assert!(!gate.acknowledge("someone-else"));
        assert!(gate.acknowledge(&id));
        assert!(gate.admit(&alert("churn", 3_600_000), 2_000).is_some());
        assert_eq!(
            parse_ack(br#"{"type":"io.tidewatch.retrain.requested","data":{"request_id":"a"}}"#),
            None
        );
        assert_eq!(parse_ack(b"not json"), None);
    }

    #[test]
    fn repeats_resolutions_and_rules_without_retrain_request_nothing() {
        let mut gate = gate();
        let mut repeat = alert("a", 0);
        repeat.retrain = false;
        assert!(gate.admit(&repeat, 0).is_none());
        let mut resolved = alert("b", 0);
        resolved.status = AlertStatus::Resolved;
        assert!(gate.admit(&resolved, 0).is_none());
        assert!(RetrainGate::new(1, Vec::new())
            .admit(&alert("c", 0), 0)
            .is_none());
    }

    #[test]
    fn restored_requests_keep_blocking_after_a_restart() {
        let mut before = gate();
        let request = before.admit(&alert("churn", 0), 1_000).unwrap();
        let record = to_record(&request, 1_000);
        let mut after = gate();
        after.restore(&[record]);
        assert!(after.is_pending("churn", "1", 50_000));
        assert!(after.admit(&alert("churn", 3_600_000), 50_000).is_none());
        assert!(after.acknowledge(&request_id(&alert("churn", 0))));
    }

    #[test]
    fn the_gate_is_bounded() {
        let mut gate = gate();
        for i in 0..RetrainGate::CAPACITY + 5 {
            gate.admit(&alert(&format!("m{i}"), 0), i as u64);
        }
        assert_eq!(gate.pending.len(), RetrainGate::CAPACITY);
        assert!(
            gate.is_pending(&format!("m{}", RetrainGate::CAPACITY + 4), "1", 0),
            "the newest is kept"
        );
        assert!(!gate.is_pending("m0", "1", 0), "the oldest went first");
    }
}
